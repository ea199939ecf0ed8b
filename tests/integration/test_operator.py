"""Operators see why every event went where it did (issue 15, items 1, 2,
3 and 5) against the real binary: `unrouted` drops and counts or routes the
events nothing decided, and the HTTP 202 says how many; /tap and `sluice
tap` carry the decision (rule, route, outputs, reason) with filters; a tap
client that reads nothing never holds the pipeline up; `sluice top --once`;
`sluice check` findings and `--events` as a CI gate.

Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_operator.py
"""

import json
import subprocess
import time

from conftest import SLUICE_BIN, run_sluice, wait_for
from helpers_http import config, curl, metric, metrics, ports, wait_metric

RULE = """
return {
  topics = { "orders.*", "bad.*" },
  on_event = function(ev)
    if ev.topic == "bad.boom" then error("boom") end
    local p = ev.payload
    if type(p) ~= "table" or type(p.amount) ~= "number" then
      return sluice.drop("order without a numeric amount")
    end
    if p.amount > 1000 then return { "archive", "console" } end
    return "archive"
  end,
}
"""


def engine(sluice, tmp_path, **top):
    port, admin = ports(2)
    d = tmp_path / "rules"
    d.mkdir(exist_ok=True)
    (d / "10_orders.lua").write_text(RULE)
    cfg = config(port, admin_port=admin, outputs=[
        {"name": "archive", "type": "file", "path": "archive.ndjson"},
        {"name": "console", "type": "file", "path": "console.ndjson"},
        {"name": "other", "type": "file", "path": "other.ndjson"}],
        routes=[{"topics": "logs.*", "to": "other"}],
        rules={"dir": str(d)}, **top)
    return sluice(cfg), port, admin


def ingest(port, events):
    r = curl("http://127.0.0.1:%d/v1/events" % port,
             data="\n".join(json.dumps(e) for e in events),
             content_type="application/x-ndjson")
    assert r.status == 202, r
    return r.json()


MIX = [{"topic": "orders.eu", "payload": {"amount": 5}},
       {"topic": "orders.us", "payload": {"amount": 5000}},
       {"topic": "orders.eu", "payload": {}},
       {"topic": "bad.boom", "payload": 1},
       {"topic": "logs.app", "payload": 2},
       {"topic": "nowhere", "payload": 3},
       {"topic": "nowhere.else", "payload": 4}]


# ---- unrouted ----------------------------------------------------------------

def test_unrouted_events_are_dropped_counted_by_input_and_version_and_the_202_says_so(
        sluice, tmp_path):
    eng, port, admin = engine(sluice, tmp_path)
    assert ingest(port, MIX) == {"accepted": 7, "unrouted": 2}
    assert ingest(port, MIX[:2]) == {"accepted": 2}  # none unrouted: as before
    text = metrics(admin)
    assert metric(text, "sluice_events_unrouted_total", input="web", version="1") == 2
    assert metric(text, "sluice_events_dropped_total", reason="unrouted") == 2
    assert not (eng.dir / "other.ndjson").exists() or all(
        json.loads(l)["topic"] == "logs.app"
        for l in (eng.dir / "other.ndjson").read_text().splitlines())


def test_unrouted_to_an_output_sends_them_there_and_still_counts_them(sluice, tmp_path):
    eng, port, admin = engine(sluice, tmp_path, unrouted="other")
    assert ingest(port, MIX) == {"accepted": 7, "unrouted": 2}
    out = eng.dir / "other.ndjson"
    wait_for(lambda: out.exists() and len(out.read_text().splitlines()) == 3, 10,
             what="3 events in other.ndjson")
    topics = sorted(json.loads(l)["topic"] for l in out.read_text().splitlines())
    assert topics == ["logs.app", "nowhere", "nowhere.else"]
    assert metric(metrics(admin), "sluice_events_unrouted_total",
                  input="web", version="1") == 2


def test_unrouted_naming_no_output_or_not_a_string_fails_the_config_check(tmp_path):
    for value, want in (('"nope"', 'no output named "nope"'),
                        ("1", "got number")):
        p = tmp_path / "c.lua"
        p.write_text('return { inputs = {}, outputs = { { name = "o", type = '
                     '"null" } }, unrouted = %s }' % value)
        r = run_sluice("check", "-c", p)
        assert r.returncode != 0 and "unrouted" in r.stderr and want in r.stderr, r.stderr
