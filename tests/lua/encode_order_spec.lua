-- encode_order_spec.lua - a Lua table encodes to the same bytes in every
-- rule state: the engine's, a rebuilt one, the dry run's and
-- sluice.testing's. LuaJIT (Debian's build) seeds its string hashes per
-- state, so walking a table with lua_next gave each state its own key
-- order: found by tests/integration/test_rules_differential.py (the same
-- rule and event, different payload bytes in busted and the engine).
local S = require("support")
local testing = S.testing

local BODY = [[
ev.payload.n = { list = 1, b = 2, a = 3, f = 4, s = 5, big = 6, x = 7,
                 [2] = "two", [1.5] = "x", [true] = "t", [false] = "f" }
ev.payload.c = sluice.copy(ev.payload.m)
ev.headers.j = sluice.json.encode({ zeta = 1, alpha = 2, mid = 3 })
sluice.emit("out", { topic = "e", payload = { q = 1, p = 2, o = 3 } })
return "out"
]]

describe("a table's encoding", function()
  teardown(S.cleanup)

  local ev = { topic = "t", payload = { m = testing.map({ s = 1, list = 2, a = 3, f = 4, b = 5 }) } }

  it("is the same bytes in twenty rule states", function()
    local first
    for _ = 1, 20 do
      local r = S.on_event(BODY):run(ev)
      assert.are.equal("route", r.verdict, r.error)
      local got = r.event.payload_raw .. "|" .. r.event.headers.j .. "|"
        .. r.emitted[1].event.payload_raw
      first = first or got
      assert.are.equal(first, got)
    end
  end)

  it("sorts more keys than fit on the stack (over 32) the same way", function()
    local r = S.on_event([[
      local t = {}
      for i = 40, 1, -1 do t["k" .. string.char(64 + i)] = i end
      ev.payload = t
      return "out"
    ]]):run(ev)
    assert.are.equal("route", r.verdict, r.error)
    local keys = {}
    for k in r.event.payload_raw:gmatch("\162(k[%z\1-\255])") do keys[#keys + 1] = k end
    assert.are.equal(40, #keys)
    for i = 2, #keys do assert.is_true(keys[i - 1] < keys[i], keys[i]) end
  end)

  it("orders keys: booleans, numbers ascending, strings bytewise", function()
    local r = S.on_event(BODY):run(ev)
    assert.are.equal('{"alpha":2,"mid":3,"zeta":1}', r.event.headers.j)
    local n = testing.encode(testing.map({})) -- a map header to skip past
    assert.are.equal(1, #n)
    local raw = r.emitted[1].event.payload_raw
    assert.are.equal(S.hex("83 a16f 03 a170 02 a171 01"), raw)
    local c = r.event.payload_raw:find(S.hex("a163 85"), 1, true)
    assert.truthy(c, "the copy of m")
    assert.are.equal(S.hex("a161 03 a162 05 a166 04 a1 6c 02"):sub(1, 4),
      r.event.payload_raw:sub(c + 3, c + 6))
  end)
end)
