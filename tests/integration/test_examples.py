"""The repo's own default config and every example pass `sluice check`, and
their rule specs pass through `sluice test` (busted in the real sandbox)."""
import glob
import re
import json
import os
import subprocess

import pytest

from conftest import SLUICE_BIN, free_port, read_ndjson, run_sluice, send_events, wait_for

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CONFIGS = [os.path.join(ROOT, "sluice.conf.lua")] + sorted(
    glob.glob(os.path.join(ROOT, "examples", "*", "*.conf.lua")))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_passes_check(config):
    r = run_sluice("check", "-c", config)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(config + ": ok")
    assert r.stderr == ""


def test_every_rule_in_rules_and_examples_has_a_spec():
    rules = [p for p in glob.glob(os.path.join(ROOT, "rules", "*.lua")) +
             glob.glob(os.path.join(ROOT, "examples", "*", "rules", "*.lua"))
             if not p.endswith("_spec.lua")]
    assert rules
    missing = [p for p in rules if not os.path.exists(p[:-4] + "_spec.lua")]
    assert missing == []


def test_sluice_test_runs_the_specs_in_the_sandbox():
    r = run_sluice("test", "rules", "examples", cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failures / 0 errors" in r.stdout


def test_sluice_test_names_the_make_command_when_sluice_core_is_missing(tmp_path):
    # a source-tree layout (build/sluice, scripts/) without build/sluice_core.so
    import shutil
    (tmp_path / "build").mkdir()
    shutil.copy(SLUICE_BIN, tmp_path / "build" / "sluice")
    shutil.copytree(os.path.join(ROOT, "scripts"), tmp_path / "scripts")
    r = subprocess.run([str(tmp_path / "build" / "sluice"), "test", "rules"],
                       capture_output=True, text=True, timeout=10, cwd=str(tmp_path))
    assert r.returncode == 1
    assert "module 'sluice_core' not found" in r.stderr
    assert "make -C %s all" % tmp_path in r.stderr


def test_make_run_builds_sluice_core_for_sluice_test(tmp_path):
    r = subprocess.run(["make", "-n", "run", "BUILD=%s" % tmp_path],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "-shared -o %s/sluice_core.so" % tmp_path in r.stdout


def _comment_command(config_text, first_word):
    """The shell command the config's leading comment shows, starting with
    first_word, its continuation lines joined."""
    lines = [l[2:].strip() for l in config_text.splitlines() if l.startswith("--")]
    for i, l in enumerate(lines):
        if l.startswith(first_word):
            cmd = l
            while cmd.endswith("\\"):
                i += 1
                cmd = cmd[:-1] + " " + lines[i]
            return cmd
    raise AssertionError("no %r command in the comment" % first_word)


def test_http_sidecar_example_curl_command_lands_an_order(sluice):
    import shlex
    ex = os.path.join(ROOT, "examples", "http-sidecar")
    text = open(os.path.join(ex, "sluice.conf.lua")).read()
    web, admin = free_port(), free_port()
    cmd = _comment_command(text, "curl")
    assert "127.0.0.1:8080" in cmd and "127.0.0.1:8080" in text
    text = text.replace("127.0.0.1:8080", "127.0.0.1:%d" % web)
    text = text.replace("127.0.0.1:9090", "127.0.0.1:%d" % admin)
    text = text.replace('dir = "rules"', 'dir = %r' % os.path.join(ex, "rules"))
    eng = sluice(text)
    argv = shlex.split(cmd.replace("127.0.0.1:8080", "127.0.0.1:%d" % web))
    r = subprocess.run(argv + ["-sS"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"accepted": 1}
    got = wait_for(lambda: read_ndjson(eng.path("var/orders.ndjson")), timeout=10,
                   what="the order in var/orders.ndjson")
    sent = json.loads(argv[argv.index("-d") + 1])
    assert got[0]["topic"] == sent["topic"]
    assert got[0]["payload"] == sent["payload"]


def test_cookbook_readme_command_runs_every_recipe_spec():
    readme = open(os.path.join(ROOT, "examples", "cookbook", "README.md")).read()
    assert "build/sluice test examples/cookbook" in readme
    r = run_sluice("test", "examples/cookbook", cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failures / 0 errors" in r.stdout
    recipes = [p for p in glob.glob(os.path.join(ROOT, "examples", "cookbook", "rules", "*.lua"))
               if not p.endswith("_spec.lua")]
    assert len(recipes) >= 10


def test_cookbook_rules_run_together_in_the_engine(sluice):
    from conftest import send_events
    ex = os.path.join(ROOT, "examples", "cookbook")
    port = free_port()
    text = open(os.path.join(ex, "sluice.conf.lua")).read()
    text = text.replace("127.0.0.1:7400", "127.0.0.1:%d" % port)
    text = text.replace('dir = "rules"', 'dir = %r' % os.path.join(ex, "rules"))
    eng = sluice(text)
    send_events("127.0.0.1:%d" % port, [
        {"topic": "orders.new", "payload": {"region": "eu", "n": 1}},
        {"topic": "logs.app", "payload": {"level": "debug"}},
        {"topic": "users.signup", "payload": {"name": "Ada", "password": "x"}},
        {"topic": "payments.card", "payload": {"country": "FR"}},
        {"topic": "pageviews.web", "payload": {"path": "/a"}},
        {"topic": "webhooks.x", "payload": {"delivery_id": "d1"}},
        {"topic": "webhooks.x", "payload": {"delivery_id": "d1"}},
        {"topic": "audit.login", "payload": {"action": "login", "ok": True, "user": "ada"}},
        {"topic": "legacy.user", "payload": {"uid": 7, "uname": "ada"}},
    ])
    assert eng.stop() == 0
    eu = read_ndjson(eng.path("var/orders-eu.ndjson"))
    assert [e["payload"]["n"] for e in eu] == [1]
    allout = {e["topic"]: e for e in read_ndjson(eng.path("var/all.ndjson"))}
    assert "logs.app" not in allout  # dropped
    assert allout["users.signup"]["payload"]["password"] == "[redacted]"
    assert allout["payments.card"]["payload"]["country_name"] == "France"
    hooks = [e for e in read_ndjson(eng.path("var/all.ndjson")) if e["topic"] == "webhooks.x"]
    assert len(hooks) == 1  # the repeat dropped
    assert allout["v2.user"]["payload"] == {"user": {"id": 7, "name": "ada"}}
    assert [e["topic"] for e in read_ndjson(eng.path("var/siem.ndjson"))] == ["audit.login"]
    assert [e["payload"] for e in read_ndjson(eng.path("var/analytics.ndjson"))] == [
        {"action": "login", "ok": True}]
    # on_stop flushed the partial minute; rules.persist kept the state
    summaries = read_ndjson(eng.path("var/summaries.ndjson"))
    assert [s["payload"]["by_path"] for s in summaries] == [{"/a": 1}]
    assert eng.path("var/rule-state/60_count_per_minute.lua.state").exists()


def test_readme_route_dry_run_command_prints_what_the_readme_shows():
    """The `sluice route` command under "Testing rules", read from the
    README and run as shown (the repo's own config and rules), prints the
    line the README shows: routed to archive and console by
    rules/10_orders.lua, with the priority header set."""
    import re
    import shlex
    readme = open(os.path.join(ROOT, "README.md")).read()
    m = re.search(r"^\$ (echo .*\| build/sluice route -c sluice\.conf\.lua)\n(\{.*\})$",
                  readme, re.M)
    assert m, "the README's route example is gone"
    cmd, shown = m.group(1), m.group(2)
    payload = shlex.split(cmd.split("|")[0])[1]
    argv = [SLUICE_BIN] + shlex.split(cmd.split("|")[1])[1:]
    r = subprocess.run(argv, input=payload + "\n", capture_output=True,
                       text=True, timeout=10, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("index", "decision", "outputs", "rule", "reason", "emitted"):
        assert '"%s":%s' % (key, json.dumps(out[key], separators=(",", ":"))) in shown, key
    assert out["event"]["headers"]["priority"] == "high"
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", out["event"]["headers"]["traceparent"])


def test_sluice_test_without_a_folder_runs_the_specs_in_rules(tmp_path):
    """`sluice test` with no DIR reads rules/ of the current folder."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "10_x.lua").write_text(
        'return { on_event = function(ev) return "out" end }\n')
    (tmp_path / "rules" / "10_x_spec.lua").write_text(
        'local testing = require("sluice.testing")\n'
        'describe("10_x", function()\n'
        '  it("routes", function()\n'
        '    assert.are.same({ "out" }, testing.load("10_x.lua"):run({ topic = "t" }).routes)\n'
        '  end)\n'
        'end)\n')
    r = run_sluice("test", cwd=str(tmp_path), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 success / 0 failures / 0 errors" in r.stdout


def test_readme_check_example_prints_the_lines_the_readme_shows(tmp_path):
    """The `sluice check -c bad.lua` block under "Configuration": a config
    with those four faults prints those lines (`...` stands for the rest of
    a list), in that order, and exit code 1."""
    import re
    readme = open(os.path.join(ROOT, "README.md")).read()
    m = re.search(r"^\$ build/sluice check -c bad\.lua\n((?:.+\n)+?)```", readme, re.M)
    assert m, "the README's check example is gone"
    shown = m.group(1).splitlines()
    (tmp_path / "bad.lua").write_text("""return {
  inputs  = { { name = "app", type = "tcp", listen = "127.0.0.1:99999", extra = 1 } },
  outputs = { { name = "archive", type = "file", path = "a.ndjson" },
              { name = "archive", type = "file", path = "b.ndjson" } },
  routes  = { { topics = "*", to = "nope" } },
}
""")
    r = subprocess.run([SLUICE_BIN, "check", "-c", "bad.lua"], capture_output=True,
                       text=True, timeout=10, cwd=str(tmp_path))
    assert r.returncode == 1 and r.stdout == ""
    got = r.stderr.splitlines()
    assert len(got) == len(shown), got
    for line, want in zip(got, shown):
        pattern = ".*".join(re.escape(part) for part in want.split("..."))
        assert re.fullmatch(pattern, line), (line, want)


def test_readme_python_client_lands_its_event(sluice):
    """The minimal Python client under "The native protocol", run as shown
    against a tcp input (its port swapped for a free one): the event
    arrives with its topic, key and payload."""
    import re
    readme = open(os.path.join(ROOT, "README.md")).read()
    m = re.search(r"^A minimal client in Python:\n\n```python\n(.*?)```", readme, re.M | re.S)
    assert m, "the README's Python client is gone"
    code = m.group(1)
    assert '("127.0.0.1", 7400)' in code
    port = free_port()
    eng = sluice({"inputs": [{"name": "app", "type": "tcp", "listen": "127.0.0.1:%d" % port}],
                  "outputs": [{"name": "out", "type": "file", "path": "out.ndjson"}],
                  "routes": [{"topics": "*", "to": "out"}]})
    code = code.replace('("127.0.0.1", 7400)', '("127.0.0.1", %d)' % port)
    r = subprocess.run(["/usr/bin/python3", "-c", code + "s.close()\n"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    got = wait_for(lambda: read_ndjson(eng.path("out.ndjson")), timeout=10,
                   what="the client's event in out.ndjson")
    assert (got[0]["topic"], got[0]["key"], got[0]["payload"]) == (
        "orders.eu", "cust-42", {"amount": 20, "sku": "A1"})


def _readme_lua_blocks(*sections):
    """The ```lua blocks of the README sections whose titles start so."""
    import re
    text = open(os.path.join(ROOT, "README.md")).read()
    out = []
    for part in re.split(r"(?m)^(?=## )", text):
        if any(part.startswith("## " + s) for s in sections):
            out += re.findall(r"```lua\n(.*?)```", part, re.S)
    return out


README_ENV = {"TEAM": "ops", "HOOK_TOKEN": "t0ken", "FORWARD_KEY": "k3y"}


@pytest.mark.parametrize("section", ["Configuration", "Workers",
                                     "HTTP output", "Syslog", "Fluent forward"])
def test_readme_config_blocks_pass_check(tmp_path, section):
    """Each config the README shows in these sections passes `sluice
    check`: whole ones as they are, fragments (inputs = ..., outputs =
    ...) inside a config that adds only what they lack."""
    blocks = [b for b in _readme_lua_blocks(section)
              if b.startswith(("return {", "inputs", "outputs"))]
    assert blocks, section
    (tmp_path / "rules").mkdir()
    # the HTTP output's tls.ca_file: a real CA certificate, since check
    # loads the tls files as run does
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj",
                    "/CN=readme test CA", "-keyout", str(tmp_path / "ca.key"),
                    "-out", str(tmp_path / "ca.pem")],
                   check=True, capture_output=True, timeout=30)
    env = dict(os.environ, **README_ENV)
    for i, block in enumerate(blocks):
        if block.startswith("return {"):
            text = block
        else:
            body = block.rstrip().rstrip(",")
            if not re.search(r"(?m)^inputs\s*=", body):
                body += ',\n  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:7400" } }'
            if not re.search(r"(?m)^outputs\s*=", body):
                body += ',\n  outputs = { { name = "out", type = "null" } }'
            text = "return {\n" + body + "\n}\n"
        cfg = tmp_path / ("c%d.lua" % i)
        cfg.write_text(text)
        r = subprocess.run([SLUICE_BIN, "check", "-c", str(cfg)], capture_output=True,
                           text=True, timeout=10, env=env)
        assert r.returncode == 0, (text, r.stderr)


def test_readme_rule_block_loads_and_decides_as_its_comments_say(tmp_path):
    """The rule table under "Rules", as a rule file: it loads, a large
    amount goes to audit and warehouse with priority high, a small one to
    warehouse, none is dropped with "no amount"."""
    [rule] = [b for b in _readme_lua_blocks("Rules") if "on_event" in b]
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "10_readme.lua").write_text(rule)
    cfg = tmp_path / "c.lua"
    cfg.write_text("""return {
  outputs = { { name = "audit", type = "null" }, { name = "warehouse", type = "null" } },
  rules = { dir = "rules" } }""")
    events = "".join(json.dumps({"topic": "orders.eu", "payload": p}) + "\n"
                     for p in ({"amount": 5000}, {"amount": 5}, {}))
    r = run_sluice("route", "-c", str(cfg), input=events)
    assert r.returncode == 0, r.stderr
    out = [json.loads(l) for l in r.stdout.splitlines()]
    assert [(o["decision"], o["outputs"]) for o in out] == [
        ("routed", ["audit", "warehouse"]), ("routed", ["warehouse"]), ("dropped", [])]
    assert out[0]["event"]["headers"]["priority"] == "high"
    assert out[2]["reason"] == "no amount"


def test_readme_spec_block_passes_beside_the_repo_rule(tmp_path):
    """The spec under "Testing rules", saved as the file its first line
    names beside a copy of rules/10_orders.lua, passes `sluice test`."""
    import shutil
    [spec] = _readme_lua_blocks("Testing rules")
    name = spec.splitlines()[0].lstrip("- ").strip()
    assert name == "rules/10_orders_spec.lua", name
    (tmp_path / "rules").mkdir()
    shutil.copy(os.path.join(ROOT, "rules", "10_orders.lua"), tmp_path / "rules")
    (tmp_path / name).write_text(spec)
    r = run_sluice("test", "rules", cwd=str(tmp_path), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 success / 0 failures / 0 errors" in r.stdout


def readme_block_after(readme, command_prefix):
    """The `$ ...` command of the README that starts with command_prefix and
    the lines it shows, up to the next `$ ` line or the end of its block."""
    import re
    m = re.search(r"^\$ (%s[^\n]*)\n(.*?)(?=^\$ |^```)" % re.escape(command_prefix),
                  readme, re.M | re.S)
    assert m, "the README's `%s` example is gone" % command_prefix
    return m.group(1), m.group(2).splitlines()


def test_readme_operating_commands_print_what_the_readme_shows(tmp_path):
    """The `sluice check --events`, `sluice tap` (text and --json) and
    `sluice top --once` commands of the README's Operating section, run as
    shown against the repo's own sluice.conf.lua and rules/ (ports moved to
    free ones), print the lines the README shows: ids, times and rates
    aside. The config's admin block is what makes tap and top work."""
    import shlex
    import shutil
    import socket
    import threading
    import time
    import msgpack
    from helpers_http import metrics, wait_metric
    readme = open(os.path.join(ROOT, "README.md")).read()
    port, admin = free_port(), free_port()
    conf = open(os.path.join(ROOT, "sluice.conf.lua")).read()
    assert '"127.0.0.1:7400"' in conf and '"127.0.0.1:9090"' in conf
    conf = conf.replace("127.0.0.1:7400", "127.0.0.1:%d" % port)
    conf = conf.replace("127.0.0.1:9090", "127.0.0.1:%d" % admin)
    (tmp_path / "sluice.conf.lua").write_text(conf)
    shutil.copytree(os.path.join(ROOT, "rules"), tmp_path / "rules")

    def argv(cmd):
        args = shlex.split(cmd)
        assert args[0] == "build/sluice", cmd
        return [SLUICE_BIN] + args[1:]

    # check --events, with the samples the README cats
    _, samples = readme_block_after(readme, "cat samples.ndjson")
    (tmp_path / "samples.ndjson").write_text("\n".join(samples) + "\n")
    cmd, shown = readme_block_after(readme, "build/sluice check -c sluice.conf.lua --events")
    r = subprocess.run(argv(cmd), capture_output=True, text=True, timeout=20,
                       cwd=str(tmp_path))
    assert r.returncode == 1, r.stdout + r.stderr
    got = r.stdout.splitlines()
    assert got[0].startswith(shown[0].split(" rules in ")[0] + " rules in "), got
    assert got[1:] == shown[1:], got

    # the engine, then tap (text and json) while the tap's four events come
    eng = subprocess.Popen([SLUICE_BIN, "run", "-c", "sluice.conf.lua"],
                           cwd=str(tmp_path), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        def admin_up():
            try:
                socket.create_connection(("127.0.0.1", admin), 1).close()
                return True
            except OSError:
                return False
        wait_for(admin_up, 10, what="the admin server")
        taps = []
        for prefix in ("build/sluice tap -c sluice.conf.lua --topics",
                       "build/sluice tap -c sluice.conf.lua --json"):
            cmd, shown = readme_block_after(readme, prefix)
            p = subprocess.Popen(argv(cmd), cwd=str(tmp_path), text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            taps.append((p, shown))
        wait_metric(admin, "sluice_tap_clients", lambda v: v == 2)
        events = [{"topic": "orders.eu", "payload": {"amount": 5}},
                  {"topic": "orders.us", "payload": {"amount": 5000}},
                  {"topic": "orders.eu", "payload": {}},
                  {"topic": "nowhere", "payload": 3}]
        send_events("127.0.0.1:%d" % port, events)
        outs = []
        for p, shown in taps:
            out, err = p.communicate(timeout=20)
            assert p.returncode == 0, err
            outs.append((out.splitlines(), shown))
        (text, shown), (js, shown_js) = outs
        assert len(text) == len(shown) == 4, text
        for line, want in zip(text, shown):
            head, _, tail = want.partition(" id=")
            assert line.startswith(head + " id="), (line, want)
            assert line.endswith(tail.split("...", 1)[1]), (line, want)
        assert len(js) == len(shown_js) == 1, js
        got, want = json.loads(js[0]), shown_js[0].replace('{...}', 'null')
        got["event"] = None
        assert got == json.loads(want), js

        # top --once over steady traffic
        stop = []

        def feed():
            while not stop:
                send_events("127.0.0.1:%d" % port, events * 50)
                time.sleep(0.05)
        t = threading.Thread(target=feed)
        t.start()
        try:
            wait_metric(admin, "sluice_input_events_total", lambda v: v > 100,
                        input="app")
            cmd, shown = readme_block_after(readme, "build/sluice top -c sluice.conf.lua --once")
            r = subprocess.run(argv(cmd), capture_output=True, text=True,
                               timeout=30, cwd=str(tmp_path))
        finally:
            stop.append(1)
            t.join()
        assert r.returncode == 0, r.stderr
        got = r.stdout.splitlines()
        assert got[0].startswith("sluice top - 127.0.0.1:%d - rules version 1 - over "
                                 % admin), got
        names = lambda lines: [l.split()[0] for l in lines if l.strip()]
        assert names(got[1:]) == names(shown[1:]), (got, shown)
        heads = [l for l in shown if l.strip().isupper() or "/s" in l and l.split()[0].isupper()]
        for h in heads:
            assert h in got, (h, got)
    finally:
        eng.terminate()
        eng.wait(timeout=20)
