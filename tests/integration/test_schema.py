"""Payload contracts per topic (issue 16) through the real binary: the
config's schemas list, enforcement at the HTTP input (400 naming the batch
index, the JSON path and what was expected) and at stream inputs (the dead
letter with sluice-error), warn mode, versions by header, field and
default, outputs' schema, reloads of schemas and `sluice check` on
compatible and breaking pairs. Counts on /metrics are exact."""
import json
import subprocess

from conftest import (SLUICE_BIN, free_port, metric, read_ndjson, run_sluice,
                      scrape, send_events, wait_for, wait_lines, with_test_workers)
from helpers_http import curl

ORDER_V1 = {"type": "object", "required": ["sku"],
            "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}}}
# v2: an optional field added, compatible with readers of v1
ORDER_V2 = {"type": "object", "required": ["sku"],
            "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"},
                           "note": {"type": "string"}}}
# sku gone: breaks readers of any version that had it
NO_SKU = {"type": "object", "properties": {"qty": {"type": "integer"}}}
STRICT = {"type": "object", "required": ["sku", "qty"],
          "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}}}


def write_schemas(folder, **files):
    d = folder / "schemas"
    d.mkdir(exist_ok=True)
    for name, schema in files.items():
        (d / name.replace("_", ".")).write_text(json.dumps(schema))
    return d


def config(port, admin, schemas, http=None, rules=None, outputs_extra="",
           out_schema=None):
    """A tcp input (and an http one), out.ndjson, dead.ndjson as the dead
    letter, everything routed to out; schemas is the Lua list's text."""
    http_in = (', { name = "web", type = "http", listen = "127.0.0.1:%d" }'
               % http) if http else ""
    schema_key = ', schema = "%s"' % out_schema if out_schema else ""
    rules_key = 'rules = { dir = "%s" },' % rules if rules else ""
    return """return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" }%s },
  outputs = { { name = "out", type = "file", path = "out.ndjson"%s },
              { name = "dead", type = "file", path = "dead.ndjson" }%s },
  dead_letter = "dead",
  routes = { { topics = "*", to = "out" } },
  %s
  admin = { listen = "127.0.0.1:%d" },
  schemas = %s,
}
""" % (port, http_in, schema_key, outputs_extra, rules_key, admin, schemas)


def two_versions(d, extra=""):
    return """{
    { topics = "orders.*", file = "%s/order.v1.json"%s },
    { topics = "orders.*", file = "%s/order.v2.json" },
  }""" % (d, extra, d)


def counts(admin, contract="orders.*", version="2"):
    s = scrape("127.0.0.1:%d" % admin)
    return {r: metric(s, "sluice_schema_events_total", contract=contract,
                      version=version, result=r)
            for r in ("valid", "invalid", "warned")}


def post(port, body, path="/v1/events", headers=()):
    return curl("http://127.0.0.1:%d%s" % (port, path), data=json.dumps(body),
                content_type="application/json", headers=headers)


def start(sluice, tmp_path, schemas=None, **kw):
    d = write_schemas(tmp_path, order_v1_json=ORDER_V1, order_v2_json=ORDER_V2)
    port, admin = free_port(), free_port()
    http = free_port() if kw.pop("with_http", False) else None
    eng = sluice(config(port, admin, schemas or two_versions(d), http=http, **kw))
    return eng, port, admin, http, d


# ---- the HTTP input -------------------------------------------------------

def test_http_batch_with_one_misfit_is_refused_whole_naming_index_path_and_expectation(
        sluice, tmp_path):
    eng, port, admin, http, _ = start(sluice, tmp_path, with_http=True)
    batch = [{"topic": "orders.new", "payload": {"sku": "a1", "qty": 1}},
             {"topic": "orders.new", "payload": {"sku": 42, "qty": 2}},
             {"topic": "orders.new", "payload": {"sku": "a3"}}]
    r = post(http, batch)
    assert r.status == 400, r
    body = r.json()
    assert body["index"] == 1
    assert body["path"] == "/sku"
    assert "string" in body["expected"]
    assert body["contract"] == "orders.*" and body["version"] == "2"
    assert "/sku" in body["error"] and "orders.*" in body["error"]
    # nothing of that batch was accepted
    r = post(http, [{"topic": "orders.new", "payload": {"sku": "ok"}},
                    {"topic": "other", "payload": 5}])
    assert r.status == 202, r
    got = wait_lines(eng.path("out.ndjson"), 2)
    assert len(got) == 2
    assert [json.loads(l)["payload"] for l in got] == [{"sku": "ok"}, 5]
    # the refused event counted once, the accepted one once; no contract
    # covers "other"
    assert counts(admin) == {"valid": 1, "invalid": 1, "warned": 0}
    assert not eng.path("dead.ndjson").exists() or read_ndjson(eng.path("dead.ndjson")) == []


def test_http_bare_payloads_on_a_topic_path_are_checked_too(sluice, tmp_path):
    eng, port, admin, http, _ = start(sluice, tmp_path, with_http=True)
    r = curl("http://127.0.0.1:%d/v1/topics/orders.new" % http,
             data='{"sku":"x"}\n{"qty":"many","sku":"y"}\n',
             content_type="application/x-ndjson")
    assert r.status == 400, r
    assert r.json()["index"] == 1 and r.json()["path"] == "/qty"
    assert "integer" in r.json()["expected"]


# ---- stream inputs: the dead letter -----------------------------------------

def test_native_tcp_misfit_goes_to_the_dead_letter_with_sluice_error(sluice, tmp_path):
    eng, port, admin, _, _ = start(sluice, tmp_path)
    send_events("127.0.0.1:%d" % port, [
        {"id": "good", "topic": "orders.new", "payload": {"sku": "a", "qty": 1}},
        {"id": "bad", "topic": "orders.new", "payload": {"sku": "b", "qty": "x"}},
        {"id": "free", "topic": "misc", "payload": "anything"}])
    out = [json.loads(l) for l in wait_lines(eng.path("out.ndjson"), 2)]
    assert [e["id"] for e in out] == ["good", "free"]
    dead = [json.loads(l) for l in wait_lines(eng.path("dead.ndjson"), 1)]
    assert [e["id"] for e in dead] == ["bad"]
    err = dead[0]["headers"]["sluice-error"]
    assert err.startswith("contract orders.* version 2: /qty: expected ")
    assert "integer" in err
    assert dead[0]["payload"] == {"sku": "b", "qty": "x"}  # kept as sent
    assert counts(admin) == {"valid": 1, "invalid": 1, "warned": 0}
    line = eng.wait_log("event does not fit its schema; sent to the dead letter")
    assert line["event_id"] == "bad" and line["topic"] == "orders.new"
    assert "/qty" in line["error"]


def test_warn_mode_passes_the_event_on_counts_it_and_marks_it_on_the_tap(
        sluice, tmp_path):
    d = write_schemas(tmp_path, order_v1_json=ORDER_V1, order_v2_json=ORDER_V2)
    eng, port, admin, _, _ = start(
        sluice, tmp_path, schemas=two_versions(d, extra=', mode = "warn"'))
    tap = subprocess.Popen(["curl", "-sN", "--max-time", "20",
                            "http://127.0.0.1:%d/tap?topics=orders.*&limit=2" % admin],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # and `sluice tap`, the command people run, in its text form
    cli = subprocess.Popen([SLUICE_BIN, "tap", "-c", str(eng.config), "--limit", "2"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: metric("127.0.0.1:%d" % admin, "sluice_tap_clients") == 2,
                 what="the tap clients")
        send_events("127.0.0.1:%d" % port, [
            {"id": "w1", "topic": "orders.new", "payload": {"qty": 3}},
            {"id": "w2", "topic": "orders.new", "payload": {"sku": "fine"}}])
        lines, _ = tap.communicate(timeout=15)
        text, _ = cli.communicate(timeout=15)
    finally:
        for p in (tap, cli):
            if p.poll() is None:
                p.kill()
                p.wait()
    text = text.decode().splitlines()
    assert len(text) == 2
    assert " schema=\"contract orders.* version 2: " in text[0] and "id=w1" in text[0]
    assert "schema=" not in text[1]
    out = [json.loads(l) for l in wait_lines(eng.path("out.ndjson"), 2)]
    assert [e["id"] for e in out] == ["w1", "w2"]
    assert "sluice-error" not in (out[0].get("headers") or {})
    taps = [json.loads(l) for l in lines.decode().splitlines()]
    assert taps[0]["outcome"] == "routed" and taps[0]["outputs"] == ["out"]
    assert taps[0]["schema"].startswith("contract orders.* version 2: ")
    assert "schema" not in taps[1]
    assert counts(admin) == {"valid": 1, "invalid": 0, "warned": 1}
    assert eng.wait_log("event does not fit its schema (warn mode); passed on")[
        "event_id"] == "w1"


# ---- versions -----------------------------------------------------------------

def version_rule(folder):
    rules = folder / "rules"
    rules.mkdir()
    # an earlier rule changes the event: the version stays with it
    (rules / "05_touch.lua").write_text("""return {
  topics = { "*" },
  on_event = function(ev) ev.headers.touched = "yes" end,
}
""")
    (rules / "10_version.lua").write_text("""return {
  topics = { "*" },
  on_event = function(ev)
    ev.headers["seen-version"] = ev.schema_version or "none"
    return "out"
  end,
}
""")
    return rules


def test_versions_by_header_and_by_default_and_readable_by_rules(sluice, tmp_path):
    d = write_schemas(tmp_path, order_v1_json=ORDER_V1, order_v2_json=STRICT)
    rules = version_rule(tmp_path)
    port, admin = free_port(), free_port()
    eng = sluice(config(port, admin, two_versions(d), rules=rules))
    send_events("127.0.0.1:%d" % port, [
        # names v1: qty may be missing
        {"id": "h1", "topic": "orders.a", "headers": {"schema-version": "1"},
         "payload": {"sku": "s"}},
        # no version: the newest (2) wants qty
        {"id": "n2", "topic": "orders.a", "payload": {"sku": "s"}},
        {"id": "n3", "topic": "orders.a", "payload": {"sku": "s", "qty": 1}},
        {"id": "x", "topic": "misc", "payload": 1}])
    out = [json.loads(l) for l in wait_lines(eng.path("out.ndjson"), 3)]
    # sorted: keyless events may pass each other with workers = N
    assert sorted((e["id"], e["headers"]["seen-version"]) for e in out) == [
        ("h1", "1"), ("n3", "2"), ("x", "none")]
    dead = [json.loads(l) for l in wait_lines(eng.path("dead.ndjson"), 1)]
    assert dead[0]["id"] == "n2"
    assert dead[0]["headers"]["sluice-error"].startswith(
        "contract orders.* version 2: /")
    assert counts(admin, version="1") == {"valid": 1, "invalid": 0, "warned": 0}
    assert counts(admin, version="2") == {"valid": 1, "invalid": 1, "warned": 0}


def test_default_version_and_a_payload_version_field(sluice, tmp_path):
    d = write_schemas(tmp_path, order_v1_json=ORDER_V1, order_v2_json=STRICT)
    port, admin = free_port(), free_port()
    eng = sluice(config(port, admin, """{
    { topics = "orders.*", file = "%s/order.v1.json", default_version = "1",
      version_field = "v" },
    { topics = "orders.*", file = "%s/order.v2.json" },
  }""" % (d, d)))
    send_events("127.0.0.1:%d" % port, [
        {"id": "d1", "topic": "orders.a", "payload": {"sku": "s"}},
        {"id": "f2", "topic": "orders.a", "payload": {"sku": "s", "v": "2"}},
        {"id": "f2ok", "topic": "orders.a", "payload": {"sku": "s", "v": 2, "qty": 1}}])
    out = [json.loads(l)["id"] for l in wait_lines(eng.path("out.ndjson"), 2)]
    assert out == ["d1", "f2ok"]
    dead = [json.loads(l) for l in wait_lines(eng.path("dead.ndjson"), 1)]
    assert dead[0]["id"] == "f2"
    assert counts(admin, version="1")["valid"] == 1
    assert counts(admin, version="2") == {"valid": 1, "invalid": 1, "warned": 0}


def test_an_unknown_version_is_a_violation_naming_the_known_ones(sluice, tmp_path):
    eng, port, admin, http, _ = start(sluice, tmp_path, with_http=True)
    send_events("127.0.0.1:%d" % port, [
        {"id": "u", "topic": "orders.a", "headers": {"schema-version": "7"},
         "payload": {"sku": "s"}}])
    dead = [json.loads(l) for l in wait_lines(eng.path("dead.ndjson"), 1)]
    err = dead[0]["headers"]["sluice-error"]
    assert err == ('contract orders.* version unknown: /: expected a known schema '
                   'version (1, 2) in header schema-version, got "7"')
    r = post(http, [{"topic": "orders.a", "headers": {"schema-version": "2.5"},
                     "payload": {"sku": "s"}}])
    assert r.status == 400 and r.json()["version"] == "unknown"
    assert "(1, 2)" in r.json()["expected"]
    s = scrape("127.0.0.1:%d" % admin)
    assert metric(s, "sluice_schema_events_total", contract="orders.*",
                  version="unknown", result="invalid") == 2


# ---- outputs --------------------------------------------------------------------

def test_an_output_schema_sends_a_reshaped_event_to_the_dead_letter(sluice, tmp_path):
    d = write_schemas(tmp_path, order_v1_json=ORDER_V1, order_v2_json=ORDER_V2)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10_strip.lua").write_text("""return {
  topics = { "orders.*" },
  on_event = function(ev)
    if ev.payload.strip then ev.payload.sku = nil end
    return "out"
  end,
}
""")
    port, admin = free_port(), free_port()
    eng = sluice(config(port, admin, "{}", rules=rules,
                        out_schema="%s/order.v1.json" % d))
    send_events("127.0.0.1:%d" % port, [
        {"id": "kept", "topic": "orders.a", "payload": {"sku": "s"}},
        {"id": "stripped", "topic": "orders.a", "payload": {"sku": "s", "strip": True}}])
    out = [json.loads(l)["id"] for l in wait_lines(eng.path("out.ndjson"), 1)]
    dead = [json.loads(l) for l in wait_lines(eng.path("dead.ndjson"), 1)]
    assert out == ["kept"]
    assert dead[0]["id"] == "stripped"
    assert dead[0]["headers"]["sluice-output"] == "out"
    assert dead[0]["headers"]["sluice-error"].startswith("output out schema: ")
    assert "sku" not in dead[0]["payload"]  # as the rule left it
    assert metric("127.0.0.1:%d" % admin, "sluice_schema_output_rejected_total",
                  output="out") == 1


# ---- reload ---------------------------------------------------------------------

def reload_lines(eng):
    return [l for l in eng.logs() if l.get("msg") in (
        "config reloaded", "config reload rejected; the running config stays")]


def reload(eng, text, n):
    eng.config.write_text(with_test_workers(text))  # SLUICE_TEST_WORKERS=N too
    eng.signal(1)
    return wait_for(lambda: len(reload_lines(eng)) >= n and reload_lines(eng)[n - 1],
                    timeout=10, what="reload %d:\n%s" % (n, eng.stderr()[-3000:]))


def test_reload_of_schemas_all_or_nothing_and_no_breaking_change_in_place(
        sluice, tmp_path):
    d = write_schemas(tmp_path, order_v1_json=ORDER_V1, order_v2_json=ORDER_V2)
    port, admin = free_port(), free_port()
    text = config(port, admin, two_versions(d))
    eng = sluice(text)
    addr = "127.0.0.1:%d" % port
    # good: a third version (a new major may break) joins
    (d / "order.v3.json").write_text(json.dumps(NO_SKU))
    three = """{
    { topics = "orders.*", file = "%s/order.v1.json" },
    { topics = "orders.*", file = "%s/order.v2.json" },
    { topics = "orders.*", file = "%s/order.v3.json" },
  }""" % (d, d, d)
    assert reload(eng, config(port, admin, three), 1)["msg"] == "config reloaded"
    send_events(addr, [{"id": "a", "topic": "orders.x", "payload": {"qty": 1}}])
    assert json.loads(wait_lines(eng.path("out.ndjson"), 1)[0])["id"] == "a"
    assert counts(admin, version="3")["valid"] == 1
    # bad: one broken file refuses the whole reload; v3 stays the newest
    (d / "broken.v4.json").write_text('{"type": "object", "properties": ')
    bad = three[:-4] + '\n    { topics = "orders.*", file = "%s/broken.v4.json" },\n  }' % d
    line = reload(eng, config(port, admin, bad), 2)
    assert line["msg"] == "config reload rejected; the running config stays"
    assert "schemas[4].file" in line["error"]
    # breaking change to the loaded version 2: refused
    (d / "order.v2.json").write_text(json.dumps(NO_SKU))
    line = reload(eng, config(port, admin, three), 3)
    assert line["msg"] == "config reload rejected; the running config stays"
    assert "orders.* version 2" in line["error"]
    assert "a breaking change needs a new version" in line["error"]
    # the running contracts are the ones of reload 1
    send_events(addr, [{"id": "b", "topic": "orders.x", "headers": {"schema-version": "2"},
                        "payload": {"qty": 1}}])
    dead = [json.loads(l) for l in wait_lines(eng.path("dead.ndjson"), 1)]
    assert dead[0]["id"] == "b"
    assert counts(admin, version="2") == {"valid": 0, "invalid": 1, "warned": 0}


# ---- config errors and `sluice check` --------------------------------------------

def check(tmp_path, schemas, name="c.lua"):
    (tmp_path / name).write_text("""return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:1" } },
  outputs = { { name = "out", type = "stdout" } },
  schemas = %s,
}
""" % schemas)
    return run_sluice("check", "-c", tmp_path / name)


def test_check_lists_compatible_versions_and_paths_are_relative_to_the_config(tmp_path):
    write_schemas(tmp_path, order_v1_json=ORDER_V1, order_v2_json=ORDER_V2)
    r = check(tmp_path, """{
    { topics = "orders.*", file = "schemas/order.v1.json" },
    { topics = "orders.*", file = "schemas/order.v2.json" } }""")
    assert r.returncode == 0, r.stderr
    assert 'info: orders.* 2 is compatible with 1: optional field "note" added' in r.stdout
    assert "schemas checked" in r.stdout


def test_check_refuses_a_breaking_minor_and_reports_a_breaking_major(tmp_path):
    d = write_schemas(tmp_path, a_json=ORDER_V1, b_json=NO_SKU, c_json=NO_SKU)
    r = check(tmp_path, """{
    { topics = "orders.*", file = "schemas/a.json", version = "2.0" },
    { topics = "orders.*", file = "schemas/b.json", version = "2.1" } }""")
    assert r.returncode == 1
    assert ('orders.* 2.1 breaks readers of 2.0: field "sku" removed; a breaking '
            'change needs a new major version') in r.stderr
    r = check(tmp_path, """{
    { topics = "orders.*", file = "schemas/a.json", version = 2 },
    { topics = "orders.*", file = "schemas/c.json", version = 3 } }""")
    assert r.returncode == 0, r.stderr
    assert ('info: orders.* 3 breaks readers of 2 (a new major version): field '
            '"sku" removed') in r.stdout


def test_config_errors_name_the_key_path(tmp_path):
    write_schemas(tmp_path, order_v1_json=ORDER_V1, plain_json=ORDER_V1,
                  bad_v3_json={"type": "object", "frobnicate": 1})
    r = check(tmp_path, """{
    { topics = "orders.*", file = "schemas/plain.json" },
    { topics = "a", file = "schemas/order.v1.json", mode = "loud" },
    { topics = "b", file = "schemas/order.v1.json", version = "x.1" },
    { topics = "c", file = "schemas/order.v1.json", default_version = "9" },
    { topics = "d", file = "schemas/missing.v1.json" },
    { topics = "e", file = "schemas/bad.v3.json" },
    { topics = "f", file = "schemas/order.v1.json", colour = "red" },
    { file = "schemas/order.v1.json" },
    { topics = "g", file = "schemas/order.v1.json", version_field = "v",
      version_header = "h" },
    { topics = "h", file = "schemas/order.v1.json" },
    { topics = "h", file = "schemas/order.v1.json", version = "1.0" },
    { topics = "m", file = "schemas/order.v1.json", mode = "warn" },
    { topics = "m", file = "schemas/order.v1.json", version = 2, mode = "enforce" },
    { topics = "n", file = "schemas/order.v1.json", version = "v9", mode = "quiet" } }""")
    assert r.returncode == 1
    e = r.stderr
    assert "c.lua: schemas[1].version: no version" in e
    assert 'c.lua: schemas[2].mode: expected "enforce" or "warn", got "loud"' in e
    assert 'c.lua: schemas[3].version: expected a version' in e
    assert "contract c: default_version 9 is none of its versions (1)" in e
    assert "c.lua: schemas[5].file: " in e
    assert "c.lua: schemas[6].file: " in e and "frobnicate" in e
    assert "c.lua: schemas[7]: unknown key 'colour'" in e
    assert "c.lua: schemas[8].topics: expected a topic glob" in e
    assert "contract g: version_header and version_field both set" in e
    assert "c.lua: schemas[11].version: version 1 of h is given twice" in e
    assert "c.lua: schemas[13].mode: differs from the mode set on another entry" in e
    # a bad version does not hide the entry's other problems
    assert 'c.lua: schemas[14].version: expected a version "MAJOR"' in e
    assert 'c.lua: schemas[14].mode: expected "enforce" or "warn", got "quiet"' in e
    r = check(tmp_path, '{ topics = "x", file = "y" }', name="d.lua")
    assert r.returncode == 1 and "d.lua: schemas: expected a list of tables" in r.stderr


# ---- the example and the README's commands -------------------------------------

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "schemas"


def comment_commands(text):
    """The curl commands of the config's leading comment, continuations joined."""
    lines = [l[2:].strip() for l in text.splitlines() if l.startswith("--")]
    cmds, i = [], 0
    while i < len(lines):
        if lines[i].startswith("curl"):
            cmd = lines[i]
            while cmd.endswith("\\"):
                i += 1
                cmd = cmd[:-1] + " " + lines[i]
            cmds.append(cmd)
        i += 1
    return cmds


def test_readme_check_output_is_what_sluice_check_prints_for_the_example():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("$ build/sluice check -c examples/schemas/sluice.conf.lua\n")[1]
    shown = block.split("```")[0].splitlines()
    r = run_sluice("check", "-c", "examples/schemas/sluice.conf.lua", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    got = r.stdout.splitlines()
    assert got[0].startswith(shown[0].split("...")[0])
    assert got[0].endswith("/examples/schemas/rules)")
    assert got[1] == shown[1]
    assert len(got) == 2 and r.stderr == ""


def test_example_curl_commands_are_accepted_and_refused_as_the_readme_says(sluice):
    import shlex
    text = (EXAMPLE / "sluice.conf.lua").read_text()
    web, tcp, admin = free_port(), free_port(), free_port()
    cmds = comment_commands(text)
    assert len(cmds) == 2 and all("127.0.0.1:8081" in c for c in cmds)
    run = (text.replace("127.0.0.1:8081", "127.0.0.1:%d" % web)
           .replace("127.0.0.1:7401", "127.0.0.1:%d" % tcp)
           .replace("127.0.0.1:9091", "127.0.0.1:%d" % admin)
           .replace('dir = "rules"', 'dir = %r' % str(EXAMPLE / "rules"))
           .replace('"schemas/', '"%s/schemas/' % EXAMPLE))
    eng = sluice(run)
    results = []
    for cmd in cmds:
        argv = shlex.split(cmd.replace("127.0.0.1:8081", "127.0.0.1:%d" % web))
        r = subprocess.run(argv + ["-sS"], capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stderr
        results.append(json.loads(r.stdout))
    assert results[0] == {"accepted": 1}
    readme = (ROOT / "README.md").read_text()
    shown = readme.split('`{"error":"contract orders.* version 2: /qty')[1]
    shown = json.loads('{"error":"contract orders.* version 2: /qty' +
                       shown.split("`")[0])
    assert results[1] == shown
    got = wait_for(lambda: read_ndjson(eng.path("var/orders.ndjson")), timeout=10,
                   what="the accepted order")
    assert got[0]["headers"]["order-version"] == "2"
    assert counts(admin) == {"valid": 1, "invalid": 1, "warned": 0}


def test_example_specs_pass_through_sluice_test():
    readme = (ROOT / "README.md").read_text()
    assert "`build/sluice test examples/schemas`" in readme
    r = run_sluice("test", "examples/schemas", cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failures / 0 errors" in r.stdout


def test_the_bench_section_runs_tiny_and_every_event_is_checked(tmp_path):
    import os
    env = dict(os.environ, BUILD="build", RUNS="1", EVENTS="2000",
               WORK=str(tmp_path), SLUICE=SLUICE_BIN,
               LOADGEN=os.path.join(os.path.dirname(SLUICE_BIN), "tools", "loadgen"))
    r = subprocess.run(["tests/bench/schema.sh"], cwd=str(ROOT), env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr  # it checks the valid count
    rows = r.stdout.splitlines()
    assert rows[0].split() == ["case", "events/s", "cpu", "us/event"]
    assert rows[1].startswith("tcp, no contract") and rows[2].startswith("tcp + contract")
    # the same contract, every event a misfit (it checks the invalid count)
    assert rows[3].startswith("+ contract, misfits") and len(rows) == 4


def test_http_msgpack_batch_names_the_index_and_warn_mode_batches_pass(sluice, tmp_path):
    import msgpack
    d = write_schemas(tmp_path, order_v1_json=ORDER_V1, order_v2_json=ORDER_V2)
    port, admin, http = free_port(), free_port(), free_port()
    eng = sluice(config(port, admin, """{
    { topics = "orders.*", file = "%s/order.v1.json" },
    { topics = "orders.*", file = "%s/order.v2.json" },
    { topics = "soft.*", file = "%s/order.v1.json", mode = "warn" } }""" % (d, d, d),
                        http=http))
    body = b"".join(msgpack.packb(e) for e in [
        {"topic": "orders.a", "payload": {"sku": "a"}},
        {"topic": "orders.a", "payload": {"sku": "b"}},
        {"topic": "orders.a", "payload": {"sku": "c", "note": 5}}])
    r = curl("http://127.0.0.1:%d/v1/events" % http, data=body,
             content_type="application/msgpack")
    assert r.status == 400, r
    assert (r.json()["index"], r.json()["path"]) == (2, "/note")
    r = post(http, [{"topic": "soft.a", "payload": {"qty": 1}},
                    {"topic": "soft.a", "payload": {"sku": "x"}}])
    assert r.status == 202 and r.json() == {"accepted": 2}
    assert [json.loads(l)["topic"] for l in wait_lines(eng.path("out.ndjson"), 2)] == \
        ["soft.a", "soft.a"]
    assert counts(admin, contract="soft.*", version="1") == \
        {"valid": 1, "invalid": 0, "warned": 1}
    assert counts(admin)["invalid"] == 1


def test_an_output_schema_misfit_leaves_the_other_targets_their_copy(sluice, tmp_path):
    d = write_schemas(tmp_path, order_v1_json=ORDER_V1, order_v2_json=ORDER_V2)
    port, admin = free_port(), free_port()
    text = config(port, admin, "{}", out_schema="%s/order.v1.json" % d,
                  outputs_extra=',\n              { name = "all", type = "file", '
                                'path = "all.ndjson" }')
    text = text.replace('to = "out"', 'to = { "out", "all" }')
    eng = sluice(text)
    send_events("127.0.0.1:%d" % port, [
        {"id": "fits", "topic": "t", "payload": {"sku": "s"}},
        {"id": "misfit", "topic": "t", "payload": {"qty": 1}}])
    assert [json.loads(l)["id"] for l in wait_lines(eng.path("all.ndjson"), 2)] == \
        ["fits", "misfit"]
    assert [json.loads(l)["id"] for l in wait_lines(eng.path("out.ndjson"), 1)] == ["fits"]
    dead = [json.loads(l) for l in wait_lines(eng.path("dead.ndjson"), 1)]
    assert dead[0]["id"] == "misfit" and dead[0]["headers"]["sluice-output"] == "out"
    assert metric("127.0.0.1:%d" % admin, "sluice_schema_output_rejected_total",
                  output="out") == 1


def test_readme_breaking_minor_line_is_what_sluice_check_prints(tmp_path):
    """The README's `sluice check` error for a 2.1 that drops a field of
    2.0, word for word but for the folder."""
    readme = (ROOT / "README.md").read_text()
    shown = readme.split("and for a 2.1 that drops a field of 2.0:\n`")[1]
    shown = shown.split("` on stderr")[0].replace("\n", " ")
    assert shown.startswith("/path/to/schemas/order.v2.1.json: error: ")
    v2 = json.loads((EXAMPLE / "schemas" / "order.v2.json").read_text())
    d = write_schemas(tmp_path, **{"order_v2_0_json": v2})
    v21 = json.loads(json.dumps(v2))
    del v21["properties"]["sku"]
    v21["required"] = [f for f in v21.get("required", []) if f != "sku"]
    (d / "order.v2.1.json").write_text(json.dumps(v21))
    r = check(tmp_path, """{
    { topics = "orders.*", file = "schemas/order.v2.0.json" },
    { topics = "orders.*", file = "schemas/order.v2.1.json" } }""")
    assert r.returncode == 1
    assert shown.replace("/path/to/", str(tmp_path) + "/") in r.stderr.splitlines()


BREAKING_PAIRS = [
    # (what the issue names, version 1, version 2, the change sluice check names)
    ("field removed", ORDER_V1, NO_SKU, 'field "sku" removed'),
    ("made required", ORDER_V1, STRICT, 'field "qty" made required'),
    ("type narrowed",
     {"type": "object", "properties": {"qty": {"type": "number"}}},
     {"type": "object", "properties": {"qty": {"type": "integer"}}},
     "type narrowed from number to integer at /properties/qty"),
    ("enum value removed",
     {"type": "object", "properties": {"cur": {"enum": ["EUR", "USD"]}}},
     {"type": "object", "properties": {"cur": {"enum": ["EUR"]}}},
     'enum value "USD" removed at /properties/cur'),
]


def test_check_calls_each_breaking_kind_of_the_issue_an_error_within_a_major(tmp_path):
    """Issue 16 item 4: a field removed or made required, a type narrowed,
    an enum value removed break readers: an error between 2.0 and 2.1, an
    info line across a major bump; an optional field added is compatible."""
    for kind, old, new, names in BREAKING_PAIRS:
        write_schemas(tmp_path, a_json=old, b_json=new)
        r = check(tmp_path, """{
    { topics = "t", file = "schemas/a.json", version = "2.0" },
    { topics = "t", file = "schemas/b.json", version = "2.1" } }""")
        assert r.returncode == 1, (kind, r.stdout, r.stderr)
        err = [l for l in r.stderr.splitlines() if "t 2.1 breaks readers of 2.0" in l]
        assert len(err) == 1 and names in err[0], (kind, r.stderr)
        assert err[0].endswith("a breaking change needs a new major version")
        r = check(tmp_path, """{
    { topics = "t", file = "schemas/a.json", version = 2 },
    { topics = "t", file = "schemas/b.json", version = 3 } }""")
        assert r.returncode == 0, (kind, r.stderr)
        assert "info: t 3 breaks readers of 2 (a new major version): " in r.stdout, kind
    write_schemas(tmp_path, a_json=ORDER_V1, b_json=ORDER_V2)
    r = check(tmp_path, """{
    { topics = "t", file = "schemas/a.json", version = "2.0" },
    { topics = "t", file = "schemas/b.json", version = "2.1" } }""")
    assert r.returncode == 0, r.stderr
    assert 'info: t 2.1 is compatible with 2.0: optional field "note" added' in r.stdout
