"""Every listener (tcp and unix inputs, HTTP ingest, the admin server) has a
connection limit, timeouts and a memory bound, and the admin server stays
reachable while an input is flooded (issue 9, findings 17-19). Also: the
tap masks credentials however their header names are spelled.

Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_listeners.py
"""

import json
import resource
import socket
import subprocess
import time
import urllib.request

import pytest

from conftest import (ASAN, connect, free_port, pack, send_events, short_path,
                      wait_for, wait_lines)
from conftest import metrics_flat as metrics


def admin_get(admin_port, path, timeout=5):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (admin_port, path),
                                timeout=timeout) as r:
        return r.status, r.read()


def closed_by_engine(s, timeout=5):
    """True once the engine closed s (EOF or reset) within timeout."""
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


# ---- readiness (finding 19) -------------------------------------------------

def test_start_waits_for_every_listener_even_when_info_logs_are_hidden(sluice):
    tcp, web, admin = free_port(), free_port(), free_port()
    eng = sluice({
        "inputs": [{"name": "app", "type": "tcp", "listen": "127.0.0.1:%d" % tcp},
                   {"name": "web", "type": "http", "listen": "127.0.0.1:%d" % web}],
        "outputs": [{"name": "out", "type": "file", "path": "out.ndjson"}],
        "routes": [{"topics": "*", "to": "out"}],
        "admin": {"listen": "127.0.0.1:%d" % admin},
        "log_level": "warn"})
    # no retry loop: once sluice() returned, every listener answers
    req = urllib.request.Request(
        "http://127.0.0.1:%d/v1/events" % web, method="POST",
        data=b'{"topic":"t","payload":1}', headers={"Content-Type": "application/json"})
    assert urllib.request.urlopen(req, timeout=5).status == 202
    assert admin_get(admin, "/readyz")[0] == 200
    wait_lines(eng.path("out.ndjson"), 1)


# ---- tap redaction (finding 18) ---------------------------------------------

def test_tap_masks_credential_headers_however_their_names_are_spelled(sluice):
    port, admin = free_port(), free_port()
    sluice({
        "inputs": [{"name": "app", "type": "tcp", "listen": "127.0.0.1:%d" % port}],
        "outputs": [{"name": "out", "type": "null"}],
        "routes": [{"topics": "*", "to": "out"}],
        "admin": {"listen": "127.0.0.1:%d" % admin}})
    secret = {
        "Authorization": "a", " authorization": "b", "AUTHORIZATION\t": "c",
        "\x00authorization\r\n": "d", "Proxy-Authorization": "e",
        "proxy_authorization": "f", "Set-Cookie": "g", "cookie ": "h",
        "X-Api-Key": "i", "x_api_key": "j",
        "X-API-\u212aey": "k",          # KELVIN SIGN folds to k
        "\u017fet-cookie": "l",         # long s folds to s
        "AUTHOR\u0130ZATION": "m",      # dotted capital I
        "author\u0131zation": "n",      # dotless small i
    }
    clear = {"x-ok": "v", "authorization-hint": "w", "x-api-keys": "x",
             "author ization": "y"}
    headers = dict(secret)
    headers.update(clear)
    p = subprocess.Popen(["curl", "-sN", "--max-time", "20",
                          "http://127.0.0.1:%d/tap?topics=t&limit=1" % admin],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: metrics(admin).get("sluice_tap_clients") == 1,
                 what="the tap client")
        send_events("127.0.0.1:%d" % port,
                    [{"topic": "t", "payload": 1, "headers": headers}])
        out, _ = p.communicate(timeout=15)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    got = json.loads(out.decode().splitlines()[0])["event"]["headers"]
    for name in secret:
        assert got[name] == "***", (name, got[name])
    for name, value in clear.items():
        assert got[name] == value, name
