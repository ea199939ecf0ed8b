"""Scale-out (issue 12, item 4) with three sluice instances in one Kafka
consumer group on the mock cluster: the partitions are split three ways,
every event goes through exactly once while the group is stable; one
instance is killed with SIGKILL mid-stream, the other two take over its
partitions, nothing is lost, and the duplicates (the killed instance's
in-flight window) are counted and printed; then it comes back mid-stream
and the rebalance on its join loses nothing either. The two-instance version runs
in make test (tests/integration/test_kafka.py).

Run: make chaos   (or SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q -s tests/chaos/test_chaos_kafka.py)
"""
import time
from collections import Counter

from conftest import wait_for
from helpers_kafka import Mock, consume, consume_json, produce, wait_consumed

FAST_FAILOVER = "session.timeout.ms=3000,heartbeat.interval.ms=300"


def assigned(eng):
    return [l for l in eng.logs() if l.get("msg") == "kafka partitions assigned"]


def test_three_instances_each_event_once_then_survive_a_kill9(sluice,
                                                             tmp_path):
    m = Mock(tmp_path, ["in:9", "out:9"])
    try:
        cfg = {
            "inputs": [{"name": "kin", "type": "kafka",
                        "brokers": m.bootstrap, "group": "scale",
                        "topics": "in", "start": "earliest",
                        "commit_interval_ms": 200, "options": FAST_FAILOVER}],
            "outputs": [{"name": "kout", "type": "kafka",
                         "brokers": m.bootstrap, "topic": "out",
                         "format": "json",
                         "rate_limit": {"events_per_second": 500,
                                        "burst": 50}}],
            "routes": [{"topics": "*", "to": "kout"}]}
        engines = [sluice(cfg, name="s%d" % i) for i in range(3)]

        def settled():
            last = [assigned(e) for e in engines]
            return all(last) and sum(l[-1]["count"] for l in last) == 9
        wait_for(settled, timeout=60, interval=0.2,
                 what="9 partitions split over 3 instances")
        n = 3000
        produce(m.bootstrap, "in", ['k%d:{"n":%d}' % (i, i) for i in range(n)])
        got = Counter(e["payload"]["n"]
                      for e in wait_consumed(m.bootstrap, "out", n, 120))
        assert set(got) == set(range(n))
        once = sum(c - 1 for c in got.values())
        print("\nstable group of 3: %d events, %d duplicates" % (n, once))
        assert once == 0

        total = n + 6000
        produce(m.bootstrap, "in",
                ['k%d:{"n":%d}' % (i, i) for i in range(n, total)])
        wait_for(lambda: len(consume(m.bootstrap, "out")) >= n + 1500,
                 timeout=60, interval=0.3, what="the second batch flowing")
        engines[0].kill()
        at_kill = len(consume(m.bootstrap, "out"))
        for e in engines[1:]:
            e.wait_log("kafka partitions assigned", count=2, timeout=60)
        wait_consumed(m.bootstrap, "out", total, timeout=180)
        time.sleep(2)
        got = Counter(e["payload"]["n"] for e in consume_json(m.bootstrap, "out"))
        missing = set(range(total)) - set(got)
        assert not missing, "lost %d, e.g. %s" % (len(missing), sorted(missing)[:10])
        dups = sum(c - 1 for c in got.values())
        print("kill -9 of 1 of 3 after %d of %d out: %d duplicates "
              "(its in-flight window)" % (at_kill, total, dups))
        assert dups <= 1000

        # the killed one comes back mid-stream: a rebalance on join loses
        # nothing either (the revoked partitions' done offsets are
        # committed; what was in flight is read again by the new owner)
        final = total + 6000
        produce(m.bootstrap, "in",
                ['k%d:{"n":%d}' % (i, i) for i in range(total, final)])
        wait_for(lambda: len(consume(m.bootstrap, "out")) >= total + dups + 1500,
                 timeout=60, interval=0.3, what="the third batch flowing")
        engines[0].restart()
        engines[0].wait_log("kafka partitions assigned", timeout=60)
        wait_consumed(m.bootstrap, "out", final + dups, timeout=180)
        time.sleep(2)
        got = Counter(e["payload"]["n"] for e in consume_json(m.bootstrap, "out"))
        missing = set(range(final)) - set(got)
        assert not missing, "lost %d on join" % len(missing)
        join_dups = sum(c - 1 for c in got.values()) - dups
        print("an instance joining mid-stream: %d more duplicates" % join_dups)
        assert join_dups <= 1000
    finally:
        m.stop()
