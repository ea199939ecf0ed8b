-- Runs rules/10_orders.lua in the engine's own sandbox (sluice.testing).
local testing = require("sluice.testing")

describe("rules/10_orders.lua", function()
  local rule = testing.load("10_orders.lua")

  it("archives an ordinary order untouched", function()
    local r = rule:run({ topic = "orders.eu", payload = { amount = 20, sku = "A1" } })
    assert.are.same({ "archive" }, r.routes)
    assert.is_nil(r.dropped)
    assert.is_nil(r.event.headers.priority)
    assert.are.equal(20, r.event.payload.amount)
  end)

  it("flags a large order and shows it on the console too", function()
    local r = rule:run({ topic = "orders.us", payload = { amount = 5000 } })
    assert.are.same({ "archive", "console" }, r.routes)
    assert.are.equal("high", r.event.headers.priority)
  end)

  it("drops an order without an amount, saying why", function()
    local r = rule:run({ topic = "orders.eu", payload = { sku = "A1" } })
    assert.are.equal("order without a numeric amount", r.dropped)
    assert.are.equal(0, #r.routes)
  end)

  it("drops an order whose payload is not a map", function()
    local r = rule:run({ topic = "orders.eu", payload = "oops" })
    assert.are.equal("order without a numeric amount", r.dropped)
  end)
end)
