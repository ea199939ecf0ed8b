"""Host names for addresses that connect out (issue 11, item 1), through
the real binary: a tcp output to `localhost` and `ip6-localhost`, a name
whose first address refuses, a name that does not resolve (sluice starts,
says so, retries; readiness as for a refused peer), a name re-resolved on
every reconnect (the peer moves from 127.0.0.1 to ::1), and
`sluice dlq replay --to localhost:PORT`.

Names the test controls come from a private /etc/hosts: the engine runs in
its own mount namespace (`unshare -m`) with a file of the test's bind-mounted
over /etc/hosts, which the test may rewrite while the engine runs. The
process is the engine itself (unshare and sh exec), so its pid, signals and
logs are the fixture's as usual.

Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_names.py
"""

import socket
import subprocess

import pytest

import conftest
from conftest import (free_port, metric, read_ndjson, run_sluice, send_events,
                      wait_for, wait_lines)
from helpers_http import curl


def _unshare_works():
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_unshare = pytest.mark.skipif(not _unshare_works(),
                                   reason="needs unshare -m (root, mount namespaces)")
needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")


@pytest.fixture
def hosts(tmp_path, monkeypatch):
    """A private /etc/hosts for the engines this test starts: returns the
    file (rewrite it in place to change what names resolve to)."""
    path = tmp_path / "hosts"
    path.write_text("127.0.0.1 localhost\n")
    wrapper = tmp_path / "sluice-in-ns"
    wrapper.write_text(
        "#!/bin/sh\n"
        "exec unshare -m sh -c 'mount --bind \"$0\" /etc/hosts && exec \"$@\"' "
        "'%s' '%s' \"$@\"\n" % (path, conftest.SLUICE_BIN))
    wrapper.chmod(0o755)
    monkeypatch.setattr(conftest, "SLUICE_BIN", str(wrapper))
    return path


def resolve_in(hosts_path, name):
    """The addresses name resolves to under hosts_path, in getaddrinfo's
    order, as the engine sees them."""
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         'mount --bind "$0" /etc/hosts && getent ahostsv4 "$1" >/dev/null; '
         'getent ahosts "$1"', str(hosts_path), name],
        capture_output=True, text=True, timeout=10)
    out = []
    for line in r.stdout.splitlines():
        addr, kind = line.split()[:2]
        if kind == "STREAM":
            out.append(addr)
    return out


def peer(sluice, listen, name="peer"):
    """A sluice listening on listen (a tcp input), writing got.ndjson."""
    eng = sluice({"inputs": [{"name": "in", "type": "tcp", "listen": listen}],
                  "outputs": [{"name": "got", "type": "file", "path": "got.ndjson"}],
                  "routes": [{"topics": "*", "to": "got"}]}, name=name)
    return eng


def sender(sluice, address, admin=False, **out):
    """A sluice whose tcp output goes to address; eng.address is its input."""
    port = free_port()
    output = {"name": "fwd", "type": "tcp", "address": address, "ack": True,
              "retry": {"initial_ms": 50, "max_ms": 200}}
    output.update(out)
    cfg = {"log_level": "debug",
           "inputs": [{"name": "in", "type": "tcp", "listen": "127.0.0.1:%d" % port}],
           "outputs": [output],
           "routes": [{"topics": "*", "to": "fwd"}]}
    if admin:
        cfg["admin"] = {"listen": "127.0.0.1:%d" % free_port()}
    eng = sluice(cfg, name="sender")
    eng.address = "127.0.0.1:%d" % port
    eng.admin = cfg["admin"]["listen"] if admin else None
    return eng


def events(first, n):
    return [{"id": "e%d" % i, "topic": "t", "payload": i} for i in range(first, first + n)]


def ids(eng):
    return [e["id"] for e in read_ndjson(eng.path("got.ndjson"))]


# ---- reaching a peer by name ------------------------------------------------

def test_tcp_output_reaches_a_peer_named_localhost(sluice):
    port = free_port()
    p = peer(sluice, "localhost:%d" % port)  # a listener takes localhost too
    s = sender(sluice, "localhost:%d" % port)
    send_events(s.address, events(0, 20))
    wait_lines(p.path("got.ndjson"), 20)
    assert ids(p) == ["e%d" % i for i in range(20)]
    line = s.wait_log("host name looked up", address="localhost:%d" % port)
    assert line["status"] == 0 and line["addresses"] >= 1


@needs_ipv6
def test_tcp_output_reaches_a_peer_named_ip6_localhost(sluice, request):
    port = free_port()
    p = peer(sluice, "[::1]:%d" % port)
    try:
        socket.getaddrinfo("ip6-localhost", port, socket.AF_INET6)
    except socket.gaierror:
        # this system's /etc/hosts lacks the Debian default: give the
        # engine one that has it
        if not _unshare_works():
            pytest.skip("ip6-localhost does not resolve and unshare -m is missing")
        path = request.getfixturevalue("hosts")
        path.write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")
    s = sender(sluice, "ip6-localhost:%d" % port)
    send_events(s.address, events(0, 10))
    wait_lines(p.path("got.ndjson"), 10)
    assert ids(p) == ["e%d" % i for i in range(10)]
    line = s.wait_log("host name looked up", address="ip6-localhost:%d" % port)
    assert line["first"] == "::1"


@needs_ipv6
def test_tcp_output_reaches_an_ipv6_literal_in_brackets(sluice):
    port = free_port()
    p = peer(sluice, "[::1]:%d" % port)
    s = sender(sluice, "[::1]:%d" % port)
    send_events(s.address, events(0, 3))
    wait_lines(p.path("got.ndjson"), 3)
    assert ids(p) == ["e0", "e1", "e2"]
    assert not s.find_logs("host name looked up")  # a literal: no lookup


@needs_unshare
@needs_ipv6
def test_a_name_whose_first_address_refuses_is_reached_on_a_later_one(sluice, hosts):
    hosts.write_text("::1 sluice-peer\n127.0.0.1 sluice-peer\n")
    order = resolve_in(hosts, "sluice-peer")
    assert order[0] == "::1" and "127.0.0.1" in order, order
    port = free_port()
    p = peer(sluice, "127.0.0.1:%d" % port)  # nothing on [::1]:port
    s = sender(sluice, "sluice-peer:%d" % port)
    send_events(s.address, events(0, 10))
    wait_lines(p.path("got.ndjson"), 10)
    assert ids(p) == ["e%d" % i for i in range(10)]
    line = s.wait_log("host name looked up", address="sluice-peer:%d" % port)
    assert line["first"] == "::1" and line["addresses"] == 2
    assert not s.find_logs("output peer unreachable; reconnecting with backoff")


@needs_unshare
@needs_ipv6
def test_a_name_is_resolved_again_on_every_reconnect_and_a_moved_peer_followed(
        sluice, hosts):
    port = free_port()
    hosts.write_text("127.0.0.1 sluice-peer\n")
    first = peer(sluice, "127.0.0.1:%d" % port, name="first")
    s = sender(sluice, "sluice-peer:%d" % port)
    send_events(s.address, events(0, 5))
    wait_lines(first.path("got.ndjson"), 5)
    assert s.find_logs("host name looked up")[-1]["first"] == "127.0.0.1"
    # the service moves: the old address goes away, the name now says ::1
    assert first.stop() == 0
    hosts.write_text("::1 sluice-peer\n")
    moved = peer(sluice, "[::1]:%d" % port, name="moved")
    send_events(s.address, events(5, 5))
    wait_lines(moved.path("got.ndjson"), 5, timeout=15)
    assert ids(moved) == ["e%d" % i for i in range(5, 10)]
    lookups = s.find_logs("host name looked up")
    assert len(lookups) >= 2
    assert lookups[-1]["first"] == "::1" and lookups[-1]["addresses"] == 1


# ---- a name that does not resolve --------------------------------------------

def test_a_name_that_does_not_resolve_is_checked_started_logged_and_retried(
        sluice, tmp_path):
    s = sender(sluice, "no-such-host.invalid:1", admin=True)
    line = s.wait_log("output peer's host name does not resolve; retrying with backoff",
                      output="fwd")
    assert "no-such-host.invalid" in line["error"], line
    assert line["level"] == "warn"
    # it keeps trying with the output's backoff (50-200 ms), logging once
    wait_for(lambda: metric(s.admin, "sluice_output_resolve_failures_total",
                            output="fwd") >= 3, 10, what="three failed lookups")
    assert len(s.find_logs("output peer's host name does not resolve; "
                           "retrying with backoff")) == 1
    assert s.running()
    # `sluice check` accepts the syntactically valid name
    r = run_sluice("check", "-c", s.config)
    assert r.returncode == 0, r.stderr


def test_readiness_with_an_unresolvable_peer_is_as_with_a_refusing_one(sluice):
    def readyz(eng):
        return curl("http://%s/readyz" % eng.admin)

    a = sender(sluice, "no-such-host.invalid:1", admin=True)
    b = sender(sluice, "127.0.0.1:%d" % free_port(), admin=True)
    a.wait_log("output peer's host name does not resolve; retrying with backoff")
    b.wait_log("output peer unreachable; reconnecting with backoff")
    ra, rb = readyz(a), readyz(b)
    assert ra.status == rb.status
    assert ra.json()["outputs"] == rb.json()["outputs"]


def test_config_check_refuses_a_malformed_host_and_a_listener_given_a_name(tmp_path):
    cfg = tmp_path / "bad.lua"
    cfg.write_text("""return {
  inputs = { { name = "in", type = "tcp", listen = "peer.example:7000" } },
  outputs = {
    { name = "a", type = "tcp", address = "bad_host!:7000" },
    { name = "b", type = "tcp", address = "central.logging.svc" },
    { name = "c", type = "tcp", address = "central.logging.svc:7400" },
  },
  routes = { { topics = "*", to = "c" } },
}""")
    r = run_sluice("check", "-c", cfg)
    assert r.returncode == 1
    err = r.stderr
    assert 'inputs[1].listen: expected "host:port" with an IP address (or localhost)' in err
    assert "outputs[1].address: expected \"host:port\" with a host name" in err
    assert "outputs[2].address:" in err
    assert "outputs[3]" not in err


# ---- dlq replay ---------------------------------------------------------------

def test_dlq_replay_to_a_host_name(sluice, tmp_path):
    from test_resilience import dead_letters
    _, path = dead_letters(sluice, 3)
    port = free_port()
    p = peer(sluice, "127.0.0.1:%d" % port)
    r = run_sluice("dlq", "replay", path, "--to", "localhost:%d" % port)
    assert r.returncode == 0, r.stderr
    wait_lines(p.path("got.ndjson"), 3)
    assert [e["id"] for e in read_ndjson(p.path("got.ndjson"))] == \
        ["ev-%04d" % i for i in range(3)]
    r = run_sluice("dlq", "replay", path, "--to", "no-such-host.invalid:1")
    assert r.returncode == 1
    assert "cannot connect to no-such-host.invalid:1: cannot resolve " \
           "no-such-host.invalid" in r.stderr
