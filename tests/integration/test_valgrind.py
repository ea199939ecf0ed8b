"""The integration path under valgrind: native and HTTP ingest, rules that
route, transform and fail (dead letter), a disk buffer, the admin server, a
hot reload and a graceful stop, with no memory error and no leak."""
import os
import shutil
import signal
import subprocess
import time
import urllib.request

import msgpack
import pytest

from conftest import SLUICE_BIN, connect, free_port, wait_for

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("SLUICE_ASAN")) or shutil.which("valgrind") is None,
    reason="valgrind does not run sanitizer builds")


def test_integration_path_is_valgrind_clean(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10_orders.lua").write_text("""
return { topics = { "orders.*" }, on_event = function(ev)
  if ev.payload.amount > 100 then ev.headers.big = "yes" end
  return "archive"
end }""")
    (rules / "20_boom.lua").write_text(
        'return { topics = { "boom" }, on_event = function(ev) error("boom") end }')
    port, web, admin = free_port(), free_port(), free_port()
    cfg = tmp_path / "c.lua"
    cfg.write_text("""return {
  inputs = { { name = "app", type = "tcp", listen = "127.0.0.1:%d" },
             { name = "web", type = "http", listen = "127.0.0.1:%d" } },
  outputs = { { name = "archive", type = "file", path = "archive.ndjson" },
              { name = "rest", type = "file", path = "rest.ndjson",
                buffer = { type = "disk", max_bytes = "8MiB" } } },
  routes = { { topics = "*", to = "rest" } },
  rules = { dir = "%s", debounce_ms = 20 },
  admin = { listen = "127.0.0.1:%d" },
}""" % (port, web, rules, admin))
    log = tmp_path / "valgrind.log"
    proc = subprocess.Popen(
        ["valgrind", "--leak-check=full", "--error-exitcode=99",
         "--errors-for-leak-kinds=definite,indirect", "--log-file=%s" % log,
         SLUICE_BIN, "run", "-c", str(cfg)],
        stderr=open(tmp_path / "engine.log", "w"), cwd=tmp_path)
    try:
        def ready():
            # readiness covers every listener; the tcp port accepting would
            # not say the http input (bound after it) is listening yet
            try:
                with urllib.request.urlopen(
                        "http://127.0.0.1:%d/readyz" % admin, timeout=5) as r:
                    return r.status == 200
            except OSError:
                return False
        wait_for(ready, timeout=60, interval=0.2,
                 what="the engine under valgrind to be ready")
        s = connect("127.0.0.1:%d" % port)
        for i in range(150):
            topic = ["orders.eu", "boom", "misc"][i % 3]
            s.sendall(msgpack.packb({"topic": topic, "payload": {"amount": i}}))
        s.sendall(b"\xc1")  # bad input closes this connection
        s.close()
        req = urllib.request.Request(
            "http://127.0.0.1:%d/v1/events" % web, method="POST",
            data=b'{"topic":"orders.x","payload":{"amount":500}}\n{"topic":"y"}\n',
            headers={"Content-Type": "application/x-ndjson"})
        assert urllib.request.urlopen(req, timeout=30).status == 202
        metrics = urllib.request.urlopen(
            "http://127.0.0.1:%d/metrics" % admin, timeout=30).read()
        assert b"sluice_" in metrics
        (rules / "30_new.lua").write_text(
            'return { on_event = function(ev) return "archive" end }')
        wait_for(lambda: b"rules reloaded" in (tmp_path / "engine.log").read_bytes(),
                 timeout=30, what="the reload")
        wait_for(lambda: (tmp_path / "archive.ndjson").exists() and
                 len((tmp_path / "archive.ndjson").read_text().splitlines()) == 51,
                 timeout=30, what="the archived events")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(120)
    report = log.read_text()
    assert rc == 0, report[-3000:]
    assert "ERROR SUMMARY: 0 errors" in report, report[-3000:]
    assert "All heap blocks were freed" in report or "definitely lost: 0 bytes" in report
