"""The admin server (issue 6) against the real binary: health and
readiness (flipping when a tcp output's peer dies), /metrics through
`promtool check metrics`, /rules and /reload (accepted and rejected), the
tap (filter, limit, sample, redaction) and a tap client that never reads
while the pipeline runs at full speed, bearer auth, and invalid UTF-8 as
U+FFFD in log lines, the status JSON and the tap.

Run: SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q tests/integration/test_admin.py
"""

import json
import os
import subprocess
import time

import msgpack
import pytest

from conftest import EngineExited, Sink, pack, send_events, wait_for
from helpers_http import (RawClient, config, curl, metric, metrics, ports,
                          request, wait_metric)


def admin_url(port, path):
    return "http://127.0.0.1:%d%s" % (port, path)


def ingest(port, body, ctype="application/json"):
    r = curl("http://127.0.0.1:%d/v1/events" % port, data=body, content_type=ctype)
    assert r.status == 202, r
    return r


# ---- health, readiness, auth ----------------------------------------------

def test_healthz_and_readyz_answer_when_all_is_well(sluice):
    port, admin = ports(2)
    sluice(config(port, admin_port=admin))
    r = curl(admin_url(admin, "/healthz"))
    assert r.status == 200 and r.json() == {
        "status": "ok", "outputs": {"out": "ok", "dead_letter": "ok"}}
    r = curl(admin_url(admin, "/readyz"))
    assert r.status == 200
    body = r.json()
    assert body["ready"] is True and body["reasons"] == []
    assert body["outputs"] == {"out": "ok", "dead_letter": "ok"}


def _down_output_engine(sluice, **admin_extra):
    port, admin, peer = ports(3)
    sink = Sink(port=peer)
    cfg = config(port, admin_port=admin, outputs=[{
        "name": "downstream", "type": "tcp", "address": sink.address,
        "retry": {"initial_ms": 50, "max_ms": 200}}],
        routes=[{"topics": "*", "to": "downstream"}])
    cfg["admin"].update(admin_extra)
    eng = sluice(cfg)
    return eng, admin, peer, sink


def _probe_log_lines(eng):
    return [l for l in eng.logs()
            if "/healthz" in json.dumps(l) or "/readyz" in json.dumps(l)]


def test_with_ready_requires_outputs_readiness_flips_to_503_when_the_peer_dies(
        sluice):
    eng, admin, peer, sink = _down_output_engine(sluice,
                                                 ready_requires_outputs=True)

    def status():
        return curl(admin_url(admin, "/readyz"))
    wait_for(lambda: status().status == 200, 5, interval=0.05, what="ready")
    sink.close()
    r = wait_for(lambda: (lambda r: r if r.status == 503 else None)(status()), 5,
                 interval=0.05, what="readyz to turn 503")
    body = r.json()
    assert body["ready"] is False
    assert body["reasons"] == ["every output is failing"]
    assert body["outputs"]["downstream"] == "failing"
    h = curl(admin_url(admin, "/healthz"))  # alive all along
    assert h.status == 200 and h.json()["outputs"]["downstream"] == "failing"
    for _ in range(5):
        assert status().status == 503
    # a 503 probe is not a refused request: no log line, however many
    assert _probe_log_lines(eng) == [], _probe_log_lines(eng)
    with Sink(port=peer):
        wait_for(lambda: status().status == 200, 5, interval=0.05,
                 what="ready again once the peer is back")


def test_by_default_a_down_output_keeps_readyz_200_and_shows_on_healthz_and_metrics(
        sluice):
    eng, admin, peer, sink = _down_output_engine(sluice)
    wait_for(lambda: metric(metrics(admin), "sluice_output_healthy",
                            output="downstream") == 1, 5, interval=0.05,
             what="downstream healthy")
    sink.close()
    wait_for(lambda: metric(metrics(admin), "sluice_output_healthy",
                            output="downstream") == 0, 5, interval=0.05,
             what="sluice_output_healthy to turn 0")
    h = curl(admin_url(admin, "/healthz"))
    assert h.status == 200
    assert h.json() == {"status": "ok",
                        "outputs": {"downstream": "failing", "dead_letter": "ok"}}
    for _ in range(5):
        r = curl(admin_url(admin, "/readyz"))
        assert r.status == 200, r
        body = r.json()
        assert body["ready"] is True and body["reasons"] == []
        assert body["outputs"]["downstream"] == "failing"
    assert _probe_log_lines(eng) == [], _probe_log_lines(eng)


def test_probes_need_no_token_and_write_no_log_lines(sluice, tmp_path):
    port, admin = ports(2)
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    cfg = config(port, admin_port=admin)
    cfg["admin"]["bearer_token_file"] = str(token)
    eng = sluice(cfg)
    assert curl(admin_url(admin, "/readyz")).status == 200
    assert curl(admin_url(admin, "/healthz")).status == 200
    assert curl(admin_url(admin, "/readyz"),
                headers=["Authorization: Bearer wrong"]).status == 200
    # other endpoints still log a refusal: the quiet flag is for probes only
    assert curl(admin_url(admin, "/metrics")).status == 401
    eng.wait_log("http request refused", status=401)
    assert _probe_log_lines(eng) == [], _probe_log_lines(eng)


def test_every_endpoint_but_the_probes_wants_the_bearer_token(sluice, tmp_path):
    port, admin = ports(2)
    (tmp_path / "admin.token").write_text("adm1n\n")
    cfg = config(port, admin_port=admin)
    cfg["admin"]["bearer_token_file"] = str(tmp_path / "admin.token")
    sluice(cfg)
    assert curl(admin_url(admin, "/healthz")).status == 200
    assert curl(admin_url(admin, "/readyz")).status == 200
    for path in ("/metrics", "/rules", "/tap?limit=1"):
        r = curl(admin_url(admin, path))
        assert r.status == 401, path
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = curl(admin_url(admin, path), headers=["Authorization: Bearer wrong"])
        assert r.status == 401, path
    assert curl(admin_url(admin, "/reload"), method="POST").status == 401
    good = ["Authorization: Bearer adm1n"]
    assert curl(admin_url(admin, "/readyz"), headers=good).status == 200
    assert curl(admin_url(admin, "/rules"), headers=good).status == 200
    assert curl(admin_url(admin, "/reload"), method="POST", headers=good).status == 200
    text = metrics(admin, token="adm1n")
    # 3 endpoints x (no token, wrong token) + POST /reload
    assert metric(text, "sluice_admin_requests_total", server="admin", code="401") == 7


def test_admin_unknown_path_is_404_and_wrong_method_405(sluice):
    port, admin = ports(2)
    sluice(config(port, admin_port=admin))
    assert curl(admin_url(admin, "/nope")).status == 404
    r = curl(admin_url(admin, "/reload"))
    assert r.status == 405 and r.headers["allow"] == "POST"
    assert curl(admin_url(admin, "/metrics"), method="POST").status == 405


def test_admin_port_in_use_fails_start_with_a_clear_error(sluice):
    import socket
    port, admin = ports(2)
    holder = socket.socket()
    holder.bind(("127.0.0.1", admin))
    holder.listen(1)
    try:
        with pytest.raises(EngineExited) as e:
            sluice(config(port, admin_port=admin))
        assert "admin.listen" in str(e.value)
    finally:
        holder.close()


# ---- metrics --------------------------------------------------------------

RULE_OK = """
return {
  topics = "*",
  on_event = function(ev)
    sluice.counter("seen", { topic = ev.topic }):inc()
    if ev.topic == "drop.me" then return sluice.drop("not wanted") end
    return "out"
  end,
}
"""


def rules_config(port, admin, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "10_pass.lua").write_text(RULE_OK)
    cfg = config(port, admin_port=admin)
    cfg["rules"] = {"dir": str(rules), "watch": False}
    return cfg, rules


def test_metrics_pass_promtool_check_metrics(sluice, tmp_path):
    port, admin = ports(2)
    cfg, _ = rules_config(port, admin, tmp_path)
    sluice(cfg)
    ingest(port, json.dumps([{"topic": "a"}, {"topic": "drop.me"}, {"topic": "b"}]))
    curl("http://127.0.0.1:%d/v1/events" % port, data='{"nope":1}',
         content_type="application/json")
    wait_metric(admin, "sluice_output_events_total", lambda v: v == 2, output="out")
    text = metrics(admin)
    r = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                       capture_output=True, timeout=30)
    assert r.returncode == 0, (r.stdout + r.stderr).decode() + "\n" + text
    for name, labels, want in [
            ("sluice_input_events_total", {"input": "web"}, 3),
            ("sluice_input_bad_total", {"input": "web"}, 1),
            ("sluice_output_events_total", {"output": "out"}, 2),
            ("sluice_events_dropped_total", {"reason": "rule"}, 1),
            ("sluice_queue_events", {"output": "out"}, 0),
            ("sluice_queue_capacity_events", {"output": "out"}, 100000),
            ("sluice_delivery_latency_seconds_count", {"output": "out"}, 2),
            ("sluice_rule_calls_total", {"rule": "10_pass.lua"}, 3),
            ("sluice_http_requests_total", {"input": "web", "code": "202"}, 1),
            ("sluice_http_requests_total", {"input": "web", "code": "400"}, 1),
            ("sluice_input_connections_open", {"input": "web"}, 0),
            ("sluice_rules_version", {}, 1)]:
        assert metric(text, name, **labels) == want, (name, labels, text)
    assert metric(text, "sluice_rule_value_total", rule="10_pass.lua", name="seen",
                  topic="a") == 1
    assert metric(text, "process_resident_memory_bytes") > 1e6
    assert metric(text, "process_open_fds") > 3
    assert metric(text, "process_cpu_seconds_total") >= 0
    assert abs(metric(text, "process_start_time_seconds") - time.time()) < 60
    assert "# TYPE sluice_delivery_latency_seconds histogram" in text


# ---- rules and reload -----------------------------------------------------

def test_rules_status_and_reload_accepted_and_rejected(sluice, tmp_path):
    port, admin = ports(2)
    cfg, rules = rules_config(port, admin, tmp_path)
    sluice(cfg)
    st = curl(admin_url(admin, "/rules")).json()
    assert st["version"] == 1
    assert [r["file"].rsplit("/", 1)[-1] for r in st["rules"]] == ["10_pass.lua"]
    assert len(st["rules"][0]["hash"]) == 64
    (rules / "20_more.lua").write_text(RULE_OK)
    r = curl(admin_url(admin, "/reload"), method="POST")
    assert r.status == 200
    st = r.json()
    assert st["version"] == 2 and len(st["rules"]) == 2
    assert st["last_reload"]["result"] == "ok"
    (rules / "30_broken.lua").write_text("return {\n  topics = '*',\n  on_event = \n")
    r = curl(admin_url(admin, "/reload"), method="POST")
    assert r.status == 422
    body = r.json()
    assert "30_broken.lua" in body["error"]
    assert body["status"]["version"] == 2  # the live set stays
    assert body["status"]["last_reload"]["result"] == "failed"
    ingest(port, '{"topic":"still.works"}')


# ---- the tap --------------------------------------------------------------

def tap_proc(admin, query):
    return subprocess.Popen(["curl", "-sN", "--max-time", "20",
                             admin_url(admin, "/tap?" + query)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_tap_streams_matching_events_redacted_until_the_limit(sluice):
    port, admin = ports(2)
    sluice(config(port, admin_port=admin))
    p = tap_proc(admin, "topics=orders.*,audit&limit=3")
    try:
        wait_metric(admin, "sluice_tap_clients", lambda v: v == 1)
        batch = [
            {"topic": "other", "payload": 0},
            {"topic": "orders.new", "payload": 1,
             "headers": {"authorization": "Bearer xyz", "Cookie": "c=1", "x-ok": "v"}},
            {"topic": "audit", "key": "k", "payload": {"a": [1, 2]}},
            {"topic": "orders.old", "payload": 3},
            {"topic": "orders.late", "payload": 4},
        ]
        ingest(port, json.dumps(batch))
        out, _ = p.communicate(timeout=15)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0
    lines = [json.loads(l) for l in out.decode().splitlines()]
    assert len(lines) == 3
    assert [l["event"]["topic"] for l in lines] == ["orders.new", "audit", "orders.old"]
    assert all(l["outcome"] == "routed" for l in lines)
    h = lines[0]["event"]["headers"]
    assert h["authorization"] == "***" and h["Cookie"] == "***" and h["x-ok"] == "v"
    assert h["traceparent"].startswith("00-")
    assert lines[1]["event"]["key"] == "k" and lines[1]["event"]["payload"] == {"a": [1, 2]}
    wait_metric(admin, "sluice_tap_clients", lambda v: v == 0)
    text = metrics(admin)
    assert metric(text, "sluice_tap_lines_total") == 3


def test_tap_sample_keeps_a_share_and_bad_parameters_are_400(sluice, tmp_path):
    port, admin = ports(2)
    sluice(config(port, admin_port=admin))
    for q in ("sample=0", "sample=1.5", "sample=x", "limit=0", "limit=-1", "topics="):
        assert curl(admin_url(admin, "/tap?" + q)).status == 400, q
    # curl writes to a file: tap lines now carry the decision, and 500 of
    # them no longer fit a pipe nobody reads until curl is gone
    sink = open(str(tmp_path / "tap.out"), "wb")
    p = subprocess.Popen(["curl", "-sN", "--max-time", "20",
                          admin_url(admin, "/tap?topics=s.*&sample=0.25")],
                         stdout=sink, stderr=subprocess.PIPE)
    try:
        wait_metric(admin, "sluice_tap_clients", lambda v: v == 1)
        body = "\n".join(json.dumps({"topic": "s.x", "payload": i}) for i in range(2000))
        ingest(port, body, "application/x-ndjson")
        wait_metric(admin, "sluice_output_events_total", lambda v: v == 2000, output="out")
        # every line the engine sent is in curl's file (not 0.3 s and hope)
        def caught_up():
            text = metrics(admin)
            lines = len((tmp_path / "tap.out").read_bytes().splitlines())
            sent = metric(text, "sluice_tap_lines_total")
            assert metric(text, "sluice_tap_lines_dropped_total") == 0
            return (sent,) if lines == sent else None
        (sent,) = wait_for(caught_up, 20, interval=0.05,
                           what="curl to write every tap line sent")
    finally:
        p.terminate()
        p.communicate(timeout=10)
        sink.close()
    n = len((tmp_path / "tap.out").read_bytes().decode().splitlines())
    assert n == sent
    assert 300 < n < 700, n  # about a quarter of 2000


def test_a_tap_client_that_never_reads_never_slows_the_pipeline(sluice):
    """Full speed into a null output, without a tap and then with a tap
    client that matches everything and never reads: the second is about as
    fast (best of two runs each, to keep the noise of a shared machine out),
    every tap line is either sent or dropped and counted, and what is sent
    is bounded by the per-client buffer, not by the stream."""
    tcp, admin = ports(2)
    sluice({
        "inputs": [{"name": "app", "type": "tcp", "listen": "127.0.0.1:%d" % tcp}],
        "outputs": [{"name": "null", "type": "null"}],
        "routes": [{"topics": "*", "to": "null"}],
        "admin": {"listen": "127.0.0.1:%d" % admin},
    })
    n = 300000
    data = b"".join(pack({"topic": "load.x", "key": "k%d" % (i % 10),
                          "headers": {"authorization": "secret"},
                          "payload": {"i": i, "s": "x" * 40}}) for i in range(n))

    def run():
        t0 = time.monotonic()
        send_events("127.0.0.1:%d" % tcp, data, timeout=60)
        return time.monotonic() - t0

    base = min(run(), run())
    wait_metric(admin, "sluice_output_events_total", lambda v: v == 2 * n,
                output="null")
    stalled = RawClient(admin, rcvbuf=4096)
    stalled.send(request("GET", "/tap?topics=*"))
    wait_metric(admin, "sluice_tap_clients", lambda v: v == 1)
    # best of two, and of more (six at most) while the best is over the
    # bound: a busy neighbour can slow both runs of one phase (seen under
    # ASan at load ~7: no tap 0.65 s, stalled tap 1.59 s; alone, runs of
    # either phase range 0.7-1.5 s). A tap that slows every run still fails.
    tapped, runs = run(), 1
    while runs < 2 or (tapped >= 1.5 * base + 0.2 and runs < 6):
        tapped = min(tapped, run())
        runs += 1
    wait_metric(admin, "sluice_output_events_total",
                lambda v: v == (2 + runs) * n, output="null", timeout=30)
    text = metrics(admin)
    sent = metric(text, "sluice_tap_lines_total")
    dropped = metric(text, "sluice_tap_lines_dropped_total")
    print("no tap: %.2fs, stalled tap: %.2fs (best of %d) for %d events; tap "
          "lines sent %d, dropped %d" % (base, tapped, runs, n, sent, dropped))
    assert dropped > 0
    assert sent + dropped == runs * n  # every matching event is accounted for
    assert sent * 150 < 8 * (1 << 20)  # bounded by buffers, not the stream
    assert tapped < 1.5 * base + 0.2, (base, tapped)
    assert metric(text, "sluice_tap_clients") == 1
    stalled.close()
    wait_metric(admin, "sluice_tap_clients", lambda v: v == 0)


def test_with_ready_requires_outputs_one_failing_output_of_two_keeps_readyz_200(sluice):
    """README: with ready_requires_outputs the probe fails only while every
    output fails (the dead letter aside); one down output of two shows as
    failing and readiness holds."""
    port, admin, peer = ports(3)
    cfg = config(port, admin_port=admin, outputs=[
        {"name": "downstream", "type": "tcp", "address": "127.0.0.1:%d" % peer,
         "retry": {"initial_ms": 50, "max_ms": 200}},
        {"name": "local", "type": "file", "path": "local.ndjson"}],
        routes=[{"topics": "*", "to": "local"}])
    cfg["admin"]["ready_requires_outputs"] = True
    sluice(cfg)
    r = wait_for(lambda: (lambda r: r if r.json()["outputs"]["downstream"] == "failing"
                          else None)(curl(admin_url(admin, "/readyz"))),
                 5, interval=0.05, what="downstream shown failing")
    assert r.status == 200 and r.json()["ready"] is True
    assert r.json()["outputs"]["local"] == "ok"


def test_readyz_is_503_stopping_while_sigterm_drains(sluice):
    """README: /readyz answers 503 with a reason while the engine stops
    (a drain waiting for a down peer here); the admin server still
    answers then, and the drain ends once the peer is back."""
    import signal
    port, admin, peer = ports(3)
    cfg = config(port, admin_port=admin, outputs=[{
        "name": "downstream", "type": "tcp", "address": "127.0.0.1:%d" % peer,
        "retry": {"initial_ms": 20, "max_ms": 100}}],
        routes=[{"topics": "*", "to": "downstream"}], shutdown_timeout=30)
    eng = sluice(cfg)
    ingest(port, json.dumps({"topic": "t", "payload": 1}))
    eng.signal(signal.SIGTERM)
    r = wait_for(lambda: (lambda r: r if r.status == 503 else None)(
        curl(admin_url(admin, "/readyz"))), 5, interval=0.05, what="readyz 503")
    assert "stopping: inputs no longer accept events" in r.json()["reasons"]
    with Sink(port=peer) as sink:
        sink.wait(1)
        assert eng.wait(15) == 0


def test_tap_masks_every_default_header_and_the_configured_ones_too(sluice):
    """README: authorization, proxy-authorization, cookie, set-cookie and
    x-api-key are masked on the tap (any case); admin.redact_headers adds
    to them, it never unmasks one."""
    port, admin = ports(2)
    cfg = config(port, admin_port=admin)
    cfg["admin"]["redact_headers"] = ["x-secret"]
    sluice(cfg)
    p = tap_proc(admin, "topics=t&limit=1")
    masked = {"Authorization": "Bearer a", "proxy-authorization": "Basic b",
              "cookie": "c=1", "Set-Cookie": "d=2", "X-Api-Key": "k",
              "x-secret": "s"}
    try:
        wait_metric(admin, "sluice_tap_clients", lambda v: v == 1)
        ingest(port, json.dumps({"topic": "t", "payload": 1,
                                 "headers": dict(masked, **{"x-ok": "v"})}))
        out, _ = p.communicate(timeout=15)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    [line] = [json.loads(l) for l in out.decode().splitlines()]
    h = line["event"]["headers"]
    assert {k: h[k] for k in masked} == {k: "***" for k in masked}
    assert h["x-ok"] == "v"


# ---- invalid UTF-8 ----------------------------------------------------------

RULE_BAD_BYTES = r"""
return {
  topics = "*",
  on_event = function(ev)
    if ev.topic == "log" then
      sluice.log("warn", "bad \255 byte", { k = "v\195", ["\254"] = 1 })
    elseif ev.topic == "fail" then
      error("boom \226\130")
    end
    return "out"
  end,
}
"""

FFFD = "\ufffd"


def strict_json(raw):
    """raw (bytes) as JSON, failing on any byte that is not UTF-8 (a
    reader of logs or of the API that is strict about it)."""
    return json.loads(raw.decode("utf-8", errors="strict"))


def test_invalid_utf8_becomes_u_fffd_in_log_lines_and_the_status_json(
        sluice, tmp_path):
    """README Outputs and NDJSON: invalid UTF-8 in strings becomes U+FFFD,
    in the logs and the status too: a rule file whose name is not UTF-8,
    a rule's sluice.log message and fields, its error, and a reload error
    all reach stderr and GET /rules, POST /reload as well-formed UTF-8 JSON,
    each ill-formed sequence one U+FFFD."""
    port, admin = ports(2)
    rules = tmp_path / "rules"
    rules.mkdir()
    bad_name = os.fsencode(str(rules)) + b"/10_\xff\xfe.lua"
    with open(bad_name, "w") as f:
        f.write(RULE_BAD_BYTES)
    cfg = config(port, admin_port=admin)
    cfg["rules"] = {"dir": str(rules), "watch": False}
    eng = sluice(cfg)
    shown = "10_" + FFFD + FFFD + ".lua"  # \xff and \xfe: one each

    # the status: the rule's file
    r = curl(admin_url(admin, "/rules"))
    assert r.status == 200
    st = strict_json(r.body)
    assert [x["file"].rsplit("/", 1)[-1] for x in st["rules"]] == [shown]

    # log lines: sluice.log's message and fields, the rule's error
    ingest(port, '[{"topic":"log"},{"topic":"fail"}]')
    eng.wait_log("rule failed; event sent to the dead letter")
    eng.wait_log("bad " + FFFD + " byte")
    lines = [strict_json(l) for l in eng.stderr_path.read_bytes().splitlines()
             if l.startswith(b"{")]
    (logged,) = [l for l in lines if l["msg"] == "bad " + FFFD + " byte"]
    assert logged["level"] == "warn"
    assert logged["fields"] == {"k": "v" + FFFD, FFFD: 1}
    assert logged["rule"].rsplit("/", 1)[-1] == shown
    (failed,) = [l for l in lines
                 if l["msg"] == "rule failed; event sent to the dead letter"]
    assert failed["error"].endswith(": boom " + FFFD), failed  # \xe2\x82: one
    assert shown in failed["error"] and shown in failed["rule"], failed

    # the status: a reload's error, in the 422 answer and in GET /rules
    with open(os.fsencode(str(rules)) + b"/20_\xc0.lua", "w") as f:
        f.write('error("cannot load \\237\\160\\128 here")\n')  # a surrogate
    r = curl(admin_url(admin, "/reload"), method="POST")
    assert r.status == 422
    body = strict_json(r.body)
    # \xc0 (never in UTF-8) is one; the surrogate's three bytes are three
    assert "20_" + FFFD + ".lua" in body["error"], body
    assert "cannot load " + FFFD * 3 + " here" in body["error"], body
    assert body["status"]["last_reload"]["error"] == body["error"]
    st = strict_json(curl(admin_url(admin, "/rules")).body)
    assert st["last_reload"]["error"] == body["error"]
    # logged once: by the rule set, or for all workers (SLUICE_TEST_WORKERS)
    rejected = wait_for(lambda: eng.find_logs(
        "rules reload rejected; the live version stays") + eng.find_logs(
        "rules reload failed on a worker; every worker keeps the running rules"),
        what="the reload's rejection logged")
    assert [l["error"] for l in rejected] == [body["error"]]
    # and nothing on stderr is other than UTF-8
    eng.stderr_path.read_bytes().decode("utf-8", errors="strict")
    assert eng.stop() == 0


def test_invalid_utf8_in_an_event_becomes_u_fffd_on_the_tap(sluice):
    """README Outputs and NDJSON: invalid UTF-8 in strings becomes U+FFFD,
    on the tap too: an event read over the native protocol with ill-formed
    strings in its key, a header and its payload is a well-formed UTF-8
    tap line, each ill-formed sequence one U+FFFD."""
    port, admin, native = ports(3)
    sluice(config(port, admin_port=admin,
                  inputs=[{"name": "web", "type": "http",
                           "listen": "127.0.0.1:%d" % port},
                          {"name": "in", "type": "tcp",
                           "listen": "127.0.0.1:%d" % native}]))
    p = tap_proc(admin, "topics=t&limit=1")
    try:
        wait_metric(admin, "sluice_tap_clients", lambda v: v == 1)
        # bytes packed as msgpack str (use_bin_type=False): not UTF-8
        send_events("127.0.0.1:%d" % native, [msgpack.packb(
            {"topic": "t", "key": b"k\xff", "headers": {"h": b"v\xe2\x82"},
             "payload": {"s": b"a\xfe\xffb", b"\xc0": 1}}, use_bin_type=False)])
        out, _ = p.communicate(timeout=15)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0
    (line,) = [strict_json(l) for l in out.splitlines()]
    ev = line["event"]
    assert ev["key"] == "k" + FFFD
    assert ev["headers"]["h"] == "v" + FFFD  # a cut 3-byte sequence: one
    assert ev["payload"] == {"s": "a" + FFFD + FFFD + "b", FFFD: 1}
