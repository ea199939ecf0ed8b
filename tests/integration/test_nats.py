"""The nats input and output (issue 12, item 2) against a real
`nats-server -js` started here on a free loopback port with its own store
folder, driven by build/tools/nats_tool (a libnats client: Debian ships no
nats CLI). Ledgers are exact: every message published is consumed from the
output stream, duplicates are counted and printed.

Run: /usr/bin/python3 -m pytest -q tests/integration/test_nats.py
"""

import os
import signal
import subprocess
import time
from pathlib import Path

import msgpack
import pytest

from conftest import SLUICE_BIN, free_port, metrics_flat, wait_for

NATS_TOOL = Path(SLUICE_BIN).resolve().parent / "tools" / "nats_tool"
NATS_SERVER = "/usr/sbin/nats-server"

pytestmark = pytest.mark.skipif(not os.path.exists(NATS_SERVER),
                                reason="nats-server is not installed")

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class NatsServer:
    """nats-server -js on a free port; its store survives restarts."""

    def __init__(self, folder):
        self.folder = folder
        self.port = free_port()
        self.url = "nats://127.0.0.1:%d" % self.port
        self.store = folder / "nats-store"
        self.runs = 0
        self.proc = None
        self.start()

    def start(self):
        self.runs += 1
        self.log = self.folder / ("nats-server.%d.log" % self.runs)
        self._err = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port),
             "-sd", str(self.store)],
            stdout=self._err, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(lambda: "Server is ready" in self.log.read_text(errors="replace"),
                 10, what="nats-server to be ready")

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)
        self._err.close()

    def tool(self, *args, timeout=60):
        r = subprocess.run([str(NATS_TOOL), args[0], self.url] + [str(a) for a in args[1:]],
                           capture_output=True, timeout=timeout)
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        return r.stdout.decode()


@pytest.fixture
def nats(tmp_path):
    assert NATS_TOOL.exists(), "build the tools first (make)"
    srv = NatsServer(tmp_path)
    yield srv
    srv.stop()


def parse(out):
    """nats_tool's lines: (subject, {header: value}, body bytes)."""
    msgs = []
    for line in out.splitlines():
        if line == "ready" or not line:
            continue
        subject, hx, body = line.split("\t")
        headers = {}
        for h in bytes.fromhex(hx).decode().splitlines():
            k, _, v = h.partition(": ")
            headers[k] = v
        msgs.append((subject, headers, bytes.fromhex(body)))
    return msgs


def consume_events(nats, stream, durable, expect, idle_ms=3000):
    """Every message of stream as (subject, NATS headers, decoded event)."""
    msgs = parse(nats.tool("consume", stream, durable, expect, idle_ms))
    return [(s, h, msgpack.unpackb(b, raw=False)) for s, h, b in msgs]


RULE = """
return {
  topics = { "in.*" },
  on_event = function(ev)
    ev.headers.seen = "rule"
    ev.payload.twice = ev:field("n") * 2
    return "out"
  end,
}
"""


def config(nats, admin, rules_dir=None, durable="sluice", extra_in="",
           extra_out="", name="nats-in"):
    return """return {
  inputs = { { name = "%s", type = "nats", url = "%s", stream = "IN",
               durable = "%s", subject = "in.>", batch = 32,
               max_ack_pending = 256, ack_wait_ms = 2000 %s } },
  outputs = { { name = "out", type = "nats", url = "%s", stream = "OUT",
                subject = "out.{topic}", max_in_flight = 64,
                ack_timeout_ms = 2000,
                retry = { initial_ms = 50, max_ms = 500 } %s } },
  routes = { { topics = "*", to = "out" } },
  %s
  admin = { listen = "127.0.0.1:%d" },
  shutdown_timeout = 10,
}""" % (name, nats.url, durable, extra_in, nats.url, extra_out,
        'rules = { dir = "%s" },' % rules_dir if rules_dir else "", admin)


def start(sluice, tmp_path, nats, rules=True, **kw):
    d = None
    if rules:
        d = tmp_path / "rules"
        d.mkdir(exist_ok=True)
        (d / "double.lua").write_text(RULE)
    admin = free_port()
    nats.tool("stream", "IN", "in.>")
    nats.tool("stream", "OUT", "out.>")
    eng = sluice(config(nats, admin, d, **kw))
    return eng, admin


def ledger(events):
    """payload n -> times seen."""
    seen = {}
    for _, _, ev in events:
        n = ev["payload"]["n"]
        seen[n] = seen.get(n, 0) + 1
    return seen


def acked(admin, name="nats-in"):
    return metrics_flat(admin).get('sluice_nats_acked_total{input="%s"}' % name, 0)


def test_round_trip_jetstream_in_rule_out_exact_ledger(sluice, tmp_path, nats):
    eng, admin = start(sluice, tmp_path, nats)
    n = 500
    nats.tool("pub", "in.orders", n, "--js", "-H", "traceparent:" + TRACEPARENT,
              "-H", "tenant:acme")
    wait_for(lambda: acked(admin) == n, 30, what="every message acked")
    events = consume_events(nats, "OUT", "check", n)
    seen = ledger(events)
    assert sorted(seen) == list(range(n)), "lost: %s" % (set(range(n)) - set(seen))
    assert all(c == 1 for c in seen.values()), "duplicates in the normal case"
    subject, nh, ev = events[0]
    assert subject == "out.in.orders"
    assert ev["topic"] == "in.orders"
    assert ev["payload"]["twice"] == ev["payload"]["n"] * 2
    # headers both ways: NATS headers -> ev.headers -> NATS headers
    for h in (ev["headers"], nh):
        assert h["traceparent"] == TRACEPARENT
        assert h["tenant"] == "acme"
        assert h["seen"] == "rule"
    # JetStream metadata for rules, not carried on as NATS headers
    assert ev["headers"]["nats-stream"] == "IN"
    assert ev["headers"]["nats-delivered"] == "1"
    assert ev["headers"]["nats-subject"] == "in.orders"
    assert {int(e["headers"]["nats-seq"]) for _, _, e in events} == set(range(1, n + 1))
    assert "nats-seq" not in nh and nh["Nats-Msg-Id"] == ev["id"]
    m = metrics_flat(admin)
    assert m['sluice_nats_in_flight{input="nats-in"}'] == 0
    assert m['sluice_nats_naked_total{input="nats-in"}'] == 0
    assert m['sluice_output_events_total{output="out"}'] == n
    assert eng.find_logs("nats connected")
