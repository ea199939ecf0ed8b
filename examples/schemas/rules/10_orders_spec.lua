local testing = require("sluice.testing")

describe("the order contract", function()
  it("takes an order of version 1, and of version 2 with a note", function()
    local v1 = { sku = "ABC-1", qty = 2, customer = "c-7" }
    assert.is_true(testing.validate("../schemas/order.v1.json", v1))
    assert.is_true(testing.validate("../schemas/order.v2.json", v1))
    local v2 = { sku = "ABC-1", qty = 2, customer = "c-7", note = "gift" }
    assert.is_true(testing.validate("../schemas/order.v2.json", v2))
  end)

  it("names the path of what does not fit", function()
    local ok, path = testing.validate("../schemas/order.v2.json",
      { sku = "ABC-1", qty = "two", customer = "c-7" })
    assert.is_false(ok)
    assert.are.equal("/qty", path)
    ok, path = testing.validate("../schemas/order.v2.json",
      { sku = "abc", qty = 2, customer = "c-7" })
    assert.is_false(ok)
    assert.are.equal("/sku", path)
  end)
end)

describe("10_orders", function()
  local rule = testing.load("10_orders.lua")

  it("marks bulk orders and still fits the orders output's schema", function()
    local res = rule:run({ topic = "orders.created",
      payload = { sku = "ABC-1", qty = 150, customer = "c-7" } })
    assert.are.same({ "orders" }, res.routes)
    assert.are.equal("yes", res.event.headers.bulk)
    assert.is_true(testing.validate_event("../schemas/order.v1.json", res.event))
  end)
end)
