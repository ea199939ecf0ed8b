"""Red-team probes of workers = N, round 2b (r18): reload's same-code check
(sl_rules_same_code), each test saying what it proves."""
import signal

from conftest import read_ndjson, wait_lines
from test_workers import PINNED, keyed_events, post_reload, send, start, \
    worker_keys

LAZY = """
return { on_event = function(ev)
  ev.headers.v = require("stamp").v -- looked up at the first event only
  return "out"
end }
"""


def test_a_module_required_lazily_by_one_worker_does_not_fail_every_reload(
        sluice, tmp_path):
    """A rule may require a module inside on_event: each worker records the
    module when it first runs that line, so a worker that decided none of
    the rule's events has not looked it up yet. That is no change of code:
    a reload (with nothing changed, or with another file added) must
    succeed, not fail with 'a rules file changed while the workers loaded
    it' on every try until a restart."""
    eng, rules, addr, admin = start(sluice, tmp_path, {"10_lazy.lua": LAZY},
                                    workers=2, env=PINNED)
    (rules / "lib").mkdir()
    (rules / "lib" / "stamp.lua").write_text("return { v = 'm1' }")
    keys = worker_keys(1, 8)  # only worker 1 decides them (and requires)
    send(addr, keyed_events(keys, 100))
    wait_lines(eng.path("out.ndjson"), 100, timeout=20)
    status = post_reload(admin)  # nothing changed
    assert status == 200, (status, eng.find_logs(
        "rules reload failed on a worker; every worker keeps the running "
        "rules"))
    # before 10_lazy, which routes: it marks every event
    (rules / "05_add.lua").write_text("""
return { on_event = function(ev) ev.headers.w = "added" end }""")
    eng.signal(signal.SIGHUP)
    eng.wait_log("config reloaded", timeout=30, trigger="SIGHUP")
    assert not eng.find_logs("rules reload failed on a worker; every "
                             "worker keeps the running rules")
    send(addr, keyed_events(worker_keys(0, 8) + keys, 100))
    wait_lines(eng.path("out.ndjson"), 200, timeout=20)
    out = read_ndjson(eng.path("out.ndjson"))[100:]
    assert {e["headers"].get("w") for e in out} == {"added"}
    assert {e["headers"]["v"] for e in out} == {"m1"}
    assert eng.stop() == 0
