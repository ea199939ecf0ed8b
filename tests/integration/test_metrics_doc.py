"""Every metric the README and docs/http.md promise is on /metrics (issue 10,
item 5): the metric names in backticks are read from both files and a real
sluice with a disk-buffered output, a rule with a sluice.counter, a tcp
(native) input, an http input, a rate-limited route and the admin server is
scraped. Each promised family must have its TYPE line and at least one
sample; counters are typed counter and end in _total; the whole text
passes `promtool check metrics`.

Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_metrics_doc.py
"""

import json
import pathlib
import re
import subprocess
import urllib.request

from conftest import free_port, send_events, wait_for
from helpers_http import curl

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "docs" / "http.md"]
NAME = re.compile(r"`((?:sluice|process)_[a-z0-9_]*\*?)(?:\{[^`]*\})?`")
NOT_METRICS = {"sluice_core"}  # the Lua C module the README names

RULE = """
return {
  topics = "*",
  on_event = function(ev)
    sluice.counter("seen", { topic = ev.topic }):inc()
    if ev.topic == "drop.me" then return sluice.drop("not wanted") end
    return "out"
  end,
}
"""


def promised():
    """{name: [files]} for every metric name in backticks in the docs; a name
    ending in * is a prefix."""
    names = {}
    for path in DOCS:
        for name in NAME.findall(path.read_text()):
            if name in NOT_METRICS:
                continue
            names.setdefault(name, []).append(path.name)
    return names


def families(text):
    """{name: type} from the TYPE lines, and the set of sample names."""
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    samples = {line.split("{")[0].split(" ")[0]
               for line in text.splitlines() if line and not line.startswith("#")}
    return types, samples


def has_sample(name, kind, samples):
    if kind == "histogram":
        return {name + "_bucket", name + "_sum", name + "_count"} <= samples
    return name in samples


def test_the_docs_name_the_metrics_the_issue_asks_for():
    names = promised()
    assert len(names) >= 50, sorted(names)  # the parse found the lists
    for want in ("sluice_disk_buffer_backlog_bytes", "sluice_disk_buffer_segments",
                 "sluice_disk_buffer_quarantined_records_total",
                 "sluice_disk_buffer_quarantined_bytes_total",
                 "sluice_rule_value_total", "sluice_delivery_latency_seconds",
                 "sluice_rule_calls_total", "process_resident_memory_bytes"):
        assert want in names, want


def start(sluice, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10_count.lua").write_text(RULE)
    tcp, web, admin = free_port(), free_port(), free_port()
    (tmp_path / "any.json").write_text("{}")  # a contract every event fits
    cfg = """return {
  workers = 2,
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" },
             { name = "web", type = "http", listen = "127.0.0.1:%d" } },
  schemas = { { topics = "*", file = "ANY", version = "1" } },
  outputs = { { name = "out", type = "file", path = "out.ndjson",
                buffer = { type = "disk", path = "buf" }, schema = "ANY" } },
  routes = { { topics = "*", to = "out",
               rate_limit = { events_per_second = 100000, burst = 1000 } } },
  rules = { dir = "%s", watch = false },
  admin = { listen = "127.0.0.1:%d" },
}""" % (tcp, web, rules, admin)
    sluice(cfg.replace("ANY", str(tmp_path / "any.json")))
    return "127.0.0.1:%d" % tcp, web, "127.0.0.1:%d" % admin


def scrape_text(admin):
    with urllib.request.urlopen("http://%s/metrics" % admin, timeout=5) as r:
        assert r.status == 200
        return r.read().decode()


def test_every_metric_the_docs_promise_is_on_metrics(sluice, tmp_path):
    tcp, web, admin = start(sluice, tmp_path)
    send_events(tcp, [{"topic": "a"}, {"topic": "drop.me"}])
    r = curl("http://127.0.0.1:%d/v1/events" % web,
             data=json.dumps([{"topic": "b"}]), content_type="application/json")
    assert r.status == 202, r
    wait_for(lambda: "sluice_output_events_total{output=\"out\"} 2\n"
             in scrape_text(admin), 10, what="2 events delivered")
    text = scrape_text(admin)
    types, samples = families(text)
    missing, empty = [], []
    for name, where in sorted(promised().items()):
        if name.endswith("*"):
            if not any(t.startswith(name[:-1]) for t in types):
                missing.append((name, where))
            continue
        if name not in types:
            missing.append((name, where))
        elif not has_sample(name, types[name], samples):
            empty.append(name)
    assert not missing, "promised in the docs, not on /metrics: %s" % missing
    assert not empty, "on /metrics without a sample: %s" % empty
    res = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                         capture_output=True, timeout=30)
    assert res.returncode == 0, (res.stdout + res.stderr).decode()


def test_counters_are_typed_counter_and_end_in_total(sluice, tmp_path):
    tcp, web, admin = start(sluice, tmp_path)
    send_events(tcp, [{"topic": "a"}])
    wait_for(lambda: 'sluice_rule_value_total{rule="10_count.lua",name="seen",'
             'topic="a"} 1\n' in scrape_text(admin), 10, what="the rule's counter")
    types, _ = families(scrape_text(admin))
    wrong = [(n, t) for n, t in types.items()
             if (t == "counter") != n.endswith("_total")]
    assert not wrong, wrong
    assert types["sluice_rule_value_total"] == "counter"
    assert "sluice_rule_value" not in types
    assert len(types) == len(set(types))
    text = scrape_text(admin)
    for name in types:  # one family per name, however many modules feed it
        assert text.count("# TYPE %s " % name) == 1, name
    # the histogram buckets reach 10 s
    assert 'sluice_delivery_latency_seconds_bucket{output="out",le="10"}' in text
