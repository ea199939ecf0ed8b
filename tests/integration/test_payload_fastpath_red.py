"""Red team of the ev.payload fast path through the real binary (the root
kept in the event's fields table and made before the call, the route name
caches): a stream of events over many topics, interleaved, of payloads of
every shape, through a rule that reads, writes, deletes and routes to two
outputs by turns. Python's msgpack decodes what comes out and checks it
against the same logic applied to what went in: each event its own
payload, pairs in their order, types kept, the right output, nothing lost."""
import random

import msgpack

from conftest import free_port, pack, send_events, wait_for

RULE = """
return {
  on_event = function(ev)
    local p = ev.payload
    if type(p) ~= "table" then return "other" end
    local n = p.n
    if type(n) ~= "number" then return "other" end
    if n % 3 == 0 then p.tag = ev.topic end
    if n % 5 == 0 then p.gone = nil end
    if n % 7 == 0 then p.n = n + 1000 end
    if p.cur == "eur" then return "eur" end
    return "other"
  end,
}
"""


def start(sluice, tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "10_rule.lua").write_text(RULE)
    port = free_port()
    eng = sluice("""return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = {
    { name = "eur", type = "file", path = "eur.msgpack", format = "msgpack" },
    { name = "other", type = "file", path = "other.msgpack", format = "msgpack" },
  },
  rules = { dir = "%s" },
}""" % (port, d))
    return eng, "127.0.0.1:%d" % port


def read_events(path):
    try:
        with open(path, "rb") as f:
            return list(msgpack.Unpacker(f, raw=False, object_pairs_hook=list,
                                         strict_map_key=False))
    except FileNotFoundError:
        return []


def make_payload(rnd, i):
    """A payload (as pairs, or a scalar, or a list) and its bytes."""
    kind = rnd.randrange(10)
    if kind == 0:
        v = rnd.choice([5, None, "abc", True, 1.5])
        return v, msgpack.packb(v, use_bin_type=True)
    if kind == 1:
        v = [i, "x"]
        return v, msgpack.packb(v, use_bin_type=True)
    pairs = [("n", i), ("cur", rnd.choice(["eur", "usd", b"eur"]))]
    if rnd.randrange(2):
        pairs.append(("gone", rnd.choice([1, "g", [1, 2], {"a": 1}])))
    if rnd.randrange(3) == 0:
        pairs.append(("tag", "old"))
    pad = rnd.choice([0, 0, 10, 11, 12, 13, 14, 20])
    pairs += [("k%02d" % j, j) for j in range(pad)]
    rnd.shuffle(pairs)
    if kind == 2:  # a map16 header on a small map
        body = b"".join(msgpack.packb(k) + msgpack.packb(v, use_bin_type=True)
                        for k, v in pairs)
        return pairs, b"\xde" + len(pairs).to_bytes(2, "big") + body
    return pairs, msgpack.packb(dict(pairs), use_bin_type=True)


def expect(topic, payload):
    """What the rule makes of a payload: (output, payload after)."""
    if not isinstance(payload, list) or not payload or not isinstance(payload[0], tuple):
        return "other", payload
    d = dict(payload)
    n = d.get("n")
    if not isinstance(n, int):
        return "other", payload
    out = list(payload)
    if n % 3 == 0:
        if "tag" in d:
            out = [(k, topic if k == "tag" else v) for k, v in out]
        else:
            out.append(("tag", topic))
    if n % 5 == 0:
        out = [(k, v) for k, v in out if k != "gone"]
    if n % 7 == 0:
        out = [(k, n + 1000 if k == "n" else v) for k, v in out]
    return ("eur" if d.get("cur") in ("eur", b"eur") else "other"), out  # a bin is a Lua string too


def normal(v):
    """Decoded pairs as tuples, nested maps too, for comparison."""
    if isinstance(v, list) and v and all(isinstance(x, (list, tuple)) and len(x) == 2 for x in v) \
            and all(isinstance(x[0], str) for x in v):
        return [(k, normal(x)) for k, x in v]
    if isinstance(v, list):
        return [normal(x) for x in v]
    if isinstance(v, dict):
        return [(k, normal(x)) for k, x in v.items()]
    return v


def test_each_event_of_an_interleaved_stream_gets_its_own_payload_written_and_routed(sluice, tmp_path):
    eng, addr = start(sluice, tmp_path)
    rnd = random.Random(14)
    sent, want = [], {"eur": [], "other": []}
    for i in range(600):
        topic = "t.%d" % rnd.randrange(40)
        payload, raw = make_payload(rnd, i)
        head = b"\x83" + pack("topic") + pack(topic) + pack("id") + pack("e%d" % i)
        sent.append(head + pack("payload") + raw)
        out, after = expect(topic, payload if not isinstance(payload, dict) else list(payload.items()))
        want[out].append(("e%d" % i, topic, normal(after), raw if after is payload else None))
    send_events(addr, sent)
    paths = {o: eng.path("%s.msgpack" % o) for o in want}
    try:
        wait_for(lambda: all(len(read_events(paths[o])) == len(want[o]) for o in want),
                 timeout=20, what="every event at its output")
    except BaseException:
        print({o: (len(read_events(paths[o])), len(want[o])) for o in want})
        print(eng.stderr()[-3000:])
        raise
    for o in want:
        got = read_events(paths[o])
        data = open(paths[o], "rb").read()
        assert len(got) == len(want[o])
        for ev, (eid, topic, after, raw) in zip(got, want[o]):
            ev = dict(ev)
            assert ev["id"] == eid, (o, ev)  # per-output order as sent
            assert ev["topic"] == topic, eid
            assert normal(ev.get("payload")) == after, (eid, ev.get("payload"), after)
            if raw is not None and isinstance(after, list) and after:
                assert raw in data, eid  # not written: its bytes as they came
    assert eng.stop() == 0


TURNS = """
return {
  on_event = function(ev)
    return ev.payload.to
  end,
}
"""


def turns_conf(port, rules, names):
    outs = ",\n    ".join(
        '{ name = "%s", type = "file", path = "%s.msgpack", format = "msgpack" }' % (n, n)
        for n in names)
    return """return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:%d" } },
  outputs = {
    %s,
  },
  rules = { dir = "%s" },
}""" % (port, outs, rules)


def test_route_names_in_turns_land_where_they_name_across_a_reload_that_reorders_outputs(sluice, tmp_path):
    """take_result's 4 names by address and the slot's 4 decisions, with 6
    outputs in turns (both caches evicted and hit), before and after a
    reload that moves every output's index."""
    d = tmp_path / "rules"
    d.mkdir()
    (d / "10_turns.lua").write_text(TURNS)
    port = free_port()
    names = ["o1", "o2", "o3", "o4", "o5", "o6"]
    eng = sluice(turns_conf(port, d, names))
    addr = "127.0.0.1:%d" % port
    rnd = random.Random(9)
    want = {n: [] for n in names}

    def batch(first, count):
        evs = []
        for i in range(first, first + count):
            # runs of one name, turns among two, then any: every cache path
            to = names[(i // 7) % 6] if i % 3 else rnd.choice(names[:2 + i % 5])
            want[to].append("e%d" % i)
            evs.append({"topic": "t.%d" % (i % 5), "id": "e%d" % i,
                        "payload": {"to": to, "i": i}})
        send_events(addr, evs)

    def landed():
        return {n: [e["id"] for e in (dict(x) for x in read_events(eng.path("%s.msgpack" % n)))]
                for n in names}

    batch(0, 300)
    wait_for(lambda: landed() == want, timeout=20, what="the first batch where it names")
    eng.config.write_text(turns_conf(port, d, list(reversed(names))))
    eng.signal(1)
    wait_for(lambda: any(l.get("msg") == "config reloaded" for l in eng.logs()),
             timeout=10, what="the reload")
    batch(300, 300)
    wait_for(lambda: landed() == want, timeout=20, what="the second batch where it names")
    assert eng.stop() == 0
