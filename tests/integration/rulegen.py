"""Seeded generator of rules and awkward events for the differential test
(test_rules_differential.py): rules from a small grammar over ev.payload,
ev.headers, ev.key, ev.topic, sluice.drop, error(), returns and
sluice.emit; events as exact msgpack bytes (ext, bin vs str, float32,
-0.0, NaN, integers past 2^53, non-minimal headers, duplicate and mixed
map keys, nesting near the codec's depth limit). A helper for the
differential test, not a test itself."""

import struct

import msgpack

# ---- msgpack values the stock packer cannot make ---------------------------


class F32:
    def __init__(self, v):
        self.v = v


class Ext:
    def __init__(self, t, data):
        self.t, self.data = t, data


class RawStr:
    """A msgpack str holding these bytes (invalid UTF-8 allowed)."""

    def __init__(self, b):
        self.b = b


class Map:
    """A map as a list of pairs: duplicate keys and keys of any type."""

    def __init__(self, pairs, wide=False):
        self.pairs, self.wide = pairs, wide


class Arr:
    def __init__(self, items, wide=False):
        self.items, self.wide = items, wide


class Wide:
    """A string or int in a longer encoding than needed."""

    def __init__(self, v):
        self.v = v


def _int(v):
    if 0 <= v <= 0x7f:
        return bytes([v])
    if -32 <= v < 0:
        return struct.pack("b", v)
    if v >= 0:
        for code, fmt, lim in ((0xcc, ">B", 0xff), (0xcd, ">H", 0xffff),
                               (0xce, ">I", 0xffffffff), (0xcf, ">Q", 2**64 - 1)):
            if v <= lim:
                return bytes([code]) + struct.pack(fmt, v)
        raise ValueError(v)
    for code, fmt, lim in ((0xd0, ">b", 2**7), (0xd1, ">h", 2**15),
                           (0xd2, ">i", 2**31), (0xd3, ">q", 2**63)):
        if v >= -lim:
            return bytes([code]) + struct.pack(fmt, v)
    raise ValueError(v)


def _str(b, wide=False):
    n = len(b)
    if n < 32 and not wide:
        return bytes([0xa0 | n]) + b
    if n < 256 and not wide:
        return b"\xd9" + bytes([n]) + b
    if n < 65536:
        return b"\xda" + struct.pack(">H", n) + b
    return b"\xdb" + struct.pack(">I", n) + b


def mp(v):
    """v as msgpack bytes, exactly as written (see the classes above)."""
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        return _int(v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, F32):
        return b"\xca" + struct.pack(">f", v.v)
    if isinstance(v, str):
        return _str(v.encode())
    if isinstance(v, RawStr):
        return _str(v.b)
    if isinstance(v, Wide):
        if isinstance(v.v, str):
            return _str(v.v.encode(), wide=True)
        return b"\xd3" + struct.pack(">q", v.v)
    if isinstance(v, bytes):
        n = len(v)
        if n < 256:
            return b"\xc4" + bytes([n]) + v
        return b"\xc5" + struct.pack(">H", n) + v
    if isinstance(v, Ext):
        n = len(v.data)
        fix = {1: 0xd4, 2: 0xd5, 4: 0xd6, 8: 0xd7, 16: 0xd8}
        t = struct.pack("b", v.t)
        if n in fix:
            return bytes([fix[n]]) + t + v.data
        return b"\xc7" + bytes([n]) + t + v.data
    if isinstance(v, dict):
        v = Map(list(v.items()))
    if isinstance(v, list):
        v = Arr(v)
    if isinstance(v, Arr):
        n = len(v.items)
        head = (bytes([0x90 | n]) if n < 16 and not v.wide
                else b"\xdc" + struct.pack(">H", n))
        return head + b"".join(mp(x) for x in v.items)
    if isinstance(v, Map):
        n = len(v.pairs)
        head = (bytes([0x80 | n]) if n < 16 and not v.wide
                else b"\xde" + struct.pack(">H", n))
        return head + b"".join(mp(k) + mp(x) for k, x in v.pairs)
    raise TypeError(v)


def skip(b, i):
    """The offset just past the msgpack value at b[i]."""
    c = b[i]
    if c <= 0x7f or c >= 0xe0 or c in (0xc0, 0xc2, 0xc3):
        return i + 1
    if 0x80 <= c <= 0x8f:
        j = i + 1
        for _ in range(2 * (c & 0x0f)):
            j = skip(b, j)
        return j
    if 0x90 <= c <= 0x9f:
        j = i + 1
        for _ in range(c & 0x0f):
            j = skip(b, j)
        return j
    if 0xa0 <= c <= 0xbf:
        return i + 1 + (c & 0x1f)
    fixed = {0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8, 0xd0: 1, 0xd1: 2, 0xd2: 4,
             0xd3: 8, 0xca: 4, 0xcb: 8, 0xd4: 2, 0xd5: 3, 0xd6: 5, 0xd7: 9,
             0xd8: 17}
    if c in fixed:
        return i + 1 + fixed[c]
    lens = {0xc4: (1, 0), 0xc5: (2, 0), 0xc6: (4, 0), 0xd9: (1, 0),
            0xda: (2, 0), 0xdb: (4, 0), 0xc7: (1, 1), 0xc8: (2, 1),
            0xc9: (4, 1)}
    if c in lens:
        w, extra = lens[c]
        n = int.from_bytes(b[i + 1:i + 1 + w], "big")
        return i + 1 + w + extra + n
    if c in (0xdc, 0xdd, 0xde, 0xdf):
        w = 2 if c in (0xdc, 0xde) else 4
        n = int.from_bytes(b[i + 1:i + 1 + w], "big")
        if c >= 0xde:
            n *= 2
        j = i + 1 + w
        for _ in range(n):
            j = skip(b, j)
        return j
    raise ValueError("not msgpack at %d: %#x" % (i, c))


def top_fields(b, i=0):
    """The top-level map at b[i] as ([(key, raw value bytes)], end)."""
    c = b[i]
    if 0x80 <= c <= 0x8f:
        n, j = c & 0x0f, i + 1
    elif c == 0xde:
        n, j = int.from_bytes(b[i + 1:i + 3], "big"), i + 3
    elif c == 0xdf:
        n, j = int.from_bytes(b[i + 1:i + 5], "big"), i + 5
    else:
        raise ValueError("not a map at %d" % i)
    out = []
    for _ in range(n):
        k_end = skip(b, j)
        k = msgpack.unpackb(b[j:k_end], raw=False)
        v_end = skip(b, k_end)
        out.append((k, bytes(b[k_end:v_end])))
        j = v_end
    return out, j


# ---- events ------------------------------------------------------------------

KEYS = ["a", "b", "s", "n", "list", "f", "big", "bin", "x"]


def scalar(r):
    return r.choice([
        0, 1, -1, 5, 127, 128, -33, 255, 256, 65535, 65536, 2**31, 2**32,
        2**53, 2**53 + 1, 2**63 - 1, 2**64 - 1, -2**63, -2**53 - 1,
        1.0, 0.5, -0.0, 0.1, 1e300, float("nan"), float("inf"),
        float("-inf"), 2.0**53, F32(1.5), F32(-0.0),
        "", "abc", "héllo", "a\x00b", RawStr(b"\xff\xfe"), RawStr(b"ok"),
        b"", b"\x00\xff", b"abc",
        Ext(1, b"\x01"), Ext(-1, b"\x00\x00\x00\x00"), Ext(5, b"xyz"),
        Ext(-128, b"\x00" * 16), Ext(127, b"12345678"),
        None, True, False, Wide("w"), Wide(3),
    ])


def mapkey(r):
    return r.choice(KEYS + KEYS + [1, 2, -1, 1.0, 2.5, b"a", True, None,
                                   RawStr(b"\xc3"), 2**63, Arr([]), Map([])])


def value(r, depth):
    k = r.random()
    if depth <= 0 or k < 0.5:
        return scalar(r)
    if k < 0.75:
        n = r.choice([0, 0, 1, 2, 3, 17])
        return Arr([value(r, depth - 1) for _ in range(n)], wide=r.random() < 0.1)
    n = r.choice([0, 0, 1, 2, 3, 4, 16])
    pairs = [(r.choice(KEYS) if r.random() < 0.8 else mapkey(r), value(r, depth - 1))
             for _ in range(n)]
    if pairs and r.random() < 0.15:   # a repeated key
        pairs.append((pairs[0][0], value(r, 0)))
    return Map(pairs, wide=r.random() < 0.1)


def deep(r, levels):
    v = scalar(r)
    for _ in range(levels):
        v = Map([("a", v)]) if r.random() < 0.5 else Arr([v])
    return v


def payload(r):
    k = r.random()
    if k < 0.08:
        return deep(r, r.choice([40, 60, 61, 62]))
    if k < 0.15:
        return value(r, 0)                       # a scalar payload
    if k < 0.2:
        return Arr([value(r, 2) for _ in range(r.randint(0, 4))])
    pairs = []
    for key in r.sample(KEYS, r.randint(0, len(KEYS))):
        if key == "big":
            v = r.choice([2**53 + 1, 2**63 - 1, 2**64 - 1, -2**63, Wide(7)])
        elif key == "list":
            v = Arr([value(r, 1) for _ in range(r.randint(0, 5))])
        elif key == "n":
            v = value(r, 3)
        elif key == "a":
            v = r.choice([r.randint(-10, 20), r.random() * 20, "7", None, -0.0])
        elif key == "s":
            v = r.choice(["abc", "", "Hello World", RawStr(b"\xff\x00x"), b"bin", Wide("s")])
        else:
            v = value(r, 2)
        pairs.append((key, v))
    if r.random() < 0.2:
        pairs.append((mapkey(r), value(r, 1)))
    if pairs and r.random() < 0.1:
        pairs.append((pairs[0][0], value(r, 0)))
    return Map(pairs, wide=r.random() < 0.1)


TRACE = "00-%032x-%016x-01"


def event(r, case, k):
    """(dict of the fields for busted, msgpack bytes for the engine)."""
    f = {"id": "c%05d-%d" % (case, k), "topic": "c%d" % case,
         "time": 1700000000000000000 + case * 1000 + k}
    if r.random() < 0.6:
        f["key"] = r.choice(["k1", "", "cust-42", "ключ"])
    h = {"traceparent": TRACE % (case * 10 + k + 1, case + 1)}
    if r.random() < 0.5:
        h[r.choice(["h", "x-a", "priority"])] = r.choice(["1", "", "v\u00e9"])
    f["headers"] = h
    order = ["id", "topic", "key", "time", "headers"]
    pairs = [(n, f[n]) for n in order if n in f]
    if r.random() < 0.05:   # no payload at all
        return f, b"", mp(Map(pairs))
    p = payload(r)
    pairs.append(("payload", p))
    return f, mp(p), mp(Map(pairs))


# ---- rules -------------------------------------------------------------------

OUTPUTS = ["a", "b", "c"]


def lua_str(b):
    if isinstance(b, str):
        b = b.encode()
    return '"' + "".join(
        chr(c) if 32 <= c < 127 and chr(c) not in '"\\' else "\\%d" % c
        for c in b) + '"'


def lua_value(r, depth=2):
    k = r.random()
    if depth <= 0 or k < 0.55:
        return r.choice([
            "1", "-1", "0", "1.5", "-0.0", "0/0", "1/0", "-1/0", "2^53",
            "2^53 + 1", "2^63", "9007199254740993", "0.1", "1e308",
            "42", "true", "false", lua_str("x"), lua_str(""),
            lua_str(b"\x00\xff\xfe"), lua_str("héllo"),
            "string.rep(\"ab\", 3)", "sluice.array{}", "sluice.map{}",
            "{}", "ev.payload.big", "ev.payload.f", "ev.payload.bin",
            "ev.payload.s", "ev.key", "ev.topic", "ev.headers.h",
            "sluice.copy(ev.payload.n)", "#ev.payload",
        ])
    if k < 0.75:
        items = [lua_value(r, depth - 1) for _ in range(r.randint(0, 3))]
        return "{" + ", ".join(items) + "}"
    if k < 0.85:
        return "sluice.array{" + ", ".join(
            lua_value(r, depth - 1) for _ in range(r.randint(0, 3))) + "}"
    pairs = []
    for _ in range(r.randint(0, 3)):
        key = r.choice(['"a"', '"z"', "1", "2", "2.5", "true", '"\\0k"',
                        "-0.0", "2^53", '"1"'])
        pairs.append("[%s] = %s" % (key, lua_value(r, depth - 1)))
    return "{" + ", ".join(pairs) + "}"


def statement(r, case):
    c = r.randrange(30)
    key = r.choice(KEYS)
    if c == 0:
        return "ev.payload.%s = %s" % (key, lua_value(r))
    if c == 1:
        return "ev.payload.%s = nil" % key
    if c == 2:
        return ("if type(ev.payload.n) == \"table\" then ev.payload.n.%s = %s end"
                % (r.choice(KEYS), lua_value(r)))
    if c == 3:
        return ("if type(ev.payload.list) == \"table\" then "
                "ev.payload.list[#ev.payload.list + 1] = %s end" % lua_value(r))
    if c == 4:
        return "ev.payload = %s" % lua_value(r)
    if c == 5:
        return "ev.headers.%s = %s" % (r.choice(["h", "g", "priority"]), r.choice(
            [lua_str("v"), lua_str(""), lua_str(b"\xff"), "nil", "tostring(ev.payload.a)",
             "tostring(ev.payload.f)", "tostring(ev.payload.big)", "5"]))
    if c == 6:
        return "ev.headers.traceparent = nil"
    if c == 7:
        return "ev.key = %s" % r.choice(
            [lua_str("nk"), lua_str(""), "nil", "(ev.key or \"\") .. \"!\"", "5",
             "string.upper(ev.key or \"q\")"])
    if c == 8:
        return "ev.topic = %s" % r.choice(
            [lua_str("x%d.r" % case), lua_str("x%d" % case), lua_str(""), "nil",
             "ev.topic .. \".r\""])
    if c == 9:
        # sorted: pairs' order over keys a rule added (and over plain
        # tables) is Lua's hash order, which LuaJIT seeds per state
        return ("local ks = {} for k, v in pairs(ev.payload) do ks[#ks + 1] = "
                "tostring(k) .. \"=\" .. type(v) end table.sort(ks) "
                "ev.headers.keys = table.concat(ks, \",\")")
    if c == 10:
        return "ev.headers.len = tostring(#ev.payload)"
    if c == 11:
        return "ev.headers.j = sluice.json.encode(ev.payload)"
    if c == 12:
        return "ev.payload.copy = sluice.copy(ev.payload)"
    if c == 13:
        return ("if type(ev.payload.s) == \"string\" then ev.payload.s = "
                "string.upper(ev.payload.s) .. #ev.payload.s end")
    if c == 14:
        return "ev.payload.%s = ev.payload.%s" % (key, r.choice(KEYS))
    if c == 15:
        return ("ev.headers.t = type(ev.payload.%s) .. \":\" .. tostring(ev.payload.%s)"
                % (key, key))
    if c == 16:
        return ("if type(ev.payload.a) == \"number\" and ev.payload.a > 5 then "
                "return %s end" % terminal(r, case))
    if c == 17:
        return "if ev.payload.%s == nil then return %s end" % (key, terminal(r, case))
    if c == 18:
        return "sluice.emit(%s, %s)" % (lua_str(r.choice(OUTPUTS)), emit_event(r, case))
    if c == 19:
        return ("ev.headers.d = string.format(\"%%.17g\", tonumber(ev.payload.f) or -1)")
    if c == 20:
        return "ev.payload.n = {%s = {%s = %s}}" % (r.choice(KEYS), r.choice(KEYS), lua_value(r))
    if c == 21:
        return "ev.payload[%s] = %s" % (r.choice(["1", "2", "1.5", "true"]), lua_value(r, 1))
    if c == 22:
        return ("if type(ev.payload.list) == \"table\" then table.insert(ev.payload.list, 1, %s) end"
                % lua_value(r, 0))
    if c == 23:
        return ("if type(ev.payload.list) == \"table\" and #ev.payload.list > 0 then "
                "table.remove(ev.payload.list) end")
    if c == 24:
        return "ev.payload.%s = sluice.json.decode(%s)" % (key, lua_str(r.choice([
            '{"a":1,"b":[1.0,2]}', '[]', '{}', '{"$bin":"AAE="}', '18446744073709551615',
            '{"$float":"nan"}', '-0.0', '{"$map":[[1,2],["a",3]]}', '{"$ext":[3,"AQI="]}'])))
    if c == 25:
        return ("local n = ev.payload.n if type(n) == \"table\" then for k, v in pairs(n) do "
                "ev.headers[\"k\" .. tostring(k)] = type(v) == \"table\" and \"table\" or tostring(v) "
                "end end")  # tostring(table) numbers tables in the order pairs met them
    if c == 26:
        return ("if type(ev.payload.big) == \"number\" then ev.payload.big2 = ev.payload.big + 0 end")
    if c == 27:
        return "ev.payload.%s = ev.payload.%s" % (key, key)   # a no-op write
    if c == 28:
        if r.random() < 0.15:   # the event's size around max_event_bytes (1 MiB)
            return "ev.payload = string.rep(\"x\", %d)" % (1048576 - r.randint(60, 260))
        return "ev.payload.n = sluice.map{[%s] = 1}" % r.choice(['"a"', "1", "2.5", "true"])
    return "ev.headers.tm = tostring(ev.time_ns)"


def emit_event(r, case):
    f = ["topic = %s" % lua_str("m%d" % case)]
    if r.random() < 0.5:
        f.append("key = %s" % r.choice([lua_str("ek"), "ev.key"]))
    if r.random() < 0.5:
        f.append("headers = { e = %s }" % r.choice([lua_str("1"), "ev.headers.h", lua_str("")]))
    if r.random() < 0.7:
        f.append("payload = %s" % r.choice([lua_value(r), "ev.payload", "sluice.copy(ev.payload)",
                                           "ev.payload.n", "ev.payload.big"]))
    f.append("id = %s" % lua_str("m%d" % case))
    f.append("time_ns = \"1700000000000000001\"")
    if r.random() < 0.1:    # a field sluice.emit refuses: the call fails
        f.append(r.choice(["key = 5", "headers = { h = 5 }", "extra = 1",
                           "time = \"x\"", "payload = { [{}] = 1 }",
                           "payload = string.rep(\"x\", 1048576)"]))
    return "{ " + ", ".join(f) + " }"


def terminal(r, case):
    if r.random() < 0.005:  # past the CPU budget: error kind "cpu"
        return "(function() while true do end end)()"
    c = r.randrange(12)
    if c < 3:
        return lua_str(r.choice(OUTPUTS))
    if c < 5:
        return "{ " + ", ".join(lua_str(r.choice(OUTPUTS)) for _ in range(r.randint(1, 3))) + " }"
    if c < 7:
        return "nil"
    if c < 9:
        return "sluice.drop(%s)" % r.choice([lua_str("why"), lua_str(""), "ev.payload.s", "nil"])
    if c == 9:
        return "error(%s)" % r.choice([lua_str("boom"), "{}", "42", "nil"])
    if c == 10:
        return r.choice(["42", "{}", "{ 1 }", "true", lua_str("nope"), "{ \"a\", 5 }"])
    return "ev.payload.s"


def rule(r, case):
    """(Lua source of the rule, its on_error or None)."""
    body = [statement(r, case) for _ in range(r.randint(0, 5))]
    if r.random() < 0.06:   # no decision on a topic no route takes: unrouted
        body += ['ev.topic = "x%d"' % case, "return nil"]
    else:
        body.append("return " + terminal(r, case))
    on_error = r.choice([None, None, "dead_letter", "drop", "pass"])
    src = ["return {", "  topics = { %s }," % lua_str("c%d" % case)]
    if on_error:
        src.append("  on_error = %s," % lua_str(on_error))
    src.append("  on_event = function(ev)")
    src += ["    " + s for s in body]
    src += ["  end,", "}"]
    return "\n".join(src) + "\n", on_error
