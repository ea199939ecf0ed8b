"""workers = N, rule state per worker (README, Workers): a key's events are
decided by the worker that owns its bucket, so per-key state (sluice.seen,
a per-key rate_limit) holds over workers while the buckets stay where they
are (the balance off: SLUICE_WORKERS_BALANCE_MS=0; a bucket it moves takes
none of that state along, which the README says); a sluice.counter is one
series summed over the workers; on_start runs in each worker; a worker
held by a full output holds what it decides of other connections too."""
import json

from conftest import metrics_flat, read_ndjson, wait_for, wait_lines
from test_workers import send, start

DEDUP = """
return {
  on_event = function(ev)
    if sluice.seen(ev.key, 600000) then return sluice.drop("repeat") end
    return "out"
  end,
}
"""


def keyed(n, rnd):
    return [{"topic": "t", "key": "k%d" % i, "payload": {"round": rnd}}
            for i in range(n)]


def decided(admin, i):
    return metrics_flat(admin)['sluice_worker_events_total{worker="%d"}' % i]


def test_per_key_dedup_holds_over_two_workers_while_the_buckets_stay(sluice, tmp_path):
    eng, _, addr, admin = start(sluice, tmp_path, {"10_d.lua": DEDUP}, 2,
                                {"SLUICE_WORKERS_BALANCE_MS": "0"})
    send(addr, keyed(500, 1))
    wait_lines(eng.path("out.ndjson"), 500, timeout=20)
    send(addr, keyed(500, 2))
    wait_for(lambda: decided(admin, 0) + decided(admin, 1) == 1000, timeout=20,
             what="both rounds decided")
    assert decided(admin, 0) > 0 and decided(admin, 1) > 0  # both workers took keys
    assert eng.stop() == 0
    got = read_ndjson(eng.path("out.ndjson"))
    assert len(got) == 500 and {e["payload"]["round"] for e in got} == {1}


CHURN = {"SLUICE_WORKERS_CHURN": "1", "SLUICE_WORKERS_BALANCE_MS": "2"}


def test_workers_balance_false_keeps_every_bucket_and_its_state(sluice, tmp_path):
    """workers_balance = false: no bucket ever moves, so per-key state
    holds for the whole run, even with the test hook that otherwise moves
    every bucket every 2 ms (and does: the same run without the key)."""
    eng, _, addr, admin = start(sluice, tmp_path, {"10_d.lua": DEDUP}, 2,
                                CHURN, extra="workers_balance = false,")
    send(addr, keyed(500, 1))
    wait_lines(eng.path("out.ndjson"), 500, timeout=20)
    send(addr, keyed(500, 2))
    wait_for(lambda: decided(admin, 0) + decided(admin, 1) == 1000, timeout=20,
             what="both rounds decided")
    m = metrics_flat(admin)
    assert m["sluice_worker_bucket_moves_total"] == 0
    assert m['sluice_worker_buckets{worker="0"}'] == 128
    assert eng.stop() == 0
    got = read_ndjson(eng.path("out.ndjson"))
    assert len(got) == 500 and {e["payload"]["round"] for e in got} == {1}

    moving = tmp_path / "moving"
    moving.mkdir()
    eng, _, addr, admin = start(sluice, moving, {"10_d.lua": DEDUP}, 2, CHURN)
    send(addr, keyed(500, 1))
    wait_for(lambda: metrics_flat(admin)["sluice_worker_bucket_moves_total"] > 0,
             timeout=20, what="the hook moving buckets")


COUNTING = """
return {
  on_event = function(ev)
    sluice.counter("seen", { k = "v" }):inc()
    if ev.payload.round == 2 then return sluice.drop("second") end
    return "out"
  end,
}
"""


def test_metrics_sum_over_workers_one_series_per_counter(sluice, tmp_path):
    """README, Workers: each sluice.counter series is one series, the sum
    over the workers; so are drops and rule calls."""
    eng, _, addr, admin = start(sluice, tmp_path, {"10_c.lua": COUNTING}, 2)
    send(addr, keyed(600, 1) + keyed(400, 2))
    wait_for(lambda: decided(admin, 0) + decided(admin, 1) == 1000, timeout=20,
             what="1000 decided")
    assert decided(admin, 0) > 0 and decided(admin, 1) > 0
    m = metrics_flat(admin)
    series = {k: v for k, v in m.items() if k.startswith("sluice_rule_value_total")}
    assert list(series.values()) == [1000], series
    assert 'name="seen"' in list(series)[0] and 'k="v"' in list(series)[0]
    assert m['sluice_events_dropped_total{reason="rule"}'] == 400
    assert sum(v for k, v in m.items() if k.startswith("sluice_rule_calls_total")) == 1000
    assert eng.stop() == 0


STARTING = """
return {
  on_start = function()
    sluice.emit("tick", { topic = "started", payload = { n = 1 } })
  end,
  on_event = function(ev) return "out" end,
}
"""


def test_on_start_runs_in_each_worker_and_its_emits_all_arrive(sluice, tmp_path):
    eng, _, addr, admin = start(sluice, tmp_path, {"10_s.lua": STARTING}, 3)
    got = wait_lines(eng.path("tick.ndjson"), 3, timeout=10)
    assert [json.loads(l)["topic"] for l in got] == ["started"] * 3
    assert eng.stop() == 0
    assert len(read_ndjson(eng.path("tick.ndjson"))) == 3


def test_a_held_worker_holds_other_connections_events_it_decides_and_loses_none(
        sluice, tmp_path):
    """README, Workers (Hand-off): backpressure is per worker. A's events
    (worker 1's keys) go to `fast` and to `slow`, whose peer is down and
    queue small; worker 1's result for slow waits, and holds its later
    results. B's events of worker 0's keys flow to `fast` meanwhile; B's
    events of worker 1's keys wait, and arrive once slow has room."""
    from conftest import Sink, connect, free_port, pack
    from test_workers import worker_keys
    peer = free_port()
    outputs = """
    { name = "fast", type = "file", path = "fast.ndjson" },
    { name = "slow", type = "tcp", address = "127.0.0.1:%d",
      queue = { max_events = 5 }, retry = { initial_ms = 20, max_ms = 100 } },""" % peer
    routes = """routes = { { topics = "both", to = { "fast", "slow" } },
                           { topics = "ok", to = "fast" } },"""
    eng, _, addr, admin = start(sluice, tmp_path, {}, 2,
                                {"SLUICE_WORKERS_BALANCE_MS": "0"},
                                outputs=outputs, extra=routes)
    eng.wait_log("output peer unreachable; reconnecting with backoff")
    w1 = worker_keys(1, 2, prefix="one")
    w0 = worker_keys(0, 2, prefix="zero")
    a = connect(addr)
    a.sendall(b"".join(pack({"topic": "both", "key": w1[0], "payload": i})
                       for i in range(20)))
    wait_for(lambda: metrics_flat(admin)['sluice_worker_held{worker="1"}'] == 1,
             what="worker 1 held by slow")
    b = connect(addr)
    b.sendall(b"".join(pack({"topic": "ok", "key": k, "payload": k})
                       for k in (w0[0], w1[1], w0[1])))
    fast = lambda: [e["payload"] for e in read_ndjson(eng.path("fast.ndjson"))
                    if e["topic"] == "ok"]
    wait_for(lambda: sorted(fast()) == sorted(w0), what="B's worker-0 events")
    # still held: B's worker-1 event sits behind the held result
    assert metrics_flat(admin)['sluice_worker_held{worker="1"}'] == 1
    assert w1[1] not in fast()
    with Sink(port=peer) as sink:
        sink.wait(20)
        wait_for(lambda: sorted(fast()) == sorted(w0 + [w1[1]]),
                 what="B's worker-1 event once slow has room")
        a.close()
        b.close()
        assert eng.stop() == 0
    assert [e["payload"] for e in sink.events] == list(range(20))
