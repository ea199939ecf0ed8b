"""Hot reload of rules (issue 4), through the real binary.

Events flow continuously from a client while the rules folder is edited,
renamed over, broken, fixed and emptied; every event must arrive exactly
once, in order per key, handled by a version that went live (never a
rejected one).
"""
import json
import os
import signal
import socket
import subprocess
import threading
import time

import msgpack
import pytest

from conftest import connect, free_port, pack, read_ndjson, run_sluice, wait_for


def stamp_rule(version, extra=""):
    return """
return {
  on_event = function(ev)
    ev.headers.v = "%s"
    return "out"
  end,
  %s
}
""" % (version, extra)


class Flow:
    """A client thread that keeps sending events with a per-key sequence."""

    def __init__(self, address, keys=4, rate=3000):
        self.address = address
        self.keys = keys
        self.rate = rate
        self.sent = 0
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.error = None

    def run(self):
        try:
            s = connect(self.address)
            batch = 30
            interval = batch / float(self.rate)
            while not self.stop_flag.is_set():
                buf = b"".join(
                    pack({"topic": "t", "key": "k%d" % ((self.sent + i) % self.keys),
                          "payload": {"seq": self.sent + i}})
                    for i in range(batch))
                s.sendall(buf)
                self.sent += batch
                time.sleep(interval)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
            s.close()
        except Exception as e:  # reported by the test
            self.error = e

    def start(self):
        self.thread.start()
        wait_for(lambda: self.sent > 0, what="the flow to start")

    def finish(self):
        self.stop_flag.set()
        self.thread.join(10)
        assert self.error is None, self.error
        return self.sent


def config(port, rules="rules", watch=True, extra=""):
    return """
return {
  inputs  = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "out", type = "file", path = "out.ndjson" },
              { name = "tick", type = "file", path = "tick.ndjson" },
              { name = "fallback", type = "file", path = "fallback.ndjson" } },
  routes  = { { topics = "*", to = "fallback" } },
  rules   = { dir = "%s", watch = %s, debounce_ms = 30 },
  %s
}
""" % (port, rules, "true" if watch else "false", extra)


def start(sluice, tmp_path, files, **kw):
    """Write the rule files into a fresh rules folder, then start."""
    rules = tmp_path / "rules"
    rules.mkdir()
    for name, text in files.items():
        (rules / name).write_text(text)
    port = free_port()
    eng = sluice(config(port, rules=str(rules), **kw))
    return eng, rules, "127.0.0.1:%d" % port


def write_atomic(path, text):
    tmp = str(path) + ".tmp~"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def reload_lines(eng):
    return [l for l in eng.logs()
            if l.get("msg") in ("rules reloaded",
                                "rules reload rejected; the live version stays")]


def wait_reloads(eng, n, timeout=5):
    return wait_for(lambda: len(reload_lines(eng)) >= n and reload_lines(eng),
                    timeout=timeout, what="%d reload log lines" % n)


def check_exactly_once_in_order(events, sent):
    seqs = [e["payload"]["seq"] for e in events]
    assert len(seqs) == sent, "sent %d, received %d" % (sent, len(seqs))
    assert sorted(seqs) == list(range(sent)), "lost or duplicated events"
    last = {}
    for e in events:
        k, s = e["key"], e["payload"]["seq"]
        assert last.get(k, -1) < s, "key %s out of order at seq %d" % (k, s)
        last[k] = s


def test_reload_under_flow_bad_versions_never_handle_events(sluice, tmp_path):
    eng, rules, addr = start(sluice, tmp_path, {"10_stamp.lua": stamp_rule("v1")})
    flow = Flow(addr)
    flow.start()
    n = 0
    steps = [
        # (action, expect_ok)
        (lambda: (rules / "10_stamp.lua").write_text(stamp_rule("v2")), True),  # in place
        (lambda: write_atomic(rules / "10_stamp.lua", stamp_rule("v3")), True),  # rename over
        (lambda: write_atomic(rules / "10_stamp.lua", "return { on_event = function(ev) ev.headers.v = 'bad1' return 'out' end"), False),
        (lambda: write_atomic(rules / "10_stamp.lua", stamp_rule("bad2", "on_start = function() error('no start') end,")), False),
        (lambda: write_atomic(rules / "10_stamp.lua", "return { topics = {'*'} }"), False),
        (lambda: write_atomic(rules / "10_stamp.lua", stamp_rule("v4")), True),  # fixed
        (lambda: (rules / "10_stamp.lua").unlink(), True),  # deleted: config routes
        (lambda: write_atomic(rules / "20_new.lua", stamp_rule("v5")), True),  # created
        (lambda: eng.signal(signal.SIGHUP), True),
    ]
    for action, ok in steps:
        time.sleep(0.15)
        action()
        n += 1
        lines = wait_reloads(eng, n)
        last = lines[-1]
        if ok:
            assert last["msg"] == "rules reloaded", last
        else:
            assert last["msg"].startswith("rules reload rejected"), last
            assert "10_stamp.lua:" in last["error"], last
    time.sleep(0.15)
    sent = flow.finish()
    assert eng.stop() == 0
    out = read_ndjson(eng.path("out.ndjson"))
    fallback = read_ndjson(eng.path("fallback.ndjson"))
    versions = [e["headers"]["v"] for e in out]
    assert not any(v.startswith("bad") for v in versions)
    # versions only move forward, with the stream (swap at an event boundary)
    order = {"v1": 1, "v2": 2, "v3": 3, "v4": 4, "v5": 5}
    ranks = [order[v] for v in versions]
    assert ranks == sorted(ranks)
    assert {"v1", "v2", "v3", "v4", "v5"} <= set(versions)
    assert len(fallback) > 0  # while no rule was there
    every = sorted(out + fallback, key=lambda e: e["time"])
    check_exactly_once_in_order(
        sorted(out + fallback, key=lambda e: e["payload"]["seq"]), sent)
    # per key order holds across the two files because each key's events
    # came over one connection in order and were decided in order
    del every


def test_reload_hands_state_over_with_snapshot_and_restore(sluice, tmp_path):
    counting = """
local count = 0
return {
  on_event = function(ev)
    count = count + 1
    ev.headers.count = tostring(count)
    ev.headers.v = "%s"
    return "out"
  end,
  snapshot = function() return { count = count } end,
  restore = function(s) %s end,
}
"""
    eng, rules, addr = start(sluice, tmp_path,
                             {"10_count.lua": counting % ("v1", "count = s.count")})
    from conftest import send_events
    send_events(addr, [{"topic": "t", "payload": i} for i in range(5)])
    write_atomic(rules / "10_count.lua", counting % ("v2", "count = s.count"))
    wait_reloads(eng, 1)
    send_events(addr, [{"topic": "t", "payload": i} for i in range(5, 8)])
    # a restore that fails is a failed reload: v2 stays, state intact
    write_atomic(rules / "10_count.lua", counting % ("v3", "error('cannot restore')"))
    lines = wait_reloads(eng, 2)
    assert lines[-1]["msg"].startswith("rules reload rejected")
    assert "cannot restore" in lines[-1]["error"]
    send_events(addr, [{"topic": "t", "payload": 8}])
    assert eng.stop() == 0
    out = read_ndjson(eng.path("out.ndjson"))
    assert [e["headers"]["count"] for e in out] == [str(i) for i in range(1, 10)]
    assert [e["headers"]["v"] for e in out] == ["v1"] * 5 + ["v2"] * 4


def test_status_shows_rules_versions_and_last_error(sluice, tmp_path):
    eng, rules, addr = start(sluice, tmp_path, {"10_a.lua": stamp_rule("a")})
    st = json.loads(run_sluice("status", "-c", str(eng.config)).stdout)
    assert st["version"] == 1
    assert st["last_reload"]["result"] == "ok"
    (rule,) = st["rules"]
    assert rule["file"] == "../rules/10_a.lua" or rule["file"].endswith("rules/10_a.lua")
    assert len(rule["hash"]) == 64 and rule["version"] == 1
    assert rule["loaded_at"].endswith("Z")
    write_atomic(rules / "10_a.lua", "return {")
    wait_reloads(eng, 1)
    st = json.loads(run_sluice("status", "-c", str(eng.config)).stdout)
    assert st["version"] == 1
    assert st["last_reload"]["result"] == "failed"
    assert "10_a.lua:" in st["last_reload"]["error"]
    assert st["reloads"] == {"ok": 0, "failed": 1}
    write_atomic(rules / "10_a.lua", stamp_rule("b"))
    wait_reloads(eng, 2)
    st = json.loads(run_sluice("status", "-c", str(eng.config)).stdout)
    assert st["version"] == 2 and st["rules"][0]["version"] == 2
    assert st["last_reload"]["error"] is None


def test_watch_off_ignores_edits_but_cli_reload_applies(sluice, tmp_path):
    eng, rules, addr = start(sluice, tmp_path, {"10_a.lua": stamp_rule("a")},
                             watch=False)
    write_atomic(rules / "10_a.lua", stamp_rule("b"))
    time.sleep(0.4)
    assert reload_lines(eng) == []
    r = run_sluice("reload", "-c", str(eng.config))
    assert r.returncode == 0, r.stderr
    lines = wait_reloads(eng, 1)
    assert lines[-1]["msg"] == "rules reloaded"
    assert lines[-1]["trigger"] == "SIGHUP"
    assert lines[-1]["files_changed"] == "~10_a.lua"


def test_old_version_timers_stop_new_version_timers_start(sluice, tmp_path):
    ticking = """
local n = 0
return {
  on_event = function(ev) return "out" end,
  on_start = function()
    sluice.every(20, function()
      n = n + 1
      sluice.emit("tick", { topic = "tick", payload = { v = "%s", n = n } })
    end)
  end,
}
"""
    eng, rules, addr = start(sluice, tmp_path, {"10_tick.lua": ticking % "v1"})
    ticks = lambda v: [e for e in read_ndjson(eng.path("tick.ndjson"))
                       if e["payload"]["v"] == v]
    wait_for(lambda: len(ticks("v1")) >= 3, what="v1 ticks")
    write_atomic(rules / "10_tick.lua", ticking % "v2")
    wait_reloads(eng, 1)
    wait_for(lambda: len(ticks("v2")) >= 3, what="v2 ticks")
    before = len(ticks("v1"))
    time.sleep(0.2)
    assert len(ticks("v1")) == before
    assert eng.stop() == 0


def test_reload_latency_from_write_to_live_is_short(sluice, tmp_path):
    eng, rules, addr = start(sluice, tmp_path, {"10_a.lua": stamp_rule("a")})
    s = connect(addr)
    t0 = time.monotonic()
    write_atomic(rules / "10_a.lua", stamp_rule("b"))
    # poll: send one event at a time until one comes out stamped "b"
    seen_b = None
    i = 0
    while seen_b is None and time.monotonic() - t0 < 5:
        s.sendall(pack({"topic": "t", "payload": i}))
        i += 1
        time.sleep(0.005)
        for e in read_ndjson(eng.path("out.ndjson")):
            if e["headers"]["v"] == "b":
                seen_b = time.monotonic() - t0
                break
    s.close()
    assert seen_b is not None
    # the aim is < 200 ms (debounce 30 ms + load); the machine is shared
    # (an ASan run under load is several times slower), so the test allows
    # slack and the soak reports the real figure
    assert seen_b < 2.0, seen_b


# ---- issue 9: reloads are side-effect free until they commit --------------

STARTING = """
return {
  topics = { "t" },
  on_start = function()
    sluice.emit("tick", { topic = "started", payload = { v = "%s" } })
    sluice.log("info", "on_start ran", { v = "%s" })
  end,
  on_event = function(ev) ev.headers.v = "%s" return "out" end,
}
"""


def starting(v):
    return STARTING % (v, v, v)


def test_rejected_reload_delivers_nothing_its_on_start_emitted(sluice, tmp_path):
    eng, rules, addr = start(sluice, tmp_path, {"10_a.lua": starting("v1")})
    ticks = lambda: [e["payload"]["v"] for e in read_ndjson(eng.path("tick.ndjson"))]
    wait_for(lambda: ticks() == ["v1"], what="v1's on_start emit")
    write_atomic(rules / "20_b.lua", "return {")  # broken: every reload fails
    wait_reloads(eng, 1)
    write_atomic(rules / "10_a.lua", starting("v2"))
    lines = wait_reloads(eng, 2)
    assert lines[-1]["msg"].startswith("rules reload rejected"), lines[-1]
    time.sleep(0.2)
    assert ticks() == ["v1"]  # v2 never went live: nothing of it delivered
    assert lines[-1]["discarded_emits"] == 1 and lines[-1]["discarded_logs"] == 1
    assert [l["fields"]["v"] for l in eng.find_logs("on_start ran")] == ["v1"]
    write_atomic(rules / "20_b.lua", "return { on_event = function() end }")
    lines = wait_reloads(eng, 3)
    assert lines[-1]["msg"] == "rules reloaded", lines[-1]
    wait_for(lambda: ticks() == ["v1", "v2"], what="v2's on_start emit on commit")
    from conftest import send_events
    send_events(addr, [{"topic": "t", "payload": 1}])
    assert eng.stop() == 0
    assert [e["headers"]["v"] for e in read_ndjson(eng.path("out.ndjson"))] == ["v2"]


def test_unchanged_rules_are_not_run_again_on_reload(sluice, tmp_path):
    eng, rules, addr = start(sluice, tmp_path, {"10_a.lua": starting("v1"),
                                                "20_b.lua": stamp_rule("b1")})
    ticks = lambda: read_ndjson(eng.path("tick.ndjson"))
    wait_for(lambda: len(ticks()) == 1, what="v1's on_start emit")
    # the same bytes written again: the watcher fires, nothing changed
    write_atomic(rules / "10_a.lua", starting("v1"))
    time.sleep(0.3)
    eng.signal(signal.SIGHUP)  # forced: a new version, but 10_a is not rerun
    lines = wait_reloads(eng, 1)
    assert lines[-1]["msg"] == "rules reloaded" and lines[-1]["files_changed"] == ""
    # another file changes: 10_a is still not run again
    write_atomic(rules / "20_b.lua", stamp_rule("b2"))
    lines = wait_reloads(eng, 2)
    assert lines[-1]["files_changed"] == "~20_b.lua", lines[-1]
    time.sleep(0.2)
    assert len(ticks()) == 1
    assert len(eng.find_logs("on_start ran")) == 1
    assert eng.stop() == 0


SNAPSHOTTING = """
local count = 0
return {
  on_event = function(ev)
    count = count + 1
    ev.headers.count = tostring(count)
    ev.headers.v = "%s"
    return "out"
  end,
  %s
}
"""


def test_failing_snapshot_blocks_no_reload_and_the_fixed_version_loads(sluice, tmp_path):
    broken = "snapshot = function() error('snapshot is broken') end,\n" \
             "  restore = function(s) count = s.count end,"
    eng, rules, addr = start(sluice, tmp_path, {
        "10_count.lua": SNAPSHOTTING % ("v1", broken),
        "20_other.lua": stamp_rule("o1")})
    from conftest import send_events
    send_events(addr, [{"topic": "t", "payload": i} for i in range(3)])
    # an unrelated rule reloads although 10_count's snapshot fails
    write_atomic(rules / "20_other.lua", stamp_rule("o2"))
    lines = wait_reloads(eng, 1)
    assert lines[-1]["msg"] == "rules reloaded", lines[-1]
    # a new version of the failing rule loads; it starts without the state
    write_atomic(rules / "10_count.lua", SNAPSHOTTING % ("v2", broken))
    lines = wait_reloads(eng, 2)
    assert lines[-1]["msg"] == "rules reloaded", lines[-1]
    assert lines[-1]["state_dropped"] == "10_count.lua"
    warn = eng.wait_log("rule snapshot failed; its new version starts without the old state")
    assert "snapshot is broken" in warn["error"]
    send_events(addr, [{"topic": "t", "payload": 3}])
    # the fixed version without restore loads too
    write_atomic(rules / "10_count.lua", SNAPSHOTTING % ("v3", ""))
    lines = wait_reloads(eng, 3)
    assert lines[-1]["msg"] == "rules reloaded", lines[-1]
    assert lines[-1]["state_dropped"] == ""
    send_events(addr, [{"topic": "t", "payload": 4}])
    assert eng.stop() == 0
    out = read_ndjson(eng.path("out.ndjson"))
    assert [(e["headers"]["v"], e["headers"]["count"]) for e in out] == \
        [("v1", "1"), ("v1", "2"), ("v1", "3"), ("v2", "1"), ("v3", "1")]


def test_a_module_edit_reloads_the_rule_that_requires_it(sluice, tmp_path):
    # unchanged rule files are not run again on reload, but a rule whose
    # lib/ module changed is a changed rule
    user = """
local m = require("stamp")
return { on_event = function(ev) ev.headers.v = m.v return "out" end }
"""
    rules = tmp_path / "rules"
    (rules / "lib").mkdir(parents=True)
    (rules / "lib" / "stamp.lua").write_text("return { v = 'm1' }")
    (rules / "10_user.lua").write_text(user)
    port = free_port()
    eng = sluice(config(port, rules=str(rules)))
    addr = "127.0.0.1:%d" % port
    from conftest import send_events
    send_events(addr, [{"topic": "t", "payload": 1}])
    write_atomic(rules / "lib" / "stamp.lua", "return { v = 'm2' }")
    lines = wait_reloads(eng, 1)
    assert lines[-1]["msg"] == "rules reloaded", lines[-1]
    assert lines[-1]["files_changed"] == "~10_user.lua", lines[-1]
    send_events(addr, [{"topic": "t", "payload": 2}])
    assert eng.stop() == 0
    assert [e["headers"]["v"] for e in read_ndjson(eng.path("out.ndjson"))] == ["m1", "m2"]


def _cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_what_a_loading_version_emits_is_held_within_a_bound(sluice, tmp_path):
    """The emits a loading version makes are held until it commits, at most
    10000, and holding them costs CPU in proportion to them. The held array
    once grew by one entry a realloc: quadratic copying, 2-5 s of a reload
    under ASan (whose realloc always moves), which timed this test out. Now
    ~0.05 s there, ~0.015 s without ASan; the bound is 20 times that."""
    flood = """
return {
  on_start = function()
    for i = 1, 12000 do sluice.emit("tick", { topic = "flood", payload = i }) end
  end,
  on_event = function(ev) return "out" end,
}
"""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10_a.lua").write_text(stamp_rule("a"))
    port = free_port()
    eng = sluice(config(port, rules=str(rules)).replace(
        "debounce_ms = 30", "debounce_ms = 30, cpu_budget_ms = 30000"))
    cpu0 = _cpu_seconds(eng.pid)
    write_atomic(rules / "10_a.lua", flood)
    lines = wait_reloads(eng, 1, timeout=120)
    cpu = _cpu_seconds(eng.pid) - cpu0
    assert lines[-1]["msg"] == "rules reloaded", lines[-1]
    assert cpu < 1.0, "a reload holding 10000 emits took %.2f s of CPU" % cpu
    warn = eng.wait_log("rules: emits and logs of on_start over the limit were dropped")
    assert warn["dropped"] == 2000 and warn["limit"] == 10000
    from conftest import wait_lines
    wait_lines(eng.path("tick.ndjson"), 10000, timeout=60)
    assert eng.stop() == 0
    assert [e["payload"] for e in read_ndjson(eng.path("tick.ndjson"))] == list(range(1, 10001))


def test_a_rebuilt_state_runs_the_vetted_source_not_an_unreloaded_edit(sluice, tmp_path):
    filling = """
local keep = {}
return {
  on_event = function(ev)
    if ev.topic == "fill" then
      while true do keep[#keep + 1] = ("x"):rep(4096) .. #keep end
    end
    ev.headers.v = "%s"
    return "out"
  end,
}
"""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10_fill.lua").write_text(filling % "vetted")
    port = free_port()
    eng = sluice(config(port, rules=str(rules), watch=False).replace(
        "debounce_ms = 30", "debounce_ms = 30, memory_mb = 8, cpu_budget_ms = 2000"))
    addr = "127.0.0.1:%d" % port
    write_atomic(rules / "10_fill.lua", filling % "EDITED")  # never reloaded
    from conftest import send_events
    send_events(addr, [{"topic": "fill"}, {"topic": "t"}])
    assert eng.stop() == 0
    assert [e["headers"]["v"] for e in read_ndjson(eng.path("out.ndjson"))] == ["vetted"]
    dead = read_ndjson(eng.path("var/dead-letter.ndjson"))
    assert [e["topic"] for e in dead] == ["fill"]
    assert "not enough memory" in dead[0]["headers"]["sluice-error"]
    assert reload_lines(eng) == []
