"""Redis Streams in and out (issue 12 item 3) against a real redis-server
(7.0, started here on a free port), with redis-cli as the independent
client: XADD in -> sluice (a rule) -> XADD out -> XRANGE, exact ledgers;
kill -9 and restart; a second consumer claiming a dead one's entries;
redis restarts; bad entries to the dead letter.
"""
import json
import os
import re

import pytest

from conftest import free_port, lua, metric, read_ndjson, scrape, wait_for
from redis_helpers import RedisServer, redis_input, redis_output


@pytest.fixture
def redis(tmp_path):
    servers = []

    def start():
        folder = tmp_path / ("redis%d" % len(servers))
        folder.mkdir()
        s = RedisServer(folder)
        servers.append(s)
        return s
    yield start
    for s in servers:
        s.stop()


def config(inputs, outputs, routes=None, admin_port=None, rules_dir=None,
           extra=""):
    d = {"inputs": inputs, "outputs": outputs + [
        {"name": "dlq", "type": "file", "path": "dlq.ndjson"}],
        "routes": routes or [{"topics": "*", "to": outputs[0]["name"]}],
        "dead_letter": "dlq"}
    if admin_port:
        d["admin"] = {"listen": "127.0.0.1:%d" % admin_port}
    if rules_dir:
        d["rules"] = {"dir": str(rules_dir)}
    return "return " + lua(d)


def ns(entries):
    return [json.loads(f["payload"])["n"] for _, f in entries]


RULE = """
return {
  topics = { "*" },
  on_event = function(ev)
    if ev.payload.n % 7 == 0 then return sluice.drop("sevens") end
    ev.headers.via = "rule"
  end,
}
"""


def test_round_trip_through_a_rule_keeps_an_exact_ledger_and_acks_all(
        sluice, redis, tmp_path):
    srv = redis()
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10_sevens.lua").write_text(RULE)
    admin = free_port()
    n = 2000
    srv.xadd_many("in", [{"payload": json.dumps({"n": i}), "topic": "orders",
                          "key": "k%d" % i, "h:tenant": "acme"}
                         for i in range(n)])
    eng = sluice(config([redis_input(srv.address)],
                        [redis_output(srv.address, stream="out-{topic}")],
                        admin_port=admin, rules_dir=rules))
    want = [i for i in range(n) if i % 7 != 0]
    srv.wait_xlen("out-orders", len(want))
    out = srv.xrange("out-orders")
    assert ns(out) == want  # in order, each once, the dropped ones absent
    first = out[0][1]
    assert first["topic"] == "orders" and first["key"] == "k1"
    assert first["h:tenant"] == "acme" and first["h:via"] == "rule"
    assert first["h:redis-stream"] == "in"
    src = dict(srv.xrange("in"))
    assert first["h:redis-id"] in src
    # every entry acked, the dropped ones too (dropped on purpose)
    wait_for(lambda: srv.pending("in", "g") == 0, timeout=10,
             what="XPENDING 0")
    a = "127.0.0.1:%d" % admin
    wait_for(lambda: metric(a, "sluice_redis_input_acked_total",
                            input="rin") == n, timeout=10, what="acked == n")
    assert metric(a, "sluice_redis_input_inflight", input="rin") == 0
    assert metric(a, "sluice_redis_output_replies_total", output="rout",
                  outcome="ok") == len(want)
    # every redis metric the README lists is on /metrics
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..",
                               "README.md")).read()
    listed = set(re.findall(r"^(sluice_redis_[a-z_]+) ", readme, re.M))
    assert len(listed) == 12
    assert listed <= {n for n, _, _ in scrape(a)}
    assert eng.stop() == 0


def test_event_format_carries_the_event_between_two_sluices(sluice, redis):
    srv = redis()
    srv.xadd_many("in", [{"payload": json.dumps({"n": i, "s": "é"}),
                          "h:tenant": "acme"} for i in range(50)])
    # A: json entries -> events -> one msgpack event per entry on "mid"
    a = sluice(config([redis_input(srv.address, topic="orders")],
                      [redis_output(srv.address, stream="mid",
                                    format="event")]), name="a")
    # B: events from "mid" -> json entries on "final"
    b = sluice(config([redis_input(srv.address, stream="mid", group="g2",
                                   format="event")],
                      [redis_output(srv.address, stream="final")]), name="b")
    srv.wait_xlen("final", 50)
    assert {k for _, f in srv.xrange("mid") for k in f} == {"event"}
    final = srv.xrange("final")
    assert [json.loads(f["payload"]) for _, f in final] == \
        [{"n": i, "s": "é"} for i in range(50)]
    f0 = final[0][1]
    assert f0["topic"] == "orders"  # the event's own, from A's topic key
    assert f0["h:tenant"] == "acme"
    assert f0["h:redis-stream"] == "mid"  # the last hop's entry
    a.stop()
    b.stop()


def test_bad_entries_go_to_the_dead_letter_without_stalling_the_stream(
        sluice, redis):
    srv = redis()
    big = "x" * 5000
    srv.xadd_many("in", [
        {"payload": '{"n": 1}'},
        {"payload": "not json"},            # JSON that does not parse
        {"other": "no payload field"},
        {"payload": json.dumps({"big": big})},  # over max_event_bytes
        {"payload": '{"n": 2}', "time": "yesterday"},
        {"payload": '{"n": 3}'},
    ])
    eng = sluice(config([redis_input(srv.address)],
                        [redis_output(srv.address)]).replace(
        "return {", "return { max_event_bytes = 4096,", 1))
    srv.wait_xlen("out", 2)
    dl = wait_for(lambda: (lambda r: r if len(r) >= 4 else None)(
        read_ndjson(eng.path("dlq.ndjson"))), timeout=10, what="4 dead letters")
    assert [json.loads(f["payload"])["n"] for _, f in srv.xrange("out")] == [1, 3]
    errors = [d["headers"]["sluice-error"] for d in dl]
    assert "lexical error" in errors[0]
    assert errors[1] == "no payload field"
    assert "larger than max_event_bytes" in errors[2]
    assert "time" in errors[3]
    assert all(d["headers"]["sluice-input"] == "rin" for d in dl)
    assert dl[0]["payload"] == {"payload": "not json"}
    assert "payload" not in dl[2]  # too big to carry
    ids = [e for e, _ in srv.xrange("in")]
    assert [d["headers"]["redis-id"] for d in dl] == [ids[1], ids[2], ids[3], ids[4]]
    wait_for(lambda: srv.pending("in", "g") == 0, timeout=10, what="all acked")
    eng.stop()


def test_an_entry_too_large_to_read_is_dead_lettered_not_reread_for_ever(
        sluice, redis):
    # a field over 4 x max_event_bytes + 64 KiB makes the reply exceed the
    # bounds: the connection drops, and the entry, now pending, was read
    # again at every connect and dropped it again: the streams stalled.
    # It goes to the dead letter unread; everything else flows.
    srv = redis()
    huge = json.dumps({"big": "x" * 100000})
    srv.xadd_many("a", [{"payload": '{"n": 1}'}, {"payload": huge},
                        {"payload": '{"n": 2}'}])
    srv.xadd_many("b", [{"payload": '{"n": 3}'}, {"payload": '{"n": 4}'},
                        {"payload": huge}, {"payload": '{"n": 5}'}])
    admin = free_port()
    eng = sluice(config([redis_input(srv.address, stream="a,b",
                                     consumer="c1")],
                        [redis_output(srv.address)],
                        admin_port=admin).replace(
        "return {", "return { max_event_bytes = 4096,", 1))
    srv.wait_xlen("out", 5)
    assert sorted(ns(srv.xrange("out"))) == [1, 2, 3, 4, 5]
    dl = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(
        read_ndjson(eng.path("dlq.ndjson"))), timeout=10, what="2 dead letters")
    want = {("a", srv.xrange("a")[1][0]), ("b", srv.xrange("b")[2][0])}
    assert {(d["headers"]["redis-stream"], d["headers"]["redis-id"])
            for d in dl} == want
    assert all("entry too large to read" in d["headers"]["sluice-error"]
               for d in dl)
    for st in ("a", "b"):
        wait_for(lambda: srv.pending(st, "g") == 0, timeout=10,
                 what="all acked in " + st)
    a = "127.0.0.1:%d" % admin
    assert metric(a, "sluice_redis_input_dead_lettered_total", input="rin") == 2
    assert metric(a, "sluice_redis_input_reconnects_total", input="rin") <= 4
    srv.xadd_many("a", [{"payload": '{"n": 6}'}])  # and it reads on
    srv.wait_xlen("out", 6)
    eng.stop()


def test_kill9_and_restart_with_the_same_consumer_loses_nothing(
        sluice, redis):
    srv = redis()
    n = 3000
    srv.xadd_many("in", [{"payload": json.dumps({"n": i})} for i in range(n)])
    # 1000/s: the kill at 600 leaves ~2.4 s of flow (at 3000/s, 0.8 s:
    # short for a loaded ASan run to see 600 and kill before the end)
    out = redis_output(srv.address, batch_events=100,
                       rate_limit={"events_per_second": 1000, "burst": 100})
    eng = sluice(config([redis_input(srv.address, consumer="c1",
                                     max_inflight=300)], [out]))
    srv.wait_xlen("out", 600)
    eng.kill()
    mid = srv.xlen("out")
    assert mid < n, "finished before the kill; slow it down"
    eng.restart()
    wait_for(lambda: set(ns(srv.xrange("out"))) == set(range(n)), timeout=30,
             what="every entry delivered after the restart")
    wait_for(lambda: srv.pending("in", "g") == 0, timeout=10, what="all acked")
    got = ns(srv.xrange("out"))
    dups = len(got) - n
    print("redis kill -9: delivered %d before the kill, %d duplicates" %
          (mid, dups))
    # only what was read and not acked goes twice
    assert 0 <= dups <= 2 * 300
    eng.stop()


def test_restart_rereads_its_own_pending_entries_first(sluice, redis):
    srv = redis()
    dead = "127.0.0.1:%d" % free_port()  # nothing listens: nothing delivered
    srv.xadd_many("in", [{"payload": json.dumps({"n": i})} for i in range(80)])
    eng = sluice(config([redis_input(srv.address, consumer="c1",
                                     max_inflight=50, claim_idle_ms=0)],
                        [redis_output(dead)]))
    wait_for(lambda: srv.pending("in", "g") == 50, timeout=10,
             what="50 entries read and held")
    eng.kill()
    # same consumer, claims off: only XREADGROUP ... 0 can bring them back
    eng2 = sluice(config([redis_input(srv.address, consumer="c1",
                                      claim_idle_ms=0)],
                         [redis_output(srv.address)]))
    srv.wait_xlen("out", 80)
    assert ns(srv.xrange("out")) == list(range(80))
    wait_for(lambda: srv.pending("in", "g") == 0, timeout=10, what="all acked")
    eng2.stop()


def test_another_consumer_claims_a_dead_ones_pending_entries(sluice, redis):
    srv = redis()
    dead = "127.0.0.1:%d" % free_port()
    srv.xadd_many("in", [{"payload": json.dumps({"n": i})} for i in range(50)])
    a = sluice(config([redis_input(srv.address, consumer="a",
                                   max_inflight=50)],
                      [redis_output(dead)]))
    wait_for(lambda: srv.pending("in", "g") == 50, timeout=10,
             what="a holds 50")
    a.kill()
    srv.xadd_many("in", [{"payload": json.dumps({"n": i})}
                         for i in range(50, 100)])
    admin = free_port()
    b = sluice(config([redis_input(srv.address, consumer="b",
                                   claim_idle_ms=300)],
                      [redis_output(srv.address)], admin_port=admin))
    srv.wait_xlen("out", 100)
    assert sorted(ns(srv.xrange("out"))) == list(range(100))  # each once
    wait_for(lambda: srv.pending("in", "g") == 0, timeout=10, what="all acked")
    assert metric("127.0.0.1:%d" % admin, "sluice_redis_input_claimed_total",
                  input="rin") == 50
    consumers = {c["name"]: c for c in _consumers(srv)}
    assert consumers["a"]["pending"] == 0
    b.stop()


def _consumers(srv):
    rows = srv.json("XINFO", "CONSUMERS", "in", "g")
    return [dict(zip(r[0::2], r[1::2])) if isinstance(r, list) else r
            for r in rows]


def test_three_instances_in_one_group_take_each_entry_once(sluice, redis):
    srv = redis()
    n = 3000
    admins = [free_port() for _ in range(3)]
    engines = [sluice(config([redis_input(srv.address, consumer="s%d" % i,
                                          count=20)],
                             [redis_output(srv.address)], admin_port=admins[i]),
                      name="s%d" % i) for i in range(3)]
    srv.xadd_many("in", [{"payload": json.dumps({"n": i})} for i in range(n)])
    srv.wait_xlen("out", n, timeout=30)
    got = ns(srv.xrange("out"))
    assert sorted(got) == list(range(n))  # exactly once across the group
    shares = [metric("127.0.0.1:%d" % p, "sluice_redis_input_acked_total",
                     input="rin") for p in admins]
    print("redis scale-out shares:", shares)
    wait_for(lambda: sum(metric("127.0.0.1:%d" % p,
                                "sluice_redis_input_acked_total", input="rin")
                         for p in admins) == n, timeout=10, what="all acked")
    for e in engines:
        assert e.stop() == 0


def test_output_retries_through_a_redis_restart_and_input_resumes(
        sluice, redis):
    src, dst = redis(), redis()
    admin = free_port()
    eng = sluice(config([redis_input(src.address)],
                        [redis_output(dst.address)], admin_port=admin))
    src.xadd_many("in", [{"payload": json.dumps({"n": i})} for i in range(100)])
    dst.wait_xlen("out", 100)
    dst.stop()
    src.xadd_many("in", [{"payload": json.dumps({"n": i})}
                         for i in range(100, 200)])
    eng.wait_log("redis output disconnected; reconnecting with backoff")
    dst.start()  # empty: --save ''
    dst.wait_xlen("out", 100)
    assert sorted(ns(dst.xrange("out"))) == list(range(100, 200))
    # the source restarts empty: the group is made again and reading goes on
    src.stop()
    src.start()
    eng.wait_log("redis input connected", connection="read", count=2,
                 timeout=15)
    src.xadd_many("in", [{"payload": json.dumps({"n": i})}
                         for i in range(200, 250)])
    wait_for(lambda: sorted(ns(dst.xrange("out"))) == list(range(100, 250)),
             timeout=20, what="entries after the source's restart")
    a = "127.0.0.1:%d" % admin
    assert metric(a, "sluice_redis_input_reconnects_total", input="rin") >= 1
    assert metric(a, "sluice_redis_output_reconnects_total", output="rout") >= 1
    eng.stop()


def test_maxlen_trims_and_a_wrong_type_goes_to_the_dead_letter(sluice, redis):
    srv = redis()
    srv.cli("SET", "out-bad", "a string")
    eng = sluice(config([redis_input(srv.address)],
                        [redis_output(srv.address, stream="out-{topic}",
                                      maxlen=10)]))
    srv.xadd_many("in", [{"payload": json.dumps({"n": i}), "topic": "ok"}
                         for i in range(1000)] +
                  [{"payload": '{"n": -1}', "topic": "bad"}])
    dl = wait_for(lambda: read_ndjson(eng.path("dlq.ndjson")), timeout=15,
                  what="the WRONGTYPE event in the dead letter")
    assert "WRONGTYPE" in dl[0]["headers"]["sluice-error"]
    assert dl[0]["payload"] == {"n": -1}
    wait_for(lambda: srv.pending("in", "g") == 0, timeout=10, what="all acked")
    # MAXLEN ~ trims whole nodes: fewer than sent, at least the 10 asked for
    length = srv.xlen("out-ok")
    assert 10 <= length < 1000
    last = srv.xrange("out-ok")[-1][1]
    assert json.loads(last["payload"]) == {"n": 999}
    eng.stop()


@pytest.mark.parametrize("events", [1, 30])
def test_a_server_asking_for_a_password_is_backpressure_not_dead_letters(
        sluice, redis, events):
    # NOAUTH (or redis 7's "unauthenticated multibulk length" for a long
    # command) is about the connection: a trickle of events went to the
    # dead letter one by one while a burst waited. Both wait now, and the
    # log says why.
    from conftest import send_events
    dst = redis()
    dst.cli("CONFIG", "SET", "requirepass", "sekrit")
    port, admin = free_port(), free_port()
    eng = sluice(config([{"name": "tcp", "type": "tcp",
                          "listen": "127.0.0.1:%d" % port}],
                        [redis_output(dst.address)], admin_port=admin))
    a = "127.0.0.1:%d" % admin
    for i in range(3):
        send_events("127.0.0.1:%d" % port, [{"topic": "t", "payload": {"n": i * events + j}}
                                           for j in range(events)])
        wait_for(lambda: metric(a, "sluice_redis_output_replies_total",
                                output="rout", outcome="error") > i,
                 timeout=10, what="refused %d times" % (i + 1))
    assert metric(a, "sluice_output_dead_lettered_total", output="rout") == 0
    assert metric(a, "sluice_output_refused_total", output="rout") == 0
    line = eng.wait_log("output circuit breaker open; no attempts for open_ms",
                        timeout=10)
    assert "auth" in line["error"].lower(), line
    dst.cli("-a", "sekrit", "--no-auth-warning", "CONFIG", "SET", "requirepass", "")
    dst.wait_xlen("out", 3 * events)
    assert ns(dst.xrange("out")) == list(range(3 * events))
    assert read_ndjson(eng.path("dlq.ndjson")) == []


def test_an_out_of_memory_redis_is_backpressure_and_loses_nothing(
        sluice, redis):
    # maxmemory with noeviction: XADD answers OOM. The events wait (their
    # entries stay pending upstream), nothing is dead-lettered, the log
    # says OOM; with room again every entry arrives.
    src, dst = redis(), redis()
    dst.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
    dst.cli("CONFIG", "SET", "maxmemory", "2mb")
    n = 1500
    src.xadd_many("in", [{"payload": json.dumps({"n": i, "pad": "p" * 2000})}
                         for i in range(n)])
    admin = free_port()
    eng = sluice(config([redis_input(src.address)], [redis_output(dst.address)],
                        admin_port=admin))
    line = eng.wait_log("output circuit breaker open; no attempts for open_ms",
                        timeout=20)
    assert line["error"].startswith("XADD: OOM"), line
    a = "127.0.0.1:%d" % admin
    assert dst.xlen("out") < n
    assert src.pending("in", "g") > 0
    assert metric(a, "sluice_output_dead_lettered_total", output="rout") == 0
    dst.cli("CONFIG", "SET", "maxmemory", "0")
    wait_for(lambda: src.pending("in", "g") == 0, timeout=30, what="all acked")
    # at least once: an XADD after a refused one may have been taken too
    assert sorted(set(ns(dst.xrange("out")))) == list(range(n))
    assert read_ndjson(eng.path("dlq.ndjson")) == []


def test_config_needs_address_stream_and_group(sluice, tmp_path):
    from conftest import EngineExited
    with pytest.raises(EngineExited) as e:
        sluice(config([{"name": "rin", "type": "redis",
                        "address": "127.0.0.1:1", "stream": "in"}],
                      [{"name": "o", "type": "null"}]))
    assert "group" in str(e.value)


def test_output_waits_for_a_redis_that_is_not_up_yet(sluice, redis, tmp_path):
    src = redis()
    port = free_port()
    admin = free_port()
    eng = sluice(config([redis_input(src.address)],
                        [redis_output("127.0.0.1:%d" % port)],
                        admin_port=admin))
    src.xadd_many("in", [{"payload": json.dumps({"n": i})} for i in range(20)])
    a = "127.0.0.1:%d" % admin
    # refused connects, more than one: each is seen and retried
    wait_for(lambda: metric(a, "sluice_redis_output_reconnects_total",
                            output="rout") >= 3, timeout=10,
             what="refused connects retried")
    folder = tmp_path / "late"
    folder.mkdir()
    dst = RedisServer(folder, port=port)
    try:
        dst.wait_xlen("out", 20)
        assert ns(dst.xrange("out")) == list(range(20))
        eng.wait_log("redis output connected")
    finally:
        dst.stop()
    eng.stop()


EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples",
                       "redis")


def test_example_routes_orders_as_its_header_says(sluice, redis):
    import shlex
    srv = redis()
    admin = free_port()
    conf_path = os.path.join(EXAMPLE, "sluice.conf.lua")
    text = open(conf_path).read()
    rules = os.path.abspath(os.path.join(EXAMPLE, "rules"))
    eng = sluice(text.replace('dir = "rules"', "dir = %s" % lua(rules)),
                 env={"REDIS": srv.address, "CONSUMER": "router-1",
                      "ADMIN": "127.0.0.1:%d" % admin})
    eng.wait_log("redis input connected", connection="read")
    # the group starts at $ (new entries): wait until it exists
    wait_for(lambda: "router" in srv.cli("XINFO", "GROUPS", "orders"),
             timeout=10, what="the group")
    # the commands its header shows, against this server
    cmds = [shlex.split(l.split("--", 1)[1]) for l in text.splitlines()
            if l.startswith("--   redis-cli")]
    assert len(cmds) == 2
    xadd, xrange_ = cmds
    srv.cli(*xadd[1:])
    srv.cli("XADD", "orders", "*", "payload", '{"order":2,"test":true}')
    srv.cli("XADD", "orders", "*", "payload", '{"order":3,"amount":5}')
    srv.wait_xlen("orders.accepted", 2)
    out = srv.xrange(xrange_[2])
    assert [json.loads(f["payload"])["order"] for _, f in out] == [1, 3]
    assert out[0][1]["h:priority"] == "high"
    assert "h:priority" not in out[1][1]
    raw = srv.cli(*xrange_[1:])  # the shown XRANGE, as redis-cli prints it
    assert '{"order":1,"amount":1500}' in raw and "priority" in raw
    wait_for(lambda: srv.pending("orders", "router") == 0, timeout=10,
             what="all acked")
    # "run several of these with different CONSUMER names and ADMIN
    # addresses": a second from the same file and folder runs beside it
    from conftest import second_copy_starts
    assert second_copy_starts(eng, {"CONSUMER": "router-2",
                                    "ADMIN": "127.0.0.1:%d" % free_port()})
    assert eng.stop() == 0


def test_an_event_over_the_servers_bulk_limit_is_dead_lettered_not_retried(
        sluice, redis):
    # A field longer than redis's proto-max-bulk-len gets "ERR Protocol
    # error: invalid bulk length" (and the server closes). Taken as
    # transient with the unauthenticated client's protocol errors, the
    # event was tried again for good: the breaker opened and closed, and
    # every event behind it waited for ever.
    from conftest import send_events
    dst = redis()
    dst.cli("CONFIG", "SET", "proto-max-bulk-len", "1mb")
    port = free_port()
    eng = sluice(config([{"name": "tcp", "type": "tcp",
                          "listen": "127.0.0.1:%d" % port}],
                        [redis_output(dst.address)]).replace(
        "return {", "return { max_event_bytes = 4194304,", 1))
    send_events("127.0.0.1:%d" % port,
                [{"topic": "t", "payload": {"n": 0, "big": "x" * 2000000}}])
    send_events("127.0.0.1:%d" % port, [{"topic": "t", "payload": {"n": 1}}])
    dst.wait_xlen("out", 1)
    assert ns(dst.xrange("out")) == [1]
    dead = wait_for(lambda: read_ndjson(eng.path("dlq.ndjson")), timeout=10,
                    what="the dead letter")
    assert len(dead) == 1 and dead[0]["payload"]["n"] == 0


def test_backpressure_stops_reading_until_the_queue_has_room(sluice, redis):
    srv = redis()
    dead = "127.0.0.1:%d" % free_port()
    srv.xadd_many("in", [{"payload": json.dumps({"n": i})} for i in range(300)])
    out = redis_output(dead, queue={"max_events": 10, "when_full": "block"})
    admin = free_port()
    eng = sluice(config([redis_input(srv.address, count=30)], [out],
                        admin_port=admin))
    wait_for(lambda: srv.pending("in", "g") == 30, timeout=10,
             what="one read of 30")
    # the queue is full and blocks: no further XREADGROUP, the rest waits
    # in redis (delivered to nobody), not in sluice
    import time
    time.sleep(1.0)
    assert srv.pending("in", "g") == 30
    info = srv.json("XINFO", "GROUPS", "in")[0]
    info = dict(zip(info[0::2], info[1::2])) if isinstance(info, list) else info
    assert info["pending"] == 30
    a = "127.0.0.1:%d" % admin
    wait_for(lambda: metric(a, "sluice_redis_input_lag", input="rin") == 270,
             timeout=10, what="lag 270 (XINFO GROUPS)")
    assert metric(a, "sluice_redis_input_pending", input="rin") == 30
    eng.kill()


def test_sigterm_acks_what_it_delivered_and_a_restart_sends_no_duplicate(
        sluice, redis):
    srv = redis()
    n = 2000
    srv.xadd_many("in", [{"payload": json.dumps({"n": i})} for i in range(n)])
    out = redis_output(srv.address, batch_events=50,
                       rate_limit={"events_per_second": 2000, "burst": 50})
    eng = sluice(config([redis_input(srv.address, consumer="c1",
                                     max_inflight=200)], [out]))
    srv.wait_xlen("out", 300)
    assert eng.stop() == 0  # drains: what was read is delivered and acked
    delivered = srv.xlen("out")
    assert delivered < n
    # nothing delivered is still pending: a restart sends no duplicate
    eng.restart()
    wait_for(lambda: srv.xlen("out") >= n, timeout=30, what="the rest")
    wait_for(lambda: srv.pending("in", "g") == 0, timeout=10, what="all acked")
    got = ns(srv.xrange("out"))
    assert sorted(got) == list(range(n))
    eng.stop()


class HostileRedis:
    """Answers every command with what no honest server sends: a string of
    200 MB (big) or an array of 2^30 elements announced (wide)."""

    def __init__(self, kind):
        import socket
        import threading
        self.kind = kind
        self.sent = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        import threading
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.conn, args=(c,), daemon=True).start()

    def conn(self, c):
        n = 0
        try:
            c.recv(65536)
            if self.kind == "wide":
                c.sendall(b"*1073741824\r\n")
                c.recv(1)  # until sluice closes
                return
            c.sendall(b"$200000000\r\n")
            chunk = b"x" * 65536
            while n < 200000000:
                c.sendall(chunk)
                n += len(chunk)
        except OSError:
            pass
        finally:
            self.sent.append(n)
            c.close()

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("kind", ["big", "wide"])
def test_a_reply_beyond_the_bounds_drops_the_connection(sluice, kind):
    h = HostileRedis(kind)
    try:
        eng = sluice(config([redis_input(h.address)],
                            [{"name": "o", "type": "null"}]).replace(
            "return {", "return { max_event_bytes = 4096,", 1))
        line = eng.wait_log("redis input disconnected; reconnecting with "
                            "backoff", timeout=10)
        if kind == "big":
            assert line["error"] == "reply larger than 81920 bytes"
            wait_for(lambda: h.sent, timeout=10, what="the server to give up")
            # dropped after about 4 x 4096 + 128 KiB, plus socket buffers
            assert min(h.sent) < 20000000
        else:
            assert line["error"] == \
                "reply array of more than 1048576 elements"
        # it keeps trying with a growing backoff, and does not flood the log
        import time
        time.sleep(2)
        assert len(eng.find_logs("redis input disconnected; reconnecting "
                                 "with backoff")) <= 6
        assert eng.rss_kb() < 200000
        assert eng.running()
    finally:
        h.close()


def test_an_event_without_payload_survives_the_trip_through_a_stream(
        sluice, redis):
    from conftest import send_events
    srv = redis()
    port = free_port()
    a = sluice(config([{"name": "tcp", "type": "tcp",
                        "listen": "127.0.0.1:%d" % port}],
                      [redis_output(srv.address, stream="mid")]), name="a")
    b = sluice(config([redis_input(srv.address, stream="mid")],
                      [{"name": "f", "type": "file", "path": "got.ndjson"}]),
               name="b")
    send_events("127.0.0.1:%d" % port,
                [{"topic": "t", "key": "k"}, {"topic": "t", "payload": 1}])
    got = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(
        read_ndjson(b.path("got.ndjson"))), timeout=10, what="both events")
    assert "payload" not in got[0] and got[0]["key"] == "k"
    assert got[1]["payload"] == 1
    assert read_ndjson(b.path("dlq.ndjson")) == []
    a.stop()
    b.stop()


def test_unix_socket_addresses_work_both_ways(sluice, tmp_path):
    from conftest import short_path
    sock = short_path("redis.sock")
    srv = RedisServer(tmp_path, unixsocket=sock)
    try:
        srv.xadd_many("in", [{"payload": json.dumps({"n": i})}
                             for i in range(50)])
        eng = sluice(config([redis_input(sock)], [redis_output(sock)]))
        srv.wait_xlen("out", 50)
        assert ns(srv.xrange("out")) == list(range(50))
        eng.stop()
    finally:
        srv.stop()


@pytest.mark.parametrize("item,why", [
    ({"stream": "a,b,c", "max_inflight": 2},
     "max_inflight (2) is below the number of streams (3)"),
    ({"stream": " , "}, "stream: expected 1 to 64 names"),
    ({"format": "xml"}, "format"),
])
def test_config_errors_name_the_problem(sluice, item, why):
    from conftest import EngineExited
    with pytest.raises(EngineExited) as e:
        sluice(config([redis_input("127.0.0.1:1", **item)],
                      [{"name": "o", "type": "null"}]))
    assert why in str(e.value)


def test_a_connect_that_hangs_is_given_up_and_tried_again(sluice):
    """A listener whose backlog is full drops new SYNs: connects hang.
    Both plugins give them up after their timeout and try again."""
    import socket
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    address = "127.0.0.1:%d" % ls.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the accept queue; later SYNs are dropped
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(ls.getsockname())
        fillers.append(f)
    try:
        eng = sluice(config(
            [redis_input(address, timeout_ms=300)],
            [redis_output(address, retry={"initial_ms": 50, "max_ms": 200,
                                          "timeout_ms": 300})]))
        line = eng.wait_log("redis input disconnected; reconnecting with "
                            "backoff", timeout=10)
        assert line["error"] == "connect timed out after 300 ms"
        line = eng.wait_log("redis output disconnected; reconnecting with "
                            "backoff", timeout=10)
        assert line["error"] == "connect timed out after 300 ms"
        assert eng.stop() == 0
    finally:
        for f in fillers:
            f.close()
        ls.close()
