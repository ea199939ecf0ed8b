#!/usr/bin/python3
"""Reload soak (issue 4): N reloads in a row under sustained load.

Starts the real engine (tcp input -> a rule that stamps its version ->
tcp output), a sink that decodes everything the engine sends, and a sender
paced at RATE events/s over several keys; rewrites the rule (write a temp
file, rename over) every INTERVAL seconds and waits for each reload. Then
prints sent, received, lost, duplicated, reordered (per key), the delivery
gap around swaps (p99 and max of the longest gap in each swap window) and
the engine's RSS before and after.

    SLUICE_BIN=build/sluice /usr/bin/python3 tests/soak/reload_soak.py
    env: RELOADS (100), RATE (100000), INTERVAL (0.15)
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import msgpack

BIN = os.environ.get("SLUICE_BIN", "build/sluice")
RELOADS = int(os.environ.get("RELOADS", "100"))
RATE = int(os.environ.get("RATE", "100000"))
INTERVAL = float(os.environ.get("INTERVAL", "0.15"))
KEYS = 8


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


RULE = """
return {
  on_event = function(ev)
    ev.headers.v = "%d"
    return "sink"
  end,
}
"""


class Sink(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(4)
        self.port = self.srv.getsockname()[1]
        self.count = 0
        self.arrivals = []  # (wall time, events in this read)
        self.last = {}
        self.seen = bytearray()
        self.dups = 0
        self.reordered = 0
        self.versions = []
        self.stop_flag = False

    def run(self):
        self.srv.settimeout(0.2)
        while not self.stop_flag:
            try:
                c, _ = self.srv.accept()
            except socket.timeout:
                continue
            c.settimeout(0.2)
            up = msgpack.Unpacker(raw=False)
            while not self.stop_flag:
                try:
                    data = c.recv(1 << 20)
                except socket.timeout:
                    continue
                if not data:
                    break
                now = time.time()
                up.feed(data)
                n = 0
                for ev in up:
                    n += 1
                    seq = ev["payload"]
                    if seq < len(self.seen) and self.seen[seq]:
                        self.dups += 1
                    else:
                        if seq >= len(self.seen):
                            self.seen.extend(b"\0" * (seq + 1 - len(self.seen) + 65536))
                        self.seen[seq] = 1
                    k = ev["key"]
                    if self.last.get(k, -1) > seq:
                        self.reordered += 1
                    self.last[k] = seq
                    v = int(ev["headers"]["v"])
                    if not self.versions or self.versions[-1] != v:
                        self.versions.append(v)
                self.count += n
                if n:
                    self.arrivals.append((now, n))


def main():
    work = tempfile.mkdtemp(prefix="sluice-soak-")
    rules = os.path.join(work, "rules")
    os.mkdir(rules)
    rule_path = os.path.join(rules, "10_stamp.lua")
    with open(rule_path, "w") as f:
        f.write(RULE % 0)
    sink = Sink()
    sink.start()
    port = free_port()
    cfg = os.path.join(work, "sluice.conf.lua")
    with open(cfg, "w") as f:
        f.write("""return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "sink", type = "tcp", address = "127.0.0.1:%d" } },
  rules = { dir = "%s", debounce_ms = 20 },
  log_level = "info",
}
""" % (port, sink.port, rules))
    log = open(os.path.join(work, "engine.log"), "w+")
    eng = subprocess.Popen([BIN, "run", "-c", cfg], stderr=log)
    deadline = time.time() + 10
    while True:
        try:
            snd = socket.create_connection(("127.0.0.1", port))
            break
        except OSError:
            if time.time() > deadline:
                sys.exit("engine did not start")
            time.sleep(0.05)
    total = int(RATE * (RELOADS * INTERVAL + 1.5))
    print("pre-encoding %d events..." % total, flush=True)
    pk = msgpack.Packer()
    chunk = 1000
    chunks = []
    for base in range(0, total, chunk):
        chunks.append(b"".join(
            pk.pack({"topic": "soak", "key": "k%d" % (i % KEYS), "payload": i})
            for i in range(base, min(base + chunk, total))))
    rss_before = rss_kb(eng.pid)
    sent = [0]

    def sender():
        t0 = time.monotonic()
        for i, c in enumerate(chunks):
            due = t0 + (i * chunk) / RATE
            d = due - time.monotonic()
            if d > 0:
                time.sleep(d)
            snd.sendall(c)
            sent[0] += min(chunk, total - i * chunk)
        snd.shutdown(socket.SHUT_WR)

    st = threading.Thread(target=sender, daemon=True)
    t_start = time.time()
    st.start()
    time.sleep(0.5)
    reload_ms = []
    rss_warm = rss_before
    for v in range(1, RELOADS + 1):
        tmp = rule_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(RULE % v)
        t_write = time.time()
        os.rename(tmp, rule_path)
        # wait for the engine's log line for this version
        while True:
            log.seek(0)
            lines = [json.loads(l) for l in log.read().splitlines() if l.startswith("{")]
            done = [l for l in lines if l.get("msg") == "rules reloaded"]
            if len(done) >= v:
                break
            if time.time() - t_write > 5:
                sys.exit("reload %d did not happen" % v)
            time.sleep(0.005)
        reload_ms.append((t_write, time.time() - t_write))
        if v == 10:
            rss_warm = rss_kb(eng.pid)  # buffers are warm: the baseline
        time.sleep(max(0, INTERVAL - (time.time() - t_write)))
    st.join()
    t_sent = time.time()
    while sink.count < sent[0] and time.time() - t_sent < 20:
        time.sleep(0.05)
    rss_after = rss_kb(eng.pid)
    eng.send_signal(signal.SIGTERM)
    rc = eng.wait(30)
    sink.stop_flag = True
    log.seek(0)
    lines = [json.loads(l) for l in log.read().splitlines() if l.startswith("{")]
    swaps = [l for l in lines if l.get("msg") == "rules reloaded"]
    errors = [l for l in lines if l.get("level") == "error"]

    # delivery gaps: longest pause between two reads at the sink inside each
    # swap window (from the write to 250 ms later); and overall
    arr = sink.arrivals
    gaps = []
    j = 0
    for t_write, _ in reload_ms:
        while j < len(arr) and arr[j][0] < t_write:
            j += 1
        k = j
        worst = 0.0
        prev = arr[j - 1][0] if j > 0 else t_write
        while k < len(arr) and arr[k][0] < t_write + 0.25:
            worst = max(worst, arr[k][0] - prev)
            prev = arr[k][0]
            k += 1
        gaps.append(worst * 1000)
    gaps.sort()
    overall = max((arr[i][0] - arr[i - 1][0]) for i in range(1, len(arr))) * 1000 if len(arr) > 1 else 0
    lats = sorted(ms * 1000 for _, ms in reload_ms)
    received = sum(sink.seen)
    lost = sent[0] - received
    dur = t_sent - t_start
    p = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0
    print()
    print("reload soak: %d reloads under %d events/s for %.1f s" % (RELOADS, RATE, dur))
    print("  events sent         %d (%.0f/s achieved)" % (sent[0], sent[0] / dur))
    print("  events received     %d" % sink.count)
    print("  lost                %d" % lost)
    print("  duplicated          %d" % sink.dups)
    print("  reordered (per key) %d" % sink.reordered)
    print("  versions seen       %d (monotonic: %s)" % (len(sink.versions), sink.versions == sorted(sink.versions)))
    print("  reloads logged      %d, errors logged %d" % (len(swaps), len(errors)))
    print("  write->live (ms)    median %.0f  p99 %.0f  max %.0f  (engine-side load: median %s ms)"
          % (p(lats, 0.5), p(lats, 0.99), lats[-1] if lats else 0,
             sorted(l["ms"] for l in swaps)[len(swaps) // 2] if swaps else "-"))
    print("  delivery gap in swap windows (ms): median %.1f  p99 %.1f  max %.1f" % (p(gaps, 0.5), p(gaps, 0.99), gaps[-1] if gaps else 0))
    print("  longest delivery gap overall (ms): %.1f" % overall)
    print("  RSS idle %d kB, after 10 reloads under load %d kB, after all %d kB "
          "(growth over the last %d reloads: %d kB)"
          % (rss_before, rss_warm, rss_after, RELOADS - 10, rss_after - rss_warm))
    print("  engine exit code    %d" % rc)
    ok = lost == 0 and sink.dups == 0 and sink.reordered == 0 and rc == 0 and len(swaps) == RELOADS
    print("RESULT: %s" % ("ok" if ok else "FAILED"))
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
