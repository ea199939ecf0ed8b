"""Kafka input and output (issue 12, item 1) against librdkafka's mock
cluster (build/tools/kafka_mock on loopback ports), with Debian's kcat as
the independent producer and consumer: a round trip through a rule with an
exact ledger, kill -9 mid-stream (nothing lost, duplicates only from the
in-flight window, counted), bad messages to the dead letter without
stalling the partition, brokers down at start and down mid-stream then
back (exact ledger, duplicates printed), and two instances in one
group sharing the partitions and taking over from a killed one (the
three-instance version is in tests/chaos/test_chaos_kafka.py).

Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_kafka.py
"""
import json
import subprocess
import time
import urllib.request
from collections import Counter

import msgpack
import pytest

from conftest import free_port, lua, run_sluice, send_events, wait_for
from helpers_kafka import (Mock, consume, consume_json, metric, produce,
                           produce_raw, wait_all, wait_consumed)

RULE = """
return {
  topics = "*",
  on_event = function(ev)
    local n = ev.payload.n
    if n % 10 == 0 then return sluice.drop("every tenth") end
    ev.headers["seen-partition"] = ev.headers["kafka-partition"]
    ev.headers["seen-offset"] = ev.headers["kafka-offset"]
    return "kout"
  end,
}
"""


# librdkafka properties: a dead member is noticed in 3 s, not 45 s
FAST_FAILOVER = "session.timeout.ms=3000,heartbeat.interval.ms=300"


@pytest.fixture
def mocks(tmp_path):
    started = []

    def start(*topics, down=False, errors=()):
        m = Mock(tmp_path, topics, down=down, errors=errors)
        started.append(m)
        return m
    yield start
    for m in started:
        m.stop()


def config(bootstrap, group="g", topics="in", admin=None, **extra):
    inp = {"name": "kin", "type": "kafka", "brokers": bootstrap,
           "group": group, "topics": topics, "start": "earliest",
           "commit_interval_ms": 200}
    inp.update(extra.pop("input", {}))
    out = {"name": "kout", "type": "kafka", "brokers": bootstrap,
           "topic": "out", "format": "json"}
    out.update(extra.pop("output", {}))
    cfg = {"inputs": [inp], "outputs": [out],
           "routes": [{"topics": "*", "to": "kout"}]}
    if admin:
        cfg["admin"] = {"listen": admin}
    cfg.update(extra)
    return cfg


def scrape(admin):
    with urllib.request.urlopen("http://%s/metrics" % admin, timeout=5) as r:
        return r.read().decode()


def committed(admin):
    return metric(scrape(admin), "sluice_kafka_committed_offset")


def test_kcat_round_trip_through_a_rule_with_exact_ledger(sluice, mocks,
                                                         tmp_path):
    m = mocks("in:3", "out:3")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "10_kafka.lua").write_text(RULE)
    admin = "127.0.0.1:%d" % free_port()
    n = 300
    produce(m.bootstrap, "in",
            ['k%d:{"n":%d}' % (i % 7, i) for i in range(n)])
    eng_cfg = config(m.bootstrap, admin=admin)
    eng_cfg["rules"] = {"dir": str(tmp_path / "rules")}
    eng = sluice(eng_cfg)
    want = {i for i in range(n) if i % 10}
    got = wait_consumed(m.bootstrap, "out", len(want))
    time.sleep(0.5)
    got = consume_json(m.bootstrap, "out")
    ns = Counter(e["payload"]["n"] for e in got)
    assert set(ns) == want and max(ns.values()) == 1, "lost or repeated"
    for e in got:
        i = e["payload"]["n"]
        assert e["key"] == "k%d" % (i % 7)  # Kafka key -> ev.key -> key
        assert e["topic"] == "in"
        assert e["headers"]["seen-partition"] == e["headers"]["kafka-partition"]
        assert int(e["headers"]["seen-offset"]) >= 0
        assert e["time"] > 1.6e18  # the Kafka timestamp, in ns
    # the key decides the partition: one key never spans two partitions
    parts = {}
    for k, p, _ in consume(m.bootstrap, "out"):
        parts.setdefault(k, set()).add(p)
    assert all(len(s) == 1 for s in parts.values())
    # every offset of the 300 (dropped ones included) is committed
    wait_for(lambda: committed(admin) == n, timeout=10,
             what="offsets committed up to the end of each partition")
    text = scrape(admin)
    assert metric(text, "sluice_kafka_rebalances_total") >= 1
    assert metric(text, "sluice_kafka_input_in_flight") == 0
    assert metric(text, "sluice_kafka_consumer_lag") == 0
    assert eng.find_logs("kafka partitions assigned")
    # every kafka metric the README names is there, with a sample
    import re
    from conftest import ROOT
    names = set(re.findall(r"sluice_kafka_[a-z_]+",
                           (ROOT / "README.md").read_text()))
    assert len(names) >= 10
    for name in names:
        assert re.search(r"^%s(\{| )" % name, text, re.M), name


def test_kafka_event_format_round_trips_the_event(sluice, mocks):
    """format event (the default): the msgpack event map goes out as the
    value and a kafka input reads the same event back, id included."""
    m = mocks("a:1", "b:1", "c:1")
    port = free_port()
    first = sluice({
        "inputs": [{"name": "app", "type": "tcp",
                    "listen": "127.0.0.1:%d" % port}],
        "outputs": [{"name": "kout", "type": "kafka",
                     "brokers": m.bootstrap, "topic": "{topic}"}],
        "routes": [{"topics": "*", "to": "kout"}]})
    send_events("127.0.0.1:%d" % port, [
        {"id": "e%d" % i, "topic": "a", "key": "x", "time": 1234,
         "headers": {"h": "v"}, "payload": {"n": i}} for i in range(5)])
    second = sluice(config(m.bootstrap, topics="a",
                           input={"format": "event"},
                           output={"topic": "c"}))
    got = wait_consumed(m.bootstrap, "c", 5)
    assert [e["id"] for e in got] == ["e%d" % i for i in range(5)]
    for e in got:
        assert e["headers"]["h"] == "v" and e["key"] == "x"
        assert e["headers"]["kafka-topic"] == "a" and e["time"] == 1234
    assert consume(m.bootstrap, "b") == []
    first.stop()
    second.stop()


def test_kill9_mid_stream_loses_nothing_and_repeats_only_in_flight(
        sluice, mocks):
    m = mocks("in:2", "out:2")
    n = 2000
    produce(m.bootstrap, "in", ['k%d:{"n":%d}' % (i, i) for i in range(n)])
    # the killed member's partitions are free once its session times out
    # a small blocking queue: the input pauses its partitions and resumes
    cfg = config(m.bootstrap, input={"options": FAST_FAILOVER},
                 output={"rate_limit": {"events_per_second": 1000,
                                        "burst": 100},
                         "queue": {"max_events": 100}})
    eng = sluice(cfg)
    wait_for(lambda: len(consume(m.bootstrap, "out")) >= 500, timeout=30,
             interval=0.2, what="500 events through before the kill")
    eng.kill()  # SIGKILL
    at_kill = len(consume(m.bootstrap, "out"))
    assert at_kill < n, "the stream was over before the kill"
    eng.restart()
    wait_all(m.bootstrap, "out", range(n), timeout=60)
    time.sleep(1)  # repeats still on their way
    got = Counter(e["payload"]["n"] for e in consume_json(m.bootstrap, "out"))
    assert set(got) == set(range(n))
    dups = sum(c - 1 for c in got.values())
    print("kill -9 after %d of %d: %d duplicates" % (at_kill, n, dups))
    # at most what was delivered and not committed: one commit interval
    # (200 ms) at 1000/s plus a batch, with slack for a loaded machine
    assert dups <= 1200


def test_bad_messages_go_to_the_dead_letter_without_stalling(sluice, mocks):
    m = mocks("in:1", "out:1")
    admin = "127.0.0.1:%d" % free_port()
    produce(m.bootstrap, "in", ['a:{"n":1}'])
    produce_raw(m.bootstrap, "in", b"not json at all", key="b")
    produce(m.bootstrap, "in", ['c:{"n":2}'])
    produce_raw(m.bootstrap, "in", b'{"big":"' + b"x" * 3000 + b'"}', key="d")
    produce_raw(m.bootstrap, "in", msgpack.packb({"topic": 5}), key="e")
    produce(m.bootstrap, "in", ['f:{"n":3}'])
    eng = sluice(config(m.bootstrap, admin=admin, max_event_bytes=2048))
    got = wait_consumed(m.bootstrap, "out", 3)
    assert [e["payload"]["n"] for e in got] == [1, 2, 3]
    dl = eng.path("var/dead-letter.ndjson")
    wait_for(lambda: dl.exists() and len(dl.read_text().splitlines()) == 3,
             timeout=10, what="three bad messages in the dead letter")
    bad = [json.loads(l) for l in dl.read_text().splitlines()]
    assert [b["key"] for b in bad] == ["b", "d", "e"]
    assert [b["headers"]["kafka-offset"] for b in bad] == ["1", "3", "4"]
    assert "neither" in bad[0]["headers"]["sluice-error"]
    assert "larger than max_event_bytes" in bad[1]["headers"]["sluice-error"]
    assert bad[0]["payload"] == {"$bin": "bm90IGpzb24gYXQgYWxs"}
    # the partition went on: every offset committed, the bad ones too
    wait_for(lambda: committed(admin) == 6, timeout=10,
             what="offset 6 committed")
    assert metric(scrape(admin), "sluice_kafka_bad_messages_total") == 3


def test_a_message_too_large_for_its_headers_reaches_the_dead_letter_cut(
        sluice, mocks, tmp_path):
    """A small value under 120 KB of headers, or with a 100 KB key, is
    over max_event_bytes (4 KiB) once they are added. Its dead letter kept
    every header and the whole key: a 120 KB event for a limit of 4 KiB.
    Now the dead letter keeps the headers that fit in 4 KiB, in order,
    and 4 KiB of the key, and the partition goes on."""
    m = mocks("in:1", "out:1")
    admin = "127.0.0.1:%d" % free_port()
    value = tmp_path / "value"
    value.write_bytes(b'{"n":1}')
    subprocess.run(["kcat", "-b", m.bootstrap, "-P", "-t", "in", "-k", "a",
                    "-H", "keep=1", "-H", "big=" + "x" * 60000,
                    "-H", "big2=" + "y" * 60000, str(value)],
                   check=True, capture_output=True, timeout=30)
    subprocess.run(["kcat", "-b", m.bootstrap, "-P", "-t", "in",
                    "-k", "k" * 100000, str(value)],
                   check=True, capture_output=True, timeout=30)
    produce(m.bootstrap, "in", ['c:{"n":2}'])
    eng = sluice(config(m.bootstrap, admin=admin, max_event_bytes=4096))
    got = wait_consumed(m.bootstrap, "out", 1)
    assert [e["payload"]["n"] for e in got] == [2]
    dl = eng.path("var/dead-letter.ndjson")
    wait_for(lambda: dl.exists() and len(dl.read_text().splitlines()) == 2,
             timeout=10, what="the dead letter")
    for line in dl.read_text().splitlines():
        assert len(line) < 4096 + 1024, len(line)
    bad, bad_key = [json.loads(l) for l in dl.read_text().splitlines()]
    assert bad["headers"]["keep"] == "1"
    assert "big" not in bad["headers"] and "big2" not in bad["headers"]
    assert bad["headers"]["kafka-offset"] == "0"
    assert "max_event_bytes" in bad["headers"]["sluice-error"]
    assert bad["payload"] == {"$bin": "eyJuIjoxfQ=="}
    assert bad_key["key"] == "k" * 4096
    assert bad_key["headers"]["kafka-offset"] == "1"
    wait_for(lambda: committed(admin) == 3, timeout=10,
             what="offset 3 committed")


def test_a_timestamp_past_what_ns_hold_gives_the_read_time_not_a_wrapped_one(
        sluice, mocks):
    """A producer sets any int64 ms as the timestamp. Past 2262 it times
    10^6 does not fit ev.time: 9223372036855 ms became ev.time
    -9223372036854551616. Such a message now gets the time it was read;
    the largest that fits is kept exactly."""
    from helpers_kafka import KAFKA_MOCK
    m = mocks("in:1", "out:1")
    pipe = str(KAFKA_MOCK.parent / "kafka_pipe")
    for n, ms in enumerate(["9223372036854", "9223372036855",
                            "9223372036854775807"]):
        subprocess.run([pipe, "produce", m.bootstrap, "in", ms],
                       input=b'{"n":%d}\n' % n, check=True, timeout=20,
                       capture_output=True)
    before = time.time_ns()
    sluice(config(m.bootstrap))
    got = wait_consumed(m.bootstrap, "out", 3)
    by_n = {e["payload"]["n"]: e["time"] for e in got}
    assert by_n[0] == 9223372036854000000
    for n in (1, 2):
        assert before - 10**9 <= by_n[n] <= time.time_ns(), by_n


def test_brokers_down_at_start_then_everything_flows(sluice, mocks):
    m = mocks("in:2", "out:2", down=True)
    port = free_port()
    cfg = config(m.bootstrap)
    cfg["inputs"].append({"name": "app", "type": "tcp",
                          "listen": "127.0.0.1:%d" % port})
    eng = sluice(cfg)
    send_events("127.0.0.1:%d" % port,
                [{"topic": "tcp", "payload": {"n": i}} for i in range(10)])
    eng.wait_log("kafka broker error; the client retries", timeout=20)
    assert not eng.find_logs("kafka partitions assigned")
    m.up()
    eng.wait_log("kafka partitions assigned", timeout=30)
    produce(m.bootstrap, "in", ['k:{"n":%d}' % i for i in range(10, 20)])
    got = wait_consumed(m.bootstrap, "out", 20, timeout=60)
    assert sorted(e["payload"]["n"] for e in got) == list(range(20))
    eng.wait_log("kafka brokers reachable again", timeout=10)


def test_brokers_down_mid_stream_then_up_loses_nothing(sluice, mocks):
    """kcat -> sluice -> kafka with every broker taken down (kafka_mock
    SIGUSR1: connections refused, data kept) while events are on the way,
    and brought back (SIGUSR2): every event arrives, the ones loaded before
    and the ones kcat writes after; repeats (fetched again from the last
    commit, produced again after a failed ack) are counted and printed."""
    m = mocks("in:2", "out:2")
    admin = "127.0.0.1:%d" % free_port()
    n, first = 1500, 1000
    produce(m.bootstrap, "in",
            ['k%d:{"n":%d}' % (i, i) for i in range(first)])
    # a slow output with a small blocking queue: mid-stream for seconds
    eng = sluice(config(m.bootstrap, admin=admin,
                        output={"rate_limit": {"events_per_second": 500,
                                               "burst": 50},
                                "queue": {"max_events": 100}}))
    wait_for(lambda: len(consume(m.bootstrap, "out")) >= 200, timeout=30,
             interval=0.2, what="200 events through before the brokers go")
    m.down()
    # both clients notice (the input's consumer and the output's producer)
    eng.wait_log("kafka broker error; the client retries", input="kin",
                 timeout=20)
    eng.wait_log("kafka broker error; the client retries", output="kout",
                 timeout=20)
    assert metric(scrape(admin), "sluice_kafka_client_errors_total") >= 2

    def delivered():
        return metric(scrape(admin), "sluice_output_events_total",
                      output="kout")
    at_down = delivered()
    assert at_down < first, "the stream was over before the brokers went"
    time.sleep(1)  # an outage of a second: nothing is acknowledged in it
    assert delivered() == at_down, "delivered while every broker was down"
    m.up()
    eng.wait_log("kafka brokers reachable again", input="kin", timeout=30)
    # kcat writes the rest once the cluster is back: the input fetches on
    produce(m.bootstrap, "in",
            ['k%d:{"n":%d}' % (i, i) for i in range(first, n)])
    wait_all(m.bootstrap, "out", range(n), timeout=60)
    time.sleep(1)  # repeats still on their way
    got = Counter(e["payload"]["n"] for e in consume_json(m.bootstrap, "out"))
    assert set(got) == set(range(n)), "lost or unknown events"
    dups = sum(c - 1 for c in got.values())
    print("brokers down after %d of %d: %d duplicates" % (at_down, n, dups))
    # every offset, the repeated ones too, is committed in the end
    wait_for(lambda: committed(admin) == n, timeout=20,
             what="offsets committed up to the end of each partition")


def assigned(eng):
    return [l for l in eng.logs() if l.get("msg") == "kafka partitions assigned"]


def test_two_instances_share_partitions_and_take_over_a_killed_one(
        sluice, mocks):
    m = mocks("in:6", "out:6")
    cfg = config(m.bootstrap, input={"options": FAST_FAILOVER},
                 output={"rate_limit": {"events_per_second": 400,
                                        "burst": 50}})
    a = sluice(cfg, name="a")
    b = sluice(cfg, name="b")

    def settled():
        la, lb = assigned(a), assigned(b)
        return la and lb and la[-1]["count"] + lb[-1]["count"] == 6
    wait_for(settled, timeout=30, interval=0.2, what="6 partitions split")
    n = 300
    produce(m.bootstrap, "in", ['k%d:{"n":%d}' % (i, i) for i in range(n)])
    got = Counter(e["payload"]["n"] for e in wait_consumed(m.bootstrap, "out", n))
    assert set(got) == set(range(n)) and max(got.values()) == 1
    # mid-stream kill: the survivor takes the dead one's partitions
    produce(m.bootstrap, "in",
            ['k%d:{"n":%d}' % (i, i) for i in range(n, n + 1000)])
    wait_for(lambda: len(consume(m.bootstrap, "out")) >= n + 200, timeout=30,
             interval=0.2, what="the second batch flowing")
    a.kill()
    b.wait_log("kafka partitions assigned", count=2, timeout=30)
    wait_all(m.bootstrap, "out", range(n + 1000), timeout=60)
    time.sleep(1)
    got = Counter(e["payload"]["n"] for e in consume_json(m.bootstrap, "out"))
    assert set(got) == set(range(n + 1000))
    dups = sum(c - 1 for c in got.values())
    print("2 instances, one killed mid-stream: %d duplicates of %d" %
          (dups, n + 1000))
    assert dups <= 600


def test_example_router_runs_against_the_mock(tmp_path, mocks):
    """examples/kafka/router.conf.lua as its header says to run it, with
    KAFKA_BROKERS naming the mock; kcat feeds orders and reads routed.*."""
    import os
    import shutil
    import signal
    import subprocess
    from conftest import ROOT, SLUICE_BIN, _engine_env
    m = mocks("orders:2", "orders.eu:2", "routed.orders:2",
              "routed.orders.eu:2")
    folder = tmp_path / "kafka"
    shutil.copytree(ROOT / "examples" / "kafka", folder)
    env = _engine_env({"KAFKA_BROKERS": m.bootstrap})
    err = open(tmp_path / "stderr.log", "wb")
    p = subprocess.Popen([SLUICE_BIN, "run", "-c", "router.conf.lua"],
                         cwd=str(folder), env=env, stdout=subprocess.DEVNULL,
                         stderr=err)
    try:
        wait_for(lambda: b"kafka partitions assigned" in
                 (tmp_path / "stderr.log").read_bytes(), timeout=30,
                 what="the example's consumer joined its group")
        produce(m.bootstrap, "orders", ['c1:{"amount":20}', 'c2:{"sku":"x"}'])
        produce(m.bootstrap, "orders.eu", ['c3:{"amount":5000}'])
        got = wait_consumed(m.bootstrap, "routed.orders", 1)
        assert [e["payload"] for e in got] == [{"amount": 20}]
        eu = wait_consumed(m.bootstrap, "routed.orders.eu", 1)
        assert eu[0]["headers"]["priority"] == "high"
        assert eu[0]["key"] == "c3"
        # the header's second copy (INSTANCE=2) starts from the same folder
        second = [l for l in (folder / "router.conf.lua").read_text().splitlines()
                  if l.startswith("--   ") and "INSTANCE=2 sluice run" in l]
        assert len(second) == 1, "the example's second copy is gone"
        log2 = tmp_path / "stderr2.log"
        with open(log2, "wb") as err2:
            p2 = subprocess.Popen([SLUICE_BIN, "run", "-c", "router.conf.lua"],
                                  cwd=str(folder), stdout=subprocess.DEVNULL,
                                  stderr=err2, env=dict(env, INSTANCE="2"))
        try:
            wait_for(lambda: b"sluice started" in log2.read_bytes() or
                     p2.poll() is not None, timeout=10, what="the second copy")
            time.sleep(1)
            assert p2.poll() is None, log2.read_text()
        finally:
            if p2.poll() is None:
                p2.send_signal(signal.SIGTERM)
            assert p2.wait(timeout=20) == 0
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=20) == 0
        err.close()


def test_output_sends_an_event_kafka_cannot_take_to_the_dead_letter(
        sluice, mocks):
    """Larger than the producer's message.max.bytes (less 1 KiB for key
    and headers): to the dead letter before a try; the next ones flow."""
    m = mocks("out:1")
    port = free_port()
    eng = sluice({
        "inputs": [{"name": "app", "type": "tcp",
                    "listen": "127.0.0.1:%d" % port}],
        "outputs": [{"name": "kout", "type": "kafka", "brokers": m.bootstrap,
                     "topic": "out", "format": "json",
                     "options": "message.max.bytes=5000"}],
        "routes": [{"topics": "*", "to": "kout"}]})
    send_events("127.0.0.1:%d" % port, [
        {"topic": "t", "payload": {"n": 1}},
        {"topic": "t", "payload": {"n": 2, "pad": "x" * 6000}},
        {"topic": "t", "payload": {"n": 3}}])
    got = wait_consumed(m.bootstrap, "out", 2)
    assert [e["payload"]["n"] for e in got] == [1, 3]
    dl = eng.path("var/dead-letter.ndjson")
    wait_for(lambda: dl.exists() and dl.read_text().strip(), timeout=10,
             what="the large event in the dead letter")
    bad = json.loads(dl.read_text().splitlines()[0])
    assert bad["payload"]["n"] == 2
    assert "message.max.bytes" in bad["headers"]["sluice-error"]
    assert bad["headers"]["sluice-output"] == "kout"


INVALID_TIMESTAMP = 32  # Kafka's error code; the Produce API key is 0


def test_a_refusal_for_one_record_dead_letters_that_event_not_its_batch(
        sluice, mocks):
    """A broker refuses a record whose timestamp is out of its range
    (INVALID_TIMESTAMP: log.message.timestamp.*.max.ms) for good; that
    was retried for ever, and held every event behind it (81 failed
    deliveries in 5 s, nothing delivered). Kafka answers the whole produce
    request with the error, so the events of the refused request are
    written again one by one: the one still refused goes to the dead
    letter, the others are delivered. The mock refuses the batch, then
    the first event alone."""
    m = mocks("out:1", errors=[(0, INVALID_TIMESTAMP, 2)])
    port = free_port()
    eng = sluice({
        "inputs": [{"name": "app", "type": "tcp",
                    "listen": "127.0.0.1:%d" % port}],
        "outputs": [{"name": "kout", "type": "kafka", "brokers": m.bootstrap,
                     "topic": "out", "format": "json",
                     "retry": {"initial_ms": 50, "max_ms": 100}}],
        "routes": [{"topics": "*", "to": "kout"}]})
    send_events("127.0.0.1:%d" % port,
                [{"topic": "t", "payload": {"n": n}} for n in range(3)])
    got = wait_consumed(m.bootstrap, "out", 2)
    assert [e["payload"]["n"] for e in got] == [1, 2]
    dl = eng.path("var/dead-letter.ndjson")
    wait_for(lambda: dl.exists() and dl.read_text().strip(), timeout=10,
             what="the refused event in the dead letter")
    [line] = dl.read_text().splitlines()
    bad = json.loads(line)
    assert bad["payload"]["n"] == 0
    assert bad["headers"]["sluice-error"] == "kafka: Broker: Invalid timestamp"


OUT_OF_ORDER_SEQUENCE_NUMBER = 45


def test_a_fatal_producer_error_creates_the_producer_again(sluice, mocks):
    """A broker answering OUT_OF_ORDER_SEQUENCE_NUMBER once (it lost the
    idempotent producer's sequence) makes librdkafka's producer fatally
    failed: it refuses every message for good. The output logged "the
    client retries" and retried on the dead producer for ever: nothing
    delivered. It now creates the producer again and every event arrives
    (at-least-once: a repeat of what the broker may have taken is
    allowed)."""
    m = mocks("out:1", errors=[(0, OUT_OF_ORDER_SEQUENCE_NUMBER, 1)])
    port = free_port()
    eng = sluice({
        "inputs": [{"name": "app", "type": "tcp",
                    "listen": "127.0.0.1:%d" % port}],
        "outputs": [{"name": "kout", "type": "kafka", "brokers": m.bootstrap,
                     "topic": "out", "format": "json",
                     "retry": {"initial_ms": 50, "max_ms": 100}}],
        "routes": [{"topics": "*", "to": "kout"}]})
    send_events("127.0.0.1:%d" % port,
                [{"topic": "t", "payload": {"n": n}} for n in range(3)])
    got = wait_consumed(m.bootstrap, "out", 3, timeout=20)
    assert set(e["payload"]["n"] for e in got) == {0, 1, 2}
    eng.wait_log("kafka client fatal error; it takes no more messages (the "
                 "output creates its producer again)")
    eng.wait_log("kafka producer created again")
    send_events("127.0.0.1:%d" % port, [{"topic": "t", "payload": {"n": 3}}])
    got = wait_consumed(m.bootstrap, "out", len(got) + 1, timeout=20)
    assert got[-1]["payload"]["n"] == 3
    assert eng.stop() == 0


def test_an_unknown_librdkafka_option_stops_the_start_naming_it(tmp_path):
    from conftest import lua, run_sluice
    cfg = config("127.0.0.1:1", input={"options": "no.such.property=1"})
    p = tmp_path / "c.lua"
    p.write_text("return " + lua(cfg) + "\n")
    r = run_sluice("run", "-c", p, cwd=tmp_path, timeout=20)
    assert r.returncode != 0
    assert "kafka property no.such.property" in r.stderr, r.stderr


# ---- tls: configuration only (the mock cluster speaks plaintext) -----------

def check_tls(tmp_path, tls_in, tls_out):
    from conftest import write_test_certs
    if not (tmp_path / "ca.pem").exists():
        write_test_certs(tmp_path)  # check loads them as run does
    cfg = config("127.0.0.1:9", input={"tls": tls_in}, output={"tls": tls_out})
    p = tmp_path / "tls.lua"
    p.write_text("return " + lua(cfg) + "\n")
    return run_sluice("check", "-c", p), p


def test_sluice_check_accepts_a_client_tls_block_on_kafka(tmp_path):
    # an input dials the brokers: client rules, no cert_file needed
    r, p = check_tls(tmp_path, {"ca_file": "ca.pem"},
                     {"ca_file": "ca.pem", "cert_file": "client.pem",
                      "key_file": "client.key", "verify_peer": False,
                      "ciphers": "ECDHE-ECDSA-AES128-GCM-SHA256"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("%s: ok" % p)


def test_sluice_check_refuses_a_bad_tls_block_on_kafka(tmp_path):
    r, p = check_tls(tmp_path, {"cert_file": "client.pem"},
                     {"ca_file": "missing.pem", "verify": False})
    assert r.returncode == 1
    err = r.stderr
    assert "inputs[1].tls: cert_file and key_file go together (kafka input)" in err
    assert "outputs[1].tls: unknown key 'verify'" in err
    assert "outputs[1].tls.ca_file: cannot read" in err and "(kafka output)" in err


def test_tls_client_to_the_plaintext_mock_fails_the_handshake_and_retries(
        sluice, mocks, tmp_path):
    """The block reaches librdkafka: a TLS client against the mock (plaintext
    only) logs the failed handshake, keeps retrying, consumes nothing."""
    from test_tls import Certs
    certs = Certs(tmp_path)
    certs.ca("ca", "sluice test CA")
    m = mocks("in:1", "out:1")
    produce(m.bootstrap, "in", ['k:{"n":%d}' % i for i in range(5)])
    tls = {"ca_file": str(tmp_path / "ca.pem")}
    eng = sluice(config(m.bootstrap, input={"tls": tls}, output={"tls": tls}))
    line = eng.wait_log("kafka broker error; the client retries", input="kin",
                        timeout=20)
    out = eng.wait_log("kafka broker error; the client retries", output="kout",
                       timeout=20)
    # ssl://: security.protocol=ssl reached the client; the handshake is
    # where it fails (librdkafka words the reason in more than one way)
    for l in (line, out):
        assert "ssl://" in l["detail"] and "SSL_HANDSHAKE" in l["detail"], l
    assert not eng.find_logs("kafka partitions assigned")
    assert consume(m.bootstrap, "out") == []
