"""One time story (issue 15, item 7) through the real binary: the http
input takes "time" as integer nanoseconds or an RFC 3339 string, refuses
integers that look like milliseconds (Date.now()) and bad strings with a
400 naming the field, and a rule sees ev.time (float ms) and ev.time_ns
(the exact integer, as a decimal string)."""
import json

import msgpack

from conftest import free_port, read_ndjson, wait_lines
from helpers_http import config, curl

RULE = """
return {
  on_event = function(ev)
    ev.headers.ms = string.format("%.3f", ev.time)
    ev.headers.ns = ev.time_ns
    return "out"
  end,
}
"""


def start(sluice, tmp_path, rule=False):
    port = free_port()
    cfg = config(port)
    if rule:
        (tmp_path / "rules").mkdir()
        (tmp_path / "rules" / "10_t.lua").write_text(RULE)
        cfg["rules"] = {"dir": str(tmp_path / "rules")}
    return sluice(cfg), "http://127.0.0.1:%d/v1/events" % port


def post(url, events, ctype="application/x-ndjson"):
    body = "".join(json.dumps(e) + "\n" for e in events)
    return curl(url, data=body, content_type=ctype)


def test_rfc3339_strings_become_exact_nanoseconds(sluice, tmp_path):
    eng, url = start(sluice, tmp_path)
    r = post(url, [{"topic": "t", "time": "2023-11-14T22:13:20.000000123Z"},
                   {"topic": "t", "time": "2023-11-15T00:13:20.5+02:00"},
                   {"topic": "t", "time": 1700000000000000777}])
    assert r.status == 202, r.body
    wait_lines(eng.path("out.ndjson"), 3)
    got = read_ndjson(eng.path("out.ndjson"))
    assert [e["time"] for e in got] == [1700000000000000123, 1700000000500000000,
                                        1700000000000000777]


def test_rfc3339_in_a_msgpack_body_too(sluice, tmp_path):
    eng, url = start(sluice, tmp_path)
    body = msgpack.packb({"topic": "t", "time": "2023-11-14T22:13:20Z", "payload": 1})
    r = curl(url, data=body, content_type="application/msgpack")
    assert r.status == 202, r.body
    wait_lines(eng.path("out.ndjson"), 1)
    assert read_ndjson(eng.path("out.ndjson"))[0]["time"] == 1700000000000000000


def test_milliseconds_are_refused_with_a_400_naming_the_field(sluice, tmp_path):
    eng, url = start(sluice, tmp_path)
    # Date.now() in the second event: the whole batch is refused
    r = post(url, [{"topic": "t", "time": 1700000000000000000},
                   {"topic": "t", "time": 1700000000123}])
    assert r.status == 400
    body = r.json()
    assert body["error"] == ("field 'time': 1700000000123 looks like milliseconds; "
                             "send nanoseconds or an RFC 3339 string")
    assert body["index"] == 1 and body["line"] == 2
    # seconds too
    r = post(url, [{"topic": "t", "time": 1700000000}])
    assert r.status == 400 and "looks like milliseconds" in r.json()["error"]
    assert read_ndjson(eng.path("out.ndjson")) == []


def test_bad_time_strings_are_refused_with_what_is_wrong(sluice, tmp_path):
    eng, url = start(sluice, tmp_path)
    cases = {
        "2023-11-14 22:13:20Z": "expected an RFC 3339 time such as 2024-05-01T12:00:00.5Z",
        "2023-11-14T22:13:20": "expected Z or an offset +HH:MM / -HH:MM at the end",
        "2023-02-29T00:00:00Z": "no such date 2023-02-29",
        "yesterday": "expected an RFC 3339 time such as 2024-05-01T12:00:00.5Z",
    }
    for value, why in cases.items():
        r = curl(url, data=json.dumps({"topic": "t", "time": value}),
                 content_type="application/json")
        assert r.status == 400, value
        assert r.json()["error"] == "field 'time': " + why, value
    assert read_ndjson(eng.path("out.ndjson")) == []


def test_a_rule_sees_float_ms_and_exact_ns(sluice, tmp_path):
    eng, url = start(sluice, tmp_path, rule=True)
    r = post(url, [{"topic": "t", "time": "2023-11-14T22:13:20.000000123Z"}])
    assert r.status == 202, r.body
    wait_lines(eng.path("out.ndjson"), 1)
    ev = read_ndjson(eng.path("out.ndjson"))[0]
    assert ev["headers"]["ns"] == "1700000000000000123" == str(ev["time"])
    assert ev["headers"]["ms"] == "1700000000000.000"
