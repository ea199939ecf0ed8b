"""The state folder (issue 11, item 4) against the real binary: every file
the engine writes on its own lives in `state_dir`; an exclusive lock on it
lets one engine own it (a second refuses, naming the holder's pid; a kill -9
leaves nothing that blocks a restart); `reload`, `status` and `dlq replay`
find the engine through the config's state folder; a read-only config
folder runs.

Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_state.py
"""

import json
import os
import signal
import subprocess

import pytest

from conftest import (Engine, EngineExited, free_port, lua, read_ndjson,
                      run_sluice, send_events, wait_for, wait_lines)


def cfg(port, **top):
    c = {"inputs": [{"name": "in", "type": "tcp",
                     "listen": "127.0.0.1:%d" % port}],
         "outputs": [{"name": "out", "type": "file", "path": "out.ndjson"}],
         "routes": [{"topics": "*", "to": "out"}]}
    c.update(top)
    return c


def start(sluice, folder, name, config, wait=True):
    """An engine on config written as folder/name (several configs may share
    one folder, which the sluice fixture's own engines never do)."""
    path = folder / name
    path.write_text("return " + lua(config) + "\n")
    eng = Engine(sluice, name, folder, path, (), None)
    eng.config_dict = None
    # its own stderr file: with one stderr.log for two engines, each wrote
    # at its own offset over the other's lines (seen: a's log held a line
    # cut into b's, a field's width differing by timing; ASan, 1 run of 3)
    eng.log_prefix = name + "."
    sluice.engines.append(eng)
    return eng._start(wait=wait)


def ev(i):
    return {"id": "ev-%04d" % i, "topic": "t", "payload": i}


# ---- where the files go -------------------------------------------------

def test_every_engine_written_file_lands_in_state_dir(sluice, tmp_path):
    state = tmp_path / "deep" / "state"  # made by the engine, parents too
    port = free_port()
    eng = sluice(cfg(port, state_dir=str(state), outputs=[
        {"name": "out", "type": "file", "path": "out.ndjson"},
        {"name": "buffered", "type": "file", "path": "b.ndjson",
         "buffer": {"type": "disk"}}],
        routes=[{"topics": "*", "to": ["out", "buffered"]}]))
    send_events("127.0.0.1:%d" % port, [ev(i) for i in range(3)])
    wait_lines(eng.path("out.ndjson"), 3)
    assert sorted(os.listdir(state)) == [
        "buffer", "dead-letter.ndjson", "sluice.lock", "sluice.pid",
        "sluice.status.json"]
    assert os.listdir(state / "buffer") == ["buffered"]
    assert (state / "sluice.pid").read_text() == "%d\n" % eng.pid
    assert not eng.path("var").exists()  # nothing beside the config
    assert eng.stop() == 0
    # gone with the engine: pid and status; kept: data and the lock file
    assert sorted(os.listdir(state)) == ["buffer", "dead-letter.ndjson",
                                         "sluice.lock"]


def test_a_relative_state_dir_is_beside_the_config_not_the_cwd(sluice):
    eng = sluice(cfg(free_port(), state_dir="run/state"))
    assert eng.path("run/state/sluice.pid").read_text() == "%d\n" % eng.pid
    r = run_sluice("status", "-c", eng.config, cwd="/")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["version"] == 1


def test_check_rejects_a_state_dir_that_cannot_be_written(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    conf = tmp_path / "c.lua"
    conf.write_text("return " + lua(cfg(free_port(), state_dir=str(f))))
    r = run_sluice("check", "-c", conf)
    assert r.returncode == 1
    assert "state_dir: cannot use %s: not a directory" % f in r.stderr


# ---- one owner per state folder --------------------------------------------

def test_a_second_instance_on_one_state_dir_refuses_naming_the_holders_pid(
        sluice, tmp_path):
    state = tmp_path / "shared"
    first = sluice(cfg(free_port(), state_dir=str(state)))
    status_before = (state / "sluice.status.json").read_text()
    second = sluice(cfg(free_port(), state_dir=str(state)), wait=False)
    assert second.wait(timeout=15) == 1
    (line,) = second.find_logs("another sluice holds the state folder; not "
                               "starting (give each instance its own state_dir)")
    assert line["level"] == "error"
    assert line["holder_pid"] == first.pid
    assert line["state_dir"] == str(state)
    # the refused one touched nothing of the first's
    assert first.running()
    assert (state / "sluice.pid").read_text() == "%d\n" % first.pid
    assert (state / "sluice.status.json").read_text() == status_before
    r = run_sluice("status", "-c", first.config)
    assert r.returncode == 0, r.stderr


def test_two_instances_with_own_state_dirs_in_one_config_folder(sluice,
                                                                tmp_path):
    folder = tmp_path / "conf"
    folder.mkdir()
    a = start(sluice, folder, "a.conf.lua", cfg(free_port(), state_dir="a"))
    b = start(sluice, folder, "b.conf.lua", cfg(free_port(), state_dir="b"))
    r = run_sluice("reload", "-c", a.config)
    assert r.returncode == 0, r.stderr
    assert "pid %d" % a.pid in r.stdout
    a.wait_log("rules reloaded", trigger="SIGHUP")
    r = run_sluice("reload", "-c", b.config)
    assert r.returncode == 0 and "pid %d" % b.pid in r.stdout
    b.wait_log("rules reloaded", trigger="SIGHUP")
    # one reload each: reload -c A reached A only
    assert len(a.find_logs("rules reloaded")) == 1
    assert len(b.find_logs("rules reloaded")) == 1
    assert a.stop() == 0
    assert not (folder / "a" / "sluice.status.json").exists()
    assert (folder / "b" / "sluice.status.json").exists()
    assert (folder / "b" / "sluice.pid").read_text() == "%d\n" % b.pid
    st = json.loads(run_sluice("status", "-c", b.config).stdout)
    assert st["version"] == 2
    r = run_sluice("reload", "-c", a.config)
    assert r.returncode == 1 and "no running engine" in r.stderr
    assert b.running()


def test_kill_9_leaves_a_stale_pid_file_that_does_not_block_a_restart(
        sluice, tmp_path):
    eng = sluice(cfg(free_port(), state_dir=str(tmp_path / "st")))
    old = eng.pid
    eng.kill()
    assert (tmp_path / "st" / "sluice.pid").read_text() == "%d\n" % old
    # the commands see that nobody holds the folder: no signal to a stale pid
    r = run_sluice("reload", "-c", eng.config)
    assert r.returncode == 1
    assert ("names pid %d, but no process holds the lock" % old) in r.stderr
    r = run_sluice("status", "-c", eng.config)
    assert r.returncode == 1 and "no running engine" in r.stderr
    eng.restart()
    assert eng.pid != old
    assert (tmp_path / "st" / "sluice.pid").read_text() == "%d\n" % eng.pid
    r = run_sluice("reload", "-c", eng.config)
    assert r.returncode == 0 and "pid %d" % eng.pid in r.stdout
    eng.wait_log("rules reloaded", trigger="SIGHUP")


def test_reload_refuses_when_the_pid_file_disagrees_with_the_lock_holder(
        sluice, tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        pid_file = tmp_path / "elsewhere.pid"
        eng = sluice(cfg(free_port(), state_dir=str(tmp_path / "st"),
                         pid_file=str(pid_file)))
        pid_file.write_text("%d\n" % sleeper.pid)  # someone else's pid
        r = run_sluice("reload", "-c", eng.config)
        assert r.returncode == 1
        assert ("names pid %d, but pid %d holds the lock"
                % (sleeper.pid, eng.pid)) in r.stderr
        assert sleeper.poll() is None  # not signalled
        assert eng.find_logs("rules reloaded") == []
    finally:
        sleeper.kill()
        sleeper.wait()


# ---- a read-only config folder ---------------------------------------------

@pytest.fixture
def read_only(tmp_path):
    """A folder bind-mounted read-only onto itself (root can write through
    chmod, not through a read-only mount)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = []

    def seal():
        for args in (["mount", "--bind", str(folder), str(folder)],
                     ["mount", "-o", "remount,bind,ro", str(folder)]):
            r = subprocess.run(args, capture_output=True, text=True)
            if r.returncode != 0:
                pytest.skip("cannot bind-mount read-only: %s" % r.stderr.strip())
            mounted.append(1)
        with pytest.raises(OSError):
            (folder / "probe").write_text("x")
    yield folder, seal
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_config_folder_runs_with_state_dir_elsewhere(
        sluice, tmp_path, read_only):
    folder, seal = read_only
    port = free_port()
    state = tmp_path / "state"
    out = tmp_path / "out.ndjson"
    (folder / "sluice.conf.lua").write_text("return " + lua(cfg(
        port, state_dir=str(state),
        outputs=[{"name": "out", "type": "file", "path": str(out)}])) + "\n")
    (folder / "default.conf.lua").write_text(
        "return " + lua(cfg(free_port())) + "\n")
    seal()
    # the default state folder (var/ beside the config) cannot be made
    r = run_sluice("check", "-c", folder / "default.conf.lua")
    assert r.returncode == 1
    assert "state_dir: cannot use %s/var: directory '%s' is not writable" \
        % (folder, folder) in r.stderr
    eng = Engine(sluice, "ro", tmp_path, folder / "sluice.conf.lua", (), None)
    eng.config_dict = None
    sluice.engines.append(eng)
    eng._start()
    send_events("127.0.0.1:%d" % port, [ev(i) for i in range(5)])
    wait_lines(out, 5)
    assert [e["id"] for e in read_ndjson(out)] == ["ev-%04d" % i for i in range(5)]
    r = run_sluice("reload", "-c", eng.config)
    assert r.returncode == 0, r.stderr
    eng.wait_log("rules reloaded", trigger="SIGHUP")
    assert eng.stop() == 0
    assert sorted(os.listdir(folder)) == ["default.conf.lua", "sluice.conf.lua"]  # untouched


# ---- dlq replay through the config -------------------------------------------

def test_dlq_replay_c_reads_the_dead_letter_in_the_configs_state_dir(
        sluice, tmp_path):
    port = free_port()
    sender = sluice(cfg(port, state_dir=str(tmp_path / "st"), outputs=[{
        "name": "out", "type": "tcp", "address": "127.0.0.1:%d" % free_port(),
        "retry": {"initial_ms": 5, "max_ms": 10, "max_attempts": 1},
        "breaker": False}]))
    send_events("127.0.0.1:%d" % port, [ev(i) for i in range(20)])
    dl = tmp_path / "st" / "dead-letter.ndjson"
    wait_lines(dl, 20)
    assert sender.stop() == 0
    tport = free_port()
    target = sluice(cfg(tport))
    r = run_sluice("dlq", "replay", "-c", sender.config,
                   "--to", "127.0.0.1:%d" % tport, cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "replayed 20 events from %s to 127.0.0.1:%d" \
        % (dl, tport)
    wait_lines(target.path("out.ndjson"), 20)
    assert [e["id"] for e in read_ndjson(target.path("out.ndjson"))] == \
        ["ev-%04d" % i for i in range(20)]
    r = run_sluice("dlq", "replay", "-c", sender.config, str(dl),
                   "--to", "127.0.0.1:%d" % tport)
    assert r.returncode == 2 and "not both" in r.stderr
