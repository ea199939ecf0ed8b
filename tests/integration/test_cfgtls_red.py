"""Red team of whole-config reload, TLS, env substitution and the state
folder, through the real binary: each test proves a defect found by
attacking from outside stays fixed.

Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_cfgtls_red.py
"""
import json
import os
import signal
import socket
import subprocess

import pytest

from conftest import (free_port, lua, pack, read_ndjson, run_sluice, send_events,
                      wait_lines, with_test_workers)
from test_tls import certs, s_client, server_tls  # noqa: F401 (fixture)
from test_reload_config import wait_reload


def rewrite(eng, text):
    """A new config for eng's next reload (with the test run's workers)."""
    eng.config.write_text(with_test_workers(text))


def tls_conf(port, tls, out="out.ndjson"):
    return "return " + lua({
        "inputs": [{"name": "in", "type": "tcp",
                    "listen": "127.0.0.1:%d" % port, "tls": tls}],
        "outputs": [{"name": "f", "type": "file", "path": out}],
        "routes": [{"topics": "*", "to": "f"}]}) + "\n"


def accepts(port):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


@pytest.mark.parametrize("bad", ["mismatched_key", "garbage_cert"])
def test_a_changed_tls_input_that_cannot_start_on_its_address_keeps_the_old_one(
        sluice, certs, tmp_path, bad):
    """Changing a TLS listener's certificate to one that does not load (its
    key is another's, or the file is not PEM) on the same address: the
    reload is rejected before the old listener closes, naming the file."""
    port = free_port()
    eng = sluice(tls_conf(port, server_tls(certs)))
    ca = certs.__getattr__("ca.pem")
    r = s_client(port, data=pack({"topic": "t", "payload": 1}), ca=ca)
    assert r.returncode == 0, r.stderr.decode()
    wait_lines(eng.path("out.ndjson"), 1)
    if bad == "mismatched_key":
        tls = server_tls(certs, "rotated")
        tls["key_file"] = certs.__getattr__("server.key")
    else:
        junk = tmp_path / "junk.pem"
        junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                        "-----END CERTIFICATE-----\n")
        tls = server_tls(certs, "rotated")
        tls["cert_file"] = str(junk)
    rewrite(eng, tls_conf(port, tls))
    eng.signal(signal.SIGHUP)
    line = wait_reload(eng, 1)
    assert line["msg"] == "config reload rejected; the running config stays", line
    assert "inputs[1] (in)" in line["error"], line
    # the old listener still serves its certificate
    r = s_client(port, data=pack({"topic": "t", "payload": 2}), ca=ca)
    assert r.returncode == 0, r.stderr.decode()
    assert "CN = central" in r.stderr.decode()
    wait_lines(eng.path("out.ndjson"), 2)
    assert [l["payload"] for l in read_ndjson(eng.path("out.ndjson"))] == [1, 2]
    # and the file named is the one that does not load
    assert (bad == "garbage_cert" and "junk.pem" in line["error"]) or \
        (bad == "mismatched_key" and "server.key" in line["error"]), line


def test_a_changed_http_input_whose_token_file_is_empty_keeps_the_old_one(
        sluice, tmp_path):
    """The same for an http input's bearer_token_file: emptied and the
    input changed on its address, the reload is rejected up front."""
    port = free_port()
    token = tmp_path / "token"
    token.write_text("s3cret\n")

    def conf(max_body):
        return "return " + lua({
            "inputs": [{"name": "web", "type": "http",
                        "listen": "127.0.0.1:%d" % port,
                        "bearer_token_file": str(token),
                        "max_body_bytes": max_body}],
            "outputs": [{"name": "f", "type": "file", "path": "out.ndjson"}],
            "routes": [{"topics": "*", "to": "f"}]}) + "\n"

    eng = sluice(conf(1000000))
    token.write_text("")
    rewrite(eng, conf(2000000))
    eng.signal(signal.SIGHUP)
    line = wait_reload(eng, 1)
    assert line["msg"] == "config reload rejected; the running config stays", line
    assert line["error"].startswith("inputs[1] (web): "), line
    assert accepts(port)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs to fill (root only), unmounted after the test."""
    d = tmp_path / "small"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs",
                        str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs: %s" % r.stderr.decode().strip())
    yield d
    subprocess.run(["umount", "-l", str(d)], capture_output=True)


def fill(folder):
    """Write zeros into folder until it is full; returns the file."""
    path = folder / "fill"
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return path


def test_a_status_file_that_cannot_be_written_is_not_left_stale(
        sluice, small_tmpfs):
    """A state folder that is full: the reload goes live, but its status
    could not be written. `sluice status` showed the version before the
    reload as the running one, and nothing was logged. Now the stale file
    is removed, the log says why, and the next write that works puts it
    back."""
    port = free_port()
    text = "return " + lua({
        "state_dir": str(small_tmpfs),
        "inputs": [{"name": "in", "type": "tcp", "listen": "127.0.0.1:%d" % port}],
        "outputs": [{"name": "f", "type": "file", "path": "out.ndjson"}],
        "routes": [{"topics": "*", "to": "f"}]}) + "\n"
    eng = sluice(text)

    def status():
        return run_sluice("status", "-c", eng.config)

    r = status()
    assert r.returncode == 0 and json.loads(r.stdout)["version"] == 1, r
    filler = fill(small_tmpfs)
    eng.signal(signal.SIGHUP)
    assert wait_reload(eng, 1)["msg"] == "config reloaded"
    line = eng.wait_log("cannot write the status file; `sluice status` has "
                        "none until a write works")
    assert line["file"] == str(small_tmpfs / "sluice.status.json"), line
    assert "No space left on device" in line["error"], line
    r = status()
    assert r.returncode == 1, r.stdout  # not version 1 as if it ran
    assert "no status at" in r.stderr, r.stderr
    assert not os.path.exists(str(small_tmpfs / "sluice.status.json.tmp"))
    filler.unlink()
    eng.signal(signal.SIGHUP)
    assert wait_reload(eng, 2)["msg"] == "config reloaded"
    eng.wait_log("status file written again")
    r = status()
    assert r.returncode == 0 and json.loads(r.stdout)["version"] == 3, r


@pytest.mark.parametrize("token", ["s3cret\n", "x\r\nX-Injected: 1", "a\0b"])
def test_a_bearer_token_from_the_environment_cannot_add_a_header_line(
        tmp_path, monkeypatch, token):
    """bearer_token = "${TOKEN}" with a secret that ends in a newline (as
    `echo` writes one) or holds CRLF went into the request as it was:
    "Authorization: Bearer x\\r\\nX-Injected: 1" reached the server as two
    headers. Refused at check and run, naming the key."""
    cfg = tmp_path / "h.conf.lua"
    cfg.write_text("""return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "h", type = "http", url = "http://127.0.0.1:9/x",
                bearer_token = "${SL_RED_TOKEN}" } },
  routes = { { topics = "*", to = "h" } },
}
""" % free_port())
    if "\0" in token:  # no NUL in the environment: put it in the file
        cfg.write_text(cfg.read_text().replace("${SL_RED_TOKEN}", "a\\0b"))
    else:
        monkeypatch.setenv("SL_RED_TOKEN", token)
    want = "outputs[1].bearer_token: the value holds a CR, LF or NUL"
    r = run_sluice("check", "-c", cfg)
    assert r.returncode == 1 and want in r.stderr, (r.stdout, r.stderr)
    r = run_sluice("run", "-c", cfg)
    assert r.returncode == 1 and want in r.stderr, r.stderr


def test_a_reload_error_names_the_place_in_the_file_not_the_slot(
        sluice, certs):
    """A reload lays outputs and inputs out in slots that never move (one
    still draining keeps its own), so the new file's outputs[1] may run in
    slot 2. Errors named the slot: "outputs[2] (x)" for the file's only
    output, and "inputs[2] (in)" for its only input."""
    port = free_port()

    def conf(outputs, tls=None):
        i = {"name": "in", "type": "tcp", "listen": "127.0.0.1:%d" % port}
        if tls:
            i["tls"] = tls
        return "return " + lua({
            "inputs": [i], "outputs": outputs,
            "routes": [{"topics": "*", "to": outputs[0]["name"]}]}) + "\n"

    f = {"name": "f", "type": "file", "path": "out.ndjson"}
    eng = sluice(conf([f]))
    bad_tls = {"ca_file": certs.__getattr__("ca.pem"),
               "cert_file": certs.__getattr__("rotated.pem"),
               "key_file": certs.__getattr__("server.key")}
    x = {"name": "x", "type": "tcp", "address": "127.0.0.1:%d" % free_port(),
         "tls": bad_tls}
    rewrite(eng, conf([x]))  # f retires, x takes slot 2
    eng.signal(signal.SIGHUP)
    line = wait_reload(eng, 1)
    assert line["msg"] == "config reload rejected; the running config stays"
    assert line["error"].startswith("outputs[1] (x): "), line
    # an input added before one that runs: the file's inputs[1] is slot 2
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    text = conf([f]).replace(
        "inputs = {", 'inputs = { { name = "in2", type = "tcp", '
        'listen = "127.0.0.1:%d" },' % busy.getsockname()[1], 1)
    assert "in2" in text
    rewrite(eng, text)
    eng.signal(signal.SIGHUP)
    line = wait_reload(eng, 2)
    busy.close()
    assert line["msg"] == "config reload rejected; the running config stays"
    assert line["error"].startswith("inputs[1] (in2): "), line
    assert accepts(port)


@pytest.mark.parametrize("before,after", [("localhost", "127.0.0.1"),
                                          ("127.0.0.1", "0.0.0.0"),
                                          ("0.0.0.0", "127.0.0.1")])
def test_a_changed_input_on_the_same_socket_written_otherwise_rebinds(
        sluice, before, after):
    """An input changed from "localhost:P" to "127.0.0.1:P" (one socket),
    or widened to "0.0.0.0:P": the new listener tried to bind beside the
    old one, so the reload was always refused ("address already in use")."""
    port = free_port()

    def conf(host):
        return "return " + lua({
            "inputs": [{"name": "in", "type": "tcp",
                        "listen": "%s:%d" % (host, port)}],
            "outputs": [{"name": "f", "type": "file", "path": "out.ndjson"}],
            "routes": [{"topics": "*", "to": "f"}]}) + "\n"

    eng = sluice(conf(before))
    rewrite(eng, conf(after))
    eng.signal(signal.SIGHUP)
    line = wait_reload(eng, 1)
    assert line["msg"] == "config reloaded", line
    assert line["changes"].startswith("inputs ~in;") and \
        line["inputs_not_started"] == "", line
    send_events("127.0.0.1:%d" % port, [{"topic": "t", "payload": 7}])
    wait_lines(eng.path("out.ndjson"), 1)


@pytest.mark.parametrize("tcp_too", [False, True])
def test_a_changed_syslog_input_on_udp_rebinds(sluice, tcp_too):
    """The same for a syslog input's udp address: with only udp the
    address was compared by listen alone, so the new one bound beside the
    old (refused); with listen on the same port the new one started after
    the switch, but the old udp socket stayed open until the old input
    stopped, so the new one did not start at all (inputs_not_started)."""
    port = free_port()

    def conf(topic):
        i = {"name": "sys", "type": "syslog", "udp": "127.0.0.1:%d" % port,
             "topic": topic}
        if tcp_too:
            i["listen"] = "127.0.0.1:%d" % port
        return "return " + lua({
            "inputs": [i],
            "outputs": [{"name": "f", "type": "file", "path": "out.ndjson"}],
            "routes": [{"topics": "*", "to": "f"}]}) + "\n"

    eng = sluice(conf("a.{app}"))
    rewrite(eng, conf("b.{app}"))
    eng.signal(signal.SIGHUP)
    line = wait_reload(eng, 1)
    assert line["msg"] == "config reloaded", line
    assert line["inputs_not_started"] == "", line
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"<13>1 2026-01-01T00:00:00Z h app - - - hi", ("127.0.0.1", port))
    u.close()
    wait_lines(eng.path("out.ndjson"), 1)
    assert read_ndjson(eng.path("out.ndjson"))[0]["topic"] == "b.app"


def test_check_refuses_two_inputs_on_one_socket_written_two_ways(tmp_path):
    """"localhost:P" beside "127.0.0.1:P", or "0.0.0.0:P" beside either,
    passed `sluice check` (only equal strings were caught), then run
    failed to bind the second."""
    port = free_port()
    cfg = tmp_path / "two.conf.lua"
    for a, b in [("localhost", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"),
                 ("127.0.0.1", "0.0.0.0")]:
        cfg.write_text("return " + lua({
            "inputs": [{"name": "a", "type": "tcp", "listen": "%s:%d" % (a, port)},
                       {"name": "b", "type": "http", "listen": "%s:%d" % (b, port)}],
            "outputs": [{"name": "f", "type": "file", "path": "out.ndjson"}],
            "routes": [{"topics": "*", "to": "f"}]}) + "\n")
        r = run_sluice("check", "-c", cfg)
        assert r.returncode == 1, (a, b, r.stdout)
        assert 'inputs[2].listen: "%s:%d" is already used by inputs[1]' % (
            b, port) in r.stderr, r.stderr


def refuse_output_reloads(sluice, x, times, word):
    """An engine with a file output; `times` reloads each adding output x,
    which cannot start: each is refused naming outputs[2] (and word), the
    file output still delivers, and the engine stops cleanly (under ASan
    the teardown checks LeakSanitizer's report: the core never stops an
    output whose start failed, so what it made must free itself)."""
    port = free_port()
    f = {"name": "f", "type": "file", "path": "out.ndjson"}

    def conf(outputs):
        return "return " + lua({
            "inputs": [{"name": "in", "type": "tcp",
                        "listen": "127.0.0.1:%d" % port}],
            "outputs": outputs,
            "routes": [{"topics": "*", "to": outputs[0]["name"]}]}) + "\n"

    eng = sluice(conf([f]))
    for n in range(1, times + 1):
        rewrite(eng, conf([f, x]))
        eng.signal(signal.SIGHUP)
        line = wait_reload(eng, n)
        assert line["msg"] == "config reload rejected; the running config stays"
        assert line["error"].startswith("outputs[2] (%s): " % x["name"]), line
        assert word in line["error"], line
    send_events("127.0.0.1:%d" % port, [{"topic": "t", "payload": 1}])
    wait_lines(eng.path("out.ndjson"), 1)
    assert eng.stop() == 0


@pytest.mark.parametrize("kind", ["tcp", "forward"])
def test_a_reload_refusing_a_tls_output_frees_what_it_started(sluice, certs,
                                                              kind):
    """A tcp or forward output whose TLS files do not load fails to start
    in a reload; the reload is refused and the output retired. Its plugin
    state (and a libuv timer) were never freed: the core does not stop an
    output whose start failed, and the peer left that to cb_stop. Under
    the ASan build LeakSanitizer reported it at exit (272 bytes each)."""
    x = {"name": "x", "type": kind, "address": "127.0.0.1:%d" % free_port(),
         "tls": {"ca_file": certs.__getattr__("ca.pem"),
                 "cert_file": certs.__getattr__("rotated.pem"),
                 "key_file": certs.__getattr__("server.key")}}
    refuse_output_reloads(sluice, x, 5, "")


def test_a_reload_refusing_a_kafka_output_that_cannot_start_frees_its_client(
        sluice):
    """A kafka output whose client cannot be made (an unsupported SASL
    mechanism passes check; librdkafka refuses it at rd_kafka_new) in a
    reload: the reload is refused, and what the start made is freed (it
    kept its state: 520 bytes per refusal under LeakSanitizer; with a later
    failure its client and threads)."""
    k = {"name": "k", "type": "kafka", "brokers": "127.0.0.1:%d" % free_port(),
         "options": "security.protocol=sasl_plaintext,sasl.mechanisms=NOSUCH"}
    refuse_output_reloads(sluice, k, 3, "NOSUCH")


@pytest.mark.parametrize("bad", ["mismatched_key", "garbage_ca"])
def test_an_http_output_whose_tls_files_do_not_load_is_refused(
        sluice, certs, tmp_path, bad):
    """The http output handed its tls files to curl per request: a key not
    matching its certificate, or a CA file with no certificate in it,
    started (and was taken by a reload) and then failed every request.
    Now it stops the start naming the file, as the tcp output does, and a
    reload to it is refused with the running config kept."""
    port = free_port()
    if bad == "mismatched_key":
        tls = {"ca_file": certs.__getattr__("ca.pem"),
               "cert_file": certs.__getattr__("rotated.pem"),
               "key_file": certs.__getattr__("server.key")}
        named = "server.key"
    else:
        junk = tmp_path / "junk-ca.pem"
        junk.write_text("not a certificate\n")
        tls = {"ca_file": str(junk)}
        named = "junk-ca.pem"

    def conf(outputs):
        return "return " + lua({
            "inputs": [{"name": "in", "type": "tcp",
                        "listen": "127.0.0.1:%d" % port}],
            "outputs": outputs,
            "routes": [{"topics": "*", "to": outputs[-1]["name"]}]}) + "\n"

    f = {"name": "f", "type": "file", "path": "out.ndjson"}
    h = {"name": "h", "type": "http", "url": "https://127.0.0.1:9/x",
         "tls": tls}
    cfg = tmp_path / "h.conf.lua"
    cfg.write_text(conf([h]))
    r = run_sluice("run", "-c", cfg)
    assert r.returncode == 1 and "outputs[1] (h): " in r.stderr and \
        named in r.stderr, r.stderr
    eng = sluice(conf([f]))
    rewrite(eng, conf([f, h]))
    eng.signal(signal.SIGHUP)
    line = wait_reload(eng, 1)
    assert line["msg"] == "config reload rejected; the running config stays"
    assert line["error"].startswith("outputs[2] (h): ") and \
        named in line["error"], line
    send_events("127.0.0.1:%d" % port, [{"topic": "t", "payload": 1}])
    wait_lines(eng.path("out.ndjson"), 1)


def test_check_refuses_two_syslog_inputs_on_one_udp_socket(tmp_path):
    """Two syslog inputs on one udp address (equal strings, or written two
    ways) passed `sluice check` (only listen was compared) and run failed
    to bind the second ("address already in use"). A tcp listen on the
    udp's port is no clash and stays valid."""
    port = free_port()
    cfg = tmp_path / "udp.conf.lua"

    def conf(inputs):
        cfg.write_text("return " + lua({
            "inputs": inputs,
            "outputs": [{"name": "f", "type": "file", "path": "out.ndjson"}],
            "routes": [{"topics": "*", "to": "f"}]}) + "\n")
        return run_sluice("check", "-c", cfg)

    for a, b in [("127.0.0.1", "127.0.0.1"), ("localhost", "127.0.0.1"),
                 ("0.0.0.0", "127.0.0.1")]:
        r = conf([{"name": "a", "type": "syslog", "udp": "%s:%d" % (a, port)},
                  {"name": "b", "type": "syslog", "udp": "%s:%d" % (b, port)}])
        assert r.returncode == 1, (a, b, r.stdout)
        assert 'inputs[2].udp: "%s:%d" is already used by inputs[1]' % (
            b, port) in r.stderr, r.stderr
    r = conf([{"name": "a", "type": "syslog", "udp": "127.0.0.1:%d" % port},
              {"name": "b", "type": "syslog",
               "listen": "127.0.0.1:%d" % port}])
    assert r.returncode == 0, r.stderr
    r = conf([{"name": "a", "type": "syslog", "udp": "127.0.0.1:%d" % port,
               "listen": "127.0.0.1:%d" % port}])
    assert r.returncode == 0, r.stderr


def test_a_status_file_that_can_be_neither_written_nor_removed_is_logged_so(
        sluice, tmp_path):
    """A status file the engine can neither replace nor remove (immutable
    here, chattr +i; a read-only folder alike): the reload goes live, its
    status is not written, and the old file stays. The log said `sluice
    status` "has none" while it went on showing version 1 as the running
    one; now the log says the file is stale, and the next write that works
    puts it right."""
    port = free_port()
    state = tmp_path / "state"
    text = "return " + lua({
        "state_dir": str(state),
        "inputs": [{"name": "in", "type": "tcp", "listen": "127.0.0.1:%d" % port}],
        "outputs": [{"name": "f", "type": "file", "path": "out.ndjson"}],
        "routes": [{"topics": "*", "to": "f"}]}) + "\n"
    eng = sluice(text)
    status_file = str(state / "sluice.status.json")
    r = run_sluice("status", "-c", eng.config)
    assert r.returncode == 0 and json.loads(r.stdout)["version"] == 1, r
    pin = subprocess.run(["chattr", "+i", status_file], capture_output=True)
    if pin.returncode != 0:
        pytest.skip("cannot make the file immutable: %s" % pin.stderr.decode())
    try:
        eng.signal(signal.SIGHUP)
        assert wait_reload(eng, 1)["msg"] == "config reloaded"
        line = eng.wait_log("cannot write the status file nor remove it; "
                            "`sluice status` shows an older version until a "
                            "write works")
        assert line["step"] == "cannot rename over", line
        assert "Operation not permitted" in line["remove_error"], line
        assert not eng.find_logs("cannot write the status file; `sluice "
                                 "status` has none until a write works"), \
            "the log promised it was gone"
        with open(status_file) as f:  # what the log says: still version 1
            assert json.load(f)["version"] == 1
        assert not os.path.exists(status_file + ".tmp")
    finally:
        subprocess.run(["chattr", "-i", status_file], capture_output=True)
    eng.signal(signal.SIGHUP)
    assert wait_reload(eng, 2)["msg"] == "config reloaded"
    eng.wait_log("status file written again")
    r = run_sluice("status", "-c", eng.config)
    assert r.returncode == 0 and json.loads(r.stdout)["version"] == 3, r
