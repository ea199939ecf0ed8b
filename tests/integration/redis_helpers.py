"""A real redis-server for the redis input and output tests, driven with
redis-cli (Debian's redis-tools) as the independent client.

    srv = RedisServer(folder)           redis-server --port P --save ''
                                        --appendonly no, ready once PING
    srv.cli(*args) -> str               one redis-cli command, raw output
    srv.json(*args) -> value            the reply as JSON (redis-cli --json)
    srv.xadd_many(stream, entries)      many XADDs through redis-cli --pipe
                                        (entries: dicts field -> str/bytes)
    srv.xrange(stream) -> [(id, {field: str})]
    srv.pending(stream, group) -> int   XPENDING's count (0 without group)
    srv.stop() / srv.start()            SIGTERM and wait; start again on the
                                        same port (nothing kept: --save '')
"""

import os
import signal
import subprocess
import time

from conftest import free_port, wait_for


def _resp(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class RedisServer:
    def __init__(self, folder, port=None, unixsocket=None):
        self.folder = folder
        self.unixsocket = unixsocket
        self.port = port or free_port()
        self.address = "127.0.0.1:%d" % self.port
        self.proc = None
        self.start()

    def start(self):
        log = open(os.path.join(str(self.folder), "redis-%d.log" % self.port), "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.folder)] +
            (["--unixsocket", self.unixsocket] if self.unixsocket else []),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        wait_for(self._pong, timeout=10, interval=0.02, what="redis-server PING")

    def _pong(self):
        if self.proc.poll() is not None:
            raise AssertionError("redis-server exited with %s" % self.proc.returncode)
        r = subprocess.run(["redis-cli", "-p", str(self.port), "PING"],
                           capture_output=True, text=True)
        return r.stdout.strip() == "PONG"

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cli(self, *args):
        r = subprocess.run(["redis-cli", "-p", str(self.port)] + [str(a) for a in args],
                           capture_output=True, text=True, errors="replace", timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def json(self, *args):
        import json
        out = self.cli("--json", *args)
        return json.loads(out) if out else None

    def xadd_many(self, stream, entries):
        data = b"".join(_resp(["XADD", stream, "*"] +
                              [x for kv in e.items() for x in kv])
                        for e in entries)
        r = subprocess.run(["redis-cli", "-p", str(self.port), "--pipe"],
                           input=data, capture_output=True, timeout=60)
        assert r.returncode == 0 and b"errors: 0" in r.stdout, r.stdout + r.stderr

    def xrange(self, stream):
        out = []
        for eid, flat in self.json("XRANGE", stream, "-", "+") or []:
            out.append((eid, dict(zip(flat[0::2], flat[1::2]))))
        return out

    def xlen(self, stream):
        return int(self.cli("XLEN", stream))

    def pending(self, stream, group):
        r = subprocess.run(["redis-cli", "-p", str(self.port), "--json",
                            "XPENDING", stream, group],
                           capture_output=True, text=True)
        if r.returncode != 0 or not r.stdout.strip().startswith("["):
            return 0
        import json
        return json.loads(r.stdout)[0]

    def wait_xlen(self, stream, n, timeout=20):
        return wait_for(lambda: self.xlen(stream) >= n, timeout=timeout,
                        interval=0.05, what="%d entries in %s" % (n, stream))


def redis_input(address, **kw):
    d = {"name": "rin", "type": "redis", "address": address, "stream": "in",
         "group": "g", "start_id": "0", "block_ms": 200,
         "claim_interval_ms": 200}
    d.update(kw)
    return d


def redis_output(address, **kw):
    d = {"name": "rout", "type": "redis", "address": address, "stream": "out",
         "retry": {"initial_ms": 50, "max_ms": 500}}
    d.update(kw)
    return d
