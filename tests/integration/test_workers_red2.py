"""Red-team probes of workers = N, round 2 (r18): the error paths, each
test saying what it proves."""
import signal
import threading

from conftest import connect, metrics_flat, pack
from test_workers import (PINNED, events, post_reload, start, wait_stuck)
from test_workers_red import stalled_sink


def test_drain_timeout_counts_each_event_left_in_the_rings_once(
        sluice, tmp_path):
    """SIGTERM while a replica's rings are full behind an output that never
    reads again: the drain ends at shutdown_timeout with its error line,
    and that line's counts balance the books: every event read is
    delivered, left in the output's queue (lost_events) or held in a
    source or a worker's rings (sources_holding), each counted once (an
    event whose result waits in the ring was counted twice: as a job in
    flight and as a result)."""
    sink = stalled_sink()
    outputs = """{ name = "out", type = "unix", path = "%s",
        queue = { max_events = 100, when_full = "block" } },""" % sink.address
    eng, _, addr, admin = start(sluice, tmp_path, {"10_p.lua": """
return { on_event = function(ev) return "out" end }"""}, workers=2,
                                outputs=outputs, env=PINNED)
    eng.config.write_text(eng.config.read_text().replace(
        "shutdown_timeout = 10", "shutdown_timeout = 1"))
    assert post_reload(admin) == 200
    total = 20000
    data = b"".join(pack(e) for e in events("k", total, 64))
    s = connect(addr)
    writer = threading.Thread(target=lambda: s.sendall(data), daemon=True)
    writer.start()
    wait_stuck(admin)
    read = metrics_flat(admin)['sluice_input_events_total{input="in"}']
    eng.signal(signal.SIGTERM)
    assert eng.wait(timeout=30) == 1
    s.close()
    line = eng.wait_log("shutdown_timeout reached; exiting with events "
                        "undelivered")
    out = eng.wait_log("output totals", output="out")
    assert out["left_queued"] == line["lost_events"] == 100, (line, out)
    assert read == (out["delivered"] + line["lost_events"] +
                    line["sources_holding"]), (read, line, out)
    sink.close()

