"""Shared fixtures for the integration suite: they start the real binary.

Run with Debian's interpreter (it has python3-msgpack and python3-pytest):
    SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration

Environment
    SLUICE_BIN    the engine binary (default: build/sluice of this repo)
    SLUICE_ASAN   set when SLUICE_BIN is a sanitizer build: ASAN_OPTIONS
                  gets detect_leaks=1 unless set, and the memory limits of
                  tests may be relaxed (see ASAN below)

Fixture API (import the helpers with `from conftest import ...`)
    sluice                fixture; a factory that starts engines:
        eng = sluice(config, name="sluice", args=(), env=None, wait=True,
                     timeout=START_TIMEOUT)
            config: Lua source text (str) or a dict rendered by lua(). It
            is written to eng.config in a fresh folder eng.dir, so relative
            paths in it ("out.ndjson") land in eng.dir. `run -c` is started
            with stderr (JSON logs) in eng.stderr_path and stdout in
            eng.stdout_path; the call returns once "sluice started" is
            logged, which the engine does once every listener is bound (or,
            when the log level hides it, once every input and the admin
            server of a dict config accept connections). An engine that exits
            before that raises EngineExited with its stderr.
        Engine:
            .proc .pid .dir .config .stderr_path .stdout_path
            .path(rel) -> Path          a file inside eng.dir
            .logs() -> [dict]           the JSON log lines so far
            .find_logs(msg=None, **fields) -> [dict]   those that match
            .stderr() -> str            raw stderr so far
            .wait_log(msg=None, timeout=5, count=1, **fields) -> dict
                                        the count-th line with that msg and
                                        those field values, polled
            .signal(sig)                send a signal
            .wait(timeout=15) -> int    wait for exit; the exit code
            .stop(sig=SIGTERM, timeout=15) -> int
            .kill()                     SIGKILL and reap
            .running() -> bool
            .rss_kb() / .hwm_kb()       VmRSS / VmHWM of /proc/<pid>/status
            .restart(wait=True) -> Engine   same config and folder, a new
                                        process (the old one must be gone)
        Teardown: engines still running get SIGTERM (SIGKILL after 15 s);
        a test fails when an engine's stderr holds a sanitizer report or,
        once it started, a line that is not a JSON object with level and msg.
    run_sluice(*args, cwd=None, timeout=10, input=None) -> CompletedProcess
                              the binary as a command (check, --version);
                              text output; fails on a sanitizer report
    free_port() -> int        a free port on 127.0.0.1, below the kernel's
                              ephemeral range (see free_port)
    lua(value) -> str         Python value as Lua: dicts (str keys) become
                              tables, lists sequences, None nil
    pack(event) -> bytes      msgpack, str as str and bytes as bin
    connect(address, timeout=5) -> socket
                              "host:port" is TCP; anything else a unix path
    send_events(address, events, timeout=10) -> None
                              one connection: write every event (dicts are
                              packed, bytes go as they are), half-close and
                              wait until the engine closes its end, which
                              it does only after it took every event
    wait_read(sock, timeout=5) -> None
                              wait until the engine has read everything
                              sent on this TCP connection (nothing unsent
                              in our send queue, nothing unread in the
                              engine's receive queue; /proc/net/tcp)
    wait_for(pred, timeout=5, interval=0.01, what="") -> value
                              poll pred() until truthy; fail with `what`
    read_lines(path) -> [str] / read_ndjson(path) -> [dict]
                              complete lines of a file (missing file: [])
    wait_lines(path, n, timeout=5) -> [str]
                              poll until the file holds at least n lines
    short_path(name) -> str   a path short enough for a unix socket
    Sink(port=None, reading=True, rcvbuf=None, unix_path=None, keep_raw=True)
                              a native-protocol server in a thread, for tcp
                              and unix outputs; context manager (leaving it
                              fails when the stream did not decode).
        .address              "127.0.0.1:port" (or the unix path)
        .start_reading()      a sink made with reading=False accepts but
                              never reads until this is called
        .events -> [dict]     every event received, in order, over all
                              connections; .raw -> bytes likewise (kept
                              only with keep_raw)
        .connections -> int   connections accepted so far
        .ended -> int         connections read to the end (peer closed)
        .wait(n, timeout=10) -> [dict]   poll until n events arrived
        .wait_flowing(n, stall=20) -> [dict]   poll until n events arrived;
                              fail only when none came for stall seconds
        .close()
    scrape(address) -> [(name, {label: value}, float)]
                              GET http://address/metrics (an engine's admin
                              listen address) and parse the samples
    metric(samples_or_address, name, **labels) -> float
                              the one sample of name whose labels include
                              those given (fails when none or several)
    ASAN                      True under SLUICE_ASAN
"""

import json
import os
import random
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import msgpack
import pytest

ROOT = Path(__file__).resolve().parents[2]
SLUICE_BIN = os.environ.get("SLUICE_BIN") or str(ROOT / "build" / "sluice")
if not os.path.isabs(SLUICE_BIN):
    SLUICE_BIN = str(ROOT / SLUICE_BIN)
ASAN = bool(os.environ.get("SLUICE_ASAN"))
START_TIMEOUT = 20 if ASAN else 10
_SIGTERM = signal.SIGTERM

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:", "WARNING: AddressSanitizer")


class EngineExited(Exception):
    pass


def _engine_env(extra=None):
    env = dict(os.environ)
    if ASAN:
        opts = env.get("ASAN_OPTIONS", "")
        if "detect_leaks" not in opts:
            opts = (opts + ":" if opts else "") + "detect_leaks=1"
        env["ASAN_OPTIONS"] = opts
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    if extra:
        env.update(extra)
    return env


def sanitizer_report(text):
    """The sanitizer report in text, or None."""
    for mark in SANITIZER_MARKS:
        i = text.find(mark)
        if i >= 0:
            return text[max(0, i - 200):i + 4000]
    return None


# ---- small helpers ------------------------------------------------------

_GIVEN_PORTS = set()
_PORT_RANDOM = random.Random()  # its own: a test's random.seed() leaves it


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def write_test_certs(d):
    """Real PEM files in folder d, for configs that only need loadable tls
    files (sluice check loads them as run does): ca.pem (a self-signed CA,
    key ca.key) and client.pem / client.key signed by it."""
    def ossl(*args):
        subprocess.run(["openssl"] + [str(a) for a in args], check=True,
                       capture_output=True, timeout=30)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    ossl("req", "-x509", *ec, "-keyout", d / "ca.key", "-out", d / "ca.pem",
         "-days", "2", "-subj", "/CN=sluice test CA")
    ossl("req", *ec, "-keyout", d / "client.key", "-out", d / "client.csr",
         "-subj", "/CN=client")
    ossl("x509", "-req", "-in", d / "client.csr", "-CA", d / "ca.pem",
         "-CAkey", d / "ca.key", "-set_serial", "7", "-days", "2",
         "-out", d / "client.pem")


def free_port():
    """A port nothing listens on now, and never one this process was given
    before: the kernel may hand the same ephemeral port to two calls in a
    row (seen: one config got it for two listeners and was refused).

    Picked at random below the kernel's ephemeral range, not by binding
    port 0: a port from there is free only until the engine binds it, and
    in between any other process's bind to port 0 (a Sink, a server, the
    suite of another checkout on this shared machine) may get it from the
    kernel (seen: test_forward's engine refused with "address already in
    use" while other suites ran, 1 in ~100 file runs). Below that range
    only another random pick like this one can take it."""
    low = _ephemeral_low()
    if low - 10000 < 2000:  # no room below the range: the kernel's pick
        return _kernel_port()
    for _ in range(1000):
        port = _PORT_RANDOM.randrange(10000, low)
        if port in _GIVEN_PORTS:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))  # no SO_REUSEADDR: strict
            except OSError:
                continue
        _GIVEN_PORTS.add(port)
        return port
    raise RuntimeError("no fresh free port in 1000 tries")


def _kernel_port():
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port
    raise RuntimeError("no fresh free port in 100 tries")


_LUA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LUA_KEYWORDS = {"and", "break", "do", "else", "elseif", "end", "false", "for",
                 "function", "goto", "if", "in", "local", "nil", "not", "or",
                 "repeat", "return", "then", "true", "until", "while"}


def _lua_str(s):
    out = ['"']
    for ch in s.encode("utf-8"):
        c = chr(ch)
        if c in '"\\':
            out.append("\\" + c)
        elif ch < 0x20 or ch >= 0x7f:
            out.append("\\%d" % ch)
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def lua(value):
    """Render a Python value as a Lua expression."""
    if value is None:
        return "nil"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return _lua_str(value)
    if isinstance(value, (list, tuple)):
        return "{" + ", ".join(lua(v) for v in value) + "}"
    if isinstance(value, dict):
        parts = []
        for k, v in value.items():
            if v is None:
                continue
            if isinstance(k, str) and _LUA_NAME.match(k) and k not in _LUA_KEYWORDS:
                parts.append("%s = %s" % (k, lua(v)))
            else:
                parts.append("[%s] = %s" % (lua(k), lua(v)))
        return "{" + ", ".join(parts) + "}"
    raise TypeError("cannot render %r as Lua" % (value,))


def pack(event):
    return msgpack.packb(event, use_bin_type=True)


def _split_address(address):
    if isinstance(address, tuple):
        return address
    m = re.match(r"^(\[[^\]]+\]|[^/:]+):(\d+)$", address)
    if m:
        return (m.group(1).strip("[]"), int(m.group(2)))
    return None


def connect(address, timeout=5):
    hp = _split_address(address)
    if hp:
        s = socket.create_connection(hp, timeout=timeout)
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(address)
    return s


def _encode(events):
    if isinstance(events, (bytes, bytearray)):
        return bytes(events)
    return b"".join(e if isinstance(e, (bytes, bytearray)) else pack(e)
                    for e in events)


def send_events(address, events, timeout=10):
    data = _encode(events)
    with connect(address, timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        # the engine closes its end once it has read (and queued) it all
        while True:
            try:
                if not s.recv(65536):
                    return
            except ConnectionResetError:
                return


def wait_for(pred, timeout=5, interval=0.01, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            pytest.fail("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def _tcp_queues(local_port, peer_port):
    """(tx_queue, rx_queue) bytes of the socket local_port <- peer_port, from
    /proc/net/tcp{,6}; None when there is no such socket."""
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    lp = int(parts[1].rsplit(":", 1)[1], 16)
                    rp = int(parts[2].rsplit(":", 1)[1], 16)
                    if lp == local_port and rp == peer_port:
                        tx, rx = parts[4].split(":")
                        return int(tx, 16), int(rx, 16)
        except FileNotFoundError:
            continue
    return None


def wait_read(sock, timeout=5):
    ours = sock.getsockname()[1]
    engine = sock.getpeername()[1]

    def drained():
        # nothing unsent on our side, nothing unread on the engine's
        mine, theirs = _tcp_queues(ours, engine), _tcp_queues(engine, ours)
        return mine is not None and theirs is not None and \
            mine[0] == 0 and theirs[1] == 0
    wait_for(drained, timeout, what="the engine to read the connection")


def read_lines(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8").split("\n")
    return lines[:-1]  # the part after the last newline is not a line yet


def read_ndjson(path):
    return [json.loads(l) for l in read_lines(path)]


def wait_lines(path, n, timeout=5):
    return wait_for(lambda: (lambda ls: ls if len(ls) >= n else None)(read_lines(path)),
                    timeout, what="%d lines in %s" % (n, path))


_short_dir = None


def short_path(name):
    global _short_dir
    if _short_dir is None:
        _short_dir = tempfile.mkdtemp(prefix="sl-")
    return os.path.join(_short_dir, "%d-%s" % (next(_counter), name))


class _Counter:
    def __init__(self):
        self.n = 0
        self.lock = threading.Lock()

    def __next__(self):
        with self.lock:
            self.n += 1
            return self.n


_counter = _Counter()


def _proc_status(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except FileNotFoundError:
        return None
    return None


# ---- the engine ---------------------------------------------------------

class Engine:
    # engines sharing a folder need their own: two processes writing one
    # file each at its own offset overwrite each other's lines
    log_prefix = ""

    def __init__(self, factory, name, folder, config_path, args, env):
        self.factory = factory
        self.name = name
        self.dir = folder
        self.config = config_path
        self.args = list(args)
        self.env = env
        self.proc = None
        self.stderr_path = None
        self.stdout_path = None
        self.runs = 0
        self.started = False  # stderr is checked as JSON lines once started

    # process
    def _start(self, wait=True, timeout=START_TIMEOUT, ports=()):
        self.runs += 1
        suffix = "" if self.runs == 1 else ".%d" % self.runs
        self.stderr_path = self.dir / ("%sstderr%s.log" % (self.log_prefix, suffix))
        self.stdout_path = self.dir / ("%sstdout%s.txt" % (self.log_prefix, suffix))
        with open(self.stderr_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.proc = subprocess.Popen(
                [SLUICE_BIN, "run", "-c", str(self.config)] + self.args,
                cwd=str(self.dir), stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                env=_engine_env(self.env))
        self.pid = self.proc.pid
        if wait:
            self._wait_started(timeout, ports)
        return self

    def _wait_started(self, timeout, ports):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise EngineExited("engine exited with %s before it started:\n%s"
                                   % (self.proc.returncode, self.stderr()))
            # logged once every listener (inputs, admin) is bound
            if "sluice started" in self.stderr():
                self.started = True
                return
            if ports and all(_accepts(p) for p in ports):
                self.started = True
                return
            if time.monotonic() > deadline:
                raise EngineExited("engine did not start within %ss:\n%s"
                                   % (timeout, self.stderr()))
            time.sleep(0.01)

    def restart(self, wait=True, timeout=START_TIMEOUT):
        assert self.proc is None or self.proc.poll() is not None, "still running"
        self.factory.check(self)
        return self._start(wait, timeout, self.factory.ports_of(self))

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=15):
        return self.proc.wait(timeout=timeout)

    def stop(self, sig=_SIGTERM, timeout=15):
        if self.running():
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill(self):
        if self.running():
            self.proc.kill()
        return self.proc.wait(timeout=15)

    def rss_kb(self):
        return _proc_status(self.pid, "VmRSS")

    def hwm_kb(self):
        return _proc_status(self.pid, "VmHWM")

    # files and logs
    def path(self, rel):
        return self.dir / rel

    def stderr(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def logs(self):
        out = []
        for line in self.stderr().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def find_logs(self, msg=None, **fields):
        return [l for l in self.logs()
                if (msg is None or l.get("msg") == msg)
                and all(l.get(k) == v for k, v in fields.items())]

    def wait_log(self, msg=None, timeout=5, count=1, **fields):
        def found():
            hits = self.find_logs(msg, **fields)
            return hits[count - 1] if len(hits) >= count else None
        return wait_for(found, timeout, what="log line %r %r (stderr:\n%s)"
                        % (msg, fields, self.stderr()[-3000:]))


def _accepts(address):
    try:
        s = connect(address, timeout=0.2)
        s.close()
        return True
    except OSError:
        return False


# SLUICE_TEST_WORKERS=N: every engine a suite starts runs with workers = N
# (unless its config sets workers itself), to re-run suites over N workers.
TEST_WORKERS = os.environ.get("SLUICE_TEST_WORKERS")


def with_test_workers(text):
    if not TEST_WORKERS or "workers" in text:
        return text
    stripped = text.lstrip()
    if not stripped.startswith("return {"):
        return text
    i = text.index("return {") + len("return {")
    return text[:i] + " workers = %s," % TEST_WORKERS + text[i:]


class _Factory:
    def __init__(self, tmp_path_factory):
        self.tmp = tmp_path_factory
        self.engines = []

    def __call__(self, config, name="sluice", args=(), env=None, wait=True,
                 timeout=START_TIMEOUT):
        folder = self.tmp.mktemp("e")
        path = folder / "sluice.conf.lua"
        text = config if isinstance(config, str) else "return " + lua(config) + "\n"
        text = with_test_workers(text)
        path.write_text(text)
        eng = Engine(self, name, folder, path, args, env)
        eng.config_dict = config if isinstance(config, dict) else None
        self.engines.append(eng)
        return eng._start(wait, timeout, self.ports_of(eng))

    @staticmethod
    def ports_of(eng):
        """Addresses to probe for start-up, only when the log level hides
        "sluice started" (a probe is a connection the engine counts). Every
        listener is probed, never one of several: the engine binds them one
        after the other, so one accepting says nothing of the next."""
        cfg = eng.config_dict
        if not cfg:
            return ()
        level = cfg.get("log_level")
        if "--log-level" in eng.args:
            level = eng.args[eng.args.index("--log-level") + 1]
        if level not in ("warn", "error"):
            return ()
        out = []
        for i in cfg.get("inputs", []):
            if i.get("type") in ("tcp", "http", "forward"):
                out.append(i["listen"])
            elif i.get("type") == "unix":
                p = i["listen"]
                out.append(p if os.path.isabs(p) else str(eng.dir / p))
        admin = cfg.get("admin") or {}
        if admin.get("listen"):
            out.append(admin["listen"])
        return tuple(out)

    def check(self, eng):
        text = eng.stderr()
        report = sanitizer_report(text)
        if report:
            pytest.fail("sanitizer report from %s (%s):\n%s"
                        % (eng.name, eng.stderr_path, report), pytrace=False)
        if not eng.started and "sluice started" not in text:
            return
        for line in text.splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if not isinstance(obj, dict) or "level" not in obj or "msg" not in obj:
                pytest.fail("%s wrote a log line that is not a JSON object with "
                            "level and msg: %r" % (eng.name, line), pytrace=False)

    def teardown(self):
        for eng in self.engines:
            if eng.running():
                eng.proc.send_signal(signal.SIGTERM)
                try:
                    eng.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    eng.proc.kill()
                    eng.proc.wait()
        for eng in self.engines:
            self.check(eng)


@pytest.fixture
def sluice(tmp_path_factory):
    f = _Factory(tmp_path_factory)
    yield f
    f.teardown()


def run_sluice(*args, cwd=None, timeout=10, input=None):
    r = subprocess.run([SLUICE_BIN] + [str(a) for a in args], cwd=cwd,
                       capture_output=True, text=True, timeout=timeout,
                       input=input, env=_engine_env())
    report = sanitizer_report(r.stderr)
    if report:
        pytest.fail("sanitizer report from sluice %s:\n%s" % (" ".join(map(str, args)), report),
                    pytrace=False)
    return r


# ---- the admin endpoint's metrics -------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(address, timeout=5):
    with urllib.request.urlopen("http://%s/metrics" % address, timeout=timeout) as r:
        text = r.read().decode()
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, "not a Prometheus sample: %r" % line
        labels = dict(_LABEL.findall(m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def metrics_flat(admin_port):
    """The admin /metrics of the engine on admin_port as {"name{labels}": value}."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin_port,
                                timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def metric(samples, name, **labels):
    if isinstance(samples, str):
        samples = scrape(samples)
    hits = [v for n, l, v in samples
            if n == name and all(l.get(k) == want for k, want in labels.items())]
    assert len(hits) == 1, "%d samples of %s%r" % (len(hits), name, labels)
    return hits[0]


# ---- a native-protocol sink ----------------------------------------------

class Sink:
    """A server for tcp/unix outputs: decodes the msgpack event stream."""

    def __init__(self, port=None, reading=True, rcvbuf=None, unix_path=None,
                 keep_raw=True):
        self.keep_raw = keep_raw
        if unix_path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if os.path.exists(unix_path):
                os.unlink(unix_path)
            self.sock.bind(unix_path)
            self.address = unix_path
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if rcvbuf:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.bind(("127.0.0.1", port or 0))
            self.port = self.sock.getsockname()[1]
            self.address = "127.0.0.1:%d" % self.port
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self._reading = threading.Event()
        if reading:
            self._reading.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._events = []
        self._raw = bytearray()
        self.connections = 0
        self.ended = 0  # connections read to their end (the peer closed)
        self.errors = []
        self._conns = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def start_reading(self):
        self._reading.set()

    @property
    def events(self):
        with self._lock:
            return list(self._events)

    @property
    def raw(self):
        with self._lock:
            return bytes(self._raw)

    def wait(self, n, timeout=10):
        try:
            wait_for(lambda: len(self._events) >= n, timeout,
                     what="%d events at the sink" % n)
        except pytest.fail.Exception:
            # the count at the timeout: the one at the call read as a
            # sink that stopped when events were missing
            pytest.fail("timed out after %.1fs waiting for %d events at the "
                        "sink (have %d)" % (timeout, n, len(self._events)))
        return self.events

    def wait_flowing(self, n, stall=20):
        """Wait for n events however long the flow takes, failing once no
        event came for stall seconds: for a test whose point is that the
        flow goes on (it resumed, nothing is lost), not how fast it goes.
        A fixed timeout there measured the machine: 150000 events through
        an ASan build on a loaded 2-core VM took more than 60 s."""
        last, since = -1, time.monotonic()
        while True:
            have = len(self._events)
            if have >= n:
                return self.events
            if have != last:
                last, since = have, time.monotonic()
            elif time.monotonic() - since > stall:
                pytest.fail("no event at the sink for %.0fs waiting for %d "
                            "(have %d)" % (stall, n, have))
            time.sleep(0.05)

    def _run(self):
        threads = []
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            self.connections += 1
            self._conns.append(c)
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            t.start()
            threads.append(t)

    def _serve(self, c):
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        c.settimeout(0.05)
        try:
            while not self._stop.is_set():
                if not self._reading.wait(0.05):
                    continue
                try:
                    data = c.recv(1 << 20)
                except socket.timeout:
                    continue
                except OSError:
                    break
                if not data:
                    self.ended += 1
                    break
                unpacker.feed(data)
                with self._lock:
                    if self.keep_raw:
                        self._raw += data
                    for ev in unpacker:
                        self._events.append(ev)
        except Exception as e:  # a decode error is a test failure
            self.errors.append(e)
        finally:
            c.close()

    def close(self):
        self._stop.set()
        try:
            self.sock.close()
        except OSError:
            pass
        self._thread.join(timeout=5)
        for c in self._conns:
            try:
                c.close()
            except OSError:
                pass
        if isinstance(self.address, str) and self.address.startswith("/"):
            try:
                os.unlink(self.address)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        assert not self.errors, "the sink could not decode the stream: %r" % self.errors


def second_copy_starts(eng, env, settle=1.0):
    """Start eng's config file a second time, from its folder, with env on
    top of eng's: True when it printed "sluice started" and still runs
    after settle seconds (a second copy of an example meant to run several
    times: not refused by the first one's state folder lock). Stopped with
    SIGTERM before returning; its stderr is eng.dir / "second.log"."""
    log = eng.dir / "second.log"
    with open(str(log), "wb") as err:
        p = subprocess.Popen([SLUICE_BIN, "run", "-c", str(eng.config)],
                             cwd=str(eng.dir), stdout=subprocess.DEVNULL,
                             stderr=err, stdin=subprocess.DEVNULL,
                             env=_engine_env(dict(eng.env or {}, **env)))
    try:
        wait_for(lambda: b"sluice started" in log.read_bytes() or
                 p.poll() is not None, 10, what="the second copy to start")
        time.sleep(settle)
        running = p.poll() is None
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=20)
    assert running, log.read_text()
    return running
