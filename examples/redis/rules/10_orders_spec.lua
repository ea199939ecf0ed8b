local testing = require("sluice.testing")

describe("examples/redis: orders", function()
  local path = "10_orders.lua"

  it("drops test orders", function()
    local r = testing.load(path):run({ topic = "orders",
                                       payload = { order = 1, test = true } })
    assert.are.equal("test order", r.dropped)
  end)

  it("marks big orders and leaves routing to the config", function()
    local r = testing.load(path):run({ topic = "orders",
                                       payload = { order = 2, amount = 1500 } })
    assert.is_nil(r.dropped)
    assert.are.equal(0, #r.routes)
    assert.are.equal("high", r.event.headers.priority)
  end)

  it("leaves small orders as they are", function()
    local r = testing.load(path):run({ topic = "orders",
                                       payload = { order = 3, amount = 5 } })
    assert.is_nil(r.event.headers.priority)
  end)
end)
