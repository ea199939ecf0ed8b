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
LABELLED = re.compile(r"`((?:sluice|process)_[a-z0-9_]*)\{([^`}]*)\}`")
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
    # the labels the docs name (`name{a,b}`, `name{a="v"}`) are the family's
    has = {}
    for line in text.splitlines():
        m = re.match(r"([a-z_0-9]+)\{(.*)\} ", line)
        if m:
            base = re.sub(r"_(bucket|sum|count)$", "", m.group(1))
            for n in (m.group(1), base):
                has.setdefault(n, set()).update(re.findall(r'([a-z_]+)="', m.group(2)))
    unlabelled = []
    for path in DOCS:
        for name, inside in LABELLED.findall(path.read_text()):
            named = {l.split("=")[0].strip() for l in inside.split(",")} - {"...", ""}
            if not named <= has.get(name, set()):
                unlabelled.append((name, sorted(named), sorted(has.get(name, ()))))
    assert not unlabelled, "labels the docs name, not on /metrics: %s" % unlabelled
    # docs/http.md's table: each row's labels column (a name's own
    # "(label)" added) are the labels of its names' series
    doc = DOCS[1].read_text()
    table = doc[doc.index("| metric | labels |"):doc.index("Histograms use fixed")]
    rows = 0
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        if len(cells) < 3:
            continue
        listed = {l.strip() for l in re.sub(r"\([^)]*\)", "", cells[1]).split(",")} - {""}
        if "the rule's labels" in cells[1]:
            listed = {"rule", "name"}  # and whatever labels the rule gives
        for name, own in re.findall(r"`([a-z_0-9]+)`(?:\s*\(([a-z_]+)\))?", cells[0]):
            rows += 1
            want = listed | ({own} if own else set())
            if not want <= has.get(name, set()) and not (not want and name in types):
                unlabelled.append((name, sorted(want), sorted(has.get(name, ()))))
    assert rows >= 55, rows
    assert not unlabelled, "docs/http.md's labels, not on /metrics: %s" % unlabelled
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


# ---- the broker plugins' metrics ---------------------------------------------

def readme_paragraph(start):
    """The README's text from start to the next blank line."""
    text = DOCS[0].read_text()
    i = text.index(start)
    return text[i:text.index("\n\n", i)]


def test_every_broker_plugin_metric_the_readme_lists_is_on_metrics_with_its_labels(
        sluice, tmp_path):
    """The Redis Streams, Kafka and NATS sections list their plugins'
    metrics without backticks (the scrape above has no broker): a sluice
    with a redis, a kafka (librdkafka's mock cluster) and a nats
    (nats-server -js) input and output, one message through each, has
    every one of them on /metrics with the labels those sections name:
    per input or output name, the reconnects of nats by `name`, kafka's
    lag and committed offset per input, topic and partition, its client
    errors by `plugin`, the redis output's replies by `outcome`."""
    import os
    import shutil
    import pytest
    from conftest import free_port, wait_for
    from redis_helpers import RedisServer
    from helpers_kafka import KAFKA_MOCK, Mock, produce
    from test_nats import NATS_SERVER, NATS_TOOL, NatsServer
    for need in (NATS_SERVER, str(NATS_TOOL), str(KAFKA_MOCK)):
        if not os.path.exists(need):
            pytest.skip("%s is missing" % need)
    if not shutil.which("redis-server") or not shutil.which("kcat"):
        pytest.skip("redis-server or kcat is missing")
    redis_text = DOCS[0].read_text().split("Metrics (per input or output name):")[1]
    redis_text = redis_text.split("```")[1]
    kafka_text = readme_paragraph("**Metrics** (registry, on `/metrics`): sluice_kafka")
    nats_text = readme_paragraph("**Metrics** (label `input` or `output`; reconnects `name`)")
    names = lambda t, p: sorted(set(re.findall(r"\b(sluice_%s_[a-z_]+)" % p, t)))
    listed = names(redis_text, "redis") + names(kafka_text, "kafka") + names(nats_text, "nats")
    assert len(listed) >= 35, listed
    assert 'outcome="ok"|"error"' in redis_text
    flat = " ".join(kafka_text.split())
    assert "(per input, topic, partition;" in flat and "(label plugin)" in flat

    redis = RedisServer(tmp_path)
    nats = NatsServer(tmp_path)
    kafka = Mock(tmp_path, ["kin:1", "kout:1"])
    admin = free_port()
    try:
        eng = sluice("""return {
  inputs = {
    { name = "rin", type = "redis", address = "%s", stream = "rin", group = "g",
      start_id = "0", block_ms = 200, claim_interval_ms = 200 },
    { name = "kin", type = "kafka", brokers = "%s", group = "g", topics = "kin",
      start = "earliest", commit_interval_ms = 200 },
    { name = "nin", type = "nats", url = "%s", stream = "NIN", subject = "nin.>",
      create_stream = true } },
  outputs = {
    { name = "rout", type = "redis", address = "%s", stream = "rout" },
    { name = "kout", type = "kafka", brokers = "%s", topic = "kout" },
    { name = "nout", type = "nats", url = "%s", stream = "NOUT",
      subject = "nout.{topic}", create_stream = true } },
  routes = { { topics = "rin", to = "rout" }, { topics = "kin", to = "kout" },
             { topics = "*", to = "nout" } },
  admin = { listen = "127.0.0.1:%d" },
}""" % (redis.address, kafka.bootstrap, nats.url, redis.address,
            kafka.bootstrap, nats.url, admin))
        redis.cli("XADD", "rin", "*", "payload", '{"n":1}')
        produce(kafka.bootstrap, "kin", ["2"])  # no colon: no key
        wait_for(lambda: "sluice_nats_consumer_pending{" in scrape_text(
            "127.0.0.1:%d" % admin), 20, what="the nats consumer's info")
        nats.tool("pub", "nin.a", 1, "--js", "--body", '{"n":%d}')

        def delivered():
            text = scrape_text("127.0.0.1:%d" % admin)
            return all('sluice_output_events_total{output="%s"} 1\n' % o in text
                       for o in ("rout", "kout", "nout")) and \
                'sluice_kafka_committed_offset{input="kin",topic="kin",partition="0"}' in text
        try:
            wait_for(delivered, 30, interval=0.1, what="one event through each broker")
        except BaseException:
            print(scrape_text("127.0.0.1:%d" % admin))
            raise
        text = scrape_text("127.0.0.1:%d" % admin)
    finally:
        kafka.stop()
        nats.stop()
        redis.stop()
    types, samples = families(text)
    labels = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            m = re.match(r"([a-z_0-9]+)\{(.*)\} ", line)
            if m:
                labels.setdefault(m.group(1), []).append(
                    dict(re.findall(r'([a-z_]+)="([^"]*)"', m.group(2))))
    wrong = []
    for name in listed:
        if name not in types or not labels.get(name):
            wrong.append((name, "not on /metrics"))
            continue
        if name == "sluice_nats_reconnects_total":
            want = {"name"}
        elif name == "sluice_kafka_client_errors_total":
            want = {"plugin"}
        elif name in ("sluice_kafka_consumer_lag", "sluice_kafka_committed_offset"):
            want = {"input", "topic", "partition"}
        elif name == "sluice_redis_output_replies_total":
            want = {"output", "outcome"}
        elif "_output_" in name or name.startswith("sluice_nats_publish_"):
            want = {"output"}
        else:
            want = {"input"}
        got = {frozenset(s) for s in labels[name]}
        if got != {frozenset(want)}:
            wrong.append((name, sorted(map(sorted, got))))
    assert not wrong, wrong
    outcomes = {s["outcome"] for s in labels["sluice_redis_output_replies_total"]}
    assert outcomes <= {"ok", "error"} and "ok" in outcomes, outcomes
