"""The http output (issue 13, item 1) against a real HTTP server the test
starts: Python's ThreadingHTTPServer with handlers that answer 200, 429 with
Retry-After, 500, slowly, close mid-response, or 400; formats, the URL
template, gzip, auth, HTTPS with the tls block, and an exact ledger. A
gate server that holds answers counts connections and requests at once:
max_connections, and format json's 64 requests in parallel.
"""
import base64
import gzip
import json
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import msgpack
import pytest

from conftest import (_tcp_queues, free_port, metric, read_ndjson, send_events,
                      wait_for, wait_lines)
from test_delivery import acked_client
from test_tls import certs  # noqa: F401  (the module's fixture)


class Hook:
    """An HTTP server in a thread. Each request is recorded (.requests: dicts
    with method, path, headers (lower-case names), raw body, decoded
    events); what it answers comes from .answer(req) -> (status, headers,
    body), or the strings "close" (drop the connection mid-response) and
    "slow:<s>" (answer 200 after s seconds). Default: 200."""

    def __init__(self, tls=None, port=None):
        hook = self
        self.requests = []
        self.lock = threading.Lock()
        self.answer = lambda req: (200, {}, b"ok")
        self.connections = set()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(n)
                req = {"method": "POST", "path": self.path, "raw": raw,
                       "headers": {k.lower(): v for k, v in self.headers.items()},
                       "time": time.monotonic(),
                       "peer": self.client_address}
                body = raw
                if req["headers"].get("content-encoding") == "gzip":
                    body = gzip.decompress(raw)
                req["body"] = body
                req["events"] = decode(req["headers"].get("content-type", ""), body)
                with hook.lock:
                    hook.connections.add(self.client_address)
                    a = hook.answer(req)
                    req["answered"] = a if isinstance(a, str) else a[0]
                    hook.requests.append(req)
                if a == "close":
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if isinstance(a, str) and a.startswith("slow:"):
                    time.sleep(float(a[5:]))
                    a = (200, {}, b"late")
                status, headers, out = a
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except OSError:
                    pass

        self.port = port or free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        if tls:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = "%s://127.0.0.1:%d" % ("https" if tls else "http", self.port)

    def delivered(self):
        """Payloads of every event in requests answered 2xx, in order."""
        with self.lock:
            return [e["payload"] for r in self.requests
                    if isinstance(r["answered"], int) and 200 <= r["answered"] < 300
                    for e in r["events"]]

    def wait_delivered(self, n, timeout=15):
        wait_for(lambda: len(self.delivered()) >= n, timeout=timeout,
                 what="%d events delivered (have %d)" % (n, len(self.delivered())))
        return self.delivered()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def decode(ctype, body):
    if ctype == "application/x-ndjson":
        return [json.loads(l) for l in body.split(b"\n") if l]
    if ctype == "application/msgpack":
        return _unpack_all(body)
    if ctype == "application/json":
        v = json.loads(body)
        return v if isinstance(v, list) else [v]
    return []


def _unpack_all(body):
    u = msgpack.Unpacker(raw=False)
    u.feed(body)
    return list(u)


def engine(sluice, url, port=None, **out):
    port = port or free_port()
    o = {"name": "hook", "type": "http", "url": url,
         "retry": {"initial_ms": 20, "max_ms": 200}}
    o.update(out)
    cfg = {"inputs": [{"name": "in", "type": "tcp",
                       "listen": "127.0.0.1:%d" % port}],
           "outputs": [o], "routes": [{"topics": "*", "to": "hook"}]}
    eng = sluice(cfg)
    eng.address = "127.0.0.1:%d" % port
    return eng


def events(n, topic="t", **kw):
    return [dict({"topic": topic, "payload": i}, **kw) for i in range(n)]


# ---- delivery and the ledger ----------------------------------------------


def test_every_event_arrives_exactly_once_as_ndjson_on_200(sluice):
    with Hook() as hook:
        eng = engine(sluice, hook.url + "/ingest")
        n = 3000
        send_events(eng.address, events(n))
        got = hook.wait_delivered(n)
        time.sleep(0.3)
        assert sorted(hook.delivered()) == list(range(n))  # none twice
        assert got[:n] == list(range(n))  # in order
        r = hook.requests[0]
        assert r["path"] == "/ingest"
        assert r["headers"]["content-type"] == "application/x-ndjson"
        assert r["events"][0]["topic"] == "t" and "id" in r["events"][0]
        assert len(hook.requests) < n  # batched
        # keep-alive: a handful of connections, not one per request
        assert len(hook.connections) <= 8
        assert eng.stop() == 0


@pytest.mark.parametrize("fmt,ctype", [("json_array", "application/json"),
                                       ("msgpack", "application/msgpack"),
                                       ("json", "application/json")])
def test_formats_carry_every_event(sluice, fmt, ctype):
    with Hook() as hook:
        eng = engine(sluice, hook.url + "/in", format=fmt)
        send_events(eng.address, events(50))
        hook.wait_delivered(50)
        assert sorted(hook.delivered()) == list(range(50))
        assert all(r["headers"]["content-type"] == ctype for r in hook.requests)
        if fmt == "json":
            assert len(hook.requests) == 50  # one request per event
            assert all(len(r["events"]) == 1 for r in hook.requests)
        if fmt == "msgpack":
            assert _unpack_all(hook.requests[0]["body"])[0]["topic"] == "t"
        assert eng.stop() == 0


def test_body_payload_sends_only_the_payloads(sluice):
    with Hook() as hook:
        eng = engine(sluice, hook.url + "/in", format="json_array", body="payload")
        send_events(eng.address, [{"topic": "t", "payload": {"n": i}} for i in range(5)])
        wait_for(lambda: sum(len(r["events"]) for r in hook.requests) >= 5)
        assert [e for r in hook.requests for e in r["events"]] == [{"n": i} for i in range(5)]
        assert eng.stop() == 0


def test_url_template_sends_one_request_per_distinct_url_percent_encoded(sluice):
    with Hook() as hook:
        eng = engine(sluice, hook.url + "/hooks/{topic}/{headers.tenant}?k={key}")
        evs = [{"topic": "orders", "payload": 0, "key": "a b", "headers": {"tenant": "x/y"}},
               {"topic": "users", "payload": 1, "key": "a b", "headers": {"tenant": "x/y"}},
               {"topic": "orders", "payload": 2, "key": "a b", "headers": {"tenant": "x/y"}},
               {"topic": "orders", "payload": 3, "headers": {}}]
        send_events(eng.address, evs)
        hook.wait_delivered(4)
        by_path = {}
        for r in hook.requests:
            by_path.setdefault(r["path"], []).extend(e["payload"] for e in r["events"])
        assert by_path == {"/hooks/orders/x%2Fy?k=a%20b": [0, 2],
                           "/hooks/users/x%2Fy?k=a%20b": [1],
                           "/hooks/orders/?k=": [3]}
        assert eng.stop() == 0


def test_an_unknown_url_field_stops_the_start_naming_it(sluice):
    from conftest import EngineExited
    with pytest.raises(EngineExited) as e:
        engine(sluice, "http://127.0.0.1:1/{nope}")
    assert "{nope}" in str(e.value)


# ---- failures: retry, Retry-After, timeouts, dead letter ----------------


def test_500_then_200_retries_and_loses_nothing(sluice):
    with Hook() as hook:
        calls = []

        def answer(req):
            calls.append(1)
            return (500, {}, b"busy") if len(calls) <= 3 else (200, {}, b"")
        hook.answer = answer
        eng = engine(sluice, hook.url + "/in")
        send_events(eng.address, events(200))
        got = hook.wait_delivered(200)
        assert sorted(set(got)) == list(range(200))
        assert [r["answered"] for r in hook.requests[:3]] == [500, 500, 500]
        assert eng.stop() == 0


def test_429_waits_for_retry_after_seconds(sluice):
    with Hook() as hook:
        hook.answer = lambda req: ((429, {"Retry-After": "2"}, b"slow down")
                                   if len(hook.requests) == 0 else (200, {}, b""))
        eng = engine(sluice, hook.url + "/in")  # backoff 20 ms without it
        send_events(eng.address, events(10))
        hook.wait_delivered(10)
        gap = hook.requests[1]["time"] - hook.requests[0]["time"]
        assert 1.8 <= gap < 6, gap
        assert eng.stop() == 0


def test_503_with_an_http_date_retry_after_is_honoured(sluice):
    from email.utils import formatdate
    with Hook() as hook:
        hook.answer = lambda req: ((503, {"Retry-After": formatdate(time.time() + 3, usegmt=True)}, b"")
                                   if len(hook.requests) == 0 else (200, {}, b""))
        eng = engine(sluice, hook.url + "/in")
        send_events(eng.address, events(3))
        hook.wait_delivered(3)
        gap = hook.requests[1]["time"] - hook.requests[0]["time"]
        assert 1.0 <= gap < 8, gap  # the date has a one-second resolution
        assert eng.stop() == 0


def test_a_slow_server_times_out_and_the_events_are_sent_again(sluice):
    with Hook() as hook:
        hook.answer = lambda req: "slow:3" if len(hook.requests) == 0 else (200, {}, b"")
        eng = engine(sluice, hook.url + "/in", timeout_ms=300)
        send_events(eng.address, events(20))
        wait_for(lambda: len(hook.requests) >= 2, timeout=10)
        gap = hook.requests[1]["time"] - hook.requests[0]["time"]
        assert gap < 2.5, gap  # did not wait for the slow answer
        got = hook.wait_delivered(20)
        assert sorted(set(got)) == list(range(20))
        assert eng.wait_log("http output cannot deliver; retrying with backoff")
        assert eng.stop() == 0


def test_a_connection_closed_mid_response_is_retried(sluice):
    with Hook() as hook:
        hook.answer = lambda req: "close" if len(hook.requests) < 2 else (200, {}, b"")
        eng = engine(sluice, hook.url + "/in")
        send_events(eng.address, events(30))
        got = hook.wait_delivered(30)
        assert sorted(set(got)) == list(range(30))
        assert [r["answered"] for r in hook.requests[:2]] == ["close", "close"]
        assert eng.stop() == 0


def test_a_server_that_is_down_is_retried_until_it_is_up(sluice):
    port = free_port()
    eng = engine(sluice, "http://127.0.0.1:%d/in" % port)
    send_events(eng.address, events(10))
    eng.wait_log("http output cannot deliver; retrying with backoff")
    with Hook(port=port) as hook:
        got = hook.wait_delivered(10)
        assert sorted(set(got)) == list(range(10))
    assert eng.stop() == 0


def test_400_sends_the_event_to_the_dead_letter_with_status_and_body(sluice):
    with Hook() as hook:
        hook.answer = lambda req: (400, {"Content-Type": "text/plain"},
                                   "bad field: ü".encode() + b"x" * 1000)
        eng = engine(sluice, hook.url + "/in")
        send_events(eng.address, events(1))
        wait_lines(eng.path("var/dead-letter.ndjson"), 1, timeout=10)
        (e,) = read_ndjson(eng.path("var/dead-letter.ndjson"))
        assert e["payload"] == 0
        h = e["headers"]
        assert h["sluice-http-status"] == "400"
        assert h["sluice-http-body"].startswith("bad field: ü")
        assert len(h["sluice-http-body"].encode()) <= 256
        assert "HTTP 400" in h["sluice-error"]
        assert h["sluice-output"] == "hook"
        assert eng.stop() == 0


def test_a_refused_batch_is_resent_one_event_per_request_so_only_the_bad_one_is_dead_lettered(sluice):
    with Hook() as hook:
        hook.answer = lambda req: ((422, {}, b"no 13 here")
                                   if any(e["payload"] == 13 for e in req["events"])
                                   else (200, {}, b""))
        eng = engine(sluice, hook.url + "/in")
        send_events(eng.address, events(40))
        wait_lines(eng.path("var/dead-letter.ndjson"), 1, timeout=10)
        got = hook.wait_delivered(39)
        time.sleep(0.3)
        assert sorted(hook.delivered()) == [i for i in range(40) if i != 13]
        dead = read_ndjson(eng.path("var/dead-letter.ndjson"))
        assert [e["payload"] for e in dead] == [13]
        assert dead[0]["headers"]["sluice-http-status"] == "422"
        assert dead[0]["headers"]["sluice-http-body"] == "no 13 here"
        assert eng.stop() == 0


def test_a_huge_answer_is_cut_off_and_its_status_stands(sluice):
    big = b"z" * (5 << 20)  # past the 1 MiB read
    with Hook() as hook:
        hook.answer = lambda req: ((400, {}, big) if req["events"][0]["payload"] == 0
                                   else (200, {}, big))
        eng = engine(sluice, hook.url + "/in", format="json")
        send_events(eng.address, events(3))
        wait_lines(eng.path("var/dead-letter.ndjson"), 1, timeout=10)
        (e,) = read_ndjson(eng.path("var/dead-letter.ndjson"))
        assert e["payload"] == 0
        assert e["headers"]["sluice-http-body"] == "z" * 256
        got = hook.wait_delivered(2)
        assert sorted(set(got)) == [1, 2]
        assert eng.stop() == 0


def test_exhausted_retries_on_5xx_dead_letter_with_the_last_status(sluice):
    with Hook() as hook:
        hook.answer = lambda req: (502, {}, b"gateway down")
        eng = engine(sluice, hook.url + "/in",
                     retry={"initial_ms": 10, "max_ms": 20, "max_attempts": 2},
                     breaker=False)
        send_events(eng.address, events(3))
        wait_lines(eng.path("var/dead-letter.ndjson"), 3, timeout=10)
        dead = read_ndjson(eng.path("var/dead-letter.ndjson"))
        assert sorted(e["payload"] for e in dead) == [0, 1, 2]
        assert dead[0]["headers"]["sluice-http-status"] == "502"
        assert dead[0]["headers"]["sluice-http-body"] == "gateway down"
        assert eng.stop() == 0


# ---- gzip, headers, auth ----------------------------------------------------


def test_gzip_compresses_request_bodies(sluice):
    with Hook() as hook:
        eng = engine(sluice, hook.url + "/in", gzip=True)
        send_events(eng.address, events(500, topic="compressible"))
        hook.wait_delivered(500)
        r = hook.requests[0]
        assert r["headers"]["content-encoding"] == "gzip"
        assert r["raw"][:2] == b"\x1f\x8b"
        assert len(r["raw"]) < len(r["body"]) / 3
        assert sorted(hook.delivered()) == list(range(500))
        assert eng.stop() == 0


def test_static_headers_take_env_and_bearer_token(sluice, monkeypatch):
    monkeypatch.setenv("HOOK_TOKEN", "s3cr3t")
    monkeypatch.setenv("HOOK_TEAM", "blue")
    with Hook() as hook:
        eng = engine(sluice, hook.url + "/in",
                     headers={"X-Team": "${HOOK_TEAM}", "X-Static": "1"},
                     bearer_token="${HOOK_TOKEN}")
        send_events(eng.address, events(1))
        hook.wait_delivered(1)
        h = hook.requests[0]["headers"]
        assert h["authorization"] == "Bearer s3cr3t"
        assert h["x-team"] == "blue" and h["x-static"] == "1"
        assert eng.stop() == 0


def test_a_long_bearer_token_goes_whole(sluice, tmp_path, monkeypatch):
    """A bearer token of a few KB (a JWT with many claims; OAuth access
    tokens of 1.5 to 4 KB are common) went out cut to 1077 bytes from
    bearer_token and to 1023 from bearer_token_file (fixed buffers, no
    error): every request was refused by the server, for good, with
    nothing in the log saying why."""
    token = "eyJ" + "x" * 3000 + ".sig"
    monkeypatch.setenv("HOOK_TOKEN", token)
    tf = tmp_path / "token"
    tf.write_text(token + "\n")
    for kw in ({"bearer_token": "${HOOK_TOKEN}"},
               {"bearer_token_file": str(tf)}):
        with Hook() as hook:
            eng = engine(sluice, hook.url + "/in", **kw)
            send_events(eng.address, events(1))
            hook.wait_delivered(1)
            got = hook.requests[0]["headers"]["authorization"]
            assert got == "Bearer " + token, (kw, len(got))
            assert eng.stop() == 0


def test_basic_auth_reads_the_password_from_a_file(sluice, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("hunter2\n")
    with Hook() as hook:
        eng = engine(sluice, hook.url + "/in", user="ops", password_file=str(pw))
        send_events(eng.address, events(1))
        hook.wait_delivered(1)
        auth = hook.requests[0]["headers"]["authorization"]
        assert auth == "Basic " + base64.b64encode(b"ops:hunter2").decode()
        assert eng.stop() == 0


def test_a_header_value_with_a_line_break_is_refused_at_start(sluice):
    from conftest import EngineExited
    with pytest.raises(EngineExited) as e:
        engine(sluice, "http://127.0.0.1:1/", headers={"X-A": "a\r\nX-B: b"})
    assert "X-A" in str(e.value)


# ---- HTTPS ------------------------------------------------------------------


def tls_server(certs, client_ca=False):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.__getattr__("server.pem"), certs.__getattr__("server.key"))
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(certs.__getattr__("ca.pem"))
    return ctx


def test_https_with_the_tls_block_verifies_the_server_and_delivers(sluice, certs):
    with Hook(tls=tls_server(certs)) as hook:
        url = "https://localhost:%d/in" % hook.port
        eng = engine(sluice, url, tls={"ca_file": certs.__getattr__("ca.pem")})
        send_events(eng.address, events(100))
        assert sorted(hook.wait_delivered(100)) == list(range(100))
        assert eng.stop() == 0


def test_https_refuses_a_server_its_ca_did_not_sign(sluice, certs):
    with Hook(tls=tls_server(certs)) as hook:
        url = "https://localhost:%d/in" % hook.port
        eng = engine(sluice, url, tls={"ca_file": certs.__getattr__("rogue_ca.pem")})
        send_events(eng.address, events(1))
        line = eng.wait_log("http output cannot deliver; retrying with backoff", timeout=10)
        assert "certificate" in line["error"].lower() or "ssl" in line["error"].lower()
        assert hook.requests == []
        eng.kill()  # its event can never be delivered: a stop would wait


def test_https_presents_a_client_certificate_for_mtls(sluice, certs):
    with Hook(tls=tls_server(certs, client_ca=True)) as hook:
        url = "https://localhost:%d/in" % hook.port
        eng = engine(sluice, url, tls={"ca_file": certs.__getattr__("ca.pem"),
                                       "cert_file": certs.__getattr__("client.pem"),
                                       "key_file": certs.__getattr__("client.key"),
                                       "min_version": "1.3"})
        send_events(eng.address, events(5))
        assert sorted(hook.wait_delivered(5)) == list(range(5))
        assert eng.stop() == 0


# ---- durability ---------------------------------------------------------------


def test_kill9_with_a_disk_buffer_loses_no_acked_event(sluice):
    with Hook() as hook:
        hook.answer = lambda req: (503, {}, b"")  # down while events come in
        eng = engine(sluice, hook.url + "/in",
                     buffer={"type": "disk", "max_bytes": "64MiB", "fsync": "always"})
        n = 2000
        assert acked_client(eng.address, events(n)) == n
        eng.kill()
        hook.answer = lambda req: (200, {}, b"")
        eng = eng.restart()
        got = hook.wait_delivered(n, timeout=30)
        assert sorted(set(got)) == list(range(n))
        assert eng.stop() == 0


def test_healthy_metric_follows_the_last_request(sluice):
    admin = free_port()
    with Hook() as hook:
        hook.answer = lambda req: (500, {}, b"")
        port = free_port()
        cfg = {"inputs": [{"name": "in", "type": "tcp", "listen": "127.0.0.1:%d" % port}],
               "outputs": [{"name": "hook", "type": "http", "url": hook.url + "/in",
                            "retry": {"initial_ms": 20, "max_ms": 100}}],
               "routes": [{"topics": "*", "to": "hook"}],
               "admin": {"listen": "127.0.0.1:%d" % admin}}
        eng = sluice(cfg)
        addr = "127.0.0.1:%d" % admin
        send_events("127.0.0.1:%d" % port, events(2))
        wait_for(lambda: metric(addr, "sluice_output_healthy", output="hook") == 0)
        hook.answer = lambda req: (200, {}, b"")
        wait_for(lambda: metric(addr, "sluice_output_healthy", output="hook") == 1, timeout=10)
        assert eng.stop() == 0


# ---- the example ------------------------------------------------------------


def test_http_webhook_example_runs_end_to_end(sluice, tmp_path):
    """examples/http-webhook: the commands its config shows, with free ports."""
    import os
    import subprocess
    from pathlib import Path
    ex = Path(__file__).resolve().parents[2] / "examples" / "http-webhook"
    hook_port, listen = free_port(), free_port()
    out = tmp_path / "received.ndjson"
    env = dict(os.environ, HOOK_TOKEN="t0ken")
    recv = subprocess.Popen(["python3", str(ex / "receiver.py"),
                             "127.0.0.1:%d" % hook_port, str(out)], env=env)
    try:
        eng = sluice((ex / "webhook.conf.lua").read_text(), env={
            "LISTEN": "127.0.0.1:%d" % listen, "HOOK_TOKEN": "t0ken",
            "HOOK_URL": "http://127.0.0.1:%d/hooks/{topic}" % hook_port})
        for body in ('{"topic":"orders.created","payload":{"amount":12}}',
                     '{"topic":"users.new","payload":{"name":"ada"}}'):
            r = subprocess.run(["curl", "-sS", "-H", "Content-Type: application/json",
                                "-d", body, "http://127.0.0.1:%d/v1/events" % listen],
                               capture_output=True, timeout=10)
            assert r.returncode == 0, r.stderr
        got = wait_lines(out, 2, timeout=15)
        got = sorted((json.loads(l) for l in got), key=lambda x: x["path"])
        assert [(g["path"], g["event"]["payload"]) for g in got] == [
            ("/hooks/orders.created", {"amount": 12}),
            ("/hooks/users.new", {"name": "ada"})]
        assert got[0]["event"]["headers"] is not None
        assert eng.stop() == 0
    finally:
        recv.kill()
        recv.wait()


def test_http_webhook_example_with_the_wrong_token_dead_letters(sluice, tmp_path):
    import os
    import subprocess
    from pathlib import Path
    ex = Path(__file__).resolve().parents[2] / "examples" / "http-webhook"
    hook_port, listen = free_port(), free_port()
    env = dict(os.environ, HOOK_TOKEN="right")
    recv = subprocess.Popen(["python3", str(ex / "receiver.py"),
                             "127.0.0.1:%d" % hook_port, str(tmp_path / "r.ndjson")], env=env)
    try:
        eng = sluice((ex / "webhook.conf.lua").read_text(), env={
            "LISTEN": "127.0.0.1:%d" % listen, "HOOK_TOKEN": "wrong",
            "HOOK_URL": "http://127.0.0.1:%d/hooks/{topic}" % hook_port})
        subprocess.run(["curl", "-sS", "-H", "Content-Type: application/json", "-d",
                        '{"topic":"a","payload":1}', "http://127.0.0.1:%d/v1/events" % listen],
                       check=True, capture_output=True, timeout=10)
        wait_lines(eng.path("var/dead-letter.ndjson"), 1, timeout=15)
        (e,) = read_ndjson(eng.path("var/dead-letter.ndjson"))
        assert e["headers"]["sluice-http-status"] == "401"
        assert e["headers"]["sluice-http-body"] == "bad token"
        assert eng.stop() == 0
    finally:
        recv.kill()
        recv.wait()


# ---- sluice -> sluice over HTTP ----------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_http_output_into_a_sluice_http_input_keeps_every_event_intact(sluice, gz):
    sink_port = free_port()
    sink = sluice({"inputs": [{"name": "web", "type": "http",
                               "listen": "127.0.0.1:%d" % sink_port}],
                   "outputs": [{"name": "f", "type": "file", "path": "got.ndjson"}],
                   "routes": [{"topics": "*", "to": "f"}]}, name="sink")
    eng = engine(sluice, "http://127.0.0.1:%d/v1/events" % sink_port, gzip=gz)
    sent = [{"topic": "t.%d" % (i % 3), "key": "k%d" % i, "payload": {"n": i, "b": b"\x00\xff"},
             "headers": {"h": str(i)}} for i in range(2000)]
    send_events(eng.address, sent)
    wait_lines(sink.path("got.ndjson"), 2000, timeout=20)
    got = read_ndjson(sink.path("got.ndjson"))
    assert len(got) == 2000
    assert [(e["topic"], e["key"], e["payload"]["n"], e["headers"]["h"]) for e in got] == \
        [(s["topic"], s["key"], s["payload"]["n"], s["headers"]["h"]) for s in sent]
    assert got[0]["payload"]["b"] == {"$bin": "AP8="}  # binary survived
    assert len({e["id"] for e in got}) == 2000  # ids kept end to end
    assert eng.stop() == 0
    assert sink.stop() == 0


# ---- valgrind ----------------------------------------------------------------


def test_http_output_and_otlp_ingest_are_valgrind_clean(tmp_path):
    """The http output (200, a refused event, a 500 then retry, gzip) and
    OTLP ingest (gzip body) under valgrind: no memory error, no leak."""
    import os
    import shutil
    import signal
    import subprocess
    import urllib.request
    from conftest import SLUICE_BIN, connect
    if os.environ.get("SLUICE_ASAN") or shutil.which("valgrind") is None:
        pytest.skip("valgrind does not run sanitizer builds")
    with Hook() as hook:
        calls = []

        def answer(req):
            calls.append(1)
            if len(calls) == 2:
                return (500, {}, b"once")
            if any(e.get("payload") == 7 for e in req["events"]):
                return (400, {}, b"no 7")
            return (200, {}, b"")
        hook.answer = answer
        port, web, admin = free_port(), free_port(), free_port()
        cfg = tmp_path / "c.lua"
        cfg.write_text("""return {
  inputs = { { name = "app", type = "tcp", listen = "127.0.0.1:%d" },
             { name = "web", type = "http", listen = "127.0.0.1:%d" } },
  outputs = { { name = "hook", type = "http", url = "%s/in/{topic}", gzip = true,
                batch_events = 8, retry = { initial_ms = 20, max_ms = 50 } } },
  routes = { { topics = "*", to = "hook" } },
  admin = { listen = "127.0.0.1:%d" },
}""" % (port, web, hook.url, admin))
        log = tmp_path / "valgrind.log"
        proc = subprocess.Popen(
            ["valgrind", "--leak-check=full", "--error-exitcode=99",
             "--errors-for-leak-kinds=definite,indirect", "--log-file=%s" % log,
             SLUICE_BIN, "run", "-c", str(cfg)],
            stderr=open(tmp_path / "engine.log", "w"), cwd=tmp_path)
        try:
            def ready():
                try:
                    with urllib.request.urlopen(
                            "http://127.0.0.1:%d/readyz" % admin, timeout=5) as r:
                        return r.status == 200
                except OSError:
                    return False
            wait_for(ready, timeout=60, interval=0.2, what="the engine under valgrind")
            s = connect("127.0.0.1:%d" % port)
            for i in range(40):
                s.sendall(msgpack.packb({"topic": "t%d" % (i % 2), "payload": i}))
            s.close()
            body = gzip.compress(json.dumps({"resourceLogs": [{"scopeLogs": [
                {"logRecords": [{"body": {"stringValue": "otlp"}}]}]}]}).encode())
            req = urllib.request.Request(
                "http://127.0.0.1:%d/v1/logs" % web, method="POST", data=body,
                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
            assert urllib.request.urlopen(req, timeout=30).status == 200
            # at-least-once: a batch split over two URLs goes again whole
            # when one of them failed
            wait_for(lambda: {p for p in hook.delivered() if p != "otlp"} ==
                     set(range(40)) - {7}, timeout=60, what="all but 7")
            # the OTLP record went its own way: it may come a little later
            wait_for(lambda: "otlp" in hook.delivered(), timeout=60,
                     what="the OTLP record")
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(120)
    report = log.read_text()
    assert rc == 0, report[-3000:]
    assert "ERROR SUMMARY: 0 errors" in report, report[-3000:]


# ---- README claims (HTTP output) -------------------------------------------


def test_a_batch_over_64_distinct_urls_is_sent_whole_one_request_per_url(sluice):
    """One request per distinct URL, at most 64 a batch: the first request
    is put off (503, Retry-After 1) so the next batch holds about 100
    events with 100 keys; every event arrives once, each request carries
    one URL's events."""
    with Hook() as hook:
        hook.answer = lambda req: ((503, {"Retry-After": "1"}, b"")
                                   if len(hook.requests) == 0 else (200, {}, b""))
        eng = engine(sluice, hook.url + "/k/{key}")
        send_events(eng.address, events(1, key="first"))
        wait_for(lambda: len(hook.requests) == 1, what="the first request")
        send_events(eng.address, [{"topic": "t", "key": "k%d" % i, "payload": i}
                                  for i in range(100)])
        hook.wait_delivered(101)
        assert sorted(hook.delivered(), key=str) == sorted([0] + list(range(100)), key=str)
        for r in hook.requests:
            assert {"/k/" + (e["key"]) for e in r["events"]} == {r["path"]}
        assert eng.stop() == 0


def test_a_429_retry_after_still_counts_as_an_attempt(sluice):
    """429 waits for Retry-After instead of the backoff, and the attempt
    counts: with max_attempts = 2 the event goes to the dead letter after
    two requests, with the last status."""
    with Hook() as hook:
        hook.answer = lambda req: (429, {"Retry-After": "1"}, b"slow down")
        eng = engine(sluice, hook.url + "/in",
                     retry={"initial_ms": 10, "max_ms": 20, "max_attempts": 2},
                     breaker=False)
        send_events(eng.address, events(1))
        wait_lines(eng.path("var/dead-letter.ndjson"), 1, timeout=15)
        (e,) = read_ndjson(eng.path("var/dead-letter.ndjson"))
        assert e["headers"]["sluice-http-status"] == "429"
        assert len(hook.requests) == 2
        assert hook.requests[1]["time"] - hook.requests[0]["time"] >= 0.9
        assert eng.stop() == 0


def test_tls_server_name_is_refused_at_start(sluice):
    from conftest import EngineExited
    with pytest.raises(EngineExited) as e:
        engine(sluice, "https://127.0.0.1:1/", tls={"server_name": "other"})
    assert "tls.server_name: the http output checks the url's host" in str(e.value)


def test_a_refused_event_is_no_outage_and_a_429_is_logged_once_each_way(sluice):
    """README Health: a 4xx refusal leaves sluice_output_healthy at 1; a
    429 makes it 0; the change is logged once each way."""
    admin = free_port()
    with Hook() as hook:
        hook.answer = lambda req: (400, {}, b"no")
        port = free_port()
        cfg = {"inputs": [{"name": "in", "type": "tcp", "listen": "127.0.0.1:%d" % port}],
               "outputs": [{"name": "hook", "type": "http", "url": hook.url + "/in",
                            "retry": {"initial_ms": 20, "max_ms": 100}, "breaker": False}],
               "routes": [{"topics": "*", "to": "hook"}],
               "admin": {"listen": "127.0.0.1:%d" % admin}}
        eng = sluice(cfg)
        addr = "127.0.0.1:%d" % admin
        send_events("127.0.0.1:%d" % port, events(1))
        wait_lines(eng.path("var/dead-letter.ndjson"), 1, timeout=10)
        assert metric(addr, "sluice_output_healthy", output="hook") == 1
        hook.answer = lambda req: (429, {"Retry-After": "1"}, b"")
        send_events("127.0.0.1:%d" % port, events(1))
        wait_for(lambda: metric(addr, "sluice_output_healthy", output="hook") == 0)
        hook.answer = lambda req: (200, {}, b"")
        hook.wait_delivered(1)
        wait_for(lambda: metric(addr, "sluice_output_healthy", output="hook") == 1)
        eng.wait_log("http output delivers again")
        assert eng.stop() == 0
        assert len(eng.find_logs("http output cannot deliver; retrying with backoff")) == 1
        assert len(eng.find_logs("http output delivers again")) == 1


def test_a_later_url_that_succeeded_is_sent_again_when_an_earlier_one_failed(sluice):
    """README Outcomes: a batch split over several URLs is reported in
    order, so when the earlier URL fails and the later one succeeds, the
    later one's events are sent again: at least once, never lost."""
    state = {"a_failed": False}
    with Hook() as hook:
        def answer(req):
            if len(hook.requests) == 0:
                return (503, {"Retry-After": "1"}, b"")  # let a and b queue up
            if req["path"] == "/k/a" and not state["a_failed"]:
                state["a_failed"] = True
                return (500, {}, b"")
            return (200, {}, b"")
        hook.answer = answer
        # one worker: a's event comes before b's in the batch (over workers
        # the two may be applied the other way round)
        port = free_port()
        eng = sluice({"workers": 1,
                      "inputs": [{"name": "in", "type": "tcp",
                                  "listen": "127.0.0.1:%d" % port}],
                      "outputs": [{"name": "hook", "type": "http",
                                   "url": hook.url + "/k/{key}", "breaker": False,
                                   "retry": {"initial_ms": 20, "max_ms": 200}}],
                      "routes": [{"topics": "*", "to": "hook"}]})
        eng.address = "127.0.0.1:%d" % port
        send_events(eng.address, events(1, key="first"))
        wait_for(lambda: len(hook.requests) == 1, what="the first request")
        send_events(eng.address, [{"topic": "t", "key": "a", "payload": "a"},
                                  {"topic": "t", "key": "b", "payload": "b"}])
        wait_for(lambda: hook.delivered().count("a") == 1, what="a delivered")
        assert state["a_failed"]
        # the resent a and b go as two requests at once: a's answer can come
        # before b's request is in (a CI run read the paths then and saw b
        # once)
        wait_for(lambda: hook.delivered().count("b") >= 2, what="b sent again")
        paths = [r["path"] for r in hook.requests]
        b_at = [i for i, p in enumerate(paths) if p == "/k/b"]
        a_fail = paths.index("/k/a")
        # b was answered 200 in the batch where a failed, and sent again after
        assert len(b_at) >= 2 and b_at[0] < paths.index("/k/a", a_fail + 1), paths
        assert hook.delivered().count("b") >= 2
        assert eng.stop() == 0


class Gate:
    """An HTTP/1.1 keep-alive server that holds every answer until the test
    lets it go (.release(n): n more answers; .open(): all), counting the
    connections open and the requests waiting for their answer at once
    (.conns / .waiting now, .peak_conns / .peak_waiting over the run).
    Each request is recorded in .requests (path, decoded events) once
    answered (200)."""

    def __init__(self):
        gate = self
        self.cond = threading.Condition()
        self.permits = 0
        self.opened = False
        self.conns = self.peak_conns = self.accepted = 0
        self.waiting = self.peak_waiting = 0
        self.requests = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def setup(self):
                super().setup()
                with gate.cond:
                    gate.conns += 1
                    gate.accepted += 1
                    gate.peak_conns = max(gate.peak_conns, gate.conns)
                    gate.cond.notify_all()

            def finish(self):
                with gate.cond:
                    gate.conns -= 1
                    gate.cond.notify_all()
                super().finish()

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                deadline = time.monotonic() + 60  # a test that failed lets go
                with gate.cond:
                    gate.waiting += 1
                    gate.peak_waiting = max(gate.peak_waiting, gate.waiting)
                    gate.cond.notify_all()
                    while not gate.opened and gate.permits == 0 and \
                            time.monotonic() < deadline:
                        gate.cond.wait(0.1)
                    if not gate.opened and gate.permits:
                        gate.permits -= 1
                    gate.waiting -= 1
                    gate.requests.append(
                        {"path": self.path,
                         "events": decode(self.headers.get("Content-Type", ""), raw)})
                    gate.cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # 64 connections at once, no SYN retries
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # the engine closing its connections at its stop

        self.server = Server(("127.0.0.1", free_port()), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def release(self, n=1):
        with self.cond:
            self.permits += n
            self.cond.notify_all()

    def open(self):
        with self.cond:
            self.opened = True
            self.cond.notify_all()

    def answered(self):
        with self.cond:
            return len(self.requests)

    def settled(self):
        """Every connection the engine opened is accepted and its request
        read: none in the listen socket's accept queue, each open one has
        its request waiting. Read under the lock."""
        port = self.server.server_address[1]
        return self.conns == self.waiting and _tcp_queues(port, 0)[1] == 0

    def wait(self, pred, what, timeout=30):
        """Until pred(self) holds, read under the lock."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail("timed out waiting for %s (conns %d, waiting %d, "
                                "answered %d)" % (what, self.conns, self.waiting,
                                                  len(self.requests)))
                self.cond.wait(min(left, 0.1))

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.open()
        self.server.shutdown()
        self.server.server_close()


def gated_engine(sluice, gate, path, **out):
    """engine() with an admin server (eng.admin) for the queue depth."""
    port, admin = free_port(), free_port()
    o = {"name": "hook", "type": "http", "url": gate.url + path}
    o.update(out)
    eng = sluice({"inputs": [{"name": "in", "type": "tcp",
                              "listen": "127.0.0.1:%d" % port}],
                  "outputs": [o], "routes": [{"topics": "*", "to": "hook"}],
                  "admin": {"listen": "127.0.0.1:%d" % admin}})
    eng.address = "127.0.0.1:%d" % port
    eng.admin = "127.0.0.1:%d" % admin
    return eng


def held_then_queued(gate, eng, evs):
    """A first event whose request the gate holds, then evs queued behind
    it: the batch after it holds them all (up to batch_events, 1024). Over
    workers the engine has read them before they are queued: wait for the
    queue to hold them all."""
    send_events(eng.address, events(1, key="first"))
    gate.wait(lambda g: g.waiting == 1, "the first request")
    send_events(eng.address, evs)
    wait_for(lambda: metric(eng.admin, "sluice_queue_events", output="hook")
             == 1 + len(evs), what="%d events queued" % (1 + len(evs)))
    gate.release(1)


def test_at_most_max_connections_to_a_host_while_answers_stall(sluice):
    """README Connections: at most max_connections to a host. A batch of
    30 distinct URLs is 30 requests started at once; with answers held, 3
    connections carry them, one request each, and each answer lets the
    next one go on a kept-alive connection: never a 4th connection, never a
    4th request waiting."""
    with Gate() as gate:
        eng = gated_engine(sluice, gate, "/k/{key}", max_connections=3)
        held_then_queued(gate, eng, [{"topic": "t", "key": "k%d" % i, "payload": i}
                                     for i in range(30)])
        gate.wait(lambda g: g.waiting >= 3 and g.settled(), "3 requests waiting")
        assert gate.waiting == 3 and gate.conns == 3
        for j in range(1, 31):  # answer them one by one
            gate.release(1)
            gate.wait(lambda g: len(g.requests) == 1 + j and
                      g.waiting == min(3, 30 - j),
                      "answer %d and the next request waiting" % j)
        assert gate.peak_conns == 3, gate.peak_conns
        assert gate.peak_waiting == 3, gate.peak_waiting
        got = sorted(e["payload"] for r in gate.requests[1:] for e in r["events"])
        assert got == list(range(30))
        assert eng.stop() == 0


def test_json_sends_one_event_per_request_64_requests_in_parallel(sluice):
    """README Body: format json is one event per request, up to 64 requests
    in parallel. With answers held and 200 events queued (and connections
    to spare: max_connections 100), 64 requests wait at once, each with one
    event, and no 65th comes while any of them waits (the next 64 go once
    the batch is answered); every event arrives once."""
    with Gate() as gate:
        eng = gated_engine(sluice, gate, "/in", format="json",
                           max_connections=100)
        held_then_queued(gate, eng, events(200))
        gate.wait(lambda g: g.waiting >= 64 and g.settled(), "64 requests waiting")
        assert gate.waiting == 64, gate.waiting
        for j in range(1, 201):  # answer them one by one
            gate.release(1)
            gate.wait(lambda g: len(g.requests) == 1 + j,
                      "answer %d" % j)
        assert gate.peak_waiting == 64, gate.peak_waiting
        assert all(len(r["events"]) == 1 for r in gate.requests)
        got = sorted(e["payload"] for r in gate.requests[1:] for e in r["events"])
        assert got == list(range(200))
        assert eng.stop() == 0
