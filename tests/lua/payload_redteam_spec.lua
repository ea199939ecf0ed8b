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
