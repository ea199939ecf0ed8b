-- headers_spec.lua - ev.headers as a rule sees and changes it. Headers are
-- a map of str to str; the engine decodes and compares those with a fast
-- path (luacodec.c, sl_luacodec_push_strmap and _same_strmap) and anything
-- else the general way. Every case here must give what the general path
-- gives: the same table, an event changed exactly when the map changed,
-- and the new map written out.

local s = require("support")

local TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

-- A rule running `body` (with `h` = ev.headers) on each event.
local function rule(body)
  return s.rule(([[return { on_event = function(ev)
    local h = ev.headers
    %s
    return "out"
  end }]]):format(body))
end

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

local function same_map(a, b)
  for k, v in pairs(a) do if b[k] ~= v then return false end end
  for k, v in pairs(b) do if a[k] ~= v then return false end end
  return true
end

local maps = {
  { traceparent = TP },
  { traceparent = TP, tenant = "acme", ["x-long"] = ("v"):rep(300) },
  { [""] = "", ["\0"] = "\0\255" },
  { a = "1", b = "2", c = "3", d = "4", e = "5", f = "6", g = "7", h = "8", i = "9" },
}
do -- past the 16 pairs compared by their bytes: the path through Lua
  local many = {}
  for i = 1, 40 do many["h" .. i] = ("v"):rep(i) end
  maps[#maps + 1] = many
end

-- body, and what it does to a plain copy of the map (nil: nothing)
local edits = {
  { "local x = h.traceparent; local n = 0; for _ in pairs(h) do n = n + 1 end" },
  { "for k, v in pairs(h) do h[k] = v end" },
  { "for k, v in pairs(h) do h[k] = v .. '' end" },
  { "setmetatable(h, nil)" },
  { "setmetatable(h, { __index = function() return 'z' end }); local _ = h.nope" },
  { "h.added = 'yes'", function(m) m.added = "yes" end },
  { "h.added = 'yes'; h.added = nil" },
  { "local k = next(h); h[k] = nil", "first" },
  { "local k = next(h); h[k] = h[k] .. '!'", "first!" },
  { "for k in pairs(h) do h[k] = nil end", function(m) for k in pairs(m) do m[k] = nil end end },
  { "setmetatable(h, nil); h.z = 'z'", function(m) m.z = "z" end },
  { "ev.headers = { only = 'this' }", function(m) for k in pairs(m) do m[k] = nil end m.only = "this" end },
}

describe("ev.headers", function()
  teardown(s.cleanup)

  it("changes the event exactly when the map changed, whatever the rule did to the table", function()
    for ei, e in ipairs(edits) do
      local r = rule(e[1])
      for mi, m in ipairs(maps) do
        local want = copy(m)
        if type(e[2]) == "function" then e[2](want) end
        local res = r:run({ topic = "t", headers = m })
        local what = ("edit %d (%s) on map %d"):format(ei, e[1], mi)
        assert.equal("route", res.verdict, what .. ": " .. tostring(res.error))
        if type(e[2]) == "string" then
          -- the rule changed whichever pair its next() gave first: one pair
          local got = res.event.headers or {}
          local diff = 0
          for k, v in pairs(m) do
            if got[k] ~= v then
              diff = diff + 1
              if e[2] == "first!" then assert.equal(v .. "!", got[k], what) else assert.is_nil(got[k], what) end
            end
          end
          assert.equal(1, diff, what)
          assert.is_true(res.changed, what)
        else
          local got = res.event.headers or {}
          assert.is_true(same_map(want, got), what)
          assert.equal(not same_map(want, m), res.changed, what)
        end
      end
    end
  end)

  it("refuses a header that is not a string, naming it", function()
    local r = rule("h.tenant = 5")
    local res = r:run({ topic = "t", headers = { tenant = "acme" } })
    assert.equal("error", res.verdict)
    s.has(res.error, "header 'tenant' must be a string (got number)")
    r = rule("h[1] = 'x'")
    res = r:run({ topic = "t", headers = { tenant = "acme" } })
    assert.equal("error", res.verdict)
    s.has(res.error, "header names must be strings (got number)")
  end)

  it("reads headers that are not all str -> str the general way, and keeps them", function()
    -- a binary value: no input makes one, the test harness can
    local r = rule("assert(h.b == 'raw\\0', 'value') assert(sluice.kind(h, 'b') == 'binary', 'kind')")
    local res = r:run({ topic = "t", headers = { b = s.testing.bin("raw\0") } })
    assert.equal("route", res.verdict, tostring(res.error))
    assert.is_false(res.changed)
    r = rule("h.b = 'other'")
    res = r:run({ topic = "t", headers = { b = s.testing.bin("raw\0") } })
    assert.is_true(res.changed)
    assert.equal("other", res.event.headers.b)
  end)
end)
