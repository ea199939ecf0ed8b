"""Operators see why every event went where it did (issue 15, items 1, 2,
3 and 5) against the real binary: `unrouted` drops and counts or routes the
events nothing decided, and the HTTP 202 says how many; /tap and `sluice
tap` carry the decision (rule, route, outputs, reason) with filters; a tap
client that reads nothing never holds the pipeline up; `sluice top --once`;
`sluice check` findings and `--events` as a CI gate.

Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_operator.py
"""

import json
import subprocess
import time

from conftest import SLUICE_BIN, run_sluice, wait_for
from helpers_http import config, curl, metric, metrics, ports, wait_metric

RULE = """
return {
  topics = { "orders.*", "bad.*" },
  on_event = function(ev)
    if ev.topic == "bad.boom" then error("boom") end
    local p = ev.payload
    if type(p) ~= "table" or type(p.amount) ~= "number" then
      return sluice.drop("order without a numeric amount")
    end
    if p.amount > 1000 then return { "archive", "console" } end
    return "archive"
  end,
}
"""


def engine(sluice, tmp_path, **top):
    port, admin = ports(2)
    d = tmp_path / "rules"
    d.mkdir(exist_ok=True)
    (d / "10_orders.lua").write_text(RULE)
    cfg = config(port, admin_port=admin, outputs=[
        {"name": "archive", "type": "file", "path": "archive.ndjson"},
        {"name": "console", "type": "file", "path": "console.ndjson"},
        {"name": "other", "type": "file", "path": "other.ndjson"}],
        routes=[{"topics": "logs.*", "to": "other"}],
        rules={"dir": str(d)}, **top)
    return sluice(cfg), port, admin


def ingest(port, events):
    r = curl("http://127.0.0.1:%d/v1/events" % port,
             data="\n".join(json.dumps(e) for e in events),
             content_type="application/x-ndjson")
    assert r.status == 202, r
    return r.json()


MIX = [{"topic": "orders.eu", "payload": {"amount": 5}},
       {"topic": "orders.us", "payload": {"amount": 5000}},
       {"topic": "orders.eu", "payload": {}},
       {"topic": "bad.boom", "payload": 1},
       {"topic": "logs.app", "payload": 2},
       {"topic": "nowhere", "payload": 3},
       {"topic": "nowhere.else", "payload": 4}]


TCP_IN = '{ name = "i", type = "tcp", listen = "127.0.0.1:1" }'


# ---- unrouted ----------------------------------------------------------------

def test_unrouted_events_are_dropped_counted_by_input_and_version_and_the_202_says_so(
        sluice, tmp_path):
    eng, port, admin = engine(sluice, tmp_path)
    assert ingest(port, MIX) == {"accepted": 7, "unrouted": 2}
    assert ingest(port, MIX[:2]) == {"accepted": 2}  # none unrouted: as before
    text = metrics(admin)
    assert metric(text, "sluice_events_unrouted_total", input="web", version="1") == 2
    assert metric(text, "sluice_events_dropped_total", reason="unrouted") == 2
    assert not (eng.dir / "other.ndjson").exists() or all(
        json.loads(l)["topic"] == "logs.app"
        for l in (eng.dir / "other.ndjson").read_text().splitlines())


def test_unrouted_series_keep_the_last_4_versions_and_always_the_live_one(
        sluice, tmp_path):
    # README "Operating": by input and rule set version, the last 4
    # versions an input saw, the live one always shown; a POST /reload makes
    # a new version even with nothing changed
    eng, port, admin = engine(sluice, tmp_path)
    for v in range(1, 7):
        if v > 1:
            assert curl("http://127.0.0.1:%d/reload" % admin, method="POST").status == 200
        ingest(port, [{"topic": "nowhere", "payload": v}] * v)
    text = metrics(admin)
    series = {int(v): metric(text, "sluice_events_unrouted_total", input="web",
                             version=str(v)) for v in range(1, 7)}
    assert series == {1: None, 2: None, 3: 3, 4: 4, 5: 5, 6: 6}, series
    assert curl("http://127.0.0.1:%d/reload" % admin, method="POST").status == 200
    text = metrics(admin)
    assert metric(text, "sluice_events_unrouted_total", input="web", version="7") == 0
    assert metric(text, "sluice_events_unrouted_total", input="web", version="3") is None


def test_unrouted_to_an_output_sends_them_there_and_still_counts_them(sluice, tmp_path):
    eng, port, admin = engine(sluice, tmp_path, unrouted="other")
    assert ingest(port, MIX) == {"accepted": 7, "unrouted": 2}
    out = eng.dir / "other.ndjson"
    wait_for(lambda: out.exists() and len(out.read_text().splitlines()) == 3, 10,
             what="3 events in other.ndjson")
    topics = sorted(json.loads(l)["topic"] for l in out.read_text().splitlines())
    assert topics == ["logs.app", "nowhere", "nowhere.else"]
    assert metric(metrics(admin), "sluice_events_unrouted_total",
                  input="web", version="1") == 2


def test_unrouted_naming_no_output_or_not_a_string_fails_the_config_check(tmp_path):
    for value in ('"o"', '"drop"'):
        p = tmp_path / "ok.lua"
        p.write_text('return { inputs = { %s }, outputs = { { name = "o", type = '
                     '"null" } }, unrouted = %s }' % (TCP_IN, value))
        r = run_sluice("check", "-c", p)
        assert r.returncode == 0, r.stderr
    for value, want in (('"nope"', 'no output named "nope"'),
                        ("1", "got number")):
        p = tmp_path / "c.lua"
        p.write_text('return { inputs = { %s }, outputs = { { name = "o", type = '
                     '"null" } }, unrouted = %s }' % (TCP_IN, value))
        r = run_sluice("check", "-c", p)
        assert r.returncode != 0 and "unrouted" in r.stderr and want in r.stderr, r.stderr


# ---- tap --------------------------------------------------------------------

def tap(eng, *args, out=None):
    """`sluice tap -c CONFIG ARGS` in the background, its stdout in a file."""
    out = out or (eng.dir / ("tap%d.out" % time.monotonic_ns()))
    f = open(str(out), "wb")
    p = subprocess.Popen([SLUICE_BIN, "tap", "-c", str(eng.config)] + list(args),
                         stdout=f, stderr=subprocess.PIPE)
    f.close()
    return p, out


def finish(p, out, timeout=20):
    try:
        _, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, out.read_text(), err.decode()


def test_sluice_tap_json_lines_carry_each_decision_under_load(sluice, tmp_path):
    eng, port, admin = engine(sluice, tmp_path)
    n = 40 * len(MIX)
    p, out = tap(eng, "--json", "--limit", str(n))
    wait_metric(admin, "sluice_tap_clients", lambda v: v == 1)
    for _ in range(40):
        ingest(port, MIX)
    rc, text, err = finish(p, out)
    assert rc == 0, err
    lines = [json.loads(l) for l in text.splitlines()]
    assert len(lines) == n
    by = {}
    for l in lines:
        key = (l["event"]["topic"], json.dumps(l["event"].get("payload"), sort_keys=True))
        by.setdefault(key, []).append(l)
    assert len(by) == len(MIX) and all(len(v) == 40 for v in by.values())

    def one(i):
        e = MIX[i]
        got = by[(e["topic"], json.dumps(e["payload"], sort_keys=True))]
        assert all({k: v for k, v in g.items() if k != "event"} ==
                   {k: v for k, v in got[0].items() if k != "event"} for g in got)
        return {k: v for k, v in got[0].items() if k != "event"}

    rule = str(tmp_path / "rules" / "10_orders.lua")
    assert one(0) == {"outcome": "routed", "rule": rule, "outputs": ["archive"]}
    assert one(1) == {"outcome": "routed", "rule": rule, "outputs": ["archive", "console"]}
    assert one(2) == {"outcome": "dropped", "rule": rule, "outputs": [],
                      "reason": "order without a numeric amount"}
    failed = one(3)
    assert failed["outcome"] == "failed" and failed["outputs"] == ["dead_letter"]
    assert failed["rule"] == rule and "10_orders.lua:5:" in failed["reason"] \
        and "boom" in failed["reason"]
    assert one(4) == {"outcome": "routed", "route": 1, "outputs": ["other"]}
    assert one(5) == {"outcome": "unrouted", "outputs": []}


def test_sluice_tap_filters_by_outcome_rule_output_and_topic(sluice, tmp_path):
    eng, port, admin = engine(sluice, tmp_path, unrouted="other")
    runs = {
        "outcome": tap(eng, "--json", "--outcome", "dropped,failed", "--limit", "2"),
        "rule": tap(eng, "--json", "--rule", "10_*.lua", "--limit", "4"),
        "output": tap(eng, "--json", "--output", "other", "--limit", "3"),
        "topic": tap(eng, "--json", "--topics", "nowhere*", "--limit", "2"),
    }
    wait_metric(admin, "sluice_tap_clients", lambda v: v == 4)
    ingest(port, MIX)
    got = {}
    for k, (p, out) in runs.items():
        rc, text, err = finish(p, out)
        assert rc == 0, (k, err)
        got[k] = [json.loads(l) for l in text.splitlines()]
    assert [l["outcome"] for l in got["outcome"]] == ["dropped", "failed"]
    assert [l["event"]["topic"] for l in got["rule"]] == [
        "orders.eu", "orders.us", "orders.eu", "bad.boom"]
    assert [(l["event"]["topic"], l["outcome"]) for l in got["output"]] == [
        ("logs.app", "routed"), ("nowhere", "unrouted"), ("nowhere.else", "unrouted")]
    assert [l["event"]["topic"] for l in got["topic"]] == ["nowhere", "nowhere.else"]


def test_sluice_tap_sample_flag_keeps_a_share(sluice, tmp_path):
    # README: --sample SHARE (sample=0.01 keeps about 1%); 1 keeps all
    eng, port, admin = engine(sluice, tmp_path)
    r = run_sluice("tap", "-c", eng.config, "--sample", "0")
    assert r.returncode == 1 and "400" in r.stderr and "sample" in r.stderr, r.stderr
    everything = tap(eng, "--json", "--sample", "1", "--limit", str(len(MIX)))
    half = tap(eng, "--json", "--sample", "0.5")
    wait_metric(admin, "sluice_tap_clients", lambda v: v == 2)
    for _ in range(40):
        ingest(port, MIX)
    rc, text, err = finish(*everything)
    assert rc == 0, err
    assert len(text.splitlines()) == len(MIX)
    # the engine decided each event before its 202: what it sent the
    # sampled tap is counted by now (mean 140 of 280; 60..220 is >9 sigma)
    sent = metric(metrics(admin), "sluice_tap_lines_total") - len(MIX)
    assert 60 < sent < 220, sent
    half[0].terminate()
    finish(*half)


def test_sluice_tap_prints_one_readable_line_per_event(sluice, tmp_path):
    eng, port, admin = engine(sluice, tmp_path)
    p, out = tap(eng, "--topics", "orders.*,nowhere", "--limit", "4")
    wait_metric(admin, "sluice_tap_clients", lambda v: v == 1)
    ingest(port, MIX)
    rc, text, err = finish(p, out)
    assert rc == 0, err
    lines = text.splitlines()
    rule = str(tmp_path / "rules" / "10_orders.lua")
    assert len(lines) == 4
    assert lines[0].startswith("routed   orders.eu -> archive rule=%s id=" % rule)
    assert lines[0].endswith('payload={"amount":5}')
    assert lines[1].startswith("routed   orders.us -> archive,console rule=")
    assert lines[2].startswith('dropped  orders.eu -> (none) rule=%s reason='
                               '"order without a numeric amount" id=' % rule)
    assert lines[3].startswith("unrouted nowhere -> (none) id=")


def test_sluice_tap_errors_exit_1_with_the_reason(sluice, tmp_path):
    eng, port, admin = engine(sluice, tmp_path)
    r = run_sluice("tap", "-c", eng.config, "--outcome", "maybe")
    assert r.returncode == 1 and "400" in r.stderr and "outcome" in r.stderr, r.stderr
    r = run_sluice("tap", "-c", eng.config, "--output", "nope")
    assert r.returncode == 1 and 'no output named \\"nope\\"' in r.stderr, r.stderr
    r = run_sluice("tap", "-c", eng.config, "--bogus")
    assert r.returncode == 2
    noadmin = tmp_path / "noadmin.lua"
    noadmin.write_text('return { inputs = { %s }, outputs = { { name = "o", type = '
                       '"null" } } }' % TCP_IN)
    r = run_sluice("tap", "-c", noadmin)
    assert r.returncode == 1 and "admin.listen" in r.stderr, r.stderr


def test_sluice_tap_sends_the_bearer_token_of_the_config(sluice, tmp_path):
    port, admin = ports(2)
    tok = tmp_path / "token"
    tok.write_text("s3cret\n")
    cfg = config(port, admin_port=admin)
    cfg["admin"]["bearer_token_file"] = str(tok)
    eng = sluice(cfg)
    p, out = tap(eng, "--json", "--limit", "1")
    wait_for(lambda: metric(metrics(admin, token="s3cret"), "sluice_tap_clients") == 1,
             10, interval=0.05, what="tap client")
    ingest(port, [{"topic": "t", "payload": 1}])
    rc, text, err = finish(p, out)
    assert rc == 0 and json.loads(text)["outputs"] == ["out"], err
    tok.write_text("wrong\n")  # the engine read its token at start
    r = run_sluice("tap", "-c", eng.config, "--limit", "1")
    assert r.returncode == 1 and "401" in r.stderr, r.stderr


def test_a_tap_client_that_reads_nothing_never_holds_the_pipeline(sluice, tmp_path):
    """Every event reaches its output while a tap client matching all of
    them reads nothing (its receive buffer made tiny), and the tap lines it
    could not take are dropped and counted: sent + dropped = events."""
    import socket
    eng, port, admin = engine(sluice, tmp_path)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", admin))
    s.sendall(b"GET /tap?topics=logs.* HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        wait_metric(admin, "sluice_tap_clients", lambda v: v == 1)
        pad = "x" * 400
        n = 0
        for b in range(20):
            ingest(port, [{"topic": "logs.app", "payload": {"i": i, "pad": pad}}
                          for i in range(1000)])
            n += 1000
        wait_metric(admin, "sluice_output_events_total", lambda v: v == n,
                    timeout=60, output="other")
        text = metrics(admin)
        sent = metric(text, "sluice_tap_lines_total")
        dropped = metric(text, "sluice_tap_lines_dropped_total")
        assert dropped > 0 and sent + dropped == n, (sent, dropped)
    finally:
        s.close()


# ---- check ------------------------------------------------------------------

LINTED = """
-- returns "nowhere" in a comment is not a finding
local function label(x) return "not-an-output-either" end
return {
  topics = "*",
  on_event = function(ev)
    if ev.topic == "a" then return "archive" end
    if ev.topic == "b" then return { "archive", "achive" } end
    if ev.topic == "c" then sluice.emit("consol", ev) end
    if ev.topic == "d" then return 'other' end
    return ev.topic == "e" and "archive" or "ghost"
  end,
}
"""


def check_config(tmp_path, rule=LINTED, routes=None, **top):
    d = tmp_path / "rules"
    d.mkdir(exist_ok=True)
    (d / "20_lint.lua").write_text(rule)
    cfg = config(9, outputs=[
        {"name": "archive", "type": "file", "path": "archive.ndjson"},
        {"name": "console", "type": "file", "path": "console.ndjson"},
        {"name": "other", "type": "file", "path": "other.ndjson"}],
        routes=routes or [{"topics": "logs.*", "to": "other"}],
        rules={"dir": str(d)}, **top)
    from conftest import lua
    p = tmp_path / "sluice.conf.lua"
    p.write_text("return " + lua(cfg) + "\n")
    return p, d / "20_lint.lua"


def test_check_warns_of_literal_output_names_that_name_no_output(tmp_path):
    conf, rule = check_config(tmp_path)
    r = run_sluice("check", "-c", conf)
    assert r.returncode == 0, r.stderr
    assert "with warnings" in r.stdout
    assert r.stderr.splitlines() == [
        '%s:3: warning: returns "not-an-output-either", which names no output' % rule,
        '%s:8: warning: returns "achive", which names no output' % rule,
        '%s:9: warning: emits to "consol", which names no output' % rule,
    ]  # line 11's and/or is an expression: not read, not guessed
    r = run_sluice("check", "--strict", "-c", conf)
    assert r.returncode == 1 and "achive" in r.stderr


def test_check_without_findings_is_quiet_and_strict_passes(tmp_path):
    conf, _ = check_config(tmp_path, rule='return { topics = "*", on_event = '
                           'function(ev) return { "archive", "console" } end }')
    r = run_sluice("check", "--strict", "-c", conf)
    assert r.returncode == 0 and r.stderr == "" and "with warnings" not in r.stdout


EVENTS_RULE = """
return {
  topics = "orders.*",
  on_event = function(ev)
    if ev.payload.amount == nil then error("no amount") end
    if ev.payload.amount < 0 then return sluice.drop("negative") end
    return "archive"
  end,
}
"""


def test_check_events_is_a_gate_that_fails_on_failed_unrouted_or_invalid_events(tmp_path):
    conf, rule = check_config(tmp_path, rule=EVENTS_RULE)
    good = tmp_path / "good.ndjson"
    good.write_text('{"topic":"orders.eu","payload":{"amount":5}}\n'
                    '{"topic":"orders.eu","payload":{"amount":-1}}\n'
                    '{"topic":"logs.app","payload":1}\n')
    r = run_sluice("check", "-c", conf, "--events", good)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == ("%s: 3 events: 2 routed, 1 dropped, 0 unrouted, "
                                         "0 failed, 0 invalid" % good)
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"topic":"orders.eu","payload":{"amount":5}}\n'
                   '{"topic":"orders.eu","payload":{}}\n'
                   '{"topic":"nowhere","payload":1}\n'
                   '{"topic":1}\n')
    r = run_sluice("check", "-c", conf, "--events", bad)
    assert r.returncode == 1
    out = r.stdout.splitlines()
    assert out[1].startswith("event 2: failed topic=orders.eu: ") and \
        "20_lint.lua:5: no amount" in out[1], out
    assert out[2] == "event 3: unrouted topic=nowhere: no rule or route decided it"
    assert out[3].startswith("event 4: invalid: ")
    assert out[4] == ("%s: 4 events: 1 routed, 0 dropped, 1 unrouted, 1 failed, "
                      "1 invalid" % bad)
    # unrouted = "<output>" still reports them: the gate is about intent
    conf2, _ = check_config(tmp_path, rule=EVENTS_RULE, unrouted="other")
    r = run_sluice("check", "-c", conf2, "--events", bad)
    assert r.returncode == 1 and "event 3: unrouted" in r.stdout
    r = run_sluice("check", "-c", conf, "--events", tmp_path / "missing.ndjson")
    assert r.returncode == 1 and "cannot open" in r.stderr


def test_invalid_ndjson_events_are_named_by_the_line_of_the_file(tmp_path):
    """`check --events` and `route` name an invalid NDJSON event by its line
    in the file, blank lines counted (they named the count of non-blank
    lines before it), also when the line is JSON but no event (they gave a
    byte offset into the msgpack the line became, meaningless to whoever
    wrote it); a msgpack stream names the offset in the stream."""
    conf, _ = check_config(tmp_path, rule=EVENTS_RULE)
    ev = tmp_path / "blank.ndjson"
    ev.write_text('\n{"topic":"orders.eu","payload":{"amount":5}}\n\n'
                  'garbage\n{"topic":1}\n')
    r = run_sluice("check", "-c", conf, "--events", ev)
    assert r.returncode == 1
    out = r.stdout.splitlines()
    assert out[1].startswith("event 2: invalid: line 4: "), out
    assert out[2] == ("event 3: invalid: line 5: field 'topic': expected "
                      "string, got integer"), out
    r = run_sluice("route", "-c", conf, "--events", ev)
    errors = [json.loads(l).get("error") for l in r.stdout.splitlines()]
    assert errors[1].startswith("line 4: ") and errors[2].startswith("line 5: ")
    import msgpack
    mp = tmp_path / "two.msgpack"
    mp.write_bytes(msgpack.packb({"topic": "a"}) + msgpack.packb({"topic": 1}))
    r = run_sluice("route", "-c", conf, "--events", mp)
    last = json.loads(r.stdout.splitlines()[-1])
    assert last["error"] == "byte 16: field 'topic': expected string, got integer"


def test_white_space_lines_are_blank_in_check_events_as_in_the_engine(
        tmp_path):
    """A line of white space, as a CRLF file's empty line ("\\r") is, is
    blank: no event, as the stdin input reads it. `check --events` and
    `route` took it for an event that is no JSON, so a samples file saved
    with CRLF line ends and an empty line failed the gate (exit 1, "1
    invalid") though the engine reads every event of it."""
    conf, _ = check_config(tmp_path, rule=EVENTS_RULE)
    ev = tmp_path / "crlf.ndjson"
    ev.write_bytes(b'{"topic":"orders.eu","payload":{"amount":5}}\r\n\r\n'
                   b' \t \n{"topic":"orders.eu","payload":{"amount":7}}\r\n')
    r = run_sluice("check", "-c", conf, "--events", ev)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "2 events: 2 routed" in r.stdout and "0 invalid" in r.stdout, \
        r.stdout
    r = run_sluice("route", "-c", conf, "--events", ev)
    assert len(r.stdout.splitlines()) == 2, r.stdout
    # lines are still the file's: an invalid one after them is line 5
    ev.write_bytes(ev.read_bytes() + b'garbage\r\n')
    r = run_sluice("check", "-c", conf, "--events", ev)
    assert r.returncode == 1
    assert "event 3: invalid: line 5: " in r.stdout, r.stdout


# ---- top --------------------------------------------------------------------

def test_sluice_top_once_shows_rates_per_input_rule_and_output(sluice, tmp_path):
    eng, port, admin = engine(sluice, tmp_path)
    # steady known traffic while top takes its two scrapes a second apart
    stop = []
    import threading

    def feed():
        while not stop:
            ingest(port, MIX * 20)
            time.sleep(0.05)
    t = threading.Thread(target=feed)
    t.start()
    try:
        wait_metric(admin, "sluice_input_events_total", lambda v: v > 0, input="web")
        r = run_sluice("top", "-c", eng.config, "--once", timeout=30)
    finally:
        stop.append(1)
        t.join()
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("sluice top - 127.0.0.1:%d - rules version 1 - over " % admin)

    def row(name):
        got = [l.split() for l in lines if l.split()[:1] == [name]]
        assert len(got) == 1, (name, r.stdout)
        return got[0]
    web = row("web")
    events, unrouted = float(web[1]), float(web[2])
    assert events > 0 and abs(unrouted - events * 2 / 7) <= events * 0.1 + 1, r.stdout
    rule = row("10_orders.lua")
    calls, routed, dropped, passed, errors = map(float, rule[1:6])
    assert calls > 0 and passed == 0
    # of the 4 events the rule sees in MIX: 2 routed, 1 dropped, 1 failed
    assert abs(routed - calls / 2) <= calls * 0.15 + 1, r.stdout
    assert abs(dropped - calls / 4) <= calls * 0.15 + 1 and abs(errors - calls / 4) <= calls * 0.15 + 1
    assert rule[6].endswith("ms")
    archive = row("archive")
    assert float(archive[1]) > 0 and archive[2].endswith("%") and archive[4] == "closed"
    assert float(row("dead_letter")[1]) > 0  # bad.boom went there
    assert float(row("console")[1]) > 0


def test_sluice_top_without_a_running_engine_exits_1(tmp_path):
    conf, _ = check_config(tmp_path, rule='return { topics = "*", on_event = '
                           'function(ev) return "archive" end }')
    text = conf.read_text().replace("return {", 'return { admin = { listen = '
                                    '"127.0.0.1:1" },', 1)
    conf.write_text(text)
    r = run_sluice("top", "-c", conf, "--once")
    assert r.returncode == 1 and "cannot connect to the admin API" in r.stderr, r.stderr


def test_check_warns_of_routes_an_earlier_route_shadows(tmp_path):
    conf, _ = check_config(tmp_path, rule='return { topics = "*", on_event = '
                           'function(ev) return "archive" end }',
                           routes=[{"topics": "orders.*", "to": "archive"},
                                   {"topics": ["orders.eu.*", "orders.*.x"], "to": "console"},
                                   {"topics": ["orders.eu", "logs.*"], "to": "other"},
                                   {"topics": "*", "to": "other"},
                                   {"topics": "late", "to": "console"}])
    r = run_sluice("check", "-c", conf)
    assert r.returncode == 0 and "with warnings" in r.stdout, r.stderr
    assert r.stderr.splitlines() == [
        "%s: routes[2]: warning: never decides: every topic it matches is taken "
        "first by an earlier route (routes[1])" % conf,
        "%s: routes[5]: warning: never decides: every topic it matches is taken "
        "first by an earlier route (routes[4])" % conf]  # routes[3]'s logs.* is reachable
    r = run_sluice("check", "--strict", "-c", conf)
    assert r.returncode == 1


def test_a_reload_that_changes_unrouted_applies_it_as_a_route_change(sluice, tmp_path):
    from conftest import lua
    eng, port, admin = engine(sluice, tmp_path)
    assert ingest(port, [{"topic": "nowhere", "payload": 1}]) == {
        "accepted": 1, "unrouted": 1}
    cfg = dict(eng.config_dict, unrouted="console")
    eng.config.write_text("return " + lua(cfg) + "\n")
    eng.signal(1)
    line = wait_for(lambda: [l for l in eng.logs() if l.get("msg") == "config reloaded"],
                    10, what="config reloaded")[0]
    assert "routes changed" in line["changes"], line
    assert ingest(port, [{"topic": "nowhere", "payload": 2}]) == {
        "accepted": 1, "unrouted": 1}
    out = eng.dir / "console.ndjson"
    wait_for(lambda: out.exists() and out.read_text().strip(), 10, what="console.ndjson")
    assert [json.loads(l)["payload"] for l in out.read_text().splitlines()] == [2]
