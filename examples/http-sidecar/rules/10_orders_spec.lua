local testing = require("sluice.testing")

describe("examples/http-sidecar: orders", function()
  local rule = testing.load("10_orders.lua")

  it("routes an order to its file, keyed by customer", function()
    local r = rule:run({ topic = "orders.created", payload = { customer = "c-7", amount = 12 } })
    assert.are.same({ "orders" }, r.routes)
    assert.are.equal("c-7", r.event.key)
  end)

  it("drops an order without a customer", function()
    local r = rule:run({ topic = "orders.created", payload = { amount = 12 } })
    assert.are.equal("order without customer", r.dropped)
  end)

  it("fails (dead letter) on an order without a payload", function()
    local r = rule:run({ topic = "orders.created" })
    assert.are.equal("runtime", r.error_kind)
    assert.truthy(r.error:find("10_orders.lua:6: attempt to index field 'payload'", 1, true))
  end)
end)
