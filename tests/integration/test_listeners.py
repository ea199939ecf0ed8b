"""Every listener (tcp and unix inputs, HTTP ingest, the admin server) has a
connection limit, timeouts and a memory bound, and the admin server stays
reachable while an input is flooded (issue 9, findings 17-19). Also: the
tap masks credentials however their header names are spelled.

Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_listeners.py
"""

import json
import os
import resource
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import (ASAN, _tcp_queues, connect, free_port, pack, send_events,
                      short_path, wait_for, wait_lines, wait_read)
from conftest import metrics_flat as metrics


def admin_get(admin_port, path, timeout=5):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (admin_port, path),
                                timeout=timeout) as r:
        return r.status, r.read()


def closed_by_engine(s, timeout=5):
    """True once the engine closed s (EOF or reset) within timeout."""
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


# ---- readiness (finding 19) -------------------------------------------------

def test_start_waits_for_every_listener_even_when_info_logs_are_hidden(sluice):
    tcp, web, admin = free_port(), free_port(), free_port()
    eng = sluice({
        "inputs": [{"name": "app", "type": "tcp", "listen": "127.0.0.1:%d" % tcp},
                   {"name": "web", "type": "http", "listen": "127.0.0.1:%d" % web}],
        "outputs": [{"name": "out", "type": "file", "path": "out.ndjson"}],
        "routes": [{"topics": "*", "to": "out"}],
        "admin": {"listen": "127.0.0.1:%d" % admin},
        "log_level": "warn"})
    # no retry loop: once sluice() returned, every listener answers
    req = urllib.request.Request(
        "http://127.0.0.1:%d/v1/events" % web, method="POST",
        data=b'{"topic":"t","payload":1}', headers={"Content-Type": "application/json"})
    assert urllib.request.urlopen(req, timeout=5).status == 202
    assert admin_get(admin, "/readyz")[0] == 200
    wait_lines(eng.path("out.ndjson"), 1)


# ---- tap redaction (finding 18) ---------------------------------------------

def test_tap_masks_credential_headers_however_their_names_are_spelled(sluice):
    port, admin = free_port(), free_port()
    sluice({
        "inputs": [{"name": "app", "type": "tcp", "listen": "127.0.0.1:%d" % port}],
        "outputs": [{"name": "out", "type": "null"}],
        "routes": [{"topics": "*", "to": "out"}],
        "admin": {"listen": "127.0.0.1:%d" % admin}})
    secret = {
        "Authorization": "a", " authorization": "b", "AUTHORIZATION\t": "c",
        "\x00authorization\r\n": "d", "Proxy-Authorization": "e",
        "proxy_authorization": "f", "Set-Cookie": "g", "cookie ": "h",
        "X-Api-Key": "i", "x_api_key": "j",
        "X-API-\u212aey": "k",          # KELVIN SIGN folds to k
        "\u017fet-cookie": "l",         # long s folds to s
        "AUTHOR\u0130ZATION": "m",      # dotted capital I
        "author\u0131zation": "n",      # dotless small i
    }
    clear = {"x-ok": "v", "authorization-hint": "w", "x-api-keys": "x",
             "author ization": "y"}
    headers = dict(secret)
    headers.update(clear)
    p = subprocess.Popen(["curl", "-sN", "--max-time", "20",
                          "http://127.0.0.1:%d/tap?topics=t&limit=1" % admin],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: metrics(admin).get("sluice_tap_clients") == 1,
                 what="the tap client")
        send_events("127.0.0.1:%d" % port,
                    [{"topic": "t", "payload": 1, "headers": headers}])
        out, _ = p.communicate(timeout=15)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    got = json.loads(out.decode().splitlines()[0])["event"]["headers"]
    for name in secret:
        assert got[name] == "***", (name, got[name])
    for name, value in clear.items():
        assert got[name] == value, name


# ---- limits, deadlines and memory (finding 17) ------------------------------

def partial_event(size):
    """The start of an event whose payload announces size bytes, with all
    but 1 KiB of them: the engine must hold it and wait for the rest."""
    head = b"\x82\xa5topic\xa1t\xa7payload\xdb" + size.to_bytes(4, "big")
    return head + b"x" * (size - 1024)


def engine(sluice, admin=True, inputs=None, **inp):
    port, adm = free_port(), free_port()
    base = {"name": "app", "type": "tcp", "listen": "127.0.0.1:%d" % port}
    base.update(inp)
    cfg = {"inputs": inputs or [base],
           "outputs": [{"name": "out", "type": "file", "path": "out.ndjson"}],
           "routes": [{"topics": "*", "to": "out"}]}
    if admin:
        cfg["admin"] = {"listen": "127.0.0.1:%d" % adm}
    eng = sluice(cfg)
    eng.address = "127.0.0.1:%d" % port
    eng.admin_port = adm
    return eng


def listener_metric(eng, family, listener="app", **labels):
    want = ",".join(['listener="%s"' % listener] +
                    ['%s="%s"' % kv for kv in labels.items()])
    for key, v in metrics(eng.admin_port).items():
        if key.startswith(family + "{") and all(
                part in key for part in want.split(",")):
            return v
    return None


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_connections_over_max_connections_are_closed_at_once(sluice, kind):
    path = short_path("in.sock") if kind == "unix" else None
    eng = engine(sluice, type=kind, max_connections=3,
                 **({"listen": path} if path else {}))
    address = path or eng.address
    held = [connect(address) for _ in range(3)]
    wait_for(lambda: listener_metric(
        eng, "sluice_listener_connections_open") == 3, what="3 open")
    extra = connect(address)
    t0 = time.monotonic()
    assert closed_by_engine(extra, timeout=3)
    assert time.monotonic() - t0 < 1.0
    assert listener_metric(eng, "sluice_listener_connections_refused_total",
                           reason="limit") == 1
    # the held ones still work, and a slot freed is a slot to use
    held[0].close()
    wait_for(lambda: listener_metric(
        eng, "sluice_listener_connections_open") == 2, what="one closed")
    send_events(address, [{"topic": "t", "payload": 1}])
    wait_lines(eng.path("out.ndjson"), 1)
    for s in held[1:] + [extra]:
        s.close()


def test_at_max_connections_the_longest_quiet_connection_makes_room(sluice):
    """Idle connections cannot keep producers out for good: at the limit, a
    new connection displaces the one quiet longest, once it has been quiet
    longer than event_timeout_ms; busy ones are never chosen."""
    eng = engine(sluice, max_connections=2, event_timeout_ms=300)
    quiet, busy = connect(eng.address), connect(eng.address)
    busy.sendall(pack({"topic": "t", "payload": 0}))
    # both fresh: a third is refused
    early = connect(eng.address)
    assert closed_by_engine(early, timeout=3)
    early.close()
    time.sleep(0.5)
    busy.sendall(pack({"topic": "t", "payload": 1}))  # busy stays fresh
    wait_lines(eng.path("out.ndjson"), 2)
    send_events(eng.address, [{"topic": "t", "payload": 2}])
    assert len(wait_lines(eng.path("out.ndjson"), 3)) == 3
    assert closed_by_engine(quiet, timeout=5)
    busy.sendall(pack({"topic": "t", "payload": 3}))
    assert len(wait_lines(eng.path("out.ndjson"), 4)) == 4
    assert listener_metric(eng, "sluice_listener_connections_refused_total",
                           reason="idle") == 1
    assert listener_metric(eng, "sluice_listener_connections_refused_total",
                           reason="limit") == 1
    quiet.close()
    busy.close()


def test_a_partial_event_is_cut_at_event_timeout_ms(sluice):
    eng = engine(sluice, event_timeout_ms=500)
    s = connect(eng.address)
    s.sendall(partial_event(4096)[:100])
    t0 = time.monotonic()
    assert closed_by_engine(s, timeout=5), "the stalled event was never cut"
    took = time.monotonic() - t0
    assert 0.3 <= took <= 3.0, took
    assert listener_metric(eng, "sluice_listener_connections_timed_out_total") == 1
    eng.wait_log("event not complete within event_timeout_ms; partial event discarded")
    s.close()


def test_a_producer_splitting_events_across_writes_is_not_cut(sluice):
    """The deadline runs from the first byte of the event still incomplete,
    not from the first partial read: a steady stream whose every write ends
    mid-event lives on past event_timeout_ms."""
    eng = engine(sluice, event_timeout_ms=400)
    events = [pack({"topic": "t", "payload": "p" * 50 + str(i)}) for i in range(12)]
    data = b"".join(events)
    s = connect(eng.address)
    step = 9  # writes end inside an event, so bytes are always left over
    bounds, pos = set(), 0
    for e in events:
        pos += len(e)
        bounds.add(pos)
    ends = [i for i in range(step, len(data), step) if i in bounds]
    # no write ends on an event boundary for longer than the deadline
    # (with a deadline from the first partial byte, never reset by
    # progress, the connection would be cut)
    gaps = [b - a for a, b in zip([0] + ends, ends + [len(data)])]
    assert max(gaps) // step * 0.02 > 0.8, gaps
    t0 = time.monotonic()
    for i in range(0, len(data), step):
        s.sendall(data[i:i + step])
        time.sleep(0.02)
    assert time.monotonic() - t0 > 1.0  # well past the deadline
    s.shutdown(socket.SHUT_WR)
    assert closed_by_engine(s, timeout=5)
    assert len(wait_lines(eng.path("out.ndjson"), 12)) == 12
    assert listener_metric(eng, "sluice_listener_connections_timed_out_total") == 0
    s.close()


def test_a_quiet_connection_is_closed_after_idle_timeout_ms_when_set(sluice):
    eng = engine(sluice, idle_timeout_ms=300)
    s = connect(eng.address)
    s.sendall(pack({"topic": "t", "payload": 1}))
    t0 = time.monotonic()
    assert closed_by_engine(s, timeout=5)
    assert 0.2 <= time.monotonic() - t0 <= 3.0
    wait_lines(eng.path("out.ndjson"), 1)
    s.close()


def test_partial_events_over_max_pending_bytes_shed_the_stalest(sluice):
    """40 connections each hold 900 KiB of an unfinished event against a
    bound of 8 MiB: memory stays near the bound, and a producer with a
    complete large event still gets through."""
    eng = engine(sluice, max_pending_bytes="8MiB", event_timeout_ms=60000)
    base = eng.rss_kb()
    stalled = []
    chunk = partial_event(900 * 1024)
    for _ in range(40):
        s = connect(eng.address)
        try:
            s.sendall(chunk)
        except OSError:
            pass  # shed while we wrote
        stalled.append(s)
        time.sleep(0.01)  # each one older than the next
    wait_for(lambda: listener_metric(
        eng, "sluice_listener_connections_refused_total", reason="memory") >= 25,
        what="stale partial events shed")
    grown_mb = (eng.rss_kb() - base) / 1024
    # before: ~36 MiB (40 x 900 KiB); the bound is 8 MiB of buffers
    if not ASAN:
        assert grown_mb < 24, grown_mb
    big = {"topic": "big", "payload": "y" * (900 * 1024)}
    send_events(eng.address, [big])
    lines = wait_lines(eng.path("out.ndjson"), 1)
    assert json.loads(lines[0])["topic"] == "big"
    assert listener_metric(eng, "sluice_listener_connections_open") <= 12
    for s in stalled:
        s.close()
    # the memory goes back to the system, not to a heap that keeps it
    wait_for(lambda: listener_metric(
        eng, "sluice_listener_connections_open") == 0, what="all closed")
    if not ASAN:
        after_mb = (eng.rss_kb() - base) / 1024
        print("rss growth: peak %.1f MiB, after %.1f MiB" % (grown_mb, after_mb))
        assert after_mb < 6, after_mb


@pytest.mark.parametrize("kind", ["tcp", "unix", "http"])
def test_admin_answers_while_an_input_is_flooded_to_the_fd_limit(sluice, kind):
    port = free_port()
    listen = short_path("flood.sock") if kind == "unix" else "127.0.0.1:%d" % port
    eng = engine(sluice, inputs=[{"name": "app", "type": kind, "listen": listen}])
    _, hard = resource.prlimit(eng.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(eng.pid, resource.RLIMIT_NOFILE, (256, hard))
    flood = []
    for _ in range(600):
        try:
            flood.append(connect(listen, timeout=1))
        except OSError:
            break
    # the input stopped short of the limit: the admin server has fds
    t0 = time.monotonic()
    status, body = admin_get(eng.admin_port, "/healthz", timeout=5)
    assert status == 200 and time.monotonic() - t0 < 1.0
    assert admin_get(eng.admin_port, "/readyz")[0] == 200
    refused = listener_metric(eng, "sluice_listener_connections_refused_total",
                              reason="fds")
    assert refused >= 1
    opened = listener_metric(eng, "sluice_listener_connections_open")
    assert 100 <= opened <= 256 - 32, opened
    for s in flood:
        s.close()
    # once the flood is gone, producers get in again
    wait_for(lambda: listener_metric(
        eng, "sluice_listener_connections_open") == 0, what="the flood gone")
    if kind == "http":
        req = urllib.request.Request(
            "http://%s/v1/events" % listen, method="POST",
            data=b'{"topic":"t","payload":1}',
            headers={"Content-Type": "application/json"})
        assert urllib.request.urlopen(req, timeout=5).status == 202
    else:
        send_events(listen, [{"topic": "t", "payload": 1}])
    wait_lines(eng.path("out.ndjson"), 1)
    assert eng.wait_log("connection refused", reason=
                        "near the process's file descriptor limit")
    # rate-limited: hundreds refused, a handful of lines
    assert len(eng.find_logs("connection refused")) <= 12


# ---- HTTP ingest and the admin server ----------------------------------------

def http_engine(sluice, **inp):
    port = free_port()
    web = {"name": "web", "type": "http", "listen": "127.0.0.1:%d" % port}
    web.update(inp)
    eng = engine(sluice, inputs=[web])
    eng.web_port = port
    return eng


def test_http_connections_over_max_connections_get_503_and_close(sluice):
    from helpers_http import RawClient, request
    eng = http_engine(sluice, max_connections=2)
    held = [RawClient(eng.web_port) for _ in range(2)]
    wait_for(lambda: listener_metric(eng, "sluice_listener_connections_open",
                                     listener="web") == 2, what="2 open")
    c = RawClient(eng.web_port)
    c.send(request("POST", "/v1/events", '{"topic":"t"}', "application/json"))
    r = c.read_response()
    assert r.status == 503 and r.headers["retry-after"] == "1"
    assert r.headers["connection"] == "close"
    assert c.closed(timeout=3)
    assert listener_metric(eng, "sluice_listener_connections_refused_total",
                           listener="web", reason="limit") == 1
    held[0].send(request("POST", "/v1/events", '{"topic":"t"}', "application/json"))
    assert held[0].read_response().status == 202
    for h in held + [c]:
        h.close()


def test_http_body_trickled_a_byte_at_a_time_is_cut_at_body_timeout_ms(sluice):
    from helpers_http import RawClient
    eng = http_engine(sluice, body_timeout_ms=1000, idle_timeout_ms=5000)
    c = RawClient(eng.web_port)
    c.send(b"POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
           b"\r\nContent-Length: 1000\r\n\r\n")
    t0 = time.monotonic()
    cut = None
    while time.monotonic() - t0 < 6:
        try:
            c.sock.sendall(b" ")
        except OSError:
            cut = time.monotonic() - t0
            break
        if c.closed(timeout=0.2):
            cut = time.monotonic() - t0
            break
    # before: the idle limit restarted with every byte, so never
    assert cut is not None and 0.8 <= cut <= 3.0, cut
    assert c.buf.startswith(b"HTTP/1.1 408 ")
    assert listener_metric(eng, "sluice_listener_connections_timed_out_total",
                           listener="web") == 1
    c.close()


def test_http_bodies_over_max_pending_bytes_shed_the_stalled_upload(sluice):
    from helpers_http import RawClient
    eng = http_engine(sluice, max_pending_bytes="1MiB", max_body_bytes="1MiB")
    body = b" " * ((1 << 20) - 13) + b'{"topic":"t"}'
    head = (b"POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
            b"\r\nContent-Length: %d\r\n\r\n" % len(body))
    # a stalls with 600 KiB of its body; b's 600 KiB would pass the bound
    a, b = RawClient(eng.web_port), RawClient(eng.web_port)
    a.send(head + body[:600 * 1024])
    wait_read(a.sock, 20)  # a's bytes are the engine's before b's come
    b.send(head + body[:600 * 1024])
    assert a.closed(timeout=5), "the stalled upload was kept"
    b.send(body[600 * 1024:])
    assert b.read_response().status == 202
    assert listener_metric(eng, "sluice_listener_connections_refused_total",
                           listener="web", reason="memory") == 1
    a.close()
    b.close()


def _tap(adm):
    """An admin connection held by a running /tap stream."""
    from helpers_http import RawClient
    c = RawClient(adm)
    c.send(b"GET /tap HTTP/1.1\r\nHost: a\r\n\r\n")
    while b"\r\n\r\n" not in c.buf:
        c._fill()
    assert c.buf.startswith(b"HTTP/1.1 200"), c.buf[:60]
    return c


def test_admin_over_max_connections_gets_503_and_recovers(sluice):
    port, adm = free_port(), free_port()
    sluice({"inputs": [{"name": "app", "type": "tcp", "listen": "127.0.0.1:%d" % port}],
            "outputs": [{"name": "out", "type": "null"}],
            "routes": [{"topics": "*", "to": "out"}],
            "admin": {"listen": "127.0.0.1:%d" % adm, "max_connections": 2}})
    # two taps: connections serving a request, which no probe displaces
    held = [_tap(adm) for _ in range(2)]
    with pytest.raises(urllib.error.HTTPError) as e:
        admin_get(adm, "/healthz")
    assert e.value.code == 503
    held[0].close()
    wait_for(lambda: _healthz_ok(adm), what="/healthz once a slot is free")
    # README: the listener metrics count the admin server too
    text = wait_for(lambda: _metrics_or_none(adm), what="a /metrics answer")
    values = dict(l.rsplit(" ", 1) for l in text.splitlines()
                  if l and not l.startswith("#"))
    assert float(values['sluice_listener_connections_refused_total{listener="admin",'
                        'type="admin",reason="limit"}']) >= 1
    assert float(values['sluice_listener_connections_open{listener="admin",'
                        'type="admin"}']) == 2  # held[1] and this scrape
    held[1].close()


def _admin_engine(sluice, max_connections):
    """An engine whose admin server takes max_connections; (eng, port)."""
    port, adm = free_port(), free_port()
    eng = sluice({"inputs": [{"name": "app", "type": "tcp",
                              "listen": "127.0.0.1:%d" % port}],
                  "outputs": [{"name": "out", "type": "null"}],
                  "routes": [{"topics": "*", "to": "out"}],
                  "admin": {"listen": "127.0.0.1:%d" % adm,
                            "max_connections": max_connections}})
    return eng, adm


def _admin_metrics(adm):
    """The admin /metrics as {"name{labels}": "value"}."""
    text = admin_get(adm, "/metrics")[1].decode()
    return dict(l.rsplit(" ", 1) for l in text.splitlines()
                if l and not l.startswith("#"))


def test_admin_probes_get_in_past_clients_holding_every_connection(sluice):
    # max_connections admin clients that send a request head slowly, or sit
    # idle on keep-alive, held every slot: /healthz got 503 for as long as
    # they kept at it, and a kubelet would restart sluice. A new connection
    # now closes the one that waited longest for a whole request.
    from helpers_http import RawClient
    eng, adm = _admin_engine(sluice, 4)
    idle = RawClient(adm) # a whole request, then idle on keep-alive
    idle.send(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    assert idle.read_response().status == 200
    slow = []
    for i in range(3): # request heads still coming
        c = RawClient(adm)
        c.send(b"GET /metr")
        slow.append(c)
    wait_for(lambda: _tcp_queues(adm, 0)[1] == 0, 20,
             what="the admin listener to accept them all")
    for i in range(6): # each closes the one that waited longest
        assert admin_get(adm, "/healthz")[0] == 200
        # the trickle goes on: what was closed comes back
        c = RawClient(adm)
        c.send(b"GET /re")
        slow.append(c)
    # the oldest went first: the idle keep-alive one, then the heads
    with pytest.raises((EOFError, OSError)):
        idle.send(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        idle.read_response()
    values = _admin_metrics(adm)
    assert float(values['sluice_listener_connections_refused_total{listener="admin",'
                        'type="admin",reason="idle"}']) >= 6
    assert float(values['sluice_listener_connections_refused_total{listener="admin",'
                        'type="admin",reason="limit"}']) == 0
    assert eng.find_logs("max_connections reached; closing the connection that "
                         "waited longest on its client to admit a new one")
    for c in slow:
        c.sock.close()


@pytest.mark.parametrize("request_, answer", [
    (b"NOT HTTP AT ALL\r\n\r\n", b"HTTP/1.1 400"),
    (b"POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n",
     b"HTTP/1.1 404")])
def test_admin_probes_get_in_past_clients_answered_that_send_on(sluice, request_,
                                                                answer):
    # Each of max_connections clients sends a request the server refuses
    # and then a byte now and then: after a bad request the connection
    # lingers (up to 2 s, dropping input); after a 404 sent before a small
    # body, the body is read and dropped (up to body_ms, 10 s). Neither was
    # closed for room, so /healthz got 503 meanwhile, again after each
    # reconnect. Their answers are written, they hold nothing: they go first.
    import threading
    port, adm = free_port(), free_port()
    sluice({"inputs": [{"name": "app", "type": "tcp",
                        "listen": "127.0.0.1:%d" % port}],
            "outputs": [{"name": "out", "type": "null"}],
            "routes": [{"topics": "*", "to": "out"}],
            "admin": {"listen": "127.0.0.1:%d" % adm, "max_connections": 4}})
    socks = []
    for _ in range(4):
        s = socket.create_connection(("127.0.0.1", adm))
        s.sendall(request_)
        s.settimeout(5)
        assert s.recv(65536).startswith(answer)
        socks.append(s)
    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            for s in socks:
                try:
                    s.send(b"x")
                except OSError:
                    pass
            time.sleep(0.05)

    t = threading.Thread(target=trickle)
    t.start()
    codes = []
    try:
        for _ in range(3):
            try:
                codes.append(admin_get(adm, "/healthz")[0])
            except urllib.error.HTTPError as e:
                codes.append(e.code)
    finally:
        stop.set()
        t.join()
        for s in socks:
            s.close()
    assert codes == [200, 200, 200]


def test_admin_probes_get_in_past_clients_that_read_no_answers(sluice):
    # max_connections admin clients that pipeline requests and read none of
    # the answers: each connection's answer stayed pending, so none could
    # make room and /healthz got 503 for as long as they stayed. A write
    # that made no progress for a second now gives way too.
    eng, adm = _admin_engine(sluice, 4)
    stuck = []
    for _ in range(4):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", adm))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n" * 200)
        stuck.append(s)
    # the engine's answers back up: its send queues to them stay full
    wait_for(lambda: sum(1 for q in _admin_send_queues(adm) if q > 0) == 4, 20,
             what="the answers to back up")
    wait_for(lambda: _healthz_ok(adm), 10, interval=0.1,
             what="/healthz past the stuck clients")
    # one of them made room (its log line may be behind the rate limit the
    # 503s before it filled)
    values = _admin_metrics(adm)
    assert float(values['sluice_listener_connections_refused_total{listener="admin",'
                        'type="admin",reason="idle"}']) >= 1
    for s in stuck:
        s.close()


def _admin_send_queues(adm):
    """Send queues of the engine's established sockets from port adm."""
    out = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            local, st, queues = parts[1], parts[3], parts[4]
            if int(local.split(":")[1], 16) == adm and st == "01":
                out.append(int(queues.split(":")[0], 16))
    return out


def _metrics_or_none(adm):
    """/metrics, or None while the probe before it still holds its slot."""
    try:
        return admin_get(adm, "/metrics")[1].decode()
    except urllib.error.HTTPError as e:
        if e.code == 503:
            return None
        raise


def _healthz_ok(adm):
    try:
        return admin_get(adm, "/healthz")[0] == 200
    except OSError:
        return False


def test_new_limit_keys_are_checked(tmp_path):
    from conftest import lua, run_sluice
    p = tmp_path / "bad.lua"
    p.write_text("return " + lua({
        "inputs": [{"name": "a", "type": "tcp", "listen": "127.0.0.1:7400",
                    "max_connections": 0, "event_timeout_ms": 5,
                    "max_pending_bytes": "lots"}],
        "outputs": [{"name": "o", "type": "null"}],
        "routes": [{"topics": "*", "to": "o"}],
        "admin": {"listen": "127.0.0.1:7401", "max_connections": 0}}) + "\n")
    r = run_sluice("check", "-c", p)
    assert r.returncode == 1
    for key in ("inputs[1].max_connections", "inputs[1].event_timeout_ms",
                "inputs[1].max_pending_bytes", "admin.max_connections"):
        assert key in r.stderr, (key, r.stderr)


def _cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_accept_at_the_fd_limit_neither_spins_nor_keeps_clients_waiting(sluice):
    """Every fd taken (the limit lowered to what is open): connections are
    accepted and closed at once from the reserve fd, the loop does not
    spin, and once fds are back everything answers again."""
    eng = engine(sluice)
    open_now = len(os.listdir("/proc/%d/fd" % eng.pid))
    _, hard = resource.prlimit(eng.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(eng.pid, resource.RLIMIT_NOFILE, (open_now, hard))
    cpu0 = _cpu_seconds(eng.pid)
    clients = []
    for _ in range(50):
        try:
            clients.append(connect(eng.address, timeout=2))
        except OSError:
            pass
    for s in clients:
        assert closed_by_engine(s, timeout=3), "a client left hanging"
        s.close()
    time.sleep(1.0)
    assert _cpu_seconds(eng.pid) - cpu0 < 0.5
    resource.prlimit(eng.pid, resource.RLIMIT_NOFILE, (1024, hard))
    wait_for(lambda: _healthz_ok(eng.admin_port), what="/healthz with fds back")
    send_events(eng.address, [{"topic": "t", "payload": 1}])
    wait_lines(eng.path("out.ndjson"), 1)


def test_tap_normalises_the_configured_redact_list_too(sluice):
    port, admin = free_port(), free_port()
    sluice({
        "inputs": [{"name": "app", "type": "tcp", "listen": "127.0.0.1:%d" % port}],
        "outputs": [{"name": "out", "type": "null"}],
        "routes": [{"topics": "*", "to": "out"}],
        "admin": {"listen": "127.0.0.1:%d" % admin,
                  "redact_headers": [" X_Session_Token "]}})
    p = subprocess.Popen(["curl", "-sN", "--max-time", "20",
                          "http://127.0.0.1:%d/tap?topics=t&limit=1" % admin],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: metrics(admin).get("sluice_tap_clients") == 1,
                 what="the tap client")
        send_events("127.0.0.1:%d" % port, [{"topic": "t", "payload": 1, "headers": {
            "x-session-token": "s", "X_SESSION_TOKEN": "t", "authorization": "a"}}])
        out, _ = p.communicate(timeout=15)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    got = json.loads(out.decode().splitlines()[0])["event"]["headers"]
    assert got["x-session-token"] == "***" and got["X_SESSION_TOKEN"] == "***"
    # a list of one's own adds to the defaults: naming a header of one's
    # own does not unmask credentials
    assert got["authorization"] == "***"
