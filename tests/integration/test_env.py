"""The environment in config strings (issue 11, item 3), through the real
binary: `${VAR}`, `${VAR:-default}` and `$$` in string values at any depth,
for `sluice check` and `sluice run`; a variable that is not set is a config
error naming it and the key path; the relay example takes its central peer
from the environment, as its comment shows.

Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_env.py
"""

import os

from conftest import (free_port, read_ndjson, run_sluice,
                      send_events, wait_lines)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

CONFIG = """return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:${SL_IN_PORT}" } },
  outputs = {
    { name = "out", type = "file", path = "${SL_OUT_DIR:-.}/${SL_OUT_NAME}.ndjson",
      queue = { max_bytes = "${SL_QUEUE:-1MiB}" } },
    { name = "cash", type = "file", path = "cost$$.ndjson" },
  },
  routes = { { topics = { "${SL_TOPIC}.*" }, to = "out" },
             { topics = "cash", to = "cash" } },
}
"""


def test_check_and_run_put_the_environment_into_nested_strings(sluice, tmp_path,
                                                               monkeypatch):
    port = free_port()
    env = {"SL_IN_PORT": str(port), "SL_OUT_NAME": "orders", "SL_TOPIC": "orders"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("SL_OUT_DIR", raising=False)
    monkeypatch.delenv("SL_QUEUE", raising=False)
    cfg = tmp_path / "env.conf.lua"
    cfg.write_text(CONFIG)
    r = run_sluice("check", "-c", cfg)
    assert r.returncode == 0, r.stderr
    eng = sluice(CONFIG, env=env)
    send_events("127.0.0.1:%d" % port,
                [{"id": "a", "topic": "orders.new", "payload": 1},
                 {"id": "b", "topic": "other", "payload": 2},
                 {"id": "c", "topic": "cash", "payload": 3}])
    # $$ is a literal $ (c went after b: once it is there, b was routed)
    wait_lines(eng.path("cost$.ndjson"), 1)
    assert [e["id"] for e in read_ndjson(eng.path("cost$.ndjson"))] == ["c"]
    # ${SL_OUT_DIR:-.} took its default; the route's topic came from SL_TOPIC
    wait_lines(eng.path("orders.ndjson"), 1)
    assert [e["id"] for e in read_ndjson(eng.path("orders.ndjson"))] == ["a"]
    assert eng.stop() == 0


def test_a_variable_that_is_not_set_is_a_config_error_naming_it_and_the_key(
        sluice, tmp_path, monkeypatch):
    monkeypatch.setenv("SL_IN_PORT", str(free_port()))
    monkeypatch.setenv("SL_TOPIC", "orders")
    monkeypatch.delenv("SL_OUT_NAME", raising=False)
    cfg = tmp_path / "env.conf.lua"
    cfg.write_text(CONFIG)
    want = ("%s: outputs[1].path: environment variable SL_OUT_NAME is not set "
            "(${SL_OUT_NAME:-default} gives a default)" % cfg)
    r = run_sluice("check", "-c", cfg)
    assert r.returncode == 1
    assert want in r.stderr
    # run refuses to start with the same words
    r = run_sluice("run", "-c", cfg)
    assert r.returncode != 0
    assert want in r.stderr
    # a malformed reference names its key path and byte
    cfg.write_text(CONFIG.replace("${SL_TOPIC}.*", "${SL_TOPIC.*"))
    monkeypatch.setenv("SL_OUT_NAME", "x")
    r = run_sluice("check", "-c", cfg)
    assert r.returncode == 1
    assert "routes[1].topics[1]: bad variable reference at byte 1" in r.stderr


def test_a_value_longer_than_the_bound_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SL_IN_PORT", "7400")
    monkeypatch.setenv("SL_TOPIC", "t")
    monkeypatch.setenv("SL_OUT_NAME", "n" * 70000)
    cfg = tmp_path / "env.conf.lua"
    cfg.write_text(CONFIG)
    r = run_sluice("check", "-c", cfg)
    assert r.returncode == 1
    assert ("outputs[1].path: longer than 65536 bytes once the environment "
            "is put in") in r.stderr


def test_the_relay_example_takes_its_central_peer_from_the_environment(
        sluice, tmp_path, monkeypatch):
    text = open(os.path.join(ROOT, "examples", "relay", "edge.conf.lua")).read()
    # as its comment shows: CENTRAL=central.logging.svc:7500 sluice run -c ...
    monkeypatch.setenv("CENTRAL", "central.logging.svc:7500")
    cfg = tmp_path / "edge.conf.lua"
    cfg.write_text(text)
    assert run_sluice("check", "-c", cfg).returncode == 0
    edge = sluice(text, name="edge", env={"CENTRAL": "central.logging.svc:7500"})
    line = edge.wait_log("output peer's host name does not resolve; retrying with backoff",
                         output="central")
    assert "central.logging.svc" in line["error"]
    assert edge.stop() == 0
    # pointed at a running central by name, it delivers
    port = free_port()
    central = sluice({"inputs": [{"name": "in", "type": "tcp",
                                  "listen": "127.0.0.1:%d" % port}],
                      "outputs": [{"name": "got", "type": "file", "path": "got.ndjson"}],
                      "routes": [{"topics": "*", "to": "got"}]}, name="central")
    edge = sluice(text, name="edge2", env={"CENTRAL": "localhost:%d" % port})
    send_events(str(edge.path("var/edge.sock")),
                [{"id": "e%d" % i, "topic": "t", "payload": i} for i in range(5)])
    wait_lines(central.path("got.ndjson"), 5)
    assert [e["id"] for e in read_ndjson(central.path("got.ndjson"))] == \
        ["e%d" % i for i in range(5)]
