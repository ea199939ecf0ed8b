"""Slow fault tests for "nothing acknowledged is lost" (issue 9): a disk that
fills under load, file descriptors running out, kill -9 in a loop, and
kill -9 in a loop on a full disk. Each prints its figures (sent,
acknowledged, delivered, lost) and fails when an acknowledged event is
missing at the sink. Each is bounded (< ~2 min).

Run: make chaos
"""
import json
import os
import random
import subprocess
import threading
import time
import urllib.request

import msgpack
import pytest

from conftest import Sink, connect, free_port, metric, pack, wait_for
from helpers_http import curl
from test_durability import mount_tmpfs, umount

BIG = "x" * 1000


def ids_at(sink):
    return {e["payload"][0] for e in sink.events}


class Producer(threading.Thread):
    """Native tcp in ack mode: sends events "<name>-<n>" in order over one
    connection after another (a new one when the engine closes or dies)
    until stopped; `acked` holds every id the engine acknowledged."""

    def __init__(self, address, name, size=1000, deadline=60, rate=10000):
        super().__init__(daemon=True)
        self.address, self.name, self.size = address, name, size
        self.rate = rate  # events per second at most: bounded disk use
        self.t0 = time.monotonic()
        self.deadline = self.t0 + deadline
        self.ranges = []  # [first id, count acked] per connection
        self.sent = 0
        self.connections = 0
        self.stop = threading.Event()

    def _one_connection(self):
        try:
            s = connect(self.address, timeout=2)
        except OSError:
            time.sleep(0.1)
            return
        self.connections += 1
        first = self.sent
        span = [first, 0]
        self.ranges.append(span)
        up = msgpack.Unpacker()
        try:
            s.sendall(msgpack.packb({"sluice": 1, "ack": True}))
            s.setblocking(False)
            out = b""
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                ahead = self.sent - self.rate * (time.monotonic() - self.t0)
                if len(out) < 65536 and ahead < 0:
                    for _ in range(64):
                        out += pack({"topic": "t", "payload": [
                            "%s-%d" % (self.name, self.sent), "x" * self.size]})
                        self.sent += 1
                try:
                    n = s.send(out)
                    out = out[n:]
                except BlockingIOError:
                    pass
                try:
                    d = s.recv(65536)
                    if not d:
                        return
                    up.feed(d)
                    for k in up:
                        assert k >= span[1], "acks never go back"
                        span[1] = k
                except BlockingIOError:
                    time.sleep(0.002)
        except OSError:
            return
        finally:
            # whatever was sent and not acked may or may not be in: we only
            # hold the engine to what it acknowledged
            s.close()

    @property
    def acked(self):
        return {"%s-%d" % (self.name, first + i)
                for first, n in list(self.ranges) for i in range(n)}

    def run(self):
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            self._one_connection()


class HttpProducer(threading.Thread):
    """POSTs batches of 20 events; `accepted` holds the ids answered 202."""

    def __init__(self, port, name, size=1000, deadline=60):
        super().__init__(daemon=True)
        self.url = "http://127.0.0.1:%d/v1/events" % port
        self.name, self.size = name, size
        self.deadline = time.monotonic() + deadline
        self.accepted = set()
        self.codes = {}
        self.n = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            ids = ["%s-%d" % (self.name, self.n + k) for k in range(20)]
            self.n += 20
            body = json.dumps([{"topic": "t", "payload": [i, "x" * self.size]}
                               for i in ids]).encode()
            req = urllib.request.Request(self.url, data=body, headers={
                "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=3) as r:
                    code = r.status
            except urllib.error.HTTPError as e:
                code = e.code
            except OSError:
                code = "conn"
                time.sleep(0.05)
            self.codes[code] = self.codes.get(code, 0) + 1
            if code == 202:
                self.accepted.update(ids)
            elif code == 503:
                time.sleep(0.05)


def config(port, sink_port, path, http=None, admin=None, max_bytes=None,
           when_full="block", workers=None):
    inputs = ['{ name = "in", type = "tcp", listen = "127.0.0.1:%d" }' % port]
    if http:
        inputs.append('{ name = "web", type = "http", listen = "127.0.0.1:%d" }'
                      % http)
    return """return {
  inputs = { %s },
  outputs = { { name = "out", type = "tcp", address = "127.0.0.1:%d",
                retry = { initial_ms = 20, max_ms = 200 },
                queue = { max_events = 200, when_full = "%s" },
                buffer = { type = "disk", path = "%s", fsync = "never"%s } } },
  routes = { { topics = "*", to = "out" } },
  shutdown_timeout = 2,
  %s%s
}""" % (", ".join(inputs), sink_port, when_full, path,
        ', max_bytes = "%s"' % max_bytes if max_bytes else "",
        "workers = %d,\n  " % workers if workers else "",
        'admin = { listen = "127.0.0.1:%d" },' % admin if admin else "")


def disk_metric(admin_address, name):
    """A sluice_disk_buffer_* sample of output "out", or None (a build
    without them, for a before/after run)."""
    try:
        return metric(admin_address, name, output="out")
    except AssertionError:
        return None


def report(title, acked, delivered, extra=""):
    lost = acked - delivered
    print("\n[chaos] %s: acked %d, delivered %d (unique), acked and lost %d%s"
          % (title, len(acked), len(delivered & acked), len(lost), extra))
    return lost


@pytest.fixture
def tmpfs(tmp_path):
    mounts = []

    def make(size):
        d = tmp_path / ("disk%d" % len(mounts))
        mount_tmpfs(d, size)
        mounts.append(d)
        return d
    yield make
    for d in mounts:
        umount(d)


# workers = 2: a job handed to worker 1 and its result applied on the main
# loop must still reach the disk buffer before its ack (README "Workers")
# drop_newest: a write that fails refuses the event (the connection closes,
# HTTP answers 503) instead of waiting; with workers = 2 the refusal is
# found after the submit (refused_later)
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("when_full", ["block", "drop_newest"])
def test_disk_full_under_load_sink_down_then_up_loses_nothing_acked(sluice, tmpfs,
                                                                    when_full,
                                                                    workers):
    disk = tmpfs("4m")
    port, down, web, admin = free_port(), free_port(), free_port(), free_port()
    # segments of 1 MiB (max_bytes / 8, at least 1 MiB), so delivered ones can go; the
    # 4 MiB filesystem fills long before the spool's own 6 MiB limit, so
    # writes fail with ENOSPC
    eng = sluice(config(port, down, disk / "buf", http=web, admin=admin,
                        max_bytes="6MiB", when_full=when_full,
                        workers=workers))
    producers = [Producer("127.0.0.1:%d" % port, "n%d" % i, deadline=25)
                 for i in range(2)]
    hp = HttpProducer(web, "h", deadline=25)
    for p in producers + [hp]:
        p.start()
    time.sleep(10)  # the sink is down: the disk fills
    a = "127.0.0.1:%d" % admin
    errors_down = disk_metric(a, "sluice_disk_buffer_write_errors_total")
    with Sink(port=down) as sink:
        for p in producers + [hp]:
            p.join(40)
        acked = set().union(*(p.acked for p in producers)) | hp.accepted
        try:
            wait_for(lambda: acked <= ids_at(sink), 60, interval=0.5,
                     what="every acked event at the sink")
        finally:
            handed = metric(a, "sluice_worker_events_total", worker="1") \
                if workers > 1 else None
            lost = report("disk full (4 MiB tmpfs), sink down 10 s then up, "
                          "%s, workers %d" % (when_full, workers),
                          acked, ids_at(sink),
                          ", sent %d, http codes %r, write errors while down %s, "
                          "refused %s, decided by worker 1 %s"
                          % (sum(p.sent for p in producers) + hp.n,
                             hp.codes, errors_down,
                             disk_metric(a, "sluice_disk_buffer_refused_total"),
                             handed))
        assert errors_down, "the disk never filled: the test proves nothing"
        assert workers == 1 or handed, "nothing went through worker 1"
        assert not lost
        eng.stop()


def soft_nofile(pid):
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no Max open files in /proc/%d/limits" % pid)


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def test_fd_exhaustion_loses_nothing_acked_and_sluice_recovers(sluice, tmp_path):
    port, down, admin = free_port(), free_port(), free_port()
    # 8 MiB segments (max_bytes / 8): at ~10 MB/s one rolls about every
    # second while the fds are gone. A small spool (it was 2 MiB) is full
    # before the fds go, so nothing rolls and nothing is tested.
    eng = sluice(config(port, down, tmp_path / "buf", admin=admin,
                        max_bytes="64MiB"))
    a = "127.0.0.1:%d" % admin
    p = Producer("127.0.0.1:%d" % port, "n", deadline=30)
    p.start()
    wait_for(lambda: p.acked, 5, what="first acks")
    # no fd left at all: the inputs leave a quarter of the limit free for
    # the spool (fd_guard, README "max_connections"), so idle connections
    # alone never starve it; a limit at the count open now does
    limit = open_fds(eng.pid)
    soft = soft_nofile(eng.pid)
    # only the soft limit: putting the hard one back needs CAP_SYS_RESOURCE
    subprocess.run(["prlimit", "--pid", str(eng.pid), "--nofile=%d:" % limit],
                   check=True)
    hogs = []
    for _ in range(200):  # the backlog the engine must shed without fds
        try:
            hogs.append(connect("127.0.0.1:%d" % port, timeout=1))
        except OSError:
            break
    time.sleep(8)  # the producer writes on; segments must roll, fds are gone
    acked_starved = len(p.acked)
    for h in hogs:
        h.close()
    subprocess.run(["prlimit", "--pid", str(eng.pid), "--nofile=%d:" % soft],
                   check=True)
    # the admin server needs an fd too: ask once there are some again
    errors_starved = disk_metric(a, "sluice_disk_buffer_write_errors_total")
    with Sink(port=down) as sink:
        p.join(40)
        acked = p.acked
        try:
            wait_for(lambda: acked <= ids_at(sink), 60, interval=0.5,
                     what="every acked event at the sink")
        finally:
            lost = report("fd exhaustion (RLIMIT_NOFILE %d, %d idle conns)"
                          % (limit, len(hogs)), acked, ids_at(sink),
                          ", sent %d, acked by the end of the starving %d, "
                          "write errors then %s, at the end %s"
                          % (p.sent, acked_starved, errors_starved,
                             disk_metric(a, "sluice_disk_buffer_write_errors_total")))
        assert errors_starved, \
            "no segment roll met the fd limit: the test proves nothing"
        assert not lost
        # recovered: health and a fresh producer work
        with urllib.request.urlopen("http://%s/healthz" % a,
                                    timeout=5) as r:
            assert r.status == 200
        q = Producer("127.0.0.1:%d" % port, "after", deadline=5)
        q.start()
        q.join(10)
        assert q.acked, "a new producer gets acks after the fds came back"
        eng.stop()


def kill_loop(eng, producers, hp, rng, seconds=20):
    """Start the producers, kill -9 and restart eng at random moments for
    seconds, stop them and kill it once more: (the dead engine, kills, the
    ids acked over native acks and HTTP 202)."""
    for p in producers + [hp]:
        p.start()
    kills = 0
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        time.sleep(rng.uniform(0.3, 1.2))
        eng.kill()
        kills += 1
        time.sleep(rng.uniform(0, 0.3))
        eng = eng.restart()
    for p in producers + [hp]:
        p.stop.set()
        p.join(10)
    eng.kill()
    kills += 1
    return eng, kills, set().union(*(p.acked for p in producers)) | hp.accepted


def restart_to_a_sink(eng, down, acked, timeout, what, extra=lambda sink: ""):
    """Bring the sink at port down up, restart eng and wait for every acked
    id at the sink: (the running engine, the ids lost, reported as what)."""
    with Sink(port=down, keep_raw=False) as sink:
        eng = eng.restart()
        try:
            wait_for(lambda: acked <= ids_at(sink), timeout, interval=0.5,
                     what="every acked event at the sink")
        finally:
            lost = report(what, acked, ids_at(sink), extra(sink))
    return eng, lost


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("when_full", ["block", "drop_newest"])
def test_kill9_loop_every_acked_event_is_delivered_after_restart(sluice, tmp_path,
                                                                 when_full,
                                                                 workers):
    port, down, web = free_port(), free_port(), free_port()
    rng = random.Random(9)
    # the sink is down during the kills: the memory queue stays full, so
    # acked records sit in the disk buffer (and its write buffer) when the
    # engine dies; then it comes up and everything acked must arrive
    eng = sluice(config(port, down, tmp_path / "buf", http=web,
                        when_full=when_full, workers=workers))
    producers = [Producer("127.0.0.1:%d" % port, "n%d" % i, size=100,
                          deadline=40) for i in range(2)]
    hp = HttpProducer(web, "h", size=100, deadline=40)
    eng, kills, acked = kill_loop(eng, producers, hp, rng)
    eng, lost = restart_to_a_sink(
        eng, down, acked, 90,
        "kill -9 loop (%d kills, sink down, %s, workers %d), native acks + "
        "http 202" % (kills, when_full, workers),
        lambda sink: ", events at the sink %d, http codes %r"
        % (len(sink.events), hp.codes))
    assert kills >= 10 and len(acked) > 1000
    assert not lost
    eng.stop()


# both faults at once: the engine dies with the disk full (writes failing,
# acks held back or refused) and restarts onto a disk that is still full,
# its spool recovered from torn and short segments
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("when_full", ["block", "drop_newest"])
def test_kill9_loop_on_a_full_disk_loses_nothing_acked(sluice, tmpfs, when_full,
                                                       workers):
    disk = tmpfs("4m")
    port, down, web = free_port(), free_port(), free_port()
    rng = random.Random(7)
    eng = sluice(config(port, down, disk / "buf", http=web, max_bytes="6MiB",
                        when_full=when_full, workers=workers))
    producers = [Producer("127.0.0.1:%d" % port, "n%d" % i, size=300,
                          deadline=40) for i in range(2)]
    hp = HttpProducer(web, "h", size=300, deadline=40)
    eng, kills, acked = kill_loop(eng, producers, hp, rng)
    eng, lost = restart_to_a_sink(
        eng, down, acked, 60,
        "kill -9 loop on a full disk (4 MiB tmpfs, %d kills, sink down, %s, "
        "workers %d)" % (kills, when_full, workers),
        lambda sink: ", http codes %r" % hp.codes)
    assert kills >= 10 and len(acked) > 1000
    assert not lost
    eng.stop()
