"""HTTP ingest (issue 6): the http input with curl and raw sockets against
the real binary. Content types, batches and their refusal, every error
status, bearer auth, chunked bodies, pipelining, keep-alive, limits, the
slow-loris deadline, backpressure (503 and the held 202) and trace context.

Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_http.py
"""

import json
import threading
import time

import msgpack

from conftest import Sink, free_port, read_ndjson, wait_for, wait_lines
from helpers_http import (RawClient, config, curl, elapsed, http_input,
                          metric, metrics, ports, request)

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def url(port, path="/v1/events"):
    return "http://127.0.0.1:%d%s" % (port, path)


def start(sluice, port, **kw):
    return sluice(config(port, **kw))


def out_events(eng, n, timeout=5):
    wait_lines(eng.path("out.ndjson"), n, timeout)
    return read_ndjson(eng.path("out.ndjson"))


# ---- content types --------------------------------------------------------

def test_json_object_is_one_event_and_202_after_queueing(sluice):
    port = free_port()
    eng = start(sluice, port)
    r = curl(url(port), data='{"topic":"orders.created","key":"k1","payload":{"n":1}}',
             content_type="application/json")
    assert r.status == 202 and r.json() == {"accepted": 1}
    ev = out_events(eng, 1)[0]
    assert ev["topic"] == "orders.created" and ev["key"] == "k1"
    assert ev["payload"] == {"n": 1}
    assert ev["id"] and isinstance(ev["time"], int)


def test_json_array_is_a_batch_in_order(sluice):
    port = free_port()
    eng = start(sluice, port)
    batch = [{"topic": "t", "payload": i} for i in range(50)]
    r = curl(url(port), data=json.dumps(batch), content_type="application/json")
    assert r.status == 202 and r.json() == {"accepted": 50}
    assert [e["payload"] for e in out_events(eng, 50)] == list(range(50))


def test_ndjson_batch_skips_blank_lines(sluice):
    port = free_port()
    eng = start(sluice, port)
    body = "\n".join(json.dumps({"topic": "t", "payload": {"i": i}}) for i in range(10))
    r = curl(url(port), data=body + "\n\n", content_type="application/x-ndjson")
    assert r.status == 202 and r.json() == {"accepted": 10}
    assert [e["payload"]["i"] for e in out_events(eng, 10)] == list(range(10))


def test_msgpack_one_map_and_a_stream_of_maps(sluice):
    port = free_port()
    eng = start(sluice, port)
    one = msgpack.packb({"topic": "m", "payload": b"\x00\x01"}, use_bin_type=True)
    r = curl(url(port), data=one, content_type="application/msgpack")
    assert r.status == 202 and r.json() == {"accepted": 1}
    stream = b"".join(msgpack.packb({"topic": "m", "payload": i}) for i in range(5))
    r = curl(url(port), data=stream, content_type="application/msgpack")
    assert r.status == 202 and r.json() == {"accepted": 5}
    evs = out_events(eng, 6)
    assert evs[0]["payload"] == {"$bin": "AAE="}
    assert [e["payload"] for e in evs[1:]] == list(range(5))


def test_topic_path_takes_bare_payloads_of_each_content_type(sluice):
    port = free_port()
    eng = start(sluice, port)
    r = curl(url(port, "/v1/topics/metrics.cpu"), data='[1, 2, {"a": true}]',
             content_type="application/json; charset=utf-8")
    assert r.status == 202 and r.json() == {"accepted": 1}
    r = curl(url(port, "/v1/topics/logs%2Eapp"), data='"a"\n"b"\n3\n',
             content_type="application/x-ndjson")
    assert r.status == 202 and r.json() == {"accepted": 3}
    r = curl(url(port, "/v1/topics/bin"),
             data=msgpack.packb([1]) + msgpack.packb("x"),
             content_type="application/msgpack")
    assert r.status == 202 and r.json() == {"accepted": 2}
    evs = out_events(eng, 6)
    assert [(e["topic"], e["payload"]) for e in evs] == [
        ("metrics.cpu", [1, 2, {"a": True}]), ("logs.app", "a"), ("logs.app", "b"),
        ("logs.app", 3), ("bin", [1]), ("bin", "x")]


def test_the_inputs_topic_fills_events_without_one(sluice):
    port = free_port()
    eng = start(sluice, port, inputs=[http_input(port, topic="default.t")])
    body = '{"payload":1}\n{"topic":"own","payload":2}\n{"key":"k","payload":3}\n'
    r = curl(url(port), data=body, content_type="application/x-ndjson")
    assert r.status == 202 and r.json() == {"accepted": 3}
    r = curl(url(port), data=msgpack.packb({"payload": 4}), content_type="application/msgpack")
    assert r.status == 202
    evs = out_events(eng, 4)
    assert [(e["topic"], e["payload"]) for e in evs] == [
        ("default.t", 1), ("own", 2), ("default.t", 3), ("default.t", 4)]
    assert evs[2]["key"] == "k"


# ---- refusals -------------------------------------------------------------

def test_a_bad_event_refuses_the_whole_batch_naming_index_and_line(sluice):
    port = free_port()
    eng = start(sluice, port)
    body = '{"topic":"a"}\n{"topic":"b"}\n{"topic":"c","colour":"red"}\n{"topic":"d"}\n'
    r = curl(url(port), data=body, content_type="application/x-ndjson")
    assert r.status == 400
    assert r.json() == {"error": "unknown field 'colour'", "index": 2, "line": 3}
    r = curl(url(port), data='[{"topic":"a"},\n {"payload":1}]',
             content_type="application/json")
    assert r.status == 400
    err = r.json()
    assert err["index"] == 1 and err["line"] == 2 and "topic" in err["error"]
    # nothing of either batch was taken
    r = curl(url(port), data='{"topic":"ok"}', content_type="application/json")
    assert r.status == 202
    out_events(eng, 1)
    time.sleep(0.2)
    assert [e["topic"] for e in read_ndjson(eng.path("out.ndjson"))] == ["ok"]


def test_invalid_json_names_the_line_and_what_is_wrong(sluice):
    port = free_port()
    start(sluice, port)
    r = curl(url(port), data='{"topic":"a"}\n{"topic": nope}\n',
             content_type="application/x-ndjson")
    assert r.status == 400
    err = r.json()
    assert err["line"] == 2 and err["index"] == 1
    assert err["error"].startswith("invalid JSON")
    r = curl(url(port), data='{"topic":"a"} {"topic":"b"}', content_type="application/json")
    assert r.status == 400 and "trailing garbage" in r.json()["error"]
    r = curl(url(port), data="", content_type="application/json")
    assert r.status == 400 and "empty" in r.json()["error"]
    r = curl(url(port), data='[1]', content_type="application/json")
    assert r.status == 400 and "not a map" in r.json()["error"]


def test_bad_msgpack_names_index_and_offset(sluice):
    port = free_port()
    start(sluice, port)
    good = msgpack.packb({"topic": "a"})
    bad = msgpack.packb({"topic": 5})
    r = curl(url(port), data=good + bad, content_type="application/msgpack")
    assert r.status == 400
    err = r.json()
    assert err["index"] == 1 and err["offset"] >= len(good)
    assert "topic" in err["error"]
    r = curl(url(port), data=good + good[:-2], content_type="application/msgpack")
    assert r.status == 400 and "truncated" in r.json()["error"]
    # a declared length of 4 GiB is refused from the header, not allocated
    r = curl(url(port), data=b"\xdf\xff\xff\xff\xff", content_type="application/msgpack")
    assert r.status == 400


def test_unsupported_content_type_is_415(sluice):
    port = free_port()
    start(sluice, port)
    r = curl(url(port), "-d", "a=1")  # curl's form default
    assert r.status == 415 and "application/json" in r.json()["error"]
    r = curl(url(port), data="{}", content_type="text/plain")
    assert r.status == 415


def test_unknown_path_is_404_and_other_methods_405(sluice):
    port = free_port()
    start(sluice, port)
    assert curl(url(port, "/v2/events"), data="{}", content_type="application/json").status == 404
    assert curl(url(port, "/v1/topics/"), data="{}", content_type="application/json").status == 404
    assert curl(url(port, "/v1/topics/a/b"), data="{}", content_type="application/json").status == 404
    r = curl(url(port))
    assert r.status == 405 and r.headers["allow"] == "POST"
    r = curl(url(port, "/v1/topics/x"), method="PUT", data="1", content_type="application/json")
    assert r.status == 405


def test_body_over_max_body_bytes_is_413_whether_declared_or_chunked(sluice):
    port = free_port()
    eng = start(sluice, port, inputs=[http_input(port, max_body_bytes=1024)])
    big = json.dumps([{"topic": "t", "payload": "x" * 100}] * 20)
    r = curl(url(port), data=big, content_type="application/json")
    assert r.status == 413 and "max_body_bytes" in r.json()["error"]
    c = RawClient(port)
    c.send(request("POST", "/v1/events", big, "application/json", chunked=True))
    r = c.read_response()
    assert r.status == 413 and r.headers["connection"] == "close"
    assert c.closed()
    c.close()
    # exactly at the limit is fine, and the engine still serves
    ok = '{"topic":"t","payload":"%s"}' % ("z" * (1024 - 26))
    assert len(ok) == 1024
    assert curl(url(port), data=ok, content_type="application/json").status == 202
    assert len(out_events(eng, 1)) == 1


def test_request_head_over_16KiB_is_431(sluice):
    port = free_port()
    start(sluice, port)
    c = RawClient(port)
    c.send(request("POST", "/v1/events", '{"topic":"t"}', "application/json",
                   headers=["X-Big: " + "a" * 17000]))
    r = c.read_response()
    assert r.status == 431
    assert c.closed()
    c.close()
    many = ["X-H%d: v" % i for i in range(150)]
    c = RawClient(port)
    c.send(request("POST", "/v1/events", '{"topic":"t"}', "application/json", headers=many))
    assert c.read_response().status == 431
    c.close()


def test_malformed_request_is_400_and_closed(sluice):
    port = free_port()
    start(sluice, port)
    c = RawClient(port)
    c.send(b"POST /v1/events HTTP/1.1\r\nContent-Length: abc\r\n\r\n")
    r = c.read_response()
    assert r.status == 400 and "bad request" in r.json()["error"]
    assert c.closed()
    c.close()


def test_bearer_token_is_required_when_configured(sluice, tmp_path):
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    eng = start(sluice, port, inputs=[http_input(port, bearer_token_file=str(token_file))])
    body = '{"topic":"t"}'
    r = curl(url(port), data=body, content_type="application/json")
    assert r.status == 401 and r.headers["www-authenticate"].startswith("Bearer")
    r = curl(url(port), data=body, content_type="application/json",
             headers=["Authorization: Bearer s3cret-toke"])
    assert r.status == 401
    r = curl(url(port), data=body, content_type="application/json",
             headers=["Authorization: Bearer s3cret-token-and-more"])
    assert r.status == 401
    r = curl(url(port), data=body, content_type="application/json",
             headers=["Authorization: Basic czNjcmV0LXRva2Vu"])
    assert r.status == 401
    r = curl(url(port), "--oauth2-bearer", "s3cret-token", data=body,
             content_type="application/json")
    assert r.status == 202
    assert len(out_events(eng, 1)) == 1


def test_missing_token_file_fails_start_with_a_clear_error(sluice, tmp_path):
    import pytest
    from conftest import EngineExited
    port = free_port()
    with pytest.raises(EngineExited) as e:
        start(sluice, port, inputs=[http_input(port, bearer_token_file=str(tmp_path / "nope"))])
    assert "bearer_token_file" in str(e.value)


# ---- the protocol ---------------------------------------------------------

def test_chunked_bodies_are_accepted(sluice):
    port = free_port()
    eng = start(sluice, port)
    body = "\n".join(json.dumps({"topic": "c", "payload": i}) for i in range(20))
    r = curl(url(port), "-H", "Transfer-Encoding: chunked", data=body,
             content_type="application/x-ndjson")
    assert r.status == 202 and r.json() == {"accepted": 20}
    c = RawClient(port)
    c.send(request("POST", "/v1/events", body, "application/x-ndjson", chunked=True))
    r = c.read_response()
    assert r.status == 202 and r.json() == {"accepted": 20}
    c.close()
    assert len(out_events(eng, 40)) == 40


def test_pipelined_requests_are_answered_in_order(sluice):
    port = free_port()
    eng = start(sluice, port)
    c = RawClient(port)
    reqs = b"".join(request("POST", "/v1/events",
                            json.dumps([{"topic": "p", "payload": i}] * (i + 1)),
                            "application/json") for i in range(5))
    reqs += request("GET", "/v1/events")
    reqs += request("POST", "/v1/events", '{"topic":"p","payload":99}', "application/json")
    c.send(reqs)  # all in one write: the engine reads them back to back
    got = [c.read_response() for _ in range(7)]
    assert [r.status for r in got] == [202] * 5 + [405, 202]
    assert [r.json().get("accepted") for r in got[:5]] == [1, 2, 3, 4, 5]
    c.close()
    evs = out_events(eng, 16)
    assert [e["payload"] for e in evs] == [i for i in range(5) for _ in range(i + 1)] + [99]


def test_a_thousand_keep_alive_requests_on_one_connection(sluice):
    port = free_port()
    eng = start(sluice, port)
    c = RawClient(port)
    for i in range(1000):
        c.send(request("POST", "/v1/events", '{"topic":"k","payload":%d}' % i,
                       "application/json"))
        r = c.read_response()
        assert r.status == 202, (i, r)
        assert r.headers.get("connection") != "close"
    c.close()
    evs = out_events(eng, 1000, timeout=10)
    assert [e["payload"] for e in evs] == list(range(1000))


def test_http_1_0_gets_one_answer_and_a_close(sluice):
    port = free_port()
    start(sluice, port)
    c = RawClient(port)
    c.send(b"POST /v1/events HTTP/1.0\r\nContent-Type: application/json\r\n"
           b"Content-Length: 13\r\n\r\n{\"topic\":\"t\"}")
    r = c.read_response()
    assert r.status == 202 and r.headers["connection"] == "close"
    assert c.closed()
    c.close()


def test_slow_loris_is_cut_off_at_the_idle_limit(sluice):
    """A byte every 200 ms keeps resetting any idle timer; the deadline for
    the whole request head (idle_timeout_ms from its first byte) does not
    move, so the connection is cut about 1 s in."""
    port = free_port()
    start(sluice, port, inputs=[http_input(port, idle_timeout_ms=1000)])
    head = request("POST", "/v1/events", '{"topic":"t"}', "application/json")
    c = RawClient(port)
    t0 = time.monotonic()
    cut_at = None
    for b in head:
        try:
            c.sock.sendall(bytes([b]))
        except (BrokenPipeError, ConnectionResetError):
            cut_at = elapsed(t0)
            break
        if c.closed(timeout=0.2):
            cut_at = elapsed(t0)
            break
        if elapsed(t0) > 5:
            break
    assert cut_at is not None, "the trickling client was never cut off"
    assert 0.8 <= cut_at <= 2.0, cut_at
    assert c.buf.startswith(b"HTTP/1.1 408 ")
    c.close()


def test_an_idle_keep_alive_connection_is_closed(sluice):
    port = free_port()
    start(sluice, port, inputs=[http_input(port, idle_timeout_ms=300)])
    c = RawClient(port)
    c.send(request("POST", "/v1/events", '{"topic":"t"}', "application/json"))
    assert c.read_response().status == 202
    t0 = time.monotonic()
    assert c.closed(timeout=3)
    assert 0.2 <= elapsed(t0) <= 2
    c.close()


def test_expect_100_continue_gets_the_go_ahead(sluice):
    port = free_port()
    eng = start(sluice, port)
    body = json.dumps([{"topic": "e", "payload": "x" * 100}] * 30)
    r = curl(url(port), "-H", "Expect: 100-continue", data=body,
             content_type="application/json")
    assert r.status == 202 and r.json() == {"accepted": 30}
    assert len(out_events(eng, 30)) == 30


# ---- backpressure ---------------------------------------------------------

def blocked_config(port, peer_port, max_events=5):
    return config(port, shutdown_timeout=1, outputs=[{
        "name": "out", "type": "tcp", "address": "127.0.0.1:%d" % peer_port,
        "queue": {"max_events": max_events}, "retry": {"initial_ms": 50, "max_ms": 100}}])


def test_503_with_retry_after_when_an_output_blocks(sluice):
    port, peer = ports(2)
    sluice(blocked_config(port, peer))  # nobody listens at peer: the queue fills
    body = json.dumps([{"topic": "t", "payload": i} for i in range(5)])
    r = curl(url(port), data=body, content_type="application/json")
    assert r.status == 202 and r.json() == {"accepted": 5}
    r = curl(url(port), data='{"topic":"t"}', content_type="application/json")
    assert r.status == 503 and r.headers["retry-after"] == "1"
    assert "backpressure" in r.json()["error"]


def test_a_batch_larger_than_the_room_is_held_and_answered_once_queued(sluice):
    port, peer = ports(2)
    sluice(blocked_config(port, peer, max_events=4))
    result = {}

    def post():
        result["r"] = curl(url(port), data=json.dumps([{"topic": "t", "payload": i}
                                                       for i in range(10)]),
                           content_type="application/json", timeout=20)
    t = threading.Thread(target=post)
    t.start()
    time.sleep(0.7)
    assert "r" not in result, "answered before the events were queued"
    with Sink(port=peer) as sink:
        t.join(20)
        assert result["r"].status == 202 and result["r"].json() == {"accepted": 10}
        evs = sink.wait(10)
        assert [e["payload"] for e in evs] == list(range(10))


# ---- trace context --------------------------------------------------------

def test_request_traceparent_fills_events_without_a_valid_one(sluice):
    port = free_port()
    eng = start(sluice, port)
    own = "00-11111111111111111111111111111111-2222222222222222-01"
    batch = [{"topic": "a"},
             {"topic": "b", "headers": {"traceparent": own, "x": "y"}},
             {"topic": "c", "headers": {"traceparent": "garbage", "x": "z"}}]
    r = curl(url(port), data=json.dumps(batch), content_type="application/json",
             headers=["traceparent: " + TP])
    assert r.status == 202
    r = curl(url(port, "/v1/topics/d"), data="1", content_type="application/json",
             headers=["traceparent: not-valid"])
    assert r.status == 202
    a, b, c, d = out_events(eng, 4)
    assert a["headers"]["traceparent"] == TP
    assert b["headers"] == {"traceparent": own, "x": "y"}
    assert c["headers"] == {"x": "z", "traceparent": TP}
    tp = d["headers"]["traceparent"]
    assert tp != TP and len(tp) == 55 and tp.startswith("00-")


def test_http_requests_are_counted_by_status_and_errors_logged(sluice):
    port, admin = ports(2)
    eng = start(sluice, port, admin_port=admin)
    curl(url(port), data='{"topic":"a"}', content_type="application/json")
    curl(url(port), data='{"topic":1}', content_type="application/json")
    curl(url(port, "/x"))
    text = metrics(admin)
    assert metric(text, "sluice_http_requests_total", input="web", code="202") == 1
    assert metric(text, "sluice_http_requests_total", input="web", code="400") == 1
    assert metric(text, "sluice_http_requests_total", input="web", code="404") == 1
    assert metric(text, "sluice_input_bad_total", input="web") == 1
    assert metric(text, "sluice_input_events_total", input="web") == 1
    line = eng.wait_log("http request refused", status=400)
    assert line["response"]["index"] == 0 and line["server"] == "web"



def test_ndjson_that_sluice_wrote_ingests_back_to_the_same_msgpack(sluice):
    """Every JSON type marker sluice writes ($bin, $float, $float32, $ext,
    $map for non-string keys) turns back into its msgpack type on ingest:
    an event written as NDJSON and posted back is the same event, byte for
    byte, in the msgpack file of a second engine."""
    def both(port):
        return config(port, outputs=[
            {"name": "json", "type": "file", "path": "out.ndjson"},
            {"name": "mp", "type": "file", "path": "out.msgpack",
             "format": "msgpack"}],
            routes=[{"topics": "*", "to": ["json", "mp"]}])
    p1, p2 = ports(2)
    first, second = sluice(both(p1)), sluice(both(p2))
    f32 = b"\xca" + msgpack.packb(0.25, use_single_float=True)[1:]
    payload = (b"\x83" + msgpack.packb("p") + msgpack.packb({
        "bin": b"\x00\xff", "nan": float("nan"), "inf": float("-inf"),
        "ext": msgpack.ExtType(3, b"\x01\x02\x03\x04"),
        "ext8": msgpack.ExtType(7, b"abc"),
        "intkeys": {1: "a", None: [True], b"k": 2.5},
        "user": {"$ext": [1, "AA=="]},  # the user's data, shaped like a marker
        "n": [0, -1, 2**64 - 1, -2**63, 0.1, "\u00e9"],
    }, use_bin_type=True) + msgpack.packb("f") + f32
        + msgpack.packb("big") + msgpack.packb(list(range(70000))))
    body = (b"\x82" + msgpack.packb("topic") + msgpack.packb("t")
            + msgpack.packb("payload") + payload)
    r = curl(url(p1), data=body, content_type="application/msgpack")
    assert r.status == 202
    line = wait_lines(first.path("out.ndjson"), 1)[0]
    assert '"$ext":[3,"AQIDBA=="]' in line and '"$float32":0.25' in line
    r = curl(url(p2), data=line, content_type="application/x-ndjson")
    assert r.status == 202, r.body
    wait_for(lambda: first.path("out.msgpack").stat().st_size > len(payload),
             what="the first engine's msgpack file")
    want = first.path("out.msgpack").read_bytes()
    wait_for(lambda: second.path("out.msgpack").stat().st_size >= len(want),
             what="the second engine's msgpack file")
    assert payload in want
    assert second.path("out.msgpack").read_bytes() == want
    assert wait_lines(second.path("out.ndjson"), 1)[0] == line
