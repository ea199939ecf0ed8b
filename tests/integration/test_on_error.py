"""Per-rule error policy (issue 15, item 4) through the real binary: a rule
table's on_error ("dead_letter", "drop", "pass") and the config default
rules.on_error decide what becomes of an event whose rule failed; each
failure is counted per rule and policy on /metrics."""
from conftest import (free_port, metric, read_ndjson, run_sluice, scrape,
                      send_events, wait_for)


def failing(policy, mutate=False):
    line = 'on_error = "%s",' % policy if policy else ""
    change = 'ev.payload.touched = true; ev.headers.x = "1"' if mutate else ""
    return """
return {
  topics = { "t.*" },
  %s
  on_event = function(ev)
    %s
    if ev.payload.fail then error("broken on purpose") end
    return nil
  end,
}
""" % (line, change)


LATER = """
return {
  topics = { "t.*" },
  on_event = function(ev)
    ev.headers.later = "saw it"
    return "b"
  end,
}
"""


def start(sluice, tmp_path, rules, default=None):
    d = tmp_path / "rules"
    d.mkdir()
    for name, text in rules.items():
        (d / name).write_text(text)
    port, admin = free_port(), free_port()
    extra = ', on_error = "%s"' % default if default else ""
    eng = sluice("""return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "a", type = "file", path = "a.ndjson" },
              { name = "b", type = "file", path = "b.ndjson" } },
  routes = { { topics = "*", to = "a" } },
  rules = { dir = "%s"%s },
  admin = { listen = "127.0.0.1:%d" },
}""" % (port, d, extra, admin))
    return eng, "127.0.0.1:%d" % port, "127.0.0.1:%d" % admin


EVENTS = [{"id": "e1", "topic": "t.x", "payload": {"fail": True, "n": 1}},
          {"id": "e2", "topic": "t.x", "payload": {"n": 2}}]


def policy_counts(admin, rule):
    s = scrape(admin)
    return {p: metric(s, "sluice_rule_on_error_total", rule=rule, policy=p)
            for p in ("dead_letter", "drop", "pass")}


def test_on_error_dead_letter_is_the_default_and_sends_the_original_event(sluice, tmp_path):
    eng, addr, admin = start(sluice, tmp_path, {"10_f.lua": failing(None, mutate=True)})
    send_events(addr, EVENTS)
    wait_for(lambda: read_ndjson(eng.path("var/dead-letter.ndjson")), what="a dead letter")
    assert policy_counts(admin, "10_f.lua") == {"dead_letter": 1, "drop": 0, "pass": 0}
    assert eng.stop() == 0
    dead = read_ndjson(eng.path("var/dead-letter.ndjson"))
    assert [e["id"] for e in dead] == ["e1"]
    assert dead[0]["payload"] == {"fail": True, "n": 1}  # as it came
    assert "broken on purpose" in dead[0]["headers"]["sluice-error"]
    assert [e["id"] for e in read_ndjson(eng.path("a.ndjson"))] == ["e2"]


def test_on_error_drop_drops_counts_and_logs_without_a_dead_letter(sluice, tmp_path):
    eng, addr, admin = start(sluice, tmp_path, {"10_f.lua": failing("drop"),
                                                "20_later.lua": LATER})
    send_events(addr, EVENTS)
    wait_for(lambda: read_ndjson(eng.path("b.ndjson")), what="the healthy event")
    s = scrape(admin)
    assert metric(s, "sluice_events_dropped_total", reason="rule_error") == 1
    assert metric(s, "sluice_rule_errors_total", rule="10_f.lua", kind="runtime") == 1
    assert policy_counts(admin, "10_f.lua") == {"dead_letter": 0, "drop": 1, "pass": 0}
    assert metric(s, "sluice_events_dead_lettered_total") == 0
    log = eng.wait_log('rule failed; event dropped (on_error = "drop")')
    assert "10_f.lua:" in log["rule"] and "broken on purpose" in log["error"]
    assert log["event_id"] == "e1"
    assert eng.stop() == 0
    assert [e["id"] for e in read_ndjson(eng.path("b.ndjson"))] == ["e2"]
    assert read_ndjson(eng.path("var/dead-letter.ndjson")) == []
    assert read_ndjson(eng.path("a.ndjson")) == []


def test_on_error_pass_hands_the_unchanged_event_to_the_next_rule(sluice, tmp_path):
    eng, addr, admin = start(sluice, tmp_path, {"10_f.lua": failing("pass", mutate=True),
                                                "20_later.lua": LATER})
    send_events(addr, EVENTS)
    wait_for(lambda: len(read_ndjson(eng.path("b.ndjson"))) == 2, what="both events at b")
    assert policy_counts(admin, "10_f.lua") == {"dead_letter": 0, "drop": 0, "pass": 1}
    eng.wait_log('rule failed; event passed on unchanged (on_error = "pass")')
    assert eng.stop() == 0
    got = {e["id"]: e for e in read_ndjson(eng.path("b.ndjson"))}
    # e1: the failed call's changes are not kept; the next rule decided
    assert got["e1"]["payload"] == {"fail": True, "n": 1}
    assert "x" not in got["e1"]["headers"] and got["e1"]["headers"]["later"] == "saw it"
    # e2: the rule did not fail, so its changes stay
    assert got["e2"]["payload"] == {"n": 2, "touched": True}
    assert read_ndjson(eng.path("var/dead-letter.ndjson")) == []


def test_on_error_pass_with_no_later_rule_goes_to_the_routes(sluice, tmp_path):
    eng, addr, _ = start(sluice, tmp_path, {"10_f.lua": failing(None)}, default="pass")
    send_events(addr, EVENTS)
    wait_for(lambda: len(read_ndjson(eng.path("a.ndjson"))) == 2, what="both events routed")
    assert eng.stop() == 0
    assert read_ndjson(eng.path("var/dead-letter.ndjson")) == []


def test_a_rules_own_on_error_wins_over_the_config_default(sluice, tmp_path):
    eng, addr, admin = start(sluice, tmp_path, {"10_f.lua": failing("dead_letter")},
                             default="drop")
    send_events(addr, EVENTS)
    wait_for(lambda: read_ndjson(eng.path("var/dead-letter.ndjson")), what="a dead letter")
    assert policy_counts(admin, "10_f.lua") == {"dead_letter": 1, "drop": 0, "pass": 0}
    assert eng.stop() == 0


def test_a_bad_on_error_fails_check_with_file_and_line(tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "10_f.lua").write_text('return {\n  on_error = "ignore",\n  on_event = function() end,\n}\n')
    cfg = tmp_path / "c.lua"
    cfg.write_text('return { inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },'
                   ' outputs = { { name = "a", type = "null" } }, rules = { dir = "rules" } }'
                   % free_port())
    r = run_sluice("check", "-c", cfg)
    assert r.returncode == 1
    assert 'on_error must be "dead_letter", "drop" or "pass"' in r.stderr
    assert "10_f.lua:" in r.stderr
    (d / "10_f.lua").write_text('return { on_event = function() end }\n')
    cfg.write_text(cfg.read_text().replace('dir = "rules"', 'dir = "rules", on_error = "skip"'))
    r = run_sluice("check", "-c", cfg)
    assert r.returncode == 1
    assert 'rules.on_error: expected "dead_letter", "drop" or "pass", got "skip"' in r.stderr


def test_the_dry_run_shows_each_policy(tmp_path):
    import json
    d = tmp_path / "rules"
    d.mkdir()
    (d / "10_drop.lua").write_text(failing("drop").replace('"t.*"', '"d.*"'))
    (d / "20_pass.lua").write_text(failing("pass").replace('"t.*"', '"p.*"'))
    cfg = tmp_path / "c.lua"
    cfg.write_text('return { inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },'
                   ' outputs = { { name = "a", type = "null" } },'
                   ' routes = { { topics = "*", to = "a" } }, rules = { dir = "rules" } }'
                   % free_port())
    events = "".join(json.dumps({"topic": t, "payload": {"fail": True}}) + "\n"
                     for t in ("d.x", "p.x"))
    r = run_sluice("route", "-c", cfg, input=events)
    assert r.returncode == 0, r.stderr
    dropped, passed = [json.loads(l) for l in r.stdout.splitlines()]
    assert dropped["decision"] == "dropped"
    assert dropped["reason"].startswith("on_error drop: ") and "broken on purpose" in dropped["reason"]
    assert passed["decision"] == "routed" and passed["outputs"] == ["a"]


UNKNOWN_OUTPUT = """
return {
  topics = { "t.*" },
  on_error = "pass",
  on_event = function(ev)
    ev.topic = "t.moved"
    ev.headers.x = "1"
    ev.payload.touched = true
    sluice.emit("b", { topic = "t.emitted" })
    return "nope"
  end,
}
"""


def test_pass_after_returning_an_unknown_output_goes_on_without_the_calls_changes(sluice, tmp_path):
    """README, When a rule fails: "pass" lets the event go on as it came to
    the rule. Returning an output the config lacks is such a failure, but it
    was found after the call had given its changed event, which went on in
    its stead (topic, header and payload changed), in the engine and the dry
    run alike. Found by test_rules_differential. The emit stands, as for any
    failure (README is silent on it; sluice.testing reports it)."""
    eng, addr, _ = start(sluice, tmp_path, {"10_x.lua": UNKNOWN_OUTPUT})
    send_events(addr, [{"id": "e1", "topic": "t.x", "payload": {"n": 1}}])
    eng.stop()
    got = read_ndjson(eng.path("a.ndjson"))
    assert [(e["id"], e["topic"], e["payload"], "x" in e["headers"]) for e in got] == [
        ("e1", "t.x", {"n": 1}, False)]
    assert [e["topic"] for e in read_ndjson(eng.path("b.ndjson"))] == ["t.emitted"]
    r = run_sluice("route", "-c", str(eng.config),
                   input='{"id":"e1","topic":"t.x","payload":{"n":1}}\n')
    out = [__import__("json").loads(l) for l in r.stdout.splitlines()]
    assert [(o["decision"], o["outputs"], o["event"]["topic"], o["event"]["payload"])
            for o in out] == [("routed", ["a"], "t.x", {"n": 1})]
