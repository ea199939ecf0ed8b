"""TLS and mTLS on every network endpoint (issue 11, item 2), through the
real binary and real clients and servers: `openssl s_client`/`s_server`,
`curl`, and sluice itself on the other end. Certificates are made here with
the `openssl` CLI: a CA, a server certificate for localhost/127.0.0.1, a
rotated one, an expired one, one for another host, client certificates
from the CA and from another CA.

Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_tls.py
"""

import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time

import msgpack
import pytest

from conftest import (SLUICE_BIN, connect, free_port, lua, metric, pack, read_ndjson,
                      run_sluice, wait_for, wait_lines)


def got_lines(path, n, timeout=10):
    """The first n events of an ndjson output file, once there are n."""
    wait_lines(path, n, timeout=timeout)
    return read_ndjson(path)


def openssl(*args):
    subprocess.run(["openssl"] + [str(a) for a in args], check=True,
                   capture_output=True, timeout=30)


class Certs:
    def __init__(self, d):
        self.d = d

    def __getattr__(self, name):
        return str(self.d / name)

    def ca(self, name, cn):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
                "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                self.d / (name + ".key"), "-out", self.d / (name + ".pem"),
                "-days", "30", "-subj", "/CN=" + cn)

    def leaf(self, name, cn, san, ca="ca", days=30):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", self.d / (name + ".key"), "-out",
                self.d / (name + ".csr"), "-subj", "/CN=" + cn)
        ext = self.d / (name + ".ext")
        ext.write_text("subjectAltName=%s\n" % san)
        openssl("x509", "-req", "-in", self.d / (name + ".csr"), "-CA",
                self.d / (ca + ".pem"), "-CAkey", self.d / (ca + ".key"),
                "-set_serial", random.randint(1, 2 ** 62), "-days", days,
                "-extfile", ext, "-out", self.d / (name + ".pem"))


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    c = Certs(tmp_path_factory.mktemp("certs"))
    c.ca("ca", "sluice test CA")
    c.ca("rogue_ca", "another CA")
    local = "DNS:localhost,IP:127.0.0.1"
    c.leaf("server", "central", local)
    c.leaf("rotated", "central-rotated", local)
    c.leaf("expired", "central-expired", local, days=-1)  # notAfter passed
    c.leaf("elsewhere", "elsewhere", "DNS:elsewhere.example")
    c.leaf("client", "edge-1", "DNS:edge-1.example")
    c.leaf("intruder", "intruder", "DNS:intruder.example")
    c.leaf("rogue_client", "edge-1", "DNS:edge-1.example", ca="rogue_ca")
    return c


def server_tls(certs, name="server", **kw):
    t = {"cert_file": getattr(certs, name + ".pem"),
         "key_file": getattr(certs, name + ".key")}
    t.update(kw)
    return t


def client_tls(certs, name=None, **kw):
    t = {"ca_file": certs.__getattr__("ca.pem")}
    if name:
        t["cert_file"] = getattr(certs, name + ".pem")
        t["key_file"] = getattr(certs, name + ".key")
    t.update(kw)
    return t


def s_client(port, *args, data=b"", ca=None, host="localhost"):
    """openssl s_client to 127.0.0.1:port sending data; its result."""
    cmd = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port,
           "-verify_return_error", "-no_ign_eof", "-brief"]
    if ca:
        cmd += ["-CAfile", ca, "-verify_hostname", host]
    cmd += [str(a) for a in args]
    return subprocess.run(cmd, input=data, capture_output=True, timeout=20)


def events_bytes(*payloads):
    return b"".join(pack({"topic": "t", "payload": p}) for p in payloads)


def listener(sluice, certs, tls, out_name="out.ndjson", **top):
    port = free_port()
    cfg = {"inputs": [{"name": "in", "type": "tcp",
                       "listen": "127.0.0.1:%d" % port, "tls": tls}],
           "outputs": [{"name": "f", "type": "file", "path": out_name}],
           "routes": [{"topics": "*", "to": "f"}]}
    cfg.update(top)
    eng = sluice(cfg)
    eng.port = port
    eng.out = eng.path(out_name)
    return eng


# ---- a TLS listener ------------------------------------------------------


def test_tcp_input_speaks_tls_13_to_s_client_and_takes_its_events(sluice, certs):
    eng = listener(sluice, certs, server_tls(certs))
    r = s_client(eng.port, data=events_bytes(0, 1, 2), ca=certs.__getattr__("ca.pem"))
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "Protocol version: TLSv1.3" in err  # 1.3 preferred
    lines = got_lines(eng.out, 3)
    assert [l["payload"] for l in lines] == [0, 1, 2]
    # no client certificate: no identity header
    assert "sluice-peer" not in lines[0].get("headers", {})


def test_plain_tcp_bytes_on_a_tls_listener_deliver_nothing(sluice, certs):
    eng = listener(sluice, certs, server_tls(certs))
    s = connect("127.0.0.1:%d" % eng.port)
    s.sendall(events_bytes(0))
    s.settimeout(10)
    try:
        while s.recv(4096):
            pass  # the server's alert, then the close
    except OSError:
        pass
    s.close()
    eng.wait_log("TLS handshake refused", listener="in")
    assert not os.path.exists(eng.out) or read_ndjson(eng.out) == []


@pytest.mark.parametrize("flag", ["-tls1", "-tls1_1"])
def test_tls_listener_refuses_tls_1_0_and_1_1(sluice, certs, flag):
    eng = listener(sluice, certs, server_tls(certs))
    # SECLEVEL=0 so the client offers the old version instead of refusing
    # to itself: the refusal must be the server's
    r = s_client(eng.port, flag, "-cipher", "DEFAULT@SECLEVEL=0",
                 data=events_bytes(1))
    assert r.returncode != 0
    assert b"alert protocol version" in r.stderr
    line = eng.wait_log("TLS handshake refused", listener="in")
    assert line["reason"] == "unsupported protocol"
    assert line["peer"].startswith("127.0.0.1:")
    assert not os.path.exists(eng.out) or read_ndjson(eng.out) == []


def test_min_version_13_refuses_a_tls_12_client(sluice, certs):
    eng = listener(sluice, certs, server_tls(certs, min_version="1.3"))
    r = s_client(eng.port, "-tls1_2", data=events_bytes(1))
    assert r.returncode != 0
    eng.wait_log("TLS handshake refused", reason="unsupported protocol")
    r = s_client(eng.port, "-tls1_3", data=events_bytes(2),
                 ca=certs.__getattr__("ca.pem"))
    assert r.returncode == 0, r.stderr.decode()
    assert [l["payload"] for l in got_lines(eng.out, 1)] == [2]


def test_ciphers_limits_the_tls_12_suites(sluice, certs):
    eng = listener(sluice, certs, server_tls(
        certs, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"))
    ca = certs.__getattr__("ca.pem")
    r = s_client(eng.port, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384",
                 data=events_bytes("refused"), ca=ca)
    assert r.returncode != 0
    assert eng.wait_log("TLS handshake refused")["reason"] == "no shared cipher"
    r = s_client(eng.port, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256",
                 data=events_bytes("taken"), ca=ca)
    assert r.returncode == 0, r.stderr.decode()
    assert [l["payload"] for l in got_lines(eng.out, 1)] == ["taken"]


def test_a_cipher_list_that_matches_nothing_stops_the_start(sluice, certs):
    from conftest import EngineExited
    with pytest.raises(EngineExited) as ex:
        listener(sluice, certs, server_tls(certs, ciphers="NOT-A-CIPHER"))
    assert "ciphers: no cipher match" in str(ex.value)


def test_sluice_check_loads_the_tls_files_as_run_does(certs, tmp_path):
    """check only saw that the files could be read: a key that does not
    match its certificate, a certificate file that is no PEM, or a cipher
    list that matches nothing passed check and stopped run. Each is now a
    check error naming the block and the file."""
    import subprocess
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")

    def check(inp_tls, out_tls=None):
        conf = tmp_path / "c.lua"
        conf.write_text("return %s" % lua({
            "inputs": [{"name": "in", "type": "tcp", "listen": "127.0.0.1:%d" % free_port(),
                        "tls": inp_tls}],
            "outputs": [{"name": "out", "type": "tcp", "address": "localhost:9",
                         "tls": out_tls or client_tls(certs)}],
            "routes": [{"topics": "*", "to": "out"}]}))
        return subprocess.run([SLUICE_BIN, "check", "-c", str(conf)],
                              capture_output=True, text=True, timeout=30)

    r = check(server_tls(certs))
    assert r.returncode == 0, r.stderr
    r = check({"cert_file": getattr(certs, "server.pem"),
               "key_file": getattr(certs, "client.key")})
    assert r.returncode == 1, r.stdout
    assert "inputs[1] (in).tls:" in r.stderr and "client.key" in r.stderr, r.stderr
    assert "tls files rejected" in r.stderr, r.stderr
    r = check({"cert_file": str(junk), "key_file": getattr(certs, "server.key")})
    assert r.returncode == 1 and "junk.pem" in r.stderr, r.stderr
    r = check(server_tls(certs, ciphers="NOT-A-CIPHER"))
    assert r.returncode == 1 and "ciphers" in r.stderr, r.stderr
    r = check(server_tls(certs), client_tls(certs, ca_file=str(junk)))
    assert r.returncode == 1 and "outputs[1] (out).tls:" in r.stderr, r.stderr


def test_handshake_timeout_closes_a_client_that_stalls_mid_handshake(sluice, certs):
    eng = listener(sluice, certs, server_tls(certs, handshake_timeout_ms=300))
    s = connect("127.0.0.1:%d" % eng.port)
    s.sendall(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello's first bytes
    s.settimeout(10)
    start = time.monotonic()
    try:
        assert s.recv(4096) == b""
    except ConnectionResetError:
        pass
    took = time.monotonic() - start
    s.close()
    assert took < 8
    line = eng.wait_log("TLS handshake refused", listener="in")
    assert line["reason"] == "handshake timed out"


def test_backpressure_over_tls_pauses_and_resumes_without_loss(sluice, certs):
    """A full output stops the TLS connection's reads (plaintext the SSL
    already decrypted waits in it); once the output drains, every event
    arrives, in order."""
    from conftest import Sink
    import ssl
    sink = Sink(reading=False, rcvbuf=4096)
    try:
        port = free_port()
        sluice({"inputs": [{"name": "in", "type": "tcp", "listen": "127.0.0.1:%d" % port,
                            "tls": server_tls(certs)}],
                "outputs": [{"name": "o", "type": "tcp", "address": sink.address,
                             "queue": {"max_events": 100, "when_full": "block"}}],
                "routes": [{"topics": "*", "to": "o"}]})
        ctx = ssl.create_default_context(cafile=certs.__getattr__("ca.pem"))
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                            server_hostname="localhost")
        n = 60000  # 24 MB: more than the socket buffers on the way hold
        data = b"".join(pack({"topic": "t", "payload": [i, "x" * 380]})
                        for i in range(n))
        writer = threading.Thread(target=s.sendall, args=(data,), daemon=True)
        writer.start()
        time.sleep(1)
        assert writer.is_alive(), "the engine kept reading with its output full"
        sink.start_reading()
        got = sink.wait(n, timeout=60)
        assert [e["payload"][0] for e in got] == list(range(n))
        writer.join(10)
        s.close()
    finally:
        sink.close()


def test_an_expired_certificate_is_served_with_a_warning_and_refused_by_clients(
        sluice, certs):
    eng = listener(sluice, certs, server_tls(certs, "expired"))
    line = eng.wait_log("TLS certificate outside its validity; peers will refuse it")
    assert line["problem"] == "expired" and line["endpoint"] == "in"
    r = s_client(eng.port, data=events_bytes(1), ca=certs.__getattr__("ca.pem"))
    assert r.returncode != 0
    assert b"certificate has expired" in r.stderr


# ---- mTLS ----------------------------------------------------------------


def test_mtls_listener_admits_only_allowed_client_certificates(sluice, certs):
    admin = free_port()
    eng = listener(sluice, certs, server_tls(
        certs, client_ca_file=certs.__getattr__("ca.pem"),
        allow_subjects=["edge-1", "edge-2.example"]),
        admin={"listen": "127.0.0.1:%d" % admin})
    ca = certs.__getattr__("ca.pem")

    def send(payload, *args):
        return s_client(eng.port, *args, data=events_bytes(payload), ca=ca)

    send("no-cert")
    line = eng.wait_log("TLS handshake refused", count=1)
    assert line["reason"] == "peer did not return a certificate"
    assert line["subject"] == "none"

    send("rogue", "-cert", certs.__getattr__("rogue_client.pem"),
         "-key", certs.__getattr__("rogue_client.key"))
    line = eng.wait_log("TLS handshake refused", count=2)
    assert line["reason"].startswith("certificate: unable to get")
    assert line["subject"] == "edge-1"  # what it claimed

    send("intruder", "-cert", certs.__getattr__("intruder.pem"),
         "-key", certs.__getattr__("intruder.key"))
    line = eng.wait_log("TLS handshake refused", count=3)
    assert line["reason"] == "certificate subject not in allow_subjects"
    assert line["subject"] == "intruder"

    r = send("edge", "-cert", certs.__getattr__("client.pem"),
             "-key", certs.__getattr__("client.key"))
    assert r.returncode == 0, r.stderr.decode()
    got = got_lines(eng.out, 1)
    assert [l["payload"] for l in got] == ["edge"]
    assert got[0]["headers"]["sluice-peer"] == "edge-1"  # for rules
    time.sleep(0.3)  # nothing else arrives late
    assert [l["payload"] for l in read_ndjson(eng.out)] == ["edge"]
    assert metric("127.0.0.1:%d" % admin, "sluice_listener_connections_refused_total",
                  listener="in", reason="tls") == 3


def test_rules_route_on_the_peer_identity(sluice, certs, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10_peer.lua").write_text(
        'return { on_event = function(ev)\n'
        '  if ev.headers["sluice-peer"] == "edge-1" then return "trusted" end\n'
        '  return "untrusted"\n'
        'end }\n')
    port = free_port()
    eng = sluice({"inputs": [{"name": "in", "type": "tcp", "listen": "127.0.0.1:%d" % port,
                              "tls": server_tls(certs, client_ca_file=certs.__getattr__("ca.pem"))}],
                  "outputs": [{"name": "trusted", "type": "file", "path": "trusted.ndjson"},
                              {"name": "untrusted", "type": "file", "path": "untrusted.ndjson"}],
                  "routes": [{"topics": "*", "to": "untrusted"}],
                  "rules": {"dir": str(rules)}})
    ca = certs.__getattr__("ca.pem")
    for name, payload in (("client", "from edge-1"), ("intruder", "from intruder")):
        r = s_client(port, "-cert", getattr(certs, name + ".pem"), "-key",
                     getattr(certs, name + ".key"), data=events_bytes(payload), ca=ca)
        assert r.returncode == 0, r.stderr.decode()
    assert [l["payload"] for l in got_lines(eng.path("trusted.ndjson"), 1)] == ["from edge-1"]
    assert [l["payload"] for l in got_lines(eng.path("untrusted.ndjson"), 1)] == \
        ["from intruder"]


def test_sluice_peer_header_cannot_be_forged_over_mtls(sluice, certs):
    eng = listener(sluice, certs, server_tls(
        certs, client_ca_file=certs.__getattr__("ca.pem")))
    data = pack({"topic": "t", "payload": 1, "headers": {"sluice-peer": "admin"}})
    r = s_client(eng.port, "-cert", certs.__getattr__("client.pem"), "-key",
                 certs.__getattr__("client.key"), data=data,
                 ca=certs.__getattr__("ca.pem"))
    assert r.returncode == 0, r.stderr.decode()
    assert got_lines(eng.out, 1)[0]["headers"]["sluice-peer"] == "edge-1"


# ---- the tcp output as a TLS client ------------------------------------------


class SServer:
    """openssl s_server on a free port; what it receives is kept."""

    def __init__(self, cert, key, *args):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["openssl", "s_server", "-accept", str(self.port),
             "-cert", cert, "-key", key, "-quiet"] + list(args),
            # stdin stays open: at its end s_server closes the connection
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL)
        self.data = bytearray()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        wait_for(lambda: _accepts(self.port), 10, what="s_server up")

    def _read(self):
        while True:
            d = self.proc.stdout.read1(65536)
            if not d:
                return
            self.data += d

    def close(self):
        self.proc.stdin.close()
        self.proc.kill()
        self.proc.wait()


def _unpack(b):
    u = msgpack.Unpacker(raw=False)
    u.feed(b)
    return list(u)


def _accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def edge(sluice, to_address, tls, ack=False, buffer=None, name="edge"):
    port = free_port()
    out = {"name": "central", "type": "tcp", "address": to_address,
           "ack": ack, "tls": tls, "retry": {"initial_ms": 20, "max_ms": 200}}
    if buffer:
        out["buffer"] = buffer
    eng = sluice({"inputs": [{"name": "in", "type": "tcp",
                              "listen": "127.0.0.1:%d" % port}],
                  "outputs": [out], "routes": [{"topics": "*", "to": "central"}],
                  "shutdown_timeout": 1},
                 name=name)
    eng.address = "127.0.0.1:%d" % port
    return eng


def send_plain(address, *payloads):
    s = connect(address)
    s.sendall(events_bytes(*payloads))
    s.close()


def test_tcp_output_sends_over_mtls_to_openssl_s_server(sluice, certs):
    srv = SServer(certs.__getattr__("server.pem"), certs.__getattr__("server.key"),
                  "-Verify", "1", "-verify_return_error",
                  "-CAfile", certs.__getattr__("ca.pem"))
    try:
        # a host name: checked against the certificate's DNS names
        e = edge(sluice, "localhost:%d" % srv.port, client_tls(certs, "client"))
        send_plain(e.address, 10, 11)
        wait_for(lambda: len(_unpack(bytes(srv.data))) >= 2, 10,
                 what="events at s_server")
        assert [x["payload"] for x in _unpack(bytes(srv.data))] == [10, 11]
    finally:
        srv.close()


@pytest.mark.parametrize("case,cert,tls,reason", [
    ("wrong CA", "server", {"ca_file": "rogue_ca.pem"},
     "certificate: unable to get local issuer certificate"),
    ("expired", "expired", {"ca_file": "ca.pem"},
     "certificate: certificate has expired"),
    ("not for the address", "elsewhere", {"ca_file": "ca.pem"},
     "certificate: IP address mismatch"),
    ("wrong host name", "elsewhere", {"ca_file": "ca.pem"},
     "certificate: hostname mismatch"),  # dialled as localhost
    ("wrong server_name", "server",
     {"ca_file": "ca.pem", "server_name": "central.example"},
     "certificate: hostname mismatch"),
])
def test_tcp_output_refuses_a_server_it_cannot_verify(sluice, certs, case, cert, tls, reason):
    srv = SServer(getattr(certs, cert + ".pem"), getattr(certs, cert + ".key"))
    tls = dict(tls, ca_file=getattr(certs, tls["ca_file"]))
    host = "localhost" if case == "wrong host name" else "127.0.0.1"
    try:
        e = edge(sluice, "%s:%d" % (host, srv.port), tls)
        send_plain(e.address, 1)
        line = e.wait_log("TLS handshake with the peer failed", timeout=10)
        assert line["reason"] == reason, case
        assert line["output"] == "central"
        time.sleep(0.3)
        assert _unpack(bytes(srv.data)) == []  # nothing sent in the clear
    finally:
        srv.close()


def test_server_name_sets_the_name_checked_and_sni(sluice, certs):
    srv = SServer(certs.__getattr__("elsewhere.pem"),
                  certs.__getattr__("elsewhere.key"))
    try:
        e = edge(sluice, "127.0.0.1:%d" % srv.port,
                 client_tls(certs, server_name="elsewhere.example"))
        send_plain(e.address, 7)
        wait_for(lambda: _unpack(bytes(srv.data)), 10, what="event at s_server")
        assert [x["payload"] for x in _unpack(bytes(srv.data))] == [7]
    finally:
        srv.close()


# ---- sluice to sluice over mTLS, with acks and kill -9 -------------------


class Producer:
    """Sends events 0..n-1 to a sluice in ack mode, in chunks, each chunk
    waiting for its acks; on a lost connection it reconnects and resends
    from the last ack (what a sluice client does). acked: events the engine
    acknowledged, in order."""

    def __init__(self, address, n, chunk=50):
        self.address, self.n, self.chunk = address, n, chunk
        self.acked = 0
        self.reconnects = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _session(self):
        s = connect(self.address, timeout=2)
        s.settimeout(15)
        s.sendall(msgpack.packb({"sluice": 1, "ack": True}))
        base = self.acked
        u = msgpack.Unpacker()
        sent = base
        try:
            while self.acked < self.n:
                end = min(sent + self.chunk, self.n)
                s.sendall(b"".join(pack({"topic": "t", "id": "e%05d" % i,
                                         "payload": i})
                                   for i in range(sent, end)))
                sent = end
                while self.acked < sent:
                    d = s.recv(4096)
                    if not d:
                        raise ConnectionError("closed")
                    u.feed(d)
                    for count in u:
                        self.acked = max(self.acked, base + count)
        finally:
            s.close()

    def _run(self):
        deadline = time.monotonic() + 120
        while self.acked < self.n and time.monotonic() < deadline:
            try:
                self._session()
            except OSError:
                self.reconnects += 1
                time.sleep(0.05)
        self.done.set()


def central_and_edge(sluice, certs, tmp_path):
    cport = free_port()
    central = sluice({
        "inputs": [{"name": "in", "type": "tcp", "listen": "127.0.0.1:%d" % cport,
                    "tls": server_tls(certs, client_ca_file=certs.__getattr__("ca.pem"),
                                      allow_subjects=["edge-1"])}],
        "outputs": [{"name": "f", "type": "file", "path": "out.ndjson",
                     "buffer": {"type": "disk", "path": str(tmp_path / "cbuf"),
                                "fsync": "always"}}],
        "routes": [{"topics": "*", "to": "f"}]}, name="central")
    e = edge(sluice, "127.0.0.1:%d" % cport,
             client_tls(certs, "client"), ack=True,
             buffer={"type": "disk", "path": str(tmp_path / "ebuf"),
                     "fsync": "always"})
    return central, e


def delivered_ids(central):
    if not os.path.exists(central.path("out.ndjson")):
        return set()
    return {l["payload"] for l in read_ndjson(central.path("out.ndjson"))}


@pytest.mark.parametrize("victim", ["central", "edge"])
def test_sluice_to_sluice_over_mtls_loses_no_acked_event_on_kill9(sluice, certs,
                                                                 tmp_path, victim):
    central, e = central_and_edge(sluice, certs, tmp_path)
    n = 3000
    p = Producer(e.address, n)
    wait_for(lambda: len(delivered_ids(central)) >= 800, 60,
             what="first events at central")
    target = central if victim == "central" else e
    target.kill()  # kill -9
    acked_at_kill = p.acked
    target.restart()
    assert p.done.wait(120), "producer stuck at %d acked" % p.acked
    assert p.acked == n
    wait_for(lambda: len(delivered_ids(central)) >= n, 60,
             what="all %d events at central (have %d)"
             % (n, len(delivered_ids(central))))
    got = delivered_ids(central)
    assert got == set(range(n)), "acked and lost: %d" % len(set(range(n)) - got)
    print("kill -9 %s at %d acked: delivered %d of %d, producer reconnects %d"
          % (victim, acked_at_kill, len(got), n, p.reconnects))
    # the channel was mTLS: central saw edge-1's certificate on every event
    peers = {l["headers"]["sluice-peer"] for l in read_ndjson(central.path("out.ndjson"))}
    assert peers == {"edge-1"}


# ---- certificate rotation --------------------------------------------------


def subject_of_server(port, certs):
    """The CN of the certificate a new client is shown (verified)."""
    r = s_client(port, "-cert", certs.__getattr__("client.pem"), "-key",
                 certs.__getattr__("client.key"), ca=certs.__getattr__("ca.pem"))
    assert r.returncode == 0, r.stderr.decode()
    for line in r.stderr.decode().splitlines():
        if line.startswith("Peer certificate: CN = "):
            return line.split("CN = ", 1)[1].strip()
    raise AssertionError(r.stderr.decode())


def test_reload_rotates_the_certificate_without_dropping_connections(sluice, certs,
                                                                      tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(certs.__getattr__("server.pem"), live / "cert.pem")
    shutil.copy(certs.__getattr__("server.key"), live / "key.pem")
    cport = free_port()
    central = sluice({
        "inputs": [{"name": "in", "type": "tcp", "listen": "127.0.0.1:%d" % cport,
                    "tls": {"cert_file": str(live / "cert.pem"),
                            "key_file": str(live / "key.pem"),
                            "client_ca_file": certs.__getattr__("ca.pem")}}],
        "outputs": [{"name": "f", "type": "file", "path": "out.ndjson"}],
        "routes": [{"topics": "*", "to": "f"}]}, name="central")
    e = edge(sluice, "127.0.0.1:%d" % cport, client_tls(certs, "client"), ack=True)
    ca = certs.__getattr__("ca.pem")
    send_plain(e.address, 1)
    got_lines(central.path("out.ndjson"), 1)
    assert subject_of_server(cport, certs) == "central"

    shutil.copy(certs.__getattr__("rotated.pem"), live / "cert.pem")
    shutil.copy(certs.__getattr__("rotated.key"), live / "key.pem")
    central.signal(signal.SIGHUP)
    central.wait_log("TLS certificates reloaded", endpoint="in")
    assert subject_of_server(cport, certs) == "central-rotated"

    # a bad file: the rotated certificate stays in use, the log says why
    (live / "cert.pem").write_text("not a certificate\n")
    central.signal(signal.SIGHUP)
    line = central.wait_log("TLS certificates not reloaded; keeping the ones in use")
    assert line["endpoint"] == "in" and "cert.pem" in line["error"]
    assert subject_of_server(cport, certs) == "central-rotated"

    # edge's connection made before the rotation carries on
    send_plain(e.address, 2)
    assert [l["payload"] for l in got_lines(central.path("out.ndjson"), 2)] == [1, 2]
    assert len(e.find_logs("output peer connected")) <= 1
    assert e.find_logs("output peer lost") == [] and \
        e.find_logs("TLS handshake with the peer failed") == []


# ---- HTTP ingest and admin over TLS, with curl -----------------------------


def curl(*args):
    return subprocess.run(["curl", "-sS", "--max-time", "10"] + [str(a) for a in args],
                          capture_output=True, timeout=30)


def test_http_input_over_mtls_with_curl(sluice, certs):
    port = free_port()
    eng = sluice({"inputs": [{"name": "web", "type": "http",
                              "listen": "127.0.0.1:%d" % port,
                              "tls": server_tls(certs, client_ca_file=certs.__getattr__("ca.pem"))}],
                  "outputs": [{"name": "f", "type": "file", "path": "out.ndjson"}],
                  "routes": [{"topics": "*", "to": "f"}]})
    url = "https://localhost:%d/v1/events" % port
    ca = certs.__getattr__("ca.pem")
    body = '{"topic":"t","payload":"curl"}'
    r = curl("--cacert", ca, "--cert", certs.__getattr__("client.pem"),
             "--key", certs.__getattr__("client.key"), "-w", "%{http_code}",
             "-H", "Content-Type: application/json", "-d", body, url)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().endswith("202")
    got = got_lines(eng.path("out.ndjson"), 1)
    assert got[0]["payload"] == "curl"
    assert got[0]["headers"]["sluice-peer"] == "edge-1"
    # no client certificate: refused in the handshake
    r = curl("--cacert", ca, "-H", "Content-Type: application/json", "-d", body, url)
    assert r.returncode != 0
    eng.wait_log("TLS handshake refused", listener="web")
    # plain HTTP to the TLS port: no answer, no event
    r = curl("-d", body, "http://127.0.0.1:%d/v1/events" % port)
    assert r.returncode != 0
    time.sleep(0.3)
    assert len(read_ndjson(eng.path("out.ndjson"))) == 1


def test_http_input_takes_a_large_ndjson_body_over_tls(sluice, certs, tmp_path):
    port = free_port()
    eng = sluice({"inputs": [{"name": "web", "type": "http",
                              "listen": "127.0.0.1:%d" % port, "tls": server_tls(certs)}],
                  "outputs": [{"name": "f", "type": "file", "path": "out.ndjson"}],
                  "routes": [{"topics": "*", "to": "f"}]})
    n = 20000  # ~3 MB: many TLS records, many reads
    body = tmp_path / "body.ndjson"
    body.write_text("".join('{"topic":"t","payload":[%d,"%s"]}\n' % (i, "y" * 120)
                            for i in range(n)))
    r = curl("--cacert", certs.__getattr__("ca.pem"), "-w", " %{http_code}",
             "-H", "Content-Type: application/x-ndjson", "--data-binary",
             "@%s" % body, "https://localhost:%d/v1/events" % port)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode() == '{"accepted":%d} 202' % n
    got = got_lines(eng.path("out.ndjson"), n, timeout=30)
    assert [l["payload"][0] for l in got] == list(range(n))


def test_admin_over_tls_with_curl(sluice, certs):
    port, aport = free_port(), free_port()
    eng = sluice({"inputs": [{"name": "in", "type": "tcp", "listen": "127.0.0.1:%d" % port}],
                  "outputs": [{"name": "n", "type": "null"}],
                  "routes": [{"topics": "*", "to": "n"}],
                  "admin": {"listen": "127.0.0.1:%d" % aport,
                            "tls": server_tls(certs)}})
    ca = certs.__getattr__("ca.pem")
    r = curl("--cacert", ca, "https://localhost:%d/healthz" % aport)
    assert r.returncode == 0, r.stderr.decode()
    assert b"ok" in r.stdout.lower()
    r = curl("--cacert", ca, "-X", "POST", "-w", "%{http_code}",
             "https://127.0.0.1:%d/reload" % aport)
    assert r.returncode == 0 and r.stdout.decode().endswith("200")
    eng.wait_log("TLS certificates reloaded", endpoint="admin")
    # a client that does not trust the CA stops at verification
    r = curl("https://localhost:%d/healthz" % aport)
    assert r.returncode == 60  # peer certificate cannot be authenticated


def test_sluice_top_and_tap_read_an_admin_over_tls(sluice, certs):
    """The commands that read a running engine speak TLS to a TLS admin:
    they trust the admin's own certificate file from the config; an admin
    whose certificate is not that one is refused."""
    port, aport = free_port(), free_port()
    eng = sluice({"inputs": [{"name": "in", "type": "tcp", "listen": "127.0.0.1:%d" % port}],
                  "outputs": [{"name": "n", "type": "null"}],
                  "routes": [{"topics": "*", "to": "n"}],
                  "admin": {"listen": "127.0.0.1:%d" % aport,
                            "tls": server_tls(certs)}})
    r = run_sluice("top", "-c", eng.config, "--once", timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("sluice top - 127.0.0.1:%d" % aport), r.stdout
    assert any(l.split()[:1] == ["n"] for l in r.stdout.splitlines()), r.stdout
    # the tap streams over the same TLS: one line, then it ends (--limit 1)
    from conftest import SLUICE_BIN, send_events
    p = subprocess.Popen([SLUICE_BIN, "tap", "-c", str(eng.config), "--json",
                          "--limit", "1"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while p.poll() is None and time.monotonic() < deadline:
            send_events("127.0.0.1:%d" % port, [{"topic": "tls.tap", "payload": 1}])
            time.sleep(0.2)
        out, err = p.communicate(timeout=5)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert b'"tls.tap"' in out, out
    # a config naming another certificate than the one the admin serves
    other = dict(eng.config_dict)
    other["admin"] = {"listen": "127.0.0.1:%d" % aport,
                      "tls": server_tls(certs, "elsewhere")}
    path = eng.path("other.conf.lua")
    with open(path, "w") as f:
        f.write("return " + lua(other) + "\n")
    r = run_sluice("top", "-c", path, "--once", timeout=30)
    assert r.returncode == 1
    assert "TLS to the admin API at 127.0.0.1:%d failed" % aport in r.stderr, r.stderr


# ---- config ----------------------------------------------------------------


@pytest.mark.parametrize("tls,message", [
    ({}, "inputs[1].tls: a listener's tls needs cert_file and key_file (tcp input)"),
    ({"cert_file": "CERT", "key_file": "KEY", "min_version": "1.1"},
     'min_version: expected "1.2" or "1.3", got "1.1" (tcp input'),
    ({"cert_file": "CERT", "key_file": "KEY", "certfile": "x"}, "unknown key 'certfile'"),
    ({"cert_file": "/nonexistent/cert.pem", "key_file": "KEY"},
     "inputs[1].tls.cert_file: cannot read /nonexistent/cert.pem: No such file or "
     "directory (tcp input)"),
    ({"cert_file": "CERT", "key_file": "KEY", "server_name": "x"},
     "server_name is for clients, not a tcp input"),
    ({"cert_file": "CERT", "key_file": "KEY", "allow_subjects": ["a"]},
     "allow_subjects needs a listener with verify_peer (tcp input)"),
    ({"cert_file": "CERT", "key_file": "KEY", "verify_peer": True},
     "verify_peer needs client_ca_file or ca_file (tcp input)"),
])
def test_tls_config_errors_name_the_key_and_the_plugin(certs, tmp_path, tls, message):
    tls = {k: (certs.__getattr__("server.pem") if v == "CERT" else
               certs.__getattr__("server.key") if v == "KEY" else v)
           for k, v in tls.items()}
    from conftest import lua
    p = tmp_path / "c.lua"
    p.write_text("return " + lua({
        "inputs": [{"name": "in", "type": "tcp", "listen": "127.0.0.1:1", "tls": tls}],
        "outputs": [{"name": "n", "type": "null"}],
        "routes": [{"topics": "*", "to": "n"}]}))
    r = run_sluice("check", "-c", p)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr


def test_tls_is_refused_where_it_does_not_apply_and_checked_on_outputs(certs, tmp_path):
    from conftest import lua
    p = tmp_path / "c.lua"
    p.write_text("return " + lua({
        "inputs": [{"name": "u", "type": "unix", "listen": str(tmp_path / "s.sock"),
                    "tls": server_tls(certs)}],
        "outputs": [{"name": "o", "type": "tcp", "address": "127.0.0.1:1",
                     "tls": {"cert_file": certs.__getattr__("client.pem")}},
                    {"name": "f", "type": "file", "path": "x", "tls": {}}],
        "routes": [{"topics": "*", "to": "o"}]}))
    r = run_sluice("check", "-c", p)
    assert r.returncode != 0
    # the lists name every type that takes tls (more come with new plugins)
    (line,) = [l for l in r.stderr.splitlines() if "inputs[1].tls: only " in l]
    assert line.endswith(" inputs take tls") and "tcp" in line and "unix" not in line
    assert "outputs[1].tls: cert_file and key_file go together (tcp output)" in r.stderr
    (line,) = [l for l in r.stderr.splitlines() if "outputs[2].tls: only " in l]
    assert line.endswith(" outputs take tls") and "tcp" in line and "file" not in line


def test_a_bad_key_at_start_is_an_error_naming_the_file(sluice, certs, tmp_path):
    from conftest import EngineExited
    with pytest.raises(EngineExited) as ex:
        listener(sluice, certs, {"cert_file": certs.__getattr__("server.pem"),
                                 "key_file": certs.__getattr__("client.key")})
    assert "client.key: key values mismatch" in str(ex.value)


def test_plugins_lists_the_tls_keys():
    r = run_sluice("plugins")
    assert r.returncode == 0
    for key in ("cert_file", "key_file", "ca_file", "client_ca_file", "verify_peer",
                "server_name", "min_version", "ciphers", "allow_subjects",
                "handshake_timeout_ms"):
        assert "tls." + key in r.stdout


# ---- the README's walkthrough ----------------------------------------------


def readme_tls_blocks():
    text = open(os.path.join(os.path.dirname(__file__), "..", "..",
                             "README.md")).read()
    section = text.split("## TLS and mTLS", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```")[1::2]
    return ([b[len("sh\n"):] for b in blocks if b.startswith("sh\n")],
            [b[len("lua\n"):] for b in blocks if b.startswith("lua\n")])


def test_readme_tls_walkthrough_runs_as_written(tmp_path):
    sh, (central_lua, edge_lua) = readme_tls_blocks()
    make_certs, check = sh
    for cmd in make_certs.strip().splitlines():
        r = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, capture_output=True,
                           timeout=30)
        assert r.returncode == 0, (cmd, r.stderr.decode())
    ports = {"7400": str(free_port()), "7401": str(free_port()),
             "9090": str(free_port())}

    def adapt(text):
        for old, new in ports.items():
            text = text.replace(":" + old, ":" + new)
        return text  # the files stay relative: the configs sit beside them

    # both in the folder of the certificates, as the README has them: each
    # with its own state_dir, or the second refuses to start
    procs = []
    try:
        for name, text in (("central", central_lua), ("edge", edge_lua)):
            (tmp_path / (name + ".conf.lua")).write_text(adapt(text))
            with open(str(tmp_path / (name + ".log")), "wb") as log:
                procs.append(subprocess.Popen(
                    [SLUICE_BIN, "run", "-c", name + ".conf.lua"], cwd=tmp_path,
                    stdout=subprocess.DEVNULL, stderr=log))
            wait_for(lambda: b"sluice started" in (tmp_path / (name + ".log")).read_bytes()
                     or procs[-1].poll() is not None, 10, what=name + " to start")
            assert procs[-1].poll() is None, (tmp_path / (name + ".log")).read_text()
        for cmd in check.strip().splitlines():
            r = subprocess.run(["bash", "-c", adapt(cmd)], cwd=tmp_path,
                               capture_output=True, timeout=30)
            assert r.returncode == 0, (cmd, r.stderr.decode())
            assert b"Verification: OK" in r.stderr or b"ok" in r.stdout.lower()
        send_plain("127.0.0.1:" + ports["7401"], "hello")
        got = got_lines(tmp_path / "archive.ndjson", 1)
        assert got[0]["payload"] == "hello"
        assert got[0]["headers"]["sluice-peer"] == "edge-1"
    finally:
        for p in reversed(procs):
            p.terminate()
        rcs = [p.wait(timeout=20) for p in procs]
    assert rcs == [0, 0]
