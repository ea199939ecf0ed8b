"""Differential test of README "Testing rules": the same generated rules and
events give the same decisions, routes, drop reasons, error kinds, changed
events (topic, key, headers, payload bytes) and sluice.emits in
  (1) testing.load(...):run(event) under busted (LuaJIT),
  (2) `sluice route -c conf --events FILE` (the dry run),
  (3) `sluice run` (native tcp in, file outputs in msgpack and NDJSON, one
      per output name, plus the dead letter),
each with rules.jit off and on. Rules and events come from rulegen.py with
a fixed seed.

Environment: SLUICE_DIFF_SEED (default 20261207), SLUICE_DIFF_CASES (rules,
default 400; each gets 1-3 events) for a longer run; BUILD (default build:
where sluice_core.so is, as tests/run.sh sets it).

What is normalised, as the README documents it: an emitted event's
traceparent is a child span of the event (a new random span id; the trace
id is compared); the dead letter's sluice-error and sluice-rule headers
name the rule's file as each side loads it (the message after file:line
is compared); NDJSON turns invalid UTF-8 into U+FFFD and cannot hold a NaN
payload byte for byte (the NDJSON and msgpack outputs are compared as
values, with those two exceptions)."""

import base64
import json
import math
import os
import random
import re
import struct
import subprocess

import msgpack

from conftest import ROOT, SLUICE_BIN, free_port, send_events
import rulegen

SEED = int(os.environ.get("SLUICE_DIFF_SEED", "20261207"))
CASES = int(os.environ.get("SLUICE_DIFF_CASES", "400"))
OUTS = ["a", "b", "c", "rest", "un", "dl"]

SPEC = r'''
local testing = require("sluice.testing")
local JIT = os.getenv("DIFF_JIT") == "1"
local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end
local function unhex(h)
  return (h:gsub("..", function(x) return string.char(tonumber(x, 16)) end))
end
local function hs(s)
  if s == nil then return "null" end
  return '"' .. hex(tostring(s)) .. '"'
end
local function headers(h)
  local ks = {}
  for k in pairs(h or {}) do ks[#ks + 1] = k end
  table.sort(ks)
  local p = {}
  for _, k in ipairs(ks) do p[#p + 1] = hs(k) .. ":" .. hs(h[k]) end
  return "{" .. table.concat(p, ",") .. "}"
end
local function evj(e)
  return '{"topic":' .. hs(e.topic) .. ',"key":' .. hs(e.key) .. ',"id":' .. hs(e.id)
    .. ',"time_ns":' .. hs(e.time_ns) .. ',"headers":' .. headers(e.headers)
    .. ',"payload":' .. hs(e.payload_raw) .. '}'
end
describe("differential", function()
  it("runs every case", function()
    local out = assert(io.open(os.getenv("DIFF_OUT"), "w"))
    for line in io.lines(os.getenv("DIFF_CASES")) do
      local path, rest = line:match("^(%S+) (.*)$")
      local rule = testing.load(path, { jit = JIT })
      for id, topic, key, tns, hdr, pl in rest:gmatch("(%x*),(%x*),(%x*),(%d+),(%x*),(%x*);") do
        local h = {}
        for k, v in unhex(hdr):gmatch("([^\1]*)\1([^\2]*)\2") do h[k] = v end
        local ev = { id = unhex(id), topic = unhex(topic), time_ns = tns, headers = h,
                     payload_raw = pl ~= "" and unhex(pl) or nil }
        if key ~= "" then ev.key = unhex(key:sub(3)) end
        local ok, r = pcall(rule.run, rule, ev)
        if not ok then
          out:write('{"raised":', hs(r), '}\n')
        else
          local em = {}
          for _, e in ipairs(r.emitted) do
            em[#em + 1] = '{"output":' .. hs(e.output) .. ',"event":' .. evj(e.event) .. '}'
          end
          out:write('{"verdict":"', r.verdict, '","routes":[', table.concat(
            (function() local t = {} for i, x in ipairs(r.routes) do t[i] = hs(x) end return t end)(), ","),
            '],"dropped":', hs(r.dropped), ',"error":', hs(r.error), ',"error_kind":', hs(r.error_kind),
            ',"event":', evj(r.event), ',"emitted":[', table.concat(em, ","), ']}\n')
        end
      end
      rule:close()
    end
    out:close()
  end)
end)
'''


def unhex_obj(o):
    """The busted side's hex strings back to bytes/str."""
    def s(x):
        return None if x is None else bytes.fromhex(x)
    ev = lambda e: {"topic": s(e["topic"]), "key": s(e["key"]), "id": s(e["id"]),
                    "time_ns": s(e["time_ns"]),
                    "headers": {bytes.fromhex(k): bytes.fromhex(v) for k, v in e["headers"].items()},
                    "payload": s(e["payload"])}
    if "raised" in o:
        return {"raised": s(o["raised"])}
    return {"verdict": o["verdict"], "routes": [s(x).decode() for x in o["routes"]],
            "dropped": s(o["dropped"]), "error": s(o["error"]), "error_kind": s(o["error_kind"]),
            "event": ev(o["event"]),
            "emitted": [{"output": s(e["output"]).decode(), "event": ev(e["event"])} for e in o["emitted"]]}


class Corpus:
    def __init__(self, root, seed, cases):
        r = random.Random(seed)
        self.root = root
        self.rules_dir = root / "rules"
        self.rules_dir.mkdir()
        self.cases = []            # (case, rule source, on_error, [(fields, payload, wire)])
        for i in range(cases):
            src, on_error = rulegen.rule(r, i)
            evs = [rulegen.event(r, i, k) for k in range(r.randint(1, 3))]
            (self.rules_dir / ("r%05d.lua" % i)).write_text(src)
            self.cases.append((i, src, on_error, evs))
        self.wire = b"".join(w for c in self.cases for (_, _, w) in c[3])
        (root / "events.msgpack").write_bytes(self.wire)
        lines = []
        for i, _, _, evs in self.cases:
            parts = []
            for f, pl, _ in evs:
                hdr = b"".join(k.encode() + b"\1" + v.encode() + b"\2"
                               for k, v in f["headers"].items())
                parts.append("%s,%s,%s,%d,%s,%s;" % (
                    f["id"].encode().hex(), f["topic"].encode().hex(),
                    ("00" + f["key"].encode().hex()) if "key" in f else "",
                    f["time"], hdr.hex(), pl.hex()))
            lines.append("%s %s" % (self.rules_dir / ("r%05d.lua" % i), "".join(parts)))
        (root / "cases.txt").write_text("\n".join(lines) + "\n")
        (root / "diff_spec.lua").write_text(SPEC)

    def events(self):
        for i, src, on_error, evs in self.cases:
            for k, (f, pl, w) in enumerate(evs):
                yield i, k, src, on_error, f, pl, w

    def config(self, jit, fmt, port):
        outs = ", ".join('{ name = "%s", type = "file", path = "%s", format = "%s" }'
                         % (n, self.root / ("out-%s-%s.%s" % ("jit" if jit else "int", n, fmt)), fmt)
                         for n in OUTS)
        text = """return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = { %s },
  routes = { { topics = "*.r", to = "b" }, { topics = "c*", to = "rest" } },
  unrouted = "un",
  dead_letter = "dl",
  rules = { dir = "%s", watch = false, jit = %s },
  state_dir = "%s",
}
""" % (port, outs, self.rules_dir, "true" if jit else "false", self.root / ("state-%s-%s" % (jit, fmt)))
        p = self.root / ("conf-%s-%s.lua" % ("jit" if jit else "int", fmt))
        p.write_text(text)
        return p


def run_busted(corpus, jit):
    out = corpus.root / ("busted-%d.ndjson" % jit)
    env = dict(os.environ, DIFF_JIT="1" if jit else "0", DIFF_OUT=str(out),
               DIFF_CASES=str(corpus.root / "cases.txt"))
    build = os.environ.get("BUILD", "build")   # as tests/run.sh: build-asan too
    r = subprocess.run(["busted", "-o", "TAP", "--lpath=%s/scripts/?.lua" % ROOT,
                        "--cpath=%s/%s/?.so" % (ROOT, build), str(corpus.root / "diff_spec.lua")],
                       cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return [unhex_obj(json.loads(l)) for l in out.read_text().splitlines()]


def run_dry(corpus, jit):
    cfg = corpus.config(jit, "ndjson", free_port())
    r = subprocess.run([SLUICE_BIN, "route", "-c", str(cfg), "--events",
                        str(corpus.root / "events.msgpack")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [json.loads(l, object_pairs_hook=list) for l in r.stdout.splitlines()]


def run_engine(sluice, corpus, jit, fmt):
    port = free_port()
    cfg = corpus.config(jit, fmt, port)
    eng = sluice(cfg.read_text(), name="diff-%s-%s" % (jit, fmt))
    send_events("127.0.0.1:%d" % port, corpus.wire, timeout=60)
    assert eng.stop(timeout=60) == 0
    got = {}
    for n in OUTS:
        p = corpus.root / ("out-%s-%s.%s" % ("jit" if jit else "int", n, fmt))
        data = p.read_bytes() if p.exists() else b""
        recs = []
        if fmt == "msgpack":
            i = 0
            while i < len(data):
                fields, i = rulegen.top_fields(data, i)
                recs.append(fields)
        else:
            recs = [json.loads(l, object_pairs_hook=list) for l in data.decode().splitlines()]
            got[n + ".obj"] = [json.loads(l, object_pairs_hook=Obj) for l in data.decode().splitlines()]
        got[n] = recs
    return got, eng


# ---- normal forms -------------------------------------------------------------

PATH_RE = re.compile(r"[^\s\"]*?(r\d{5}\.lua)")


def norm_err(msg):
    return None if msg is None else PATH_RE.sub(r"\1", msg)


def norm_headers(h, emitted=False):
    h = dict(h)
    if emitted and "traceparent" in h:      # a child span: a new span id
        h["traceparent"] = h["traceparent"][:36]
    if "sluice-error" in h:
        h["sluice-error"] = norm_err(h["sluice-error"])
    h.pop("sluice-rule", None)                # file:line; busted has it as `where`
    return h


def from_busted(e, emitted=False):
    d = lambda b: None if b is None else b.decode("utf-8", "surrogateescape")
    return {"id": d(e["id"]), "topic": d(e["topic"]), "key": d(e["key"]),
            "time": int(e["time_ns"]) if e["time_ns"] else None,
            "headers": norm_headers({d(k): d(v) for k, v in e["headers"].items()}, emitted),
            "payload": e["payload"].hex() if e["payload"] is not None else None}


def from_wire(fields, emitted=False):
    f = dict(fields)
    d = lambda k: msgpack.unpackb(f[k], raw=True).decode("utf-8", "surrogateescape") if k in f else None
    hdr = {}
    if "headers" in f:
        hdr = {k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
               for k, v in msgpack.unpackb(f["headers"], raw=True).items()}
    return {"id": d("id"), "topic": d("topic"), "key": d("key"),
            "time": msgpack.unpackb(f["time"]) if "time" in f else None,
            "headers": norm_headers(hdr, emitted),
            "payload": f["payload"].hex() if "payload" in f else None}


def input_event(f, pl):
    return {"id": f["id"], "topic": f["topic"], "key": f.get("key"), "time": f["time"],
            "headers": dict(f["headers"]), "payload": pl.hex() if pl else None}


def route_of(topic):
    if topic.endswith(".r"):
        return "b"
    if topic.startswith("c"):
        return "rest"
    return "un"


def expect(b, on_error, f, pl):
    """What the engine should do with one event, from the busted result:
    (decision, outputs, reason, {output: [records]})."""
    orig = input_event(f, pl)
    policy = on_error or "dead_letter"
    places = {}
    v = b["verdict"]
    err = b["error"].decode("utf-8", "surrogateescape") if b["error"] else None
    if v == "route":
        unknown = [o for o in b["routes"] if o not in OUTS]
        if unknown:      # the engine knows its outputs; testing does not
            v, err = "error", "%s: on_event returned unknown output \"%s\"" % (
                "r%05d.lua" % int(f["topic"][1:]), unknown[0])
    for n, e in enumerate(b["emitted"]):
        places.setdefault(e["output"], []).append((("emit", n), from_busted(e["event"], emitted=True)))
    ev = from_busted(b["event"])
    if v == "route":
        for o in b["routes"]:
            places.setdefault(o, []).append((("event",), ev))
        return "routed", list(b["routes"]), None, places
    if v == "pass":
        o = route_of(ev["topic"])
        places.setdefault(o, []).append((("event",), ev))
        return ("unrouted" if o == "un" else "routed"), [o], None, places
    if v == "drop":
        # JSON shows invalid UTF-8 as U+FFFD (README, Outputs and NDJSON)
        reason = b["dropped"].decode("utf-8", "replace") if b["dropped"] is not None else None
        return "dropped", [], reason, places
    # error: the rule's on_error decides
    if policy == "dead_letter":
        d = dict(orig)
        d["headers"] = dict(orig["headers"], **{"sluice-error": norm_err(err)})
        places.setdefault("dl", []).append((("event",), d))
        return "failed", ["dl"], norm_err(err), places
    if policy == "drop":
        return "dropped", [], "on_error drop: " + norm_err(err), places
    o = route_of(orig["topic"])
    places.setdefault(o, []).append((("event",), orig))
    return ("unrouted" if o == "un" else "routed"), [o], None, places


def busted_view(b):
    if "raised" in b:
        return show({"raised": repr(b["raised"])})
    return show({"verdict": b["verdict"], "routes": b["routes"], "dropped": repr(b["dropped"]),
                 "error": repr(b["error"]), "error_kind": repr(b["error_kind"]),
                 "event": from_busted(b["event"]),
                 "emitted": [(e["output"], from_busted(e["event"], True)) for e in b["emitted"]]})


def _f(v):
    return ("float", repr(v) if not math.isnan(v) else "nan")


def mp_model(b):
    """msgpack bytes as the values NDJSON tells apart (README, Outputs and
    NDJSON; invalid UTF-8 becomes U+FFFD there)."""
    def one(i):
        c = b[i]
        if c <= 0x7f:
            return c, i + 1
        if c >= 0xe0:
            return c - 256, i + 1
        if c in (0xc0, 0xc2, 0xc3):
            return {0xc0: None, 0xc2: False, 0xc3: True}[c], i + 1
        if 0xa0 <= c <= 0xbf or c in (0xd9, 0xda, 0xdb):
            j = rulegen.skip(b, i)
            raw = msgpack.unpackb(b[i:j], raw=True)
            return raw.decode("utf-8", "replace"), j
        if c in (0xc4, 0xc5, 0xc6):
            j = rulegen.skip(b, i)
            return ("bin", msgpack.unpackb(b[i:j])), j
        if c in (0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xc7, 0xc8, 0xc9):
            j = rulegen.skip(b, i)
            h = {0xd4: 1, 0xd5: 1, 0xd6: 1, 0xd7: 1, 0xd8: 1, 0xc7: 2, 0xc8: 3, 0xc9: 5}[c]
            t = struct.unpack("b", b[i + h:i + h + 1])[0]
            return ("ext", t, bytes(b[i + h + 1:j])), j
        if c == 0xca:
            return ("f32", repr(struct.unpack(">f", b[i + 1:i + 5])[0])), i + 5
        if c == 0xcb:
            return _f(struct.unpack(">d", b[i + 1:i + 9])[0]), i + 9
        if 0xcc <= c <= 0xd3:
            j = rulegen.skip(b, i)
            return msgpack.unpackb(b[i:j]), j
        if 0x90 <= c <= 0x9f or c in (0xdc, 0xdd):
            n, j = (c & 0x0f, i + 1) if c <= 0x9f else (
                int.from_bytes(b[i + 1:i + (3 if c == 0xdc else 5)], "big"), i + (3 if c == 0xdc else 5))
            out = []
            for _ in range(n):
                v, j = one(j)
                out.append(v)
            return out, j
        n, j = (c & 0x0f, i + 1) if c <= 0x8f else (
            int.from_bytes(b[i + 1:i + (3 if c == 0xde else 5)], "big"), i + (3 if c == 0xde else 5))
        out = []
        for _ in range(n):
            k, j = one(j)
            v, j = one(j)
            out.append((k, v))
        return ("map", out), j
    return one(0)[0]


MARKERS = ("$bin", "$ext", "$float", "$float32", "$map")


class Obj:
    def __init__(self, pairs):
        self.pairs = pairs


def json_model(v):
    """An NDJSON value (parsed with object_pairs_hook=Obj) in mp_model's
    terms."""
    if isinstance(v, float):
        return _f(v)
    if isinstance(v, Obj):
        if len(v.pairs) == 1 and v.pairs[0][0] in MARKERS:
            k, x = v.pairs[0]
            if k == "$bin":
                return ("bin", base64.b64decode(x))
            if k == "$ext":
                return ("ext", x[0], base64.b64decode(x[1]))
            if k == "$float":
                return ("float", x)
            if k == "$float32":
                return ("f32", repr(float(x)))
            return ("map", [(json_model(a), json_model(b)) for a, b in x])
        return ("map", [(k, json_model(x)) for k, x in v.pairs])
    if isinstance(v, list):
        return [json_model(x) for x in v]
    return v


def format_differences(mp_runs, nd_runs):
    """The engine's msgpack and NDJSON files of one run, payload by payload."""
    out = []
    for o in OUTS:
        for q, (m, n) in enumerate(zip(mp_runs[o], nd_runs[o])):
            mp_pl = dict(m).get("payload")
            nd = dict(n)
            a = mp_model(mp_pl) if mp_pl is not None else None
            b = json_model(nd.get("payload")) if "payload" in nd else None
            if a != b:
                out.append("output %s record %d (%s): msgpack %r\nNDJSON  %r" % (
                    o, q, nd.get("id"), a, b))
    return out


def json_view(pairs, emitted):
    """An NDJSON event (pairs) with what may differ normalised."""
    out = []
    for k, v in pairs:
        if k == "headers":
            v = [(hk, (hv[:36] if emitted and hk == "traceparent" else
                       norm_err(hv) if hk in ("sluice-error", "sluice-rule") else hv))
                 for hk, hv in v]
        out.append((k, v))
    return show(out)


def show(x):
    return json.dumps(x, ensure_ascii=False, default=repr)


def differences(corpus, busted, dry, engines):
    """Every difference, as text blocks naming the case."""
    out = []
    evs = list(corpus.events())
    exp_places = {}
    for j, (i, k, src, on_error, f, pl, w) in enumerate(evs):
        b = busted[0][j]
        ctx = "case %d event %d\n--- rule (on_error %s):\n%s--- event: %s\n" % (
            i, k, on_error, src, show(input_event(f, pl)))
        if "raised" in b:
            out.append(ctx + "busted: rule:run raised %r" % b["raised"])
            continue
        bj = busted[1][j]
        if busted_view(bj) != busted_view(b):
            out.append(ctx + "busted jit off: %s\nbusted jit on:  %s" % (busted_view(b), busted_view(bj)))
        decision, outputs, reason, places = expect(b, on_error, f, pl)
        for o, recs in places.items():
            exp_places.setdefault(o, []).extend((j, tag, r) for tag, r in recs)
        for jit, d in enumerate(dry):
            got = dict(d[j])
            want = {"decision": decision, "outputs": outputs, "reason": reason}
            have = {"decision": got.get("decision"), "outputs": got.get("outputs"),
                    "reason": norm_err(got.get("reason"))}
            if have != want:
                out.append(ctx + "busted: %s\nexpected dry run: %s\ndry run (jit %d): %s" % (
                    busted_view(b), show(want), jit, show(got)))
            got_em = [(dict(e)["output"], dict(dict(e)["event"]).get("topic")) for e in got.get("emitted") or []]
            want_em = [(e["output"], e["event"]["topic"].decode()) for e in b["emitted"]]
            if got_em != want_em:
                out.append(ctx + "emitted, busted: %s\ndry run (jit %d): %s" % (want_em, jit, got_em))
    for (jit, fmt), got in engines.items():
        if fmt == "ndjson":
            for x in format_differences(engines[(jit, "msgpack")],
                                        {o: [list(r.pairs) for r in got[o + ".obj"]] for o in OUTS}):
                out.append("engine (jit %s): msgpack and NDJSON outputs differ: %s" % (jit, x))
        for o in OUTS:
            want = exp_places.get(o, [])
            have = got[o]
            if fmt == "msgpack":
                have = [from_wire(x, emitted=dict(x).get("id", b"")[:2] == b"\xa2m"
                                  or msgpack.unpackb(dict(x)["id"]).startswith("m")) for x in have]
                n = max(len(want), len(have))
                for q in range(n):
                    w_ = want[q][2] if q < len(want) else None
                    h_ = have[q] if q < len(have) else None
                    if w_ != h_:
                        j = want[q][0] if q < len(want) else None
                        i, k, src, on_error, f, pl, _ = evs[j] if j is not None else (None,) * 7
                        out.append("engine (jit %s, %s) output %s record %d (case %s event %s)\n"
                                   "--- rule (on_error %s):\n%s--- event: %s\n"
                                   "expected (busted): %s\nengine:            %s" % (
                                       jit, fmt, o, q, i, k, on_error, src,
                                       show(input_event(f, pl)) if f else None, show(w_), show(h_)))
                        break
            else:
                # the dry run's JSON of the same event, as the engine wrote it
                n = max(len(want), len(have))
                for q in range(n):
                    j, tag = (want[q][0], want[q][1]) if q < len(want) else (None, None)
                    w_ = None
                    if j is not None:
                        d = dict(dry[1 if jit else 0][j])
                        w_ = d["event"] if tag[0] == "event" else dict(d["emitted"][tag[1]])["event"]
                        w_ = json_view(w_, tag[0] == "emit")
                    h_ = json_view(have[q], tag and tag[0] == "emit") if q < len(have) else None
                    if w_ != h_:
                        i, k, src, on_error, f, pl, _ = evs[j] if j is not None else (None,) * 7
                        out.append("engine (jit %s, ndjson) output %s record %d (case %s event %s)\n"
                                   "--- rule (on_error %s):\n%s--- event: %s\n"
                                   "dry run: %s\nengine:  %s" % (
                                       jit, o, q, i, k, on_error, src,
                                       show(input_event(f, pl)) if f else None, show(w_), show(h_)))
                        break
    return out


def _runs(sluice, corpus):
    busted = [run_busted(corpus, False), run_busted(corpus, True)]
    dry = [run_dry(corpus, False), run_dry(corpus, True)]
    engines = {}
    for jit in (False, True):
        for fmt in ("msgpack", "ndjson"):
            engines[(jit, fmt)], _ = run_engine(sluice, corpus, jit, fmt)
    return busted, dry, engines


def test_busted_the_dry_run_and_the_engine_agree_on_generated_rules_and_events(sluice, tmp_path):
    corpus = Corpus(tmp_path, SEED, CASES)
    busted, dry, engines = _runs(sluice, corpus)
    n = sum(1 for _ in corpus.events())
    assert len(busted[0]) == len(busted[1]) == n
    assert len(dry[0]) == len(dry[1]) == n
    diffs = differences(corpus, busted, dry, engines)
    assert not diffs, "%d differences (seed %d, %d cases); the first ones:\n\n%s" % (
        len(diffs), SEED, CASES, "\n=========\n".join(diffs[:5]))
    # the corpus reaches every kind of outcome and output
    verdicts = {b["verdict"] for b in busted[0]}
    assert verdicts == {"pass", "route", "drop", "error"}, verdicts
    kinds = {b["error_kind"] for b in busted[0]} - {None}
    assert kinds == {b"runtime", b"cpu"}, kinds
    counts = " ".join("%s=%d" % (o, len(engines[(False, "msgpack")][o])) for o in OUTS)
    assert all(engines[(False, "msgpack")][o] for o in OUTS), counts


HEADERS_RULE = """
return {
  on_event = function(ev)
    for _, k in ipairs({ "zeta", "alpha", "mid", "b", "a", "list", "s", "f" }) do
      ev.headers[k] = k
    end
    if ev.topic == "many" then
      for i = 40, 1, -1 do ev.headers[string.format("h%02d", i)] = "v" end
    end
    sluice.emit("out", { topic = "e", headers = { z = "1", y = "2", x = "3", w = "4" } })
    return "out"
  end,
}
"""


def test_headers_a_rule_sets_go_out_in_one_order_from_every_state(tmp_path):
    """Headers a rule writes were walked in the Lua table's order, which
    follows string hashes LuaJIT seeds per state: the dry run and the
    engine (and two runs of either) wrote them in different orders. Found
    by the differential test above; now sorted by name."""
    d = tmp_path / "rules"
    d.mkdir()
    (d / "10_h.lua").write_text(HEADERS_RULE)
    cfg = tmp_path / "c.lua"
    cfg.write_text('return { outputs = { { name = "out", type = "null" } }, '
                   'rules = { dir = "rules" } }')
    ev = json.dumps({"topic": "t", "headers": {"q": "1"}}) + "\n"
    seen = set()
    for _ in range(6):
        r = subprocess.run([SLUICE_BIN, "route", "-c", str(cfg)], input=ev,
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stderr
        o = json.loads(r.stdout, object_pairs_hook=list)
        o = dict(o)
        names = [k for k, _ in dict(o["event"])["headers"]]
        emitted = [k for k, _ in dict(dict(o["emitted"][0])["event"])["headers"]]
        seen.add((tuple(names), tuple(emitted)))
    assert seen == {(("a", "alpha", "b", "f", "list", "mid", "q", "s", "traceparent", "zeta"),
                     ("w", "x", "y", "z", "traceparent"))}, seen
    # more headers than are sorted on the stack
    r = subprocess.run([SLUICE_BIN, "route", "-c", str(cfg)],
                       input=json.dumps({"topic": "many"}) + "\n",
                       capture_output=True, text=True, timeout=10)
    names = [k for k, _ in dict(dict(json.loads(r.stdout, object_pairs_hook=list))["event"])["headers"]]
    assert len(names) == 49 and names == sorted(names), names
