local testing = require("sluice.testing")

describe("cookbook: dedup by id", function()
  local function hook(rule, id)
    return rule:run({ topic = "webhooks.stripe", payload = { delivery_id = id } })
  end

  it("passes the first delivery and drops repeats within the window", function()
    local rule = testing.load("70_dedup.lua")
    assert.equal("pass", hook(rule, "d-1").verdict)
    assert.equal("duplicate", hook(rule, "d-1").dropped)
    assert.equal("pass", hook(rule, "d-2").verdict)
  end)

  it("lets the id through again once the window is over", function()
    local rule = testing.load("70_dedup.lua")
    hook(rule, "d-1")
    rule:advance(10 * 60 * 1000 + 1)
    assert.equal("pass", hook(rule, "d-1").verdict)
  end)

  it("falls back to the event id", function()
    local rule = testing.load("70_dedup.lua")
    assert.equal("pass", rule:run({ topic = "webhooks.x", id = "e1" }).verdict)
    assert.equal("duplicate", rule:run({ topic = "webhooks.x", id = "e1" }).dropped)
  end)
end)
