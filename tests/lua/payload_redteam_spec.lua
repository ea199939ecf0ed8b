-- payload_redteam_spec.lua - attacks on ev.payload's light userdata root,
-- its write log splice and its string cache (issue 14's payload proxy
-- changes): a hostile rule and a hostile producer get errors, never a
-- later event's bytes, freed memory or bytes that decode to something
-- other than what the rule wrote.

local s = require("support")
local hex, tohex = s.hex, s.tohex

local STALE = "only valid during the on_event call that read it"

describe("ev.payload's root, sluice.drop's mark and a stale root as light userdata", function()
  teardown(s.cleanup)

  -- every operation a rule can try on a value, each in a pcall: the
  -- outcome (ok or the first words of the error) per operation
  local probe = [[
    local function try(f, ...)
      local ok, e = pcall(f, ...)
      if ok then return "ok:" .. tostring(e) end
      return "err:" .. tostring(e):gsub("^[^:]*:%d+: ", "")
    end
    local OPS = {
      index = function(v) return v.a end,
      newindex = function(v) v.z = 1 return "set" end,
      call = function(v) return v() end,
      lt = function(v) return v < v end,
      concat = function(v) return "x" .. v end,
      len = function(v) return #v end,
      pairs = function(v) local n = 0 for _ in pairs(v) do n = n + 1 end return n end,
      ipairs = function(v) local n = 0 for _ in ipairs(v) do n = n + 1 end return n end,
      next = function(v) return (next(v)) end,
      getmt = function(v) return getmetatable(v) end,
      setmt = function(v) return setmetatable(v, {}) end,
      rawequal = function(v) return rawequal(v, v) end,
      type = function(v) return type(v) end,
      kind = function(v) return sluice.kind(v) end,
      copy = function(v) return type(sluice.copy(v)) end,
      json = function(v) return sluice.json_encode and sluice.json_encode(v) or "none" end,
      unpack = function(v) return (unpack(v)) end,
      concat_t = function(v) return table.concat(v, ",") end,
      insert = function(v) table.insert(v, 1) return "ins" end,
      sort = function(v) table.sort(v) return "sorted" end,
      key = function(v) local t = setmetatable({}, { __mode = "k" }) t[v] = 1 return t[v] end,
    }
    local NAMES = {}
    for k in pairs(OPS) do NAMES[#NAMES + 1] = k end
    table.sort(NAMES)
    local function all(v)
      local out = {}
      for _, k in ipairs(NAMES) do out[k] = try(OPS[k], v) end
      return out
    end
  ]]

  it("keeps a drop mark and a stale root from reading anything, and the root of this call whole", function()
    local r = s.rule(probe .. [[
      local kept
      return { on_event = function(ev)
        if ev.topic == "keep" then kept = ev.payload return "ok" end
        local now = ev.payload
        local res = { drop = all(sluice.drop("x")), stale = all(kept), live = all(now) }
        for who, t in pairs(res) do
          for k, v in pairs(t) do sluice.log("info", who .. " " .. k .. " " .. v) end
        end
        return "out"
      end }]])
    assert.same({ "ok" }, r:run({ topic = "keep", payload_raw = hex("81 a161 01") }).routes)
    local res = r:run({ topic = "t", payload_raw = hex("91 07") })
    assert.equal("route", res.verdict, res.error)
    local got = {}
    for _, l in ipairs(res.logs) do
      local who, k, v = l.msg:match("^(%S+) (%S+) (.*)$")
      got[who .. " " .. k] = v
    end
    -- the stale root: every read, write and encode fails as stale
    for _, k in ipairs({ "index", "newindex", "len", "pairs", "ipairs", "next", "kind", "copy",
      "unpack", "concat_t", "insert", "sort" }) do
      s.has(got["stale " .. k], STALE)
    end
    -- the drop mark: a userdata as before, nothing of a payload
    for _, k in ipairs({ "index", "newindex", "len" }) do
      s.has(got["drop " .. k], "err:attempt to index a userdata value")
    end
    for _, k in ipairs({ "pairs", "ipairs", "next", "copy", "unpack", "concat_t", "insert", "sort" }) do
      assert.matches("^err:", got["drop " .. k], nil, false, "drop " .. k)
    end
    assert.equal("ok:userdata", got["drop type"])
    -- none of the three: callable, ordered, concatenated, or given a metatable
    for _, who in ipairs({ "drop", "stale", "live" }) do
      for _, k in ipairs({ "call", "lt", "concat", "setmt" }) do
        assert.matches("^err:", got[who .. " " .. k], nil, false, who .. " " .. k)
      end
      assert.equal("ok:protected", got[who .. " getmt"], who)
      assert.equal("ok:true", got[who .. " rawequal"], who)
      assert.equal("ok:1", got[who .. " key"], who)
    end
    -- this call's root works (insert appended a 1 before len ran; the
    -- probes run in name order)
    assert.equal("ok:nil", got["live index"])
    assert.equal("ok:2", got["live len"])
    assert.equal("ok:2", got["live ipairs"])
    assert.equal("ok:table", got["live type"])
    assert.equal("ok:array", got["live kind"])
    for _, k in ipairs({ "copy", "pairs", "next", "unpack", "concat_t", "insert", "sort" }) do
      assert.matches("^ok:", got["live " .. k], nil, false, "live " .. k)
    end
  end)

  it("refuses a root kept from on_event in a timer, in on_stop and in snapshot", function()
    local r = s.rule([[
      local kept
      sluice.every(1000, function() sluice.log("info", "timer " .. tostring(kept and kept.a)) end)
      return {
        on_event = function(ev) kept = ev.payload return "ok" end,
        snapshot = function() return { p = kept } end,
        on_stop = function() sluice.log("info", "stop " .. tostring(kept.a)) end,
      }]])
    assert.same({ "ok" }, r:run({ topic = "t", payload_raw = hex("81 a161 a3736563") }).routes)
    local out = r:advance(1000)
    assert.equal(1, #out.logs)
    s.has(out.logs[1].msg, STALE)
    local ok, err = pcall(r.snapshot, r)
    assert.is_false(ok)
    s.has(tostring(err), STALE)
    ok, err = pcall(r.stop, r)
    assert.is_false(ok)
    s.has(tostring(err), STALE)
  end)

  it("refuses a root kept from a call that raised or ran out of CPU", function()
    local r = s.rule([[
      local kept
      return { on_event = function(ev)
        if ev.topic == "raise" then kept = ev.payload local _ = kept.a error("boom") end
        if ev.topic == "spin" then kept = ev.payload local _ = kept.a while true do end end
        local mine = ev.payload.a
        return tostring(mine) .. " " .. tostring(kept.a)
      end }]], { cpu_budget_ms = 50 })
    for _, topic in ipairs({ "raise", "spin" }) do
      local res = r:run({ topic = topic, payload_raw = hex("81 a161 01") })
      assert.equal("error", res.verdict, topic)
      res = r:run({ topic = "read", payload_raw = hex("81 a161 02") })
      assert.equal("runtime", res.error_kind, topic)
      s.has(res.error, STALE)
    end
  end)

  it("refuses a stale root after many calls, in emit, copy and as a written value", function()
    -- pgen wraps at 2^32 calls: not reachable in a test
    local r = s.rule([[
      local kept
      return { on_event = function(ev)
        if ev.topic == "keep" then kept = ev.payload return "ok" end
        local p = ev.payload
        if ev.topic == "emit" then sluice.emit("x", { topic = "x", payload = kept }) end
        if ev.topic == "copy" then sluice.copy(kept) end
        if ev.topic == "put" then p.k = kept end
        if ev.topic == "nest" then p.k = { inner = kept } end
        if ev.topic == "n" then return tostring(p.a) end
        return "out"
      end }]])
    assert.same({ "ok" }, r:run({ topic = "keep", payload_raw = hex("81 a161 01") }).routes)
    for i = 1, 3000 do
      assert.same({ tostring(i % 100) }, r:run({ topic = "n", payload_raw = hex("81 a161") .. string.char(i % 100) }).routes)
    end
    for _, topic in ipairs({ "emit", "copy", "put", "nest" }) do
      local res = r:run({ topic = topic, payload_raw = hex("81 a161 02") })
      assert.equal("error", res.verdict, topic)
      s.has(res.error, STALE)
    end
  end)

  it("writes a root put into itself as an error, a drop mark as a userdata, a sibling as its bytes", function()
    local r = s.rule([[
      return { on_event = function(ev)
        local p = ev.payload
        if ev.topic == "self" then p.me = p end
        if ev.topic == "deep" then p.me = { { p } } end
        if ev.topic == "drop" then p.d = sluice.drop("x") end
        if ev.topic == "sib" then p.c = p.b end
        return "out"
      end }]])
    local raw = hex("82 a161 01 a162 81 a178 02")
    for _, topic in ipairs({ "self", "deep" }) do
      local res = r:run({ topic = topic, payload_raw = raw })
      assert.equal("error", res.verdict, topic)
      s.has(res.error, "nesting deeper")
    end
    local res = r:run({ topic = "drop", payload_raw = raw })
    assert.equal("error", res.verdict)
    s.has(res.error, "cannot encode a userdata value")
    res = r:run({ topic = "sib", payload_raw = raw })
    assert.equal("route", res.verdict, res.error)
    assert.equal("83a16101a16281a17802a16381a17802", tohex(res.event.payload_raw))
  end)

  it("gives two rules on one topic each their own root, a global of one unseen by the other", function()
    local a = s.rule([[
      return { on_event = function(ev) shared_root = ev.payload return tostring(ev.payload.a) end }]])
    local b = s.rule([[
      return { on_event = function(ev)
        return tostring(shared_root) .. " " .. tostring(ev.payload.a)
      end }]])
    assert.same({ "1" }, a:run({ topic = "t", payload_raw = hex("81 a161 01") }).routes)
    assert.same({ "nil 2" }, b:run({ topic = "t", payload_raw = hex("81 a161 02") }).routes)
  end)
end)

describe("ev.payload's string cache", function()
  teardown(s.cleanup)

  it("reads every short string as its bytes, through collisions, thrash, str and bin alike", function()
    local r = s.rule([[
      return { on_event = function(ev)
        local out = {}
        for i, v in ipairs(ev.payload) do out[i] = v end
        sluice.log("info", table.concat(out, "|"))
        return "out"
      end }]])
    -- strings of 1..40 bytes that share length, first and last byte (one
    -- hash slot), interleaved with bins of the same bytes and with more
    -- distinct strings than the cache has slots, over several events
    local words, parts = {}, {}
    for n = 1, 40 do
      for _, mid in ipairs({ "b", "c" }) do
        local w = n == 1 and "a" or n == 2 and ("a" .. "z") or ("a" .. mid:rep(n - 2) .. "z")
        if n <= 2 and mid == "c" then w = n == 1 and "q" or "qz" end
        words[#words + 1] = w
        local len = #w
        local shdr = len < 32 and ("%02x"):format(0xa0 + len) or ("d9%02x"):format(len)
        parts[#parts + 1] = shdr .. tohex(w)
        words[#words + 1] = w
        parts[#parts + 1] = ("c4%02x"):format(len) .. tohex(w)
      end
    end
    local raw = hex(("dc%04x"):format(#parts) .. table.concat(parts))
    for round = 1, 3 do
      local res = r:run({ topic = "t", payload_raw = raw })
      assert.equal(table.concat(words, "|"), res.logs[1].msg, "round " .. round)
      -- a payload of other strings in the same slots between rounds
      local res2 = r:run({ topic = "t", payload_raw = hex("92 a3616d7a a3616e7a") })
      assert.equal("amz|anz", res2.logs[1].msg)
    end
  end)

  it("reads strings a rule kept from earlier events as they were, after a reload", function()
    local src = [[
      local seen = {}
      return { on_event = function(ev)
        seen[#seen + 1] = ev.payload.s
        for _ = 1, 200 do local _ = { ("g"):rep(64) } end -- garbage for the collector
        sluice.log("info", table.concat(seen, ","))
        return "out"
      end }]]
    local r = s.rule(src)
    for i = 1, 40 do
      local w = ("w%02d"):format(i)
      local res = r:run({ topic = "t", payload_raw = hex("81 a173 a3") .. w })
      assert.equal(w, res.logs[1].msg:sub(-3))
    end
    local r2 = s.rule(src) -- another state: its own cache
    r = nil
    collectgarbage("collect")
    assert.equal("w01", r2:run({ topic = "t", payload_raw = hex("81 a173 a3") .. "w01" }).logs[1].msg)
  end)
end)

describe("ev.payload's write log splice against the general path and the decoder", function()
  teardown(s.cleanup)

  local lib = [[
    local function lcg(seed)
      local st = seed
      return function(n) st = (st * 1103515245 + 12345) % 2147483648 return st % n + 1 end
    end
    local function show(v)
      local t = type(v)
      if t == "number" then
        if v ~= v then return "nan" end
        if v == 0 then return "0" end
        return ("%.17g"):format(v)
      end
      if t == "string" then
        return "s" .. #v .. ":" .. (#v > 40 and v:sub(1, 8) .. ".." .. v:sub(-8) or v)
      end
      if t == "table" then
        local ks = {}
        for k, x in pairs(v) do ks[#ks + 1] = show(k) .. "=" .. show(x) end
        table.sort(ks)
        return "{" .. table.concat(ks, ",") .. "}"
      end
      return tostring(v)
    end
  ]]

  -- written keys: every length 0..40 in two fillings (the same length as
  -- a payload key, other bytes), numbers, booleans; values of every type
  -- and the string sizes where the encoding changes
  local writer = s.rule(lib .. [[
    local KEYS = { 0, 1, -1, 1.5, 2, -0.0, 300, true, false }
    for n = 0, 40 do KEYS[#KEYS + 1] = ("k"):rep(n) KEYS[#KEYS + 1] = ("j"):rep(n) end
    local VALS = { 0, -0.0, -1, 1.5, 2 ^ 40, -2 ^ 40, 0 / 0, true, false, "" }
    for _, n in ipairs({ 1, 31, 32, 255, 256, 65535, 65536 }) do
      VALS[#VALS + 1] = ("v"):rep(n - 1) .. "e"
    end
    return { on_event = function(ev)
      local rnd = lcg(tonumber(ev.headers.seed))
      local p = ev.payload
      if ev.topic == "general" then p["\0"] = {} p["\0"] = nil end
      local ref = sluice.copy(p)
      local nw = rnd(ev.headers.few and 8 or 12)
      for _ = 1, nw do
        local k, v = KEYS[rnd(#KEYS)], VALS[rnd(#VALS + 1)]
        p[k] = v
        ref[k] = v
        if rnd(4) == 1 then
          local got = p[k]
          if show(got) ~= show(v) then error("read back " .. show(k) .. ": " .. show(got) .. " ~= " .. show(v)) end
        end
      end
      sluice.log("info", show(ref))
      return "out"
    end }]], { cpu_budget_ms = 5000 })
  local reader = s.rule(lib .. [[
    return { on_event = function(ev)
      sluice.log("info", show(sluice.copy(ev.payload)))
      return "out"
    end }]], { cpu_budget_ms = 5000 })

  local function lcg(seed)
    local st = seed
    return function(n) st = (st * 1103515245 + 12345) % 2147483648 return st % n + 1 end
  end

  -- payload keys with their Lua identity (keys Lua tells apart, so the
  -- decoded copy and the proxy agree): strings of every length 0..40 as
  -- fixstr, str8 and bin8, in the fillings written and one never written
  local PKEYS = {
    { "00", "n0" }, { "01", "n1" }, { "ff", "n-1" }, { "cb3ff8000000000000", "n1.5" },
    { "cb4000000000000000", "n2" }, { "cd012c", "n300" }, { "c3", "true" }, { "c2", "false" },
    { "cb8000000000000000", "n0" }, { "ca40000000", "n2" },
  }
  for n = 0, 40 do
    for _, c in ipairs({ "k", "j", "q" }) do
      local bytes = tohex(c:rep(n))
      if n < 32 then PKEYS[#PKEYS + 1] = { ("%02x"):format(0xa0 + n) .. bytes, c .. n } end
      PKEYS[#PKEYS + 1] = { ("d9%02x"):format(n) .. bytes, c .. n }
      PKEYS[#PKEYS + 1] = { ("c4%02x"):format(n) .. bytes, c .. n }
    end
  end
  local PVALS = { "c0", "00", "7f", "ff", "cc80", "cdffff", "ceffffffff", "d0df", "cb3ff8000000000000",
    "ca3fc00000", "a0", "a3616263", "c403616263", "d920" .. ("61"):rep(32), "c3", "c2",
    "92 01 a178", "81 a161 02", "80", "90", "cb7ff8000000000000" }

  local function payload(rnd, n)
    local parts, used, tries = {}, {}, 0
    while #parts < n do
      tries = tries + 1 -- the generator's low bits cycle: then go in order
      local k = PKEYS[tries < 200 and rnd(#PKEYS) or tries % #PKEYS + 1]
      if not used[k[2]] then
        used[k[2]] = true
        parts[#parts + 1] = k[1] .. PVALS[rnd(#PVALS)]
      end
    end
    local h = rnd(3)
    local head = (n < 16 and h == 1) and ("%02x"):format(0x80 + n)
      or (n < 65536 and h == 2) and ("de%04x"):format(n) or ("df%08x"):format(n)
    return hex(head .. table.concat(parts))
  end

  local pairs_of = s.map_pairs -- a map's header and its pairs, sorted

  local function check(raw, seed, few)
    local got = {}
    for _, path in ipairs({ "log", "general" }) do
      local res = writer:run({ topic = path, headers = { seed = tostring(seed), few = few }, payload_raw = raw })
      assert.equal("route", res.verdict, "seed " .. seed .. " " .. path .. ": " .. tostring(res.error))
      local back = reader:run({ topic = "t", payload_raw = res.event.payload_raw })
      assert.equal("route", back.verdict, "seed " .. seed .. " " .. path .. ": " .. tostring(back.error))
      -- the bytes out decode to what the rule wrote
      assert.equal(res.logs[1].msg, back.logs[1].msg, "seed " .. seed .. " " .. path .. ": decoded")
      got[path] = res.event.payload_raw
    end
    assert.equal(pairs_of(got.general), pairs_of(got.log), "seed " .. seed .. ": bytes")
  end

  it("splices keys of every length and type, any header, as the general path and the decoder do", function()
    for seed = 1, 300 do
      local rnd = lcg(seed * 7919)
      check(payload(rnd, rnd(20) - 1), seed, seed % 2 == 0 and "1" or nil)
    end
  end)

  it("splices a map of more than 65535 keys (map32) and across the fixmap/map16 border", function()
    for n = 14, 17 do
      for seed = 1, 20 do check(payload(lcg(seed + n * 100), n), seed + n * 100, "1") end
    end
    -- 65535 keys and one added: the header grows to a map32 (the general
    -- path: the log splices payloads of up to 64 KiB)
    local parts = {}
    for i = 0, 65534 do parts[#parts + 1] = ("cd%04x01"):format(i) end
    local body = hex(table.concat(parts))
    local add = s.on_event('ev.payload.new = 1 return "out"')
    local res = add:run({ topic = "t", payload_raw = hex("deffff") .. body })
    assert.equal("route", res.verdict, res.error)
    local out = res.event.payload_raw
    assert.equal("df00010000", tohex(out:sub(1, 5)))
    assert.equal(body, out:sub(6, -6))
    assert.equal(hex("a36e657701"), out:sub(-5))
    assert.equal(5 + 65535 * 4 + 5, #out)
  end)

  it("splices payloads at the log's size limit and refuses a change past max_event_bytes", function()
    for _, size in ipairs({ 65530, 65536, 65540 }) do
      -- one key, a string filling the payload to size bytes
      local n = size - 1 - 2 - 5
      local raw = hex("81 a161 db") .. string.char(0, 0, math.floor(n / 256) % 256, n % 256) .. ("x"):rep(n)
      assert.equal(size, #raw)
      for seed = 1, 10 do check(raw, seed * 31 + size, "1") end
    end
    local big = s.rule([[
      return { on_event = function(ev)
        local p = ev.payload
        if ev.topic == "general" then p["\0"] = {} p["\0"] = nil end
        p.big = ("b"):rep(1048576)
        return "out"
      end }]])
    for _, topic in ipairs({ "log", "general" }) do
      local res = big:run({ topic = topic, payload_raw = hex("81 a161 01") })
      assert.equal("error", res.verdict, topic)
      s.has(res.error, "larger than")
    end
  end)

  it("writes into a root that is an array, and a scalar or nil payload stays a plain value", function()
    local r = s.on_event([[
      local p = ev.payload
      if type(p) == "table" then p[1] = "one" p[#p + 1] = 2 else ev.payload = { was = p } end
      return "out"]])
    local res = r:run({ topic = "t", payload_raw = hex("92 c0 a178") })
    assert.equal("93a36f6e65a17802", tohex(res.event.payload_raw))
    for _, raw in ipairs({ "07", "a3616263", "c0" }) do
      res = r:run({ topic = "t", payload_raw = hex(raw) })
      assert.equal("route", res.verdict, raw .. ": " .. tostring(res.error))
      local back = reader:run({ topic = "t", payload_raw = res.event.payload_raw })
      assert.equal("route", back.verdict, tostring(back.error))
    end
  end)
end)

describe("keys added to a big map (more than 16 entries) on the general path", function()
  teardown(s.cleanup)

  -- the walk over the added keys looks each up in the bytes; the third
  -- lookup builds the map's index, stored in the same env table the walk
  -- is traversing: a new field mid-traversal let lua_next rehash and
  -- yield a key twice (a duplicate pair out) or skip one
  it("writes and iterates each added key once, however many", function()
    local r = s.rule([[
      return { on_event = function(ev)
        local p = ev.payload
        local n = tonumber(ev.headers.n)
        p.t = {} -- the general path: the writes go to the env table
        p.t = nil
        for i = 1, n do p["add" .. i] = i end
        if ev.topic == "pairs" then
          local seen, count = {}, 0
          for k in pairs(p) do
            if seen[k] then error("pairs yielded " .. k .. " twice") end
            seen[k] = true
            count = count + 1
          end
          return tostring(count)
        end
        return "out"
      end }]])
    for keys = 17, 20 do
      local parts = {}
      for i = 1, keys do parts[i] = ("a4%s%02x"):format(tohex(("k%03d"):format(i)), i) end
      local raw = hex(("de%04x"):format(keys) .. table.concat(parts))
      for n = 1, 40 do
        for round = 1, 3 do
          local res = r:run({ topic = "out", headers = { n = tostring(n) }, payload_raw = raw })
          assert.equal("route", res.verdict, res.error)
          local out = res.event.payload_raw
          assert.equal(("de%04x"):format(keys + n), tohex(out:sub(1, 3)), keys .. " keys, " .. n .. " added")
          local seen = {}
          for k in out:gmatch("add%d+") do
            assert.is_nil(seen[k], k .. " twice, " .. keys .. " keys, " .. n .. " added")
            seen[k] = true
          end
          res = r:run({ topic = "pairs", headers = { n = tostring(n) }, payload_raw = raw })
          assert.same({ tostring(keys + n) }, res.routes, tostring(res.error))
        end
      end
    end
  end)
end)

describe("the write log's allocation", function()
  teardown(s.cleanup)

  -- the log's splice allocates its upper bound and fills it outside the
  -- rule's memory_mb and CPU budget: a 40 MB string written under 8 keys
  -- bounded 320 MB, allocated and copied per event before the event was
  -- found past max_event_bytes. Measured in a child process (its peak RSS).
  it("does not allocate or copy past max_event_bytes for a big string written under many keys", function()
    local rule = s.write("big8.lua", [[
      return { on_event = function(ev)
        local p, big = ev.payload, ("x"):rep(40 * 1024 * 1024)
        for i = 1, 8 do p["k" .. i] = big end
        return "out"
      end }]])
    local child = s.write("big8_child.lua", ([[
      package.path = %q
      package.cpath = %q
      local t = require("sluice.testing")
      local r = t.load(%q, { memory_mb = 128, cpu_budget_ms = 5000 })
      local res = r:run({ topic = "t", payload_raw = "\129\161a\1" })
      local f = io.open("/proc/self/status")
      local hwm = f:read("*a"):match("VmHWM:%%s*(%%d+)")
      f:close()
      io.write(res.verdict, " ", tostring(res.error):sub(1, 200), "\n", hwm, "\n")
    ]]):format(package.path, package.cpath, rule))
    local pipe = io.popen("luajit " .. child .. " 2>&1")
    local out = pipe:read("*a")
    pipe:close()
    local verdict, hwm = out:match("^(%a+) .-\n(%d+)\n$")
    assert.equal("error", verdict, out)
    s.has(out, "larger than")
    -- the Lua string and the interpreter: well under the 320 MB bound
    assert.is_true(tonumber(hwm) < 200 * 1024, "peak RSS " .. hwm .. " kB")
  end)
end)

-- ev.payload's root is kept in the event's fields table (ev.c: ev_begin
-- makes it before the call when the last event's rule read it), so reads
-- of it pay no C call: a later event's shape, an assigned ev.payload, a
-- set ev.topic, topic slots reused and kept events must all still see
-- exactly what ev_index would give.
describe("ev.payload read from the event's fields table", function()
  teardown(s.cleanup)

  local SHAPES = {
    { "81 a161 01", "table 1" },
    { "05", "number 5" },
    { "c0", "nil nil" },
    { "92 07 08", "table 7" },
    { "a3 616263", "string abc" },
    { "81 a161 a178", "table x" },
    { "c3", "boolean true" },
    { "80", "table nil" },
    { "81 a161 02", "table 2" },
  }

  local function shapes(r, topic_of)
    -- twice over: every shape after every other one, with the slot warm
    for round = 1, 2 do
      for i, c in ipairs(SHAPES) do
        local res = r:run({ topic = topic_of(i, round), payload_raw = hex(c[1]) })
        assert.equal("route", res.verdict, res.error)
        assert.same({ c[2] }, res.routes, c[1])
        assert.is_false(res.changed, c[1])
      end
    end
  end

  local describe_payload = [[
    local p = ev.payload
    local v = p
    if type(p) == "table" then v = p.a if v == nil then v = p[1] end end
    if type(p) == "table" and p.a == nil and ev.payload ~= p then return "not the same root" end
    return type(p) .. " " .. tostring(v)
  ]]

  it("follows the payload's shape from event to event, ev.topic unread", function()
    shapes(s.on_event(describe_payload), function() return "t" end)
  end)

  it("follows the payload's shape from event to event, ev.topic read first", function()
    shapes(s.on_event("local _ = ev.topic " .. describe_payload), function() return "t" end)
  end)

  it("follows it over more topics than the cache has slots", function()
    shapes(s.on_event([[
      local n = tonumber(ev.topic:match("%d+"))
      if n % 2 == 0 then local _ = ev.topic end
    ]] .. describe_payload), function(i, round) return "topic." .. (i * 7 + round) end)
  end)

  it("gives the assigned value after ev.payload is set, and the next event its own root", function()
    local r = s.on_event([[
      local before = ev.payload.a
      if before == 1 then ev.payload = { a = "set" } end
      return tostring(before) .. " " .. tostring(ev.payload.a) .. " " .. tostring(ev:field("a"))
    ]])
    for _ = 1, 3 do
      local res = r:run({ topic = "t", payload_raw = hex("81 a161 01") })
      assert.same({ "1 set set" }, res.routes)
      assert.is_true(res.changed)
      res = r:run({ topic = "t", payload_raw = hex("81 a161 02") })
      assert.same({ "2 2 2" }, res.routes)
      assert.is_false(res.changed)
    end
  end)

  it("keeps a set ev.topic when a payload read changes the event's fields table", function()
    local r = s.on_event([[
      local a = ev.topic
      ev.topic = "new." .. a
      local p = ev.payload.a
      return ev.topic .. " " .. tostring(p) .. " " .. tostring(ev.payload.a)
    ]])
    for i = 1, 3 do
      local res = r:run({ topic = "t", payload_raw = hex("81 a161 0" .. i) })
      assert.same({ "new.t " .. i .. " " .. i }, res.routes)
    end
  end)

  it("refuses a root of an earlier call and a kept event outside on_event", function()
    local r = s.rule([[
      local kept, kept_ev
      sluice.every(1000, function()
        local ok, e = pcall(function() return kept_ev.payload end)
        sluice.log("info", "timer " .. tostring(ok) .. " " .. tostring(e))
      end)
      return { on_event = function(ev)
        local mine = ev.payload.a
        local old = kept and select(2, pcall(function() return kept.a end)) or "none"
        kept, kept_ev = ev.payload, ev
        return tostring(mine) .. " " .. tostring(old)
      end }]])
    assert.same({ "1 none" }, r:run({ topic = "t", payload_raw = hex("81 a161 01") }).routes)
    for i = 2, 4 do
      local res = r:run({ topic = "t", payload_raw = hex("81 a161 0" .. i) })
      assert.equal(1, #res.routes)
      assert.matches("^" .. i .. " ", res.routes[1])
      s.has(res.routes[1], STALE)
    end
    local out = r:advance(1000)
    assert.equal(1, #out.logs)
    s.has(out.logs[1].msg, "timer false")
    s.has(out.logs[1].msg, "only valid during on_event")
  end)

  it("writes through the root made before the call, and a read-only event stays as it came", function()
    local r = s.on_event([[
      if ev.payload.a > 1 then ev.payload.b = "hi" end
      return "out"
    ]])
    for _ = 1, 3 do
      local res = r:run({ topic = "t", payload_raw = hex("81 a161 01") })
      assert.is_false(res.changed)
      assert.equal("81a16101", tohex(res.event.payload_raw))
      res = r:run({ topic = "t", payload_raw = hex("81 a161 02") })
      assert.is_true(res.changed)
      assert.equal("82a16102a162a26869", tohex(res.event.payload_raw))
    end
  end)
end)

-- find_lk scans fixstr keys over flat values without a decode and hands
-- any other pair to the general loop from where it stopped: keys past
-- containers, str8/bin keys and nested values are still found, first one
-- first, and the event stays as it came.
describe("a short string key found past pairs the quick scan stops at", function()
  teardown(s.cleanup)

  local r = s.on_event([[
    local p = ev.payload
    local function v(x) if type(x) == "table" then return "tbl" end return tostring(x) end
    return v(p.a) .. " " .. v(p.b) .. " " .. v(p.x) .. " " .. v(p.zz)
  ]])
  local CASES = {
    { "83 a178 91 01 a162 02 a161 03", "3 2 tbl nil" },
    { "83 d90178 01 c40162 02 a161 03", "3 2 1 nil" },
    { "84 a162 81a16101 a178 cb3ff8000000000000 a161 d90568656c6c6f a161 04", "hello tbl 1.5 nil" },
    { "83 a162 c0 a161 c3 a178 a0", "true nil  nil" },
    { "82 c40161 01 a161 02", "1 nil nil nil" },
  }
  for _, c in ipairs(CASES) do
    it(c[1], function()
      local res = r:run({ topic = "t", payload_raw = hex(c[1]) })
      assert.equal("route", res.verdict, res.error)
      assert.same({ c[2] }, res.routes)
      assert.is_false(res.changed)
    end)
  end
end)
