"""The forward input against senders that lie or stall, from outside: a
sender that never reads its acks, gzip bombs, deep option maps. Each is
bounded: the engine's memory stays flat, other connections go on.
Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_forward_hostile.py
"""
import gzip
import socket
import threading
import time

from conftest import connect, wait_for
from test_forward import closed_by_peer, forward_engine, packb, read_answers


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_a_sender_that_never_reads_its_acks_is_paused_not_buffered(sluice):
    """Each chunk's ack echoes its chunk id: a sender with 4 KiB ids that
    never reads would make the engine queue acks without bound. Once the
    unsent acks pass a bound the engine stops reading that connection; a
    sender that then reads gets every ack."""
    eng = forward_engine(sluice, outputs=[{"name": "out", "type": "null"}])
    pid = eng.proc.pid
    s = connect(eng.address)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    chunk = "c" * 4000
    frame = b"".join(packb(["t", 1, {"n": i}, {"chunk": chunk + str(i)}])
                     for i in range(1000))  # ~4 MB of acks per 1000 frames
    base = rss_kib(pid)
    sent = [0]

    def send():
        try:
            for _ in range(100):  # up to ~400 MB of acks
                s.sendall(frame)
                sent[0] += 1000
        except OSError as e:
            sent.append(e)
    s.settimeout(5)  # no progress for 5 s: the engine stopped reading
    t = threading.Thread(target=send, daemon=True)
    t.start()
    t.join(60)
    grown = rss_kib(pid) - base
    print("frames sent %d, engine grew %d KiB" % (sent[0], grown), sent[1:])
    assert sent[0] < 100000 and isinstance(sent[-1], socket.timeout), \
        "the engine took every frame: it queued their acks"
    assert grown < 64 * 1024, "the engine grew %d KiB" % grown
    # the sender reads now: its acks come, in order, and it goes on
    # (a read may hold more than 50: every one must be the next in order)
    acks = [a["ack"] for a in read_answers(s, 50, timeout=20)]
    assert len(acks) >= 50, "%d acks came" % len(acks)
    assert acks == [chunk + str(i) for i in range(len(acks))]
    s.close()
    with connect(eng.address) as other:
        other.sendall(packb(["t", 1, {"n": 1}, {"chunk": "x"}]))
        assert read_answers(other, 1) == [{"ack": "x"}]


def test_a_tag_longer_than_1024_bytes_is_refused_before_any_entry(sluice):
    """The tag is every entry's topic: a long one over many tiny entries
    would multiply the frame (a 4 MiB tag and 1M entries: 4 TB of events)."""
    eng = forward_engine(sluice)
    entries = b"".join(packb([1, {}]) for _ in range(100000))
    with connect(eng.address) as s:
        s.sendall(packb(["t" * 1025, entries, {"chunk": "long"}]))
        assert closed_by_peer(s)
    line = eng.wait_log("bad forward input; closing connection")
    assert line["error"] == "tag longer than 1024 bytes", line
    with connect(eng.address) as s:
        s.sendall(packb(["t" * 1024, packb([1, {"k": 1}]), {"chunk": "ok"}]))
        assert read_answers(s, 1) == [{"ack": "ok"}]
    wait_for(lambda: eng.path("out.ndjson").exists() and
             eng.path("out.ndjson").read_text().count("\n") == 1, timeout=10,
             what="the one event of the 1024-byte tag")
