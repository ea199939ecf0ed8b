"""Retries, dead letters, the circuit breaker, dedup, rate limits and
`sluice dlq replay` (issue 5), through the real binary.

Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_resilience.py
"""

import re
import datetime
import re
import time
import urllib.request

from conftest import (Sink, free_port, read_ndjson, run_sluice, send_events,
                      wait_for, wait_lines)


from conftest import metrics_flat as metrics  # noqa: E402


def log_time(line):
    return datetime.datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def engine(sluice, outputs, dead_letter=None, admin=False, **top):
    port = free_port()
    cfg = {"inputs": [{"name": "in", "type": "tcp", "listen": "127.0.0.1:%d" % port}],
           "outputs": outputs,
           "routes": [{"topics": "*", "to": outputs[0]["name"]}]}
    if dead_letter:
        cfg["dead_letter"] = dead_letter
    if admin:
        top["admin"] = {"listen": "127.0.0.1:%d" % free_port()}
    cfg.update(top)
    eng = sluice(cfg)
    eng.address = "127.0.0.1:%d" % port
    eng.admin_port = int(top["admin"]["listen"].rsplit(":", 1)[1]) if admin else None
    return eng


def ev(i, **kw):
    e = {"id": "ev-%04d" % i, "topic": "t", "payload": i}
    e.update(kw)
    return e


# ---- retries and dead letters ---------------------------------------------

def test_exhausted_retries_send_the_events_to_the_dead_letter_with_headers(sluice):
    down = free_port()  # nothing listens: every connect fails
    eng = engine(sluice, [{
        "name": "out", "type": "tcp", "address": "127.0.0.1:%d" % down,
        "retry": {"initial_ms": 10, "max_ms": 20, "max_attempts": 3},
        "breaker": False}], admin=True)
    send_events(eng.address, [ev(i, headers={"origin": "test"}) for i in range(10)])
    lines = wait_lines(eng.path("var/dead-letter.ndjson"), 10)
    got = read_ndjson(eng.path("var/dead-letter.ndjson"))
    assert len(lines) == 10
    assert [e["id"] for e in got] == ["ev-%04d" % i for i in range(10)]
    for i, e in enumerate(got):
        h = e["headers"]
        assert h["sluice-output"] == "out"
        assert h["sluice-attempts"] == "3"
        assert "refused" in h["sluice-error"].lower()
        assert h["origin"] == "test"  # the event's own headers stay
        assert e["payload"] == i and e["topic"] == "t"
    line = eng.wait_log("output gave up on events; sent to the dead letter")
    assert line["output"] == "out" and line["attempts"] == 3
    m = metrics(eng.admin_port)
    assert m['sluice_output_dead_lettered_total{output="out"}'] == 10
    assert m['sluice_output_retries_total{output="out"}'] >= 2
    assert m['sluice_queue_events{output="out"}'] == 0
    assert eng.stop() == 0
    (totals,) = eng.find_logs("output totals", output="out")
    assert totals["dead_lettered"] == 10 and totals["delivered"] == 0


def test_max_elapsed_ms_gives_up_on_time(sluice):
    down = free_port()
    eng = engine(sluice, [{
        "name": "out", "type": "tcp", "address": "127.0.0.1:%d" % down,
        "retry": {"initial_ms": 50, "max_ms": 100, "max_elapsed_ms": 400},
        "breaker": False}])
    t0 = time.monotonic()
    send_events(eng.address, [ev(1)])
    wait_lines(eng.path("var/dead-letter.ndjson"), 1, timeout=5)
    took = time.monotonic() - t0
    assert 0.35 <= took < 2.0, took
    (e,) = read_ndjson(eng.path("var/dead-letter.ndjson"))
    assert e["id"] == "ev-0001" and int(e["headers"]["sluice-attempts"]) >= 2
    assert eng.stop() == 0


def test_without_limits_an_output_retries_until_the_peer_is_back(sluice):
    peer = free_port()
    eng = engine(sluice, [{
        "name": "out", "type": "tcp", "address": "127.0.0.1:%d" % peer,
        "retry": {"initial_ms": 10, "max_ms": 30}}])
    send_events(eng.address, [ev(i) for i in range(5)])
    time.sleep(0.8)  # dozens of failed attempts
    with Sink(port=peer) as sink:
        got = sink.wait(5)
        assert [e["id"] for e in got] == ["ev-%04d" % i for i in range(5)]
    assert not eng.path("var/dead-letter.ndjson").exists() or \
        read_ndjson(eng.path("var/dead-letter.ndjson")) == []
    eng.stop()


def test_file_output_write_failures_go_to_the_dead_letter(sluice):
    eng = engine(sluice, [{
        "name": "out", "type": "file", "path": "/dev/full",  # ENOSPC
        "retry": {"initial_ms": 10, "max_ms": 20, "max_attempts": 2},
        "breaker": False}])
    send_events(eng.address, [ev(i) for i in range(3)])
    wait_lines(eng.path("var/dead-letter.ndjson"), 3)
    for e in read_ndjson(eng.path("var/dead-letter.ndjson")):
        assert e["headers"]["sluice-output"] == "out"
        assert e["headers"]["sluice-attempts"] == "2"
        assert "space" in e["headers"]["sluice-error"].lower()
    assert eng.stop() == 0


def test_the_dead_letter_output_never_dead_letters_into_itself(sluice):
    eng = engine(sluice, [
        {"name": "out", "type": "file", "path": "/dev/full",
         "retry": {"initial_ms": 10, "max_ms": 20, "max_attempts": 1},
         "breaker": False},
        {"name": "dl", "type": "file", "path": "/dev/full",
         "retry": {"initial_ms": 10, "max_ms": 20, "max_attempts": 1},
         "breaker": False}], dead_letter="dl", admin=True,
        shutdown_timeout=0.3)
    send_events(eng.address, [ev(1)])
    wait_for(lambda: metrics(eng.admin_port)['sluice_output_dead_lettered_total{output="out"}'] == 1,
             what="the event to leave out")
    wait_for(lambda: metrics(eng.admin_port)['sluice_output_retries_total{output="dl"}'] >= 5,
             what="dl to keep retrying")
    m = metrics(eng.admin_port)
    assert m['sluice_output_dead_lettered_total{output="dl"}'] == 0
    assert m['sluice_queue_events{output="dl"}'] == 1
    assert not [l for l in eng.logs() if l["msg"].startswith("output gave up")
                and l["output"] == "dl"]
    eng.stop()  # the event is still in dl at the deadline: exit code 1


# ---- the circuit breaker -----------------------------------------------------

def test_breaker_opens_after_failures_probes_when_half_open_and_closes(sluice):
    peer = free_port()
    eng = engine(sluice, [{
        "name": "out", "type": "tcp", "address": "127.0.0.1:%d" % peer,
        "retry": {"initial_ms": 5, "max_ms": 10},
        "breaker": {"failures": 3, "open_ms": 400}}], admin=True,
        log_level="debug")  # the probes log at debug
    send_events(eng.address, [ev(1)])
    opened = eng.wait_log("output circuit breaker open; no attempts for open_ms")
    assert opened["output"] == "out" and opened["failures"] == 3
    assert opened["open_ms"] == 400
    assert metrics(eng.admin_port)['sluice_output_breaker_state{output="out"}'] == 1
    probe = eng.wait_log("output circuit breaker half-open; probing", timeout=3)
    waited = log_time(probe) - log_time(opened)
    assert 0.39 <= waited < 1.5, waited  # no attempt while open
    # the probe fails (nothing listens): open again right away
    again = eng.wait_log("output circuit breaker probe failed; open again", timeout=3)
    assert len(eng.find_logs("output circuit breaker open; no attempts for open_ms")) == 1
    # at once, not after another open_ms (0.2 s was a bound on the machine)
    assert log_time(again) - log_time(probe) < 0.39
    assert metrics(eng.admin_port)['sluice_output_breaker_opens_total{output="out"}'] >= 2
    with Sink(port=peer) as sink:
        closed = eng.wait_log("output circuit breaker closed", timeout=3)
        assert log_time(closed) - log_time(again) >= 0.39
        assert closed["failures"] >= 4
        assert [e["id"] for e in sink.wait(1)] == ["ev-0001"]
        assert metrics(eng.admin_port)['sluice_output_breaker_state{output="out"}'] == 0
        assert eng.stop() == 0


def test_breaker_gives_up_on_a_peer_that_accepts_then_stalls(sluice):
    # a peer that accepts and never reads or acks: timeout_ms makes that a
    # failure like any other, so the breaker opens and events dead-letter
    import socket
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held = []
    try:
        eng = engine(sluice, [{
            "name": "out", "type": "tcp", "address": "127.0.0.1:%d" % srv.getsockname()[1],
            "ack": True,
            "retry": {"initial_ms": 10, "max_ms": 20, "timeout_ms": 150, "max_attempts": 2},
            "breaker": {"failures": 2, "open_ms": 200}}])

        def accept_all():
            srv.settimeout(0.05)
            try:
                while True:
                    held.append(srv.accept()[0])
            except OSError:
                pass
        send_events(eng.address, [ev(1)])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not read_ndjson(eng.path("var/dead-letter.ndjson")):
            accept_all()
        (e,) = read_ndjson(eng.path("var/dead-letter.ndjson"))
        assert "150 ms" in e["headers"]["sluice-error"]
        eng.wait_log("output circuit breaker open; no attempts for open_ms")
        eng.stop()
    finally:
        for c in held:
            c.close()
        srv.close()


# ---- dedup -------------------------------------------------------------------

def test_dedup_drops_repeats_of_an_id_inside_the_window(sluice):
    eng = engine(sluice, [{"name": "out", "type": "file", "path": "out.ndjson",
                           "dedup": {"window_ms": 600, "max_ids": 1000}}],
                 admin=True)
    ids = ["a", "b", "a", "c", "b", "a"]
    send_events(eng.address, [{"id": i, "topic": "t"} for i in ids])
    wait_lines(eng.path("out.ndjson"), 3)
    time.sleep(0.2)
    assert [e["id"] for e in read_ndjson(eng.path("out.ndjson"))] == ["a", "b", "c"]
    m = metrics(eng.admin_port)
    assert m['sluice_events_dropped_total{reason="dedup",output="out"}'] == 3
    time.sleep(0.6)  # the window passed: "a" is new again
    send_events(eng.address, [{"id": "a", "topic": "t"}])
    wait_lines(eng.path("out.ndjson"), 4)
    assert eng.stop() == 0
    (totals,) = eng.find_logs("output totals", output="out")
    assert totals["dropped_dedup"] == 3


def test_dedup_memory_is_bounded_by_max_ids(sluice):
    eng = engine(sluice, [{"name": "out", "type": "file", "path": "out.ndjson",
                           "dedup": {"window_ms": 60000, "max_ids": 2}}])
    # x1 is forgotten once two newer ids came: its repeat passes; x3's does not
    send_events(eng.address, [{"id": i, "topic": "t"} for i in ["x1", "x2", "x3", "x1", "x3"]])
    wait_lines(eng.path("out.ndjson"), 4)
    time.sleep(0.2)
    assert [e["id"] for e in read_ndjson(eng.path("out.ndjson"))] == ["x1", "x2", "x3", "x1"]
    assert eng.stop() == 0


# ---- rate limit ----------------------------------------------------------------

def test_rate_limit_paces_delivery(sluice):
    eng = engine(sluice, [{"name": "out", "type": "file", "path": "out.ndjson",
                           "rate_limit": {"events_per_second": 100, "burst": 10}}],
                 admin=True)
    t0 = time.monotonic()
    send_events(eng.address, [ev(i) for i in range(200)])
    wait_lines(eng.path("out.ndjson"), 200, timeout=10)
    took = time.monotonic() - t0
    # 10 at once, then 190 at 100/s: 1.9 s
    assert 1.7 <= took <= 3.0, took
    assert [e["id"] for e in read_ndjson(eng.path("out.ndjson"))] == \
        ["ev-%04d" % i for i in range(200)]
    m = metrics(eng.admin_port)
    assert 0 < m['sluice_output_rate_limited_total{output="out"}'] <= 200
    assert eng.stop() == 0


def test_rate_limit_excess_follows_when_full_drop_newest(sluice):
    eng = engine(sluice, [{"name": "out", "type": "file", "path": "out.ndjson",
                           "queue": {"max_events": 20, "when_full": "drop_newest"},
                           "rate_limit": {"events_per_second": 50, "burst": 5}}],
                 admin=True)
    send_events(eng.address, [ev(i) for i in range(300)])
    m = wait_for(lambda: (lambda m: m if m['sluice_queue_events{output="out"}'] == 0 else None)(
        metrics(eng.admin_port)), 5, what="the queue to drain")
    dropped = m['sluice_events_dropped_total{reason="queue_full_newest",output="out"}']
    got = read_ndjson(eng.path("out.ndjson"))
    assert dropped > 200 and len(got) + dropped == 300
    assert eng.stop() == 0


def test_rate_limit_with_block_pauses_the_input_and_loses_nothing(sluice):
    eng = engine(sluice, [{"name": "out", "type": "file", "path": "out.ndjson",
                           "queue": {"max_events": 20},
                           "rate_limit": {"events_per_second": 400, "burst": 10}}])
    t0 = time.monotonic()
    send_events(eng.address, [ev(i) for i in range(400)])  # returns once read
    assert time.monotonic() - t0 >= 0.7  # held back: the queue was full
    wait_lines(eng.path("out.ndjson"), 400, timeout=5)
    assert [e["payload"] for e in read_ndjson(eng.path("out.ndjson"))] == list(range(400))
    assert eng.stop() == 0


# ---- dlq replay ----------------------------------------------------------------

def dead_letters(sluice, n):
    """An engine whose output gives up at once; returns (engine, dl path)."""
    eng = engine(sluice, [{
        "name": "out", "type": "tcp", "address": "127.0.0.1:%d" % free_port(),
        "retry": {"initial_ms": 5, "max_ms": 10, "max_attempts": 1},
        "breaker": False}])
    send_events(eng.address, [ev(i, headers={"origin": "first"},
                                 payload={"n": i, "bin": b"\x00\xff", "f": 1.5})
                              for i in range(n)])
    path = eng.path("var/dead-letter.ndjson")
    wait_lines(path, n)
    assert eng.stop() == 0
    return eng, path


def test_dlq_replay_round_trip_strips_sluice_headers_and_keeps_ids(sluice):
    _, path = dead_letters(sluice, 50)
    target = engine(sluice, [{"name": "out", "type": "file", "path": "replayed.ndjson",
                              "dedup": {"window_ms": 60000}}], admin=True)
    r = run_sluice("dlq", "replay", path, "--to", target.address)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "replayed 50 events from %s to %s" % (path, target.address)
    wait_lines(target.path("replayed.ndjson"), 50)
    got = read_ndjson(target.path("replayed.ndjson"))
    assert [e["id"] for e in got] == ["ev-%04d" % i for i in range(50)]
    first = read_ndjson(path)
    for i, e in enumerate(got):
        # sluice-* taken off; the event's own headers (and its trace) kept
        assert e["headers"] == {"origin": "first",
                                "traceparent": first[i]["headers"]["traceparent"]}
        assert e["payload"] == {"n": i, "bin": {"$bin": "AP8="}, "f": 1.5}
        assert e["time"] == first[i]["time"] and e["topic"] == "t"
    # a second replay repeats the ids: the target's dedup drops them
    r = run_sluice("dlq", "replay", path, "--to", target.address)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: metrics(target.admin_port)[
        'sluice_events_dropped_total{reason="dedup",output="out"}'] == 50,
        what="the repeats to be dropped")
    assert len(read_ndjson(target.path("replayed.ndjson"))) == 50
    assert target.stop() == 0


def test_dlq_replay_strips_the_sluice_input_header_of_an_input_dead_letter(sluice):
    # a syslog (or redis) input dead-letters what it cannot parse with
    # sluice-error and sluice-input: a replay takes both off
    import socket
    port = free_port()
    src = sluice({"inputs": [{"name": "sys", "type": "syslog",
                              "listen": "127.0.0.1:%d" % port,
                              "format": "rfc5424", "on_malformed": "dead_letter"}],
                  "outputs": [{"name": "out", "type": "file", "path": "out.ndjson"}],
                  "routes": [{"topics": "*", "to": "out"}]})
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"<13>Oct 11 22:14:15 host app: not 5424\n")
    path = src.path("var/dead-letter.ndjson")
    [dead] = wait_lines(path, 1)
    assert '"sluice-input":"sys"' in dead
    assert src.stop() == 0
    target = engine(sluice, [{"name": "out", "type": "file", "path": "r.ndjson"}])
    r = run_sluice("dlq", "replay", path, "--to", target.address)
    assert r.returncode == 0, r.stderr
    wait_lines(target.path("r.ndjson"), 1)
    [got] = read_ndjson(target.path("r.ndjson"))
    assert not [h for h in got.get("headers", {}) if h.startswith("sluice-")], got
    assert got["payload"]["malformed"] is True
    assert target.stop() == 0


def test_dlq_replay_over_a_unix_socket(sluice, tmp_path):
    from conftest import short_path
    _, path = dead_letters(sluice, 3)
    sock = short_path("dlq.sock")
    target = sluice({"inputs": [{"name": "in", "type": "unix", "listen": sock}],
                     "outputs": [{"name": "out", "type": "file", "path": "r.ndjson"}],
                     "routes": [{"topics": "*", "to": "out"}]})
    r = run_sluice("dlq", "replay", path, "--to", sock)
    assert r.returncode == 0, r.stderr
    assert len(wait_lines(target.path("r.ndjson"), 3)) == 3
    assert target.stop() == 0


def test_dlq_replay_fails_clearly(sluice, tmp_path):
    _, path = dead_letters(sluice, 2)
    closed = "127.0.0.1:%d" % free_port()
    r = run_sluice("dlq", "replay", path, "--to", closed)
    assert r.returncode == 1
    assert "cannot connect to %s" % closed in r.stderr
    bad = tmp_path / "bad.ndjson"
    bad.write_text(open(path).read() + "{not json\n")
    r = run_sluice("dlq", "replay", bad, "--to", closed)
    assert r.returncode == 1
    assert "%s:3:" % bad in r.stderr and "nothing was sent" in r.stderr
    r = run_sluice("dlq", "replay", tmp_path / "missing.ndjson", "--to", closed)
    assert r.returncode == 1 and "cannot open" in r.stderr
    r = run_sluice("dlq", "replay", path)
    assert r.returncode == 2 and "--to ADDRESS is required" in r.stderr


def http_target(sluice, token=None):
    port = free_port()
    inp = {"name": "web", "type": "http", "listen": "127.0.0.1:%d" % port}
    cfg = {"inputs": [inp],
           "outputs": [{"name": "out", "type": "file", "path": "r.ndjson"}],
           "routes": [{"topics": "*", "to": "out"}]}
    if token:
        inp["bearer_token_file"] = str(token)
    return sluice(cfg), port


def test_dlq_replay_to_an_http_input_posts_batches_keeping_ids(sluice, tmp_path):
    import json
    path = tmp_path / "dl.ndjson"
    pad = "x" * 2000  # 300 events: about 600 KiB, so several 256 KiB batches
    with open(path, "w") as f:
        for i in range(300):
            f.write(json.dumps({"id": "dl-%04d" % i, "topic": "t", "time": 1700000000000000000 + i,
                                "headers": {"origin": "a", "sluice-error": "x", "sluice-output": "o"},
                                "payload": {"n": i, "pad": pad}}) + "\n")
    target, port = http_target(sluice)
    url = "http://127.0.0.1:%d/v1/events" % port
    r = run_sluice("dlq", "replay", path, "--to", url, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "replayed 300 events from %s to %s" % (path, url)
    got = wait_for(lambda: (lambda l: l if len(l) == 300 else None)(
        read_ndjson(target.path("r.ndjson"))), timeout=10, what="300 replayed")
    assert [e["id"] for e in got] == ["dl-%04d" % i for i in range(300)]
    # sluice-* taken off (the engine adds a traceparent to events without one)
    assert all({k: v for k, v in e["headers"].items() if k != "traceparent"}
               == {"origin": "a"} for e in got)
    assert [e["time"] for e in got] == [1700000000000000000 + i for i in range(300)]
    assert [e["payload"]["n"] for e in got] == list(range(300))
    # the path defaults to /v1/events
    r = run_sluice("dlq", "replay", path, "--to", "http://127.0.0.1:%d" % port, timeout=30)
    assert r.returncode == 0, r.stderr
    wait_lines(target.path("r.ndjson"), 600, timeout=10)


def test_dlq_replay_to_http_fails_clearly(sluice, tmp_path):
    from conftest import read_lines
    _, path = dead_letters(sluice, 2)
    target, port = http_target(sluice)
    # an answer other than 202 is shown with its body, and nothing is claimed
    r = run_sluice("dlq", "replay", path, "--to", "http://127.0.0.1:%d/v1/nowhere" % port)
    assert r.returncode == 1
    assert "answered 404" in r.stderr and "0 of 2 events accepted" in r.stderr
    closed = "http://127.0.0.1:%d/" % free_port()
    r = run_sluice("dlq", "replay", path, "--to", closed)
    assert r.returncode == 1 and "Connection refused" in r.stderr
    r = run_sluice("dlq", "replay", path, "--to", "https://127.0.0.1:%d/" % port)
    assert r.returncode == 2 and "https is not supported" in r.stderr
    assert read_lines(target.path("r.ndjson")) == []


def test_dlq_replay_to_http_sends_the_bearer_token(sluice, tmp_path):
    _, path = dead_letters(sluice, 2)
    (tmp_path / "token").write_text("s3cret\n")
    target, port = http_target(sluice, token=tmp_path / "token")
    url = "http://127.0.0.1:%d/v1/events" % port
    r = run_sluice("dlq", "replay", path, "--to", url)
    assert r.returncode == 1 and "answered 401" in r.stderr
    r = run_sluice("dlq", "replay", path, "--to", url, "--token", "s3cret")
    assert r.returncode == 0, r.stderr
    assert len(wait_lines(target.path("r.ndjson"), 2)) == 2


# ---- config ----------------------------------------------------------------------

def test_config_checks_the_new_keys(tmp_path):
    cfg = tmp_path / "bad.lua"
    cfg.write_text("""return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:9" } },
  outputs = {
    { name = "a", type = "file", path = "a.ndjson",
      retry = { max_attempts = 0, timeout_ms = 10 },
      breaker = "yes", rate_limit = { burst = 3 }, dedup = { max_ids = 5, typo = 1 } },
  },
}""")
    r = run_sluice("check", "-c", cfg)
    assert r.returncode == 1
    err = r.stderr
    assert "outputs[1].retry.max_attempts: expected a whole number from 1" in err
    # the list names every type with a timeout (more come with new plugins)
    (line,) = [l for l in err.splitlines() if "retry.timeout_ms: only " in l]
    assert " outputs time out" in line and "tcp" in line and "file outputs" not in line
    assert "outputs[1].breaker: expected table or boolean, got string" in err
    assert "outputs[1].rate_limit.events_per_second: expected a number of events per second" in err
    assert "outputs[1].dedup.window_ms: expected the window in milliseconds" in err
    assert "outputs[1].dedup: unknown key 'typo'" in err


def test_route_rate_limit_blocks_or_drops_by_output_policy(sluice):
    import time as _t
    from conftest import free_port, send_events, read_ndjson, wait_for
    port, admin = free_port(), free_port()
    eng = sluice("""return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { { name = "slow", type = "file", path = "slow.ndjson" },
              { name = "lossy", type = "file", path = "lossy.ndjson",
                queue = { when_full = "drop_newest" } } },
  routes = { { topics = "slow", to = "slow", rate_limit = { events_per_second = 100, burst = 10 } },
             { topics = "lossy", to = "lossy", rate_limit = { events_per_second = 100, burst = 10 } } },
  admin = { listen = "127.0.0.1:%d" },
}""" % (port, admin))
    t0 = _t.monotonic()
    send_events("127.0.0.1:%d" % port, [{"topic": "slow", "payload": i} for i in range(110)])
    took = _t.monotonic() - t0
    # 10 from the burst, 100 more at 100/s: about a second, nothing lost
    assert 0.8 <= took <= 3.0, took
    send_events("127.0.0.1:%d" % port, [{"topic": "lossy", "payload": i} for i in range(200)])
    assert eng.stop() == 0
    assert [e["payload"] for e in read_ndjson(eng.path("slow.ndjson"))] == list(range(110))
    lossy = [e["payload"] for e in read_ndjson(eng.path("lossy.ndjson"))]
    assert 10 <= len(lossy) < 60  # the burst, plus what refilled meanwhile
    assert lossy == sorted(lossy)
