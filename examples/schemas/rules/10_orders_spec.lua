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

  it("stamps the version the event was checked against", function()
    local res = rule:run({ topic = "orders.created", schema_version = "2",
      payload = { sku = "ABC-1", qty = 2, customer = "c-7", note = "gift" } })
    assert.are.equal("2", res.event.headers["order-version"])
    res = rule:run({ topic = "orders.created",
      payload = { sku = "ABC-1", qty = 2, customer = "c-7" } })
    assert.are.equal("none", res.event.headers["order-version"])
  end)
end)

describe("the config's contracts", function()
  local contracts = testing.contracts("../sluice.conf.lua")

  it("checks an order against the version it names, else the newest", function()
    local ok, contract, version = contracts:check({ topic = "orders.created",
      payload = { sku = "ABC-1", qty = 2, customer = "c-7", note = "gift" } })
    assert.is_true(ok)
    assert.are.equal("orders.*", contract)
    assert.are.equal("2", version)
    local path
    ok, contract, version, path = contracts:check({ topic = "orders.created",
      headers = { ["schema-version"] = "1" },
      payload = { sku = "ABC-1", qty = "two", customer = "c-7" } })
    assert.is_false(ok)
    assert.are.equal("1", version)
    assert.are.equal("/qty", path)
  end)

  it("refuses a version the contract does not have, and leaves other topics alone", function()
    local ok, _, version, _, expected = contracts:check({ topic = "orders.created",
      headers = { ["schema-version"] = "3" },
      payload = { sku = "ABC-1", qty = 2, customer = "c-7" } })
    assert.is_false(ok)
    assert.is_nil(version)
    assert.truthy(expected:find("(1, 2)", 1, true))
    assert.is_nil(contracts:check({ topic = "audit.login", payload = 1 }))
  end)
end)
