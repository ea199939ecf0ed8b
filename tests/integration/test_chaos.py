"""The chaos sink (issue 5): the engine delivers to build/tools/chaos_sink,
which by a seed stalls, answers slowly, drops connections mid-stream,
refuses and restarts, and writes down every event it acknowledged. Each run
must balance exactly:

    sent = delivered (unique at the sink) + dead-lettered (lines in the
           dead-letter file) + dropped by policy (the engine's counters)

with no event counted twice and none missing. Runs cover a memory queue
that blocks, a disk buffer, a small queue that drops the newest, and spill.

Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_chaos.py
"""

import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import (ASAN, SLUICE_BIN, START_TIMEOUT, connect, free_port,
                      pack, read_lines, read_ndjson, wait_for)

CHAOS_SINK = Path(SLUICE_BIN).resolve().parent / "tools" / "chaos_sink"
TIMEOUT_MS = 500  # the output's retry.timeout_ms; the sink keeps clear of it


from conftest import metrics_flat as metrics  # noqa: E402


def dropped_by_policy(m):
    """Every drop the engine counted (queue policies, dedup, disk full)."""
    return int(sum(v for k, v in m.items()
                   if k.startswith("sluice_events_dropped_total{")))


class ChaosSink:
    def __init__(self, folder, seed, chaos_ms):
        self.port = free_port()
        self.address = "127.0.0.1:%d" % self.port
        self.ledger = folder / "ledger.txt"
        self.log = folder / "chaos_sink.log"
        self._err = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [str(CHAOS_SINK), "--port", str(self.port), "--seed", str(seed),
             "--ledger", str(self.ledger), "--chaos-ms", str(chaos_ms),
             "--timeout-ms", str(TIMEOUT_MS)],
            stderr=self._err, stdin=subprocess.DEVNULL)
        wait_for(lambda: "listening" in self.log.read_text(), START_TIMEOUT,
                 what="the chaos sink to listen")

    def ids(self):
        return read_lines(self.ledger)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=10)
        self._err.close()
        return rc


def send_paced(address, events, chunks=20, pause=0.05):
    """One connection, the events in chunks with pauses, so the chaos meets
    them while they flow; waits until the engine has read them all."""
    per = max(1, len(events) // chunks)
    with connect(address, timeout=30) as s:
        for i in range(0, len(events), per):
            s.sendall(b"".join(pack(e) for e in events[i:i + per]))
            time.sleep(pause)
        s.shutdown(1)
        while s.recv(65536):
            pass


RUNS = {
    # name: (seed, output settings, events)
    "memory-block": (1, {"queue": {"max_events": 2000}}, 4000),
    "disk-buffer": (2, {"buffer": {"type": "disk", "max_bytes": "64MiB",
                                   "fsync": "interval",
                                   "fsync_interval_ms": 50}}, 4000),
    "small-queue-drop-newest": (3, {"queue": {"max_events": 150,
                                              "when_full": "drop_newest"}}, 4000),
    "spill": (4, {"queue": {"max_events": 200, "when_full": "spill"}}, 4000),
    "memory-block-seed-5": (5, {"queue": {"max_events": 500}}, 3000),
}
# More seeds on demand (a soak): CHAOS_SEEDS=40 adds 40 runs cycling
# through the settings above with seeds 100, 101, ...
_BASES = sorted(RUNS)
for _k in range(int(os.environ.get("CHAOS_SEEDS", "0"))):
    _base = _BASES[_k % len(_BASES)]
    RUNS["seed-%d-%s" % (100 + _k, _base)] = (100 + _k,) + RUNS[_base][1:]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_chaos_ledger_balances(sluice, tmp_path, name):
    seed, extra, n = RUNS[name]
    assert CHAOS_SINK.exists(), "build the tools first (make)"
    sink = ChaosSink(tmp_path, seed, chaos_ms=2500)
    port, admin = free_port(), free_port()
    out = {"name": "out", "type": "tcp", "address": sink.address, "ack": True,
           "batch_events": 64,
           "retry": {"initial_ms": 10, "max_ms": 100, "max_attempts": 3,
                     "timeout_ms": TIMEOUT_MS},
           "breaker": {"failures": 4, "open_ms": 150},
           # slow enough that the chaos meets the stream for its whole length
           "rate_limit": {"events_per_second": 2000, "burst": 100}}
    out.update(extra)
    eng = sluice({
        "inputs": [{"name": "in", "type": "tcp", "listen": "127.0.0.1:%d" % port}],
        "outputs": [out],
        "routes": [{"topics": "*", "to": "out"}],
        "admin": {"listen": "127.0.0.1:%d" % admin},
        "shutdown_timeout": 20,
    })
    events = [{"id": "s%d-%05d" % (seed, i), "topic": "chaos", "payload": i}
              for i in range(n)]
    sent = {e["id"] for e in events}
    send_paced("127.0.0.1:%d" % port, events)
    dl_path = eng.path("var/dead-letter.ndjson")

    def books():
        m = metrics(admin)
        delivered = set(sink.ids())
        dead = [e["id"] for e in read_ndjson(dl_path)]
        dropped = dropped_by_policy(m)
        queued = m['sluice_queue_events{output="out"}'] + \
            m['sluice_queue_events{output="dead_letter"}']
        return delivered, dead, dropped, queued, m

    def balanced():
        delivered, dead, dropped, queued, _ = books()
        return queued == 0 and len(delivered | set(dead)) + dropped >= n

    wait_for(balanced, 60 if ASAN else 40, interval=0.2,
             what="every event delivered, dead-lettered or dropped "
                  "(sink log %s)" % sink.log)
    time.sleep(0.3)  # anything late would show up now
    delivered, dead, dropped, queued, m = books()
    assert sink.stop() == 0
    assert eng.stop() == 0

    dead_set = set(dead)
    assert len(dead) == len(dead_set), "an event was dead-lettered twice"
    assert not (delivered & dead_set), \
        "delivered and dead-lettered: %r" % sorted(delivered & dead_set)[:5]
    assert delivered <= sent and dead_set <= sent
    assert len(delivered) + len(dead_set) + dropped == n, \
        (len(delivered), len(dead_set), dropped, n)
    # the engine's own counts agree with what the sink and the file hold
    assert m['sluice_output_dead_lettered_total{output="out"}'] == len(dead_set)
    assert m['sluice_output_events_total{output="dead_letter"}'] == len(dead_set)
    for e in read_ndjson(dl_path)[:20]:
        h = e["headers"]
        assert h["sluice-output"] == "out"
        assert int(h["sluice-attempts"]) >= 3
        assert h["sluice-error"]
    # the shutdown summary says the same
    (totals,) = [l for l in eng.logs()
                 if l["msg"] == "output totals" and l["output"] == "out"]
    assert totals["dead_lettered"] == len(dead_set)
    assert totals["left_queued"] == 0
    # the chaos did happen
    log = sink.log.read_text()
    assert re.search(r"(drop|refuse|restart|stall)", log)
    print("%s: sent %d = delivered %d + dead-lettered %d + dropped %d; "
          "duplicates at the sink %d" % (name, n, len(delivered), len(dead_set),
                                         dropped, len(sink.ids()) - len(delivered)))
