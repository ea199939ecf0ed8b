"""Install and run as a service (issue 11, item 7): `make install` into a
DESTDIR, `sluice test` from the installed binary in another folder, `make
uninstall`; the systemd unit through `systemd-analyze verify`, and the
sd_notify readiness it relies on (Type=notify).

Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_install.py
"""

import os
import re
import shutil
import socket
import subprocess

import pytest

from conftest import SLUICE_BIN, _accepts, free_port, lua, run_sluice, wait_for

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
UNIT = os.path.join(ROOT, "examples", "systemd", "sluice.service")
UNIT_CONFIG = os.path.join(ROOT, "examples", "systemd", "sluice.conf.lua")


def make(*args):
    """make in the repository against the build the suite runs (BUILD from
    SLUICE_BIN: build or build-asan). -o: installs what is built as it is,
    never rebuilds it (a sanitized build would be relinked without its
    flags)."""
    build = os.path.relpath(os.path.dirname(SLUICE_BIN), ROOT)
    return subprocess.run(["make", "-s", "--no-print-directory", "BUILD=" + build,
                           "-o", build + "/sluice", "-o", build + "/sluice_core.so"]
                          + list(args), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    dest = tmp_path_factory.mktemp("destdir")
    r = make("install", "DESTDIR=%s" % dest)
    assert r.returncode == 0, r.stdout + r.stderr
    return dest


def test_make_install_puts_binary_runtime_and_module_under_prefix(installed):
    files = sorted(os.path.relpath(os.path.join(d, f), installed)
                   for d, _, fs in os.walk(installed) for f in fs)
    assert files == ["usr/local/bin/sluice",
                     "usr/local/lib/sluice/sluice_core.so",
                     "usr/local/share/sluice/scripts/sluice/busted.lua",
                     "usr/local/share/sluice/scripts/sluice/testing.lua"]
    assert os.access(installed / "usr/local/bin/sluice", os.X_OK)


def spec_folder(tmp_path, rule_body, expect):
    """A rule and its spec in a folder of their own; the spec names the
    rule relative to itself."""
    folder = tmp_path / "specs" / "myrules"
    folder.mkdir(parents=True)
    (folder / "10_tag.lua").write_text(rule_body)
    (folder / "10_tag_spec.lua").write_text(
        'local testing = require("sluice.testing")\n'
        'describe("10_tag", function()\n'
        '  it("tags the event", function()\n'
        '    local r = testing.load("10_tag.lua"):run({ topic = "t", payload = 1 })\n'
        '    assert.are.equal(%s, r.event.headers.tag)\n'
        '  end)\n'
        'end)\n' % lua(expect))
    return folder


TAG_RULE = ('return { on_event = function(ev)\n'
            '  ev.headers.tag = "seen"\n'
            '  return "out"\n'
            'end }\n')


def test_installed_sluice_test_runs_a_spec_from_another_folder(installed,
                                                               tmp_path):
    folder = spec_folder(tmp_path, TAG_RULE, "seen")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    binary = str(installed / "usr/local/bin/sluice")
    r = subprocess.run([binary, "test", str(folder)], cwd=str(elsewhere),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 success / 0 failures / 0 errors" in r.stdout
    # a relative DIR is the current folder's, the rule still the spec's
    r = subprocess.run([binary, "test", "myrules"], cwd=str(folder.parent),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "1 success / 0 failures" in r.stdout, r.stdout


def test_installed_sluice_test_fails_when_the_spec_fails(installed, tmp_path):
    folder = spec_folder(tmp_path, TAG_RULE, "other")
    r = subprocess.run([str(installed / "usr/local/bin/sluice"), "test",
                        str(folder)], cwd="/", capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0
    assert "0 successes / 1 failure / 0 errors" in r.stdout, r.stdout


def test_install_with_a_prefix_and_destdir_runs_from_the_staged_tree(tmp_path):
    dest = tmp_path / "stage"
    r = make("install", "PREFIX=/opt/sluice", "DESTDIR=%s" % dest)
    assert r.returncode == 0, r.stdout + r.stderr
    binary = dest / "opt/sluice/bin/sluice"
    assert (dest / "opt/sluice/lib/sluice/sluice_core.so").exists()
    folder = spec_folder(tmp_path, TAG_RULE, "seen")
    r = subprocess.run([str(binary), "test", str(folder)], cwd="/",
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "1 success / 0 failures" in r.stdout, \
        r.stdout + r.stderr


def test_source_tree_sluice_test_resolves_rules_against_the_spec(tmp_path):
    r = run_sluice("test", os.path.join(ROOT, "rules"),
                   os.path.join(ROOT, "examples"), cwd=str(tmp_path), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failures / 0 errors" in r.stdout


def test_a_binary_without_its_runtime_says_where_it_looked(tmp_path):
    lone = tmp_path / "bin" / "sluice"
    lone.parent.mkdir()
    shutil.copy(SLUICE_BIN, lone)
    r = subprocess.run([str(lone), "test", str(tmp_path)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1
    assert "cannot find the Lua runtime beside this binary" in r.stderr


def test_make_uninstall_removes_what_install_put(tmp_path):
    dest = tmp_path / "d"
    assert make("install", "DESTDIR=%s" % dest).returncode == 0
    r = make("uninstall", "DESTDIR=%s" % dest)
    assert r.returncode == 0, r.stderr
    left = [os.path.join(d, f) for d, _, fs in os.walk(dest) for f in fs]
    assert left == []
    assert not (dest / "usr/local/share/sluice").exists()
    assert not (dest / "usr/local/lib/sluice").exists()


# ---- systemd ----------------------------------------------------------------

def unit_value(key):
    with open(UNIT) as f:
        return [m.group(1) for m in
                (re.match(r"^%s=(.*)$" % key, line.rstrip("\n")) for line in f) if m]


def verify(unit_path):
    return subprocess.run(["systemd-analyze", "verify", str(unit_path)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
def test_the_systemd_unit_passes_systemd_analyze_verify(installed, tmp_path):
    binary = str(installed / "usr/local/bin/sluice")
    text = open(UNIT).read()
    assert "/usr/local/bin/sluice" in text
    # the unit as shipped, pointing at the binary `make install` staged
    (tmp_path / "sluice.service").write_text(
        text.replace("/usr/local/bin/sluice", binary))
    r = verify(tmp_path / "sluice.service")
    assert r.returncode == 0 and r.stderr == "" and r.stdout == "", r.stderr
    # the same check sees a broken unit (it warns, so stderr is the verdict)
    (tmp_path / "bad.service").write_text(
        text.replace("/usr/local/bin/sluice", binary)
            .replace("ProtectSystem=strict", "ProtectSystem=sometimes"))
    r = verify(tmp_path / "bad.service")
    assert "protect system" in r.stderr.lower(), r.stderr


def test_the_systemd_unit_matches_its_config():
    assert unit_value("Type") == ["notify"]
    assert unit_value("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert unit_value("StateDirectory") == ["sluice"]
    assert unit_value("ExecStart") == [
        "/usr/local/bin/sluice run -c /etc/sluice/sluice.conf.lua"]
    # StateDirectory=sluice is /var/lib/sluice: the config's state_dir
    assert 'state_dir = "/var/lib/sluice"' in open(UNIT_CONFIG).read()
    r = run_sluice("check", "-c", UNIT_CONFIG)
    assert r.returncode == 0, r.stderr


def test_run_notifies_readiness_once_listeners_are_bound(sluice, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    port = free_port()
    try:
        eng = sluice({"inputs": [{"name": "in", "type": "tcp",
                                  "listen": "127.0.0.1:%d" % port}],
                      "outputs": [{"name": "out", "type": "null"}],
                      "routes": [{"topics": "*", "to": "out"}]},
                     env={"NOTIFY_SOCKET": path}, wait=False)
        msg = sock.recv(256).decode()
        assert _accepts("127.0.0.1:%d" % port)  # bound before READY=1
        assert msg == "READY=1\nMAINPID=%d" % eng.pid
        eng.wait_log("sluice started")
        assert eng.stop() == 0
        assert sock.recv(256).decode() == "STOPPING=1"
    finally:
        sock.close()


def test_run_logs_a_warning_when_the_notify_socket_is_unusable(sluice):
    eng = sluice({"inputs": [{"name": "in", "type": "tcp",
                              "listen": "127.0.0.1:%d" % free_port()}],
                  "outputs": [{"name": "out", "type": "null"}],
                  "routes": [{"topics": "*", "to": "out"}]},
                 env={"NOTIFY_SOCKET": "/nonexistent/notify.sock"})
    line = eng.wait_log("cannot tell the service manager we are ready")
    assert line["notify_socket"] == "/nonexistent/notify.sock"
    assert eng.running()
