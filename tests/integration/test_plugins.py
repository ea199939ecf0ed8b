"""`sluice plugins` and the registry behind it: every plugin is listed with
its keys, and the config checker takes the same tables (a key a plugin
lists is accepted for that type; any other is refused naming the type)."""
import re

import pytest

from conftest import lua, run_sluice

HEADER = re.compile(r"^(input|output) ([a-z]+): \S.*$")
KEY = re.compile(r"^  ([a-z_.]+) +(\S.*?) {2,}(\S+) +(\S.*)$")

# a key each plugin must list (kind, type) -> key
KNOWN = {
    ("input", "tcp"): "listen", ("input", "unix"): "listen",
    ("input", "http"): "max_body_bytes", ("output", "stdout"): "format",
    ("output", "file"): "fsync", ("output", "tcp"): "address",
    ("output", "unix"): "ack",
    ("input", "forward"): "shared_key", ("output", "forward"): "require_ack",
    ("input", "syslog"): "on_malformed", ("input", "stdin"): "exit_on_eof",
    ("output", "exec"): "command",
    ("output", "http"): "url",
    ("input", "redis"): "group", ("output", "redis"): "maxlen",
    ("input", "nats"): "subject", ("output", "nats"): "stream",
    ("input", "kafka"): "group", ("output", "kafka"): "brokers",
}


def listing():
    r = run_sluice("plugins")
    assert r.returncode == 0, r.stderr
    plugins, cur = {}, None
    for line in r.stdout.splitlines():
        m = HEADER.match(line)
        if m:
            cur = plugins.setdefault((m.group(1), m.group(2)), {})
            continue
        m = KEY.match(line)
        if m:
            assert cur is not None, line
            cur[m.group(1)] = (m.group(2), m.group(3), m.group(4))
    return plugins, r.stdout


def test_plugins_lists_every_type_with_its_keys_types_defaults_and_docs():
    plugins, out = listing()
    assert set(plugins) == set(KNOWN) | {("output", "null")}, out
    for (kind, typ), key in KNOWN.items():
        assert key in plugins[(kind, typ)], (kind, typ, out)
    assert plugins[("output", "null")] == {}
    assert plugins[("output", "file")]["fsync"] == (
        "choice always|never", "never",
        '"always": fdatasync each batch before it counts as delivered')
    assert plugins[("output", "tcp")]["address"][:2] == ("host:port", "required")
    assert plugins[("input", "http")]["max_body_bytes"][:2] == (
        "size 1..1073741824", "8MiB")
    assert plugins[("input", "tcp")]["idle_timeout_ms"][1] == "0"
    assert plugins[("input", "http")]["idle_timeout_ms"][1] == "60000"
    assert re.search(r"^every output takes: name, type, queue, retry, .*$",
                     out, re.M), out


def test_the_http_inputs_listen_doc_names_the_paths_it_serves():
    # POST /events is a 404: the input serves /v1/events (README "HTTP
    # ingest"), bare payloads at /v1/topics/{topic} and OTLP at /v1/logs
    plugins, out = listing()
    doc = plugins[("input", "http")]["listen"][2]
    for path in ("/v1/events", "/v1/topics/{topic}", "/v1/logs"):
        assert path in doc, doc
    assert "POST /events" not in doc, doc



def test_the_tls_line_names_every_plugin_that_takes_a_tls_table():
    # the README's config table lists tls on forward, nats and kafka plugins
    # and the http output too; the line once named only tcp, http, syslog
    plugins, out = listing()
    m = re.search(r"^every tls table \((.*)\) takes:$", out, re.M)
    assert m, out
    named = {"input": set(), "output": set()}
    for part in m.group(1).split("; "):
        if part == "admin":
            continue
        types, kind = part.rsplit(" ", 1)
        named[kind.rstrip("s")] = set(types.split(", "))
    for kind in ("input", "output"):
        want = {typ for (k, typ), keys in plugins.items()
                if k == kind and "tls" in keys}
        assert named[kind] == want, (kind, named[kind], want)
    assert m.group(1).endswith("admin")

def base_config(tmp_path):
    return {"inputs": [{"name": "in", "type": "tcp", "listen": "127.0.0.1:7490"}],
            "outputs": [{"name": "f", "type": "file",
                         "path": str(tmp_path / "o.ndjson")}]}


def check(tmp_path, cfg):
    p = tmp_path / "c.lua"
    p.write_text("return " + lua(cfg) + "\n")
    r = run_sluice("check", "-c", p)
    return r.returncode, [line[len(str(p)) + 2:] for line in r.stderr.splitlines()
                          if line.startswith("%s: " % p)]


def test_checker_refuses_an_unknown_key_naming_the_plugin_type_and_its_keys(tmp_path):
    plugins, _ = listing()
    for (kind, typ), keys in sorted(plugins.items()):
        cfg = base_config(tmp_path)
        item = {"name": "x", "type": typ, "nosuchkey": 1}
        for k, (_, default, _) in keys.items():
            if default == "required":
                item[k] = {"listen": "127.0.0.1:7491", "address": "127.0.0.1:7492",
                           "path": str(tmp_path / ("p-" + typ)),
                           "command": ["true"],
                           "url": "http://127.0.0.1:7495/",
                           "stream": "s", "group": "g", "subject": "a.b",
                           "brokers": "127.0.0.1:9092", "topics": "t"}[k]
        cfg[kind + "s"].append(item)
        rc, lines = check(tmp_path, cfg)
        assert rc == 1, (typ, lines)
        assert len(lines) == 1, (typ, lines)
        m = re.fullmatch(r"%ss\[2\]: unknown key 'nosuchkey' \(expected one of: "
                         r"name, type, (.*) for type %s\)" % (kind, typ), lines[0])
        assert m, lines
        # the hint lists the plugin's own keys, as `sluice plugins` does
        listed = [k for k in keys if "." not in k]
        assert m.group(1).split(", ")[:len(listed)] == listed, (typ, m.group(1))


def test_checker_refuses_a_key_only_other_types_take_naming_them(tmp_path):
    cfg = base_config(tmp_path)
    cfg["outputs"][0]["ack"] = True
    # (fsync: format is taken by the broker outputs too, a list that grows)
    cfg["outputs"].append({"name": "t", "type": "tcp", "address": "127.0.0.1:7493",
                           "fsync": "always"})
    rc, lines = check(tmp_path, cfg)
    assert rc == 1
    assert lines == ["outputs[1].ack: only tcp and unix outputs take ack",
                     "outputs[2].fsync: only file outputs take fsync"]


def test_checker_names_every_registered_type_for_an_unknown_one(tmp_path):
    plugins, _ = listing()
    cfg = base_config(tmp_path)
    cfg["outputs"].append({"name": "n", "type": "pigeon"})
    cfg["inputs"].append({"name": "k", "type": "smoke"})
    rc, lines = check(tmp_path, cfg)
    assert rc == 1
    outs = [t for (k, t) in plugins if k == "output"]
    ins = [t for (k, t) in plugins if k == "input"]
    assert lines == [
        'inputs[2].type: unknown input type "smoke" (expected %s or %s)'
        % (", ".join(ins[:-1]), ins[-1]),
        'outputs[2].type: unknown output type "pigeon" (expected %s or %s)'
        % (", ".join(outs[:-1]), outs[-1])]


def test_checker_still_accepts_keys_of_other_types_that_configs_always_set(tmp_path):
    # before each plugin had its own table these were silently ignored;
    # a config that worked keeps working
    cfg = base_config(tmp_path)
    cfg["inputs"][0]["topic"] = "t"
    cfg["outputs"][0].update({"address": "127.0.0.1:1", "ack": False})
    cfg["outputs"].append({"name": "t", "type": "tcp", "address": "127.0.0.1:7494",
                           "fsync": "never", "path": "p"})
    rc, lines = check(tmp_path, cfg)
    assert (rc, lines) == (0, [])


# keys a plugin refuses taken together, beyond each key's type and range
REFUSED_TOGETHER = [
    ("inputs", {"name": "s", "type": "syslog"}, "set listen (tcp) or udp, or both"),
    ("inputs", {"name": "s", "type": "syslog", "udp": "127.0.0.1:9",
                "topic": "x.{bogus}"}, "unknown placeholder"),
    ("inputs", {"name": "n", "type": "nats", "subject": "a", "stream": "S",
                "queue": "q"}, "queue is for core subscriptions"),
    ("inputs", {"name": "n", "type": "nats", "subject": "a", "stream": "S",
                "durable": "a.b"}, "durable must not contain '.'"),
    ("inputs", {"name": "r", "type": "redis", "address": "127.0.0.1:9",
                "stream": "a,b,c", "group": "g", "max_inflight": 2},
     "max_inflight (2) is below the number of streams (3)"),
    ("inputs", {"name": "r", "type": "redis", "address": "127.0.0.1:9",
                "stream": " , ", "group": "g"}, "stream: expected 1 to 64 names"),
    ("inputs", {"name": "h", "type": "http", "listen": "127.0.0.1:9",
                "otlp_topic": "logs.{service.name"}, "otlp_topic: a {field} does not close"),
    ("inputs", {"name": "k", "type": "kafka", "brokers": "127.0.0.1:9",
                "group": "g", "topics": " , "}, "topics: no topic named"),
    ("inputs", {"name": "k", "type": "kafka", "brokers": "127.0.0.1:9",
                "group": "g", "topics": "a", "options": "no.such.property=1"},
     "kafka property no.such.property"),
    ("inputs", {"name": "k", "type": "kafka", "brokers": "127.0.0.1:9",
                "group": "g", "topics": "a", "tls": {"server_name": "b"}},
     "tls.server_name: kafka checks each broker's"),
    ("outputs", {"name": "o", "type": "kafka", "brokers": "127.0.0.1:9",
                 "options": "acks"}, 'is not key=value'),
    ("outputs", {"name": "o", "type": "http", "url": "https://x/{bogus}"},
     "url: unknown or unclosed field {bogus}"),
    ("outputs", {"name": "o", "type": "http", "url": "ftp://x/"},
     "url: expected http://... or https://..., got ftp://x/"),
    ("outputs", {"name": "o", "type": "http", "url": "http://x/",
                 "tls": {"verify_peer": False}}, "a tls block needs an https:// url"),
    ("outputs", {"name": "o", "type": "http", "url": "https://x/",
                 "tls": {"server_name": "y"}}, "tls.server_name: the http output checks"),
    ("outputs", {"name": "o", "type": "http", "url": "https://x/",
                 "bearer_token": "t", "user": "u"}, "two kinds of auth"),
    ("outputs", {"name": "o", "type": "http", "url": "https://x/",
                 "password": "p"}, "password needs user"),
]


@pytest.mark.parametrize("kind,entry,why", REFUSED_TOGETHER,
                         ids=[w[:30] for _, _, w in REFUSED_TOGETHER])
def test_check_refuses_what_the_plugins_start_would_naming_the_entry(
        tmp_path, kind, entry, why):
    """README: `sluice check` exits 1 with every problem, and a wrong
    config is rejected before anything starts. These keys are each valid
    alone; the plugin refuses them together. `check` said ok and only
    `run` refused them, at the plugin's start ("cannot start"); now the
    loader asks the plugin, so both name the entry's path."""
    cfg = {"inputs": [{"name": "in", "type": "tcp", "listen": "127.0.0.1:9"}],
           "outputs": [{"name": "out", "type": "null"}],
           "routes": [{"topics": "*", "to": "out"}]}
    cfg[kind] = [entry] + ([] if kind == "outputs" else cfg["inputs"][1:])
    if kind == "outputs":
        cfg["routes"] = [{"topics": "*", "to": "o"}]
    p = tmp_path / "c.lua"
    p.write_text("return " + lua(cfg) + "\n")
    r = run_sluice("check", "-c", p)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "%s: %s[1]: " % (p, kind) in r.stderr and why in r.stderr, r.stderr
    r = run_sluice("run", "-c", p, cwd=tmp_path, timeout=20)
    assert r.returncode == 1 and why in r.stderr, r.stderr
    assert '"config problem"' in r.stderr, r.stderr  # refused at load


@pytest.mark.parametrize("where", ["http input", "http output token",
                                   "http output password", "admin"])
def test_check_refuses_a_token_or_password_file_it_cannot_read(tmp_path, where):
    """The files read at start (a bearer token, a password) are checked
    like a tls file: `sluice check` named none of them and `run` stopped
    at the plugin's start; now both refuse at load, naming the key."""
    missing = str(tmp_path / "nope")
    cfg = {"inputs": [{"name": "in", "type": "tcp", "listen": "127.0.0.1:9"}],
           "outputs": [{"name": "out", "type": "null"}],
           "routes": [{"topics": "*", "to": "out"}]}
    if where == "http input":
        cfg["inputs"] = [{"name": "h", "type": "http", "listen": "127.0.0.1:9",
                          "bearer_token_file": missing}]
        key = "inputs[1].bearer_token_file"
    elif where == "admin":
        cfg["admin"] = {"listen": "127.0.0.1:9", "bearer_token_file": missing}
        key = "admin.bearer_token_file"
    else:
        out = {"name": "out", "type": "http", "url": "http://127.0.0.1:9/"}
        if where.endswith("token"):
            out["bearer_token_file"], key = missing, "outputs[1].bearer_token_file"
        else:
            out.update(user="u", password_file=missing)
            key = "outputs[1].password_file"
        cfg["outputs"] = [out]
    p = tmp_path / "c.lua"
    p.write_text("return " + lua(cfg) + "\n")
    r = run_sluice("check", "-c", p)
    assert r.returncode == 1
    assert "%s: %s: cannot read %s: No such file" % (p, key, missing) in r.stderr, r.stderr
    r = run_sluice("run", "-c", p, cwd=tmp_path, timeout=20)
    assert r.returncode == 1 and '"config problem"' in r.stderr, r.stderr
