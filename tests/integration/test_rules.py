"""Rules through the real binary (issue 3): route, drop, transform, emit,
and rules that time out, blow their memory or fail, which send the event to
the dead letter while the engine keeps serving, C recursion stopped at a
share of a small stack among them. Also `sluice check` on a broken rule and
the `sluice route` dry run."""
import json
import os
import re
import resource
import time

import pytest

from conftest import free_port, metric, read_ndjson, run_sluice, scrape, send_events, wait_for


def start(sluice, tmp_path, rules, extra="", jit=False):
    d = tmp_path / "rules"
    d.mkdir()
    for name, text in rules.items():
        (d / name).write_text(text)
    port, admin = free_port(), free_port()
    eng = sluice("""return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "a", type = "file", path = "a.ndjson" },
              { name = "b", type = "file", path = "b.ndjson" },
              { name = "rest", type = "file", path = "rest.ndjson" } },
  routes = { { topics = "*", to = "rest" } },
  rules = { dir = "%s", cpu_budget_ms = 20, memory_mb = 16, jit = %s },
  admin = { listen = "127.0.0.1:%d" },
  %s
}""" % (port, d, "true" if jit else "false", admin, extra))
    return eng, "127.0.0.1:%d" % port, "127.0.0.1:%d" % admin


ROUTER = """
return {
  topics = { "orders.*" },
  on_event = function(ev)
    local amount = ev:field("amount")
    if amount == nil then return sluice.drop("no amount") end
    if amount > 100 then
      ev.headers.big = "yes"
      ev.payload.amount_cents = amount * 100
      sluice.emit("b", { topic = "audit.big", key = ev.key, payload = { id = ev.id } })
      return { "a", "b" }
    end
    return "a"
  end,
}
"""

FAILING = """
return {
  topics = { "bad.*" },
  on_event = function(ev)
    local kind = ev.topic
    if kind == "bad.loop" then while true do end end
    if kind == "bad.pattern" then return (("a"):rep(5000)):find(".-.-.-.-b") end
    if kind == "bad.memory" then -- at once: filling 16 MB in steps may
      local t = { ("x"):rep(2^30) } -- take longer than the 20 ms budget
    end
    if kind == "bad.return" then return 42 end
    error("broken on purpose")
  end,
}
"""


def test_rules_route_drop_transform_and_emit(sluice, tmp_path):
    eng, addr, _ = start(sluice, tmp_path, {"10_router.lua": ROUTER})
    send_events(addr, [
        {"topic": "orders.eu", "key": "k1", "payload": {"amount": 5}},
        {"topic": "orders.eu", "key": "k2", "payload": {"amount": 500, "f": 1.0, "b": b"\x00\xff"}},
        {"topic": "orders.eu", "payload": {"sku": "x"}},
        {"topic": "other", "payload": [1, None, 3]},
    ])
    assert eng.stop() == 0
    a = read_ndjson(eng.path("a.ndjson"))
    b = read_ndjson(eng.path("b.ndjson"))
    rest = read_ndjson(eng.path("rest.ndjson"))
    assert [e["key"] for e in a] == ["k1", "k2"]
    assert "big" not in a[0]["headers"]
    assert a[0]["payload"] == {"amount": 5}  # untouched
    big = a[1]
    assert big["headers"]["big"] == "yes"
    # changed payload re-encoded with types kept: the float stays a float,
    # binary stays binary
    assert big["payload"]["amount_cents"] == 50000
    assert big["payload"]["f"] == 1.0 and isinstance(big["payload"]["f"], float)
    assert big["payload"]["b"] == {"$bin": "AP8="}
    topics = sorted(e["topic"] for e in b)
    assert topics == ["audit.big", "orders.eu"]
    emitted = [e for e in b if e["topic"] == "audit.big"][0]
    assert emitted["payload"] == {"id": big["id"]} and emitted["key"] == "k2"
    assert [e["topic"] for e in rest] == ["other"]
    assert rest[0]["payload"] == [1, None, 3]


@pytest.mark.parametrize("jit", [False, True], ids=["jit_off", "jit_on"])
def test_failing_rules_go_to_dead_letter_and_the_engine_keeps_serving(sluice, tmp_path, jit):
    eng, addr, admin = start(sluice, tmp_path, {"10_router.lua": ROUTER, "20_failing.lua": FAILING},
                             jit=jit)
    kinds = ["bad.loop", "bad.pattern", "bad.memory", "bad.error", "bad.return"]
    t0 = time.monotonic()
    send_events(addr, [{"topic": k, "payload": {"n": i}} for i, k in enumerate(kinds)] +
                [{"topic": "orders.eu", "payload": {"amount": 1}}])
    took = time.monotonic() - t0
    assert took < 5, took  # each violation stopped near its 20 ms budget
    wait_for(lambda: len(read_ndjson(eng.path("a.ndjson"))) == 1, what="the healthy event")
    from conftest import scrape
    samples = scrape(admin)
    errors = {k: metric(samples, "sluice_rule_errors_total", rule="20_failing.lua", kind=k)
              for k in ("cpu", "memory", "runtime")}
    assert eng.stop() == 0
    dead = read_ndjson(eng.path("var/dead-letter.ndjson"))
    assert [e["topic"] for e in dead] == kinds
    rule_file = str(tmp_path / "rules/20_failing.lua")
    wheres = {e["topic"]: e["headers"]["sluice-rule"] for e in dead}
    for e, k in zip(dead, kinds):
        assert wheres[k].startswith(rule_file), wheres
        assert e["payload"] == {"n": kinds.index(k)}  # the original event
    # a line where the rule was stopped or failed
    for k in ("bad.loop", "bad.error", "bad.return"):
        assert wheres[k].startswith(rule_file + ":"), wheres
    errs = {e["topic"]: e["headers"]["sluice-error"] for e in dead}
    assert "cpu" in errs["bad.loop"] or "budget" in errs["bad.loop"]
    assert "cpu" in errs["bad.pattern"] or "budget" in errs["bad.pattern"]
    assert "memory" in errs["bad.memory"]
    assert "broken on purpose" in errs["bad.error"]
    assert "number" in errs["bad.return"]
    assert errors == {"cpu": 2, "memory": 1, "runtime": 2}
    logs = [l for l in eng.logs() if l["msg"] == "rule failed; event sent to the dead letter"]
    assert logs and "20_failing.lua:" in logs[0]["rule"]


def test_check_and_start_reject_a_broken_rule_with_file_and_line(tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "10_ok.lua").write_text('return { on_event = function(ev) return nil end }')
    (d / "20_bad.lua").write_text('return {\n  on_event = function(ev)\n    return = 1\n  end }\n')
    cfg = tmp_path / "c.lua"
    cfg.write_text('return { inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },\n'
                   '  rules = { dir = "rules" } }' % free_port())
    r = run_sluice("check", "-c", str(cfg))
    assert r.returncode == 1
    assert "rules/20_bad.lua:3: unexpected symbol near '='" in r.stderr
    r = run_sluice("run", "-c", str(cfg), timeout=10)
    assert r.returncode == 1
    assert "20_bad.lua:3:" in r.stderr
    (d / "20_bad.lua").write_text('return { topics = { 5 } }')
    r = run_sluice("check", "-c", str(cfg))
    assert r.returncode == 1 and "20_bad.lua" in r.stderr


def test_route_dry_run_prints_each_decision(tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "10_router.lua").write_text(ROUTER)
    (d / "20_failing.lua").write_text(FAILING)
    cfg = tmp_path / "c.lua"
    cfg.write_text("""return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "a", type = "null" }, { name = "b", type = "null" },
              { name = "rest", type = "null" } },
  routes = { { topics = "other", to = "rest" } },
  rules = { dir = "rules" } }""" % free_port())
    events = "\n".join(json.dumps(e) for e in [
        {"topic": "orders.eu", "payload": {"amount": 500}},
        {"topic": "orders.eu", "payload": {}},
        {"topic": "bad.error"},
        {"topic": "other"},
        {"topic": "nowhere"},
        {"payload": 1},
    ]) + "\n"
    r = run_sluice("route", "-c", str(cfg), input=events)
    assert r.returncode == 0, r.stderr
    out = [json.loads(l) for l in r.stdout.splitlines()]
    assert [o["decision"] for o in out] == ["routed", "dropped", "failed", "routed", "unrouted", "invalid"]
    assert out[0]["outputs"] == ["a", "b"]
    assert out[0]["event"]["headers"]["big"] == "yes"
    assert out[0]["emitted"][0]["output"] == "b"
    assert out[1]["reason"] == "no amount"
    assert out[2]["outputs"] == ["dead_letter"] and "broken on purpose" in out[2]["reason"]
    assert out[3]["rule"] is None and out[3]["outputs"] == ["rest"]
    assert "topic" in out[5]["error"]


# ---- timers (issue 9, finding 7) -----------------------------------------

SLOW_TIMER = """
local runs = 0
return {
  topics = { "tick.*" },
  on_start = function()
    -- each run takes longer than the interval
    sluice.every(2, function()
      runs = runs + 1
      local t0 = sluice.now()
      while sluice.now() - t0 < 3 do end
    end)
  end,
  on_event = function(ev)
    ev.headers.runs = tostring(runs)
    return "a"
  end,
}
"""


def _get(url, timeout=5):
    import urllib.request
    t0 = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout) as r:
        r.read()
        return r.status, time.monotonic() - t0


def test_timer_slower_than_its_interval_does_not_starve_io(sluice, tmp_path):
    import signal
    eng, addr, admin = start(sluice, tmp_path, {"10_slow.lua": SLOW_TIMER})
    # the engine still answers and delivers while the timer keeps running
    status, took = _get("http://%s/readyz" % admin)
    assert status == 200 and took < 2, took
    send_events(addr, [{"topic": "tick.a", "payload": i} for i in range(50)])
    got = wait_for(lambda: len(read_ndjson(eng.path("a.ndjson"))) >= 50 and
                   read_ndjson(eng.path("a.ndjson")), what="events past a busy timer")
    assert [e["payload"] for e in got[:50]] == list(range(50))
    # the timer does run (on an idle machine the 50 events can all pass
    # before its first tick, so keep sending until one shows a run)
    deadline = time.monotonic() + 10
    while int(read_ndjson(eng.path("a.ndjson"))[-1]["headers"]["runs"]) == 0:
        assert time.monotonic() < deadline, "the timer never ran"
        n = len(read_ndjson(eng.path("a.ndjson")))
        time.sleep(0.05)
        send_events(addr, [{"topic": "tick.probe", "payload": n}])
        wait_for(lambda: len(read_ndjson(eng.path("a.ndjson"))) == n + 1, what="a probe event")
    # a reload is handled (the new version runs the same timer)
    eng.signal(signal.SIGHUP)
    eng.wait_log("rules reloaded", timeout=5)
    n = len(read_ndjson(eng.path("a.ndjson")))
    send_events(addr, [{"topic": "tick.b", "payload": 1}])
    wait_for(lambda: len(read_ndjson(eng.path("a.ndjson"))) == n + 1, what="an event after the reload")
    status, took = _get("http://%s/readyz" % admin)
    assert status == 200 and took < 2, took
    # SIGTERM stops it promptly
    t0 = time.monotonic()
    assert eng.stop(timeout=10) == 0
    assert time.monotonic() - t0 < 5


ERRING_TIMERS = """
for i = 1, 64 do
  sluice.every(1, function() error(("x"):rep(400)) end)
end
return { topics = { "tick.*" }, on_event = function(ev) return "a" end }
"""


def test_failing_timers_log_at_a_limited_rate(sluice, tmp_path):
    # before the fix: 73 MB of log in 2 s from 64 timers failing every ms
    eng, addr, admin = start(sluice, tmp_path, {"10_err.lua": ERRING_TIMERS})
    time.sleep(1.0)
    send_events(addr, [{"topic": "tick.a", "payload": 1}])
    wait_for(lambda: len(read_ndjson(eng.path("a.ndjson"))) == 1, what="an event past failing timers")
    # every failure is counted although few are logged
    failed = metric(admin, "sluice_rule_timer_errors_total", rule="10_err.lua")
    assert failed > 100, failed
    assert eng.stop(timeout=10) == 0
    assert len(eng.stderr()) < 100000, len(eng.stderr())
    lines = [l for l in eng.logs() if l.get("msg", "").startswith("timer: ")]
    assert 1 <= len(lines) <= 25, len(lines)
    assert "10_err.lua:3:" in lines[0]["msg"]


# ---- /metrics stays parsable (issue 9, finding 16) -------------------------

COUNTING = r"""
return {
  topics = { "m.*" },
  on_event = function(ev)
    sluice.counter("good_total", { k = "ok" }):inc()
    if ev.topic == "m.bad" then
      sluice.counter("bad_total", { k = "\255\254" }):inc()
    end
    return "a"
  end,
}
"""


# ---- events a rule builds must be valid on the wire (issue 9, finding 11) ----

WIRE_BREAKER = """
local big = ("x"):rep(8192)
return {
  topics = { "*" },
  on_event = function(ev)
    local t = ev.topic
    if t == "bad.emit_big" then
      sluice.emit("link", { topic = "made", payload = big })
    elseif t == "bad.emit_shared" then
      local s = ("y"):rep(1024)
      local p = {}
      for i = 1, 400 do p[i] = s end
      sluice.emit("link", { topic = "made", payload = p })
    elseif t == "bad.payload_big" then
      ev.payload = big
    elseif t == "bad.header_big" then
      ev.headers.big = big
    elseif t == "bad.emit_header_number" then
      sluice.emit("link", { topic = "made", headers = { n = 1 } })
    elseif t == "fix.header_bin" then
      -- side records that would encode the header value as binary
      ev.headers = setmetatable({ a = "x" },
        { __sluice = "map", hints = { a = "b" }, orig = { a = "x" } })
    elseif t == "fix.header_array" then
      ev.headers = setmetatable({ a = "x" }, { __sluice = "array", n = 3 })
    elseif t == "fix.header_nil" then
      ev.headers = setmetatable({ a = "x" }, { __sluice = "map", hints = { b = "n" } })
    elseif t == "bad.topic_big" then
      ev.topic = big
    elseif t == "good.emit" then
      sluice.emit("link", { topic = "made.child", payload = { n = ev.payload } })
    end
    return "link"
  end,
}
"""


def test_events_a_rule_builds_over_max_event_bytes_or_with_bad_headers_dead_letter_and_the_link_keeps_flowing(sluice, tmp_path):
    # receiver: a second engine whose native input accepts 4 KiB events
    rport = free_port()
    recv = sluice("""return {
  max_event_bytes = 4096,
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "out", type = "file", path = "out.ndjson" } },
  routes = { { topics = "*", to = "out" } },
}""" % rport, name="receiver")
    d = tmp_path / "rules"
    d.mkdir()
    (d / "10_wire.lua").write_text(WIRE_BREAKER)
    sport = free_port()
    send = sluice("""return {
  max_event_bytes = 4096,
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "link", type = "tcp", address = "127.0.0.1:%d", ack = true,
                retry = { initial_ms = 10, max_ms = 50 } } },
  routes = { { topics = "*", to = "link" } },
  rules = { dir = "%s", cpu_budget_ms = 50 },
}""" % (sport, rport, d), name="sender")
    bad = ["bad.emit_big", "bad.emit_shared", "bad.payload_big", "bad.header_big",
           "bad.emit_header_number", "bad.topic_big",
           # side records that would write the headers as something other
           # than a map of strings: written as one anyway
           "fix.header_bin", "fix.header_array", "fix.header_nil"]
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    events = []
    for i, t in enumerate(bad):
        events.append({"id": "bad-%d" % i, "topic": t, "payload": i})
        events.append({"id": "ok-%d" % i, "topic": "good", "payload": i})
    events.append({"id": "parent", "topic": "good.emit", "payload": 7,
                   "headers": {"traceparent": tp}})
    send_events("127.0.0.1:%d" % sport, events)
    # every good event arrives, also those sent after each bad one
    want = {"ok-%d" % i for i in range(len(bad))} | {"parent", "bad-6", "bad-7", "bad-8"}
    got = wait_for(lambda: (lambda evs: evs if want <= {e["id"] for e in evs} and
                            any(e["topic"] == "made.child" for e in evs) else None)(
        read_ndjson(recv.path("out.ndjson"))), timeout=10, what="the good events at the receiver")
    assert not any(e["topic"].startswith("bad.") or e["topic"] == "made" for e in got)
    for e in got:
        if e["topic"].startswith("fix."):
            assert e["headers"]["a"] == "x" and "b" not in e["headers"]
    # the emitted event is a child span of the event that caused it
    child = [e for e in got if e["topic"] == "made.child"][0]
    ctp = child["headers"]["traceparent"]
    assert ctp.startswith("00-0af7651916cd43dd8448eb211c80319c-") and ctp.endswith("-01")
    assert ctp != tp
    # the receiver never refused anything from the link
    assert not recv.find_logs("bad input; closing connection")
    assert send.stop() == 0
    dead = read_ndjson(send.path("var/dead-letter.ndjson"))
    assert sorted(e["topic"] for e in dead) == sorted(t for t in bad if t.startswith("bad."))
    errs = {e["topic"]: e["headers"]["sluice-error"] for e in dead}
    for t in ("bad.emit_big", "bad.emit_shared", "bad.payload_big", "bad.header_big",
              "bad.topic_big"):
        assert "max_event_bytes" in errs[t], errs[t]
    assert "header 'n' must be a string" in errs["bad.emit_header_number"]
    for e in dead:
        assert e["payload"] == bad.index(e["topic"])  # the original event
    assert recv.stop() == 0


LOG_FLOOD = """
local line = ("x"):rep(1048576)
return {
  on_event = function(ev)
    for i = 1, 1000 do sluice.log("info", line, { i = i }) end
    return "a"
  end,
}
"""


def test_labels_that_are_not_utf8_never_spoil_metrics(sluice, tmp_path):
    import os
    from conftest import scrape
    odd = os.fsdecode(b'30_odd"\xff\n.lua')  # a quote, a bad byte, a newline
    eng, addr, admin = start(sluice, tmp_path, {
        "10_count.lua": COUNTING, odd: "return { topics = { 'x' }, on_event = function() end }"})
    send_events(addr, [{"topic": "m.good"}, {"topic": "m.bad"}, {"topic": "m.good"}])
    dead = wait_for(lambda: read_ndjson(eng.path("var/dead-letter.ndjson")),
                    what="the bad label's event in the dead letter")
    assert "sluice.counter: label 'k' is not valid UTF-8" in dead[0]["headers"]["sluice-error"]
    samples = scrape(admin)  # strict UTF-8 decode, every line a sample
    good = [v for n, l, v in samples if n == "sluice_rule_value_total" and
            l.get("rule") == "10_count.lua" and l.get("name") == "good_total"]
    assert good == [3.0], good
    assert not [s for s in samples if s[1].get("name") == "bad_total"]
    rules = {l["rule"] for n, l, v in samples if n == "sluice_rule_calls_total"}
    assert '30_odd\\"\ufffd\\n.lua' in rules, rules


LOOPING_TIMERS = """
for i = 1, 8 do
  sluice.every(1, function() while true do end end)
end
return { topics = { "tick.*" }, on_event = function(ev) return "a" end }
"""


def test_timers_over_their_budget_do_not_starve_io(sluice, tmp_path):
    # 8 timers of 1 ms, each stopped at its 20 ms budget on every run
    eng, addr, admin = start(sluice, tmp_path, {"10_loop.lua": LOOPING_TIMERS})
    status, took = _get("http://%s/readyz" % admin)
    assert status == 200 and took < 2, took
    t0 = time.monotonic()
    send_events(addr, [{"topic": "tick.a", "payload": i} for i in range(200)])
    wait_for(lambda: len(read_ndjson(eng.path("a.ndjson"))) == 200, what="events past looping timers")
    assert time.monotonic() - t0 < 5
    errors = [l for l in eng.logs() if "cpu budget of 20 ms exceeded" in l.get("msg", "")]
    assert errors and len(errors) <= 25
    t0 = time.monotonic()
    assert eng.stop(timeout=10) == 0
    assert time.monotonic() - t0 < 5



def _cpu_s(pid):
    """User + system CPU seconds of process pid so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


OVERRUNNING_TIMERS = """
for i = 1, 64 do
  sluice.every(1, function() while true do end end)
end
return { topics = { "tick.*" }, on_event = function(ev) return "a" end }
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_timers_that_all_overrun_take_at_most_half_of_each_worker(sluice, tmp_path, workers):
    # 64 timers of 1 ms, each stopped at its 20 ms budget on every run:
    # each timer waits its own run before the next, but together they were
    # always due, and an idle engine spent a whole core per worker on them
    # (~1.0 and ~1.9 cores). A turn of timer work now rests as long as it
    # took before the next: at most half of each worker's time.
    eng, addr, admin = start(sluice, tmp_path, {"10_loop.lua": OVERRUNNING_TIMERS},
                             extra="workers = %d," % workers)
    wait_for(lambda: len([l for l in eng.logs()
                          if "cpu budget of 20 ms exceeded" in l.get("msg", "")]) >= workers,
             what="the timers overrunning")
    t0, c0 = time.monotonic(), _cpu_s(eng.pid)
    time.sleep(3)
    cores = (_cpu_s(eng.pid) - c0) / (time.monotonic() - t0)
    assert cores < 0.7 * workers, cores
    # the timers still run, on every worker
    runs = metric(scrape(admin), "sluice_rule_timer_errors_total")
    time.sleep(0.5)
    assert metric(scrape(admin), "sluice_rule_timer_errors_total") > runs
    send_events(addr, [{"topic": "tick.a", "payload": i} for i in range(200)])
    wait_for(lambda: len(read_ndjson(eng.path("a.ndjson"))) == 200, what="events past the timers")
    assert eng.stop(timeout=10) == 0


def _code_kb(pid):
    """KiB of anonymous executable mappings of process pid: LuaJIT's
    machine code areas."""
    total = 0
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            parts = line.split()
            if parts[1] == "r-xp" and len(parts) < 6:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                total += hi - lo
    return total // 1024


# 4000 loops the JIT compiles to as many traces of ~4 KB, 100 per event:
# 17 MB of machine code if nothing bounded it (plain luajit with
# -Omaxtrace=65000 -Omaxmcode=1000000)
_BODY = " ".join("s = s + j * %d + (j %% %d) * t - t / %d" % (k + 2, k + 3, k + 5)
                 for k in range(24))
MANY_TRACES = "local F = {}\n" + "".join(
    "F[%d] = function(t) local s = 0 for j = 1, 100 do %s end return s end\n"
    % (i, _BODY) for i in range(1, 4001)) + """
return { topics = { "tick.*" }, on_event = function(ev)
  local s, base = 0, ev.payload * 100
  for i = base + 1, base + 100 do s = s + F[i](ev.payload) end
  ev.headers.s = tostring(s)
  return "a"
end }
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_compiled_code_of_a_rule_is_bounded_per_state(sluice, tmp_path, workers):
    # README Limits: with rules.jit, LuaJIT's machine code, outside
    # memory_mb, is at most its maxmcode (512 KiB) per rule state: when
    # full it flushes its traces and compiles again
    d = tmp_path / "rules"
    d.mkdir()
    (d / "10_many.lua").write_text(MANY_TRACES)
    port = free_port()
    eng = sluice("""return {
  workers = %d,
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "a", type = "file", path = "a.ndjson" } },
  routes = { { topics = "*", to = "a" } },
  rules = { dir = "%s", cpu_budget_ms = 5000, memory_mb = 64, jit = true },
}""" % (workers, port, d))
    base = _code_kb(eng.pid)
    # keys spread the events over the workers; each event runs its own 100
    send_events("127.0.0.1:%d" % port,
                [{"topic": "tick.a", "key": "k%d" % (i % 16), "payload": i % 40}
                 for i in range(40 * workers)])
    wait_for(lambda: len(read_ndjson(eng.path("a.ndjson"))) == 40 * workers,
             what="the events", timeout=60)
    grown = _code_kb(eng.pid) - base
    # compiled (the bound below could not fail without it); how much is
    # left depends on when LuaJIT last flushed: 128-256 KiB seen
    assert grown >= 32, grown
    assert grown <= 520 * workers + 64, grown
    assert eng.stop(timeout=10) == 0


def test_a_rule_logging_in_a_loop_writes_at_most_64_KiB_of_log_per_event(sluice, tmp_path):
    # before: one event wrote ~240 MB of log (1 MiB lines until the budget)
    eng, addr, _ = start(sluice, tmp_path, {"10_flood.lua": LOG_FLOOD},
                         extra="log_level = 'info',")
    before = len(eng.stderr())
    send_events(addr, [{"topic": "t", "payload": i} for i in range(3)])
    wait_for(lambda: len(read_ndjson(eng.path("a.ndjson"))) == 3, what="the events")
    assert eng.stop() == 0
    text = eng.stderr()
    assert len(text) - before < 3 * (65536 + 8192), len(text) - before
    cut = [l for l in eng.logs() if l.get("rule", "").endswith("10_flood.lua") and
           l["msg"].startswith("xxxx")]
    assert cut and all(l["msg"].endswith("... [cut: 1048576 bytes, at most 8192]") for l in cut)
    assert len(eng.find_logs("log budget of 65536 bytes for this call used up; "
                             "its further log lines are dropped")) == 3


RECEIVER_4K = """return {
  max_event_bytes = 4096,
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "out", type = "file", path = "out.ndjson" } },
  routes = { { topics = "*", to = "out" } },
}"""


def test_an_event_that_grew_past_max_event_bytes_never_wedges_a_sluice_link(sluice, tmp_path):
    # The dead letter adds sluice-error and friends to an event, so an event
    # near max_event_bytes that a rule fails on grows past it. Over a link
    # without ack (no hello: the receiver allows no headroom) the receiver
    # refused it and the sender resent it for ever: nothing behind it
    # arrived. Now the sender never sends what the peer would refuse: with
    # no dead letter to take it (the link is the dead letter), it is
    # dropped, logged and counted; everything else flows.
    rport = free_port()
    recv = sluice(RECEIVER_4K % rport, name="receiver")
    d = tmp_path / "rules"
    d.mkdir()
    (d / "10_fail.lua").write_text(
        'return { topics = { "boom" }, on_event = function() error(("e"):rep(400)) end }')
    sport, admin = free_port(), free_port()
    send = sluice("""return {
  max_event_bytes = 4096,
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "link", type = "tcp", address = "127.0.0.1:%d",
                retry = { initial_ms = 10, max_ms = 50 } } },
  routes = { { topics = "*", to = "link" } },
  dead_letter = "link",
  rules = { dir = "%s" },
  admin = { listen = "127.0.0.1:%d" },
}""" % (sport, rport, d, admin), name="sender")
    events = [{"id": "big", "topic": "boom", "payload": "x" * 3700}]
    events += [{"id": "ok-%d" % i, "topic": "fine", "payload": i} for i in range(20)]
    send_events("127.0.0.1:%d" % sport, events)
    got = wait_for(lambda: (lambda evs: evs if len(evs) >= 20 else None)(
        read_ndjson(recv.path("out.ndjson"))), timeout=10, what="the events after the big one")
    assert sorted(e["id"] for e in got) == sorted("ok-%d" % i for i in range(20))
    assert not recv.find_logs("bad input; closing connection")
    wait_for(lambda: metric("127.0.0.1:%d" % admin, "sluice_output_refused_total",
                            output="link") == 1, what="the refusal counted")
    line = send.find_logs("output cannot send an event and has no dead letter to give it to; dropped")
    assert line and "larger than the peer accepts (4096: max_event_bytes" in line[0]["error"]
    assert send.stop() == 0 and recv.stop() == 0


def test_an_event_of_max_event_bytes_crosses_an_acked_link_after_ingest_made_it_grow(sluice, tmp_path):
    # ingest adds an id, a time and a traceparent: the event the sender
    # forwards is larger than max_event_bytes, and the receiver takes it
    # from a sluice peer (the hello) within SL_EVENT_HEADROOM
    import msgpack
    rport = free_port()
    recv = sluice(RECEIVER_4K % rport, name="receiver")
    sport = free_port()
    send = sluice("""return {
  max_event_bytes = 4096,
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "link", type = "tcp", address = "127.0.0.1:%d", ack = true,
                retry = { initial_ms = 10, max_ms = 50 } } },
  routes = { { topics = "*", to = "link" } },
}""" % (sport, rport), name="sender")
    ev = {"topic": "t", "payload": "x" * 4076}
    assert len(msgpack.packb(ev)) == 4096
    send_events("127.0.0.1:%d" % sport, [ev, {"topic": "t", "payload": "after"}])
    got = wait_for(lambda: (lambda evs: evs if len(evs) == 2 else None)(
        read_ndjson(recv.path("out.ndjson"))), timeout=10, what="both events at the receiver")
    assert got[0]["payload"] == "x" * 4076 and "traceparent" in got[0]["headers"]
    assert got[1]["payload"] == "after"
    assert not recv.find_logs("bad input; closing connection")
    assert send.stop() == 0 and recv.stop() == 0


SPOOFING = r"""
return {
  topics = { "s.*" },
  on_event = function(ev)
    sluice.counter("honest_total", { k = "ok" }):inc()
    local label = ev.topic:sub(3)
    if label == "nul" then
      sluice.counter("spoof_total", { k = "x\0\"} 1\nsluice_events_total 1e9" }):inc()
    else
      sluice.counter("spoof_total", { [label] = "sluice_up" }):inc()
    end
    return "a"
  end,
}
"""


def test_counter_labels_cannot_duplicate_or_spoof_metric_labels(sluice, tmp_path):
    """A rule's labels named rule, name or __name__ (or a value with a NUL)
    made a sample with duplicate labels or another metric's name, and
    Prometheus refuses the whole scrape for one such line."""
    import re
    import urllib.request
    from conftest import scrape
    eng, addr, admin = start(sluice, tmp_path, {"10_spoof.lua": SPOOFING})
    topics = ["s.rule", "s.name", "s.__name__", "s.nul"]
    send_events(addr, [{"topic": t} for t in topics])
    dead = wait_for(lambda: (lambda d: d if len(d) == 4 else None)(
        read_ndjson(eng.path("var/dead-letter.ndjson"))), what="4 dead letters")
    errs = {e["topic"]: e["headers"]["sluice-error"] for e in dead}
    for t in topics[:3]:
        assert "label name '%s' is reserved" % t[2:] in errs[t], errs[t]
    assert "holds a NUL byte" in errs["s.nul"], errs["s.nul"]
    with urllib.request.urlopen("http://%s/metrics" % admin, timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith("sluice_rule_value_total{"):
            names = re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"', line)
            assert len(names) == len(set(names)), line
            assert "__name__" not in names, line
    samples = scrape(admin)
    assert [v for n, l, v in samples if n == "sluice_rule_value_total" and
            l.get("name") == "honest_total"] == [4.0]
    assert not [s for s in samples if s[1].get("name") == "spoof_total"]


BUSY = """
return {
  topics = { "busy.*" },
  on_event = function(ev)
    if ev.topic == "busy.loop" then while true do end end
    local n = 0
    for i = 1, ev.payload.spin do n = n + i end
    return "a"
  end,
}
"""


def test_the_cpu_budget_counts_cpu_time_not_time_the_engine_was_preempted(sluice, tmp_path):
    """A busy node (a noisy neighbour, a container's CPU quota) stops the
    engine for longer than a rule's budget while a rule runs: that time is
    not the rule's. SIGSTOP for 60 ms every 20 ms, budget 20 ms, each event a
    few ms of CPU: none may be stopped for its budget, but an endless loop
    still is."""
    import os
    import signal
    import threading
    eng, addr, admin = start(sluice, tmp_path, {"10_busy.lua": BUSY})
    stop = threading.Event()
    stops = [0]

    def preempt():
        while not stop.is_set():
            os.kill(eng.pid, signal.SIGSTOP)
            time.sleep(0.06)
            os.kill(eng.pid, signal.SIGCONT)
            stops[0] += 1
            time.sleep(0.02)

    t = threading.Thread(target=preempt)
    t.start()
    try:
        n = 150
        send_events(addr, [{"topic": "busy.work", "payload": {"spin": 300000}}
                           for _ in range(n)] + [{"topic": "busy.loop"}], timeout=60)
        # Wait for every event to be settled (delivered or dead-lettered);
        # should that not happen, say where each event went and what the
        # engine did (a run in CI once timed out here, not reproduced since).
        def settled():
            return len(read_ndjson(eng.path("a.ndjson"))) + len(
                read_ndjson(eng.path("var/dead-letter.ndjson"))) >= n + 1

        def where():
            try:
                ms = [(n, l, v) for n, l, v in scrape(admin)
                      if n.startswith("sluice_rule_") and
                      l.get("rule") == "10_busy.lua" and "_bucket" not in n]
            except Exception as e:  # the engine may be gone
                ms = repr(e)
            return ("a=%d rest=%d dead=%r rule=%r stops=%d running=%s\n%s" % (
                len(read_ndjson(eng.path("a.ndjson"))),
                len(read_ndjson(eng.path("rest.ndjson"))),
                [(e["topic"], e["headers"].get("sluice-error"))
                 for e in read_ndjson(eng.path("var/dead-letter.ndjson"))],
                ms, stops[0], eng.running(), eng.stderr()[-3000:]))

        deadline = time.monotonic() + 60
        while not settled():
            assert time.monotonic() < deadline, "not settled in 60 s: " + where()
            time.sleep(0.02)
    finally:
        stop.set()
        t.join()
        os.kill(eng.pid, signal.SIGCONT)
    samples = scrape(admin)
    dead = read_ndjson(eng.path("var/dead-letter.ndjson"))
    refused = [(e["payload"], e["headers"].get("sluice-error")) for e in dead
               if e["topic"] != "busy.loop"]
    assert refused == [], where()
    assert len(read_ndjson(eng.path("a.ndjson"))) == n, where()
    assert stops[0] >= 3, stops  # the engine was preempted while it worked
    assert metric(samples, "sluice_rule_errors_total", rule="10_busy.lua", kind="cpu") == 1
    assert eng.stop() == 0
    dead = read_ndjson(eng.path("var/dead-letter.ndjson"))
    assert [e["topic"] for e in dead] == ["busy.loop"]
    assert "cpu budget" in dead[0]["headers"]["sluice-error"]


# ---- emits never block (README, Queues and backpressure) --------------------

EMIT_COPY = """
return {
  on_event = function(ev)
    sluice.emit("side", { topic = "copy", payload = ev.payload })
    return "a"
  end,
}
"""


def test_emits_into_a_full_blocking_queue_are_dropped_and_counted_never_blocking(sluice, tmp_path):
    """`side` blocks when full (the default) and its peer is down, so its
    queue of 10 fills with the first 10 emits. The 15 later emits are
    dropped and counted, and the events that emitted them still flow to
    `a`: the rule has returned long before there is room."""
    from conftest import Sink
    d = tmp_path / "rules"
    d.mkdir()
    (d / "10_emit.lua").write_text(EMIT_COPY)
    peer, port, admin = free_port(), free_port(), free_port()
    eng = sluice("""return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "a", type = "file", path = "a.ndjson" },
              { name = "side", type = "tcp", address = "127.0.0.1:%d",
                queue = { max_events = 10 }, retry = { initial_ms = 20, max_ms = 100 } } },
  rules = { dir = "%s" },
  admin = { listen = "127.0.0.1:%d" },
}""" % (port, peer, d, admin))
    eng.wait_log("output peer unreachable; reconnecting with backoff")
    # one key: in order over any number of workers
    send_events("127.0.0.1:%d" % port, [{"topic": "t", "key": "k", "payload": i}
                                         for i in range(25)])
    wait_for(lambda: len(read_ndjson(eng.path("a.ndjson"))) == 25, timeout=10,
             what="all 25 events in a.ndjson while side is full")
    m = scrape("127.0.0.1:%d" % admin)
    assert metric(m, "sluice_emit_dropped_total") == 15
    assert metric(m, "sluice_events_dropped_total", reason="queue_full_newest",
                  output="side") == 15
    with Sink(port=peer) as sink:
        got = sink.wait(10)
        assert [g["payload"] for g in got] == list(range(10))
        assert eng.stop() == 0
    assert [e["payload"] for e in read_ndjson(eng.path("a.ndjson"))] == list(range(25))


DROPPER = """
return {
  on_event = function(ev)
    if ev.topic ~= "keep" then return sluice.drop("because " .. ev.topic) end
    return "a"
  end,
}
"""


def test_sluice_drop_is_counted_by_rule_not_by_its_reason(sluice, tmp_path):
    """README, Rules: a sluice.drop is counted in
    sluice_events_dropped_total{reason="rule"} and per rule in
    sluice_rule_decisions_total; its reason string labels no series (the
    tap and the dry run show it)."""
    eng, addr, admin = start(sluice, tmp_path, {"10_drop.lua": DROPPER})
    send_events(addr, [{"topic": t} for t in ("x", "y", "z", "keep")])
    wait_for(lambda: len(read_ndjson(eng.path("a.ndjson"))) == 1, what="the kept event")
    m = scrape(admin)
    assert metric(m, "sluice_events_dropped_total", reason="rule") == 3
    assert metric(m, "sluice_rule_decisions_total", rule="10_drop.lua",
                  decision="dropped") == 3
    assert not [s for s in m if any("because" in str(v) for v in s[1].values())]
    assert eng.stop() == 0


def test_route_dry_run_reads_a_msgpack_stream_from_events_file(tmp_path):
    """README, Dry run: --events FILE, and a msgpack stream told apart from
    NDJSON by its first byte; the decisions are as for NDJSON."""
    import msgpack
    d = tmp_path / "rules"
    d.mkdir()
    (d / "10_router.lua").write_text(ROUTER)
    cfg = tmp_path / "c.lua"
    cfg.write_text("""return {
  outputs = { { name = "a", type = "null" }, { name = "b", type = "null" } },
  rules = { dir = "rules" } }""")
    evs = tmp_path / "events.msgpack"
    evs.write_bytes(b"".join(msgpack.packb(e) for e in [
        {"topic": "orders.eu", "payload": {"amount": 500}},
        {"topic": "orders.eu", "payload": {"amount": 5}},
        {"topic": "orders.eu", "payload": {}}]))
    r = run_sluice("route", "-c", str(cfg), "--events", str(evs))
    assert r.returncode == 0, r.stderr
    out = [json.loads(l) for l in r.stdout.splitlines()]
    assert [(o["index"], o["decision"], o["outputs"]) for o in out] == [
        (0, "routed", ["a", "b"]), (1, "routed", ["a"]), (2, "dropped", [])]
    assert out[2]["reason"] == "no amount"


RULE_A = """
return {
  topics = { "orders.*" },
  on_event = function(ev)
    if ev.payload.drop then return sluice.drop("test order") end
    ev.headers.seen = "a"
  end,
}
"""

RULE_B = """
return {
  on_event = function(ev)
    sluice.counter("b_calls"):inc()
    if ev.topic == "users.new" then return nil end
    ev.headers.b_saw = ev.headers.seen or "none"
    return "a"
  end,
}
"""


def test_the_readme_examples_of_how_an_event_is_decided(sluice, tmp_path):
    """README, Rules: with 10_a (orders.*) and 20_b (every topic), an order
    10_a passes goes where 20_b says, with 10_a's header seen by 20_b and
    by the output; one 10_a drops never reaches 20_b; users.new meets only
    20_b, which returns nil, so the routes decide."""
    eng, addr, admin = start(sluice, tmp_path, {"10_a.lua": RULE_A, "20_b.lua": RULE_B})
    send_events(addr, [{"id": "kept", "topic": "orders.eu", "payload": {}},
                       {"id": "dropped", "topic": "orders.eu", "payload": {"drop": True}},
                       {"id": "user", "topic": "users.new", "payload": {}}])
    wait_for(lambda: len(read_ndjson(eng.path("rest.ndjson"))) == 1, what="users.new at rest")
    wait_for(lambda: len(read_ndjson(eng.path("a.ndjson"))) == 1, what="the order at a")
    [order] = read_ndjson(eng.path("a.ndjson"))
    assert order["id"] == "kept"
    assert order["headers"]["seen"] == "a" and order["headers"]["b_saw"] == "a"
    [user] = read_ndjson(eng.path("rest.ndjson"))
    assert user["id"] == "user" and "seen" not in user["headers"]
    m = scrape(admin)
    assert [v for n, l, v in m if n == "sluice_rule_value_total" and
            l == {"rule": "20_b.lua", "name": "b_calls"}] == [2]
    assert metric(m, "sluice_rule_decisions_total", rule="10_a.lua", decision="dropped") == 1
    assert eng.stop() == 0


def test_c_levels_past_a_share_of_a_small_stack_are_a_rule_error_never_a_crash(
        sluice, tmp_path):
    """README Limits: recursion through C ends in "C calls nested deeper
    than 100" or "too deep", past a measured share of the thread's C
    stack, never a crash. Started with a 512 KiB stack (ulimit -s 512) and
    one worker, the main thread's, gsub re-entering itself through its
    replacement function takes ~2-3 KiB of C stack a level: it stops at
    the share (a quarter, ~128 KiB) well before 100 levels. The event goes
    to the dead letter with that error, and the engine goes on. (Worker
    threads get at least 8 MiB under a limit below 1 MiB, workers.c
    stack_size, so there the count of 100 comes first.)"""
    rule = """
return {
  topics = { "deep" },
  on_event = function(ev)
    local big = ("x"):rep(3000)
    local function g() return (big:gsub("^x", g)) end
    return g()
  end,
}
"""
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    resource.setrlimit(resource.RLIMIT_STACK, (512 << 10, hard))
    try:  # the engine inherits it; this process only while it starts it
        eng, addr, _ = start(sluice, tmp_path, {"10_deep.lua": rule},
                             extra="workers = 1,")
    finally:
        resource.setrlimit(resource.RLIMIT_STACK, (soft, hard))
    send_events(addr, [{"topic": "deep", "key": "k%d" % i, "payload": i}
                       for i in range(4)] + [{"topic": "fine", "payload": 9}])
    dead = wait_for(lambda: (lambda d: d if len(d) == 4 else None)(
        read_ndjson(eng.path("var/dead-letter.ndjson"))), what="4 dead letters")
    for e in dead:
        m = re.search(r"C calls nested too deep \((\d+) levels used (\d+) KiB "
                      r"of C stack\)", e["headers"]["sluice-error"])
        assert m, e["headers"]
        levels, kib = int(m.group(1)), int(m.group(2))
        assert 0 < levels < 100 and 112 <= kib < 136, (levels, kib)  # ~128
    wait_for(lambda: read_ndjson(eng.path("rest.ndjson")), what="the fine event")
    assert [e["payload"] for e in read_ndjson(eng.path("rest.ndjson"))] == [9]
    assert eng.stop() == 0
