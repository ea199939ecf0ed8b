-- sandbox_timers_spec.lua - sluice.every under sluice.testing's clock
-- (issue 9, finding 7 and 16): timers that fail keep their schedule, their
-- errors are logged at a limited rate, and a state's timers take turns.

local s = require("support")

describe("sluice.every", function()
  teardown(s.cleanup)

  it("a failing timer keeps its schedule and the rule keeps working", function()
    local r = s.rule([[
      local n = 0
      sluice.every(1000, function() n = n + 1 error("tick " .. n) end)
      return { on_event = function() return tostring(n) end }
    ]])
    local out = r:advance(5000)
    assert.equal(5, #out.logs)
    s.has(out.logs[5].msg, "tick 5")
    assert.same({ "5" }, r:run({ topic = "t" }).routes)
  end)

  it("logs timer errors at a limited rate", function()
    local r = s.rule([[
      sluice.every(1, function() error("again") end)
      return { on_event = function() end }
    ]])
    local out = r:advance(2000) -- 2000 failures
    assert.is_true(#out.logs >= 1 and #out.logs <= 20, #out.logs)
    assert.equal(out.logs[1].level, "error")
  end)

  it("every timer of a state runs as often as its interval says", function()
    local r = s.rule([[
      local runs = { 0, 0, 0, 0, 0 }
      for i = 1, 5 do sluice.every(100 * i, function() runs[i] = runs[i] + 1 end) end
      return { on_event = function() return table.concat(runs, ",") end }
    ]])
    r:advance(1000)
    assert.same({ "10,5,3,2,2" }, r:run({ topic = "t" }).routes)
  end)
end)
