"""Red-team probes of workers = N, round 2 (r18): the error paths, each
test saying what it proves."""
import signal
import socket
import threading

from conftest import connect, free_port, metrics_flat, pack, wait_for
from test_workers import (PINNED, events, post_reload, start, wait_stuck,
                          worker_keys)
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



def test_a_refusal_found_in_a_worker_closes_a_plain_native_connection(
        sluice, tmp_path):
    """A native connection without acks whose every key a replica decides,
    into a disk buffer whose disk is full (drop policy): each refusal is
    found when the main loop applies the replica's result, after the
    submit returned. It must close the connection as an inline refusal
    does with workers = 1 (the producer's only news), not read on and
    refuse everything the producer sends unseen."""
    from test_durability import BIG, disk_config, mount_tmpfs, umount
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "2m")
    try:
        port, down, admin = free_port(), free_port(), free_port()
        eng = sluice(disk_config(port, down, disk / "buf",
                                 when_full="drop_newest", admin=admin)
                     .replace("return {", "return {\n  workers = 2,", 1),
                     env=PINNED)
        keys = worker_keys(1, 7)
        n = 4000  # 4 MB into a 2 MiB disk
        data = b"".join(pack({"topic": "t", "key": keys[i % 7],
                              "payload": [i, BIG]}) for i in range(n))
        s = connect("127.0.0.1:%d" % port)
        s.settimeout(10)
        try:
            s.sendall(data)
            closed = s.recv(1) == b""  # no acks: only the close comes
        except socket.timeout:
            closed = False
        except OSError:  # reset: the engine closed with bytes unread
            closed = True
        assert closed, "the connection stayed open"
        s.close()
        m = metrics_flat(admin)
        refused = m['sluice_disk_buffer_refused_total{output="out"}']
        # what was in flight when the first refusal came back may be
        # refused too (at most a ring's depth), not the rest of the stream
        assert 0 < refused <= 4096 + 1, refused
        eng.kill()
    finally:
        umount(disk)


def test_udp_datagrams_a_worker_finds_refused_are_counted_as_dropped(
        sluice, tmp_path):
    """Syslog over UDP into a full disk (drop policy), keyless datagrams
    spread over two workers: each one refused counts in
    sluice_input_dropped_total, as with one worker, also those a replica
    decided (the refusal is found when its result is applied: they were
    counted by the disk buffer only, half the input's count missing)."""
    from test_durability import BIG, disk_config, mount_tmpfs, umount
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "2m")
    try:
        down, admin, udp = free_port(), free_port(), free_port()
        eng = sluice(disk_config(udp, down, disk / "buf",
                                 when_full="drop_newest", admin=admin)
                     .replace("return {", "return {\n  workers = 2,", 1)
                     .replace('type = "tcp", listen = "127.0.0.1:',
                              'type = "syslog", udp = "127.0.0.1:'),
                     env=PINNED)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for r in range(75):  # 3 MB into a 2 MiB disk
            # rounds of 40 KB, each read before the next: a slow engine
            # (ASan) must not lose them in a full socket buffer instead
            # (a datagram takes ~2.3 KB of its 208 KB)
            for i in range(r * 40, r * 40 + 40):
                u.sendto(("<13>1 2024-01-01T00:00:00Z h app - - - %d %s"
                          % (i, BIG)).encode(), ("127.0.0.1", udp))
            wait_for(lambda: sum(metrics_flat(admin)[k] for k in (
                'sluice_input_events_total{input="in"}',
                'sluice_input_dropped_total{input="in"}')) >= r * 40 + 40,
                timeout=20, what="round %d read" % r)
        u.close()
        m, seen = {}, []

        def applied():
            """Every datagram read is decided and applied, and nothing
            moved over a quarter second (the socket buffer is empty)."""
            m.update(metrics_flat(admin))
            now = (m['sluice_input_events_total{input="in"}'],
                   m['sluice_input_dropped_total{input="in"}'],
                   m['sluice_disk_buffer_refused_total{output="out"}'])
            seen[:] = (seen if seen and seen[-1] == now else []) + [now]
            return (len(seen) > 5 and now[0] ==
                    m['sluice_worker_events_total{worker="0"}'] +
                    m['sluice_worker_events_total{worker="1"}'] and
                    m['sluice_worker_queue_events{worker="1"}'] == 0)
        wait_for(applied, timeout=20, interval=0.05,
                 what="every datagram applied")
        refused = m['sluice_disk_buffer_refused_total{output="out"}']
        # dropped: each refused one, plus any that came while the input
        # held one for room in the worker's ring (a sender cannot wait)
        assert refused > 0, seen
        assert m['sluice_input_dropped_total{input="in"}'] >= refused, m
        assert m['sluice_worker_events_total{worker="1"}'] > 0
        eng.kill()
    finally:
        umount(disk)
