"""Red-team probes of workers = N, round 2 (r18): the error paths, each
test saying what it proves."""
import os
import signal
import socket
import threading
import time

from conftest import (connect, free_port, metrics_flat, pack, read_ndjson,
                      wait_for, wait_lines)
from test_workers import (PINNED, config, events, keyed_events, post_reload,
                          send, start, wait_stuck, worker_keys)
from test_workers_red import stalled_sink


def stalled_pipeline(sluice, tmp_path, max_events):
    """workers = 2 routing every event to a unix sink that never reads,
    behind a blocking queue of max_events: (sink, engine, address, admin)."""
    sink = stalled_sink()
    outputs = """{ name = "out", type = "unix", path = "%s",
        queue = { max_events = %d, when_full = "block" } },""" % (
        sink.address, max_events)
    eng, _, addr, admin = start(sluice, tmp_path, {"10_p.lua": """
return { on_event = function(ev) return "out" end }"""}, workers=2,
                                outputs=outputs, env=PINNED)
    return sink, eng, addr, admin


def settled_read(admin, still=1.0):
    """The input's count of events read once it stood still for `still`
    seconds: wait_stuck's quarter second could be a descheduled thread on a
    loaded machine, and an event read after the count breaks the books."""
    last = [None, 0.0]

    def settled():
        n = metrics_flat(admin)['sluice_input_events_total{input="in"}']
        if n != last[0]:
            last[:] = [n, time.monotonic()]
        return time.monotonic() - last[1] >= still
    wait_for(settled, timeout=60, interval=0.05,
             what="the input's read count standing still")
    return last[0]


def send_behind(addr, data):
    """Write data from a thread, the engine to stop reading it: the socket."""
    s = connect(addr)

    def write():
        try:
            s.sendall(data)
        except OSError:  # the engine was stopped
            pass
    threading.Thread(target=write, daemon=True).start()
    return s



def test_drain_timeout_counts_each_event_left_in_the_rings_once(
        sluice, tmp_path):
    """SIGTERM while a replica's rings are full behind an output that never
    reads again: the drain ends at shutdown_timeout with its error line,
    and that line's counts balance the books: every event read is
    delivered, left in the output's queue (lost_events) or held in a
    source or a worker's rings (sources_holding), each counted once (an
    event whose result waits in the ring was counted twice: as a job in
    flight and as a result)."""
    sink, eng, addr, admin = stalled_pipeline(sluice, tmp_path, 100)
    eng.config.write_text(eng.config.read_text().replace(
        "shutdown_timeout = 10", "shutdown_timeout = 1"))
    assert post_reload(admin) == 200
    total = 20000
    data = b"".join(pack(e) for e in events("k", total, 64))
    s = send_behind(addr, data)
    wait_stuck(admin)
    read = settled_read(admin)
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


SLOW_STAMP = """
local t = os.clock()
while os.clock() - t < %s do end
return { on_event = function(ev) ev.headers.v = "%s"; return "out" end }
"""


def thread_cpu_ticks(pid):
    """CPU ticks of each thread but the main one (its tid is the pid)."""
    ticks = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        if int(tid) != pid:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks[tid] = int(fields[11]) + int(fields[12])
    return ticks


def test_a_rules_file_written_while_the_workers_load_it_switches_none(
        sluice, tmp_path):
    """Each worker reads the rules files on its own thread, the replicas
    before the main loop. A file replaced in between (the replica still
    runs the new file's slow top level) left worker 1 on one content and
    worker 0 on the next, both called version 2. The reload must switch
    none (all or nothing) and say why; the next one switches all."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10_v.lua").write_text(SLOW_STAMP % (0, "a"))
    port, admin = free_port(), free_port()
    addr = "127.0.0.1:%d" % port
    eng = sluice(config(port, admin, 2, rules=str(rules)).replace(
        "watch = false", "watch = false, cpu_budget_ms = 20000"), env=PINNED)
    (rules / "10_v.tmp").write_text(SLOW_STAMP % (0, "b"))
    (rules / "10_v.lua").write_text(SLOW_STAMP % (1.5, "a2"))
    before = thread_cpu_ticks(eng.pid)
    eng.signal(signal.SIGHUP)
    # worker 1 is in a2's slow top level (it read a2): now b replaces it
    wait_for(lambda: any(t - before.get(tid, 0) >= 20 for tid, t in
                         thread_cpu_ticks(eng.pid).items()),
             timeout=20, what="a replica loading a2")
    os.rename(rules / "10_v.tmp", rules / "10_v.lua")
    line = eng.wait_log("rules reload failed on a worker; every worker "
                        "keeps the running rules", timeout=30)
    assert "changed while the workers loaded it" in line["error"], line
    keys = ["k%d" % i for i in range(64)]
    send(addr, keyed_events(keys, 200))
    wait_lines(eng.path("out.ndjson"), 200, timeout=20)
    assert {e["headers"]["v"] for e in
            read_ndjson(eng.path("out.ndjson"))} == {"a"}
    eng.signal(signal.SIGHUP)
    eng.wait_log("config reloaded", timeout=30)
    send(addr, keyed_events(keys, 200))
    wait_lines(eng.path("out.ndjson"), 400, timeout=20)
    assert {e["headers"]["v"] for e in
            read_ndjson(eng.path("out.ndjson"))[200:]} == {"b"}
    assert eng.stop() == 0


def test_stdin_lines_a_worker_finds_refused_are_counted_as_bad(tmp_path):
    """stdin into a full disk (drop policy), keyless lines spread over two
    workers: each refused line counts in sluice_input_bad_total, as with
    one worker, also those a replica decided (found when its result is
    applied, they were counted by the disk buffer only)."""
    import subprocess
    from conftest import SLUICE_BIN, _engine_env, sanitizer_report
    from test_durability import BIG, mount_tmpfs, umount
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "2m")
    admin = free_port()
    conf = tmp_path / "sluice.conf.lua"
    conf.write_text("""return {
  workers = 2,
  inputs = { { name = "in", type = "stdin" } },
  outputs = { { name = "out", type = "tcp", address = "127.0.0.1:%d",
                queue = { max_events = 20, when_full = "drop_newest" },
                buffer = { type = "disk", path = "%s" } } },
  routes = { { topics = "*", to = "out" } },
  admin = { listen = "127.0.0.1:%d" },
  shutdown_timeout = 2,
}""" % (free_port(), disk / "buf", admin))
    proc = subprocess.Popen([SLUICE_BIN, "run", "-c", str(conf)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=_engine_env(
                                {"SLUICE_WORKERS_BALANCE_MS": "0"}),
                            cwd=str(tmp_path))
    try:
        lines = "".join('{"topic":"t","payload":[%d,"%s"]}\n' % (i, BIG)
                        for i in range(3000))  # 3 MB into a 2 MiB disk
        proc.stdin.write(lines.encode())
        proc.stdin.flush()
        m, seen = {}, []

        def applied():
            """Every line read is decided and applied, nothing moving."""
            try:
                m.update(metrics_flat(admin))
            except OSError:
                return False  # not listening yet
            now = (m['sluice_input_events_total{input="in"}'],
                   m['sluice_input_bad_total{input="in"}'],
                   m['sluice_disk_buffer_refused_total{output="out"}'])
            seen[:] = (seen if seen and seen[-1] == now else []) + [now]
            return (len(seen) > 5 and now[0] == 3000 and now[0] ==
                    m['sluice_worker_events_total{worker="0"}'] +
                    m['sluice_worker_events_total{worker="1"}'] and
                    m['sluice_worker_queue_events{worker="1"}'] == 0)
        wait_for(applied, timeout=30, interval=0.05,
                 what="every line applied")
        refused = m['sluice_disk_buffer_refused_total{output="out"}']
        assert refused > 0 and m['sluice_worker_events_total{worker="1"}']
        assert m['sluice_input_bad_total{input="in"}'] == refused, seen
    finally:
        proc.kill()
        err = proc.communicate()[1].decode()
        umount(disk)
    assert sanitizer_report(err) is None, err


def test_a_worker_holds_at_most_64_mib_of_input_events(sluice, tmp_path):
    """A replica's rings count events, not bytes: behind an output that
    takes nothing, 4096 input events of up to max_event_bytes each (4 GiB)
    could wait in one worker (with one worker, an input waits at its output
    queue's max_bytes). A source now waits once 64 MiB of the events it
    handed a worker are not yet applied, as for a full ring."""
    sink, eng, addr, admin = stalled_pipeline(sluice, tmp_path, 10)
    keys = worker_keys(1, 7)
    big = "x" * (512 * 1024)
    total = 500  # 250 MiB, all for worker 1
    data = b"".join(pack({"topic": "t", "key": keys[i % 7],
                          "payload": [i, big]}) for i in range(total))
    s = send_behind(addr, data)
    wait_stuck(admin, timeout=60)
    read = settled_read(admin)
    # 64 MiB in the worker (128 events, one more past it), the queue's 10,
    # what the unix socket took, the one the source holds
    assert read <= 128 + 1 + 10 + 8 + 1, read
    eng.kill()
    s.close()
    sink.close()
