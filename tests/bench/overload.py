#!/usr/bin/python3
"""overload.py - offer events to a sluice tcp input at a fixed rate (paced
in 10 ms steps) for a while, and every second print what was offered and
sent (taken by the kernel), the output's deliveries, its queue, and the
engine's RSS. Used by tests/bench/buffer.sh for the 10x overload runs.

    overload.py --to HOST:PORT --pid PID --admin HOST:PORT --output NAME
                --rate EVENTS_PER_S --seconds N

Prints one line per second, then a summary line with key=value pairs:
offered, sent, delivered, rss_start_mb (before sending), rss_first_mb
(after one second, the queue full by then), rss_max_mb, rss_last_mb.
Sending blocks when the engine stops reading (when_full = "block"): then
"sent" falls behind the rate, which is the point.
"""

import argparse
import socket
import time
import urllib.request

import msgpack


def rss_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def metrics(admin, output):
    want = {
        'sluice_output_events_total{output="%s"}' % output: "delivered",
        'sluice_queue_events{output="%s"}' % output: "queued",
        'sluice_output_rate_limited_total{output="%s"}' % output: "rate_limited",
    }
    out = {}
    with urllib.request.urlopen("http://%s/metrics" % admin, timeout=5) as r:
        for line in r.read().decode().splitlines():
            key, _, value = line.rpartition(" ")
            if key in want:
                out[want[key]] = int(float(value))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--to", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--admin", required=True)
    ap.add_argument("--output", default="out")
    ap.add_argument("--rate", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=10)
    a = ap.parse_args()

    host, port = a.to.rsplit(":", 1)
    step = 0.01
    per_step = max(1, int(a.rate * step))
    chunk = b"".join(
        msgpack.packb({"topic": "load", "key": "k%d" % (i % 64),
                       "payload": {"seq": i, "pad": "x" * 64}}, use_bin_type=True)
        for i in range(per_step))
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
    offered = sent = 0
    rss_start = rss_mb(a.pid)
    print("  t= 0s rss_mb=%7.1f (before sending)" % rss_start, flush=True)
    start = time.monotonic()
    next_report = start + 1
    rss = []
    while True:
        now = time.monotonic()
        if now - start >= a.seconds:
            break
        # offered: what the schedule wanted out by now
        due = int((now - start) / step) + 1
        offered = due * per_step
        if sent < offered:
            s.sendall(chunk)  # blocks while the engine does not read
            sent += per_step
        else:
            time.sleep(step / 2)
        if time.monotonic() >= next_report:
            m = metrics(a.admin, a.output)
            r = rss_mb(a.pid)
            rss.append(r)
            print("  t=%2ds offered=%9d sent=%9d delivered=%9d queued=%7d "
                  "rss_mb=%7.1f" % (len(rss), offered,
                                    sent, m.get("delivered", 0),
                                    m.get("queued", 0), r), flush=True)
            next_report += 1
    s.close()
    m = metrics(a.admin, a.output)
    print("offered=%d sent=%d delivered=%d rss_start_mb=%.1f rss_first_mb=%.1f "
          "rss_max_mb=%.1f rss_last_mb=%.1f"
          % (offered, sent, m.get("delivered", 0), rss_start,
             rss[0] if rss else 0, max(rss) if rss else 0, rss[-1] if rss else 0))


if __name__ == "__main__":
    main()
