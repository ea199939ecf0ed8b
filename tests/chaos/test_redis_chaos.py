"""Redis Streams scale-out under a kill (issue 12 items 3 and 4): three
sluice instances in one consumer group read one stream; one is killed with
SIGKILL mid-stream; the other two claim its pending entries (XAUTOCLAIM
after claim_idle_ms). Nothing is lost; duplicates come only from the
killed instance's in-flight window. Prints the counts.

Run: make chaos   (needs redis-server and redis-cli)
"""
import json

import pytest

from conftest import free_port, lua, metric, wait_for
from redis_helpers import RedisServer, redis_input, redis_output

MAX_INFLIGHT = 400


@pytest.fixture
def srv(tmp_path):
    s = RedisServer(tmp_path)
    yield s
    s.stop()


def conf(address, consumer, admin):
    return "return " + lua({
        "inputs": [redis_input(address, consumer=consumer, count=50,
                               max_inflight=MAX_INFLIGHT, claim_idle_ms=1000)],
        "outputs": [redis_output(address, batch_events=100,
                                 rate_limit={"events_per_second": 2000,
                                             "burst": 100})],
        "routes": [{"topics": "*", "to": "rout"}],
        "admin": {"listen": "127.0.0.1:%d" % admin}})


def test_kill9_one_of_three_loses_nothing_and_the_others_claim_its_share(
        sluice, srv):
    n = 15000
    srv.xadd_many("in", [{"payload": json.dumps({"n": i})} for i in range(n)])
    admins = [free_port() for _ in range(3)]
    engines = [sluice(conf(srv.address, "c%d" % i, admins[i]), name="c%d" % i)
               for i in range(3)]
    srv.wait_xlen("out", n // 4, timeout=60)
    victim = "127.0.0.1:%d" % admins[1]
    inflight = metric(victim, "sluice_redis_input_inflight", input="rin")
    acked_before = metric(victim, "sluice_redis_input_acked_total", input="rin")
    engines[1].kill()
    at_kill = srv.xlen("out")

    def ns():
        return [json.loads(f["payload"])["n"] for _, f in srv.xrange("out")]
    wait_for(lambda: set(ns()) == set(range(n)), timeout=120, interval=0.5,
             what="every entry delivered by the survivors")
    wait_for(lambda: srv.pending("in", "g") == 0, timeout=30,
             what="nothing pending")
    got = ns()
    dups = len(got) - n
    claimed = [metric("127.0.0.1:%d" % admins[i],
                      "sluice_redis_input_claimed_total", input="rin")
               for i in (0, 2)]
    acked = [metric("127.0.0.1:%d" % admins[i],
                    "sluice_redis_input_acked_total", input="rin")
             for i in (0, 2)]
    print("\nredis chaos: %d entries, 3 consumers, c1 killed at %d delivered "
          "(it had acked %d, %d in flight); survivors acked %s, claimed %s; "
          "lost 0, duplicates %d" % (n, at_kill, acked_before, inflight,
                                     acked, claimed, dups))
    assert sum(claimed) > 0
    assert 0 <= dups <= 2 * MAX_INFLIGHT
    for i in (0, 2):
        assert engines[i].stop() == 0
