local testing = require("sluice.testing")

describe("examples/nats: order priority", function()
  local rule = testing.load("10_priority.lua")

  it("tags large orders high and the rest normal", function()
    local big = rule:run({ topic = "orders.eu", payload = { amount = 250 } })
    assert.are.equal("high", big.event.headers.priority)
    local small = rule:run({ topic = "orders.eu", payload = { amount = 5 } })
    assert.are.equal("normal", small.event.headers.priority)
  end)

  it("drops an order without an amount", function()
    assert.are.equal("no amount", rule:run({ topic = "orders.eu", payload = {} }).dropped)
  end)
end)
