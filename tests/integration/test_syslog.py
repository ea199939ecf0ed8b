"""The syslog input (issue 13, item 3) through the real binary, fed by real
senders: util-linux `logger` (RFC 5424 and 3164, TCP, UDP, octet counting,
structured data), a real `rsyslogd` forwarding with omfwd, `openssl
s_client` for TLS (RFC 5425), and raw sockets only for what a well-behaved
client never sends (malformed, oversized, stalled frames).

Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_syslog.py
"""

import calendar
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import (Sink, connect, free_port, metric, read_ndjson,
                      wait_for, wait_lines)


def logger(port, *args, msg="hello"):
    cmd = ["logger", "-n", "127.0.0.1", "-P", str(port)] + list(args) + [msg]
    subprocess.run(cmd, check=True, capture_output=True, timeout=20)


def engine(sluice, extra=None, top=None, out="out.ndjson", udp=True):
    """sluice with one syslog input (tcp, and udp on the same port) into a
    file; eng.port, eng.admin, eng.out."""
    port, admin = free_port(), free_port()
    inp = {"name": "sys", "type": "syslog", "listen": "127.0.0.1:%d" % port}
    if udp:
        inp["udp"] = "127.0.0.1:%d" % port
    inp.update(extra or {})
    cfg = {"inputs": [inp],
           "outputs": [{"name": "f", "type": "file", "path": out}],
           "routes": [{"topics": "*", "to": "f"}],
           "admin": {"listen": "127.0.0.1:%d" % admin}}
    cfg.update(top or {})
    eng = sluice(cfg)
    eng.port = port
    eng.admin = "127.0.0.1:%d" % admin
    eng.out = eng.path(out)
    return eng


def events(path, n, timeout=10):
    wait_lines(path, n, timeout=timeout)
    return read_ndjson(path)


def send_udp(port, data):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(data, ("127.0.0.1", port))


def send_tcp(port, data):
    with connect("127.0.0.1:%d" % port) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(10)
        assert s.recv(1) == b""  # the engine closes once it read it all


def octet(msg):
    return b"%d %s" % (len(msg), msg)


# ---- logger: every field, both formats, both transports ------------------

def test_logger_rfc5424_over_tcp_maps_every_field_and_structured_data(sluice):
    eng = engine(sluice)
    before = time.time()
    logger(eng.port, "--rfc5424", "--tcp", "-t", "billing", "-p", "local3.err",
           "--msgid", "ID47", "--sd-id", "order@32473", "--sd-param",
           'id="42"', "--sd-param", r'note="a \"quoted\" \] value"',
           msg="payment failed")
    [ev] = events(eng.out, 1)
    p = ev["payload"]
    assert ev["topic"] == "syslog.billing"
    assert p["format"] == "rfc5424"
    assert (p["facility"], p["facility_name"]) == (19, "local3")
    assert (p["severity"], p["severity_name"]) == (3, "err")
    assert p["app_name"] == "billing" and p["msgid"] == "ID47"
    assert p["hostname"] == socket.gethostname()
    assert p["message"] == "payment failed"
    assert p["structured_data"]["order@32473"] == {
        "id": "42", "note": 'a "quoted" ] value'}
    # ev.time is the message's own timestamp (RFC 3339, with its zone)
    assert before - 2 <= ev["time"] / 1e9 <= time.time() + 2
    assert p["timestamp"].startswith(time.strftime("%Y-", time.gmtime()))


def test_a_repeated_sd_param_from_logger_is_one_key_with_its_values(sluice):
    """RFC 5424 lets a PARAM-NAME repeat (origin's ip, 7.2.2). It was
    written as duplicate keys of one map, so rules saw only the first and
    the NDJSON had both; now it is one key with the array of its values.
    Sorting the names keeps a huge element cheap: 50,000 repeats of one
    name in one message take well under a second."""
    eng = engine(sluice)
    logger(eng.port, "--rfc5424", "--tcp", "-t", "app", "--sd-id", "origin",
           "--sd-param", 'ip="192.0.2.1"', "--sd-param", 'ip="192.0.2.2"',
           "--sd-param", 'software="s"', msg="two ips")
    [ev] = events(eng.out, 1)
    assert ev["payload"]["structured_data"]["origin"] == {
        "ip": ["192.0.2.1", "192.0.2.2"], "software": "s"}
    with open(eng.out) as f:
        assert f.read().count('"ip"') == 1
    big = b"<13>1 - h app - - [x" + b' n="v"' * 50000 + b"] big"
    t0 = cpu_seconds(eng.proc.pid)
    send_tcp(eng.port, octet(big))
    evs = events(eng.out, 2)
    assert evs[1]["payload"]["structured_data"]["x"] == {"n": ["v"] * 50000}
    assert cpu_seconds(eng.proc.pid) - t0 < 1


def cpu_seconds(pid):
    """User and system CPU time of pid so far (/proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_logger_rfc3164_over_udp_and_tcp_names_app_host_and_pid(sluice):
    eng = engine(sluice)
    logger(eng.port, "--rfc3164", "--udp", "-t", "cron", "-i",
           "-p", "cron.warning", msg="over udp")
    logger(eng.port, "--rfc3164", "--tcp", "-t", "cron", "-p", "daemon.info",
           msg="over tcp")
    evs = events(eng.out, 2)
    by_msg = {e["payload"]["message"]: e for e in evs}
    u, t = by_msg["over udp"]["payload"], by_msg["over tcp"]["payload"]
    assert u["format"] == t["format"] == "rfc3164"
    assert (u["facility_name"], u["severity_name"]) == ("cron", "warning")
    assert (t["facility_name"], t["severity_name"]) == ("daemon", "info")
    assert u["app_name"] == t["app_name"] == "cron"
    assert u["procid"] and u["procid"].isdigit()  # logger -i: its pid
    assert u["hostname"] == socket.gethostname()
    assert all(e["topic"] == "syslog.cron" for e in evs)


def test_logger_octet_counted_frames_over_tcp(sluice):
    eng = engine(sluice)
    for i in range(3):
        logger(eng.port, "--rfc5424", "--tcp", "--octet-count", "-t", "oc",
               msg="frame %d" % i)
        # in before the next: three loggers are three connections, which
        # the engine may read in any order once two wait together (load)
        events(eng.out, i + 1)
    evs = events(eng.out, 3)
    assert [e["payload"]["message"] for e in evs] == [
        "frame 0", "frame 1", "frame 2"]


def test_rfc_examples_parse_to_their_fields_and_time(sluice):
    eng = engine(sluice)
    send_tcp(eng.port, b"".join([
        b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - "
        b"\xef\xbb\xbf'su root' failed for lonvick on /dev/pts/8\n",
        octet(b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc "
              b"8710 - - %% It's time to make the do-nuts."),
        octet(b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com '
              b'evntslog - ID47 [exampleSDID@32473 iut="3" eventSource='
              b'"Application" eventID="1011"][examplePriority@32473 '
              b'class="high"]'),
        b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick\n",
    ]))
    a, b, c, d = events(eng.out, 4)
    assert a["time"] == calendar.timegm((2003, 10, 11, 22, 14, 15)) * 10**9 \
        + 3 * 10**6
    assert a["payload"]["message"] == "'su root' failed for lonvick on /dev/pts/8"
    assert a["payload"]["procid"] is None and a["payload"]["msgid"] == "ID47"
    assert a["topic"] == "syslog.su"
    assert b["time"] == calendar.timegm((2003, 8, 24, 12, 14, 15)) * 10**9 \
        + 3000
    assert b["payload"]["procid"] == "8710"
    assert b["payload"]["message"] == "%% It's time to make the do-nuts."
    assert c["payload"]["structured_data"] == {
        "exampleSDID@32473": {"iut": "3", "eventSource": "Application",
                              "eventID": "1011"},
        "examplePriority@32473": {"class": "high"}}
    assert c["payload"]["message"] == ""
    # RFC 3164: no year, no zone: UTC, this year (last year if that is
    # more than a day ahead)
    now = time.time()
    year = time.gmtime(now).tm_year
    want = calendar.timegm((year, 10, 11, 22, 14, 15))
    if want > now + 86400:
        want = calendar.timegm((year - 1, 10, 11, 22, 14, 15))
    assert d["time"] == want * 10**9
    assert (d["payload"]["hostname"], d["payload"]["app_name"]) == (
        "mymachine", "su")


def test_topic_template_uses_names_and_sanitizes_values(sluice):
    eng = engine(sluice, {"topic": "logs.{facility}.{severity}.{host}.{app}"})
    send_tcp(eng.port, b"<190>1 - web-1.example.com my/app - - - hi\n"
             b"<13>1 - - - - - - no host nor app\n")
    a, b = events(eng.out, 2)
    assert a["topic"] == "logs.local7.info.web-1_example_com.my_app"
    assert b["topic"] == "logs.user.notice.unknown.unknown"


def test_a_bad_topic_template_or_no_address_stops_the_start(sluice):
    from conftest import EngineExited
    with pytest.raises(EngineExited) as e:
        engine(sluice, {"topic": "syslog.{bogus}"})
    assert "unknown placeholder" in str(e.value)
    with pytest.raises(EngineExited) as e:
        sluice({"inputs": [{"name": "s", "type": "syslog"}],
                "outputs": [{"name": "f", "type": "file", "path": "o"}],
                "routes": [{"topics": "*", "to": "f"}]})
    assert "set listen (tcp) or udp, or both" in str(e.value)


# ---- an exact ledger over TCP, both framings, through backpressure ------

def test_tcp_ledger_is_exact_and_ordered_through_a_blocked_output(sluice):
    """2000 messages on one connection, LF and octet-counted mixed, into a
    tcp output whose receiver is not up yet and whose queue holds 20: the
    connection pauses (nothing is dropped), and once the receiver comes
    every message arrives once, in order."""
    sink_port, port = free_port(), free_port()
    cfg = {"inputs": [{"name": "sys", "type": "syslog",
                       "listen": "127.0.0.1:%d" % port}],
           "outputs": [{"name": "o", "type": "tcp",
                        "address": "127.0.0.1:%d" % sink_port,
                        "queue": {"max_events": 20, "when_full": "block"},
                        "retry": {"initial_ms": 50, "max_ms": 200},
                        "breaker": False}],
           "routes": [{"topics": "*", "to": "o"}]}
    eng = sluice(cfg)
    n = 2000
    data = b"".join(
        (octet(b"<14>1 - h app - - - seq %d" % i) if i % 2 else
         b"<14>1 - h app - - - seq %d\n" % i) for i in range(n))
    sender = threading.Thread(target=send_tcp, args=(port, data))
    sender.start()
    time.sleep(0.5)  # let the queue fill and the connection pause
    assert sender.is_alive()  # held by backpressure, not finished
    with Sink(port=sink_port) as sink:
        got = sink.wait(n, timeout=30)
        sender.join(30)
        assert not sender.is_alive()
        time.sleep(0.2)
        assert [e["payload"]["message"] for e in sink.events] == [
            "seq %d" % i for i in range(n)]
    assert eng.stop() == 0
    assert len(got) == n


# ---- malformed, oversized, slow -----------------------------------------

def test_malformed_messages_are_kept_raw_counted_and_the_connection_lives(sluice):
    eng = engine(sluice)
    with connect("127.0.0.1:%d" % eng.port) as s:
        s.sendall(b"no pri here\n<999>bad pri\n<13>1 yesterday h a - - - x\n")
        s.sendall(b"<13>1 - h ok - - - fine\n")
        evs = events(eng.out, 4)
    assert [e["payload"].get("malformed") for e in evs] == [True] * 3 + [None]
    assert evs[0]["payload"]["message"] == "no pri here"
    assert evs[3]["payload"]["message"] == "fine"
    assert metric(eng.admin, "sluice_input_malformed_total", input="sys") == 3
    send_udp(eng.port, b"garbage datagram")
    evs = events(eng.out, 5)
    assert evs[4]["payload"] == {"message": "garbage datagram",
                                 "malformed": True,
                                 "error": "no <PRI> at the start"}
    assert metric(eng.admin, "sluice_input_malformed_total", input="sys") == 4


def test_malformed_messages_go_to_the_dead_letter_when_told(sluice):
    eng = engine(sluice, {"on_malformed": "dead_letter",
                          "format": "rfc5424"})
    send_tcp(eng.port, b"<13>Oct 11 22:14:15 host app: 3164 when 5424 is "
             b"required\n<13>1 - h app - - - good\n")
    [good] = events(eng.out, 1)
    assert good["payload"]["message"] == "good"
    dl = eng.path("var/dead-letter.ndjson")
    [bad] = events(dl, 1)
    assert bad["headers"]["sluice-input"] == "sys"
    assert bad["headers"]["sluice-error"] == "bad RFC 5424 header"
    assert bad["payload"]["malformed"] is True
    assert "3164 when 5424" in bad["payload"]["message"]
    assert len(read_ndjson(eng.out)) == 1


def test_a_full_dead_letter_pauses_a_tcp_sender_instead_of_dropping(sluice):
    """on_malformed = "dead_letter" pushed straight into the dead letter's
    queue and dropped what did not fit: with a dead letter whose peer does
    not read (queue of 5), 1980 of 2000 malformed lines over TCP were lost.
    A TCP connection now waits for room, as it does for any output; once
    the peer reads, every line arrives and none is dropped."""
    port, admin = free_port(), free_port()
    sink = Sink(reading=False)
    eng = sluice({
        "inputs": [{"name": "sys", "type": "syslog",
                    "listen": "127.0.0.1:%d" % port,
                    "on_malformed": "dead_letter"}],
        "outputs": [{"name": "o", "type": "file", "path": "out.ndjson"},
                    {"name": "dl", "type": "tcp", "address": sink.address,
                     "queue": {"max_events": 5, "when_full": "block"}}],
        "routes": [{"topics": "*", "to": "o"}], "dead_letter": "dl",
        "admin": {"listen": "127.0.0.1:%d" % admin}})
    adm = "127.0.0.1:%d" % admin
    with connect("127.0.0.1:%d" % port) as s:
        s.sendall(b"".join(b"bad %d\n" % i for i in range(2000)))
        wait_for(lambda: metric(adm, "sluice_input_events_total",
                                input="sys") >= 6,
                 timeout=10, what="the dead letter's queue full")
        sink.start_reading()

        def settled():
            taken = metric(adm, "sluice_input_events_total", input="sys")
            dropped = metric(adm, "sluice_input_dropped_total", input="sys")
            return taken == 2000 and len(sink.events) == taken - dropped
        wait_for(settled, timeout=20, what="every line taken or dropped")
    assert metric(adm, "sluice_input_dropped_total", input="sys") == 0
    got = sorted(int(e["payload"]["message"].split()[1]) for e in sink.events)
    assert got == list(range(2000))
    assert all(e["headers"]["sluice-input"] == "sys" for e in sink.events)
    eng.stop()


def test_oversized_messages_are_skipped_and_counted_on_every_framing(sluice):
    eng = engine(sluice, top={"max_event_bytes": 2048})
    big = b"<13>1 - h app - - - " + b"x" * 5000
    with connect("127.0.0.1:%d" % eng.port) as s:
        s.sendall(big + b"\n" + b"<13>1 - h app - - - after line\n")
        s.sendall(octet(big) + octet(b"<13>1 - h app - - - after octets"))
        s.sendall(b"<13>1 - h app - - - " + b"y" * 100000 + b"\n"
                  b"<13>1 - h app - - - after a long line\n")
        evs = events(eng.out, 3)
    send_udp(eng.port, big)
    send_udp(eng.port, b"<13>1 - h app - - - after a datagram")
    evs = events(eng.out, 4)
    assert [e["payload"]["message"] for e in evs] == [
        "after line", "after octets", "after a long line", "after a datagram"]
    assert metric(eng.admin, "sluice_input_bad_total", input="sys") == 4


def test_a_stalled_sender_holds_only_its_own_connection(sluice):
    eng = engine(sluice, {"event_timeout_ms": 1000})
    slow = connect("127.0.0.1:%d" % eng.port)
    slow.sendall(b"200 <13>1 - h app - - - half a fra")
    logger(eng.port, "--rfc5424", "--tcp", "-t", "other", msg="not held")
    [ev] = events(eng.out, 1)
    assert ev["payload"]["message"] == "not held"
    # the stalled frame's deadline closes its connection, counted
    slow.settimeout(10)
    assert slow.recv(1) == b""
    slow.close()
    wait_for(lambda: metric(eng.admin, "sluice_input_bad_total",
                            input="sys") == 1, what="partial frame counted")


def test_udp_datagrams_are_dropped_and_counted_while_the_output_blocks(sluice):
    """A datagram sender cannot be paused: with the queue full, the input
    holds one event and drops (counting) what arrives meanwhile; the
    listener keeps serving, and TCP still pauses rather than drops."""
    port, admin = free_port(), free_port()
    cfg = {"inputs": [{"name": "sys", "type": "syslog",
                       "udp": "127.0.0.1:%d" % port}],
           "outputs": [{"name": "o", "type": "tcp",
                        "address": "127.0.0.1:%d" % free_port(),
                        "queue": {"max_events": 5, "when_full": "block"}}],
           "routes": [{"topics": "*", "to": "o"}],
           "admin": {"listen": "127.0.0.1:%d" % admin},
           "shutdown_timeout": 1}
    eng = sluice(cfg)
    adm = "127.0.0.1:%d" % admin
    for i in range(50):
        send_udp(port, b"<13>1 - h app - - - d%d" % i)
    wait_for(lambda: metric(adm, "sluice_input_events_total", input="sys")
             + metric(adm, "sluice_input_dropped_total", input="sys") == 50,
             timeout=10, what="every datagram taken or counted as dropped")
    assert metric(adm, "sluice_input_events_total", input="sys") == 6
    assert metric(adm, "sluice_input_dropped_total", input="sys") == 44
    eng.stop()


# ---- TLS (RFC 5425) ------------------------------------------------------

def openssl(*args):
    subprocess.run(["openssl"] + [str(a) for a in args], check=True,
                   capture_output=True, timeout=30)


def test_tls_octet_counted_frames_from_openssl_s_client(sluice, tmp_path):
    key, crt = tmp_path / "s.key", tmp_path / "s.pem"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", crt,
            "-days", "2", "-subj", "/CN=localhost", "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1")
    eng = engine(sluice, {"tls": {"cert_file": str(crt),
                                  "key_file": str(key)}}, udp=False)
    data = b"".join(octet(b"<14>1 - h tlsapp - - - over tls %d" % i)
                    for i in range(100))
    r = subprocess.run(["openssl", "s_client", "-connect",
                        "127.0.0.1:%d" % eng.port, "-CAfile", str(crt),
                        "-verify_return_error", "-verify_hostname",
                        "localhost", "-quiet", "-no_ign_eof"],
                       input=data, capture_output=True, timeout=20)
    assert r.returncode == 0, r.stderr
    evs = events(eng.out, 100)
    assert [e["payload"]["message"] for e in evs] == [
        "over tls %d" % i for i in range(100)]
    assert all(e["topic"] == "syslog.tlsapp" for e in evs)
    # plain text to the TLS port is not taken as syslog
    with connect("127.0.0.1:%d" % eng.port) as s:
        s.sendall(b"<13>1 - h plain - - - not tls\n")
        s.settimeout(10)
        try:
            while s.recv(4096):
                pass  # a TLS alert at most, then the close
        except ConnectionResetError:
            pass
    wait_for(lambda: metric(eng.admin, "sluice_listener_connections_refused_total",
                            listener="sys", reason="tls") == 1,
             what="the failed handshake counted")
    assert len(read_ndjson(eng.out)) == 100


# ---- rsyslog forwarding --------------------------------------------------

RSYSLOGD = "/usr/sbin/rsyslogd"


@pytest.mark.skipif(not os.path.exists(RSYSLOGD), reason="no rsyslogd")
def test_rsyslog_forwards_to_sluice_over_tcp_octet_counted_and_udp(sluice,
                                                                   tmp_path):
    """A real rsyslogd takes messages on its own imtcp port (from logger)
    and forwards them with omfwd: every message over TCP with octet
    counting (an exact ledger), and over UDP."""
    eng = engine(sluice)
    rport = free_port()
    work = tmp_path / "rs"
    work.mkdir()
    conf = work / "rsyslog.conf"
    conf.write_text("""
global(workDirectory="%(work)s")
module(load="imtcp")
input(type="imtcp" port="%(rport)d" address="127.0.0.1" ruleset="fwd")
ruleset(name="fwd") {
  action(type="omfwd" target="127.0.0.1" port="%(port)d" protocol="tcp"
         tcp_framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format"
         queue.type="linkedList" action.resumeRetryCount="-1")
  if $msg contains "udp-too" then
    action(type="omfwd" target="127.0.0.1" port="%(port)d" protocol="udp"
           template="RSYSLOG_TraditionalForwardFormat")
}
""" % {"work": work, "rport": rport, "port": eng.port})
    rs = subprocess.Popen([RSYSLOGD, "-n", "-f", str(conf), "-i",
                           str(work / "pid")], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    try:
        def up():
            try:
                socket.create_connection(("127.0.0.1", rport), 0.2).close()
                return True
            except OSError:
                return False
        wait_for(up, timeout=10, what="rsyslogd listening")
        n = 300
        now = time.gmtime()
        stamp = "%s %2d %s" % (time.strftime("%b", now), now.tm_mday,
                               time.strftime("%H:%M:%S", now))
        lines = "".join("<14>%s myhost rsapp[7]: msg %d\n" % (stamp, i)
                        for i in range(n))
        lines += "<14>%s myhost rsapp[7]: udp-too\n" % stamp
        send_tcp_nowait(rport, lines.encode())
        evs = events(eng.out, n + 2, timeout=20)
    finally:
        rs.terminate()
        rs.wait(10)
    tcp = [e for e in evs if e["payload"]["format"] == "rfc5424"]
    # rsyslog's %msg% keeps the space after "tag:" (mmrm1stspace drops it)
    assert [e["payload"]["message"].lstrip(" ") for e in tcp] == [
        "msg %d" % i for i in range(n)] + ["udp-too"]
    assert all(e["payload"]["app_name"] == "rsapp" and
               e["payload"]["procid"] == "7" and
               e["payload"]["hostname"] == "myhost" for e in tcp)
    udp = [e for e in evs if e["payload"]["format"] == "rfc3164"]
    assert [e["payload"]["message"].lstrip(" ") for e in udp] == ["udp-too"]
    assert udp[0]["payload"]["app_name"] == "rsapp"


def send_tcp_nowait(port, data):
    with connect("127.0.0.1:%d" % port) as s:
        s.sendall(data)


# ---- examples/syslog -----------------------------------------------------

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples",
                       "syslog")


def test_example_syslog_runs_as_its_comment_shows(sluice, tmp_path):
    """examples/syslog, on a free port instead of 5514: the logger command
    of its comment, a UDP message and a stray line; err goes to the alerts
    command as well as the file."""
    port = free_port()
    text = open(os.path.join(EXAMPLE, "sluice.conf.lua")).read()
    cmd = [l[len("--   "):] for l in text.splitlines()
           if l.startswith("--   logger ")][0]
    rules = os.path.abspath(os.path.join(EXAMPLE, "rules"))
    eng = sluice(text.replace("5514", str(port)).replace(
        'dir = "rules"', 'dir = "%s"' % rules))
    subprocess.run(cmd.replace("5514", str(port)), shell=True, check=True,
                   timeout=20)
    # each one in before the next is sent: logger returns once its bytes
    # are in the kernel, and nothing orders two connections (or tcp and
    # udp) in the engine (seen under ASan and load: the udp message first)
    events(eng.path("var/syslog.ndjson"), 1)
    logger(port, "--rfc3164", "--udp", "-t", "cron", "-p", "cron.info",
           msg="nightly job done")
    events(eng.path("var/syslog.ndjson"), 2)
    send_tcp(port, b"a stray line\n")
    evs = events(eng.path("var/syslog.ndjson"), 3)
    assert [e["topic"] for e in evs] == [
        "syslog.user.billing", "syslog.cron.cron", "syslog.unknown.unknown"]
    assert evs[0]["key"] == socket.gethostname()
    assert evs[2]["payload"]["malformed"] is True
    [alert] = events(eng.path("var/alerts.ndjson"), 1)
    assert alert["payload"]["message"] == "payment failed"
    assert alert["payload"]["severity_name"] == "err"
    assert eng.stop() == 0


def test_a_last_line_without_its_lf_at_close_is_discarded_counted_and_logged(sluice):
    """README: a frame the sender leaves unfinished when it closes (a last
    line without its LF) is discarded and counted in sluice_input_bad_total;
    the lines before it are taken."""
    eng = engine(sluice, udp=False)
    send_tcp(eng.port, b"<13>1 - h app - - - whole\n<13>1 - h app - - - cut")
    [ev] = events(eng.out, 1)
    assert ev["payload"]["message"] == "whole"
    wait_for(lambda: metric(eng.admin, "sluice_input_bad_total", input="sys") == 1,
             what="the cut line counted")
    eng.wait_log("connection closed inside a syslog frame; partial message discarded")
    assert eng.stop() == 0
    assert [e["payload"]["message"] for e in read_ndjson(eng.out)] == ["whole"]


def test_the_readme_logger_command_is_the_one_the_example_test_runs():
    """README, Syslog shows the logger command that
    test_example_syslog_runs_as_its_comment_shows runs (from the example's
    comment), so that test runs the README's command too."""
    readme = open(os.path.join(EXAMPLE, "..", "..", "README.md")).read()
    shown = [l[2:] for l in readme.splitlines() if l.startswith("$ logger ")]
    text = open(os.path.join(EXAMPLE, "sluice.conf.lua")).read()
    ran = [l[len("--   "):] for l in text.splitlines() if l.startswith("--   logger ")]
    assert shown and shown == ran, (shown, ran)
