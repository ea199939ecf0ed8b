"""The dry runs apply the payload contracts as the engine does (issue 16):
`sluice route` and `sluice check --events` refuse an event that does not
fit its topic's contract (the dead letter, sluice-error naming the path),
pass a warn-mode misfit on saying why, stamp the version for rules that
read ev.schema_version, and hold outputs' schema = "..." for routed and
emitted events. The same events through the real engine land where the dry
run said they would."""
import json

from conftest import free_port, read_ndjson, run_sluice, send_events, wait_lines
from test_schema import ORDER_V1, STRICT, config, write_schemas

RULE = """return {
  topics = { "orders.*" },
  on_event = function(ev)
    ev.headers["seen-version"] = ev.schema_version or "none"
    if ev.payload.strip then ev.payload.sku = nil end
    if ev.payload.emit then
      sluice.emit("out", { topic = "made", payload = { qty = "not a number" } })
    end
    return "out"
  end,
}
"""

EVENTS = [
    # v1 by header: qty may be missing
    {"id": "h1", "topic": "orders.a", "headers": {"schema-version": "1"},
     "payload": {"sku": "s"}},
    # no version: the newest (2) wants qty
    {"id": "n2", "topic": "orders.a", "payload": {"sku": "s"}},
    {"id": "ok", "topic": "orders.a", "payload": {"sku": "s", "qty": 1}},
    # fits its contract, then the rule strips what the output's schema wants
    {"id": "stripped", "topic": "orders.a",
     "payload": {"sku": "s", "qty": 1, "strip": True}},
    # fits, and the rule emits an event the output's schema refuses
    {"id": "emits", "topic": "orders.a",
     "payload": {"sku": "s", "qty": 1, "emit": True}},
]


def make_config(tmp_path, mode=""):
    d = write_schemas(tmp_path, order_v1_json=ORDER_V1, order_v2_json=STRICT)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10_r.lua").write_text(RULE)
    port, admin = free_port(), free_port()
    cfg = tmp_path / "sluice.conf.lua"
    cfg.write_text(config(port, admin, """{
    { topics = "orders.*", file = "%s/order.v1.json"%s },
    { topics = "orders.*", file = "%s/order.v2.json" },
  }""" % (d, mode, d), rules=rules, out_schema="%s/order.v1.json" % d))
    return cfg, port


def route(cfg, events):
    r = run_sluice("route", "-c", cfg,
                   input="".join(json.dumps(e) + "\n" for e in events))
    assert r.returncode == 0, r.stderr
    return {o["event"]["id"]: o for o in map(json.loads, r.stdout.splitlines())}


def test_route_refuses_misfits_stamps_versions_and_holds_output_schemas(tmp_path):
    cfg, _ = make_config(tmp_path)
    out = route(cfg, EVENTS)
    assert out["h1"]["decision"] == "routed" and out["h1"]["outputs"] == ["out"]
    assert out["h1"]["event"]["headers"]["seen-version"] == "1"
    assert out["ok"]["event"]["headers"]["seen-version"] == "2"
    assert "schema" not in out["ok"]
    # refused at ingest: the rule never ran, the dead letter's copy
    n2 = out["n2"]
    assert n2["decision"] == "failed" and n2["outputs"] == ["dead"]
    assert n2["rule"] is None
    assert n2["reason"].startswith("contract orders.* version 2: /")
    assert n2["event"]["headers"]["sluice-error"] == n2["reason"]
    assert "seen-version" not in n2["event"]["headers"]
    # the output's schema refuses what the rule made of it
    st = out["stripped"]
    assert st["decision"] == "failed" and st["outputs"] == ["dead"]
    assert st["reason"].startswith("output out schema: /: expected")
    assert st["event"]["headers"]["sluice-output"] == "out"
    assert "sku" not in st["event"]["payload"]
    # an emitted misfit goes to the dead letter; the event itself to out
    em = out["emits"]
    assert em["decision"] == "routed" and em["outputs"] == ["out"]
    assert [e["output"] for e in em["emitted"]] == ["dead"]
    made = em["emitted"][0]["event"]
    assert made["headers"]["sluice-output"] == "out"
    assert made["headers"]["sluice-error"].startswith("output out schema: /qty")


def test_route_in_warn_mode_passes_misfits_on_saying_why(tmp_path):
    cfg, _ = make_config(tmp_path, ', mode = "warn"')
    # the newest version wants qty; the output's schema (v1) does not
    out = route(cfg, [{"id": "w", "topic": "orders.a", "payload": {"sku": "s"}}])
    w = out["w"]
    assert w["decision"] == "routed" and w["outputs"] == ["out"]
    assert w["schema"].startswith("contract orders.* version 2: /: expected"), w
    assert "qty" in w["schema"]
    assert w["event"]["headers"]["seen-version"] == "2"


def test_check_events_fails_the_gate_on_a_misfit_naming_the_path(tmp_path):
    cfg, _ = make_config(tmp_path)
    ev = tmp_path / "samples.ndjson"
    ev.write_text("".join(json.dumps(e) + "\n" for e in EVENTS[:3]))
    r = run_sluice("check", "-c", cfg, "--events", ev)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert any(l.startswith("event 2: failed topic=orders.a: contract orders.* "
                            "version 2: /") for l in lines), lines
    assert lines[-1].endswith("3 events: 2 routed, 0 dropped, 0 unrouted, "
                              "1 failed, 0 invalid"), lines
    ev.write_text("".join(json.dumps(e) + "\n" for e in (EVENTS[0], EVENTS[2])))
    r = run_sluice("check", "-c", cfg, "--events", ev)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_engine_puts_each_event_where_the_dry_run_said(sluice, tmp_path):
    cfg, port = make_config(tmp_path)
    dry = route(cfg, EVENTS)
    eng = sluice(cfg.read_text())
    send_events("127.0.0.1:%d" % port, EVENTS)
    # out: h1, ok, emits; dead: n2, stripped and the emitted misfit
    wait_lines(eng.path("out.ndjson"), 3)
    wait_lines(eng.path("dead.ndjson"), 3)
    out = read_ndjson(eng.path("out.ndjson"))
    dead = read_ndjson(eng.path("dead.ndjson"))
    want_out = sorted(i for i, o in dry.items() if o["outputs"] == ["out"])
    # (an emitted event's id is made where it is emitted: named by topic)
    want_dead = sorted([i for i, o in dry.items() if o["outputs"] == ["dead"]] +
                       [e["event"]["topic"] for o in dry.values()
                        for e in o["emitted"] if e["output"] == "dead"])
    assert sorted(e["id"] for e in out) == want_out == ["emits", "h1", "ok"]
    assert sorted(e["id"] if e["topic"] != "made" else "made"
                  for e in dead) == want_dead == ["made", "n2", "stripped"]
    for e in dead:  # the same sluice-error as the dry run's copy
        d = dry.get(e["id"])
        if d:
            assert e["headers"]["sluice-error"] == d["event"]["headers"]["sluice-error"]
