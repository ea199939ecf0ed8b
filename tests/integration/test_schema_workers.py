"""Payload contracts (issue 16) with workers = N (issue 14): contracts are
checked on the main loop before an event is handed to a worker, so a misfit
is dead-lettered or refused (HTTP 400) and counted once whichever worker
would have decided it; a replica's rules read ev.schema_version; outputs'
schemas apply to the results coming back from the replicas, to events a
rule changed through the payload's write log and to events a rule emits;
a reload swaps schemas and every worker's rules together, or nothing.
Each test runs with workers = 1 and workers = 2 and expects the same.
The events of one connection arrive in one write, so all but the first go
through the native input's one-pass reader (sl_codec_parse_stream)."""
import json
import subprocess
import urllib.request

import pytest

from conftest import (free_port, metric, metrics_flat, read_ndjson, scrape,
                      send_events, wait_for, wait_lines)
from helpers_http import curl

ORDER_V1 = {"type": "object", "required": ["sku"],
            "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}}}
ORDER_V2 = {"type": "object", "required": ["sku"],
            "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"},
                           "note": {"type": "string"}}}
NO_SKU = {"type": "object", "properties": {"qty": {"type": "integer"}}}
# what the out output takes: qty, when present, is an integer
OUT = {"type": "object", "properties": {"qty": {"type": "integer"}}}

# orders.* and soft.*: stamp the version the event was checked against;
# spoil.*: write ev.payload.qty only (the payload write log's splice path);
# fan.*: emit one event that fits out's schema and one that does not.
RULES = {
    "10_stamp.lua": """return {
  topics = { "orders.*", "soft.*", "free.*" },
  on_event = function(ev)
    ev.headers["seen-version"] = ev.schema_version or "none"
    ev.headers.rv = "%s"
    return "out"
  end,
}
""",
    "20_spoil.lua": """return {
  topics = { "spoil.*" },
  on_event = function(ev)
    if ev.payload.spoil then ev.payload.qty = "spoiled" end
    return "out"
  end,
}
""",
    "30_fan.lua": """return {
  topics = { "fan.*" },
  on_event = function(ev)
    sluice.emit("out", { topic = "made.good", payload = { qty = 1 } })
    sluice.emit("out", { topic = "made.bad", payload = { qty = "many" } })
    return sluice.drop("fanned out")
  end,
}
""",
}


def write(folder, **files):
    for name, doc in files.items():
        (folder / name).write_text(doc if isinstance(doc, str) else json.dumps(doc))


def config(workers, port, http, admin, d, rules, versions=(1, 2), extra=""):
    entries = "".join('\n    { topics = "orders.*", file = "%s/order.v%d.json" },'
                      % (d, v) for v in versions)
    return """return {
  workers = %d,
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" },
             { name = "web", type = "http", listen = "127.0.0.1:%d" } },
  outputs = { { name = "out", type = "file", path = "out.ndjson",
                schema = "%s/out.json" },
              { name = "dead", type = "file", path = "dead.ndjson" } },
  dead_letter = "dead",
  rules = { dir = "%s", watch = false },
  admin = { listen = "127.0.0.1:%d" },
  schemas = {%s
    { topics = "soft.*", file = "%s/order.v1.json", mode = "warn" },%s
  },
}
""" % (workers, port, http, d, rules, admin, entries, d, extra)


class Setup:
    def __init__(self, sluice, tmp_path, workers):
        self.d = tmp_path / "schemas"
        self.d.mkdir()
        write(self.d, **{"order.v1.json": ORDER_V1, "order.v2.json": ORDER_V2,
                         "order.v3.json": NO_SKU, "out.json": OUT})
        self.rules = tmp_path / "rules"
        self.rules.mkdir()
        self.set_rules("1")
        self.workers = workers
        self.port, self.http, self.admin = free_port(), free_port(), free_port()
        self.eng = sluice(self.text())
        self.addr = "127.0.0.1:%d" % self.port

    def set_rules(self, rv):
        for name, text in RULES.items():
            (self.rules / name).write_text(text % rv if "%s" in text else text)

    def text(self, **kw):
        return config(self.workers, self.port, self.http, self.admin, self.d,
                      self.rules, **kw)

    def counts(self, contract="orders.*", version="2"):
        s = scrape("127.0.0.1:%d" % self.admin)
        return {r: metric(s, "sluice_schema_events_total", contract=contract,
                          version=version, result=r)
                for r in ("valid", "invalid", "warned")}

    def post(self, body):
        return curl("http://127.0.0.1:%d/v1/events" % self.http,
                    data=json.dumps(body), content_type="application/json")

    def replicas_decided(self):
        """Events worker 1 decided (0 with one worker)."""
        if self.workers == 1:
            return 0
        return metrics_flat(self.admin)['sluice_worker_events_total{worker="1"}']

    def reload(self, n, **kw):
        """Write the config and POST /reload; the n-th reload's log line."""
        self.eng.config.write_text(self.text(**kw))
        req = urllib.request.Request("http://127.0.0.1:%d/reload" % self.admin,
                                     data=b"", method="POST")
        try:
            urllib.request.urlopen(req, timeout=10).close()
        except urllib.error.HTTPError:
            pass
        msgs = ("config reloaded", "config reload rejected; the running config stays")

        def nth():
            lines = [l for l in self.eng.logs() if l.get("msg") in msgs]
            return len(lines) >= n and lines[n - 1]
        return wait_for(nth, timeout=10, what="reload %d" % n)


WORKERS = pytest.mark.parametrize("workers", [1, 2])


def by_id(lines):
    return {e["id"]: e for e in (json.loads(l) for l in lines)}


@WORKERS
def test_contracts_are_checked_before_the_workers_and_replicas_read_the_version(
        sluice, tmp_path, workers):
    s = Setup(sluice, tmp_path, workers)
    evs = []
    for i in range(40):  # keyless: round robin over the workers
        if i % 4 == 0:   # misfit of the newest version
            evs.append({"id": "bad%d" % i, "topic": "orders.x",
                        "payload": {"sku": "s", "qty": "x%d" % i}})
        elif i % 4 == 1:  # names version 1 in its header
            evs.append({"id": "h1_%d" % i, "topic": "orders.x",
                        "headers": {"schema-version": "1"}, "payload": {"sku": "s"}})
        elif i % 4 == 2:  # no version: the newest, 2
            evs.append({"id": "n2_%d" % i, "topic": "orders.x",
                        "payload": {"sku": "s", "note": "n"}})
        else:            # warn mode: passed on, marked, counted once
            evs.append({"id": "w%d" % i, "topic": "soft.x", "payload": {"qty": i}})
    tap = subprocess.Popen(["curl", "-sN", "--max-time", "20",
                            "http://127.0.0.1:%d/tap?topics=soft.*&limit=10" % s.admin],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: metric("127.0.0.1:%d" % s.admin, "sluice_tap_clients") == 1,
                 what="the tap client")
        send_events(s.addr, evs)
        taps, _ = tap.communicate(timeout=15)
    finally:
        if tap.poll() is None:
            tap.kill()
            tap.wait()
    # warn mode: each misfit marked on the tap, whichever worker decided it
    taps = [json.loads(l) for l in taps.decode().splitlines()]
    assert len(taps) == 10
    for t in taps:
        assert t["outcome"] == "routed" and t["outputs"] == ["out"], t
        assert t["schema"] == ('contract soft.* version 1: /: expected '
                               'required property "sku"'), t
    out = by_id(wait_lines(s.eng.path("out.ndjson"), 30, timeout=20))
    dead = by_id(wait_lines(s.eng.path("dead.ndjson"), 10, timeout=20))
    assert sorted(dead) == sorted(e["id"] for e in evs if e["id"].startswith("bad"))
    for i, e in dead.items():
        assert e["headers"]["sluice-error"] == (
            "contract orders.* version 2: /qty: expected integer")
        assert "seen-version" not in e["headers"]  # no rule saw it
    assert len(out) == 30
    for i, e in out.items():
        want = {"h": "1", "n": "2", "w": "1"}[i[0]]
        assert e["headers"]["seen-version"] == want, e
        assert "sluice-error" not in e["headers"]
    assert s.counts(version="1") == {"valid": 10, "invalid": 0, "warned": 0}
    assert s.counts(version="2") == {"valid": 10, "invalid": 10, "warned": 0}
    assert s.counts(contract="soft.*", version="1") == \
        {"valid": 0, "invalid": 0, "warned": 10}
    if workers == 2:  # the replica decided its share, with the versions
        assert s.replicas_decided() > 0
    # HTTP: the whole batch refused with the index and path, nothing kept
    r = s.post([{"topic": "orders.y", "payload": {"sku": "a"}},
                {"topic": "orders.y", "payload": {"sku": "b"}},
                {"topic": "orders.y", "payload": {"qty": 2}}])
    assert r.status == 400, r
    assert (r.json()["index"], r.json()["path"], r.json()["expected"]) == \
        (2, "", 'required property "sku"')
    r = s.post([{"id": "ok%d" % i, "topic": "orders.y", "payload": {"sku": "a"}}
                for i in range(6)])
    assert r.status == 202 and r.json() == {"accepted": 6}
    out = by_id(wait_lines(s.eng.path("out.ndjson"), 36, timeout=20))
    assert {i for i in out if i.startswith("ok")} == {"ok%d" % i for i in range(6)}
    assert {out["ok%d" % i]["headers"]["seen-version"] for i in range(6)} == {"2"}
    assert s.counts(version="2") == {"valid": 16, "invalid": 11, "warned": 0}


@WORKERS
def test_output_schema_holds_for_replica_results_write_log_changes_and_emits(
        sluice, tmp_path, workers):
    s = Setup(sluice, tmp_path, workers)
    evs = []
    for i in range(20):
        evs.append({"id": "sp%d" % i, "topic": "spoil.x",
                    "payload": {"qty": i, "spoil": i % 2 == 1}})
        evs.append({"id": "free%d" % i, "topic": "free.x",
                    "payload": {"qty": i if i % 2 == 0 else "x"}})
    evs += [{"id": "fan%d" % i, "topic": "fan.x", "payload": 1} for i in range(4)]
    send_events(s.addr, evs)
    # 10 spoil, 10 free fit, and the 4 good emits; the rest is dead
    out = read_out = wait_lines(s.eng.path("out.ndjson"), 24, timeout=20)
    dead = wait_lines(s.eng.path("dead.ndjson"), 24, timeout=20)
    out = [json.loads(l) for l in read_out]
    dead = [json.loads(l) for l in dead]
    assert sorted(e["id"] for e in out if e["topic"] != "made.good") == sorted(
        ["sp%d" % i for i in range(0, 20, 2)] + ["free%d" % i for i in range(0, 20, 2)])
    assert [e["topic"] for e in out].count("made.good") == 4
    assert all(isinstance(e["payload"]["qty"], int) for e in out)
    spoiled = [e for e in dead if e["topic"] == "spoil.x"]
    assert sorted(e["id"] for e in spoiled) == sorted("sp%d" % i for i in range(1, 20, 2))
    for e in spoiled:  # as the rule's write left it
        assert e["payload"]["qty"] == "spoiled" and e["payload"]["spoil"] is True
        assert e["headers"]["sluice-output"] == "out"
        assert e["headers"]["sluice-error"] == (
            "output out schema: /qty: expected integer")
    assert sorted(e["id"] for e in dead if e["topic"] == "free.x") == \
        sorted("free%d" % i for i in range(1, 20, 2))
    made = [e for e in dead if e["topic"] == "made.bad"]
    assert len(made) == 4
    for e in made:
        assert e["payload"] == {"qty": "many"}
        assert e["headers"]["sluice-output"] == "out"
        assert e["headers"]["sluice-error"] == (
            "output out schema: /qty: expected integer")
    assert len(dead) == 24
    assert metric("127.0.0.1:%d" % s.admin, "sluice_schema_output_rejected_total",
                  output="out") == 24
    if workers == 2:
        assert s.replicas_decided() > 0


@WORKERS
def test_a_reload_swaps_schemas_and_every_workers_rules_together_or_not_at_all(
        sluice, tmp_path, workers):
    s = Setup(sluice, tmp_path, workers)
    n = [0]

    def batch(tag, count=12):
        evs = [{"id": "%s%d" % (tag, i), "topic": "orders.r", "payload": {"qty": i}}
               for i in range(count)]
        send_events(s.addr, evs)
        n[0] += count
        got = [json.loads(l) for l in
               wait_lines(s.eng.path("out.ndjson"), n[0], timeout=20)]
        return [e for e in got if e["id"].startswith(tag)]

    # before: {qty} lacks sku, so version 2 refuses it
    send_events(s.addr, [{"id": "pre", "topic": "orders.r", "payload": {"qty": 1}}])
    assert json.loads(wait_lines(s.eng.path("dead.ndjson"), 1)[0])["id"] == "pre"
    # good: version 3 (no sku needed) and new rules, together
    s.set_rules("2")
    line = s.reload(1, versions=(1, 2, 3))
    assert line["msg"] == "config reloaded", line
    got = batch("a")
    assert len(got) == 12
    assert {(e["headers"]["seen-version"], e["headers"]["rv"]) for e in got} == {("3", "2")}
    # a broken schema file beside new rules: neither is taken
    write(s.d, **{"order.v4.json": '{"type": "object", "properties": '})
    s.set_rules("3")
    line = s.reload(2, versions=(1, 2, 3, 4))
    assert line["msg"] == "config reload rejected; the running config stays"
    assert "schemas[4].file" in line["error"]
    got = batch("b")
    assert {(e["headers"]["seen-version"], e["headers"]["rv"]) for e in got} == {("3", "2")}
    # a good new schema beside a rule that does not load: neither is taken
    write(s.d, **{"order.v4.json": NO_SKU})
    (s.rules / "10_stamp.lua").write_text("return { on_event = function(ev) ")
    line = s.reload(3, versions=(1, 2, 3, 4))
    assert line["msg"] == "config reload rejected; the running config stays"
    got = batch("c")
    assert {(e["headers"]["seen-version"], e["headers"]["rv"]) for e in got} == {("3", "2")}
    # a breaking change to the loaded version 3 is refused too
    s.set_rules("4")
    write(s.d, **{"order.v3.json": {"type": "object", "required": ["sku"]}})
    line = s.reload(4, versions=(1, 2, 3))
    assert line["msg"] == "config reload rejected; the running config stays"
    assert "a breaking change needs a new version" in line["error"]
    got = batch("d")
    assert {(e["headers"]["seen-version"], e["headers"]["rv"]) for e in got} == {("3", "2")}
    assert s.counts(version="3") == {"valid": 48, "invalid": 0, "warned": 0}
    assert s.counts(version="2") == {"valid": 0, "invalid": 1, "warned": 0}
    # schemas alone (the rule files as they run): a version 4 joins
    write(s.d, **{"order.v3.json": NO_SKU})
    s.set_rules("2")
    line = s.reload(5, versions=(1, 2, 3, 4))
    assert line["msg"] == "config reloaded", line
    got = batch("e")
    assert {(e["headers"]["seen-version"], e["headers"]["rv"]) for e in got} == {("4", "2")}
    assert s.counts(version="4") == {"valid": 12, "invalid": 0, "warned": 0}
    if workers == 2:
        assert s.replicas_decided() > 0
    assert len(read_ndjson(s.eng.path("dead.ndjson"))) == 1
