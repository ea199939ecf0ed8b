-- rule_result_spec.lua - on_event's result becomes the decision, also on
-- the fast path for the common case: the very string the last call
-- returned is taken without reading it again (engine/lua/rule.c,
-- take_result; the string is kept alive in a stack slot, so no other value
-- can have its address). These prove the fast path never answers for a
-- result that is not that string.

local s = require("support")

describe("on_event's result", function()
  teardown(s.cleanup)

  it("routes, passes and drops by what each call returned, in any order", function()
    local r = s.on_event([[
      local t = ev.topic
      if t == "const" then return "out" end
      if t == "built" then return ("o"):rep(1) .. "ut" end
      if t == "other" then return "other" end
      if t == "list" then return { "out", "other" } end
      if t == "nil" then return nil end
      if t == "false" then return false end
      if t == "drop" then return sluice.drop("why") end
      if t == "empty" then return "" end
      if t == "nul" then return "out\0x" end
      return 1]])
    local want = {
      const = { routes = { "out" } },
      built = { routes = { "out" } },
      other = { routes = { "other" } },
      list = { routes = { "out", "other" } },
    }
    local order = { "const", "const", "nil", "const", "built", "built", "const",
      "other", "const", "list", "const", "drop", "const", "false", "const",
      "empty", "const", "nul", "const", "number", "const", "nil" }
    for _, t in ipairs(order) do
      local res = r:run({ topic = t })
      if want[t] then
        assert.equal("route", res.verdict, t)
        assert.same(want[t].routes, res.routes, t)
      elseif t == "nil" then
        assert.equal("pass", res.verdict, t)
        assert.same({}, res.routes, t)
        assert.is_nil(res.error, t)
        assert.is_nil(res.dropped, t)
      elseif t == "drop" then
        assert.equal("why", res.dropped, t)
      else
        assert.equal("runtime", res.error_kind, t)
      end
    end
  end)

  it("is taken afresh by a rule that returns its input's bytes", function()
    local r = s.on_event("return ev.topic")
    for _, t in ipairs({ "a", "a", "b", "a", "b", "b" }) do
      assert.same({ t }, r:run({ topic = t }).routes)
    end
  end)
end)
