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

describe("rule:run's result (README, Testing rules)", function()
  teardown(s.cleanup)

  it("has the fields the README lists for every verdict", function()
    local r = s.on_event([[
      local t = ev.topic
      sluice.log("info", "seen", { t = t })
      if t == "route" then ev.headers.x = "1" sluice.emit("o", { topic = "e" }) return { "a", "b" } end
      if t == "pass" then return nil end
      if t == "drop" then return sluice.drop("why") end
      if t == "cpu" then while true do end end
      if t == "memory" then local x = ("y"):rep(2^30) end
      error("boom")]], { cpu_budget_ms = 20, memory_mb = 8 })
    local want = {
      route = { verdict = "route", routes = { "a", "b" } },
      pass = { verdict = "pass", routes = {} },
      drop = { verdict = "drop", routes = {}, dropped = "why" },
      runtime = { verdict = "error", routes = {}, error_kind = "runtime" },
      cpu = { verdict = "error", routes = {}, error_kind = "cpu" },
      memory = { verdict = "error", routes = {}, error_kind = "memory" },
    }
    for _, t in ipairs({ "route", "pass", "drop", "runtime", "cpu", "memory" }) do
      local res = r:run({ topic = t })
      local w = want[t]
      assert.equal(w.verdict, res.verdict, t)
      assert.same(w.routes, res.routes, t)
      assert.equal(w.dropped, res.dropped, t)
      assert.equal(w.error_kind, res.error_kind, t)
      assert.equal(w.verdict == "error", type(res.error) == "string", t)
      assert.equal("table", type(res.emitted), t)
      assert.equal("table", type(res.logs), t)
      assert.equal("seen", res.logs[1].msg, t)
      assert.equal("table", type(res.event), t)
      assert.equal("boolean", type(res.changed), t)
      assert.equal("number", type(res.elapsed_ms), t)
      assert.equal("number", type(res.cpu_ms), t)
      if t == "route" then
        assert.is_true(res.changed)
        assert.equal("1", res.event.headers.x)
        assert.equal("o", res.emitted[1].output)
      end
    end
  end)
end)
