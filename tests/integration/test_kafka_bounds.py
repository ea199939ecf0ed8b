"""The kafka input's tracking of messages past a partition's commit point is
bounded (max_uncommitted): an output that holds events, or a failed message
that holds the commit point for good, pauses the partition instead of
growing memory by one entry per message; it resumes (or, behind a failed
message, reads again from it) with nothing lost.
Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_kafka_bounds.py
"""
import time
from collections import Counter

from conftest import Sink, free_port, wait_for
from helpers_kafka import metric, produce
from test_durability import mount_tmpfs, umount
from test_kafka import committed, config, mocks, scrape  # noqa: F401 (fixture)


PAUSED = ("kafka partition paused: max_uncommitted messages past its commit "
          "point (a failed or slow one holds it)")


def kafka_to_tcp(bootstrap, admin, sink_port, cap, **out):
    output = {"name": "out", "type": "tcp", "address": "127.0.0.1:%d" % sink_port,
              "retry": {"initial_ms": 20, "max_ms": 100},
              "queue": {"max_events": 100000}}
    output.update(out)
    cfg = config(bootstrap, admin=admin, input={"max_uncommitted": cap},
                 outputs=[output], routes=[{"topics": "*", "to": "out"}],
                 shutdown_timeout=2)
    return cfg


def ns_of(events):
    return Counter(e["payload"]["n"] for e in events)


def test_a_stalled_output_pauses_the_partition_at_max_uncommitted_then_all_flows(
        sluice, mocks):
    m = mocks("in:1")
    admin = "127.0.0.1:%d" % free_port()
    down = free_port()
    n = 300
    produce(m.bootstrap, "in", ['k:{"n":%d}' % i for i in range(n)])
    eng = sluice(kafka_to_tcp(m.bootstrap, admin, down, 20))
    wait_for(lambda: metric(scrape(admin), "sluice_kafka_partition_pauses_total") >= 1,
             timeout=20, what="the partition paused")
    line = eng.wait_log(PAUSED)
    assert line["max_uncommitted"] == 20 and line["offset"] == 20, line
    # held there: no more than the bound in flight, however long we wait
    for _ in range(10):
        assert metric(scrape(admin), "sluice_kafka_input_in_flight") <= 20
        time.sleep(0.1)
    with Sink(port=down) as sink:
        got = sink.wait(n, timeout=30)
        wait_for(lambda: set(ns_of(sink.events)) == set(range(n)), timeout=30,
                 what="every message at the sink")
        wait_for(lambda: committed(admin) == n, timeout=20,
                 what="the offset committed to the end")
    assert ns_of(got)[0] == 1  # the first ones were never read twice


def test_a_failed_message_rewinds_its_paused_partition_and_nothing_is_lost(
        sluice, mocks, tmp_path):
    """A disk buffer that refuses (full disk, drop policy) fails messages:
    each would hold the partition's commit point for good and the entries
    behind it would grow without bound. At max_uncommitted the partition
    pauses and is read again from the failed message; once the disk has
    room every message arrives."""
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "1m")
    try:
        m = mocks("in:1")
        admin = "127.0.0.1:%d" % free_port()
        down = free_port()
        n = 2000  # ~2 MB: twice what the disk holds
        big = "x" * 1000
        produce(m.bootstrap, "in", ['k:{"n":%d,"pad":"%s"}' % (i, big)
                                    for i in range(n)])
        eng = sluice(kafka_to_tcp(
            m.bootstrap, admin, down, 50,
            queue={"max_events": 20, "when_full": "drop_newest"},
            buffer={"type": "disk", "path": str(disk / "buf"), "fsync": "never"}))
        eng.wait_log("disk buffer cannot write; event refused", timeout=30)
        wait_for(lambda: metric(scrape(admin),
                                "sluice_kafka_partition_rewinds_total") >= 1,
                 timeout=20, what="the partition read again from the failed one")
        with Sink(port=down) as sink:
            wait_for(lambda: set(ns_of(sink.events)) == set(range(n)), timeout=60,
                     interval=0.2, what="every message at the sink")
            wait_for(lambda: committed(admin) == n, timeout=30,
                     what="the offset committed to the end")
        eng.stop()
    finally:
        umount(disk)
