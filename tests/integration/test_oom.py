"""Out of memory: with the engine's own allocations failing at random
(build/tools/failmalloc.so preloaded; libc, libuv and LuaJIT internals
untouched), the engine keeps running and loses no event it acknowledged:
each is in its output or, when a rule failed on it, in the dead letter.

Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_oom.py
"""
import glob
import json
import os
import socket
import time

import msgpack
import pytest

from conftest import ASAN, SLUICE_BIN, lua, pack

FAILMALLOC = os.path.join(os.path.dirname(SLUICE_BIN), "tools", "failmalloc.so")

pytestmark = pytest.mark.skipif(
    ASAN or not os.path.exists(FAILMALLOC),
    reason="needs the plain build's tools/failmalloc.so (ASan has its own "
           "malloc)")

EVENTS = 3000

RULE = """return { topics = { "*" }, on_event = function(ev)
  local p = ev.payload
  p.x = (p.x or "") .. "y"
  ev.headers.h = "v" .. p.seq
end }
"""


def failing_env(eng_dir, seed, prob="0.05"):
    return {"LD_PRELOAD": FAILMALLOC,
            "FAILMALLOC_DELAY_MS": "1500",      # after the start
            "FAILMALLOC_DURATION_MS": "4000",
            "FAILMALLOC_PROB": prob, "FAILMALLOC_SEED": str(seed),
            "FAILMALLOC_LOG": os.path.join(eng_dir, "fail.log")}


def send_acked(address, first, n, timeout=10):
    """One ack-mode connection: events first..n-1; the highest seq acked."""
    host, port = address.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=timeout)
    s.sendall(pack({"sluice": 1, "ack": True}))
    s.sendall(b"".join(pack({"topic": "t", "payload": {"seq": i}})
                       for i in range(first, n)))
    s.shutdown(socket.SHUT_WR)
    acked = first
    unpacker = msgpack.Unpacker()
    while True:
        try:
            b = s.recv(65536)
        except OSError:
            break
        if not b:
            break
        unpacker.feed(b)
        for count in unpacker:
            acked = max(acked, first + count)
    s.close()
    return acked


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_oom_acked_events_reach_the_output_or_the_dead_letter(sluice, tmp_path,
                                                               seed):
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    address = "127.0.0.1:%d" % port.getsockname()[1]
    port.close()
    folder = tmp_path / "env"
    folder.mkdir()
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "10.lua").write_text(RULE)
    cfg = lua({"inputs": [{"name": "app", "type": "tcp", "listen": address}],
               "outputs": [{"name": "f", "type": "file",
                            "path": "out.ndjson"}],
               "routes": [{"topics": "*", "to": "f"}],
               "rules": {"dir": str(tmp_path / "rules")}})
    eng = sluice("return " + cfg, env=failing_env(str(folder), seed))
    time.sleep(1.6)  # into the failing window
    acked, deadline = 0, time.time() + 30
    while acked < EVENTS and time.time() < deadline:
        try:
            acked = send_acked(address, acked, EVENTS)
        except OSError:
            time.sleep(0.05)
    assert acked == EVENTS
    assert eng.running()
    assert eng.stop() == 0
    seen = set()
    for path in [eng.path("out.ndjson")] + glob.glob(str(eng.dir) +
                                                     "/var/*.ndjson"):
        if os.path.exists(path):
            for line in open(path):
                seen.add(json.loads(line)["payload"]["seq"])
    missing = [i for i in range(acked) if i not in seen]
    assert missing == [], "%d acked events lost, first %s" % (
        len(missing), missing[:5])
    # the failures happened, and some made a rule fail
    assert os.path.getsize(folder / "fail.log") > 0
    assert eng.find_logs("rule failed; event sent to the dead letter")


def test_oom_at_accept_leaves_the_listener_serving(sluice, tmp_path):
    # a connection that comes while nothing can be allocated is refused;
    # libuv accepts nothing more until the socket it holds is taken, so
    # one left there made the input deaf for good
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    address = "127.0.0.1:%d" % port.getsockname()[1]
    port.close()
    folder = tmp_path / "env"
    folder.mkdir()
    cfg = lua({"inputs": [{"name": "app", "type": "tcp", "listen": address}],
               "outputs": [{"name": "f", "type": "file",
                            "path": "out.ndjson"}],
               "routes": [{"topics": "*", "to": "f"}]})
    env = failing_env(str(folder), 1, prob="1")
    env["FAILMALLOC_DELAY_MS"] = "1500"
    env["FAILMALLOC_DURATION_MS"] = "700"
    started = time.time()  # the process starts in the call
    eng = sluice("return " + cfg, env=env)
    time.sleep(max(0, 1.75 - (time.time() - started)))
    host, p = address.rsplit(":", 1)
    during = socket.create_connection((host, int(p)), timeout=5)
    time.sleep(1.0)  # the window is over
    during.close()
    assert os.path.getsize(folder / "fail.log") > 0
    assert send_acked(address, 0, 10, timeout=5) == 10
    assert eng.running()
