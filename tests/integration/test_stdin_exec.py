"""The stdin input and the exec output (issue 13, item 5), through the real
binary: `printf ... | sluice run -c conf` with exit_on_eof, NDJSON and
msgpack, bad lines; exec into `sh -c 'cat >> file'`, a command that dies
mid-stream (restarted; nothing lost with a disk buffer), a command that
does not read (backpressure reaches the writer of sluice's stdin), its
stderr in our log, its shutdown.

Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_stdin_exec.py
"""

import json
import os
import signal
import subprocess
import threading
import time

import msgpack

from conftest import (SLUICE_BIN, _engine_env, lua, read_lines, read_ndjson,
                      sanitizer_report, wait_for, wait_lines)


def write_conf(tmp_path, cfg):
    path = tmp_path / "sluice.conf.lua"
    path.write_text("return " + lua(cfg) + "\n")
    return path


def stdin_conf(tmp_path, output, fmt=None, top=None):
    inp = {"name": "in", "type": "stdin", "exit_on_eof": True}
    if fmt:
        inp["format"] = fmt
    cfg = {"inputs": [inp], "outputs": [output],
           "routes": [{"topics": "*", "to": output["name"]}]}
    cfg.update(top or {})
    return write_conf(tmp_path, cfg)


def run(conf, data, timeout=60):
    """sluice run -c conf with data on its stdin; (exit code, log lines)."""
    # stdout not captured: a process an exec command leaves behind may
    # hold it (the command's stdout is sluice's)
    r = subprocess.run([SLUICE_BIN, "run", "-c", str(conf)], input=data,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=timeout, env=_engine_env(),
                       cwd=str(conf.parent))
    err = r.stderr.decode()
    assert sanitizer_report(err) is None, err
    return r.returncode, [json.loads(l) for l in err.splitlines() if l]


def ndjson(n, topic="t"):
    return "".join(json.dumps({"topic": topic, "payload": {"seq": i}}) + "\n"
                   for i in range(n))


def seqs(path):
    return [e["payload"]["seq"] for e in read_ndjson(path)]


# ---- stdin ---------------------------------------------------------------

def test_printf_pipe_into_sluice_delivers_every_event_and_exits_0(tmp_path):
    """The README's one-liner: a shell pipe, exit_on_eof, an exact ledger."""
    conf = stdin_conf(tmp_path, {"name": "f", "type": "file",
                                 "path": "out.ndjson"})
    r = subprocess.run(
        "printf '%s\\n' '{\"topic\":\"a\",\"payload\":1}' "
        "'{\"topic\":\"b\",\"payload\":2}' | " + SLUICE_BIN + " run -c " +
        str(conf), shell=True, capture_output=True, timeout=30,
        env=_engine_env(), cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    evs = read_ndjson(tmp_path / "out.ndjson")
    assert [(e["topic"], e["payload"]) for e in evs] == [("a", 1), ("b", 2)]


def test_stdin_ndjson_ledger_is_exact_through_a_small_queue(tmp_path):
    conf = stdin_conf(tmp_path, {"name": "f", "type": "file",
                                 "path": "out.ndjson", "batch_events": 7,
                                 "queue": {"max_events": 10}})
    code, logs = run(conf, ndjson(20000).encode())
    assert code == 0
    assert seqs(tmp_path / "out.ndjson") == list(range(20000))
    assert any(l["msg"] == "stdin ended and every output delivered; stopping"
               for l in logs)


def test_stdin_redirected_from_a_file_is_read_to_its_end(tmp_path):
    """sluice run -c conf < events.ndjson: a regular file is read through
    the threadpool, not as a stream."""
    conf = stdin_conf(tmp_path, {"name": "f", "type": "file",
                                 "path": "out.ndjson",
                                 "queue": {"max_events": 10}})
    src = tmp_path / "events.ndjson"
    src.write_text(ndjson(3000))
    with open(src, "rb") as f:
        r = subprocess.run([SLUICE_BIN, "run", "-c", str(conf)], stdin=f,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           timeout=60, env=_engine_env(), cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert sanitizer_report(r.stderr.decode()) is None
    assert seqs(tmp_path / "out.ndjson") == list(range(3000))


def test_stdin_msgpack_format_and_a_last_line_without_newline(tmp_path):
    conf = stdin_conf(tmp_path, {"name": "f", "type": "file",
                                 "path": "out.ndjson"}, fmt="msgpack")
    data = b"".join(msgpack.packb({"topic": "m", "payload": {"seq": i}})
                    for i in range(500))
    code, _ = run(conf, data)
    assert code == 0
    assert seqs(tmp_path / "out.ndjson") == list(range(500))
    conf = stdin_conf(tmp_path, {"name": "g", "type": "file",
                                 "path": "last.ndjson"})
    code, _ = run(conf, b'{"topic":"x","payload":{"seq":0}}\n'
                        b'{"topic":"x","payload":{"seq":1}}')
    assert code == 0
    assert seqs(tmp_path / "last.ndjson") == [0, 1]


def test_stdin_bad_lines_are_counted_logged_and_skipped(tmp_path):
    conf = stdin_conf(tmp_path, {"name": "f", "type": "file",
                                 "path": "out.ndjson"},
                      top={"max_event_bytes": 1024})
    data = ('{"topic":"t","payload":{"seq":0}}\n'
            'not json\n'
            '{"payload":{"seq":99}}\n'                      # no topic
            '{"topic":"t","payload":"' + "x" * 5000 + '"}\n'  # oversized
            '\n'
            '{"topic":"t","payload":{"seq":1}}\n')
    code, logs = run(conf, data.encode())
    assert code == 0
    assert seqs(tmp_path / "out.ndjson") == [0, 1]
    bad = [l for l in logs if l["msg"] == "bad input on stdin; skipped"]
    assert [l["line"] for l in bad] == [2, 3, 4]
    assert "max_event_bytes" in bad[2]["error"]


def test_stdin_truncated_msgpack_ends_the_run_with_exit_code_1(tmp_path):
    conf = stdin_conf(tmp_path, {"name": "f", "type": "file",
                                 "path": "out.ndjson"}, fmt="msgpack")
    good = msgpack.packb({"topic": "m", "payload": {"seq": 0}})
    code, logs = run(conf, good + msgpack.packb({"topic": "m"})[:-2])
    assert code == 1
    assert seqs(tmp_path / "out.ndjson") == [0]
    assert any("truncated" in l.get("error", "") for l in logs)



def test_stdin_unreadable_msgpack_is_logged_as_the_end_with_its_offset(tmp_path):
    # the reading stops there (nothing after it can be found): the line
    # says so and names the byte, not "skipped" with a line number
    conf = stdin_conf(tmp_path, {"name": "f", "type": "file",
                                 "path": "out.ndjson"}, fmt="msgpack")
    good = msgpack.packb({"topic": "m", "payload": {"seq": 0}})
    code, logs = run(conf, good + b"\xc1" + good)
    assert code == 1
    assert seqs(tmp_path / "out.ndjson") == [0]
    assert not [l for l in logs if l["msg"] == "bad input on stdin; skipped"]
    stop = [l for l in logs if l["msg"] == "bad msgpack on stdin; stopped reading"]
    assert len(stop) == 1, logs
    assert stop[0]["offset"] == len(good)
    assert "0xc1" in stop[0]["error"]


def test_stdin_msgpack_event_that_is_not_an_event_is_skipped_and_named_by_offset(tmp_path):
    # readable msgpack that is not an event (no topic) is skipped, the next
    # one still read; msgpack has no lines, so the log names its byte offset
    conf = stdin_conf(tmp_path, {"name": "f", "type": "file",
                                 "path": "out.ndjson"}, fmt="msgpack")
    good = [msgpack.packb({"topic": "m", "payload": {"seq": i}}) for i in (0, 1)]
    notev = msgpack.packb({"payload": {"seq": 9}})
    code, logs = run(conf, good[0] + notev + good[1])
    assert code == 0
    assert seqs(tmp_path / "out.ndjson") == [0, 1]
    skipped = [l for l in logs if l["msg"] == "bad input on stdin; skipped"]
    assert len(skipped) == 1, logs
    assert skipped[0]["offset"] == len(good[0])
    assert "line" not in skipped[0]
    assert "topic" in skipped[0]["error"]


def test_stdin_msgpack_end_is_logged_in_bytes_not_lines(tmp_path):
    # msgpack has no lines: "stdin ended" said lines 0 after any input
    conf = stdin_conf(tmp_path, {"name": "f", "type": "file",
                                 "path": "out.ndjson"}, fmt="msgpack")
    data = b"".join(msgpack.packb({"topic": "m", "payload": {"seq": i}})
                    for i in range(3))
    code, logs = run(conf, data)
    assert code == 0
    end = [l for l in logs if l["msg"] == "stdin ended"]
    assert len(end) == 1, logs
    assert "lines" not in end[0]
    assert end[0]["bytes"] == len(data)
    assert end[0]["events"] == 3
    # cut short by bad msgpack: the bytes read before it
    code, logs = run(conf, data + b"\xc1")
    assert code == 1
    end = [l for l in logs if l["msg"] == "stdin ended"]
    assert end[0]["bytes"] == len(data)

# ---- exec ----------------------------------------------------------------

def exec_out(command, **kw):
    out = {"name": "x", "type": "exec", "command": command}
    out.update(kw)
    return out


def test_exec_pipes_ndjson_into_sh_cat_and_the_ledger_is_exact(tmp_path):
    conf = stdin_conf(tmp_path, exec_out(["sh", "-c", "cat >> piped.ndjson"],
                                         batch_events=100))
    code, logs = run(conf, ndjson(5000).encode())
    assert code == 0
    assert seqs(tmp_path / "piped.ndjson") == list(range(5000))
    assert any(l["msg"] == "exec command started" for l in logs)


def test_exec_msgpack_format_reaches_the_command_as_msgpack(tmp_path):
    conf = stdin_conf(tmp_path, exec_out(["sh", "-c", "cat > piped.mp"],
                                         format="msgpack"))
    code, _ = run(conf, ndjson(50).encode())
    assert code == 0
    data = (tmp_path / "piped.mp").read_bytes()
    un = msgpack.Unpacker(raw=False)
    un.feed(data)
    assert [e["payload"]["seq"] for e in un] == list(range(50))


SCRIPT_DIES = r"""
n=0
while IFS= read -r line; do
  printf '%s\n' "$line" >> got.ndjson
  n=$((n+1))
  if [ $n -ge 97 ]; then
    if [ -e kill9 ]; then rm kill9; kill -9 $$; fi
    touch kill9; exit 3
  fi
done
"""


def test_exec_command_dying_mid_stream_is_restarted_and_nothing_is_lost(tmp_path):
    """The command reads 97 lines and dies (exit 3, then kill -9, in turn)
    with the rest of its batch unread in the pipe: each death is logged
    with its status, the command is started again after the backoff, and
    what it did not read goes to the next one. With a disk buffer, every
    event arrives once, in order."""
    (tmp_path / "dies.sh").write_text(SCRIPT_DIES)
    conf = stdin_conf(tmp_path, exec_out(
        ["sh", str(tmp_path / "dies.sh")], batch_events=40,
        buffer={"type": "disk"}, retry={"initial_ms": 10, "max_ms": 50},
        breaker=False))
    n = 1000
    code, logs = run(conf, ndjson(n).encode())
    assert code == 0
    assert seqs(tmp_path / "got.ndjson") == list(range(n))
    ended = [l for l in logs
             if l["msg"] == "exec command ended; restarting it with backoff"]
    assert len(ended) == n // 97
    assert {(l["exit_status"], l["signal"]) for l in ended} == {(3, 0), (0, 9)}
    starts = [l for l in logs if l["msg"] == "exec command started"]
    assert len(starts) == len(ended) + 1


def test_a_command_that_does_not_read_holds_back_stdin(tmp_path):
    """A command that never reads fills its pipe; the output's small queue
    fills; the stdin input stops reading, so the process writing into
    sluice's stdin blocks (backpressure end to end). SIGTERM then ends the
    run: the command's stdin is closed and, as it ignores that, it is
    killed after stop_timeout_ms."""
    conf = stdin_conf(tmp_path, exec_out(
        ["sh", "-c", "trap '' TERM; exec sleep 300"], stop_timeout_ms=500,
        queue={"max_events": 50}), top={"shutdown_timeout": 1})
    proc = subprocess.Popen([SLUICE_BIN, "run", "-c", str(conf)],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_engine_env(), cwd=str(tmp_path))
    line = (json.dumps({"topic": "t", "payload": "y" * 900}) + "\n").encode()
    total = 50000  # ~45 MB: far more than every buffer on the way
    sent = [0]

    def writer():
        try:
            for _ in range(total):
                proc.stdin.write(line)
                sent[0] += 1
        except (BrokenPipeError, ValueError):
            pass

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    last = [-1]

    def stalled():
        s, last[0] = last[0], sent[0]
        return s == sent[0]
    wait_for(stalled, timeout=20, interval=1.0, what="the writer to stall")
    assert sent[0] < total // 10, sent[0]  # held: not read
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    assert time.monotonic() - start < 10
    err = proc.stderr.read().decode()
    assert "did not exit within stop_timeout_ms" in err
    assert '"signal":9' in err or "killed by signal 9" in err


def test_exec_stderr_goes_to_the_log_cut_and_rate_limited(tmp_path):
    script = ("echo first problem >&2; head -c 5000 /dev/zero | tr '\\0' e "
              ">&2; echo >&2; i=0; while [ $i -lt 500 ]; do echo noise $i >&2;"
              " i=$((i+1)); done; cat > /dev/null")
    conf = stdin_conf(tmp_path, exec_out(["sh", "-c", script]))
    code, logs = run(conf, ndjson(3).encode())
    assert code == 0
    lines = [l for l in logs if l["msg"] == "exec command stderr"]
    assert lines[0]["line"] == "first problem"
    assert lines[1]["line"] == "e" * 1023  # cut at 1 KiB
    assert len(lines) < 100  # 500 more lines, rate-limited


def test_exec_shutdown_closes_stdin_and_waits_for_the_command(tmp_path):
    conf = stdin_conf(tmp_path, exec_out(
        ["sh", "-c", "cat >> out.ndjson; sleep 0.3; echo finished >> out.ndjson"]))
    code, logs = run(conf, ndjson(10).encode())
    assert code == 0
    lines = read_lines(tmp_path / "out.ndjson")
    assert lines[-1] == "finished" and len(lines) == 11
    assert any(l["msg"] == "exec command ended" and
               l["status"] == "command exited with status 0" for l in logs)


def test_exec_shutdown_does_not_wait_for_what_the_command_left_behind(tmp_path):
    """A background process the command started keeps its stderr open;
    the command's own exit is what the shutdown waits for."""
    conf = stdin_conf(tmp_path, exec_out(
        ["sh", "-c", "sleep 60 & echo $! > bg.pid; cat >> out.ndjson"]))
    start = time.monotonic()
    try:
        code, _ = run(conf, ndjson(5).encode(), timeout=30)
    finally:
        pid = (tmp_path / "bg.pid").read_text().strip()
        if pid:
            os.kill(int(pid), signal.SIGKILL)
    assert code == 0
    assert time.monotonic() - start < 20
    assert len(read_lines(tmp_path / "out.ndjson")) == 5


def test_exec_a_missing_program_stops_the_start(tmp_path):
    conf = stdin_conf(tmp_path, exec_out(["/nonexistent/prog", "x"]))
    code, logs = run(conf, b"")
    assert code != 0
    assert any("cannot run /nonexistent/prog" in json.dumps(l) for l in logs)


def test_exec_command_must_be_a_list_of_strings(tmp_path):
    for bad, why in (("sh -c true", "expected a list of 1 to 64 strings"),
                     ([], "expected a list of 1 to 64 strings"),
                     (["sh", 3], "item 2: expected a non-empty string")):
        conf = stdin_conf(tmp_path, exec_out(bad))
        r = subprocess.run([SLUICE_BIN, "check", "-c", str(conf)],
                           capture_output=True, text=True, timeout=10)
        assert r.returncode != 0
        assert why in r.stdout + r.stderr, r.stdout + r.stderr


def test_exit_on_eof_waits_for_a_down_output_past_shutdown_timeout(tmp_path):
    """README: at the end of stdin the run waits for every output as long
    as it takes (shutdown_timeout is SIGTERM's, not this wait's), then
    exits 0 with everything delivered."""
    from conftest import Sink, free_port
    peer = free_port()
    conf = stdin_conf(tmp_path, {"name": "o", "type": "tcp",
                                 "address": "127.0.0.1:%d" % peer,
                                 "retry": {"initial_ms": 20, "max_ms": 100}},
                      top={"shutdown_timeout": 1})
    p = subprocess.Popen([SLUICE_BIN, "run", "-c", str(conf)], stdin=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=_engine_env(), cwd=str(tmp_path))
    try:
        p.stdin.write(ndjson(3).encode())
        p.stdin.close()
        time.sleep(2.0)  # twice shutdown_timeout: a wait bounded by it is over
        assert p.poll() is None, "stopped before its output delivered"
        with Sink(port=peer) as sink:
            got = sink.wait(3)
            assert [g["payload"]["seq"] for g in got] == [0, 1, 2]
            assert p.wait(15) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    err = p.stderr.read().decode()
    assert "stdin ended and every output delivered; stopping" in err
