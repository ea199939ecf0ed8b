"""Red team on worker/peer.c's two fixes for acked outputs (tcp/unix with
ack = true): a failed write (the peer reset) lets the read side take the
acks the peer sent before its reset, and the watchdog polls once more
before it gives up. The peer here acks every whole event it read, makes
sure its last ack left its socket, then resets while events keep flowing;
the events come in one burst, so the engine is busy when the reset comes
and meets it in a write before it polls (the write_error path: seen about
once a run for tcp, in instrumented runs) as well as in a read. The exact
ledger: every event reaches the peer whole exactly once over all its
connections (an acked event is never sent again, an unacked one always
is), each reset is one failure, and the engine drains and exits."""
import fcntl
import socket
import struct
import termios
import time
from collections import Counter

import msgpack
import pytest

from conftest import connect, metric, pack, short_path, wait_for
from test_outputs_red import Peer, decode_all, events, idx, start


def outq(c):
    """Bytes of c's sends the other side's kernel has not taken yet."""
    return struct.unpack("i", fcntl.ioctl(c.fileno(), termios.TIOCOUTQ,
                                          b"\0\0\0\0"))[0]


def chunks(peer, c):
    """What c receives, read by read, until the peer stops or c ends."""
    c.settimeout(0.05)
    while not peer.stop.is_set():
        try:
            d = c.recv(1 << 16)
        except socket.timeout:
            continue
        except OSError:
            return
        if not d:
            return
        yield d


def reset_once_acked(c, unix=False):
    """Reset c (SO_LINGER 0) once its last ack left for the engine's kernel
    (a unix socket's send is in the engine's queue already)."""
    if unix:
        return
    end = time.monotonic() + 5
    while outq(c) and time.monotonic() < end:
        time.sleep(0.001)
    assert outq(c) == 0, "the last ack did not leave"
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def ack_all(limit=None, unix=False, tls=None):
    """A sluice-like ack peer that acks every whole event it read, after
    each read; with limit, once it read that many: its last ack sent and
    taken by the engine's kernel (tcp), it resets the connection. tls: the
    server's ssl context."""
    def b(peer, c, buf):
        if tls:
            c.settimeout(5)
            c = tls.wrap_socket(c, server_side=True)
        try:
            serve(peer, c, buf)
        finally:
            c.close()

    def serve(peer, c, buf):
        up = msgpack.Unpacker(raw=False, strict_map_key=False)
        count, hello = 0, False
        for d in chunks(peer, c):
            up.feed(d)
            got = 0
            for ev in up:
                if not hello:
                    assert ev == {"sluice": 1, "ack": True}, ev
                    hello = True
                    continue
                buf += pack(ev)
                got += 1
            if not got:
                continue
            count += got
            c.sendall(msgpack.packb(count))
            if limit and count >= limit:
                reset_once_acked(c, unix)
                return  # closed with the engine's bytes unread: a reset
    return b


LIMITS = [1, 40, 64, 65, 333, 900]


def tls_server(tmp_path):
    """A server context for localhost and the client keys that trust it."""
    import ssl
    from test_tls import Certs
    certs = Certs(tmp_path)
    certs.ca("ca", "red CA")
    certs.leaf("server", "red", "DNS:localhost,IP:127.0.0.1")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.__getattr__("server.pem"),
                        certs.__getattr__("server.key"))
    return ctx, ', tls = { ca_file = "%s" }' % certs.__getattr__("ca.pem")


@pytest.mark.parametrize("kind,timeout_ms", [("tcp", 30000), ("tcp", 0),
                                             ("unix", 30000), ("tls", 30000)])
def test_acked_events_are_never_sent_again_after_resets_mid_stream(
        sluice, tmp_path, kind, timeout_ms):
    unix = kind == "unix"
    path = short_path("peer.sock") if unix else None
    ctx, tls_keys = tls_server(tmp_path) if kind == "tls" else (None, "")
    peer = Peer([ack_all(k, unix, ctx) for k in LIMITS] +
                [ack_all(None, unix, ctx)], unix_path=path, rcvbuf=1 << 16)
    try:
        where = ('path = "%s"' % path) if unix else \
            ('address = "%s"%s' % (peer.address, tls_keys))
        eng = start(sluice, 'type = "%s", %s, ack = true, batch_events = 64'
                    % ("unix" if unix else "tcp", where), extra=", timeout_ms = %d" % timeout_ms)
        n = 6000
        evs = events(n, pad=300)
        with connect(eng.addr) as s:
            s.sendall(b"".join(pack(e) for e in evs))
        wait_for(lambda: metric(eng.admin, "sluice_output_events_total",
                                output="out") == n, 30,
                 what="every event acked")
        time.sleep(0.2)  # a late duplicate would show up now
        assert not peer.errors, peer.errors
        assert len(peer.conns) == len(LIMITS) + 1
        got = []
        for raw in peer.conns:
            got += idx(decode_all(bytes(raw)))
        dup = sorted(i for i, k in Counter(got).items() if k > 1)
        assert not dup, "acked, then sent again: %r" % dup[:10]
        assert sorted(got) == list(range(n))
        assert metric(eng.admin, "sluice_output_errors_total",
                      output="out") == len(LIMITS)
        assert metric(eng.admin, "sluice_output_events_total",
                      output="out") == n
        assert eng.stop() == 0
    finally:
        peer.close()


def forward_ack_all(limit=None):
    """A Fluent forward peer: answers every whole PackedForward frame it
    read with {"ack": chunk}; with limit, once it read that many records:
    its last ack taken by the engine's kernel, it resets."""
    def b(peer, c, buf):
        up = msgpack.Unpacker(raw=False, strict_map_key=False)
        count = 0
        for d in chunks(peer, c):
            up.feed(d)
            acks = b""
            for tag, entries, opt in up:
                ents = msgpack.Unpacker(raw=False, strict_map_key=False)
                ents.feed(entries)
                for _t, record in ents:
                    buf += pack({"payload": record})
                    count += 1
                acks += msgpack.packb({"ack": opt["chunk"]})
            if not acks:
                continue
            c.sendall(acks)
            if limit and count >= limit:
                reset_once_acked(c)
                return
    return b


def test_forward_acked_frames_are_never_sent_again_after_resets_mid_stream(
        sluice):
    """The same exact ledger for the forward output (require_ack): every
    frame it wrote whole is acked before the reset, so no record reaches
    the peer twice and none is missing."""
    peer = Peer([forward_ack_all(k) for k in LIMITS] + [forward_ack_all()],
                rcvbuf=1 << 16)
    try:
        eng = start(sluice, 'type = "forward", address = "%s", '
                    'batch_events = 64' % peer.address)
        n = 6000
        evs = events(n, pad=300)
        with connect(eng.addr) as s:
            s.sendall(b"".join(pack(e) for e in evs))
        wait_for(lambda: metric(eng.admin, "sluice_output_events_total",
                                output="out") == n, 30,
                 what="every event acked")
        time.sleep(0.2)
        assert not peer.errors, peer.errors
        assert len(peer.conns) == len(LIMITS) + 1
        got = []
        for raw in peer.conns:
            got += idx(decode_all(bytes(raw)))
        dup = sorted(i for i, k in Counter(got).items() if k > 1)
        assert not dup, "acked, then sent again: %r" % dup[:10]
        assert sorted(got) == list(range(n))
        assert metric(eng.admin, "sluice_output_errors_total",
                      output="out") == len(LIMITS)
        assert eng.stop() == 0
    finally:
        peer.close()
