"""rules.jit = true with workers > 1 through the real binary (issue 14 items
3 and 4): every worker runs its rules compiled and the CPU budget still
stops a runaway compiled loop on each of them, also when they overrun at
the same moment (LuaJIT has one profiler per process: the second waits for
the first to be stopped). The engine never hangs, the runaways go to the
dead letter with the budget's error, every other event arrives in per-key
order, a reload swaps both workers' compiled rules, and SIGTERM drains.
The bound on each overrun is measured per call by tests/c/test_sandbox.c
(two threads at once) and tests/lua/sandbox_jit_spec.lua."""
import signal
import socket

from conftest import (connect, free_port, metrics_flat, pack, read_ndjson,
                      wait_for, wait_lines)
from test_workers import PINNED, check_per_key, worker_keys

RULE = """
local version = "%s"
return {
  on_event = function(ev)
    local t = ev.topic
    if t == "spin" then while true do end end
    if t == "spinfor" then
      local x = 0 for i = 1, 1e15 do x = x + i %% 7 end return tostring(x)
    end
    local x = 0 -- warm: a loop the JIT compiles
    for i = 1, 200 do x = x + i %% 7 end
    ev.headers.x = tostring(x)
    ev.headers.v = version
    return "out"
  end,
}
"""


def start(sluice, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10_jit.lua").write_text(RULE % "a")
    port, admin = free_port(), free_port()
    eng = sluice("""return {
  workers = 2,
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "out", type = "file", path = "out.ndjson" },
              { name = "dead", type = "file", path = "dead.ndjson" } },
  dead_letter = "dead",
  rules = { dir = "%s", watch = false, jit = true, cpu_budget_ms = 10 },
  admin = { listen = "127.0.0.1:%d" },
  shutdown_timeout = 30,
}""" % (port, rules, admin), env=PINNED)
    return eng, rules, "127.0.0.1:%d" % port, admin


def send_rest(s, evs):
    """Send evs on s, end its write side and read until the engine closes."""
    s.sendall(b"".join(pack(e) for e in evs))
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    s.close()


def send(addr, evs):
    s = connect(addr)
    s.settimeout(300)  # each runaway takes its budget and more
    send_rest(s, evs)


def batch(keys, start, n, spins_every=0):
    """n warm events over keys in turn, seq from start; with spins_every, a
    runaway on each worker's first key after every spins_every events (the
    two workers decide theirs at about the same moment)."""
    evs, spins = [], 0
    for i in range(n):
        evs.append({"topic": "t", "key": keys[i % len(keys)],
                    "payload": {"seq": start + i}})
        if spins_every and i % spins_every == spins_every - 1:
            kind = "spin" if spins % 2 == 0 else "spinfor"
            for w in (0, 1):
                evs.append({"topic": kind, "key": WKEYS[w][0],
                            "payload": {"spin": spins, "worker": w}})
            spins += 1
    return evs, spins * 2


WKEYS = [worker_keys(0, 8), worker_keys(1, 8)]
KEYS = [k for pair in zip(*WKEYS) for k in pair]


def rule_metric(m, name, **labels):
    return sum(v for k, v in m.items() if k.startswith(name + "{") and
               all('%s="%s"' % kv in k for kv in labels.items()))


def test_jit_on_two_workers_stops_runaways_on_both_at_once_and_loses_nothing(
        sluice, tmp_path):
    eng, rules, addr, admin = start(sluice, tmp_path)
    assert eng.wait_log("workers started")["workers"] == 2
    # warm up both workers' compiled code, then runaways on both workers
    # at once, again and again (each overrun flushes that state's traces,
    # which the warm events between compile anew)
    warm, _ = batch(KEYS, 0, 2000)
    send(addr, warm)
    evs, nspins = batch(KEYS, 2000, 3000, spins_every=150)
    send(addr, evs)
    total = 5000
    wait_lines(eng.path("out.ndjson"), total, timeout=60)
    dead = wait_for(lambda: (lambda d: d if len(d) == nspins else None)(
        read_ndjson(eng.path("dead.ndjson"))), timeout=60,
        what="every runaway in the dead letter")
    out = read_ndjson(eng.path("out.ndjson"))
    check_per_key(out, total)
    assert all(e["headers"]["x"] == "598" and e["headers"]["v"] == "a"
               for e in out)
    for e in dead:
        assert e["headers"]["sluice-error"].endswith(
            "cpu budget of 10 ms exceeded"), e["headers"]
    by_worker = sorted((e["payload"]["worker"], e["payload"]["spin"])
                       for e in dead)
    assert by_worker == sorted((w, s) for w in (0, 1)
                               for s in range(nspins // 2))
    m = metrics_flat(admin)
    assert rule_metric(m, "sluice_rule_errors_total", kind="cpu") == nspins
    per = [m['sluice_worker_events_total{worker="%d"}' % i] for i in (0, 1)]
    assert sum(per) == total + nspins and all(p > nspins // 2 for p in per)

    # a reload swaps both workers' compiled rules together
    (rules / "10_jit.lua").write_text(RULE % "b")
    eng.signal(signal.SIGHUP)
    eng.wait_log("rules reloaded")
    evs, more = batch(KEYS, total, 1000, spins_every=500)
    send(addr, evs)
    wait_lines(eng.path("out.ndjson"), total + 1000, timeout=60)
    out = read_ndjson(eng.path("out.ndjson"))
    check_per_key(out, total + 1000)
    assert [e["headers"]["v"] for e in out[total:]] == ["b"] * 1000
    wait_for(lambda: len(read_ndjson(eng.path("dead.ndjson"))) ==
             nspins + more, timeout=60, what="the new version's runaways")

    # SIGTERM with runaways still coming: drained, nothing lost
    evs, last = batch(KEYS, total + 1000, 500, spins_every=100)
    send(addr, evs)
    assert eng.stop(timeout=60) == 0
    check_per_key(read_ndjson(eng.path("out.ndjson")), total + 1500)
    assert len(read_ndjson(eng.path("dead.ndjson"))) == nspins + more + last
