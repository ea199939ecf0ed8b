local testing = require("sluice.testing")

describe("cookbook: route by a payload field", function()
  local rule = testing.load("10_route_by_field.lua")

  it("sends each region to its output", function()
    assert.same({ "orders_eu" }, rule:run({ topic = "orders.new", payload = { region = "eu" } }).routes)
    assert.same({ "orders_us" }, rule:run({ topic = "orders.new", payload = { region = "us" } }).routes)
  end)

  it("sends an unknown or missing region to orders_other", function()
    assert.same({ "orders_other" }, rule:run({ topic = "orders.new", payload = { region = "mars" } }).routes)
    assert.same({ "orders_other" }, rule:run({ topic = "orders.new", payload = {} }).routes)
  end)

  it("leaves other topics alone", function()
    assert.is_false(rule:matches("users.new"))
  end)
end)
