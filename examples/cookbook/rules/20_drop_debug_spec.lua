local testing = require("sluice.testing")

describe("cookbook: drop by level", function()
  local rule = testing.load("20_drop_debug.lua")

  it("drops debug and trace, whatever their case", function()
    assert.equal("level debug", rule:run({ topic = "logs.app", payload = { level = "debug" } }).dropped)
    assert.equal("level trace", rule:run({ topic = "logs.app", payload = { level = "TRACE" } }).dropped)
  end)

  it("passes info, warnings, errors and logs without a level", function()
    for _, p in ipairs({ { level = "info" }, { level = "error" }, {}, { level = 3 } }) do
      local r = rule:run({ topic = "logs.app", payload = p })
      assert.equal("pass", r.verdict)
      assert.same({}, r.routes)
    end
  end)
end)
