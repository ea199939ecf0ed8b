"""Nothing acknowledged is lost (issue 9, findings 1, 3, 4): a disk buffer
that cannot write turns into backpressure or an explicit refusal, never an
ack for an event it dropped; an HTTP 202 means the batch is in the disk
buffer's file; a disk buffer with room takes HTTP ingest while its output is
down.

The disk-full cases mount a small tmpfs (tests run as root) and put the disk
buffer on it with the default max_bytes (1 GiB), so the filesystem fills long
before the spool's own limit: every write then fails with ENOSPC.

Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_durability.py
"""
import json
import os
import socket
import subprocess
import threading
import time

import msgpack
import pytest

from conftest import (ASAN, Sink, connect, free_port, metric, pack, read_lines,
                      send_events, wait_for)
from helpers_http import curl

BIG = "x" * 1000


def mount_tmpfs(path, size):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs",
                        str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs: %s" % r.stderr.decode().strip())


def umount(path):
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs, unmounted at teardown."""
    d = tmp_path / "disk"
    mount_tmpfs(d, "2m")
    yield d
    umount(d)


class AckedProducer:
    """One native connection in ack mode: a thread writes the events (it may
    block when the engine stops reading); read_acks() follows the running
    count until it stops moving."""

    def __init__(self, address, events):
        self.sock = connect(address)
        self.sock.sendall(msgpack.packb({"sluice": 1, "ack": True}))
        self.data = b"".join(pack(e) for e in events)
        self.acked = 0
        self.closed = False
        self.writer = threading.Thread(target=self._write, daemon=True)
        self.writer.start()

    def _write(self):
        try:
            self.sock.sendall(self.data)
        except OSError:
            pass

    def read_acks(self, quiet=1.5, timeout=30, until=None):
        """The last ack read once `quiet` seconds passed without one (the
        engine stopped acking), or once `until` events are acked: a caller
        that knows every event will be acked waits for that, not for a
        pause, which a loaded machine can make in the middle of the flow."""
        up = msgpack.Unpacker()
        self.sock.settimeout(quiet)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (until is None or self.acked < until):
            # the first ack may be slow on a loaded machine (a sync in the
            # threadpool); after it, `quiet` seconds without one end the wait
            self.sock.settimeout(quiet if self.acked and until is None else
                                 max(0.1, deadline - time.monotonic()))
            try:
                d = self.sock.recv(4096)
            except socket.timeout:
                break  # no progress for `quiet` seconds
            except OSError:
                self.closed = True
                break
            if not d:
                self.closed = True
                break
            up.feed(d)
            for n in up:
                assert isinstance(n, int) and n >= self.acked
                self.acked = n
        return self.acked

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def disk_config(port, sink_port, path, when_full="block", fsync="never",
                admin=None, http=None, max_events=20, spill=False):
    inputs = ['{ name = "in", type = "tcp", listen = "127.0.0.1:%d" }' % port]
    if http:
        inputs.append('{ name = "web", type = "http", listen = "127.0.0.1:%d" }'
                      % http)
    return """return {
  inputs = { %s },
  outputs = { { name = "out", type = "tcp", address = "127.0.0.1:%d",
                retry = { initial_ms = 20, max_ms = 100 },
                queue = { max_events = %d, when_full = "%s" },
                buffer = { %spath = "%s", fsync = "%s" } } },
  routes = { { topics = "*", to = "out" } },
  shutdown_timeout = 2,
  %s
}""" % (", ".join(inputs), sink_port, max_events,
        "spill" if spill else when_full, "" if spill else 'type = "disk", ',
        path, fsync,
        'admin = { listen = "127.0.0.1:%d" },' % admin if admin else "")


def stopped_clean(eng):
    """Stop; a producer still held by a disk that has no room yet (space of
    delivered events comes back only when its segment goes) may make the
    drain time out, but nothing may be lost from memory."""
    if eng.stop() != 0:
        line = eng.wait_log("shutdown_timeout reached; exiting with events "
                            "undelivered")
        assert line["lost_events"] == 0, line


def payload_ids(events):
    return [e["payload"][0] for e in events]


@pytest.mark.parametrize("mode", ["disk", "disk-fsync-always", "spill"])
def test_disk_full_block_never_acks_an_event_it_could_not_write(sluice, small_disk,
                                                                mode):
    port, down = free_port(), free_port()
    eng = sluice(disk_config(port, down, small_disk / "buf", spill=mode == "spill",
                             fsync="always" if "always" in mode else "never"))
    n = 4000  # ~4 MB: twice what the 2 MiB tmpfs holds
    p = AckedProducer("127.0.0.1:%d" % port,
                      [{"topic": "t", "payload": [i, BIG]} for i in range(n)])
    acked = p.read_acks()
    print("disk full, block, %s: sent %d, acked %d" % (mode, n, acked))
    assert 0 < acked < n, "the 2 MiB disk cannot hold %d events" % n
    line = eng.wait_log("disk buffer cannot write; waiting (backpressure)")
    assert line["output"] == "out" and "No space left" in line["error"]
    assert str(small_disk / "buf") in line["path"]
    with Sink(port=down) as sink:
        got = sink.wait(acked, timeout=20)
        delivered = set(payload_ids(got))
        missing = set(range(acked)) - delivered
        print("disk full, block, %s: acked %d, delivered %d, acked and lost %d"
              % (mode, acked, len(delivered), len(missing)))
        assert not missing, "acked, never delivered: %d events" % len(missing)
        p.close()
        stopped_clean(eng)


def test_disk_full_drop_policy_refuses_and_closes_instead_of_acking(sluice, small_disk):
    port, down, admin = free_port(), free_port(), free_port()
    eng = sluice(disk_config(port, down, small_disk / "buf",
                             when_full="drop_newest", admin=admin))
    n = 4000
    p = AckedProducer("127.0.0.1:%d" % port,
                      [{"topic": "t", "payload": [i, BIG]} for i in range(n)])
    acked = p.read_acks()
    print("disk full, drop_newest: sent %d, acked %d, closed %s"
          % (n, acked, p.closed))
    assert 0 < acked < n
    assert p.closed, "the refused producer is told by a closed connection"
    refused = metric("127.0.0.1:%d" % admin, "sluice_disk_buffer_refused_total",
                     output="out")
    assert refused >= 1
    # the refusal is logged where it was found: at submit (the event) or
    # when the producer's ack was due (the acknowledgement); either way the
    # producer was told by the closed connection above, never by an ack
    refusals = ("disk buffer cannot write; event refused",
                "disk buffer cannot write; acknowledgement refused")
    wait_for(lambda: any(eng.find_logs(m) for m in refusals), 5,
             what="a disk-buffer refusal logged (stderr:\n%s)"
             % eng.stderr()[-3000:])
    with Sink(port=down) as sink:
        got = sink.wait(acked, timeout=20)
        assert set(range(acked)) <= set(payload_ids(got))
        p.close()
        stopped_clean(eng)


def test_http_202_in_front_of_a_full_disk_is_never_sent_for_lost_events(sluice, small_disk):
    port, down, web = free_port(), free_port(), free_port()
    eng = sluice(disk_config(port, down, small_disk / "buf",
                             when_full="drop_newest", http=web))
    accepted, refused, i = [], 0, 0
    for _ in range(40):  # 40 batches of 100 events of 1 KB: 4 MB
        batch = [{"topic": "t", "payload": [i + k, BIG]} for k in range(100)]
        r = curl("http://127.0.0.1:%d/v1/events" % web, data=json.dumps(batch),
                 content_type="application/json")
        if r.status == 202:
            accepted.extend(range(i, i + 100))
        else:
            assert r.status == 503, r
            assert "disk buffer" in r.json()["error"], r
            refused += 1
        i += 100
    print("http, disk full: batches accepted %d, refused %d"
          % (len(accepted) // 100, refused))
    assert accepted and refused
    with Sink(port=down) as sink:
        wait_for(lambda: set(accepted) <= set(payload_ids(sink.events)), 20,
                 what="every accepted event at the sink")
        assert eng.stop() == 0


def test_http_202_survives_kill9_with_a_disk_buffer(sluice, tmp_path):
    port, down, web = free_port(), free_port(), free_port()
    # a memory queue of 5: records past it stay in the spool, and are not
    # read back (which would write them out) before the kill
    # (drop_newest: a full disk would drop, not block; here it never fills)
    eng = sluice(disk_config(port, down, tmp_path / "buf", http=web,
                             max_events=5, when_full="drop_newest"))
    accepted = []
    for b in range(20):
        batch = [{"topic": "t", "payload": [b * 10 + k, "x"]} for k in range(10)]
        r = curl("http://127.0.0.1:%d/v1/events" % web, data=json.dumps(batch),
                 content_type="application/json")
        assert r.status == 202, r
        accepted.extend(range(b * 10, b * 10 + 10))
    eng.kill()  # right after the last 202: nothing had time to be flushed
    with Sink(port=down) as sink:
        eng = eng.restart()
        eng.wait_log("disk buffer replays undelivered events")
        try:
            wait_for(lambda: set(accepted) <= set(payload_ids(sink.events)),
                     10, what="every event answered 202 at the sink")
        finally:
            print("http 202 then kill -9: accepted %d, delivered after restart "
                  "%d, lost %d" % (len(accepted), len(set(payload_ids(sink.events))),
                                   len(set(accepted) - set(payload_ids(sink.events)))))
        assert eng.stop() == 0


def test_http_ingest_goes_to_the_disk_buffer_while_the_output_is_down(sluice, tmp_path):
    port, down, web = free_port(), free_port(), free_port()
    # the memory queue holds 20 events; the disk buffer plenty more
    eng = sluice(disk_config(port, down, tmp_path / "buf", http=web))
    codes = []
    for b in range(10):
        batch = [{"topic": "t", "payload": [b * 50 + k, "x"]} for k in range(50)]
        r = curl("http://127.0.0.1:%d/v1/events" % web, data=json.dumps(batch),
                 content_type="application/json")
        codes.append(r.status)
    print("http with the output down: %s" % codes)
    assert codes == [202] * 10
    with Sink(port=down) as sink:
        got = sink.wait(500, timeout=20)
        assert sorted(set(payload_ids(got))) == list(range(500))
        assert eng.stop() == 0


def test_disk_buffer_metrics_pass_promtool(sluice, tmp_path):
    port, down, admin = free_port(), free_port(), free_port()
    eng = sluice(disk_config(port, down, tmp_path / "buf", admin=admin))
    p = AckedProducer("127.0.0.1:%d" % port,
                      [{"topic": "t", "payload": [i, "x" * 100]} for i in range(300)])
    assert p.read_acks(until=300) == 300
    p.close()
    import urllib.request
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin) as r:
        text = r.read().decode()
    res = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                         capture_output=True, timeout=30)
    assert res.returncode == 0, (res.stdout + res.stderr).decode() + "\n" + text
    a = "127.0.0.1:%d" % admin
    assert metric(a, "sluice_disk_buffer_backlog_events", output="out") == 300
    assert metric(a, "sluice_disk_buffer_backlog_bytes", output="out") > 300 * 100
    assert metric(a, "sluice_disk_buffer_segments", output="out") >= 1
    assert metric(a, "sluice_disk_buffer_disk_bytes", output="out") > 300 * 100
    for name in ("sluice_disk_buffer_write_errors_total",
                 "sluice_disk_buffer_fsync_errors_total",
                 "sluice_disk_buffer_refused_total",
                 "sluice_disk_buffer_quarantined_records_total",
                 "sluice_disk_buffer_quarantined_bytes_total"):
        assert metric(a, name, output="out") == 0, name
    with Sink(port=down) as sink:
        sink.wait(300, timeout=20)
        wait_for(lambda: metric(a, "sluice_disk_buffer_backlog_events",
                                output="out") == 0, 10, what="backlog 0")
    assert eng.stop() == 0


# ---- finding 6: the file output under allocation failures -------------------

FAIL_REALLOC = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
/* realloc above SHIM_MAX bytes fails: an allocation failure on demand */
void *realloc(void *p, size_t n) {
  static void *(*real)(void *, size_t);
  static size_t max;
  if (!real) {
    const char *e = getenv("SHIM_MAX");
    real = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
    max = e ? strtoull(e, 0, 10) : (size_t)-1;
  }
  if (n > max) {
    errno = ENOMEM;
    return NULL;
  }
  return real(p, n);
}
"""


@pytest.mark.skipif(ASAN, reason="LD_PRELOAD cannot come before the ASan runtime")
def test_file_output_never_counts_an_event_it_could_not_add_to_a_batch(sluice, tmp_path):
    shim = tmp_path / "fail_realloc.so"
    src = tmp_path / "fail_realloc.c"
    src.write_text(FAIL_REALLOC)
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(src),
                    "-ldl"], check=True)
    port = free_port()
    # a batch of 1024 events of 1 KB needs 1 MB: past 256 KiB it cannot grow
    eng = sluice("""return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "f", type = "file", path = "out.ndjson" } },
  routes = { { topics = "*", to = "f" } },
}""" % port, env={"LD_PRELOAD": str(shim), "SHIM_MAX": str(256 << 10)})
    n = 3000
    send_events("127.0.0.1:%d" % port, [{"topic": "t", "payload": [i, BIG]}
                                         for i in range(n)])
    assert eng.stop() == 0
    lines = read_lines(eng.path("out.ndjson"))
    written = [json.loads(l)["payload"][0] for l in lines if l]
    (totals,) = eng.find_logs("output totals", output="f")
    print("file output, realloc > 256 KiB fails: sent %d, in the file %d "
          "(%d empty lines), counted delivered %d"
          % (n, len(written), len(lines) - len(written), totals["delivered"]))
    assert totals["delivered"] == len(lines) == n
    assert written == list(range(n))
