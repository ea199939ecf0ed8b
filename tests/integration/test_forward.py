"""The Fluent forward protocol in and out (issue 13 item 2), through the real
binary: the npm package fluent-logger as a real client of the forward
input, sluice -> sluice over forward with acks and kill -9 of the receiver,
CompressedPackedForward, the shared-key handshake, TLS and bad input.
Frames the real client cannot send (compressed bombs, malformed frames) are
built here with python3-msgpack.

Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_forward.py
fluent-logger is installed once into $SLUICE_NODE_DIR (default
/tmp/sluice-node) with `npm install --prefix DIR fluent-logger`.
"""

import gzip
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time

import msgpack
import pytest

from conftest import (ROOT, connect, free_port, read_ndjson, wait_for,
                      wait_lines)

NODE_DIR = os.environ.get("SLUICE_NODE_DIR", "/tmp/sluice-node")
CLIENT = str(ROOT / "tests" / "integration" / "forward_client.js")


@pytest.fixture(scope="module")
def fluent_logger():
    """The directory whose node_modules holds fluent-logger."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed")
    mod = os.path.join(NODE_DIR, "node_modules", "fluent-logger")
    if not os.path.isdir(mod):
        os.makedirs(NODE_DIR, exist_ok=True)
        r = subprocess.run(["npm", "install", "--prefix", NODE_DIR,
                            "--no-audit", "--no-fund", "fluent-logger"],
                           capture_output=True, text=True, timeout=180)
        if r.returncode != 0 or not os.path.isdir(mod):
            pytest.skip("npm registry unreachable; cannot install "
                        "fluent-logger: %s" % r.stderr[-500:])
    return os.path.join(NODE_DIR, "node_modules")


def node_client(modules, timeout=60, **opts):
    env = dict(os.environ, NODE_PATH=modules)
    r = subprocess.run(["node", CLIENT, json.dumps(opts)], capture_output=True,
                       text=True, timeout=timeout, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def forward_engine(sluice, extra_in=None, outputs=None, **top):
    port = free_port()
    inp = {"name": "fwd", "type": "forward", "listen": "127.0.0.1:%d" % port}
    inp.update(extra_in or {})
    cfg = {"inputs": [inp],
           "outputs": outputs or [{"name": "out", "type": "file",
                                   "path": "out.ndjson"}],
           "routes": [{"topics": "*", "to": "out"}]}
    cfg.update(top)
    eng = sluice(cfg)
    eng.port = port
    eng.address = "127.0.0.1:%d" % port
    return eng


# ---- frames built by hand (what no real client sends) ---------------------

def packb(obj):
    return msgpack.packb(obj, use_bin_type=True)


def event_time(sec, nsec):
    return msgpack.ExtType(0, sec.to_bytes(4, "big") + nsec.to_bytes(4, "big"))


def entries(records, t=1700000000):
    return b"".join(packb([t, r]) for r in records)


def read_answers(sock, n, timeout=10):
    """n msgpack objects the engine wrote back."""
    up = msgpack.Unpacker(raw=False)
    out = []
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        data = sock.recv(65536)
        if not data:
            break
        up.feed(data)
        out.extend(up)
    return out


def closed_by_peer(sock, timeout=10):
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


# ---- the input with a real client ------------------------------------------

@pytest.mark.parametrize("mode", ["Message", "PackedForward",
                                  "CompressedPackedForward"])
def test_fluent_logger_events_arrive_acked_with_tag_record_and_time(
        sluice, fluent_logger, mode):
    eng = forward_engine(sluice)
    n = 40
    got = node_client(fluent_logger, port=eng.port, n=n, mode=mode, ack=True,
                      eventTime=True, tag="app")
    assert got == {"ok": n, "errors": []}, got
    wait_lines(eng.path("out.ndjson"), n)
    evs = read_ndjson(eng.path("out.ndjson"))
    assert sorted(e["payload"]["i"] for e in evs) == list(range(n))
    for e in evs:
        i = e["payload"]["i"]
        assert e["topic"] == "app.ev"
        assert e["payload"] == {"i": i, "msg": "event %d" % i,
                                "nested": {"list": [1, "two", None]}}
        # EventTime(1700000000, i ms) -> ns
        assert e["time"] == 1700000000 * 10**9 + i * 10**6, e
    assert eng.stop() == 0


def test_fluent_logger_integer_time_and_tag_prefix_make_time_and_topic(
        sluice, fluent_logger):
    eng = forward_engine(sluice, {"tag_prefix": "fluent."})
    before = int(time.time())
    got = node_client(fluent_logger, port=eng.port, n=5, ack=True, tag="web",
                      label="access")
    assert got["ok"] == 5, got
    evs = read_ndjson(wait_lines(eng.path("out.ndjson"), 5) and
                      eng.path("out.ndjson"))
    for e in evs:
        assert e["topic"] == "fluent.web.access"
        assert e["time"] % 10**9 == 0  # whole seconds, as sent
        assert before - 1 <= e["time"] // 10**9 <= int(time.time()) + 1


def test_raw_frames_of_every_mode_are_answered_with_their_chunk(sluice):
    eng = forward_engine(sluice)
    with connect(eng.address) as s:
        s.sendall(packb(["m", event_time(1, 5), {"k": "message"},
                         {"chunk": "c1"}]))
        s.sendall(packb(["f", [[2, {"k": "forward1"}], [3, {"k": "forward2"}]],
                         {"chunk": "c2"}]))
        s.sendall(packb(["p", entries([{"k": "packed"}], t=4),
                         {"chunk": "c3", "size": 1}]))
        s.sendall(packb(["z", gzip.compress(entries([{"k": "gz1"}], t=5)) +
                         gzip.compress(entries([{"k": "gz2"}], t=6)),
                         {"chunk": "c4", "compressed": "gzip"}]))
        s.sendall(packb(["noack", 7.5, {"k": "float time"}]))
        s.sendall(packb(["last", 8, {"k": "last"}, {"chunk": "c5"}]))
        answers = read_answers(s, 5)
    assert answers == [{"ack": "c%d" % i} for i in range(1, 6)]
    evs = read_ndjson(wait_lines(eng.path("out.ndjson"), 8) and
                      eng.path("out.ndjson"))
    assert [(e["topic"], e["payload"]["k"], e["time"]) for e in evs] == [
        ("m", "message", 10**9 + 5), ("f", "forward1", 2 * 10**9),
        ("f", "forward2", 3 * 10**9), ("p", "packed", 4 * 10**9),
        ("z", "gz1", 5 * 10**9), ("z", "gz2", 6 * 10**9),
        ("noack", "float time", 7500000000), ("last", "last", 8 * 10**9)]


# ---- bad input -------------------------------------------------------------

BOMB = gzip.compress(b"\x00" * (64 << 20))  # 64 MiB of zeros, ~64 KiB sent

BAD = [
    ("not an array", packb({"tag": "x"}), "frame is not an array"),
    ("tag not a string", packb([1, 2, {"a": 1}]), "tag is not a string"),
    ("record not a map", packb(["t", 1, [1, 2]]), "record is not a map"),
    ("time a string", packb(["t", [["noon", {"a": 1}]]]), "time is not"),
    ("str entries", packb(["t", "noon", {"a": 1}]),
     "entry is not a [time, record] array"),
    ("bad event time", packb(["t", msgpack.ExtType(0, b"\x00" * 4),
                              {"a": 1}]), "time is not"),
    ("forward count wrong", packb(["t", [[1, {"a": 1}], 5]]), "entry 1"),
    ("packed garbage", packb(["t", b"\x93\x01", {"chunk": "x"}]), "entry 0"),
    ("not gzip", packb(["t", b"plain", {"compressed": "gzip"}]),
     "not valid gzip"),
    ("gzip bomb", packb(["t", BOMB, {"compressed": "gzip", "chunk": "b"}]),
     "inflate beyond max_chunk_bytes"),
    ("oversized", packb(["t", b"x" * (2 << 20)]),
     "frame larger than max_chunk_bytes"),
    ("bad option", packb(["t", 1, {"a": 1}, {"chunk": 5}]),
     "option chunk is not"),
    ("not msgpack", b"\xc1", "0xc1"),
]


@pytest.mark.parametrize("name,frame,why", BAD, ids=[b[0] for b in BAD])
def test_bad_frames_close_only_their_connection_with_a_log_line(
        sluice, name, frame, why):
    eng = forward_engine(sluice, {"max_chunk_bytes": "1MiB"})
    good = connect(eng.address)  # another sender, open all along
    with connect(eng.address) as s:
        try:
            s.sendall(frame)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while a large frame was still on its way
        assert closed_by_peer(s), "the engine kept the connection open"
        assert read_answers_nonblocking(s) == []  # no ack for a bad chunk
    line = eng.wait_log("bad forward input; closing connection")
    assert why in line["error"], line
    assert line["input"] == "fwd" and line["peer"].startswith("127.0.0.1:")
    good.sendall(packb(["ok", 1, {"still": "served"}, {"chunk": "g"}]))
    assert read_answers(good, 1) == [{"ack": "g"}]
    good.close()
    evs = read_ndjson(wait_lines(eng.path("out.ndjson"), 1) and
                      eng.path("out.ndjson"))
    assert [e["topic"] for e in evs] == ["ok"]  # nothing of the bad frame
    assert eng.stop() == 0


def read_answers_nonblocking(sock):
    sock.setblocking(False)
    try:
        data = sock.recv(65536)
    except OSError:
        data = b""
    up = msgpack.Unpacker(raw=False)
    up.feed(data)
    return list(up)


def test_truncated_frame_at_close_is_logged_and_nothing_is_taken(sluice):
    eng = forward_engine(sluice)
    frame = packb(["t", [[1, {"a": 1}], [2, {"b": 2}]], {"chunk": "x"}])
    with connect(eng.address) as s:
        s.sendall(frame[:-3])
    line = eng.wait_log("connection closed inside a forward frame; partial "
                        "frame discarded")
    assert line["bytes"] == len(frame) - 3
    assert not os.path.exists(eng.path("out.ndjson")) or \
        read_ndjson(eng.path("out.ndjson")) == []


def test_slow_sender_is_cut_after_event_timeout_ms_and_others_go_on(sluice):
    eng = forward_engine(sluice, {"event_timeout_ms": 300})
    frame = packb(["t", 1, {"a": 1}, {"chunk": "x"}])
    slow = connect(eng.address)
    slow.sendall(frame[:5])  # and never the rest
    with connect(eng.address) as s:
        s.sendall(packb(["t", 1, {"fast": 1}, {"chunk": "f"}]))
        assert read_answers(s, 1) == [{"ack": "f"}]
    assert closed_by_peer(slow, timeout=10)
    eng.wait_log("forward frame not complete within event_timeout_ms; "
                 "partial frame discarded")
    slow.close()


# ---- sluice -> sluice over forward -------------------------------------------

def receiver(sluice, tmp_path, port=None, extra_in=None, disk=True):
    """A: forward input -> file output, behind a disk buffer (an ack then
    means the events are in its file, as its fsync policy promises)."""
    port = port or free_port()
    out = {"name": "out", "type": "file", "path": "out.ndjson"}
    if disk:
        out["buffer"] = {"type": "disk", "path": str(tmp_path / "a-buf")}
    inp = {"name": "fwd", "type": "forward", "listen": "127.0.0.1:%d" % port}
    inp.update(extra_in or {})
    eng = sluice({"inputs": [inp], "outputs": [out],
                  "routes": [{"topics": "*", "to": "out"}]})
    eng.port = port
    return eng


def sender(sluice, tmp_path, peer_port, extra_out=None, disk=True, **top):
    """B: native tcp input -> forward output to A."""
    port = free_port()
    out = {"name": "out", "type": "forward",
           "address": "127.0.0.1:%d" % peer_port,
           "retry": {"initial_ms": 20, "max_ms": 200, "timeout_ms": 3000},
           "breaker": False}
    if disk:
        out["buffer"] = {"type": "disk", "path": str(tmp_path / "b-buf")}
    out.update(extra_out or {})
    cfg = {"inputs": [{"name": "in", "type": "tcp",
                       "listen": "127.0.0.1:%d" % port}],
           "outputs": [out], "routes": [{"topics": "*", "to": "out"}]}
    cfg.update(top)
    eng = sluice(cfg)
    eng.address = "127.0.0.1:%d" % port
    return eng


def native(i, topic="t"):
    return {"topic": topic, "payload": {"n": i}, "time": 1700000000 * 10**9 + i}


def got_ns(eng):
    path = eng.path("out.ndjson")
    if not os.path.exists(path):
        return []
    return [e["payload"]["n"] for e in read_ndjson(path)]


@pytest.mark.parametrize("require_ack", [True, False])
def test_sluice_to_sluice_keeps_topic_record_and_time(sluice, tmp_path,
                                                      require_ack):
    from conftest import send_events
    a = receiver(sluice, tmp_path, disk=False)
    b = sender(sluice, tmp_path, a.port, {"require_ack": require_ack},
               disk=False)
    evs = [native(i, topic="t%d" % (i % 3)) for i in range(30)]
    evs.append({"topic": "scalar", "payload": "not a map", "time": 5})
    evs.append({"topic": "bare", "time": 6})  # no payload: sent as {}
    send_events(b.address, evs)
    wait_lines(a.path("out.ndjson"), 32)
    from conftest import TEST_WORKERS
    got = read_ndjson(a.path("out.ndjson"))
    if not TEST_WORKERS:  # keyless events keep their order on one worker
        assert [e["payload"] for e in got[:30]] == [e["payload"] for e in evs[:30]]
    got.sort(key=lambda e: e["time"])  # over workers, in any order
    assert [(e["topic"], e["payload"], e["time"]) for e in got[2:]] == [
        (e["topic"], e["payload"], e["time"]) for e in evs[:30]]
    assert got[0]["payload"] == {"payload": "not a map"}
    assert got[0]["topic"] == "scalar" and got[0]["time"] == 5
    assert got[1]["payload"] == {} and got[1]["topic"] == "bare"
    assert b.stop() == 0 and a.stop() == 0
    (totals,) = b.find_logs("output totals", output="out")
    assert totals["delivered"] == 32


def test_kill9_of_the_receiver_loses_nothing_it_acknowledged(sluice, tmp_path):
    import threading
    from conftest import send_events
    a = receiver(sluice, tmp_path)
    b = sender(sluice, tmp_path, a.port, {"batch_events": 200})
    n, step = 6000, 100
    sent = []
    killed = threading.Event()

    def produce():
        for k in range(0, n, step):
            if k == n // 2:
                # the second half goes while A is down: a flow that ran
                # ahead of this thread's kill (a loaded machine, seen under
                # ASan: A had all 6000 when killed) waits here for it
                killed.wait(60)
            send_events(b.address, [native(i) for i in range(k, k + step)])
            sent.append(k)

    t = threading.Thread(target=produce)
    t.start()
    try:
        wait_for(lambda: len(got_ns(a)) >= 300, 20, what="A took some events")
        a.kill()  # while B is still writing frames and waiting for acks
    finally:
        killed.set()
    before = got_ns(a)
    wait_for(lambda: len(sent) * step >= len(before) + 1000, 20,
             what="more events sent while A is down")
    a = a.restart()
    t.join(60)
    try:
        wait_for(lambda: set(got_ns(a)) >= set(range(n)), 60,
                 what="every event at A after its kill -9")
    finally:
        got = got_ns(a)
        print("forward kill -9: %d events, %d at A at the kill, %d lines "
              "after, %d duplicates, %d missing"
              % (n, len(before), len(got), len(got) - len(set(got)),
                 len(set(range(n)) - set(got))))
    assert len(before) < n, "the kill came after everything was delivered"
    assert b.stop() == 0
    (totals,) = b.find_logs("output totals", output="out")
    assert totals["delivered"] >= n


def test_acked_chunks_survive_kill9_of_the_input_with_a_disk_buffer(
        sluice, tmp_path):
    from conftest import Sink
    down = free_port()  # the output's peer is away: events stay in the disk
    eng = forward_engine(sluice, outputs=[{
        "name": "out", "type": "tcp", "address": "127.0.0.1:%d" % down,
        "retry": {"initial_ms": 20, "max_ms": 100},
        "queue": {"max_events": 5, "when_full": "drop_newest"},
        "buffer": {"type": "disk", "path": str(tmp_path / "buf")}}])
    acked = []
    with connect(eng.address) as s:
        for c in range(30):
            recs = [{"n": c * 10 + k} for k in range(10)]
            s.sendall(packb(["t", entries(recs), {"chunk": "c%d" % c}]))
            assert read_answers(s, 1) == [{"ack": "c%d" % c}]
            acked.extend(r["n"] for r in recs)
    eng.kill()  # right after the last ack
    with Sink(port=down) as sink:
        eng = eng.restart()
        wait_for(lambda: set(acked) <= {e["payload"]["n"] for e in sink.events},
                 20, what="every acked event at the sink after kill -9")
        assert eng.stop() == 0


# ---- gzip, shared key ---------------------------------------------------------

def test_compressed_frames_with_a_shared_key_from_the_environment(
        sluice, tmp_path):
    from conftest import send_events
    port = free_port()
    inp = {"name": "fwd", "type": "forward", "listen": "127.0.0.1:%d" % port,
           "shared_key": "${FWD_KEY}", "self_hostname": "receiver-a"}
    a = sluice({"inputs": [inp], "outputs": [{"name": "out", "type": "file",
                                              "path": "out.ndjson"}],
                "routes": [{"topics": "*", "to": "out"}]},
               env={"FWD_KEY": "s3cret"})
    a.port = port
    b = sender(sluice, tmp_path, port, {"compress": "gzip",
                                        "shared_key": "s3cret"}, disk=False)
    send_events(b.address, [native(i) for i in range(500)])
    wait_lines(a.path("out.ndjson"), 500)
    assert sorted(got_ns(a)) == list(range(500))
    assert b.stop() == 0 and a.stop() == 0


def test_a_wrong_shared_key_is_refused_and_both_sides_say_why(sluice, tmp_path):
    from conftest import send_events
    a = receiver(sluice, tmp_path, extra_in={"shared_key": "right"},
                 disk=False)
    b = sender(sluice, tmp_path, a.port, {"shared_key": "wrong"}, disk=False,
               shutdown_timeout=1)
    send_events(b.address, [native(i) for i in range(5)])
    line = a.wait_log("bad forward input; closing connection")
    assert "shared key handshake failed" in line["error"]
    line = b.wait_log("forward peer misbehaves; reconnecting")
    assert "refused the shared key handshake: shared_key mismatch" in \
        line["error"], line
    assert got_ns(a) == []


def test_fluent_logger_shared_key_handshake_good_and_bad(
        sluice, fluent_logger):
    eng = forward_engine(sluice, {"shared_key": "k3y"})
    got = node_client(fluent_logger, port=eng.port, n=10, ack=True,
                      sharedKey="k3y", hostname="app-host")
    assert got == {"ok": 10, "errors": []}, got
    wait_lines(eng.path("out.ndjson"), 10)
    got = node_client(fluent_logger, port=eng.port, n=3, ack=True,
                      sharedKey="nope", wait_ms=2000)
    assert got["ok"] == 0 and got["errors"], got
    line = eng.wait_log("bad forward input; closing connection")
    assert "shared key handshake failed" in line["error"]
    time.sleep(0.2)
    assert len(read_ndjson(eng.path("out.ndjson"))) == 10


def test_a_sender_without_the_handshake_is_refused(sluice):
    eng = forward_engine(sluice, {"shared_key": "k3y"})
    with connect(eng.address) as s:
        helo = read_answers(s, 1)
        assert helo[0][0] == "HELO" and len(helo[0][1]["nonce"]) == 16
        s.sendall(packb(["t", 1, {"a": 1}, {"chunk": "x"}]))
        assert closed_by_peer(s)
    line = eng.wait_log("bad forward input; closing connection")
    assert "PING" in line["error"]


def test_the_handshake_digests_follow_the_spec(sluice):
    """PING and PONG digests computed here from the spec's formulas."""
    eng = forward_engine(sluice, {"shared_key": "k3y",
                                  "self_hostname": "srv"})
    with connect(eng.address) as s:
        (helo,) = read_answers(s, 1)
        nonce = helo[1]["nonce"]
        salt = b"0123456789abcdef"
        digest = hashlib.sha512(salt + b"cli" + nonce + b"k3y").hexdigest()
        s.sendall(packb(["PING", "cli", salt, digest, "", ""]))
        (pong,) = read_answers(s, 1)
        assert pong[:4] == ["PONG", True, "", "srv"]
        assert pong[4] == hashlib.sha512(salt + b"srv" + nonce +
                                         b"k3y").hexdigest()
        s.sendall(packb(["t", 1, {"a": 1}, {"chunk": "x"}]))
        assert read_answers(s, 1) == [{"ack": "x"}]


# ---- acks that do not come -----------------------------------------------------

def test_an_ack_that_never_comes_is_retried_after_timeout_ms(sluice, tmp_path):
    """A Python receiver that reads the first connection's frames without
    answering, then acks on the next: the events are sent again (at least
    once; the first copies count as lost acks)."""
    import threading
    from conftest import send_events
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    frames = []  # (connection number, tag, records)

    def serve():
        for conn_no in range(2):
            c, _ = srv.accept()
            up = msgpack.Unpacker(raw=False)
            c.settimeout(10)
            try:
                while True:
                    data = c.recv(65536)
                    if not data:
                        break
                    up.feed(data)
                    for f in up:
                        recs = [r for _, r in msgpack.Unpacker(
                            __import__("io").BytesIO(f[1]), raw=False,
                            ext_hook=lambda code, b: (code, b))]
                        frames.append((conn_no, f[0], recs, f[2]))
                        if conn_no == 1:
                            c.sendall(packb({"ack": f[2]["chunk"]}))
            except socket.timeout:
                pass
            if conn_no == 1:
                time.sleep(1)
            c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    b = sender(sluice, tmp_path, port, {"retry": {
        "initial_ms": 20, "max_ms": 100, "timeout_ms": 500}}, disk=False)
    send_events(b.address, [native(i) for i in range(3)])
    line = b.wait_log("forward peer unreachable; reconnecting with backoff")
    assert "no answer from the peer within 500 ms (ack)" in line["error"]
    wait_for(lambda: any(f[0] == 1 for f in frames), 10,
             what="the frame again on the second connection")
    firsts = [f for f in frames if f[0] == 0]
    again = [f for f in frames if f[0] == 1]
    assert [r["n"] for f in firsts for r in f[2]] == [0, 1, 2]
    assert [r["n"] for f in again for r in f[2]] == [0, 1, 2]
    assert firsts[0][3]["size"] == 3 and firsts[0][3]["compressed"] == "text"
    assert b.stop() == 0
    (totals,) = b.find_logs("output totals", output="out")
    assert totals["delivered"] == 3
    srv.close()


# ---- TLS -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def fwd_certs(tmp_path_factory):
    from test_tls import Certs
    c = Certs(tmp_path_factory.mktemp("fwd-certs"))
    c.ca("ca", "forward test CA")
    c.leaf("server", "receiver", "DNS:localhost,IP:127.0.0.1")
    return c


def test_fluent_logger_over_tls(sluice, fluent_logger, fwd_certs):
    eng = forward_engine(sluice, {"tls": {
        "cert_file": fwd_certs.__getattr__("server.pem"),
        "key_file": fwd_certs.__getattr__("server.key")}})
    got = node_client(fluent_logger, port=eng.port, n=20, ack=True,
                      mode="PackedForward", ca=fwd_certs.__getattr__("ca.pem"))
    assert got == {"ok": 20, "errors": []}, got
    wait_lines(eng.path("out.ndjson"), 20)
    # plaintext on the TLS port is refused by the handshake, not parsed
    with connect(eng.address) as s:
        s.sendall(packb(["t", 1, {"a": 1}, {"chunk": "x"}]))
        assert closed_by_peer(s)
    assert len(read_ndjson(eng.path("out.ndjson"))) == 20


def test_sluice_to_sluice_over_tls_with_a_shared_key(sluice, tmp_path,
                                                     fwd_certs):
    from conftest import send_events
    a = receiver(sluice, tmp_path, disk=False, extra_in={
        "shared_key": "k", "tls": {
            "cert_file": fwd_certs.__getattr__("server.pem"),
            "key_file": fwd_certs.__getattr__("server.key")}})
    b = sender(sluice, tmp_path, a.port, {
        "shared_key": "k", "compress": "gzip",
        "tls": {"ca_file": fwd_certs.__getattr__("ca.pem")}}, disk=False)
    send_events(b.address, [native(i) for i in range(100)])
    wait_lines(a.path("out.ndjson"), 100)
    assert sorted(got_ns(a)) == list(range(100))
    assert b.stop() == 0 and a.stop() == 0


# ---- the example -----------------------------------------------------------------

def test_the_forward_example_runs_app_shipper_and_receiver(sluice, fluent_logger):
    from conftest import send_events
    ex = ROOT / "examples" / "forward"
    fport, sport = free_port(), free_port()
    env = {"FORWARD_KEY": "example-key",
           "FORWARD_LISTEN": "127.0.0.1:%d" % fport,
           "FORWARD_PEER": "127.0.0.1:%d" % fport,
           "SHIPPER_LISTEN": "127.0.0.1:%d" % sport}
    recv = sluice((ex / "receiver.conf.lua").read_text(), env=env)
    ship = sluice((ex / "shipper.conf.lua").read_text(), env=env)
    r = subprocess.run(["node", str(ex / "app.js")], capture_output=True,
                       text=True, timeout=60,
                       env=dict(os.environ, NODE_PATH=fluent_logger,
                                FORWARD_PORT=str(fport),
                                FORWARD_KEY="example-key"))
    assert r.returncode == 0, r
    assert r.stdout.splitlines()[-1] == "3 events acked", r.stdout
    send_events("127.0.0.1:%d" % sport, [{"topic": "orders",
                                          "payload": {"id": 7}}])
    wait_lines(recv.path("var/fluent.ndjson"), 4)
    got = read_ndjson(recv.path("var/fluent.ndjson"))
    assert sorted(e["topic"] for e in got) == ["fluent.app.login"] * 3 + [
        "fluent.orders"]
    assert {e["payload"].get("user") for e in got} == {"ana", "bo", "cy",
                                                       None}
    assert ship.stop() == 0 and recv.stop() == 0


def test_the_forward_example_runs_shipper_and_receiver_from_its_own_folder(tmp_path):
    """examples/forward/ as its comments run it: the receiver and the
    shipper beside it started from the example's folder. Each has its own
    state_dir, so the second is not refused by the first's lock on a shared
    var/ ("another sluice holds the state folder; not starting")."""
    from conftest import SLUICE_BIN, send_events
    folder = tmp_path / "f"
    shutil.copytree(str(ROOT / "examples" / "forward"), str(folder))
    fport, sport = free_port(), free_port()
    env = dict(os.environ, FORWARD_KEY="example-key",
               FORWARD_LISTEN="127.0.0.1:%d" % fport,
               FORWARD_PEER="127.0.0.1:%d" % fport,
               SHIPPER_LISTEN="127.0.0.1:%d" % sport)
    procs = []
    try:
        for name in ("receiver", "shipper"):
            with open(str(folder / (name + ".log")), "wb") as log:
                procs.append(subprocess.Popen(
                    [SLUICE_BIN, "run", "-c", name + ".conf.lua"], cwd=str(folder),
                    stdout=subprocess.DEVNULL, stderr=log, env=env))
            wait_for(lambda: b"sluice started" in (folder / (name + ".log")).read_bytes()
                     or procs[-1].poll() is not None, 10, what=name + " to start")
            assert procs[-1].poll() is None, (folder / (name + ".log")).read_text()
        send_events("127.0.0.1:%d" % sport, [{"topic": "orders", "payload": {"id": 7}}])
        out = folder / "var" / "fluent.ndjson"
        wait_for(lambda: out.exists() and len(read_ndjson(out)) == 1, 15,
                 what="the event at the receiver")
        assert read_ndjson(out)[0]["topic"] == "fluent.orders"
    finally:
        for p in reversed(procs):
            p.terminate()
        rcs = [p.wait(timeout=20) for p in procs]
    assert rcs == [0, 0]


# ---- backpressure inside a frame ---------------------------------------------------

def test_a_full_queue_pauses_inside_a_frame_and_acks_only_when_all_are_in(
        sluice):
    from conftest import Sink
    down = free_port()  # the output's peer comes later: its queue fills
    eng = forward_engine(sluice, outputs=[{
        "name": "out", "type": "tcp", "address": "127.0.0.1:%d" % down,
        "retry": {"initial_ms": 20, "max_ms": 100}, "breaker": False,
        "queue": {"max_events": 8, "when_full": "block"}}])
    n = 500
    recs = [{"n": i} for i in range(n)]
    with connect(eng.address) as s:
        s.sendall(packb(["t", entries(recs), {"chunk": "big"}]) +
                  packb(["t", 1, {"n": n}, {"chunk": "next"}]))
        s.settimeout(1.0)
        with pytest.raises(socket.timeout):
            s.recv(100)  # the queue is full: the frame is not all in
        with Sink(port=down) as sink:
            assert read_answers(s, 2, timeout=20) == [{"ack": "big"},
                                                     {"ack": "next"}]
            got = sink.wait(n + 1, timeout=20)
            assert [e["payload"]["n"] for e in got] == list(range(n + 1))
            assert eng.stop() == 0


def test_a_sender_silent_after_helo_is_cut_at_event_timeout_ms(sluice):
    eng = forward_engine(sluice, {"shared_key": "k", "event_timeout_ms": 300})
    with connect(eng.address) as s:
        assert read_answers(s, 1)[0][0] == "HELO"
        assert closed_by_peer(s, timeout=10)
    line = eng.wait_log("bad forward input; closing connection")
    assert line["error"] == "no PING within event_timeout_ms (300 ms) of HELO"
    assert eng.stop() == 0


def test_bad_input_and_events_are_counted_in_the_input_metrics(sluice):
    from conftest import metrics_flat
    admin = free_port()
    eng = forward_engine(sluice, admin={"listen": "127.0.0.1:%d" % admin})
    for frame in (packb({"not": "a frame"}), packb(["t", 1, [1]])):
        with connect(eng.address) as s:
            s.sendall(frame)
            assert closed_by_peer(s)
    with connect(eng.address) as s:
        s.sendall(packb(["t", [[1, {"a": 1}], [2, {"b": 2}]], {"chunk": "c"}]))
        assert read_answers(s, 1) == [{"ack": "c"}]
    m = metrics_flat(admin)
    assert m['sluice_input_bad_total{input="fwd"}'] == 2
    assert m['sluice_input_events_total{input="fwd"}'] == 2
    assert m['sluice_input_connections_total{input="fwd"}'] == 3


class AckingReceiver:
    """A forward receiver in Python (no Fluentd or Fluent Bit is on the
    machine): records every frame as (tag, entries, option) and acks it."""

    def __init__(self):
        import threading
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.frames = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        import io
        c, _ = self.sock.accept()
        up = msgpack.Unpacker(raw=False)
        while True:
            data = c.recv(65536)
            if not data:
                return
            up.feed(data)
            for f in up:
                ents = list(msgpack.Unpacker(io.BytesIO(f[1]), raw=False))
                self.frames.append((f[0], ents, f[2], len(f[1])))
                c.sendall(packb({"ack": f[2]["chunk"]}))


def test_frames_split_by_topic_and_max_chunk_bytes(sluice, tmp_path):
    from conftest import send_events
    r = AckingReceiver()
    b = sender(sluice, tmp_path, r.port, {"max_chunk_bytes": "1KiB"},
               disk=False)
    topics = ["a"] * 20 + ["b"] * 3 + ["a"] * 2
    evs = [{"topic": t, "payload": {"n": i, "pad": "p" * 80}, "time": i}
           for i, t in enumerate(topics)]
    send_events(b.address, evs)
    wait_for(lambda: sum(len(f[1]) for f in r.frames) == len(evs), 10,
             what="every event in a frame")
    assert b.stop() == 0
    tags = [f[0] for f in r.frames]
    assert tags[0] == "a" and "b" in tags and tags[-1] == "a"
    assert [e[1]["n"] for f in r.frames for e in f[1]] == list(range(25))
    for tag, ents, opt, nbytes in r.frames:
        assert opt["size"] == len(ents) and opt["compressed"] == "text"
        assert len({e[1]["n"] for e in ents}) == len(ents)
        assert nbytes <= 1024 + 200, nbytes  # one event may pass the mark
        assert all(topics[e[1]["n"]] == tag for e in ents)
        # EventTime: time i ns is second 0, nanosecond i
        assert all(e[0] == event_time(0, e[1]["n"]) for e in ents)
    assert len([t for t in tags if t == "a"]) >= 3  # 20 a's do not fit 1 KiB
    ids = [f[2]["chunk"] for f in r.frames]
    assert len(set(ids)) == len(ids) and all(len(i) == 24 for i in ids)


def test_a_frame_sent_a_byte_at_a_time_is_taken_whole(sluice):
    eng = forward_engine(sluice)
    frame = packb(["t", gzip.compress(entries([{"n": 1}, {"n": 2}])),
                   {"chunk": "slow", "compressed": "gzip"}])
    with connect(eng.address) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(frame)):
            s.send(frame[i:i + 1])
            time.sleep(0.001)
        assert read_answers(s, 1) == [{"ack": "slow"}]
    evs = read_ndjson(wait_lines(eng.path("out.ndjson"), 2) and
                      eng.path("out.ndjson"))
    assert [e["payload"]["n"] for e in evs] == [1, 2]


# ---- valgrind --------------------------------------------------------------------

@pytest.mark.skipif(bool(os.environ.get("SLUICE_ASAN")) or
                    shutil.which("valgrind") is None,
                    reason="valgrind does not run sanitizer builds")
def test_forward_in_and_out_are_valgrind_clean(tmp_path):
    """One engine sends to itself: native in -> forward out (gzip, shared
    key, acks) -> forward in -> file; plus bad frames and a failed
    handshake, then a graceful stop, with no memory error and no leak."""
    from conftest import SLUICE_BIN, send_events
    import signal
    port, fport = free_port(), free_port()
    cfg = tmp_path / "c.lua"
    cfg.write_text("""return {
  inputs = { { name = "app", type = "tcp", listen = "127.0.0.1:%d" },
             { name = "fwd", type = "forward", listen = "127.0.0.1:%d",
               tag_prefix = "back.", shared_key = "k" } },
  outputs = { { name = "out", type = "forward", address = "127.0.0.1:%d",
                shared_key = "k", compress = "gzip" },
              { name = "file", type = "file", path = "back.ndjson" } },
  routes = { { topics = "back.*", to = "file" }, { topics = "*", to = "out" } },
}""" % (port, fport, fport))
    log = tmp_path / "valgrind.log"
    proc = subprocess.Popen(
        ["valgrind", "--leak-check=full", "--error-exitcode=99",
         "--errors-for-leak-kinds=definite,indirect", "--log-file=%s" % log,
         SLUICE_BIN, "run", "-c", str(cfg)],
        stderr=open(tmp_path / "engine.log", "w"), cwd=tmp_path)
    out = tmp_path / "back.ndjson"
    try:
        wait_for(lambda: b"sluice started" in
                 (tmp_path / "engine.log").read_bytes(), timeout=60,
                 interval=0.2, what="the engine under valgrind to start")
        send_events("127.0.0.1:%d" % port,
                    [{"topic": "t%d" % (i % 2), "payload": {"n": i}}
                     for i in range(60)], timeout=60)
        for frame in (b"\xc1", packb(["PING", "h", "s", "0" * 128, "", ""])):
            with connect("127.0.0.1:%d" % fport, timeout=30) as s:
                read_answers(s, 1, timeout=30)  # HELO
                s.sendall(frame)
                assert closed_by_peer(s, timeout=30)
        wait_for(lambda: out.exists() and
                 len(out.read_text().splitlines()) == 60, timeout=60,
                 interval=0.2, what="the events back through forward")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(120)
    report = log.read_text()
    assert rc == 0, report[-3000:]
    assert "ERROR SUMMARY: 0 errors" in report, report[-3000:]
    assert sorted(e["payload"]["n"] for e in read_ndjson(out)) == \
        list(range(60))
    assert {e["topic"] for e in read_ndjson(out)} == {"back.t0", "back.t1"}
