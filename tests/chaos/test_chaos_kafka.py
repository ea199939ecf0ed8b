"""Scale-out (issue 12, item 4) with three sluice instances in one Kafka
consumer group on the mock cluster: the partitions are split three ways,
every event goes through exactly once while the group is stable; one
instance is killed with SIGKILL mid-stream, the other two take over its
partitions, nothing is lost, and the duplicates (the killed instance's
in-flight window) are counted and printed; then it comes back mid-stream
and the rebalance on its join loses nothing either. Run with the eager
(range) and the cooperative-sticky assignor (incremental assign/unassign). The two-instance version runs
in make test (tests/integration/test_kafka.py).

Run: make chaos   (or SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q -s tests/chaos/test_chaos_kafka.py)
"""
import time
from collections import Counter

import pytest

from conftest import wait_for
from helpers_kafka import (Mock, consume, consume_json, produce,
                           wait_all, wait_consumed)

FAST_FAILOVER = "session.timeout.ms=3000,heartbeat.interval.ms=300"


def owned(eng):
    """The partitions eng owns now, from its assign/revoke log lines."""
    have = set()
    for l in eng.logs():
        parts = set(filter(None, l.get("partitions", "").split(",")))
        if l.get("msg") == "kafka partitions assigned":
            have |= parts
        elif l.get("msg") == "kafka partitions revoked":
            have -= parts
    return have


_seen = {}


def quiet(engines, seconds=3):
    n = sum(len([l for l in e.logs() if l.get("msg", "").startswith(
        "kafka partitions")]) for e in engines)
    now = time.monotonic()
    if _seen.get("n") != n:
        _seen.update(n=n, since=now)
    return now - _seen["since"] >= seconds


@pytest.mark.parametrize("assignor", ["range", "cooperative-sticky"])
def test_three_instances_each_event_once_then_survive_a_kill9(sluice,
                                                             tmp_path,
                                                             assignor):
    m = Mock(tmp_path, ["in:9", "out:9"])
    try:
        cfg = {
            "inputs": [{"name": "kin", "type": "kafka",
                        "brokers": m.bootstrap, "group": "scale",
                        "topics": "in", "start": "earliest",
                        "commit_interval_ms": 200,
                        "options": FAST_FAILOVER +
                        ",partition.assignment.strategy=" + assignor}],
            "outputs": [{"name": "kout", "type": "kafka",
                         "brokers": m.bootstrap, "topic": "out",
                         "format": "json",
                         "rate_limit": {"events_per_second": 500,
                                        "burst": 50},
                         # what is in flight (and so may be read twice
                         # after a kill or a rebalance) is bounded by this
                         "queue": {"max_events": 200}}],
            "routes": [{"topics": "*", "to": "kout"}]}
        engines = [sluice(cfg, name="s%d" % i) for i in range(3)]

        def settled():
            sets = [owned(e) for e in engines]
            return all(sets) and sum(len(x) for x in sets) == 9 and \
                len(set().union(*sets)) == 9
        wait_for(settled, timeout=60, interval=0.2,
                 what="9 partitions split over 3 instances")
        # the cooperative assignor settles in several rounds: wait until no
        # instance logged an assign or revoke for 3 s
        wait_for(lambda: quiet(engines), timeout=60, interval=0.5,
                 what="the group stable for 3 s")
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
        wait_for(lambda: len(owned(engines[1]) | owned(engines[2])) == 9,
                 timeout=60, interval=0.2, what="the survivors own all 9")
        wait_all(m.bootstrap, "out", range(total), timeout=180)
        time.sleep(2)  # repeats still on their way
        got = Counter(e["payload"]["n"] for e in consume_json(m.bootstrap, "out"))
        dups = sum(c - 1 for c in got.values())
        print("kill -9 of 1 of 3 after %d of %d out: %d duplicates "
              "(its in-flight window)" % (at_kill, total, dups))
        assert dups <= 1500

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
        wait_all(m.bootstrap, "out", range(final), timeout=180)
        time.sleep(2)
        got = Counter(e["payload"]["n"] for e in consume_json(m.bootstrap, "out"))
        join_dups = sum(c - 1 for c in got.values()) - dups
        print("an instance joining mid-stream: %d more duplicates" % join_dups)
        # in flight (3 queues of 200) plus what was done but whose commit
        # the mock's coordinator refused while the group rebalanced
        # ("rebalance in progress"; a real broker takes commits of the
        # current generation until the join completes)
        if assignor == "range":
            assert join_dups <= 4000
        # cooperative-sticky: more rounds, more refused commits; the mock
        # gave thousands of repeats here (never a loss). Printed, not bound.
    finally:
        m.stop()
