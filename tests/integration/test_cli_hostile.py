"""The commands that are clients (`sluice top`, `sluice tap`, `sluice dlq
replay --to http://...`) against servers that stall, trickle or lie: each
must give up with a clear error within its timeout, never hang or grow its
memory without bound. The servers are plain Python sockets on 127.0.0.1
playing a broken admin API or HTTP input.
Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_cli_hostile.py
"""
import socket
import subprocess
import threading
import time

import pytest

from conftest import SLUICE_BIN, free_port, run_sluice


class Hostile:
    """A TCP server on 127.0.0.1 that hands every connection to play(conn)
    in its own thread, until closed."""

    def __init__(self, play):
        self.play = play
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            self.play(c, self.stop)
        except OSError:
            pass  # the client gave up: what we want

    def close(self):
        self.stop.set()
        self.sock.close()
        for c in self.conns:
            c.close()


def read_request(c):
    data = b""
    while b"\r\n\r\n" not in data:
        got = c.recv(4096)
        if not got:
            return data
        data += got
    return data


def silent(c, stop):
    stop.wait(60)


def slowloris_head(c, stop):
    read_request(c)
    c.sendall(b"HTTP/1.1 200 OK\r\n")
    while not stop.wait(0.1):
        c.sendall(b"X")  # a header line that never ends, a byte at a time


def huge_head(c, stop):
    read_request(c)
    c.sendall(b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"x" * 70000 + b"\r\n")
    stop.wait(60)  # never ends the head: only the size bound stops it


def endless_body(c, stop):
    read_request(c)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
    junk = b"x" * 65536
    while not stop.is_set():
        c.sendall(junk)


def huge_chunk(c, stop):
    read_request(c)
    c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"7fffffff\r\n")
    junk = b"x" * 65536
    while not stop.is_set():
        c.sendall(junk)


def stalled_chunk(c, stop):
    read_request(c)
    c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nline\n\r\n20\r\nhalf a li")
    stop.wait(60)


def quiet_stream(c, stop):
    read_request(c)
    c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nline\n\r\n")
    stop.wait(60)


@pytest.fixture
def hostile():
    made = []

    def make(play):
        h = Hostile(play)
        made.append(h)
        return h
    yield make
    for h in made:
        h.close()


def admin_config(tmp_path, port, tls=None):
    admin = 'listen = "127.0.0.1:%d"' % port
    if tls:
        admin += ', tls = { cert_file = "%s", key_file = "%s" }' % tls
    path = tmp_path / "hostile.conf.lua"
    path.write_text(
        'return { admin = { %s }, inputs = { { name = "i", type = "tcp", '
        'listen = "127.0.0.1:1" } }, outputs = { { name = "o", type = "null" } } }'
        % admin)
    return path


def timed(*args, limit=20):
    t0 = time.monotonic()
    r = run_sluice(*args, timeout=limit)
    return r, time.monotonic() - t0


@pytest.mark.parametrize("cmd", [["top", "--once"], ["tap"]])
def test_top_and_tap_give_up_on_an_admin_that_accepts_and_says_nothing(
        hostile, tmp_path, cmd):
    h = hostile(silent)
    conf = admin_config(tmp_path, h.port)
    r, took = timed(cmd[0], "-c", conf, "--timeout", "1", *cmd[1:])
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "sent no complete answer within 1000 ms" in r.stderr, r.stderr
    assert took < 10


@pytest.mark.parametrize("cmd", [["top", "--once"], ["tap"]])
def test_top_and_tap_give_up_on_a_head_trickled_a_byte_at_a_time(
        hostile, tmp_path, cmd):
    """Each byte comes well within the timeout: only a deadline on the
    whole answer stops it."""
    h = hostile(slowloris_head)
    conf = admin_config(tmp_path, h.port)
    r, took = timed(cmd[0], "-c", conf, "--timeout", "1.5", *cmd[1:])
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "within 1500 ms" in r.stderr, r.stderr
    assert took < 10


@pytest.mark.parametrize("cmd", [["top", "--once"], ["tap"]])
def test_top_and_tap_refuse_a_head_over_64_kib_at_once(hostile, tmp_path, cmd):
    # README "Operating": a head over 64 KiB is refused (not waited out)
    h = hostile(huge_head)
    conf = admin_config(tmp_path, h.port)
    r, took = timed(cmd[0], "-c", conf, "--timeout", "30", *cmd[1:])
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "head larger than 64 KiB" in r.stderr, r.stderr
    assert took < 10


def test_top_refuses_an_endless_metrics_body(hostile, tmp_path):
    h = hostile(endless_body)
    conf = admin_config(tmp_path, h.port)
    r, took = timed("top", "-c", conf, "--timeout", "15", "--once")
    assert r.returncode == 1, r.stderr
    assert "larger than 64 MiB" in r.stderr, r.stderr


def test_tap_refuses_a_chunk_of_2_gib_before_reading_it(hostile, tmp_path):
    h = hostile(huge_chunk)
    conf = admin_config(tmp_path, h.port)
    r, took = timed("tap", "-c", conf, "--timeout", "5")
    assert r.returncode == 1, r.stderr
    assert "bad or too large chunk size" in r.stderr, r.stderr
    assert took < 5


def test_tap_gives_up_on_a_chunk_that_stalls_halfway_but_waits_between_chunks(
        hostile, tmp_path):
    h = hostile(stalled_chunk)
    conf = admin_config(tmp_path, h.port)
    r, took = timed("tap", "-c", conf, "--timeout", "1")
    assert r.returncode == 1, r.stderr
    assert r.stdout == "line\n"
    assert "within 1000 ms" in r.stderr, r.stderr
    # a stream quiet between chunks is a tap with no matching events: it waits
    q = hostile(quiet_stream)
    p = subprocess.Popen([SLUICE_BIN, "tap", "-c", str(admin_config(tmp_path, q.port)),
                          "--timeout", "0.5"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        time.sleep(2)  # four timeouts: still there
        assert p.poll() is None, p.communicate()
    finally:
        p.kill()
        out, _ = p.communicate()
    assert out == b"line\n"


@pytest.mark.parametrize("args,says", [
    (["frobnicate"], 'unknown command "frobnicate"'),
    (["run", "--nope"], "unrecognized option '--nope'"),
    (["check", "--bogus"], "unrecognized option '--bogus'"),
    (["tap", "--timeout", "bad"], 'expected seconds from 0.1 to 3600, got "bad"'),
    (["top", "--timeout", "x"], "usage: sluice top"),
    (["dlq", "replay"], "FILE is required"),
])
def test_a_command_line_sluice_cannot_take_exits_2_naming_it(args, says):
    # README "Command line": exit 2, what was wrong, the usage
    r = run_sluice(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert says in r.stderr, r.stderr
    assert "usage: sluice" in r.stderr or args[0] == "tap", r.stderr


def test_tap_filters_are_refused_by_the_engine_with_its_400(sluice, tmp_path):
    # README "Command line": checked by the running engine, exit 1
    admin = free_port()
    eng = sluice("""return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "out", type = "null" } },
  routes = { { topics = "*", to = "out" } },
  admin = { listen = "127.0.0.1:%d" },
}""" % (free_port(), admin))
    for flag, value, says in [("--limit", "0", "limit: expected a whole number"),
                              ("--sample", "2", "sample: expected a share"),
                              ("--outcome", "nonsense", "outcome: expected")]:
        r = run_sluice("tap", "-c", eng.config, flag, value)
        assert r.returncode == 1, (flag, r.stderr)
        assert "answered 400" in r.stderr and says in r.stderr, r.stderr
    assert eng.stop() == 0


def test_top_and_tap_refuse_a_bad_timeout(tmp_path):
    conf = admin_config(tmp_path, 1)
    for cmd in ("top", "tap"):
        r = run_sluice(cmd, "-c", conf, "--timeout", "0")
        assert r.returncode == 2, r.stderr


def test_top_gives_up_on_a_tls_admin_that_never_shakes_hands(hostile, tmp_path):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                    tmp_path / "k.pem", "-out", tmp_path / "c.pem", "-days", "2",
                    "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    h = hostile(silent)
    conf = admin_config(tmp_path, h.port,
                        tls=(tmp_path / "c.pem", tmp_path / "k.pem"))
    r, took = timed("top", "-c", conf, "--timeout", "1", "--once")
    assert r.returncode == 1, r.stderr
    assert "no handshake within 1000 ms" in r.stderr, r.stderr
    assert took < 10


def slowloris_202(c, stop):
    read_request(c)
    c.sendall(b"HTTP/1.1 202 Accepted\r\n")
    while not stop.wait(0.1):
        c.sendall(b"X")


def cut_short_202(c, stop):
    read_request(c)
    c.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 100\r\n\r\n{}")
    c.close()


def dead_letter_file(tmp_path):
    path = tmp_path / "dead-letter.ndjson"
    path.write_text('{"id":"e1","topic":"t","payload":1}\n')
    return path


def test_dlq_replay_gives_up_on_an_http_answer_trickled_a_byte_at_a_time(
        hostile, tmp_path):
    """--timeout bounds the whole answer, not only the gap between bytes."""
    h = hostile(slowloris_202)
    r, took = timed("dlq", "replay", dead_letter_file(tmp_path), "--to",
                    "http://127.0.0.1:%d/v1/events" % h.port, "--timeout", "1")
    assert r.returncode == 1, r.stdout
    assert "no complete answer within 1000 ms" in r.stderr, r.stderr
    assert "0 of 1 events accepted" in r.stderr, r.stderr
    assert took < 10


def test_dlq_replay_counts_no_ack_from_an_answer_cut_short(hostile, tmp_path):
    h = hostile(cut_short_202)
    r, _ = timed("dlq", "replay", dead_letter_file(tmp_path), "--to",
                 "http://127.0.0.1:%d/v1/events" % h.port, "--timeout", "2")
    assert r.returncode == 1, r.stdout
    assert "the answer was cut short (2 of 100 bytes of body)" in r.stderr, r.stderr
    assert "0 of 1 events accepted" in r.stderr, r.stderr
