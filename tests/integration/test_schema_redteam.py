"""Payload contracts (issue 16) attacked from outside: hostile field names
and version headers from producers, odd schema files from operators. The
HTTP 400 body stays JSON, metric labels stay the known versions, and a
schema path that is no regular file is a config error, not a hang."""
import json
import os
import random
import time

from conftest import free_port, run_sluice, scrape, with_test_workers
from helpers_http import curl
from test_schema import ORDER_V1, ORDER_V2, config, post, start, write_schemas


def test_http_400_body_stays_json_for_field_names_with_quotes_controls_and_slashes(
        sluice, tmp_path):
    d = write_schemas(tmp_path, order_v1_json=ORDER_V1,
                      order_v2_json=dict(ORDER_V2, additionalProperties=False))
    port, admin, http = free_port(), free_port(), free_port()
    sluice(config(port, admin, """{
    { topics = "orders.*", file = "%s/order.v1.json" },
    { topics = "orders.*", file = "%s/order.v2.json" },
  }""" % (d, d), http=http))
    name = 'a"b\\c\n\r\t\x01/~}'
    r = post(http, [{"topic": "orders.x", "payload": {"sku": "s", name: 1}}])
    assert r.status == 400, r
    body = r.json()  # parses: quotes and control characters escaped
    assert body["path"] == "/" + name.replace("~", "~0").replace("/", "~1")
    assert "additionalProperties" in body["expected"]
    assert body["path"] in body["error"]
    # a 1000-character name of 2-byte characters: the path is cut short,
    # the body is still JSON
    long_name = "\u00e9" * 1000
    r = post(http, [{"topic": "orders.x", "payload": {"sku": "s", long_name: 1}}])
    assert r.status == 400, r
    body = r.json()
    assert body["path"].startswith("/\u00e9\u00e9")
    assert len(body["path"].encode()) < 300
    assert len(r.body) < 4096


def test_producer_chosen_version_headers_do_not_grow_the_metric_labels(sluice, tmp_path):
    eng, port, admin, http, _ = start(sluice, tmp_path, with_http=True)
    rnd = random.Random(16)
    weird = ["v%d" % rnd.randrange(10 ** 9) for _ in range(40)] + [
        "9" * 5000, "2.", ".2", "-1", "2\n", "\u00e92", "1.99999", "32768",
        "2.32768", "0x2", " 2"]
    for v in weird:
        r = post(http, [{"topic": "orders.x", "headers": {"schema-version": v},
                         "payload": {"sku": "s"}}])
        assert r.status == 400, (v, r)
        body = r.json()
        assert body["version"] == "unknown"
        assert len(r.body) < 1024
    versions = {l.get("version") for n, l, _ in scrape("127.0.0.1:%d" % admin)
                if n == "sluice_schema_events_total"}
    assert versions <= {"1", "2", "unknown"}, versions
    assert "unknown" in versions


def test_a_schema_path_that_is_a_fifo_or_a_directory_is_a_config_error_not_a_hang(
        tmp_path):
    d = write_schemas(tmp_path, order_v1_json=ORDER_V1)
    os.mkfifo(str(d / "order.v2.json"))
    os.mkdir(str(d / "order.v3.json"))
    (tmp_path / "c.lua").write_text("""return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:1" } },
  outputs = { { name = "out", type = "stdout" } },
  schemas = {
    { topics = "orders.*", file = "%s/order.v1.json" },
    { topics = "orders.*", file = "%s/order.v2.json" },
    { topics = "orders.*", file = "%s/order.v3.json" },
  },
}
""" % (d, d, d))
    t0 = time.monotonic()
    r = run_sluice("check", "-c", tmp_path / "c.lua", timeout=20)
    assert time.monotonic() - t0 < 10
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "order.v2.json: not a regular file" in out, out
    assert "order.v3.json: not a regular file" in out, out


def test_a_reload_storm_alternating_good_and_broken_schemas_leaves_the_last_good_one(
        sluice, tmp_path):
    from test_schema import NO_SKU, reload_lines, two_versions
    eng, port, admin, http, d = start(sluice, tmp_path, with_http=True)
    (d / "order.v3.json").write_text(json.dumps(NO_SKU))
    (d / "broken.v4.json").write_text('{"type": "object", "properties": ')
    good = config(port, admin, """{
    { topics = "orders.*", file = "%s/order.v1.json" },
    { topics = "orders.*", file = "%s/order.v2.json" },
    { topics = "orders.*", file = "%s/order.v3.json" },
  }""" % (d, d, d), http=http)
    bad = config(port, admin, """{
    { topics = "orders.*", file = "%s/order.v1.json" },
    { topics = "orders.*", file = "%s/broken.v4.json" },
  }""" % (d, d), http=http)
    plain = config(port, admin, two_versions(d), http=http)
    # signals without waiting, HTTP posts between them: every answer is a
    # verdict of one whole config (202, or 400 naming a contract)
    for i in range(30):
        eng.config.write_text(with_test_workers((good, bad, plain)[i % 3]))
        eng.signal(1)
        r = post(http, [{"topic": "orders.x", "payload": {"qty": 1}}])
        assert r.status in (202, 400), r
        if r.status == 400:
            assert r.json()["contract"] == "orders.*"
    eng.config.write_text(with_test_workers(good))
    eng.signal(1)

    def settled():
        lines = reload_lines(eng)
        return lines and lines[-1]["msg"] == "config reloaded" and \
            post(http, [{"topic": "orders.x", "payload": {"qty": 1}}]).status == 202
    from conftest import wait_for
    wait_for(settled, timeout=20, what="the last good config in force")
    # v3 (no sku) is the newest; v2 still wants sku
    r = post(http, [{"topic": "orders.x", "headers": {"schema-version": "2"},
                     "payload": {"qty": 1}}])
    assert r.status == 400 and r.json()["path"] == ""
    versions = {l.get("version") for n, l, _ in scrape("127.0.0.1:%d" % admin)
                if n == "sluice_schema_events_total"}
    assert versions <= {"1", "2", "3", "unknown"}, versions


def test_a_contract_shadowed_by_an_earlier_glob_is_a_config_error(tmp_path):
    # an event takes the first contract whose glob matches: after
    # "orders.*", a contract for "orders.new" (or "orders.n*") would never
    # check anything, silently
    d = write_schemas(tmp_path, order_v1_json=ORDER_V1, new_v1_json=ORDER_V2,
                      pay_v1_json=ORDER_V1)
    (tmp_path / "c.lua").write_text("""return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:1" } },
  outputs = { { name = "out", type = "stdout" } },
  schemas = {
    { topics = "orders.*", file = "%s/order.v1.json" },
    { topics = "*.pay", file = "%s/pay.v1.json" },
    { topics = "orders.n*", file = "%s/new.v1.json" },
  },
}
""" % (d, d, d))
    r = run_sluice("check", "-c", tmp_path / "c.lua")
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert ('contract orders.n* is never used: every topic it matches takes '
            'the earlier contract orders.*') in out, out
    # overlapping globs that do not shadow are fine ("*.pay" after
    # "orders.*": "bank.pay" takes it)
    assert "*.pay is never used" not in out
