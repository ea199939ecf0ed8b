"""workers = 2 behind the other stream inputs (issue 14 item 4): HTTP and
fluent forward hand their events to the other worker and apply its results
between two reads (sl_framed_read_done) as the native input does, so a
busy stream keeps its per-key order, every event arrives once, and every
batch is answered (202, forward acks): nothing stalls waiting for a loop
turn.
"""
import http.client
import json
import socket
import threading

import msgpack

from conftest import connect, free_port, metrics_flat, read_ndjson, wait_lines
from test_workers import PAYLOAD_RULE, check_per_key
from test_workers_balance import CHURN


def start(sluice, tmp_path, inp, env=None):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10_p.lua").write_text(PAYLOAD_RULE)
    port, admin = free_port(), free_port()
    eng = sluice("""return {
  workers = 2,
  inputs = { { name = "in", type = "%s", listen = "127.0.0.1:%d" } },
  outputs = { { name = "out", type = "file", path = "out.ndjson" },
              { name = "tick", type = "file", path = "tick.ndjson" } },
  rules = { dir = "%s", watch = false },
  admin = { listen = "127.0.0.1:%d" },
}""" % (inp, port, rules, admin), env=env)
    return eng, port, admin


def post_batches(port, prefix, batches, per, keys, answers):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for b in range(batches):
        body = "\n".join(json.dumps(
            {"topic": "t", "key": "%s%d" % (prefix, i % keys),
             "payload": {"seq": i, "amount": i % 2000}})
            for i in range(b * per, (b + 1) * per))
        c.request("POST", "/v1/events", body,
                  {"Content-Type": "application/x-ndjson"})
        r = c.getresponse()
        answers.append((r.status, json.loads(r.read())))
    c.close()


def test_workers_http_keep_per_key_order_while_buckets_move(sluice, tmp_path):
    eng, port, admin = start(sluice, tmp_path, "http", env=CHURN)
    answers = []
    threads = [threading.Thread(target=post_batches,
                                args=(port, "h%d-" % t, 30, 1000, 40, answers))
               for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers == [(202, {"accepted": 1000})] * 60
    total = 60000
    wait_lines(eng.path("out.ndjson"), total, timeout=30)
    check_per_key(read_ndjson(eng.path("out.ndjson")), total)
    m = metrics_flat(admin)
    assert all(m['sluice_worker_events_total{worker="%d"}' % i] > 0
               for i in range(2))
    assert m["sluice_worker_bucket_moves_total"] > 0


def test_workers_forward_stream_is_acked_whole_and_nothing_stalls(
        sluice, tmp_path):
    eng, port, admin = start(sluice, tmp_path, "forward")
    frames, per = 60, 1000
    s = connect("127.0.0.1:%d" % port)

    def write():
        for f in range(frames):
            entries = b"".join(msgpack.packb(
                [1700000000, {"seq": f * per + i, "amount": i * 3}])
                for i in range(per))
            s.sendall(msgpack.packb(["fwd", entries, {"chunk": "c%d" % f}],
                                    use_bin_type=True))
    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    up, acks = msgpack.Unpacker(raw=False), []
    s.settimeout(30)
    while len(acks) < frames:
        data = s.recv(65536)
        assert data, "the engine closed after %d acks" % len(acks)
        up.feed(data)
        acks.extend(up)
    writer.join(10)
    s.close()
    # each chunk answered once, in order, only once its events were decided
    assert acks == [{"ack": "c%d" % f} for f in range(frames)]
    total = frames * per
    wait_lines(eng.path("out.ndjson"), total, timeout=30)
    got = read_ndjson(eng.path("out.ndjson"))
    seqs = sorted(e["payload"]["seq"] for e in got)
    assert seqs == list(range(total))  # none lost, none twice
    assert all((e["payload"].get("priority") == "high") ==
               (e["payload"]["amount"] > 1000) for e in got)
    m = metrics_flat(admin)
    per_worker = [m['sluice_worker_events_total{worker="%d"}' % i]
                  for i in range(2)]
    assert sum(per_worker) == total and all(p > 0 for p in per_worker)
