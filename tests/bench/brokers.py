"""tests/bench/brokers.py - the broker half of tests/bench/brokers.sh: for
Kafka (build/tools/kafka_mock), NATS JetStream (nats-server -js) and Redis
Streams (redis-server), broker -> sluice (one rule reading
ev.payload.amount) -> broker.

Throughput: EVENTS events are loaded into the source before sluice starts
(by the broker's own client: kcat -P, nats_tool pub --js, one pipelined
write of XADDs), then sluice drains them; the count is sluice's own
sluice_output_events_total (acknowledged by the destination broker), polled
every 20 ms, from the first event out to the last, so neither the generator
nor a consumer is in the measurement (nor the consumer group's join).

Latency: LAT_RATE events/s for LAT_SECONDS, each carrying its send time
(payload ts_ns, CLOCK_REALTIME ns); a consumer of the destination stamps
each on arrival: p50/p99 of (arrival - ts_ns). Producer and consumer are
build/tools/kafka_pipe (Kafka: kcat -P holds stdin lines until a block
fills) or raw-protocol sockets here (NATS PUB and a core SUB on the
destination stream's subject, Redis XADD and XREAD BLOCK): at a few hundred
events/s none is a limit.

"client alone": the same broker's consumer reading the EVENTS preloaded
events without sluice (kcat -C -e, nats_tool consume, XRANGE in pages):
when sluice's row is close to it, the broker client, not sluice, is the
limit.

Prints "row|..." lines for run.sh's table and a table of its own.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

BUILD = os.environ.get("BUILD", "build")
WORK = os.environ["WORK"]
SLUICE = os.environ["SLUICE"]
LOADGEN = os.environ["LOADGEN"]
EVENTS = int(os.environ.get("BROKER_EVENTS", "100000"))
LAT_RATE = int(os.environ.get("BENCH_LAT_RATE", "500"))
LAT_SECONDS = float(os.environ.get("BENCH_LAT_SECONDS", "4"))
TOOLS = os.path.join(os.path.abspath(BUILD), "tools")
ENGINES = []  # stopped after each case, also when it failed

RULE = """return { on_event = function(ev)
  if ev.payload.amount > 1000 then ev.headers.priority = "high" end
  return "out"
end }
"""


def free_port():
    return int(subprocess.check_output([LOADGEN, "--free-port"]).strip())


def wait_for(fn, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        if fn():
            return
        time.sleep(0.02)
    raise RuntimeError("timed out waiting for " + what)


def body(i, ts=0):
    return '{"n":%d,"amount":%d,"ts_ns":%d}' % (i, i % 2000, ts)


class Engine:
    def __init__(self, name, inp, out):
        self.dir = os.path.join(WORK, "brokers-" + name)
        os.makedirs(os.path.join(self.dir, "rules"), exist_ok=True)
        with open(os.path.join(self.dir, "rules", "10_bench.lua"), "w") as f:
            f.write(RULE)
        self.admin = "127.0.0.1:%d" % free_port()
        cfg = "return { inputs = { %s }, outputs = { %s },\n" \
              "  routes = { { topics = \"*\", to = \"out\" } },\n" \
              "  rules = { dir = %s },\n  admin = { listen = %s } }\n" % (
                  inp, out, json.dumps(os.path.join(self.dir, "rules")),
                  json.dumps(self.admin))
        path = os.path.join(self.dir, "sluice.conf.lua")
        with open(path, "w") as f:
            f.write(cfg)
        self.err = os.path.join(self.dir, "stderr")
        self.proc = subprocess.Popen([SLUICE, "run", "-c", path],
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(self.err, "w"))
        wait_for(lambda: b'"sluice started"' in open(self.err, "rb").read()
                 or self.proc.poll() is not None, 20, "sluice to start")
        ENGINES.append(self)
        if self.proc.poll() is not None:
            raise RuntimeError(open(self.err).read())

    def delivered(self):
        try:
            with urllib.request.urlopen("http://%s/metrics" % self.admin,
                                        timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return 0
        m = re.search(r'^sluice_output_events_total\{output="out"\} (\S+)',
                      text, re.M)
        return int(float(m.group(1))) if m else 0

    def rss_mb(self):
        for line in open("/proc/%d/status" % self.proc.pid):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
        return 0.0

    def stop(self):
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def drain_rate(eng, n, timeout=300):
    """events/s from the first delivered event to the n-th."""
    t0 = c0 = None
    end = time.time() + timeout
    while time.time() < end:
        c = eng.delivered()
        now = time.time()
        if t0 is None and c > 0:
            t0, c0 = now, c
        if c >= n:
            if now - t0 < 1e-3 or n - c0 < n / 10:
                return None  # done within one poll: too few events
            return (n - c0) / (now - t0)
        time.sleep(0.02)
    raise RuntimeError("sluice delivered %d of %d" % (eng.delivered(), n))


def percentiles(lat):
    lat = sorted(lat)
    if not lat:
        return None, None
    return (lat[len(lat) // 2] / 1e6,
            lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1e6)


def paced(send, rate, seconds):
    """send(i, ts_ns) at rate/s, in ticks of 10 ms; returns the count."""
    total = int(rate * seconds)
    start = time.time()
    i = 0
    while i < total:
        due = min(total, int((time.time() - start) * rate) + 1)
        while i < due:
            send(i, time.time_ns())
            i += 1
        time.sleep(0.01)
    return total


class Arrivals:
    """Latencies of the events whose payload names a ts_ns > 0."""

    def __init__(self):
        self.lat = []
        self.warm = threading.Event()

    def seen(self, payload):
        now = time.time_ns()
        ts = payload.get("ts_ns", 0)
        if ts < 0:
            self.warm.set()
        elif ts > 0:
            self.lat.append(now - ts)


# ---- Kafka ---------------------------------------------------------------

def kafka_case():
    mock_out = open(os.path.join(WORK, "kafka_mock.out"), "w+")
    mock = subprocess.Popen([os.path.join(TOOLS, "kafka_mock"), "in:1",
                             "out:1", "lin:1", "lout:1", "lin2:1", "lout2:1"],
                            stdout=mock_out,
                            stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "bootstrap=" in open(mock_out.name).read(), 10,
                 "kafka_mock")
        boot = re.search(r"bootstrap=(\S+)", open(mock_out.name).read()).group(1)
        data = "".join(body(i) + "\n" for i in range(EVENTS)).encode()
        t = time.time()
        subprocess.run(["kcat", "-b", boot, "-P", "-t", "in"], input=data,
                       check=True, capture_output=True)
        produce_eps = EVENTS / (time.time() - t)
        t = time.time()
        r = subprocess.run(["kcat", "-b", boot, "-C", "-t", "in", "-e", "-q",
                            "-o", "beginning", "-f", "%s\n"],
                           check=True, capture_output=True)
        assert r.stdout.count(b"\n") == EVENTS
        consume_eps = EVENTS / (time.time() - t)

        def engine(src, dst, name, options=""):
            return Engine(name, '{ name = "in", type = "kafka", brokers = "%s",'
                          ' group = "b-%s", topics = "%s", start = "earliest"'
                          '%s }' % (boot, name, src, options and
                                    ', options = "%s"' % options),
                          '{ name = "out", type = "kafka", brokers = "%s",'
                          ' topic = "%s", format = "json" }' % (boot, dst))
        eng = engine("in", "out", "kafka")
        eps = drain_rate(eng, EVENTS)
        rss = eng.rss_mb()
        eng.stop()

        # the mock answers a fetch that found nothing only after its whole
        # fetch.wait.max.ms (500 ms by default): that run, then one at 10 ms
        lat = kafka_latency(boot, engine("lin", "lout", "kafka-lat"),
                            "lin", "lout")
        short = kafka_latency(boot, engine("lin2", "lout2", "kafka-lat2",
                                           "fetch.wait.max.ms=10"),
                              "lin2", "lout2")
        return [("", eps, rss, lat, produce_eps, consume_eps),
                (", fetch.wait 10 ms", None, None, short, None, None)]
    finally:
        mock.terminate()
        mock.wait()


def kafka_latency(boot, eng, src, dst):
    """p50/p99 of src -> eng -> dst, written and read with kafka_pipe."""
    arr = Arrivals()
    pipe = os.path.join(TOOLS, "kafka_pipe")
    cons = subprocess.Popen([pipe, "consume", boot, dst],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def read():
        for line in cons.stdout:
            arr.seen(json.loads(line)["payload"])
    threading.Thread(target=read, daemon=True).start()
    prod = subprocess.Popen([pipe, "produce", boot, src],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)

    def send(i, ts):
        prod.stdin.write((body(i, ts) + "\n").encode())
        prod.stdin.flush()
    try:
        warm_up(arr, send)
        sent = paced(send, LAT_RATE, LAT_SECONDS)
        wait_for(lambda: len(arr.lat) >= sent, 30, "the latency events")
    finally:
        prod.stdin.close()
        prod.wait()
        cons.kill()
        cons.wait()
        eng.stop()
    return percentiles(arr.lat)


def warm_up(arr, send):
    """Until the consumer sees one: sluice joined, the consumer reads."""
    end = time.time() + 60
    while not arr.warm.wait(0.5):
        if time.time() > end:
            raise RuntimeError("no warm-up event came through")
        send(-1, -1)


# ---- NATS JetStream --------------------------------------------------------

def nats_case():
    port = free_port()
    url = "nats://127.0.0.1:%d" % port
    log = os.path.join(WORK, "nats-server.log")
    srv = subprocess.Popen(["/usr/sbin/nats-server", "-js", "-a", "127.0.0.1",
                            "-p", str(port), "-sd",
                            os.path.join(WORK, "nats-store")],
                           stdout=open(log, "w"), stderr=subprocess.STDOUT)
    tool = os.path.join(TOOLS, "nats_tool")
    try:
        wait_for(lambda: "Server is ready" in open(log).read(), 10,
                 "nats-server")
        for name, subj in (("IN", "in.>"), ("OUT", "out.>"),
                           ("LIN", "lin.>"), ("LOUT", "lout.>")):
            subprocess.run([tool, "stream", url, name, subj], check=True)
        t = time.time()
        subprocess.run([tool, "pub", url, "in.x", str(EVENTS), "--js",
                        "--body", '{"n":%d,"amount":1500,"ts_ns":0}'],
                       check=True, capture_output=True)
        produce_eps = EVENTS / (time.time() - t)
        t = time.time()
        r = subprocess.run([tool, "consume", url, "IN", "alone", str(EVENTS),
                            "2000"], check=True, capture_output=True)
        assert r.stdout.count(b"\n") == EVENTS
        consume_eps = EVENTS / (time.time() - t)

        def engine(stream, subj, ostream, osubj, name):
            return Engine(name, '{ name = "in", type = "nats", url = "%s",'
                          ' stream = "%s", subject = "%s", durable = "b%s" }'
                          % (url, stream, subj, name.replace("-", "")),
                          '{ name = "out", type = "nats", url = "%s",'
                          ' stream = "%s", subject = "%s", format = "json" }'
                          % (url, ostream, osubj))
        eng = engine("IN", "in.>", "OUT", "out.{topic}", "nats")
        eps = drain_rate(eng, EVENTS)
        rss = eng.rss_mb()
        eng.stop()

        eng = engine("LIN", "lin.>", "LOUT", "lout.{topic}", "nats-lat")
        arr = Arrivals()
        sub = socket.create_connection(("127.0.0.1", port))
        sub.sendall(b'CONNECT {"verbose":false}\r\nSUB lout.> 1\r\nPING\r\n')
        threading.Thread(target=nats_read, args=(sub, arr), daemon=True).start()
        pub = socket.create_connection(("127.0.0.1", port))
        pub.sendall(b'CONNECT {"verbose":false}\r\n')
        threading.Thread(target=nats_read, args=(pub, None),
                         daemon=True).start()
        lock = threading.Lock()

        def send(i, ts):
            b = body(i, ts).encode()
            with lock:
                pub.sendall(b"PUB lin.x %d\r\n%s\r\n" % (len(b), b))
        warm_up(arr, send)
        sent = paced(send, LAT_RATE, LAT_SECONDS)
        wait_for(lambda: len(arr.lat) >= sent, 30, "the latency events")
        sub.close()
        pub.close()
        eng.stop()
        return [("", eps, rss, percentiles(arr.lat), produce_eps,
                 consume_eps)]
    finally:
        srv.terminate()
        srv.wait()


def nats_read(s, arr):
    """The NATS protocol, as far as a subscriber needs it."""
    f = s.makefile("rb")
    try:
        for line in f:
            if line.startswith(b"PING"):
                s.sendall(b"PONG\r\n")
            elif line.startswith(b"MSG ") or line.startswith(b"HMSG "):
                parts = line.split()
                data = f.read(int(parts[-1]) + 2)[:-2]
                if line.startswith(b"HMSG "):
                    data = data[int(parts[-2]):]
                if arr is not None:
                    arr.seen(json.loads(data)["payload"])
    except (OSError, ValueError):
        pass


# ---- Redis Streams ---------------------------------------------------------

def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def resp_read(f):
    line = f.readline()
    t, rest = line[:1], line[1:-2]
    if t in (b"+", b"-", b":"):
        if t == b"-":
            raise RuntimeError(rest.decode())
        return rest
    n = int(rest)
    if n < 0:
        return None
    if t == b"$":
        return f.read(n + 2)[:-2]
    return [resp_read(f) for _ in range(n)]


def redis_entries(reply):
    """XREAD/XRANGE reply -> [(id, payload dict)]."""
    out = []
    for eid, fields in reply:
        d = dict(zip(fields[::2], fields[1::2]))
        out.append((eid, json.loads(d[b"payload"])))
    return out


def redis_case():
    port = free_port()
    srv = subprocess.Popen(["redis-server", "--port", str(port), "--bind",
                            "127.0.0.1", "--save", "", "--appendonly", "no",
                            "--dir", WORK], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: subprocess.run(
            ["redis-cli", "-p", str(port), "PING"], capture_output=True,
            text=True).stdout.strip() == "PONG", 10, "redis-server")
        c = socket.create_connection(("127.0.0.1", port))
        f = c.makefile("rb")
        t = time.time()
        c.sendall(b"".join(resp("XADD", "in", "*", "payload", body(i))
                           for i in range(EVENTS)))
        for _ in range(EVENTS):
            resp_read(f)
        produce_eps = EVENTS / (time.time() - t)
        t = time.time()
        got, last = 0, "-"
        while True:
            c.sendall(resp("XRANGE", "in", last, "+", "COUNT", 1000))
            page = redis_entries(resp_read(f))
            if last != "-":
                page = page[1:]
            if not page:
                break
            got += len(page)
            last = page[-1][0]
        assert got == EVENTS
        consume_eps = EVENTS / (time.time() - t)

        def engine(src, dst, name):
            return Engine(name, '{ name = "in", type = "redis",'
                          ' address = "127.0.0.1:%d", stream = "%s",'
                          ' group = "g", start_id = "0" }' % (port, src),
                          '{ name = "out", type = "redis",'
                          ' address = "127.0.0.1:%d", stream = "%s" }'
                          % (port, dst))
        eng = engine("in", "out", "redis")
        eps = drain_rate(eng, EVENTS)
        rss = eng.rss_mb()
        eng.stop()

        eng = engine("lin", "lout", "redis-lat")
        arr = Arrivals()
        r = socket.create_connection(("127.0.0.1", port))

        def read():
            rf, last = r.makefile("rb"), "0"
            try:
                while True:
                    r.sendall(resp("XREAD", "COUNT", 1000, "BLOCK", 1000,
                                   "STREAMS", "lout", last))
                    reply = resp_read(rf)
                    for _, entries in reply or []:
                        for eid, p in redis_entries(entries):
                            arr.seen(p)
                            last = eid
            except (OSError, ValueError, TypeError):
                pass
        threading.Thread(target=read, daemon=True).start()

        def send(i, ts):
            c.sendall(resp("XADD", "lin", "*", "payload", body(i, ts)))
            resp_read(f)
        warm_up(arr, send)
        sent = paced(send, LAT_RATE, LAT_SECONDS)
        wait_for(lambda: len(arr.lat) >= sent, 30, "the latency events")
        r.close()
        c.close()
        eng.stop()
        return [("", eps, rss, percentiles(arr.lat), produce_eps,
                 consume_eps)]
    finally:
        srv.terminate()
        srv.wait()


def main():
    native = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
    rows = [("native tcp -> rule -> tcp sink", native, None, None, None, None)]
    failed = 0
    for name, fn in (("kafka (mock)", kafka_case), ("nats jetstream", nats_case),
                     ("redis streams", redis_case)):
        try:
            got = fn()
        except Exception as e:  # one broker failing still shows the others
            print("brokers: %s failed: %s" % (name, e), file=sys.stderr)
            failed = 1
            continue
        finally:
            for eng in ENGINES:
                eng.stop()
            del ENGINES[:]
        for suffix, eps, rss, (p50, p99), pe, ce in got:
            case = "%s -> rule -> same%s" % (name, suffix)
            if eps:
                print("row|%s|%d|%s|0|%.1f" % (case, EVENTS, eps, rss))
            rows.append((case, eps, p50, p99, pe, ce))
    print("\n%-44s %10s %9s %9s %12s %12s" % (
        "broker -> sluice -> broker", "events/s", "p50 ms", "p99 ms",
        "client prod/s", "client cons/s"))
    for case, eps, p50, p99, pe, ce in rows:
        def f(v, fmt):
            return fmt % v if v else "-"
        print("%-44s %10s %9s %9s %12s %12s" % (
            case, f(eps, "%.0f"), f(p50, "%.2f"), f(p99, "%.2f"),
            f(pe, "%.0f"), f(ce, "%.0f")))
    print("(latency at %d events/s for %.0f s; client prod/s, cons/s: the "
          "broker's own client alone,\n without sluice, loading and reading "
          "the %d events)" % (LAT_RATE, LAT_SECONDS, EVENTS))
    return failed


if __name__ == "__main__":
    sys.exit(main())
