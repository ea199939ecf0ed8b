"""OpenTelemetry logs in (issue 13, item 4): POST /v1/logs on the http input
takes ExportLogsServiceRequest in the OTLP/HTTP JSON encoding. Requests are
built from the spec's example (opentelemetry-proto examples/logs.json) and
sent with curl; answers per the OTLP/HTTP spec."""
import copy
import json

from conftest import ASAN, read_ndjson, wait_lines
from helpers_http import config, curl, http_input, ports

# opentelemetry-proto/examples/logs.json, as the spec gives it
SPEC_EXAMPLE = {
    "resourceLogs": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "my.service"}}]},
        "scopeLogs": [{
            "scope": {"name": "my.library", "version": "1.0.0", "attributes": [
                {"key": "my.scope.attribute",
                 "value": {"stringValue": "some scope attribute"}}]},
            "logRecords": [{
                "timeUnixNano": "1544712660300000000",
                "observedTimeUnixNano": "1544712660300000000",
                "severityNumber": 10,
                "severityText": "Information",
                "traceId": "5B8EFFF798038103D269B633813FC60C",
                "spanId": "EEE19B7EC3C1B174",
                "body": {"stringValue": "Example log record"},
                "attributes": [
                    {"key": "string.attribute", "value": {"stringValue": "some string"}},
                    {"key": "boolean.attribute", "value": {"boolValue": True}},
                    {"key": "int.attribute", "value": {"intValue": "10"}},
                    {"key": "double.attribute", "value": {"doubleValue": 637.704}},
                    {"key": "array.attribute", "value": {"arrayValue": {"values": [
                        {"stringValue": "many"}, {"stringValue": "values"}]}}},
                    {"key": "map.attribute", "value": {"kvlistValue": {"values": [
                        {"key": "some.map.key", "value": {"stringValue": "some value"}}]}}},
                ]}]}]}]}


def url(port):
    return "http://127.0.0.1:%d/v1/logs" % port


def start(sluice, **inp):
    (port,) = ports(1)
    eng = sluice(config(port, inputs=[http_input(port, **inp)]))
    return eng, port


def post(port, body, ctype="application/json"):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return curl(url(port), data=data, content_type=ctype)


def with_record(**rec):
    req = copy.deepcopy(SPEC_EXAMPLE)
    req["resourceLogs"][0]["scopeLogs"][0]["logRecords"] = [rec]
    return req


def test_the_spec_example_becomes_one_event_with_body_time_severity_and_traceparent(sluice):
    eng, port = start(sluice)
    r = post(port, SPEC_EXAMPLE)
    assert r.status == 200 and r.json() == {}
    wait_lines(eng.path("out.ndjson"), 1)
    (e,) = read_ndjson(eng.path("out.ndjson"))
    assert e["topic"] == "otel.logs"
    assert e["payload"] == "Example log record"
    assert e["time"] == 1544712660300000000
    h = e["headers"]
    assert h["traceparent"] == "00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-00"
    assert h["otel.severity_number"] == "10"
    assert h["otel.severity_text"] == "Information"
    assert h["otel.resource.service.name"] == "my.service"
    assert h["otel.scope.name"] == "my.library"
    assert h["otel.scope.version"] == "1.0.0"
    assert h["otel.scope.attr.my.scope.attribute"] == "some scope attribute"
    assert h["otel.attr.string.attribute"] == "some string"
    assert h["otel.attr.boolean.attribute"] == "true"
    assert h["otel.attr.int.attribute"] == "10"
    assert h["otel.attr.double.attribute"] == "637.704"
    assert json.loads(h["otel.attr.array.attribute"]) == ["many", "values"]
    assert json.loads(h["otel.attr.map.attribute"]) == {"some.map.key": "some value"}
    assert eng.stop() == 0


def test_every_anyvalue_kind_maps_to_its_msgpack_type_in_the_payload(sluice):
    eng, port = start(sluice)
    bodies = [
        ({"intValue": "-9007199254740993"}, -9007199254740993),  # past 2^53: exact
        ({"intValue": 42}, 42),
        ({"doubleValue": 1.5}, 1.5),
        ({"boolValue": False}, False),
        ({"bytesValue": "aGVsbG8="}, {"$bin": "aGVsbG8="}),
        ({"arrayValue": {"values": [{"intValue": "1"}, {"stringValue": "x"}, {}]}},
         [1, "x", None]),
        ({"kvlistValue": {"values": [{"key": "a", "value": {"kvlistValue": {"values": [
            {"key": "b", "value": {"boolValue": True}}]}}}]}}, {"a": {"b": True}}),
        ({}, None),
    ]
    req = copy.deepcopy(SPEC_EXAMPLE)
    req["resourceLogs"][0]["scopeLogs"][0]["logRecords"] = [
        {"body": b, "attributes": []} for b, _ in bodies]
    r = post(port, req)
    assert r.status == 200 and r.json() == {}
    wait_lines(eng.path("out.ndjson"), len(bodies))
    got = read_ndjson(eng.path("out.ndjson"))
    assert [e["payload"] for e in got] == [want for _, want in bodies]
    # no time in the record: the ingest time
    assert all(e["time"] > 1544712660300000000 for e in got)
    assert "traceparent" in got[0]["headers"]  # the engine's own trace context
    assert eng.stop() == 0


def test_topic_template_takes_the_service_name(sluice):
    eng, port = start(sluice, otlp_topic="logs.{service.name}")
    req = copy.deepcopy(SPEC_EXAMPLE)
    other = copy.deepcopy(req["resourceLogs"][0])
    other["resource"] = {"attributes": []}
    req["resourceLogs"].append(other)
    r = post(port, req)
    assert r.status == 200
    wait_lines(eng.path("out.ndjson"), 2)
    assert sorted(e["topic"] for e in read_ndjson(eng.path("out.ndjson"))) == [
        "logs.my.service", "logs.unknown"]
    assert eng.stop() == 0


def test_invalid_records_are_rejected_as_a_partial_success(sluice):
    eng, port = start(sluice)
    good = SPEC_EXAMPLE["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    bad = [dict(good, traceId="xyz"),
           dict(good, timeUnixNano="soon"),
           dict(good, body={"intValue": "ten"}),
           dict(good, severityNumber="high")]
    req = copy.deepcopy(SPEC_EXAMPLE)
    req["resourceLogs"][0]["scopeLogs"][0]["logRecords"] = [good] + bad + [good]
    r = post(port, req)
    assert r.status == 200
    ps = r.json()["partialSuccess"]
    assert ps["rejectedLogRecords"] == "4"
    assert ps["errorMessage"] == \
        "resourceLogs[0].scopeLogs[0].logRecords[1]: traceId: expected 32 hex digits"
    wait_lines(eng.path("out.ndjson"), 2)
    assert len(read_ndjson(eng.path("out.ndjson"))) == 2
    assert eng.stop() == 0


def test_out_of_range_times_and_non_numeric_doubles_are_refused_not_wrapped(sluice):
    """A fixed64 time of 2^63 or more does not fit ev.time: it was read
    as a negative time (2^64-1 became -1), and a doubleValue string that is
    no number became 0.0; both are now a rejected record naming the field.
    Values at the edges still go through exactly."""
    eng, port = start(sluice)
    bad = [with_record(timeUnixNano="18446744073709551615"),
           with_record(timeUnixNano="9223372036854775808"),
           with_record(observedTimeUnixNano=18446744073709551615),
           with_record(timeUnixNano=-5),
           with_record(timeUnixNano=" +5"),
           with_record(body={"intValue": 18446744073709551615}),
           with_record(body={"doubleValue": "abc"}),
           with_record(body={"doubleValue": " 12"}),
           with_record(body={"doubleValue": "inf"}),
           with_record(traceId="5b8efff798038103d269b633813fc60c",
                       spanId="eee19b7ec3c1b174", flags=4294967296)]
    words = ["timeUnixNano", "timeUnixNano", "observedTimeUnixNano",
             "timeUnixNano", "timeUnixNano", "intValue", "doubleValue",
             "doubleValue", "doubleValue", "flags"]
    for req, word in zip(bad, words):
        r = post(port, req)
        assert r.status == 200, (req, r)
        ps = r.json().get("partialSuccess")
        assert ps and ps["rejectedLogRecords"] == "1", (req, r)
        assert "logRecords[0]: " + word in ps["errorMessage"], (req, ps)
    good = [with_record(timeUnixNano="9223372036854775807"),
            with_record(body={"intValue": "-9223372036854775808"}),
            with_record(body={"doubleValue": "-1.5e3"}),
            with_record(body={"doubleValue": "NaN"})]
    for req in good:
        r = post(port, req)
        assert r.status == 200 and r.json() == {}, (req, r)
    wait_lines(eng.path("out.ndjson"), 4)
    evs = read_ndjson(eng.path("out.ndjson"))
    assert len(evs) == 4
    assert evs[0]["time"] == 9223372036854775807
    assert evs[1]["payload"] == -9223372036854775808
    assert evs[2]["payload"] == -1500.0
    assert eng.stop() == 0


def test_an_attribute_key_too_long_for_a_header_is_refused_not_cut(sluice):
    """A header name holds 255 bytes: a longer attribute key was cut to
    fit, so two keys that differ past it became one name twice (and the
    rule saw a key the sender never sent). The record is refused, named."""
    eng, port = start(sluice)
    long_key = "k" * 250  # 10 more with "otel.attr."
    req = with_record(attributes=[
        {"key": long_key + "-a", "value": {"stringValue": "1"}},
        {"key": long_key + "-b", "value": {"stringValue": "2"}}])
    r = post(port, req)
    assert r.status == 200, r
    ps = r.json().get("partialSuccess")
    assert ps and ps["rejectedLogRecords"] == "1", r
    assert "attributes: a key longer than" in ps["errorMessage"], ps
    ok = with_record(attributes=[{"key": "k" * 245, "value": {"stringValue": "1"}}])
    r = post(port, ok)
    assert r.status == 200 and r.json() == {}, r
    wait_lines(eng.path("out.ndjson"), 1)
    ev = read_ndjson(eng.path("out.ndjson"))[0]
    assert ev["headers"]["otel.attr." + "k" * 245] == "1"
    assert eng.stop() == 0


def test_malformed_json_and_a_wrong_shape_are_400(sluice):
    eng, port = start(sluice)
    for body, words in [('{"resourceLogs": [', "parse error"),
                        ('[1, 2]', "ExportLogsServiceRequest"),
                        ('{"resourceLogs": {}}', "resourceLogs: expected an array"),
                        ('{"resourceLogs": [{"scopeLogs": 7}]}', "scopeLogs")]:
        r = post(port, body)
        assert r.status == 400, (body, r)
        assert r.json()["code"] == 3
        assert words.lower() in r.json()["message"].lower(), (body, r.json())
    r = post(port, {})  # an empty request is valid: nothing to take
    assert r.status == 200 and r.json() == {}
    assert not eng.path("out.ndjson").exists() or read_ndjson(eng.path("out.ndjson")) == []
    assert eng.stop() == 0


def test_all_zero_or_missing_ids_give_no_otlp_traceparent(sluice):
    eng, port = start(sluice)
    r = post(port, with_record(traceId="0" * 32, spanId="0" * 16,
                               body={"stringValue": "a"}))
    assert r.status == 200 and r.json() == {}
    r = post(port, with_record(traceId="5B8EFFF798038103D269B633813FC60C",
                               spanId="EEE19B7EC3C1B174", flags=1,
                               body={"stringValue": "b"}))
    wait_lines(eng.path("out.ndjson"), 2)
    a, b = read_ndjson(eng.path("out.ndjson"))
    assert "5b8efff7" not in a["headers"].get("traceparent", "")  # a fresh one
    assert b["headers"]["traceparent"] == \
        "00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-01"  # sampled flag
    assert eng.stop() == 0


def test_protobuf_is_answered_415_naming_the_json_encoding(sluice):
    eng, port = start(sluice)
    r = post(port, b"\x0a\x00", ctype="application/x-protobuf")
    assert r.status == 415
    assert "protobuf is not supported" in r.json()["error"]
    assert "application/json" in r.json()["error"]
    r = post(port, "x", ctype="application/x-ndjson")
    assert r.status == 415
    assert eng.stop() == 0


def test_backpressure_is_503_with_retry_after(sluice):
    port, peer = ports(2)
    eng = sluice(config(port, shutdown_timeout=1, outputs=[{
        "name": "out", "type": "tcp", "address": "127.0.0.1:%d" % peer,
        "queue": {"max_events": 1}, "retry": {"initial_ms": 50, "max_ms": 100}}]))
    r = post(port, SPEC_EXAMPLE)
    assert r.status == 200
    r = post(port, SPEC_EXAMPLE)
    assert r.status == 503 and r.headers["retry-after"] == "1"
    eng.kill()


def test_a_gzip_body_is_inflated_and_a_bad_one_refused(sluice, tmp_path):
    import gzip
    import subprocess
    eng, port = start(sluice, max_body_bytes="64KiB")
    gz = tmp_path / "req.json.gz"
    gz.write_bytes(gzip.compress(json.dumps(SPEC_EXAMPLE).encode()))
    r = subprocess.run(["curl", "-sS", "-H", "Content-Type: application/json",
                        "-H", "Content-Encoding: gzip", "--data-binary", "@%s" % gz,
                        url(port)], capture_output=True, timeout=10)
    assert r.returncode == 0 and json.loads(r.stdout) == {}, r
    wait_lines(eng.path("out.ndjson"), 1)
    assert read_ndjson(eng.path("out.ndjson"))[0]["payload"] == "Example log record"
    r = curl(url(port), data=b"not gzip", content_type="application/json",
             headers=["Content-Encoding: gzip"])
    assert r.status == 400 and "gzip" in r.json()["error"]
    bomb = gzip.compress(b" " * (1 << 20))  # 1 MiB of spaces: past 64 KiB inflated
    r = curl(url(port), data=bomb, content_type="application/json",
             headers=["Content-Encoding: gzip"])
    assert r.status == 413 and "max_body_bytes" in r.json()["error"]
    r = curl(url(port), data=b"{}", content_type="application/json",
             headers=["Content-Encoding: br"])
    assert r.status == 415
    assert eng.stop() == 0


def test_every_member_of_a_gzip_body_is_inflated_and_trailing_bytes_refused(sluice):
    """A gzip body may be several members back to back (RFC 1952; `cat
    a.gz b.gz`, gzip -d and zlib's readers take them all). Only the first
    was inflated and the rest ignored: NDJSON in two members was answered
    202 {"accepted":2} with the third event dropped, an OTLP request in
    two members was refused as bad JSON, and bytes that are no gzip after
    the stream were ignored. Now every member counts and trailing bytes
    make the body invalid gzip (400, nothing taken)."""
    import gzip
    eng, port = start(sluice)
    events = "http://127.0.0.1:%d/v1/events" % port
    gz = ["Content-Encoding: gzip"]
    a = gzip.compress(b'{"topic":"t","payload":1}\n{"topic":"t","payload":2}\n')
    b = gzip.compress(b'{"topic":"t","payload":3}\n')
    r = curl(events, data=a + b, content_type="application/x-ndjson", headers=gz)
    assert r.status == 202 and r.json() == {"accepted": 3}, r
    body = json.dumps(SPEC_EXAMPLE).encode()
    half = len(body) // 2
    r = curl(url(port), data=gzip.compress(body[:half]) +
             gzip.compress(body[half:]), content_type="application/json",
             headers=gz)
    assert r.status == 200 and r.json() == {}, r
    for tail in (b"garbage", b"\0" * 8):
        r = curl(events, data=a + tail, content_type="application/x-ndjson",
                 headers=gz)
        assert r.status == 400 and "gzip" in r.json()["error"], (tail, r)
    wait_lines(eng.path("out.ndjson"), 4)
    evs = read_ndjson(eng.path("out.ndjson"))
    assert [e["payload"] for e in evs] == [1, 2, 3, "Example log record"]
    assert eng.stop() == 0


# ---- a real client: the OpenTelemetry JS SDK ----------------------------------

OTEL_JS = __import__("pathlib").Path(__file__).resolve().parent / "otel-js"


def otel_js():
    """tests/integration/otel-js with its packages (npm install on first
    use: the npm registry is reachable where the tests run)."""
    import shutil
    import subprocess
    import pytest
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are needed for the OpenTelemetry JS SDK")
    if not (OTEL_JS / "node_modules" / "@opentelemetry" / "sdk-logs").exists():
        r = subprocess.run(["npm", "install", "--no-audit", "--no-fund",
                            "--no-package-lock"], cwd=OTEL_JS,
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:  # the registry is out of reach: say so
            pytest.skip("npm install failed: " + r.stderr[-500:])
    return OTEL_JS


def test_the_opentelemetry_js_sdk_exporter_delivers_its_logs(sluice):
    import subprocess
    d = otel_js()
    eng, port = start(sluice, otlp_topic="logs.{service.name}")
    r = subprocess.run(["node", str(d / "emit.js"), url(port), "5"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    wait_lines(eng.path("out.ndjson"), 5)
    got = read_ndjson(eng.path("out.ndjson"))
    assert [e["payload"] for e in got] == [{"seq": i, "msg": "order %d" % i} for i in range(5)]
    e = got[2]
    assert e["topic"] == "logs.checkout"
    assert e["time"] == 1700000000 * 10 ** 9 + 2
    h = e["headers"]
    assert h["otel.severity_number"] == "13" and h["otel.severity_text"] == "WARN"
    assert h["otel.attr.order.id"] == "2" and h["otel.attr.ok"] == "true"
    assert h["otel.scope.name"] == "sluice-test" and h["otel.scope.version"] == "2.0.0"
    assert eng.stop() == 0


def test_an_oversized_body_is_413_and_an_oversized_record_a_partial_success(sluice):
    (port,) = ports(1)
    eng = sluice(config(port, inputs=[http_input(port, max_body_bytes="4KiB")],
                        max_event_bytes=1024))
    big = with_record(body={"stringValue": "x" * 5000})
    r = post(port, big)
    assert r.status == 413
    req = copy.deepcopy(SPEC_EXAMPLE)
    req["resourceLogs"][0]["scopeLogs"][0]["logRecords"] = [
        {"body": {"stringValue": "y" * 1500}}, {"body": {"stringValue": "fits"}}]
    r = post(port, req)
    assert r.status == 200
    ps = r.json()["partialSuccess"]
    assert ps["rejectedLogRecords"] == "1" and "max_event_bytes" in ps["errorMessage"]
    wait_lines(eng.path("out.ndjson"), 1)
    assert [e["payload"] for e in read_ndjson(eng.path("out.ndjson"))] == ["fits"]
    assert eng.stop() == 0


def _rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


def test_small_records_under_huge_resource_attributes_cannot_blow_up_memory(sluice):
    """Each record's event repeats its resource's attributes: 100 KB of them
    over 2000 empty records (a 112 KB request) would be 200 MB of events.
    The events of one request are bounded (64 MiB): the request is refused
    whole, at once, and the engine does not grow; a record whose event
    alone is over max_event_bytes is rejected before anything is copied."""
    eng, port = start(sluice)
    base = _rss_kib(eng.proc.pid)
    attrs = [{"key": "a%d" % i, "value": {"stringValue": "x" * 1000}}
             for i in range(100)]
    req = {"resourceLogs": [{"resource": {"attributes": attrs},
                             "scopeLogs": [{"logRecords": [{}] * 2000}]}]}
    r = post(port, req)
    assert r.status == 400, r
    assert "larger than 64 MiB (each repeats its resource" in r.json()["message"]
    # under ASan freed blocks sit in its quarantine and carry redzones: the
    # bounded 64 MiB shows as ~150 MB there (the unbounded 200 MB: > 400)
    assert _rss_kib(eng.proc.pid) - base < (224 if ASAN else 96) * 1024
    # 1.1 MB of attributes (over max_event_bytes, 1 MiB) over 200000 empty
    # records: each is rejected without copying the attributes
    attrs = [{"key": "a%d" % i, "value": {"stringValue": "x" * 1000}}
             for i in range(1100)]
    req = {"resourceLogs": [{"resource": {"attributes": attrs},
                             "scopeLogs": [{"logRecords": [{}] * 200000}]}]}
    r = curl(url(port), data=json.dumps(req), content_type="application/json",
             timeout=20)
    assert r.status == 200, r
    ps = r.json()["partialSuccess"]
    assert ps["rejectedLogRecords"] == "200000"
    assert "max_event_bytes" in ps["errorMessage"]
    # a normal request goes on
    assert post(port, SPEC_EXAMPLE).status == 200
    wait_lines(eng.path("out.ndjson"), 1)
    assert eng.stop() == 0


def test_a_malformed_id_is_refused_also_when_the_other_is_not_set(sluice):
    """README: a record with a malformed id is rejected (a partial
    success). A traceId that was not 32 hex digits passed unseen when the
    record had no spanId (and a bad spanId without a traceId), so the
    record was taken as if it had no ids; an id that is set but empty is
    still no id."""
    eng, port = start(sluice)
    for rec, why in [({"traceId": "zz"}, "traceId: expected 32 hex digits"),
                     ({"spanId": "0011"}, "spanId: expected 16 hex digits"),
                     ({"traceId": "5B8EFFF798038103D269B633813FC60G"},
                      "traceId: expected 32 hex digits")]:
        r = post(port, with_record(body={"stringValue": "x"}, **rec))
        assert r.status == 200, r
        ps = r.json()["partialSuccess"]
        assert ps["rejectedLogRecords"] == "1", (rec, ps)
        assert ps["errorMessage"].endswith(why), (rec, ps)
    r = post(port, with_record(traceId="", spanId="", body={"stringValue": "ok"}))
    assert r.status == 200 and r.json() == {}
    r = post(port, with_record(traceId="5B8EFFF798038103D269B633813FC60C",
                               body={"stringValue": "no span"}))
    assert r.status == 200 and r.json() == {}
    wait_lines(eng.path("out.ndjson"), 2)
    assert [e["payload"] for e in read_ndjson(eng.path("out.ndjson"))] == ["ok", "no span"]
    assert eng.stop() == 0
