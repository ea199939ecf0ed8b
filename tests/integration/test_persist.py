"""State that survives a restart (issue 15, item 6) through the real
binary: on_stop() runs at shutdown and its emits are delivered; with
rules.persist each rule's snapshot() is written to
<state_dir>/rule-state/<file>.state at shutdown and every
persist_interval_s, and handed to restore() at the next start, after a
SIGTERM or a kill -9 (the last periodic snapshot); a corrupt or foreign
file is logged, moved aside and skipped."""
import struct

import msgpack

from conftest import free_port, read_ndjson, send_events, wait_for, wait_lines

COUNTER = """
local n = 0
return {
  on_event = function(ev)
    n = n + 1
    ev.headers.count = tostring(n)
    return "out"
  end,
  snapshot = function() return { n = n } end,
  restore = function(s) n = s.n end,
  on_stop = function()
    sluice.emit("out", { topic = "summary", payload = { n = n } })
  end,
}
"""


def start(sluice, tmp_path, persist=True, interval=None, rule=COUNTER, folder=None):
    if folder is None:
        (tmp_path / "rules").mkdir()
        (tmp_path / "rules" / "10_count.lua").write_text(rule)
    port = free_port()
    rules = {"dir": str(tmp_path / "rules"), "persist": persist}
    if interval:
        rules["persist_interval_s"] = interval
    eng = sluice({
        "inputs": [{"name": "in", "type": "tcp", "listen": "127.0.0.1:%d" % port}],
        "outputs": [{"name": "out", "type": "file", "path": "out.ndjson"}],
        "routes": [{"topics": "*", "to": "out"}],
        "rules": rules,
    })
    eng.address = "127.0.0.1:%d" % port
    return eng


def counts(eng):
    return [int(e["headers"]["count"]) for e in read_ndjson(eng.path("out.ndjson"))
            if e["topic"] == "t"]


def state_file(eng):
    return eng.path("var/rule-state/10_count.lua.state")


def saved(eng):
    """The payload of the state file as the engine wrote it, or None."""
    try:
        raw = state_file(eng).read_bytes()
    except FileNotFoundError:
        return None
    magic, version, length, _crc, _at = struct.unpack("<4sB3xQI4xq", raw[:32])
    assert magic == b"SLRS" and version == 1 and length == len(raw) - 32
    return msgpack.unpackb(raw[32:])


def test_sigterm_runs_on_stop_and_a_restart_keeps_the_counter(sluice, tmp_path):
    eng = start(sluice, tmp_path)
    send_events(eng.address, [{"topic": "t", "payload": i} for i in range(3)])
    wait_lines(eng.path("out.ndjson"), 3)
    assert eng.stop() == 0
    # on_stop ran at shutdown and what it emitted was delivered
    summary = [e for e in read_ndjson(eng.path("out.ndjson")) if e["topic"] == "summary"]
    assert [e["payload"] for e in summary] == [{"n": 3}]
    assert saved(eng) == {"n": 3}
    eng.restart()
    eng.wait_log("rule state restored", bytes=len(msgpack.packb({"n": 3})))
    send_events(eng.address, [{"topic": "t", "payload": 9}])
    wait_for(lambda: counts(eng) == [1, 2, 3, 4], what="the count to go on from 3")
    assert eng.stop() == 0
    assert saved(eng) == {"n": 4}


def test_without_persist_on_stop_still_runs_and_nothing_is_written(sluice, tmp_path):
    eng = start(sluice, tmp_path, persist=False)
    send_events(eng.address, [{"topic": "t", "payload": 1}])
    wait_lines(eng.path("out.ndjson"), 1)
    assert eng.stop() == 0
    assert [e["payload"] for e in read_ndjson(eng.path("out.ndjson"))
            if e["topic"] == "summary"] == [{"n": 1}]
    assert not eng.path("var/rule-state").exists()


def test_kill_9_restores_the_last_periodic_snapshot(sluice, tmp_path):
    eng = start(sluice, tmp_path, interval=1)
    send_events(eng.address, [{"topic": "t", "payload": i} for i in range(5)])
    wait_lines(eng.path("out.ndjson"), 5)
    wait_for(lambda: saved(eng) == {"n": 5}, timeout=10, what="a periodic snapshot of n = 5")
    eng.kill()
    assert not eng.path("var/rule-state/10_count.lua.state.tmp").exists()
    eng.restart()
    eng.wait_log("rule state restored")
    send_events(eng.address, [{"topic": "t", "payload": 9}])
    wait_for(lambda: counts(eng)[-1:] == [6], what="the count to go on from 5")


def test_a_corrupt_state_file_is_logged_moved_aside_and_skipped(sluice, tmp_path):
    eng = start(sluice, tmp_path)
    send_events(eng.address, [{"topic": "t", "payload": 1}])
    wait_lines(eng.path("out.ndjson"), 1)
    assert eng.stop() == 0
    good = state_file(eng).read_bytes()
    cases = [
        (good[:-1], "payload is not"),                           # truncated
        (good[:32] + bytes([good[32] ^ 0xff]) + good[33:], "checksum mismatch"),
        (b"SLRS\x07" + good[5:], "format version 7 (this sluice reads 1)"),
        (b"{\"n\": 1}\n" * 4, "not a sluice state file (bad header)"),
    ]
    for i, (data, why) in enumerate(cases):
        state_file(eng).write_bytes(data)
        eng.restart()
        log = eng.wait_log("rule state file is corrupt; skipped (the rule starts fresh)")
        assert why in log["error"], (why, log)
        assert log["file"] == str(state_file(eng))
        assert eng.path("var/rule-state/10_count.lua.state.corrupt").read_bytes() == data
        assert not eng.find_logs("rule state restored")
        send_events(eng.address, [{"topic": "t", "payload": 2}])
        wait_for(lambda: len(counts(eng)) == i + 2, what="one more event")
        assert counts(eng)[-1] == 1  # started fresh
        assert eng.stop() == 0
        assert saved(eng) == {"n": 1}  # and wrote a good file at shutdown


def test_a_restore_that_fails_leaves_the_rule_fresh_and_running(sluice, tmp_path):
    eng = start(sluice, tmp_path, rule=COUNTER.replace(
        "restore = function(s) n = s.n end",
        "restore = function(s) if s.n > 1 then error('too big') end n = s.n end"))
    send_events(eng.address, [{"topic": "t", "payload": i} for i in range(2)])
    wait_lines(eng.path("out.ndjson"), 2)
    assert eng.stop() == 0
    eng.restart()
    log = eng.wait_log("rule restore() failed on its saved state; the rule starts fresh")
    assert "too big" in log["error"]
    send_events(eng.address, [{"topic": "t", "payload": 9}])
    wait_for(lambda: counts(eng)[-1:] == [1], what="a fresh count")
