"""Rules through the real binary (issue 3): route, drop, transform, emit,
and rules that time out, blow their memory or fail, which send the event to
the dead letter while the engine keeps serving. Also `sluice check` on a
broken rule and the `sluice route` dry run."""
import json
import time

from conftest import free_port, metric, read_ndjson, run_sluice, send_events, wait_for


def start(sluice, tmp_path, rules, extra=""):
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
  rules = { dir = "%s", cpu_budget_ms = 20, memory_mb = 16 },
  admin = { listen = "127.0.0.1:%d" },
  %s
}""" % (port, d, admin, extra))
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


def test_failing_rules_go_to_dead_letter_and_the_engine_keeps_serving(sluice, tmp_path):
    eng, addr, admin = start(sluice, tmp_path, {"10_router.lua": ROUTER, "20_failing.lua": FAILING})
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
