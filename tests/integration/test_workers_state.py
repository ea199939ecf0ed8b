"""workers = N, rule state per worker (README, Workers): a key's events are
decided by the worker that owns its bucket, so per-key state (sluice.seen,
a per-key rate_limit) holds over workers while the buckets stay where they
are (the balance off: SLUICE_WORKERS_BALANCE_MS=0; a bucket it moves takes
none of that state along, which the README says); a sluice.counter is one
series summed over the workers; on_start runs in each worker."""
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
