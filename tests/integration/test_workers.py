"""workers = N (issue 14 item 4) through the real binary: events spread over
rule threads by key keep their per-key order end to end, nothing is lost or
duplicated, reloads change every worker's rules together (all or nothing),
SIGTERM drains the rings and runs every worker's on_stop, acks wait for what
the other workers still hold, a stalled output stops the input, and the
metrics sum over the workers.
"""
import json
import os
import signal
import socket
import threading
import time
import urllib.request

import msgpack
import pytest

from conftest import (Sink, _tcp_queues, connect, free_port, metrics_flat,
                      pack, read_ndjson, run_sluice, wait_for, wait_lines)

PAYLOAD_RULE = """
return {
  on_event = function(ev)
    if ev.payload.amount > 1000 then ev.payload.priority = "high" end
    return "out"
  end,
  on_stop = function()
    sluice.emit("tick", { topic = "stopped", payload = { n = 1 } })
  end,
}
"""


def stamp_rule(version):
    return """
return {
  on_event = function(ev)
    ev.headers.v = "%s"
    return "out"
  end,
}
""" % version


def config(port, admin, workers, rules="rules", outputs=None, extra=""):
    outputs = outputs or """
    { name = "out", type = "file", path = "out.ndjson" },
    { name = "tick", type = "file", path = "tick.ndjson" },"""
    return """return {
  workers = %s,
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { %s },
  rules = { dir = "%s", watch = false },
  admin = { listen = "127.0.0.1:%d" },
  shutdown_timeout = 10,
  %s
}""" % (workers, port, outputs, rules, admin, extra)


# The balance moves shard buckets between workers by their CPU time; a test
# that waits for one given replica to hold its results pins the buckets
# where they start (balance off), or the key it watches may move to worker 0.
PINNED = {"SLUICE_WORKERS_BALANCE_MS": "0"}


def key_bucket(key):
    """The shard bucket of a key: engine/worker/workers.c key_hash & 255. A
    bucket starts on worker bucket % workers (and stays there PINNED)."""
    h = 2166136261
    for c in key.encode():
        h = ((h ^ c) * 16777619) & 0xffffffff
    h ^= h >> 16
    h = (h * 0x7feb352d) & 0xffffffff
    h ^= h >> 15
    return h & 255


def worker_keys(worker, n, workers=2, prefix="k"):
    """n keys that worker decides (while the buckets are PINNED)."""
    keys, i = [], 0
    while len(keys) < n:
        if key_bucket("%s%d" % (prefix, i)) % workers == worker:
            keys.append("%s%d" % (prefix, i))
        i += 1
    return keys


def keyed_events(keys, n):
    """As events(), over the given keys in turn."""
    return [{"topic": "t", "key": keys[i % len(keys)],
             "payload": {"seq": i, "amount": i % 2000}} for i in range(n)]


def wait_stuck(admin, worker=1, timeout=20):
    """Until the worker's results wait behind a full output and nothing
    moves: held, and its decided count and ring depth the same over a
    quarter second (a passing hold is gone within milliseconds). Only the
    tests' sinks that never read make such a stand-still, and they always
    do: the unix output's buffer is small (see test_workers_red)."""
    seen = []

    def still():
        m = metrics_flat(admin)
        now = (m.get('sluice_worker_held{worker="%d"}' % worker),
               m.get('sluice_worker_events_total{worker="%d"}' % worker),
               m.get('sluice_worker_queue_events{worker="%d"}' % worker))
        seen[:] = (seen if seen and seen[-1] == now else []) + [now]
        return now[0] == 1 and len(seen) > 5
    wait_for(still, timeout=timeout, interval=0.05,
             what="worker %d held by the full output, standing still" % worker)


def start(sluice, tmp_path, files, workers=2, env=None, **kw):
    rules = tmp_path / "rules"
    rules.mkdir()
    for name, text in files.items():
        (rules / name).write_text(text)
    port, admin = free_port(), free_port()
    eng = sluice(config(port, admin, workers, rules=str(rules), **kw), env=env)
    return eng, rules, "127.0.0.1:%d" % port, admin


def events(prefix, n, keys, start=0):
    return [{"topic": "t", "key": "%s%d" % (prefix, (start + i) % keys),
             "payload": {"seq": start + i, "amount": (start + i) % 2000}}
            for i in range(n)]


def send(address, evs):
    s = connect(address)
    s.sendall(b"".join(pack(e) for e in evs))
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    s.close()


def check_per_key(received, expect_total):
    seqs = {}
    for e in received:
        seqs.setdefault(e["key"], []).append(e["payload"]["seq"])
    total = sum(len(v) for v in seqs.values())
    assert total == expect_total, "sent %d, received %d" % (expect_total, total)
    for k, v in seqs.items():
        assert v == sorted(v), "key %s out of order" % k
        assert len(set(v)) == len(v), "key %s has a duplicate" % k


def post_reload(admin):
    req = urllib.request.Request("http://127.0.0.1:%d/reload" % admin,
                                 data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_workers_keep_per_key_order_and_exact_totals_on_one_and_many_connections(
        sluice, tmp_path):
    eng, _, addr, admin = start(sluice, tmp_path, {"10_p.lua": PAYLOAD_RULE},
                                workers=3)
    # many keys interleaved on one connection, then three at once
    send(addr, events("one-", 20000, 64))
    threads = [threading.Thread(target=send,
                                args=(addr, events("c%d-" % c, 5000, 16)))
               for c in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    total = 35000
    wait_lines(eng.path("out.ndjson"), total, timeout=30)
    got = read_ndjson(eng.path("out.ndjson"))
    check_per_key(got, total)
    # the rule changed the payload in whichever worker decided it
    assert all((e["payload"].get("priority") == "high") ==
               (e["payload"]["amount"] > 1000) for e in got)
    assert len({e["id"] for e in got}) == total  # ids unique over workers
    m = metrics_flat(admin)
    assert m["sluice_workers"] == 3
    per = [m['sluice_worker_events_total{worker="%d"}' % i] for i in range(3)]
    assert sum(per) == total and all(p > 0 for p in per), per
    calls = sum(v for k, v in m.items()
                if k.startswith("sluice_rule_calls_total"))
    assert calls == total  # summed over the workers' rule sets
    eng.stop()
    assert eng.proc.returncode == 0


def test_workers_sigterm_drains_the_rings_and_runs_every_workers_on_stop(
        sluice, tmp_path):
    eng, _, addr, _ = start(sluice, tmp_path, {"10_p.lua": PAYLOAD_RULE},
                            workers=3)
    send(addr, events("k", 30000, 100))
    eng.signal(signal.SIGTERM)  # events may still sit in the rings
    assert eng.wait(30) == 0
    check_per_key(read_ndjson(eng.path("out.ndjson")), 30000)
    # on_stop ran in each worker, and its emit reached the output
    ticks = read_ndjson(eng.path("tick.ndjson"))
    assert [t["topic"] for t in ticks] == ["stopped"] * 3


class Flow:
    """Sends numbered events on one connection until stopped."""

    def __init__(self, address, keys=16):
        self.address, self.keys = address, keys
        self.sent = 0
        self.stop_flag = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        try:
            s = connect(self.address)
            while not self.stop_flag.is_set():
                evs = events("k", 50, self.keys, start=self.sent)
                s.sendall(b"".join(pack(e) for e in evs))
                self.sent += 50
                time.sleep(0.005)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
            s.close()
        except Exception as e:
            self.error = e

    def start(self):
        self.thread.start()
        wait_for(lambda: self.sent > 0, what="the flow to start")

    def finish(self):
        self.stop_flag.set()
        self.thread.join(20)
        assert self.error is None, self.error
        return self.sent


def reload_storm(eng, rules, admin, n):
    """Rule 10_v.lua stamped v1..vn, reloaded by SIGHUP and POST /reload in
    turn while events flow; each reload waited for (its answer or its log)."""
    for i in range(1, n + 1):
        (rules / "10_v.lua").write_text(stamp_rule("v%d" % i))
        if i % 2:
            eng.signal(signal.SIGHUP)
            wait_for(lambda: any(l.get("msg") == "config reloaded" and
                                 ("rules version %d" % (i + 1)) in l.get("changes", "")
                                 for l in eng.logs()),
                     timeout=10, what="reload %d" % i)
        else:
            assert post_reload(admin) == 200
        time.sleep(0.05)


def test_workers_reload_storm_every_event_has_one_version_and_new_events_the_new_one(
        sluice, tmp_path):
    eng, rules, addr, admin = start(sluice, tmp_path,
                                    {"10_v.lua": stamp_rule("v0")}, workers=3)
    flow = Flow(addr)
    flow.start()
    reload_storm(eng, rules, admin, 8)
    sent = flow.finish()
    # after the last reload answered: every new event carries v8
    send(addr, [{"topic": "t", "key": "after%d" % i,
                 "payload": {"seq": sent + i, "amount": 0}} for i in range(300)])
    total = sent + 300
    wait_lines(eng.path("out.ndjson"), total, timeout=30)
    got = read_ndjson(eng.path("out.ndjson"))
    check_per_key(got, total)
    versions = [e["headers"]["v"] for e in got]
    assert all(v in ["v%d" % i for i in range(9)] for v in versions)
    after = [e for e in got if e["key"].startswith("after")]
    assert {e["headers"]["v"] for e in after} == {"v8"}
    # a key's events see versions only go up (one version per event, in order)
    last = {}
    for e in got:
        v = int(e["headers"]["v"][1:])
        assert v >= last.get(e["key"], 0), "key %s went back a version" % e["key"]
        last[e["key"]] = v


def test_workers_broken_reload_keeps_every_worker_on_the_old_version(
        sluice, tmp_path):
    eng, rules, addr, admin = start(sluice, tmp_path,
                                    {"10_v.lua": stamp_rule("old")}, workers=3)
    (rules / "10_v.lua").write_text("return { on_event = function(ev) ")
    assert post_reload(admin) != 200
    (rules / "10_v.lua").write_text(stamp_rule("new"))
    # a file that fails in one worker only cannot be made here; a file that
    # loads nowhere must leave all three on "old"
    (rules / "10_v.lua").write_text("error('no')")
    assert post_reload(admin) != 200
    send(addr, events("k", 3000, 64))
    wait_lines(eng.path("out.ndjson"), 3000, timeout=20)
    got = read_ndjson(eng.path("out.ndjson"))
    check_per_key(got, 3000)
    assert {e["headers"]["v"] for e in got} == {"old"}
    m = metrics_flat(admin)
    assert all(m['sluice_worker_events_total{worker="%d"}' % i] > 0
               for i in range(3))


def test_workers_native_acks_count_only_events_the_disk_buffer_holds(
        sluice, tmp_path):
    sink = Sink()
    buf = tmp_path / "buf"
    outputs = """{ name = "out", type = "tcp", address = "%s",
        queue = { max_events = 1000 },
        buffer = { type = "disk", path = "%s", fsync = "always" } },
      { name = "tick", type = "file", path = "tick.ndjson" },""" % (
        sink.address, buf)
    eng, _, addr, _ = start(sluice, tmp_path, {"10_p.lua": PAYLOAD_RULE},
                            workers=2, outputs=outputs)
    s = connect(addr)
    s.sendall(msgpack.packb({"sluice": 1, "ack": True}))
    evs = events("k", 5000, 50)
    s.sendall(b"".join(pack(e) for e in evs))
    up = msgpack.Unpacker()
    acked = 0
    s.settimeout(20)
    while acked < 5000:
        d = s.recv(4096)
        assert d, "closed after %d acks" % acked
        up.feed(d)
        for n in up:
            assert n >= acked and n <= 5000
            acked = n
    assert acked == 5000
    s.close()
    got = sink.wait(5000, timeout=30)
    check_per_key(got, 5000)
    sink.close()


def test_workers_http_202_only_after_every_event_is_decided_and_durable(
        sluice, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10_p.lua").write_text(PAYLOAD_RULE)
    web, admin = free_port(), free_port()
    eng = sluice("""return {
  workers = 2,
  inputs = { { name = "web", type = "http", listen = "127.0.0.1:%d" } },
  outputs = { { name = "out", type = "file", path = "out.ndjson",
                buffer = { type = "disk", path = "%s", fsync = "always" } },
              { name = "tick", type = "file", path = "tick.ndjson" } },
  rules = { dir = "%s", watch = false },
  admin = { listen = "127.0.0.1:%d" },
}""" % (web, tmp_path / "buf", rules, admin))
    body = json.dumps(events("h", 500, 40)).encode()
    req = urllib.request.Request("http://127.0.0.1:%d/v1/events" % web,
                                 data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=20) as r:
        assert r.status == 202
        assert json.loads(r.read())["accepted"] == 500
    m = metrics_flat(admin)
    assert sum(m['sluice_worker_events_total{worker="%d"}' % i]
               for i in range(2)) == 500
    wait_lines(eng.path("out.ndjson"), 500, timeout=20)
    check_per_key(read_ndjson(eng.path("out.ndjson")), 500)


def test_workers_stalled_output_stops_the_input_and_resumes(sluice, tmp_path):
    sink = Sink(reading=False, rcvbuf=4096)
    outputs = """{ name = "out", type = "tcp", address = "%s",
        queue = { max_events = 2000, when_full = "block" } },
      { name = "tick", type = "file", path = "tick.ndjson" },""" % sink.address
    eng, _, addr, admin = start(sluice, tmp_path, {"10_p.lua": PAYLOAD_RULE},
                                workers=2, outputs=outputs, env=PINNED)
    total = 150000
    data = b"".join(pack(e) for e in events("k", total, 64))
    s = connect(addr)
    writer = threading.Thread(target=lambda: s.sendall(data), daemon=True)
    writer.start()
    # the pipeline fills (output queue, result and job rings) and the input
    # stops reading: the worker's memory stays bounded while the client waits
    wait_stuck(admin)
    # what the client sent and the engine did not read: the kernel buffers
    # may take the whole stream (tcp_rmem grows to 32 MiB here), so the
    # writer finishing proves nothing; bytes left unread do
    ours, theirs = s.getsockname()[1], s.getpeername()[1]
    unread = _tcp_queues(ours, theirs)[0] + _tcp_queues(theirs, ours)[1]
    assert unread > 0, "the input did not push back"
    rss = eng.rss_kb()
    assert rss < 400 * 1024, "rss %d kB" % rss
    sink.start_reading()
    got = sink.wait_flowing(total)  # it resumes; its speed is the machine's
    writer.join(10)
    s.close()
    check_per_key(got, total)
    sink.close()


def test_workers_config_errors_and_a_reload_changing_workers_is_refused(
        sluice, tmp_path):
    for bad, why in [("0", "workers: expected an integer from 1 to 64"),
                     ("65", "got 65"), ('"x"', "got x")]:
        p = tmp_path / ("c%s.lua" % len(bad))
        p.write_text(config(free_port(), free_port(), bad,
                            rules=str(tmp_path)))
        r = run_sluice("check", "-c", p)
        assert r.returncode != 0 and why in r.stderr + r.stdout, r.stderr
    p = tmp_path / "persist.lua"
    p.write_text(config(free_port(), free_port(), 2, rules=str(tmp_path))
                 .replace('watch = false', 'watch = false, persist = true'))
    r = run_sluice("check", "-c", p)
    assert r.returncode != 0 and "rules.persist" in r.stderr + r.stdout
    eng, rules, addr, admin = start(sluice, tmp_path,
                                    {"10_v.lua": stamp_rule("a")}, workers=2)
    text = open(eng.config).read().replace("workers = 2", "workers = 4")
    open(eng.config, "w").write(text)
    assert post_reload(admin) != 200
    eng.wait_log("config reload rejected; the running config stays")
    assert any("workers (2 -> 4)" in l.get("error", "") for l in eng.logs())
    text = text.replace("workers = 4", "workers = 2, workers_balance = false")
    open(eng.config, "w").write(text)
    assert post_reload(admin) != 200
    eng.wait_log("config reload rejected; the running config stays", count=2)
    assert any("workers_balance" in l.get("error", "") for l in eng.logs())
    p = tmp_path / "balance.lua"
    p.write_text(config(free_port(), free_port(), 2, rules=str(tmp_path),
                        extra="workers_balance = 1,"))
    r = run_sluice("check", "-c", p)
    assert r.returncode != 0 and \
        "workers_balance: expected boolean, got number" in r.stderr + r.stdout


def test_workers_a_disk_refusal_found_in_a_worker_closes_instead_of_acking(
        sluice, tmp_path):
    # the refusal (drop policy, disk full) is found when the main loop
    # applies a replica's result, after sl_worker_submit returned: the
    # producer must still never get an ack for a refused event
    from test_durability import (AckedProducer, BIG, disk_config, mount_tmpfs,
                                 payload_ids, stopped_clean, umount)
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "2m")
    try:
        port, down, admin = free_port(), free_port(), free_port()
        eng = sluice(disk_config(port, down, disk / "buf",
                                 when_full="drop_newest", admin=admin)
                     .replace("return {", "return {\n  workers = 3,", 1))
        n = 4000
        p = AckedProducer("127.0.0.1:%d" % port,
                          [{"topic": "t", "key": "k%d" % (i % 7),
                            "payload": [i, BIG]} for i in range(n)])
        acked = p.read_acks()
        assert acked < n
        assert p.closed, "the refused producer is told by a closed connection"
        with Sink(port=down) as sink:
            # keys spread over workers: the acked ones arrive in any order
            wait_for(lambda: set(range(acked)) <= set(payload_ids(sink.events)),
                     timeout=30, what="every acked event delivered")
            p.close()
            stopped_clean(eng)
    finally:
        umount(disk)


def test_workers_http_batch_refused_by_a_worker_result_gets_503_not_202(
        sluice, tmp_path):
    from test_durability import BIG, disk_config, mount_tmpfs, umount
    from helpers_http import curl
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "2m")
    try:
        port, down, web = free_port(), free_port(), free_port()
        sluice(disk_config(port, down, disk / "buf", when_full="drop_newest",
                           http=web).replace("return {", "return {\n  workers = 3,", 1))
        statuses = []
        for b in range(40):  # 4 MB into a 2 MiB disk
            batch = [{"topic": "t", "key": "k%d" % k, "payload": [b * 100 + k, BIG]}
                     for k in range(100)]
            r = curl("http://127.0.0.1:%d/v1/events" % web,
                     data=json.dumps(batch), content_type="application/json")
            statuses.append(r.status)
        assert 202 in statuses and 503 in statuses, statuses
        assert set(statuses) == {202, 503}, statuses
    finally:
        umount(disk)


# ---- workers = "auto" --------------------------------------------------------

def _auto_workers(tmp_path, prefix):
    """Start sluice with workers = "auto" under prefix (a command that execs
    the rest) and return its `workers = "auto"` log line's fields."""
    import subprocess
    from conftest import SLUICE_BIN
    conf = tmp_path / "auto.conf.lua"
    conf.write_text("""return {
  workers = "auto",
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "out", type = "null" } },
  routes = { { topics = "*", to = "out" } },
  state_dir = "%s",
}""" % (free_port(), tmp_path / "var"))
    p = subprocess.Popen(prefix + [SLUICE_BIN, "run", "-c", str(conf)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    auto = None
    try:
        for line in p.stderr:
            rec = json.loads(line)
            if rec["msg"].startswith('workers = "auto"'):
                auto = rec
            if rec["msg"] == "sluice started":
                break
    finally:
        p.terminate()
        p.wait(10)
    assert auto, "no workers = \"auto\" line"
    return auto


def test_workers_auto_takes_the_cpus_of_the_affinity_mask(tmp_path):
    # taskset (a cpuset, a pinned container) gives the process fewer CPUs
    # than are online: "auto" took every online CPU, two rule threads on one
    if (os.cpu_count() or 1) < 2 or not os.path.exists("/usr/bin/taskset"):
        pytest.skip("needs two CPUs and taskset")
    auto = _auto_workers(tmp_path, ["taskset", "-c", "0"])
    assert auto["cpus_allowed"] == 1 and auto["workers"] == 1, auto
    assert auto["cpus_online"] == os.cpu_count(), auto


def test_workers_auto_takes_the_cgroup_cpu_quota(tmp_path):
    # a container's CPU limit (a cgroup quota of half a CPU here) on a
    # machine with more CPUs: "auto" ran a thread per online CPU, all of
    # them throttled into the quota
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two CPUs")
    name = "sluice-test-%d" % os.getpid()
    v1 = "/sys/fs/cgroup/cpu"
    if os.path.exists(v1 + "/cpu.cfs_quota_us"):
        cg = os.path.join(v1, name)
        files = {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "50000"}
    elif "cpu" in open("/sys/fs/cgroup/cgroup.subtree_control").read().split():
        cg = os.path.join("/sys/fs/cgroup", name)
        files = {"cpu.max": "50000 100000"}
    else:
        pytest.skip("no cgroup cpu controller to make a child in")
    try:
        os.mkdir(cg)
    except OSError as e:
        pytest.skip("cannot make a cgroup: %s" % e)
    try:
        for f, v in files.items():
            with open(os.path.join(cg, f), "w") as fh:
                fh.write(v)
        auto = _auto_workers(tmp_path, [
            "sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cg])
    finally:
        time.sleep(0.2)
        os.rmdir(cg)
    assert auto["cpu_quota"] == 0.5 and auto["workers"] == 1, auto


def test_workers_auto_keeps_its_count_across_a_reload_when_the_cpus_change(
        sluice, tmp_path):
    # "auto" is read again by every reload: once the process may use fewer
    # CPUs than at its start (an operator's taskset, a container's CPU limit
    # resized in place), the unchanged config said "workers (2 -> 1)" and
    # every reload was refused ("these settings need a restart") until a
    # restart. The running count stays; the reload goes through
    import subprocess
    from test_reload_config import wait_reload
    if (os.cpu_count() or 1) < 2 or not os.path.exists("/usr/bin/taskset"):
        pytest.skip("needs two CPUs and taskset")
    port = free_port()
    text = """return {
  workers = "auto",
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "out", type = "null" } },
  routes = { { topics = "*", to = "out" } },
}""" % port
    eng = sluice(text)
    auto = eng.wait_log('workers = "auto": the CPUs this process may use')
    if auto["workers"] < 2:
        pytest.skip("auto gives %d worker here" % auto["workers"])
    n = auto["workers"]
    # the engine's main thread, which loads a reload's config, gets one CPU
    one = str(min(os.sched_getaffinity(eng.pid)))
    subprocess.run(["taskset", "-p", "-c", one, str(eng.pid)], check=True,
                   capture_output=True)
    eng.signal(signal.SIGHUP)
    line = wait_reload(eng, 1)
    assert line["msg"] == "config reloaded", line
    warn = eng.wait_log('workers = "auto" gives another count now; the '
                        'running one stays until a restart')
    assert warn["workers"] == n and warn["auto_now"] == 1, warn
