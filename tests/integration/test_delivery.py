"""Disk buffers, spill, and acknowledged delivery (issue 5), through the
real binary: kill -9, restarts, corrupt segments and a sluice->sluice link.
"""
import glob
import json
import os
import signal
import socket
import threading
import time

import msgpack

from conftest import Sink, connect, free_port, pack, read_ndjson, wait_for


def acked_client(address, events, timeout=20):
    """Send with the ack-mode hello; return the highest count acknowledged."""
    s = connect(address)
    s.sendall(msgpack.packb({"sluice": 1, "ack": True}))
    s.sendall(b"".join(pack(e) for e in events))
    up = msgpack.Unpacker()
    last = 0
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while last < len(events) and time.monotonic() < deadline:
        d = s.recv(4096)
        if not d:
            break
        up.feed(d)
        for n in up:
            assert isinstance(n, int) and n >= last
            last = n
    s.close()
    return last


def seqs(events):
    return [e["payload"] for e in events]


def test_spill_takes_overflow_to_disk_and_delivers_in_order(sluice):
    sink = Sink(reading=False)
    with sink:
        port = free_port()
        eng = sluice("""return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "out", type = "tcp", address = "%s",
                queue = { max_events = 50, when_full = "spill" } } },
  routes = { { topics = "*", to = "out" } },
}""" % (port, sink.address))
        n = 20000
        from conftest import send_events
        t0 = time.monotonic()
        # the sink does not read: without spill this would block the client
        send_events("127.0.0.1:%d" % port, [{"topic": "t", "payload": i} for i in range(n)])
        assert time.monotonic() - t0 < 10
        segs = glob.glob(str(eng.path("var/buffer/out/*.seg")))
        assert segs, "nothing spilled"
        sink.start_reading()
        got = sink.wait(n, timeout=20)
        assert seqs(got) == list(range(n))
        assert eng.stop() == 0


def test_disk_buffer_kill9_then_restart_delivers_every_acked_event(sluice):
    port = free_port()
    down = free_port()  # nothing listens yet: the output cannot deliver
    cfg = """return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "out", type = "tcp", address = "127.0.0.1:%d",
                retry = { initial_ms = 20, max_ms = 100 },
                buffer = { type = "disk", max_bytes = "64MiB", fsync = "always" } } },
  routes = { { topics = "*", to = "out" } },
}""" % (port, down)
    eng = sluice(cfg)
    n = 5000
    acked = acked_client("127.0.0.1:%d" % port, [{"topic": "t", "payload": i} for i in range(n)])
    assert acked == n
    eng.kill()
    with Sink(port=down) as sink:
        eng = eng.restart()
        eng.wait_log("disk buffer replays undelivered events")
        got = sink.wait(n, timeout=20)
        assert seqs(got)[:n] == list(range(n))
        assert eng.stop() == 0
    # delivered: nothing is left to replay
    eng = eng.restart()
    time.sleep(0.3)
    assert not [l for l in eng.logs() if l["msg"] == "disk buffer replays undelivered events"]
    assert eng.stop() == 0


def test_corrupt_segment_tail_is_quarantined_and_engine_starts(sluice):
    port = free_port()
    down = free_port()
    cfg = """return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "out", type = "tcp", address = "127.0.0.1:%d",
                retry = { initial_ms = 20, max_ms = 100 },
                buffer = { type = "disk", max_bytes = "64MiB", fsync = "always" } } },
  routes = { { topics = "*", to = "out" } },
}""" % (port, down)
    eng = sluice(cfg)
    n = 100
    assert acked_client("127.0.0.1:%d" % port, [{"topic": "t", "payload": i} for i in range(n)]) == n
    eng.kill()
    (seg,) = glob.glob(str(eng.path("var/buffer/out/*.seg")))
    size = os.path.getsize(seg)
    with open(seg, "r+b") as f:  # a torn write: the last record cut, garbage after
        f.truncate(size - 7)
        f.seek(0, 2)
        f.write(b"\xff\x00garbage")
    with Sink(port=down) as sink:
        eng = eng.restart()
        line = eng.wait_log("disk buffer repaired at start; bad records moved to quarantine/")
        assert line["quarantined_bytes"] > 0
        assert glob.glob(str(eng.path("var/buffer/out/quarantine/*")))
        got = sink.wait(n - 1, timeout=10)
        assert seqs(got) == list(range(n - 1))
        assert eng.stop() == 0


def test_disk_buffer_full_drop_newest_counts(sluice):
    from conftest import metrics_flat, send_events
    port = free_port()
    down = free_port()
    admin = free_port()
    eng = sluice("""return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "out", type = "tcp", address = "127.0.0.1:%d",
                queue = { max_events = 10, when_full = "drop_newest" },
                buffer = { type = "disk", max_bytes = "1MiB", fsync = "never" } } },
  routes = { { topics = "*", to = "out" } },
  admin = { listen = "127.0.0.1:%d" },
}""" % (port, down, admin))
    big = "x" * 1000
    send_events("127.0.0.1:%d" % port, [{"topic": "t", "payload": [i, big]} for i in range(3000)])

    def dropped(m):
        return sum(v for k, v in m.items()
                   if k.startswith("sluice_events_dropped_total{")
                   and 'output="out"' in k)

    with Sink(port=down) as sink:
        # everything kept is delivered (the reconnect backoff has grown
        # while the peer was down: wait for it, not a fixed time)
        def settled():
            m = metrics_flat(admin)
            return (m['sluice_queue_events{output="out"}'] == 0 and
                    m['sluice_disk_buffer_backlog_events{output="out"}'] == 0 and
                    len(sink.events) == m['sluice_output_events_total{output="out"}'] > 0)
        wait_for(settled, 30, interval=0.1, what="the kept events delivered")
        got = sink.events
        assert 0 < len(got) < 3000
        # the ones kept are a prefix, in order; the rest were counted
        assert [e["payload"][0] for e in got] == list(range(len(got)))
        assert len(got) + dropped(metrics_flat(admin)) == 3000
        assert eng.stop() == 0


def test_sluice_to_sluice_with_acks_survives_downstream_kill(sluice):
    up_port, down_port = free_port(), free_port()
    # the receiver acks what it accepted: with a disk buffer that is on
    # disk, so killing it loses nothing (a memory queue would lose what it
    # had acked but not yet written)
    down_cfg = """return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "f", type = "file", path = "out.ndjson",
                buffer = { type = "disk", max_bytes = "64MiB", fsync = "never" } } },
  routes = { { topics = "*", to = "f" } },
}""" % down_port
    down = sluice(down_cfg)
    up = sluice("""return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "next", type = "tcp", address = "127.0.0.1:%d", ack = true,
                retry = { initial_ms = 20, max_ms = 100 },
                buffer = { type = "disk", max_bytes = "64MiB", fsync = "never" } } },
  routes = { { topics = "*", to = "next" } },
}""" % (up_port, down_port))
    n = 100000
    result = {}
    t = threading.Thread(target=lambda: result.update(
        acked=acked_client("127.0.0.1:%d" % up_port,
                           [{"topic": "t", "payload": i} for i in range(n)], timeout=60)))
    t.start()
    wait_for(lambda: os.path.exists(down.path("out.ndjson")) and
             os.path.getsize(down.path("out.ndjson")) > 0, what="first deliveries")
    down.kill()
    time.sleep(0.3)
    down = down.restart()
    t.join(60)
    assert result["acked"] == n
    wait_for(lambda: len(set(seqs(read_ndjson(down.path("out.ndjson"))))) == n,
             timeout=30, what="every event downstream")
    got = seqs(read_ndjson(down.path("out.ndjson")))
    assert set(got) == set(range(n))  # none lost; a resent batch may repeat
    assert up.stop() == 0
    assert down.stop() == 0


def test_file_output_fsync_always_delivers_and_is_checked(sluice, tmp_path):
    port = free_port()
    eng = sluice("""return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "f", type = "file", path = "out.ndjson", fsync = "always" } },
  routes = { { topics = "*", to = "f" } },
}""" % port)
    from conftest import send_events
    send_events("127.0.0.1:%d" % port, [{"topic": "t", "payload": i} for i in range(500)])
    assert eng.stop() == 0
    assert seqs(read_ndjson(eng.path("out.ndjson"))) == list(range(500))
    bad = tmp_path / "bad.lua"
    bad.write_text("""return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "n", type = "tcp", address = "127.0.0.1:1", fsync = "always" },
              { name = "f", type = "file", path = "x", fsync = "sometimes" } },
}""" % port)
    from conftest import run_sluice
    r = run_sluice("check", "-c", str(bad))
    assert r.returncode == 1
    assert "outputs[1].fsync: only file outputs take fsync" in r.stderr
    assert 'outputs[2].fsync: expected "always" or "never", got "sometimes"' in r.stderr


def test_file_output_mends_a_torn_last_line_at_start(sluice):
    """A kill -9 during a write leaves half a record at the end of the file;
    the next start cuts it (its events were never delivered) so records do
    not glue onto it. A tail that is not one of our records is kept and
    gets its newline instead."""
    from conftest import send_events
    port = free_port()
    eng = sluice("""return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "f", type = "file", path = "out.ndjson" } },
  routes = { { topics = "*", to = "f" } },
}""" % port)
    send_events("127.0.0.1:%d" % port, [{"topic": "t", "payload": i} for i in range(3)])
    wait_for(lambda: len(eng.path("out.ndjson").read_bytes().splitlines()) == 3,
             what="3 records")
    assert eng.stop() == 0
    torn = b'{"id":"0123456789abcdef0123456789abcdef","topic":"t","ti'
    with open(eng.path("out.ndjson"), "ab") as f:
        f.write(torn)
    eng = eng.restart()
    cut = eng.find_logs("output file ended in a torn line (a crash during a write); "
                        "cut it: its events were never delivered and come again")
    assert len(cut) == 1 and cut[0]["bytes"] == len(torn), eng.stderr()
    send_events("127.0.0.1:%d" % port, [{"topic": "t", "payload": i} for i in range(3, 5)])
    wait_for(lambda: len(eng.path("out.ndjson").read_bytes().splitlines()) == 5,
             what="5 records")
    assert eng.stop() == 0
    assert seqs(read_ndjson(eng.path("out.ndjson"))) == list(range(5))
    with open(eng.path("out.ndjson"), "ab") as f:
        f.write(b"a line someone else wrote")
    eng = eng.restart()
    assert len(eng.find_logs("output file did not end in a newline; added one so "
                             "records do not glue onto its last line")) == 1
    send_events("127.0.0.1:%d" % port, [{"topic": "t", "payload": 5}])
    wait_for(lambda: len(eng.path("out.ndjson").read_bytes().splitlines()) == 7,
             what="7 lines")
    assert eng.stop() == 0
    lines = eng.path("out.ndjson").read_bytes().splitlines()
    assert lines[5] == b"a line someone else wrote"
    assert json.loads(lines[6])["payload"] == 5


def test_the_relay_example_survives_kill_9_at_either_end(sluice):
    # README "Delivery": a relay whose receiver has a disk buffer survives
    # kill -9 at either end (examples/relay/): every acked event arrives
    root = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "relay")
    port, admin = free_port(), free_port()
    central_text = open(os.path.join(root, "central.conf.lua")).read()
    assert "127.0.0.1:7500" in central_text and "127.0.0.1:9091" in central_text
    central = sluice(central_text.replace("127.0.0.1:7500", "127.0.0.1:%d" % port)
                     .replace("127.0.0.1:9091", "127.0.0.1:%d" % admin), name="central")
    edge = sluice(open(os.path.join(root, "edge.conf.lua")).read(), name="edge",
                  env={"CENTRAL": "127.0.0.1:%d" % port})
    sock = str(edge.path("var/edge.sock"))
    archive = central.path("var/central.ndjson")

    def ids():
        return {e["id"] for e in read_ndjson(archive)} if os.path.exists(archive) else set()

    def batch(k):
        return [{"id": "r%d-%d" % (k, i), "topic": "t", "payload": i} for i in range(500)]

    assert acked_client(sock, batch(0)) == 500
    wait_for(lambda: len(ids()) == 500, timeout=15, what="the first batch archived")
    central.kill()  # kill -9 of the receiver
    assert acked_client(sock, batch(1)) == 500  # on the edge's disk
    edge.kill()  # and of the sender, its batch still unsent
    central = central.restart()
    edge = edge.restart()
    assert acked_client(sock, batch(2)) == 500
    want = {e["id"] for k in range(3) for e in batch(k)}
    wait_for(lambda: ids() == want, timeout=30, what="every acked event archived")
    assert edge.stop() == 0
    assert central.stop() == 0


def test_the_relay_example_runs_both_ends_from_its_own_folder(tmp_path):
    """examples/relay/ as its comments run it: central and edge started from
    the example's folder, side by side. Each has its own state_dir, so the
    second is not refused by the first's lock on a shared var/ ("another
    sluice holds the state folder; not starting"), and events relay."""
    import shutil
    import subprocess
    from conftest import SLUICE_BIN
    root = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "relay")
    folder = tmp_path / "r"
    shutil.copytree(root, folder)
    port, admin = free_port(), free_port()
    conf = folder / "central.conf.lua"
    conf.write_text(conf.read_text().replace("127.0.0.1:7500", "127.0.0.1:%d" % port)
                    .replace("127.0.0.1:9091", "127.0.0.1:%d" % admin))
    procs = []
    try:
        for name, env in (("central", {}), ("edge", {"CENTRAL": "127.0.0.1:%d" % port})):
            with open(str(folder / (name + ".log")), "wb") as log:
                procs.append(subprocess.Popen(
                    [SLUICE_BIN, "run", "-c", name + ".conf.lua"], cwd=str(folder),
                    stdout=subprocess.DEVNULL, stderr=log, env=dict(os.environ, **env)))
            wait_for(lambda: b"sluice started" in (folder / (name + ".log")).read_bytes()
                     or procs[-1].poll() is not None, 10, what=name + " to start")
            assert procs[-1].poll() is None, (folder / (name + ".log")).read_text()
        events = [{"id": "e%d" % i, "topic": "t", "payload": i} for i in range(50)]
        assert acked_client(str(folder / "var" / "edge.sock"), events) == 50
        archive = folder / "var" / "central.ndjson"
        wait_for(lambda: archive.exists() and len(read_ndjson(archive)) == 50, 15,
                 what="the events archived by the central")
    finally:
        for p in reversed(procs):
            p.terminate()
        rcs = [p.wait(timeout=20) for p in procs]
    assert rcs == [0, 0]
