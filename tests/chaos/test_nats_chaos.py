"""A NATS server that dies and stalls again and again mid-stream (make
chaos): JetStream in -> rule -> JetStream out, with the server kill -9'd
and restarted KILLS times and stopped (SIGSTOP) for a few seconds between
restarts, on the same store. Every message must reach the output stream
exactly once (Nats-Msg-Id drops the repeats of a publish written again),
and the engine's loop must stay responsive throughout: /healthz is read
every 50 ms, its worst answer printed and bounded. Each kill loses the
acks of the publishes in flight; before the output took those back from
libnats they piled up against its pending limit, and a server that stopped
reading held the loop (tests/integration/test_nats.py has the short
versions of both).

Run: make chaos   (or /usr/bin/python3 -m pytest -q -s tests/chaos/test_nats_chaos.py)
"""
import signal
import threading
import time
import urllib.request

from conftest import metrics_flat, wait_for
from test_nats import (acked, consume_events, drained, ledger, nats,  # noqa: F401
                       start)

KILLS = 8


def test_server_killed_and_stalled_mid_stream_every_message_once(
        sluice, tmp_path, nats):
    eng, admin = start(sluice, tmp_path, nats,
                       extra_out=", rate_limit = { events_per_second = 3000, burst = 50 }")
    n = 30000
    nats.tool("pub", "in.orders", n, "--js")
    worst = [0.0]
    stop = threading.Event()

    def probe():
        while not stop.is_set():
            a = time.monotonic()
            try:
                urllib.request.urlopen("http://127.0.0.1:%d/healthz" % admin,
                                       timeout=10).read()
            except OSError:
                pass
            worst[0] = max(worst[0], time.monotonic() - a)
            time.sleep(0.05)
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    try:
        for k in range(KILLS):
            wait_for(lambda: acked(admin) >= (k + 1) * n // (KILLS + 2), 120,
                     what="acks going on before kill %d" % (k + 1))
            if k % 2:
                nats.proc.send_signal(signal.SIGSTOP)
                time.sleep(3)
            nats.stop(signal.SIGKILL)
            nats.start()  # same port, same store
        wait_for(lambda: drained(metrics_flat(admin)) and acked(admin) >= n, 300,
                 what="every message acked after the last restart")
    finally:
        stop.set()
        t.join(15)
    m = metrics_flat(admin)
    events = consume_events(nats, "OUT", "check", 2 * n)
    seen = ledger(events)
    missing = set(range(n)) - set(seen)
    dups = sum(c - 1 for c in seen.values())
    print("\nnats chaos: %d messages, %d kill -9 (%d after a 3 s SIGSTOP): %d "
          "redelivered, %d publishes failed and written again, %d duplicates "
          "in the output stream, %d lost; worst /healthz %.3f s"
          % (n, KILLS, KILLS // 2,
             m['sluice_nats_redeliveries_total{input="nats-in"}'],
             m['sluice_nats_publish_failed_total{output="out"}'],
             dups, len(missing), worst[0]))
    assert not missing
    assert dups == 0
    assert worst[0] < 2.0
