-- payload_proxy_spec.lua - ev.payload reads the msgpack bytes in place: a
-- rule that only reads leaves the event byte for byte as it came, whatever
-- its keys; writes change only the entries written (splice); pairs, ipairs,
-- next, # and type work on it; every walk is bounded by the budgets.

local s = require("support")
local T = s.testing
local hex, tohex = s.hex, s.tohex

local function run(r, ev)
  return r:run(ev or { topic = "t" })
end

-- walks every key and value it can reach, reading # and ipairs as well
local walk_src = [[
  local function walk(v, d)
    if type(v) ~= "table" then return 0 end
    local n = #v
    for _, x in ipairs(v) do n = n + 1 end
    for k, x in pairs(v) do n = n + 1 walk(k, d + 1) walk(x, d + 1) end
    return n
  end
]]

local function nested(depth, leaf)
  return ("91"):rep(depth) .. leaf
end

local function big_array(n, elem)
  return ("dd%08x"):format(n) .. elem:rep(n)
end

local ADVERSARIAL = {
  { "a nil key", "82 c0 01 a161 02" },
  { "an array key", "82 9101 01 a161 02" },
  { "a map key", "82 81a16101 02 a161 03" },
  { "an ext key", "82 d40541 01 a161 02" },
  { "a NaN key", "82 cb7ff8000000000000 01 a161 02" },
  { "a binary key beside the same string", "82 c4016101 a16102" },
  { "1 and 1.0 as keys", "82 01a161 cb3ff0000000000000a162" },
  { "big int keys that round alike", "82 cf0020000000000001a178 cf0020000000000000a179" },
  { "a repeated key", "83 a16101 a16102 a16103" },
  { "a nil value then the same key", "82 a161c0 a16102" },
  { "float32 and -0.0 keys", "82 ca3fc00000 01 cb8000000000000000 02" },
  { "boolean keys", "82 c3 01 c2 02" },
  { "every value type", "8e a16ec0 a162c3 a169d3ffdfffffffffffff a175cfffffffffffffffff" ..
    "a166cb3ff0000000000000 a167ca3f800000 a173a3616263 a178c403010203" ..
    "a165c70307616263 a161 93c001c0 a16d 81a16bc2 a17a 90 a17980 a177cb7ff8000000000000" },
  { "non-minimal headers", "de0002 a161 dc0001 01 a162 d90161" },
  { "nesting at the limit", nested(64, "01") },
  { "a huge array", big_array(100000, "01") },
  { "a map of maps", "83 a161 81a162 81a163c0 a164 80 a165 9190" },
}

describe("reading ev.payload", function()
  teardown(s.cleanup)

  local reader = s.on_event(walk_src .. [[
    local p = ev.payload
    walk(p, 0)
    local _ = p.a, p[1], p[true], p[1.5], ev:field("a"), sluice.kind(p), #p
    return "out"
  ]], { cpu_budget_ms = 2000 })

  for _, c in ipairs(ADVERSARIAL) do
    it("leaves the event byte for byte as it came: " .. c[1], function()
      local raw = hex(c[2])
      local res = run(reader, { topic = "t", payload_raw = raw })
      assert.equal("route", res.verdict, res.error)
      assert.is_false(res.changed)
      assert.equal(tohex(raw), tohex(res.event.payload_raw))
    end)
  end

  local beside = s.on_event([[ev.payload.touched = true return "out"]])

  for _, c in ipairs(ADVERSARIAL) do
    local raw = hex(c[2])
    local b = raw:byte(1)
    if b >= 0x80 and b < 0x8f then
      it("adds a key beside the others, their bytes as they came: " .. c[1], function()
        local res = run(beside, { topic = "t", payload_raw = raw })
        assert.equal("route", res.verdict, res.error)
        local want = string.char(b + 1) .. raw:sub(2) .. hex("a7746f7563686564c3")
        assert.equal(tohex(want), tohex(res.event.payload_raw))
      end)
    end
  end

  it("reads nested fields, array elements and exact values", function()
    local r = s.on_event([[
      local p = ev.payload
      return table.concat({ tostring(p.a.b), tostring(p.l[2]), tostring(#p.l),
        tostring(p.l[9]), tostring(p.missing), tostring(p.a.missing),
        type(p), type(p.a), type(p.l), sluice.kind(p, "f"), sluice.kind(p, "x"),
        sluice.kind(p.a), sluice.kind(p.l), tostring(p.a == p.a), p.x }, " ")
    ]])
    local raw = hex("85 a161 81a162 05 a16c 93 01 02 03 a166 cb3ff0000000000000" ..
      "a178 c403616263 a179 a0")
    local res = run(r, { topic = "t", payload_raw = raw })
    assert.same({ "5 2 3 nil nil nil table table table float binary map array true abc" },
      res.routes, res.error)
    assert.is_false(res.changed)
  end)

  it("shows the first of keys Lua cannot tell apart, and leaves out keys it cannot hold", function()
    local r = s.on_event([[
      local keys = {}
      for k, v in pairs(ev.payload) do keys[#keys + 1] = tostring(k) .. "=" .. tostring(v) end
      return table.concat(keys, ",")
    ]])
    local raw = hex("85 c0 01 a161 02 9101 03 c4016104 a16205")
    assert.same({ "a=2,b=5" }, run(r, { topic = "t", payload_raw = raw }).routes)
    raw = hex("83 01a161 cb3ff0000000000000a162 02a163")
    assert.same({ "1=a,2=c" }, run(r, { topic = "t", payload_raw = raw }).routes)
  end)

  it("iterates with pairs, ipairs, next and # as on a table", function()
    local r = s.on_event([[
      local p = ev.payload
      local out = {}
      for i, v in ipairs(p.l) do out[#out + 1] = i .. ":" .. tostring(v) end
      out[#out + 1] = "#" .. #p.l
      for k, v in pairs(p.l) do out[#out + 1] = k .. "=" .. tostring(v) end
      local k, v = next(p)
      out[#out + 1] = "next " .. k .. " " .. type(v)
      k = next(p, "l")
      out[#out + 1] = "after l " .. tostring(k)
      k, v = next(p.l, 2)
      out[#out + 1] = "after 2 " .. k .. "=" .. v
      out[#out + 1] = "#map " .. #p.m
      return table.concat(out, " ")
    ]])
    local raw = hex("82 a16c 94 01 02 c0 04 a16d 82 01 a178 02 a179")
    assert.same({ "1:1 2:2 #4 1=1 2=2 4=4 next l table after l m after 2 4=4 #map 2" },
      run(r, { topic = "t", payload_raw = raw }).routes)
  end)

  it("refuses a part of the payload kept past its on_event call", function()
    local r = s.rule([[
      local kept
      return { on_event = function(ev)
        if ev.topic == "keep" then kept = ev.payload.a return "ok" end
        return tostring(kept.b)
      end }]])
    local raw = hex("81 a161 81 a162 01")
    assert.same({ "ok" }, run(r, { topic = "keep", payload_raw = raw }).routes)
    local res = run(r, { topic = "read", payload_raw = raw })
    assert.equal("runtime", res.error_kind)
    s.has(res.error, "only valid during the on_event call that read it")
  end)

  it("refuses a whole ev.payload kept past its call, even once later calls read theirs", function()
    -- a kept root must never turn into a later event's payload
    local r = s.rule([[
      local kept
      return { on_event = function(ev)
        if ev.topic == "keep" then kept = ev.payload return "ok" end
        local now = ev.payload.b
        if rawequal(kept, ev.payload) then return "aliased" end
        return tostring(now) .. " " .. tostring(kept.b)
      end }]])
    assert.same({ "ok" }, run(r, { topic = "keep", payload_raw = hex("81 a162 01") }).routes)
    local res = run(r, { topic = "read", payload_raw = hex("81 a162 02") })
    assert.equal("runtime", res.error_kind)
    s.has(res.error, "only valid during the on_event call that read it")
  end)

  -- the root is one value per call over one node reused by every event
  -- (proxy.c ROOT_TAG): nothing of an earlier call may show through it
  it("refuses a root kept in a global, read or written on the next event", function()
    local r = s.rule([[
      return { on_event = function(ev)
        if ev.topic == "keep" then kept_root = ev.payload return "ok" end
        local mine = ev.payload.b
        if ev.topic == "write" then kept_root.b = 9 end
        return tostring(mine) .. " " .. tostring(kept_root.b)
      end }]])
    assert.same({ "ok" }, run(r, { topic = "keep", payload_raw = hex("81 a162 01") }).routes)
    for _, topic in ipairs({ "read", "write" }) do
      local res = run(r, { topic = topic, payload_raw = hex("81 a162 02") })
      assert.equal("runtime", res.error_kind)
      s.has(res.error, "only valid during the on_event call that read it")
    end
    local raw = hex("81 a162 03")
    local res = run(s.on_event("return tostring(ev.payload.b)"), { topic = "t", payload_raw = raw })
    assert.same({ "3" }, res.routes)
    assert.is_false(res.changed)
  end)

  it("refuses a root of an earlier call put back as ev.payload, read this call or not", function()
    local r = s.rule([[
      local kept
      return { on_event = function(ev)
        if ev.topic == "keep" then kept = ev.payload return "ok" end
        if ev.topic == "read" then local _ = ev.payload.b end
        ev.payload = kept
        return "out"
      end }]])
    assert.same({ "ok" }, run(r, { topic = "keep", payload_raw = hex("81 a162 01") }).routes)
    for _, topic in ipairs({ "read", "set" }) do
      local res = run(r, { topic = topic, payload_raw = hex("81 a162 02") })
      assert.equal("runtime", res.error_kind, topic)
      s.has(res.error, "only valid during the on_event call that read it")
    end
  end)

  it("gives each call its own root: equal within the call, not across calls", function()
    local r = s.rule([[
      local last
      return { on_event = function(ev)
        local p = ev.payload
        local out = tostring(rawequal(p, ev.payload)) .. " " .. type(p) .. " " ..
          tostring(p) .. " " .. tostring(rawequal(p, last)) .. " " .. p.b
        last = p
        return out
      end }]])
    assert.same({ "true table table: ev.payload false 1" },
      run(r, { topic = "t", payload_raw = hex("81 a162 01") }).routes)
    assert.same({ "true table table: ev.payload false 2" },
      run(r, { topic = "t", payload_raw = hex("81 a162 02") }).routes)
  end)

  it("starts every event's root clean: writes and children of the last event do not show", function()
    local r = s.rule([[
      local kept
      return { on_event = function(ev)
        if ev.topic == "write" then
          kept = ev.payload.a
          ev.payload.a.b = 5
          ev.payload.t = { 1, 2 } -- a table: the root's writes go to its env
          for i = 1, 10 do ev.payload["k" .. i] = i end
          return "w"
        end
        return tostring(ev.payload.a.b) .. " " .. tostring(ev.payload.t) .. " " ..
          tostring(ev.payload.k1) .. " " .. tostring(pcall(function() return kept.b end))
      end }]])
    local res = run(r, { topic = "write", payload_raw = hex("81 a161 81 a162 01") })
    assert.equal("w", res.routes[1], res.error)
    assert.is_true(res.changed)
    local raw = hex("81 a161 81 a162 07")
    res = run(r, { topic = "read", payload_raw = raw })
    assert.same({ "7 nil nil false" }, res.routes)
    assert.is_false(res.changed)
    res = run(s.on_event("return 'x'"), { topic = "t", payload_raw = raw })
    assert.is_false(res.changed)
  end)

  it("keeps reading the event's bytes through a root after ev.payload is replaced", function()
    local r = s.rule([[
      return { on_event = function(ev)
        local p = ev.payload
        if ev.topic == "back" then
          ev.payload = { x = 1 }
          ev.payload = p
          p.z = 2
          return "b"
        end
        ev.payload = { x = p.a }
        return tostring(p.a) .. " " .. tostring(ev.payload.x)
      end }]])
    local res = run(r, { topic = "swap", payload_raw = hex("81 a161 05") })
    assert.same({ "5 5" }, res.routes)
    assert.equal(tohex(hex("81 a178 05")), tohex(res.event.payload_raw))
    res = run(r, { topic = "back", payload_raw = hex("81 a161 05") })
    assert.equal(tohex(hex("82 a161 05 a17a 02")), tohex(res.event.payload_raw))
  end)

  it("reads short strings right through the cache of strings read lately, event after event", function()
    -- 40 values, many of one length and first/last byte (cache slots
    -- collide), a bin beside a str of the same bytes, read over 3 events
    local keys, vals, parts = {}, {}, {}
    for i = 1, 40 do
      local v = ("v%s%02dz"):format(("x"):rep(i % 3), i % 17)
      keys[i], vals[i] = ("k%02d"):format(i), v
      local head = i % 5 == 0 and ("c4%02x"):format(#v) or ("%02x"):format(0xa0 + #v)
      parts[i] = "a3" .. tohex(keys[i]) .. head .. tohex(v)
    end
    local raw = hex(("de%04x"):format(40) .. table.concat(parts))
    local r = s.on_event([[
      local out = {}
      for i = 1, 40 do
        local k = ("k%02d"):format(i)
        out[i] = ev.payload[k] .. ":" .. sluice.kind(ev.payload, k)
      end
      local got = table.concat(out, ",")
      return got == ev.headers.want and "same" or got:sub(1, 250)]])
    local want = {}
    for i = 1, 40 do want[i] = vals[i] .. ":" .. (i % 5 == 0 and "binary" or "string") end
    for _ = 1, 3 do
      local res = run(r, { topic = "t", headers = { want = table.concat(want, ",") }, payload_raw = raw })
      assert.same({ "same" }, res.routes, res.error)
      assert.is_false(res.changed)
    end
  end)

  it("leaves sluice.drop's mark a plain value beside the root", function()
    local r = s.on_event([[
      local d = sluice.drop("x")
      local ok, err = pcall(function() return d.a end)
      local ok2 = pcall(function() d.a = 1 end)
      return tostring(d) .. " " .. tostring(ok) .. " " .. tostring(ok2) .. " " ..
        tostring(err:find("attempt to index a userdata value", 1, true) ~= nil) ..
        " " .. tostring(getmetatable(ev.payload))]])
    assert.same({ "sluice.drop false false true protected" },
      run(r, { topic = "t", payload_raw = hex("81 a162 01") }).routes)
  end)

  it("gives plain tables with sluice.copy, kept past the call", function()
    local r = s.rule([[
      local kept
      return { on_event = function(ev)
        if ev.topic == "keep" then kept = sluice.copy(ev.payload.a) return "ok" end
        return tostring(kept.b) .. " " .. type(kept) .. " " .. sluice.kind(kept, "f")
      end }]])
    local raw = hex("81 a161 82 a162 01 a166 cb3ff0000000000000")
    run(r, { topic = "keep", payload_raw = raw })
    assert.same({ "1 table float" }, run(r, { topic = "read", payload_raw = raw }).routes)
  end)
end)

describe("writing ev.payload", function()
  teardown(s.cleanup)

  local function change(body, raw)
    local res = run(s.on_event(body .. "\nreturn 'out'"), { topic = "t", payload_raw = hex(raw) })
    assert.equal("route", res.verdict, res.error)
    return res
  end

  it("re-encodes only the entry written; the rest keeps its bytes", function()
    -- a float 1.0, a float32, a bin, a big int and a non-minimal str stay
    local rest = "a166cb3ff0000000000000 a167ca3f800000 a162c40101 a169cf0020000000000001 a173d90161"
    local res = change("ev.payload.a = 2", "86 a16101 " .. rest)
    assert.equal(tohex(hex("86 a16102 " .. rest)), tohex(res.event.payload_raw))
    res = change([[ev.payload.priority = "high"]], "81 a16101")
    assert.equal(tohex(hex("82 a16101 a87072696f72697479 a468696768")), tohex(res.event.payload_raw))
  end)

  it("steps over every flat value type by its bytes when a key is added after them", function()
    local flat = "a161c0 a162c2 a163c3 a16405 a165ff a166cc80 a167cd0100 a168ce00010000 " ..
      "a169cfffffffffffffffff a16ad080 a16bd1ff00 a16cd2ff000000 a16dd3ff00000000000000 a16ea0 " ..
      "a16fca3f800000 a170cb3ff0000000000000"
    local res = change("ev.payload.z = 1", "de0010 " .. flat)
    assert.equal(tohex(hex("de0011 " .. flat .. " a17a01")), tohex(res.event.payload_raw))
  end)

  it("starts each event's writes empty, however many the last event made", function()
    local r = s.on_event([[
      local p = ev.payload
      for i = 1, tonumber(ev.topic) do p["k" .. i] = i end
      local n = 0
      for k in pairs(p) do n = n + 1 end
      return tostring(n)
    ]])
    local raw = hex("81 a16101")
    for _, c in ipairs({ { "2", 3 }, { "1", 2 }, { "12", 13 }, { "0", 1 }, { "1", 2 }, { "9", 10 }, { "3", 4 } }) do
      local res = run(r, { topic = c[1], payload_raw = raw })
      assert.same({ tostring(c[2]) }, res.routes, "after " .. c[1] .. " writes")
      if c[1] == "0" then
        assert.is_false(res.changed)
      else
        local want = { a = 1 }
        for i = 1, tonumber(c[1]) do want["k" .. i] = i end
        assert.same(want, T.decode(res.event.payload_raw), "after " .. c[1] .. " writes")
      end
    end
  end)

  it("writes a changed child of a map written at more than eight keys", function()
    local r = s.on_event([[
      local p = ev.payload
      p.a.b = 2
      for i = 1, tonumber(ev.topic) do p["k" .. i] = i end
      return "out"
    ]])
    for n = 9, 40 do
      local res = run(r, { topic = tostring(n), payload_raw = hex("81 a161 81 a16201") })
      local got = T.decode(res.event.payload_raw)
      assert.equal(2, got.a.b, n .. " keys written")
      assert.equal(n, got["k" .. n])
    end
  end)

  it("writes top-level scalars of any key type in the order set, and reads them back", function()
    -- strings, numbers, booleans and nil set at the top stay in a log of
    -- their own until something needs the general path
    local res = change([[
      local p = ev.payload
      p.z = 1 p.y = "s" p[true] = false p[2] = 1.5 p.a = nil p.z = 1
      assert(p.z == 1 and p.y == "s" and p[true] == false and p[2.0] == 1.5)
      assert(p.a == nil and p.b == 2 and sluice.kind(p, "a") == "nil")
    ]], "82 a16101 a16202")
    assert.equal(tohex(hex("85 a16202 a17a01 a179a173 c3c2 02cb3ff8000000000000")),
      tohex(res.event.payload_raw))
  end)

  it("keeps id, topic, key, time and headers as they came when only top-level fields change", function()
    -- the changed event is built without finish's Lua call: its envelope
    -- must still be the event's own, byte for byte where it matters
    local r = s.on_event([[ev.payload.priority = "high" ev.payload.n = 7 return "out"]])
    local res = run(r, { id = "id-1", topic = "orders", key = "k9", time_ns = "1700000000000000123",
      headers = { traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", x = "y" },
      payload_raw = hex("82 a16101 a16202") })
    assert.equal("route", res.verdict, res.error)
    assert.is_true(res.changed)
    assert.equal("id-1", res.event.id)
    assert.equal("orders", res.event.topic)
    assert.equal("k9", res.event.key)
    assert.equal("1700000000000000123", res.event.time_ns)
    assert.same({ traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", x = "y" },
      res.event.headers)
    assert.equal(tohex(hex("84 a16101 a16202 a87072696f72697479a468696768 a16e07")),
      tohex(res.event.payload_raw))
    -- a write that puts back what was there changes nothing
    res = run(s.on_event([[ev.payload.a = 1 ev.payload.zz = nil return "out"]]),
      { topic = "t", payload_raw = hex("82 a16101 a16202") })
    assert.is_false(res.changed)
  end)

  it("keeps logged writes when a table, a ninth key, pairs or next come after them", function()
    local res = change([[
      local p = ev.payload
      p.x = "1" p.b = nil p.t = { 1 } p.x = "2"
      assert(p.x == "2" and p.b == nil and p.t[1] == 1)
    ]], "82 a16101 a16202")
    assert.same({ a = 1, x = "2", t = { 1 } }, T.decode(res.event.payload_raw))
    res = change([[
      local p = ev.payload
      for i = 1, 9 do p["k" .. i] = i end
      p.k1 = nil
      assert(p.k9 == 9 and p.k1 == nil)
    ]], "81 a16101")
    local want = { a = 1 }
    for i = 2, 9 do want["k" .. i] = i end
    assert.same(want, T.decode(res.event.payload_raw))
    local r = s.on_event([[
      local p = ev.payload
      p.new = "n" p.a = 5
      local k, v = next(p, "new")
      assert(k == nil, tostring(k))
      local seen = {}
      for k, v in pairs(p) do seen[#seen + 1] = k .. "=" .. v end
      p.later = true
      return table.concat(seen, ",")
    ]])
    res = run(r, { topic = "t", payload_raw = hex("81 a16101") })
    assert.same({ "a=5,new=n" }, res.routes)
    assert.same({ a = 5, new = "n", later = true }, T.decode(res.event.payload_raw))
  end)

  it("writes the key -0.0 as the key 0, as a table holds it, in the log and past 64 KiB", function()
    local big = "a162 db00011170" .. ("78"):rep(70000)
    for _, c in ipairs({ { "80", "81" }, { "81 " .. big, "82 " .. big } }) do
      local res = change("ev.payload[-0.0] = 1", c[1])
      assert.equal(tohex(hex(c[2] .. " 0001")), tohex(res.event.payload_raw))
      res = change("ev.payload[-0.0] = 1 for _ in pairs(ev.payload) do end", c[1])
      assert.equal(tohex(hex(c[2] .. " 0001")), tohex(res.event.payload_raw))
    end
  end)

  it("keeps a written NaN's bytes through reads and the handover to the general path", function()
    -- both NaNs a rule can make: LuaJIT's 0/0 and its negation
    for _, v in ipairs({ "0/0", "-(0/0)" }) do
      local alone = change("local v = " .. v .. " ev.payload.x = v", "80").event.payload_raw
      local spilled = change("local v = " .. v .. " ev.payload.x = v for _ in pairs(ev.payload) do end",
        "80").event.payload_raw
      assert.equal(tohex(alone), tohex(spilled), v)
      local copied = change("local v = " .. v .. " local p = ev.payload p.x = v p.y = p.x", "80")
      local x = tohex(alone):sub(7)
      assert.equal("82a178" .. x .. "a179" .. x, tohex(copied.event.payload_raw), v)
    end
  end)

  it("writes nested fields in place", function()
    local res = change("ev.payload.a.b.c = true", "82 a161 81 a162 81 a163 c2 a17a 93 01 02 03")
    assert.equal(tohex(hex("82 a161 81 a162 81 a163 c3 a17a 93 01 02 03")), tohex(res.event.payload_raw))
    res = change("ev.payload.l[2] = 'x' ev.payload.l[#ev.payload.l + 1] = 4", "81 a16c 93 01 02 03")
    assert.equal(tohex(hex("81 a16c 94 01 a178 03 04")), tohex(res.event.payload_raw))
  end)

  it("deletes entries set to nil", function()
    local res = change("ev.payload.b = nil", "83 a16101 a16202 a16303")
    assert.equal(tohex(hex("82 a16101 a16303")), tohex(res.event.payload_raw))
    -- the last element shrinks an array; one in the middle becomes nil
    res = change("local l = ev.payload.l l[3] = nil l[1] = nil", "81 a16c 93 01 02 03")
    assert.equal(tohex(hex("81 a16c 92 c0 02")), tohex(res.event.payload_raw))
    -- writing a key of a repeated or colliding key writes one pair for it
    res = change("ev.payload.a = 9", "83 a16101 a16202 a16103")
    assert.equal(tohex(hex("82 a16109 a16202")), tohex(res.event.payload_raw))
    res = change("ev.payload.a = nil", "83 a16101 c4016102 a16203")
    assert.equal(tohex(hex("81 a16203")), tohex(res.event.payload_raw))
  end)

  it("replaces subtrees with tables, with other parts of the payload, and whole", function()
    local res = change("ev.payload.a = { z = 1 }", "82 a161 93010203 a162 c3")
    assert.equal(tohex(hex("82 a161 81a17a01 a162 c3")), tohex(res.event.payload_raw))
    res = change("ev.payload.b = ev.payload.a ev.payload.a = nil", "82 a161 92 c40101 ca3f800000 a162 c3")
    assert.equal(tohex(hex("81 a162 92 c40101 ca3f800000")), tohex(res.event.payload_raw))
    res = change("ev.payload = { n = 1 }", "82 a161 01 a162 02")
    assert.equal(tohex(hex("81 a16e 01")), tohex(res.event.payload_raw))
    res = change("local a = ev.payload.a ev.payload = { wrap = a } a.x = 1", "81 a161 80")
    assert.equal(tohex(hex("81 a477726170 81 a178 01")), tohex(res.event.payload_raw))
  end)

  it("yields written values and added keys in pairs, and skips deleted ones", function()
    local r = s.on_event([[
      local p = ev.payload
      p.b = nil p.a = 10 p.new = "n"
      local out = {}
      for k, v in pairs(p) do out[#out + 1] = k .. "=" .. tostring(v) end
      return table.concat(out, ",")
    ]])
    assert.same({ "a=10,c=3,new=n" }, run(r, { topic = "t", payload_raw = hex("83 a16101 a16202 a16303") }).routes)
  end)

  it("keeps the bytes when a write puts back what was there", function()
    local res = change([[
      local p = ev.payload
      p.f = p.f p.g = p.g p.b = p.b p.i = p.i p.m = p.m p.l[1] = p.l[1]
    ]], "86 a166cb3ff0000000000000 a167ca3f800000 a162c40101 a169cf0020000000000001 a16d 80 a16c 91 01")
    assert.is_false(res.changed)
  end)

  it("takes table.insert, remove, concat, sort and unpack", function()
    local r = s.on_event([[
      local l = ev.payload.l
      table.insert(l, "d")
      table.insert(l, 1, "z")
      local removed = table.remove(l, 2)
      table.sort(l)
      local a, b = unpack(l)
      return table.concat(l, ",") .. " " .. removed .. " " .. a .. b .. " " .. #l
    ]])
    local res = run(r, { topic = "t", payload_raw = hex("81 a16c 93 a161 a163 a162") })
    assert.same({ "b,c,d,z a bc 4" }, res.routes, res.error)
    assert.equal(tohex(hex("81 a16c 94 a162 a163 a164 a17a")), tohex(res.event.payload_raw))
    res = run(s.on_event([[table.insert(ev.payload.l, 5, "x")]]),
      { topic = "t", payload_raw = hex("81 a16c 91 01") })
    s.has(res.error, "bad argument #2 to 'insert' (position out of bounds)")
    -- plain values still get the library's own errors, named
    for _, body in ipairs({ "pairs(nil)", "ipairs(1)", "next(nil)", "unpack(nil)", "table.remove(nil)" }) do
      res = run(s.on_event(body), { topic = "t" })
      s.has(res.error, "bad argument #1 to '" .. body:match("([%w]+)%(") .. "' (table expected")
    end
  end)

  it("refuses what an array or map cannot take, and cycles", function()
    local function err(body, raw)
      local res = run(s.on_event(body), { topic = "t", payload_raw = hex(raw or "82 a161 80 a16c 91 01") })
      assert.equal("runtime", res.error_kind, body)
      return res.error
    end
    s.has(err("ev.payload.l[3] = 1"), "an array takes indexes 1 to its length + 1 (2); got 3")
    s.has(err("ev.payload.l.x = 1"), "an array takes indexes")
    s.has(err("ev.payload[{}] = 1"), "a map key must be a string, number or boolean (got table)")
    s.has(err("ev.payload.a.self = ev.payload"), "nesting deeper than 64 (a cycle?)")
    s.has(err("ev.payload.f = print"), "cannot encode a function value")
  end)

  it("refuses the iterators of pairs and ipairs called on anything but their proxy", function()
    local function err(body)
      local res = run(s.on_event(body), { topic = "t", payload_raw = hex("82 a161 80 a16c 91 01") })
      assert.equal("runtime", res.error_kind, body)
      return res.error
    end
    for _, arg in ipairs({ '"x"', "5", "{}", "nil", "ev.payload.l", "ev.payload.a" }) do
      s.has(err("local f = pairs(ev.payload) f(" .. arg .. ", nil) return 'o'"),
        "the iterator of pairs(p) walks p only")
      s.has(err("local f = pairs(ev.payload.l) f(" .. arg:gsub("%.l$", "") .. ", nil) return 'o'"),
        "the iterator of pairs(p) walks p only")
    end
    for _, arg in ipairs({ '"x"', "5", "{}", "nil" }) do
      s.has(err("local f = ipairs(ev.payload.l) f(" .. arg .. ", 0) return 'o'"),
        "bad argument #1")
    end
    -- the right proxy still walks
    local r = s.on_event("local f, p = pairs(ev.payload.l) local k, v = f(p, nil) return tostring(v)")
    assert.same({ "1" }, run(r, { topic = "t", payload_raw = hex("82 a161 80 a16c 91 01") }).routes)
  end)

  -- the event's map is one level: an event 64 deep (the most the native
  -- input takes) holds a payload 63 deep
  it("writes at the deepest level, and refuses a table that would nest past the limit", function()
    local descend = "local p = ev.payload while type(p[1]) == 'table' do p = p[1] end "
    local raw = hex(nested(63, "01"))
    local res = run(s.on_event(descend .. "p[2] = 5 return 'out'"), { topic = "t", payload_raw = raw })
    assert.equal("route", res.verdict, res.error)
    assert.equal(tohex(hex(nested(62, "920105"))), tohex(res.event.payload_raw))
    res = run(s.on_event(descend .. "p[2] = {} return 'out'"), { topic = "t", payload_raw = raw })
    assert.equal("runtime", res.error_kind)
    s.has(res.error, "nesting deeper than 64")
  end)

  -- found by test_rules_differential: the changed payload was measured on
  -- its own, so one 64 deep passed and the event (65 deep) went out to
  -- peers that refuse it, and `sluice route` could not print it
  it("refuses a change that leaves the payload 64 deep: its event would be 65", function()
    local res = run(s.on_event("ev.payload = { w = ev.payload } return 'out'"),
      { topic = "t", payload_raw = hex(nested(63, "01")) })
    assert.equal("runtime", res.error_kind)
    s.has(res.error, "the changed event: the event is not valid on the wire: payload: nesting deeper than 64")
    res = run(s.on_event("ev.payload = { w = ev.payload } return 'out'"),
      { topic = "t", payload_raw = hex(nested(62, "01")) })
    assert.equal("route", res.verdict, res.error)
  end)

  it("bounds the changed payload by max_event_bytes", function()
    local r = s.on_event([[ev.payload.big = ("x"):rep(2 ^ 20)]], { cpu_budget_ms = 1000 })
    local res = run(r, { topic = "t", payload_raw = hex("81 a16101") })
    assert.equal("runtime", res.error_kind)
    s.has(res.error, "ev.payload (max_event_bytes) is larger than 1048576 bytes")
  end)

  it("emits and renders parts of the payload as their current bytes", function()
    local r = s.on_event([[
      ev.payload.a.y = 2
      sluice.emit("o", { topic = "t", payload = { sub = ev.payload.a } })
      return sluice.json.encode(ev.payload)
    ]])
    local res = run(r, { topic = "t", payload_raw = hex("81 a161 81 a178 cb3ff0000000000000") })
    assert.equal("route", res.verdict, res.error)
    assert.equal(tohex(hex("81 a3737562 82 a178 cb3ff0000000000000 a17902")),
      tohex(res.emitted[1].event.payload_raw))
    assert.same({ '{"a":{"x":1.0,"y":2}}' }, res.routes)
  end)
end)

describe("walking a big payload", function()
  teardown(s.cleanup)

  local function big_map(n)
    local t = {}
    for i = 1, n do t["key" .. i] = i end
    return t
  end

  it("charges lookups in a hot loop to the CPU budget", function()
    local r = s.on_event([[
      local p = ev.payload
      for i = 1, 1e9 do local _ = p["key" .. (i % 50000)] end
    ]])
    local res = run(r, { topic = "t", payload = big_map(50000) })
    assert.equal("cpu", res.error_kind, res.error)
    assert.is_true(res.cpu_ms < 200, res.cpu_ms)
  end)

  it("finds keys of a big map through an index built once", function()
    local r = s.on_event([[
      local p = ev.payload
      local sum = 0
      for i = 1, 50000 do sum = sum + p["key" .. i] end
      return tostring(sum)
    ]], { cpu_budget_ms = 5000 })
    local res = run(r, { topic = "t", payload = big_map(50000) })
    assert.same({ tostring(50000 * 50001 / 2) }, res.routes, res.error)
  end)

  it("charges the index of a big map to memory_mb, and builds none for one or two reads", function()
    local one = s.on_event([[return tostring(ev.payload.key1 + ev.payload.key2)]],
      { memory_mb = 2, cpu_budget_ms = 1000 })
    assert.same({ "3" }, run(one, { topic = "t", payload = big_map(60000) }).routes)
    local r = s.on_event([[return tostring(ev.payload.key1 + ev.payload.key2 + ev.payload.key3)]],
      { memory_mb = 2, cpu_budget_ms = 1000 })
    local res = run(r, { topic = "t", payload = big_map(60000) })
    assert.equal("memory", res.error_kind, res.error)
    assert.same({ "6" }, run(r, { topic = "t", payload = big_map(10) }).routes)
  end)

  it("stops a walk of a huge array at the CPU budget", function()
    local r = s.on_event([[
      local p = ev.payload
      while true do for _, v in ipairs(p) do end end
    ]])
    local res = run(r, { topic = "t", payload_raw = hex(big_array(200000, "01")) })
    assert.equal("cpu", res.error_kind, res.error)
    assert.is_true(res.cpu_ms < 200, res.cpu_ms)
  end)
end)

describe("ev.payload against plain tables", function()
  teardown(s.cleanup)

  -- The same random writes go to ev.payload and to sluice.copy(ev.payload);
  -- the spliced event must decode to what the copy encodes to, kinds too.
  local r = s.rule([[
    local function lcg(seed)
      local st = seed
      return function(n) st = (st * 1103515245 + 12345) % 2147483648 return st % n + 1 end
    end
    local KEYS = { "a", "b", "c", "d", "new", 1, 2 }
    return { on_event = function(ev)
      local rnd = lcg(tonumber(ev.headers.seed))
      local VALS = {
        function() return nil end,
        function() return rnd(100) end,
        function() return rnd(100) + 0.5 end,
        function() return "s" .. rnd(9) end,
        function() return { x = rnd(5) } end,
        function() return sluice.array({ rnd(3), rnd(3) }) end,
        function() return sluice.bin("b" .. rnd(3)) end,
        function() return true end,
      }
      local function dump(t)
        local out = {}
        for k, v in pairs(t) do
          out[#out + 1] = tostring(k) .. "=" .. (type(v) == "table" and sluice.kind(v) .. #v or tostring(v))
        end
        table.sort(out)
        return table.concat(out, ",")
      end
      local p, c = ev.payload, sluice.copy(ev.payload)
      assert(dump(p) == dump(c), "pairs differ before: " .. dump(p) .. " / " .. dump(c))
      for _ = 1, rnd(6) do
        local k, v = KEYS[rnd(#KEYS)], VALS[rnd(#VALS)]()
        if sluice.kind(p[k]) == "map" and rnd(2) == 1 then
          local k2 = KEYS[rnd(#KEYS)]
          p[k][k2] = v
          c[k][k2] = v
        elseif sluice.kind(p[k]) == "array" and rnd(2) == 1 then
          local i = rnd(#p[k] + 1)
          if v == nil then i = #p[k] end
          if i > 0 then p[k][i] = v c[k][i] = v end
        else
          p[k] = v
          c[k] = v
        end
      end
      assert(dump(p) == dump(c), "pairs differ after: " .. dump(p) .. " / " .. dump(c))
      sluice.emit("model", { topic = "m", payload = c })
      return "out"
    end }]])

  local function lcg(seed)
    local st = seed
    return function(n) st = (st * 1103515245 + 12345) % 2147483648 return st % n + 1 end
  end

  local function random_value(rnd, depth)
    local pick = rnd(depth > 2 and 6 or 8)
    if pick == 1 then return rnd(1000) end
    if pick == 2 then return T.float(rnd(9)) end
    if pick == 3 then return "v" .. rnd(50) end
    if pick == 4 then return T.bin("x" .. rnd(9)) end
    if pick == 5 then return rnd(2) == 1 end
    if pick == 6 then return 2 ^ 60 + rnd(9) end
    if pick == 7 then
      local t = {}
      for i = 1, rnd(4) do t[i] = random_value(rnd, depth + 1) end
      return T.array(t)
    end
    local t = T.map({})
    for _, k in ipairs({ "a", "b", "c", "d", 1, 2 }) do
      if rnd(2) == 1 then t[k] = random_value(rnd, depth + 1) end
    end
    return t
  end

  it("gives what plain tables give, for 1000 random payloads and writes", function()
    for seed = 1, 1000 do
      local rnd = lcg(seed * 7919)
      local t = T.map({})
      for _, k in ipairs({ "a", "b", "c", "d", 1, 2 }) do
        if rnd(3) > 1 then t[k] = random_value(rnd, 0) end
      end
      local raw = T.encode(t)
      local res = r:run({ topic = "t", headers = { seed = tostring(seed) }, payload_raw = raw })
      assert.equal("route", res.verdict, "seed " .. seed .. ": " .. tostring(res.error))
      local model = res.emitted[1].event
      assert.same(model.payload, res.event.payload, "seed " .. seed)
      for k in pairs(model.payload) do
        assert.equal(T.kind(model.payload, k), T.kind(res.event.payload, k), "seed " .. seed .. " key " .. tostring(k))
      end
      if not res.changed then
        assert.equal(tohex(raw), tohex(res.event.payload_raw), "seed " .. seed)
      end
    end
  end)
end)

describe("ev.payload's write log, event after event", function()
  teardown(s.cleanup)

  -- the log keeps the strings it wrote last anchored and knows them again
  -- by address: a slot that held another string, or a number, must not
  -- give its old bytes
  it("writes the strings of this event, whatever the slots held before", function()
    local r = s.rule([=[
      local K = { "a", "bb", "a", 1, "ccc" }
      local V = { "x", "yy", "yy", "x", 7 }
      return { on_event = function(ev)
        local i = tonumber(ev.headers.i)
        ev.payload[K[i]] = V[i]
        ev.payload[V[(i % 4) + 1]] = K[(i % 5) + 1]
        return "out"
      end }]=])
    local want = {
      "83 a17a 00 a161 a178 a27979 a26262",
      "83 a17a 00 a26262 a27979 a27979 a161",
      "83 a17a 00 a161 a27979 a178 01",
      "83 a17a 00 01 a178 a178 a3636363",
      "83 a17a 00 a3636363 07 a27979 a161",
    }
    for round = 1, 2 do
      for i = 1, 5 do
        local res = run(r, { topic = "t", headers = { i = tostring(i) }, payload_raw = hex("81 a17a 00") })
        assert.equal("route", res.verdict, res.error)
        assert.equal(tohex(hex(want[i])), tohex(res.event.payload_raw), "round " .. round .. " event " .. i)
      end
    end
  end)
end)

describe("ev.payload's write log against the general path", function()
  teardown(s.cleanup)

  -- The same random top-level writes and reads, once through the write log
  -- (topic "log") and once with the general path forced first by a table
  -- written and removed (topic "general"): the bytes and every read agree.
  local r = s.rule([[
    local function lcg(seed)
      local st = seed
      return function(n) st = (st * 1103515245 + 12345) % 2147483648 return st % n + 1 end
    end
    local KEYS = { "a", "b", "c", "d", "e", "f", "g", "h", "i", "amount", ("x"):rep(31), ("x"):rep(32),
      1, 2, 1.5, -1, 0, -0.0, true, false, "", 2 ^ 53, 2 ^ 64 }
    local VALS = { 0, -0.0, 1, 1.5, 0 / 0, -(0 / 0), 2 ^ 53, 2 ^ 63, 2 ^ 64, -2 ^ 63, -2 ^ 63 - 4096, 1 / 0,
      -1 / 0, "s", ("y"):rep(31), ("y"):rep(32), ("y"):rep(255), ("y"):rep(256), ("y"):rep(65536), true,
      false, "", -32, -33, 127, 128, 255, 256, 65535, 65536, 4294967295, 4294967296, -2147483649, 0.1 }
    local function show(v)
      if type(v) == "number" then
        return ("%.17g"):format(v) .. (1 / v < 0 and "-" or "")
      end
      if type(v) == "string" then return #v .. v:sub(1, 4) end
      return type(v) == "table" and "table" or tostring(v)
    end
    return { on_event = function(ev)
      local rnd = lcg(tonumber(ev.headers.seed))
      local p, out = ev.payload, {}
      if ev.topic == "general" then p["\0"] = {} p["\0"] = nil end
      for _ = 1, rnd(12) do
        local k, op = KEYS[rnd(#KEYS)], rnd(10)
        if op <= 5 then
          local v = VALS[rnd(#VALS + 1)] -- one past the end: nil
          p[k] = v
        elseif op <= 8 then
          out[#out + 1] = show(p[k]) .. sluice.kind(p, k)
        elseif op == 9 then
          local seen = {}
          for k2, v2 in pairs(p) do seen[#seen + 1] = show(k2) .. "=" .. show(v2) end
          table.sort(seen)
          out[#out + 1] = table.concat(seen, ",")
        else
          out[#out + 1] = show(#p) .. show(ev:field("a"))
        end
      end
      for _, line in ipairs(out) do sluice.log("info", line) end
      return "out"
    end }]], { cpu_budget_ms = 2000 })

  local function lcg(seed)
    local st = seed
    return function(n) st = (st * 1103515245 + 12345) % 2147483648 return st % n + 1 end
  end

  local KEYS = { "a161", "a162", "a163", "a6616d6f756e74", "d90161", "da000162", "c40161", "01",
    "cb3ff0000000000000", "cb3ff8000000000000", "ff", "c3", "c2", "cf0020000000000001", "c0", "9101",
    "cd0002", "a0", "ca3fc00000", "cb8000000000000000", "00", "bf" .. ("78"):rep(31) }
  local VALS = { "c0", "00", "cb8000000000000000", "01", "cb3ff0000000000000", "cb7ff8000000000000",
    "cfffffffffffffffff", "d38000000000000000", "a173", "c40173", "c3", "c2", "9201 02", "81a16101",
    "cd0005", "d0ff", "ca3fc00000", "c7010578", "d9 20" .. ("78"):rep(32) }

  local pairs_of = s.map_pairs -- a map's header and its pairs, sorted

  it("gives the bytes and reads of the general path, for 400 random payloads and writes", function()
    for seed = 1, 400 do
      local rnd = lcg(seed * 104729)
      local n, parts = rnd(18) - 1, {}
      for i = 1, n do parts[i] = KEYS[rnd(#KEYS)] .. VALS[rnd(#VALS)] end
      local head = (n < 16 and rnd(4) > 1) and ("%02x"):format(0x80 + n) or ("de%04x"):format(n)
      local raw = hex(head .. table.concat(parts))
      local got = {}
      for _, path in ipairs({ "log", "general" }) do
        local res = run(r, { topic = path, headers = { seed = tostring(seed) }, payload_raw = raw })
        assert.equal("route", res.verdict, "seed " .. seed .. ": " .. tostring(res.error))
        local reads = {}
        for _, l in ipairs(res.logs) do reads[#reads + 1] = l.msg end
        got[path] = { table.concat(reads, "\n"), res.event.payload_raw }
      end
      assert.equal(got.general[1], got.log[1], "seed " .. seed .. ": reads")
      assert.equal(pairs_of(got.general[2]), pairs_of(got.log[2]), "seed " .. seed .. ": bytes")
    end
  end)
end)
