"""Whole-config reload (issue 11 item 5), through the real binary.

A producer on the native ack path keeps sending over one connection while
the config file changes under it: inputs and outputs added, removed and
changed, routes changed, a broken file, a setting only a restart can change.
Every test keeps an exact ledger: every event sent is acknowledged, and
arrives exactly once over the sinks that can take it; the producer's
connection (on an input the reload leaves alone) is never closed.
"""
import json
import subprocess
import socket
import threading
import time
import urllib.error
import urllib.request

import msgpack

from conftest import (Sink, connect, free_port, pack, run_sluice, send_events,
                      short_path, wait_for)
from helpers_http import curl


class AckedFlow:
    """One native connection in ack mode: a writer thread sends events with
    a running seq at a steady rate, a reader thread follows the engine's
    running count of accepted events."""

    def __init__(self, address, topic="t", rate=2000, batch=20):
        self.sock = connect(address)
        self.sock.sendall(msgpack.packb({"sluice": 1, "ack": True}))
        self.topic = topic
        self.rate = rate
        self.batch = batch
        self.sent = 0
        self.acked = 0
        self.eof = False
        self.error = None
        self.stop_flag = threading.Event()
        self.writer = threading.Thread(target=self._write, daemon=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.writer.start()
        wait_for(lambda: self.acked > 0, timeout=10, what="the first ack")

    def _write(self):
        try:
            while not self.stop_flag.is_set():
                self.sock.sendall(b"".join(
                    pack({"topic": self.topic, "payload": {"seq": self.sent + i}})
                    for i in range(self.batch)))
                self.sent += self.batch
                time.sleep(self.batch / float(self.rate))
        except OSError as e:
            self.error = e

    def _read(self):
        up = msgpack.Unpacker()
        while True:
            try:
                d = self.sock.recv(4096)
            except OSError:
                return
            if not d:
                self.eof = True
                return
            up.feed(d)
            for n in up:
                assert isinstance(n, int) and n >= self.acked
                self.acked = n

    def wait_sent(self, more):
        n = self.sent + more
        wait_for(lambda: self.sent >= n, timeout=10, what="%d more sent" % more)

    def finish(self):
        """Stop sending; every event sent must be acknowledged, on a
        connection that is still open."""
        self.stop_flag.set()
        self.writer.join(10)
        assert self.error is None, self.error
        wait_for(lambda: self.acked == self.sent, timeout=15,
                 what="acks for all %d events (have %d)" % (self.sent, self.acked))
        assert not self.eof, "the engine closed the producer's connection"
        self.sock.close()
        return self.sent


def seqs(sink, topic="t"):
    return [e["payload"]["seq"] for e in sink.events if e.get("topic") == topic]


def exactly_once(sent, *sinks):
    got = sorted(s for sink in sinks for s in seqs(sink))
    assert len(got) == len(set(got)), "duplicated events"
    assert got == list(range(sent)), "lost events: sent %d, delivered %d" % (
        sent, len(got))


def lua_out(name, address, extra=""):
    return '{ name = "%s", type = "tcp", address = "%s", %s }' % (name, address, extra)


def lua_in(name, port, extra=""):
    return '{ name = "%s", type = "tcp", listen = "127.0.0.1:%d", %s }' % (
        name, port, extra)


def conf(inputs, outputs, routes, admin=None, extra="", shutdown=5):
    return """return {
  inputs = { %s },
  outputs = { %s },
  routes = { %s },
  shutdown_timeout = %s,
  %s
  %s
}
""" % (", ".join(inputs), ", ".join(outputs), ", ".join(routes), shutdown,
       'admin = { listen = "127.0.0.1:%d" },' % admin if admin else "", extra)


def route(topics, *to):
    return '{ topics = "%s", to = { %s } }' % (
        topics, ", ".join('"%s"' % t for t in to))


def reload_via_sighup(eng, text, n):
    """Write the file, SIGHUP, and wait for the n-th reload's line."""
    eng.config.write_text(text)
    eng.signal(1)
    return wait_reload(eng, n)


def reload_lines(eng):
    return [l for l in eng.logs() if l.get("msg") in (
        "config reloaded", "config reload rejected; the running config stays")]


def wait_reload(eng, n):
    return wait_for(lambda: len(reload_lines(eng)) >= n and reload_lines(eng)[n - 1],
                    timeout=10, what="reload line %d:\n%s" % (n, eng.stderr()[-3000:]))


def refuses(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except OSError:
        return True


def post_reload(admin):
    req = urllib.request.Request("http://127.0.0.1:%d/reload" % admin, data=b"",
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_an_added_output_and_route_take_events_without_touching_the_flow(sluice):
    port = free_port()
    with Sink() as a, Sink() as b:
        ins = [lua_in("in", port)]
        eng = sluice(conf(ins, [lua_out("a", a.address)], [route("t", "a")]))
        flow = AckedFlow("127.0.0.1:%d" % port)
        flow.wait_sent(200)
        line = reload_via_sighup(eng, conf(
            ins, [lua_out("a", a.address), lua_out("b", b.address)],
            [route("t", "a", "b")]), 1)
        assert line["msg"] == "config reloaded", line
        assert line["trigger"] == "SIGHUP"
        assert line["changes"].startswith(
            "inputs unchanged; outputs +b; routes changed; rules version "), line
        flow.wait_sent(400)
        sent = flow.finish()
        wait_for(lambda: len(seqs(a)) >= sent, timeout=10, what="a has all")
        exactly_once(sent, a)
        # b gets every event decided after the switch: one run to the end
        tail = sorted(seqs(b))
        assert len(tail) >= 200 and len(set(tail)) == len(tail)
        assert tail == list(range(tail[0], sent)), "b missed events"
        assert a.connections == 1, "the unchanged output reconnected"


def test_a_removed_output_drains_its_queue_before_it_closes(sluice):
    port = free_port()
    with Sink() as a, Sink(reading=False) as b:
        ins = [lua_in("in", port)]
        eng = sluice(conf(ins, [lua_out("a", a.address), lua_out("b", b.address)],
                          [route("t", "b")]))
        flow = AckedFlow("127.0.0.1:%d" % port)
        flow.wait_sent(3000)  # b does not read: its queue fills
        line = reload_via_sighup(eng, conf(ins, [lua_out("a", a.address)],
                                           [route("t", "a")]), 1)
        assert "outputs -b; routes changed" in line["changes"], line
        flow.wait_sent(300)
        b.start_reading()
        sent = flow.finish()
        eng.wait_log("retired output drained and closed", output="b", timeout=10)
        wait_for(lambda: len(seqs(a)) + len(seqs(b)) >= sent, timeout=10,
                 what="every event at a or b")
        exactly_once(sent, a, b)
        assert len(seqs(a)) > 0 and len(seqs(b)) > 0
        wait_for(lambda: b.ended == 1, what="b's connection closed")


def test_a_changed_output_swaps_without_loss_or_duplicates(sluice):
    port = free_port()
    with Sink() as old, Sink() as new:
        ins = [lua_in("in", port)]
        eng = sluice(conf(ins, [lua_out("out", old.address)], [route("t", "out")]))
        flow = AckedFlow("127.0.0.1:%d" % port)
        flow.wait_sent(300)
        line = reload_via_sighup(eng, conf(ins, [lua_out("out", new.address)],
                                           [route("t", "out")]), 1)
        assert "outputs ~out; routes unchanged" in line["changes"], line
        flow.wait_sent(300)
        sent = flow.finish()
        wait_for(lambda: len(seqs(old)) + len(seqs(new)) >= sent, timeout=10,
                 what="every event at old or new")
        exactly_once(sent, old, new)
        assert len(seqs(new)) >= 300
        eng.wait_log("retired output drained and closed", output="out (before reload 1)")
        wait_for(lambda: old.ended == 1, what="the old connection closed")


def test_a_changed_route_moves_events_between_outputs(sluice):
    port = free_port()
    with Sink() as a, Sink() as b:
        ins = [lua_in("in", port)]
        outs = [lua_out("a", a.address), lua_out("b", b.address)]
        eng = sluice(conf(ins, outs, [route("t", "a")]))
        flow = AckedFlow("127.0.0.1:%d" % port)
        flow.wait_sent(300)
        line = reload_via_sighup(eng, conf(ins, outs, [route("t", "b")]), 1)
        assert line["changes"].startswith(
            "inputs unchanged; outputs unchanged; routes changed"), line
        flow.wait_sent(300)
        sent = flow.finish()
        wait_for(lambda: len(seqs(a)) + len(seqs(b)) >= sent, timeout=10,
                 what="every event at a or b")
        exactly_once(sent, a, b)
        # one switch point: a has a head, b the rest
        assert sorted(seqs(a)) == list(range(len(seqs(a))))
        assert a.connections == 1 and b.connections == 1


def test_inputs_are_added_changed_and_removed_while_the_flow_keeps_its_connection(sluice):
    port, p2, p3 = free_port(), free_port(), free_port()
    with Sink() as a:
        outs = [lua_out("a", a.address)]
        routes = [route("*", "a")]
        eng = sluice(conf([lua_in("in", port)], outs, routes))
        flow = AckedFlow("127.0.0.1:%d" % port)
        assert refuses(p2)
        line = reload_via_sighup(eng, conf(
            [lua_in("in", port), lua_in("in2", p2)], outs, routes), 1)
        assert line["changes"].startswith("inputs +in2; outputs unchanged"), line
        send_events("127.0.0.1:%d" % p2, [{"topic": "x", "payload": i} for i in range(50)])
        # a producer that stays connected to in2 across its change
        idle = AckedFlow("127.0.0.1:%d" % p2, topic="y")
        idle.wait_sent(100)
        idle.stop_flag.set()
        idle.writer.join(10)
        wait_for(lambda: idle.acked == idle.sent, what="idle producer acked")
        # same address, another setting: the old listener closes first
        line = reload_via_sighup(eng, conf(
            [lua_in("in", port), lua_in("in2", p2, "max_connections = 10")],
            outs, routes), 2)
        assert line["changes"].startswith("inputs ~in2;"), line
        assert line["inputs_not_started"] == "", line
        wait_for(lambda: idle.eof, what="the replaced input closed its idle connection")
        send_events("127.0.0.1:%d" % p2, [{"topic": "x", "payload": i} for i in range(50, 60)])
        # moved to another port, then removed
        line = reload_via_sighup(eng, conf(
            [lua_in("in", port), lua_in("in2", p3)], outs, routes), 3)
        assert line["changes"].startswith("inputs ~in2;"), line
        wait_for(lambda: refuses(p2), what="the old port closed")
        send_events("127.0.0.1:%d" % p3, [{"topic": "x", "payload": i} for i in range(60, 70)])
        line = reload_via_sighup(eng, conf([lua_in("in", port)], outs, routes), 4)
        assert line["changes"].startswith("inputs -in2;"), line
        wait_for(lambda: refuses(p3), what="the removed input stopped listening")
        eng.wait_log("retired input closed", input="in2")
        flow.wait_sent(200)
        sent = flow.finish()
        wait_for(lambda: len(seqs(a)) >= sent and
                 sum(e["topic"] == "x" for e in a.events) >= 70,
                 timeout=10, what="everything at a")
        exactly_once(sent, a)
        assert sorted(seqs(a, "y")) == list(range(idle.sent))
        assert sorted(e["payload"] for e in a.events if e["topic"] == "x") == list(range(70))


def test_a_bad_config_keeps_the_running_one_and_says_why(sluice):
    port, admin = free_port(), free_port()
    with Sink() as a, Sink() as b:
        ins = [lua_in("in", port)]
        good = conf(ins, [lua_out("a", a.address)], [route("t", "a")], admin=admin)
        eng = sluice(good)
        flow = AckedFlow("127.0.0.1:%d" % port)
        flow.wait_sent(200)
        # a route to an output that does not exist: nothing switches
        bad = conf(ins, [lua_out("b", b.address)], [route("t", "a")], admin=admin)
        line = reload_via_sighup(eng, bad, 1)
        assert line["msg"] == "config reload rejected; the running config stays"
        assert 'no output named "a"' in line["error"], line
        status = json.loads(eng.path("var/sluice.status.json").read_text())
        assert status["last_reload"]["result"] == "failed"
        assert 'no output named "a"' in status["last_reload"]["error"]
        with urllib.request.urlopen("http://127.0.0.1:%d/rules" % admin, timeout=5) as r:
            assert 'no output named "a"' in json.loads(r.read())["last_reload"]["error"]
        # POST /reload answers with the reason; a syntax error likewise
        eng.config.write_text("return {")
        code, body = post_reload(admin)
        assert code == 422, body
        assert "sluice.conf.lua" in body["error"], body
        assert b.connections == 0, "the rejected config started an output"
        # and the good file reloads (nothing changed)
        eng.config.write_text(good)
        code, body = post_reload(admin)
        assert code == 200 and body["last_reload"]["error"] is None, body
        flow.wait_sent(200)
        sent = flow.finish()
        wait_for(lambda: len(seqs(a)) >= sent, timeout=10, what="a has all")
        exactly_once(sent, a)


def test_a_setting_that_needs_a_restart_is_named_and_refused(sluice):
    port, admin, admin2 = free_port(), free_port(), free_port()
    with Sink() as a, Sink() as b:
        ins = [lua_in("in", port)]
        eng = sluice(conf(ins, [lua_out("a", a.address)], [route("t", "a")],
                          admin=admin))
        flow = AckedFlow("127.0.0.1:%d" % port)
        flow.wait_sent(200)
        # also adds an output: the refusal is whole, b never starts
        line = reload_via_sighup(eng, conf(
            ins, [lua_out("a", a.address), lua_out("b", b.address)],
            [route("t", "a", "b")], admin=admin2,
            extra="max_event_bytes = 2048,"), 1)
        assert line["msg"] == "config reload rejected; the running config stays"
        assert line["error"] == ("reload refused: these settings need a restart: "
                                 "admin.listen, max_event_bytes"), line
        st = json.loads(run_sluice("status", "-c", str(eng.config)).stdout)
        assert st["last_reload"]["error"] == line["error"]
        with urllib.request.urlopen("http://127.0.0.1:%d/rules" % admin, timeout=5) as r:
            assert json.loads(r.read())["last_reload"]["error"] == line["error"]
        assert refuses(admin2)
        flow.wait_sent(200)
        sent = flow.finish()
        wait_for(lambda: len(seqs(a)) >= sent, timeout=10, what="a has all")
        exactly_once(sent, a)
        assert b.connections == 0 and seqs(b) == []


def test_metrics_stay_valid_as_outputs_and_inputs_come_and_go(sluice):
    port, p2, p3, admin = free_port(), free_port(), free_port(), free_port()
    with Sink() as old, Sink() as new, Sink() as extra:
        outs = [lua_out("out", old.address)]
        eng = sluice(conf([lua_in("in", port), lua_in("in2", p2)], outs,
                          [route("*", "out")], admin=admin))
        send_events("127.0.0.1:%d" % port, [{"topic": "t", "payload": {"seq": i}}
                                           for i in range(10)])
        old.wait(10)
        # change out and in2, add and then remove an output
        reload_via_sighup(eng, conf(
            [lua_in("in", port), lua_in("in2", p3)],
            [lua_out("out", new.address), lua_out("extra", extra.address)],
            [route("*", "out")], admin=admin), 1)
        eng.wait_log("retired output drained and closed", output="out (before reload 1)")
        eng.wait_log("retired input closed", input="in2 (before reload 1)")
        send_events("127.0.0.1:%d" % port, [{"topic": "t", "payload": {"seq": i}}
                                           for i in range(10, 15)])
        new.wait(5)
        reload_via_sighup(eng, conf(
            [lua_in("in", port), lua_in("in2", p3)], [lua_out("out", new.address)],
            [route("*", "out")], admin=admin), 2)
        eng.wait_log("retired output drained and closed", output="extra")
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin, timeout=5) as r:
            text = r.read().decode()
        series = [l.rpartition(" ")[0] for l in text.splitlines()
                  if l and not l.startswith("#")]
        dups = sorted(set(s for s in series if series.count(s) > 1))
        assert dups == [], dups
        r = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                           capture_output=True, timeout=30)
        assert r.returncode == 0, (r.stdout + r.stderr).decode() + "\n" + text
        # the replaced output's counters, if still shown, go by a name of
        # their own
        old_series = [l for l in text.splitlines() if l.startswith(
            'sluice_output_events_total{output="out (before reload 1)"}')]
        assert old_series in ([], ['sluice_output_events_total{output="out '
                                   '(before reload 1)"} 10']), old_series
        assert 'sluice_output_events_total{output="out"} 5' in text
        assert 'sluice_input_events_total{input="in"} 15' in text
        assert 'sluice_input_events_total{input="in2 (before reload 1)"} 0' in text
        assert 'sluice_input_events_total{input="in2"} 0' in text
        with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % admin, timeout=5) as r:
            assert json.loads(r.read())["ready"] is True


def test_sluice_reload_applies_a_good_file_and_signals_nothing_for_a_broken_one(sluice):
    port = free_port()
    with Sink() as a, Sink() as b:
        ins = [lua_in("in", port)]
        eng = sluice(conf(ins, [lua_out("a", a.address)], [route("t", "a")]))
        flow = AckedFlow("127.0.0.1:%d" % port)
        eng.config.write_text(conf(ins, [lua_out("a", a.address), lua_out("b", b.address)],
                                   [route("t", "b")]))
        r = run_sluice("reload", "-c", str(eng.config))
        assert r.returncode == 0, r.stderr
        line = wait_reload(eng, 1)
        assert line["msg"] == "config reloaded" and line["trigger"] == "SIGHUP"
        assert "outputs +b; routes changed" in line["changes"], line
        flow.wait_sent(200)
        eng.config.write_text("return { inputs = 1 }")
        r = run_sluice("reload", "-c", str(eng.config))
        assert r.returncode == 1
        assert "inputs" in r.stderr, r.stderr
        time.sleep(0.3)  # a signal would have been handled by now
        assert len(reload_lines(eng)) == 1
        sent = flow.finish()
        wait_for(lambda: len(seqs(a)) + len(seqs(b)) >= sent, timeout=10,
                 what="every event at a or b")
        exactly_once(sent, a, b)


def test_a_disk_buffered_output_changes_only_with_a_buffer_of_its_own(sluice):
    port = free_port()
    with Sink() as old, Sink() as new:
        ins = [lua_in("in", port)]

        def out(address, path):
            return lua_out("out", address, 'buffer = { type = "disk", path = "%s" },'
                           % path)
        eng = sluice(conf(ins, [out(old.address, "buf1")], [route("t", "out")]))
        flow = AckedFlow("127.0.0.1:%d" % port)
        flow.wait_sent(200)
        line = reload_via_sighup(eng, conf(ins, [out(new.address, "buf1")],
                                           [route("t", "out")]), 1)
        assert line["msg"] == "config reload rejected; the running config stays"
        assert line["error"] == ("reload refused (restart to apply it): output out "
                                 "keeps its disk buffer at the same path, which "
                                 "the running one owns"), line
        assert new.connections == 0
        line = reload_via_sighup(eng, conf(ins, [out(new.address, "buf2")],
                                           [route("t", "out")]), 2)
        assert line["msg"] == "config reloaded", line
        flow.wait_sent(200)
        sent = flow.finish()
        wait_for(lambda: len(seqs(old)) + len(seqs(new)) >= sent, timeout=10,
                 what="every event at old or new")
        exactly_once(sent, old, new)
        eng.wait_log("retired output drained and closed",
                     output="out (before reload 1)")


def test_an_input_that_cannot_listen_undoes_the_whole_reload(sluice):
    port, busy_port = free_port(), free_port()
    busy = socket.socket()
    busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    busy.bind(("127.0.0.1", busy_port))
    busy.listen(1)
    with Sink() as a, Sink() as b:
        ins = [lua_in("in", port)]
        eng = sluice(conf(ins, [lua_out("a", a.address)], [route("t", "a")]))
        flow = AckedFlow("127.0.0.1:%d" % port)
        flow.wait_sent(200)
        wanted = conf(ins + [lua_in("in2", busy_port)],
                      [lua_out("a", a.address), lua_out("b", b.address)],
                      [route("t", "b")])
        line = reload_via_sighup(eng, wanted, 1)
        assert line["msg"] == "config reload rejected; the running config stays"
        assert line["error"].startswith("inputs[2] (in2): "), line
        flow.wait_sent(200)  # still routed to a: the route change was undone
        busy.close()
        line = reload_via_sighup(eng, wanted, 2)
        assert line["msg"] == "config reloaded", line
        assert line["changes"].startswith("inputs +in2; outputs +b; routes changed")
        send_events("127.0.0.1:%d" % busy_port, [{"topic": "t", "payload": {"seq": -1}}])
        flow.wait_sent(200)
        sent = flow.finish()
        wait_for(lambda: len(seqs(a)) + len(seqs(b)) >= sent + 1, timeout=10,
                 what="every event at a or b")
        assert -1 in seqs(b)
        a_seqs, b_seqs = seqs(a), [s for s in seqs(b) if s >= 0]
        got = sorted(a_seqs + b_seqs)
        assert got == list(range(sent)), "lost or duplicated events"
        # the switch happened at the second reload: a has one head
        assert sorted(a_seqs) == list(range(len(a_seqs)))
        assert len(a_seqs) >= 400


def test_rules_that_do_not_load_undo_the_config_reload(sluice, tmp_path):
    port = free_port()
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10_pass.lua").write_text("return { on_event = function(ev) end }\n")
    extra = 'rules = { dir = "%s", watch = false },' % rules
    with Sink() as a, Sink() as b:
        ins = [lua_in("in", port)]
        eng = sluice(conf(ins, [lua_out("a", a.address)], [route("t", "a")],
                          extra=extra))
        flow = AckedFlow("127.0.0.1:%d" % port)
        flow.wait_sent(200)
        # the rule now routes to b, which the same reload adds; but it is broken
        (rules / "10_pass.lua").write_text('return { on_event = function(ev) return "b" end')
        wanted = conf(ins, [lua_out("a", a.address), lua_out("b", b.address)],
                      [route("t", "a")], extra=extra)
        line = reload_via_sighup(eng, wanted, 1)
        assert line["msg"] == "config reload rejected; the running config stays"
        eng.wait_log("rules reload rejected; the live version stays")
        st = json.loads(run_sluice("status", "-c", str(eng.config)).stdout)
        assert "10_pass.lua:" in st["last_reload"]["error"], st
        flow.wait_sent(200)
        (rules / "10_pass.lua").write_text('return { on_event = function(ev) return "b" end }\n')
        line = reload_via_sighup(eng, wanted, 2)
        assert line["msg"] == "config reloaded", line
        flow.wait_sent(200)
        sent = flow.finish()
        wait_for(lambda: len(seqs(a)) + len(seqs(b)) >= sent, timeout=10,
                 what="every event at a or b")
        exactly_once(sent, a, b)
        assert len(seqs(a)) >= 400 and len(seqs(b)) >= 200


def test_a_changed_unix_input_rebinds_its_socket_path(sluice):
    port, path = free_port(), short_path("rl.sock")
    with Sink() as a:
        outs, routes = [lua_out("a", a.address)], [route("*", "a")]

        def unix_in(extra=""):
            return '{ name = "u", type = "unix", listen = "%s", %s }' % (path, extra)
        eng = sluice(conf([lua_in("in", port), unix_in()], outs, routes))
        send_events(path, [{"topic": "u", "payload": 0}])
        line = reload_via_sighup(eng, conf([lua_in("in", port),
                                            unix_in("max_connections = 3")],
                                           outs, routes), 1)
        assert line["changes"].startswith("inputs ~u;"), line
        assert line["inputs_not_started"] == "", line
        send_events(path, [{"topic": "u", "payload": 1}])
        wait_for(lambda: sorted(e["payload"] for e in a.events) == [0, 1],
                 what="both events through the unix input")


def test_a_removed_output_that_cannot_deliver_keeps_its_disk_buffer_for_a_later_one(sluice):
    port, down = free_port(), free_port()
    with Sink() as a:
        ins = [lua_in("in", port)]
        d = lua_out("d", "127.0.0.1:%d" % down,
                    'retry = { initial_ms = 20, max_ms = 100 }, '
                    'buffer = { type = "disk", path = "dbuf" },')
        eng = sluice(conf(ins, [lua_out("a", a.address), d], [route("t", "d")],
                          shutdown=1))
        flow = AckedFlow("127.0.0.1:%d" % port)
        flow.wait_sent(300)
        line = reload_via_sighup(eng, conf(ins, [lua_out("a", a.address)],
                                           [route("t", "a")], shutdown=1), 1)
        assert "outputs -d; routes changed" in line["changes"], line
        left = eng.wait_log("retired output closed; its disk buffer keeps the "
                            "rest for an output of the same name", output="d")
        assert left["left_on_disk"] >= 300, left
        flow.wait_sent(100)
        with Sink(port=down) as later:
            line = reload_via_sighup(eng, conf(ins, [lua_out("a", a.address), d],
                                               [route("t", "a")], shutdown=1), 2)
            assert "outputs +d;" in line["changes"], line
            sent = flow.finish()
            wait_for(lambda: len(seqs(a)) + len(seqs(later)) >= sent, timeout=10,
                     what="every event at a or the re-added d")
            exactly_once(sent, a, later)
            assert len(seqs(later)) == left["left_on_disk"]


def test_replaced_configs_are_freed_once_nothing_runs_from_them(sluice):
    port = free_port()
    with Sink() as a, Sink() as b:
        ins = [lua_in("in", port)]
        eng = sluice(conf(ins, [lua_out("out", a.address)], [route("t", "out")]))
        for n in range(1, 31):
            # every reload replaces the output (and so the config it runs from)
            line = reload_via_sighup(eng, conf(
                ins, [lua_out("out", (b if n % 2 else a).address)],
                [route("t", "out")]), n)
            assert line["msg"] == "config reloaded", line
            # the input still runs from the first config, which main owns;
            # a replaced one is held only while its output drains and closes
            # (the last one or two), never all 30
            assert line["configs_held"] <= 2, line
            eng.wait_log("retired output drained and closed", count=n)
        send_events("127.0.0.1:%d" % port, [{"topic": "t", "payload": {"seq": 0}}])
        wait_for(lambda: seqs(a) == [0], what="the event at the last output")


def test_a_changed_http_input_takes_its_new_limit_on_the_same_address(sluice):
    port, web = free_port(), free_port()
    with Sink() as a:
        outs, routes = [lua_out("a", a.address)], [route("*", "a")]

        def http_in(limit):
            return ('{ name = "web", type = "http", listen = "127.0.0.1:%d", '
                    'max_body_bytes = %d }' % (web, limit))
        eng = sluice(conf([lua_in("in", port), http_in(4096)], outs, routes))
        body = json.dumps([{"topic": "h", "payload": "x" * 2000}])
        url = "http://127.0.0.1:%d/v1/events" % web
        assert curl(url, data=body, content_type="application/json").status == 202
        line = reload_via_sighup(eng, conf([lua_in("in", port), http_in(1024)],
                                           outs, routes), 1)
        assert line["changes"].startswith("inputs ~web;"), line
        assert line["inputs_not_started"] == "", line
        assert curl(url, data=body, content_type="application/json").status == 413
        small = json.dumps([{"topic": "h", "payload": "y"}])
        assert curl(url, data=small, content_type="application/json").status == 202
        wait_for(lambda: [e["payload"] for e in a.events] == ["x" * 2000, "y"],
                 what="both accepted events at a")


def test_sigterm_right_after_a_reload_drains_old_and_new_outputs(sluice):
    port = free_port()
    with Sink() as old, Sink() as new:
        ins = [lua_in("in", port)]
        eng = sluice(conf(ins, [lua_out("out", old.address)], [route("t", "out")]))
        flow = AckedFlow("127.0.0.1:%d" % port)
        flow.wait_sent(300)
        reload_via_sighup(eng, conf(ins, [lua_out("out", new.address)],
                                    [route("t", "out")]), 1)
        flow.stop_flag.set()
        flow.writer.join(10)
        wait_for(lambda: flow.acked == flow.sent, what="all acked")
        assert eng.stop() == 0
        wait_for(lambda: len(seqs(old)) + len(seqs(new)) >= flow.sent,
                 what="every event at old or new")
        exactly_once(flow.sent, old, new)
        eng.wait_log("drained; exiting")


def test_a_producer_held_by_a_removed_output_past_its_deadline_is_refused_not_acked(sluice):
    port = free_port()
    with Sink() as a, Sink(reading=False, rcvbuf=4096) as b:
        ins = [lua_in("in", port)]
        outs = [lua_out("a", a.address),
                lua_out("b", b.address, "queue = { max_events = 2 },")]
        eng = sluice(conf(ins, outs, [route("t", "b")], shutdown=1))
        s = connect("127.0.0.1:%d" % port)
        s.sendall(msgpack.packb({"sluice": 1, "ack": True}))
        blob = "x" * 65536
        stop = threading.Event()
        progress = {"n": 0, "at": time.monotonic()}

        def write():
            try:
                while not stop.is_set():
                    s.sendall(pack({"topic": "t",
                                    "payload": {"seq": progress["n"], "blob": blob}}))
                    progress["n"] += 1
                    progress["at"] = time.monotonic()
            except OSError:
                pass
        threading.Thread(target=write, daemon=True).start()
        # b does not read: its socket, then its queue fill, then the engine
        # holds the producer's event and stops reading: our writes stall
        wait_for(lambda: progress["n"] > 3 and time.monotonic() - progress["at"] > 0.5,
                 timeout=20, what="the producer held by b")
        line = reload_via_sighup(eng, conf(ins, [lua_out("a", a.address)],
                                           [route("t", "a")], shutdown=1), 1)
        assert "outputs -b" in line["changes"], line
        refused = eng.wait_log("event refused; closing connection", timeout=10)
        assert "output b was removed by a reload" in refused["error"], refused
        lost = eng.wait_log("retired output closed at shutdown_timeout with "
                            "events undelivered", output="b")
        assert lost["lost_events"] > 0
        stop.set()
        s.settimeout(5)
        up, acked = msgpack.Unpacker(), 0
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                up.feed(d)
                for n in up:
                    acked = n
        except OSError:
            pass
        s.close()
        # the event that waited for b was never acked
        assert acked == refused["accepted"], (acked, refused)
        send_events("127.0.0.1:%d" % port, [{"topic": "t", "payload": {"seq": -1}}])
        wait_for(lambda: -1 in seqs(a), what="the engine still routes to a")


def test_metrics_name_a_draining_replaced_output_apart_from_its_successor(sluice):
    port, admin = free_port(), free_port()
    with Sink() as old, Sink() as new:
        ins = [lua_in("in", port)]
        # old waits for acks this sink never sends: it keeps draining
        eng = sluice(conf(ins, [lua_out("out", old.address, "ack = true,")],
                          [route("t", "out")], admin=admin, shutdown=2))
        flow = AckedFlow("127.0.0.1:%d" % port)
        flow.wait_sent(200)
        reload_via_sighup(eng, conf(ins, [lua_out("out", new.address)],
                                    [route("t", "out")], admin=admin, shutdown=2), 1)
        flow.wait_sent(200)
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin, timeout=5) as r:
            text = r.read().decode()
        series = [l.rpartition(" ")[0] for l in text.splitlines()
                  if l and not l.startswith("#")]
        dups = sorted(set(s for s in series if series.count(s) > 1))
        assert dups == [], dups
        assert 'sluice_queue_events{output="out (before reload 1)"}' in series
        assert 'sluice_queue_events{output="out"}' in series
        sent = flow.finish()
        wait_for(lambda: len(seqs(old)) + len(seqs(new)) >= sent, timeout=10,
                 what="every event at old or new")
        exactly_once(sent, old, new)
        eng.wait_log("retired output closed at shutdown_timeout with events "
                     "undelivered", output="out (before reload 1)")
