-- Runs examples/kafka/rules/10_orders.lua in the engine's own sandbox.
local testing = require("sluice.testing")

describe("examples/kafka/rules/10_orders.lua", function()
  local rule = testing.load("10_orders.lua")

  it("routes an ordinary order untouched", function()
    local r = rule:run({ topic = "orders", payload = { amount = 20 } })
    assert.are.same({ "routed" }, r.routes)
    assert.is_nil(r.event.headers.priority)
  end)

  it("flags a large order", function()
    local r = rule:run({ topic = "orders.eu", payload = { amount = 5000 } })
    assert.are.same({ "routed" }, r.routes)
    assert.are.equal("high", r.event.headers.priority)
  end)

  it("drops an order without an amount, saying why", function()
    local r = rule:run({ topic = "orders", payload = { sku = "A1" } })
    assert.is_not_nil(r.dropped)
  end)
end)
