-- sluice.testing's schema helpers: validate / validate_event run the
-- engine's own checker (build/sluice_core.so) on a value or an event.
local testing = require("sluice.testing")

describe("testing.validate", function()
  it("accepts a payload that fits", function()
    assert.is_true(testing.validate("schema/order.v1.json", { sku = "a", qty = 2 }))
  end)

  it("names the path and what was expected for one that does not", function()
    local ok, path, expected = testing.validate("schema/order.v1.json",
      { sku = 7, qty = 2 })
    assert.is_false(ok)
    assert.are.equal("/sku", path)
    assert.truthy(expected:find("string", 1, true))
    ok, path, expected = testing.validate("schema/order.v1.json", { sku = "a", qty = 0 })
    assert.is_false(ok)
    assert.are.equal("/qty", path)
    assert.truthy(expected:find("1", 1, true))
  end)

  it("tells a fraction from an integer", function()
    local ok, path = testing.validate("schema/order.v1.json",
      { sku = "a", qty = testing.float(2.5) })
    assert.is_false(ok)
    assert.are.equal("/qty", path)
  end)

  it("raises on a schema that does not compile", function()
    assert.has_error(function()
      testing.validate("schema/broken.json", {})
    end)
  end)
end)

describe("testing.validate_event", function()
  it("checks an event's payload, and a rule's reshaped event", function()
    local ev = { topic = "orders.new", payload = { sku = "a", qty = 1 } }
    assert.is_true(testing.validate_event("schema/order.v1.json", ev))
    local rule = testing.load("schema/10_strip.lua")
    local res = rule:run({ topic = "orders.new",
      payload = { sku = "a", qty = 1, strip = true } })
    assert.are.equal("route", res.verdict)
    local ok, path = testing.validate_event("schema/order.v1.json", res.event)
    assert.is_false(ok)
    assert.are.equal("", path)
    rule:close()
  end)
end)

describe("testing.contracts", function()
  it("applies a config's contracts to events, version from the file name", function()
    local c = testing.contracts("schema/good.conf.lua")
    local ok, contract, version = c:check({ topic = "orders.x",
      payload = { sku = "a", qty = 1 } })
    assert.is_true(ok)
    assert.are.same({ "orders.*", "1" }, { contract, version })
    local path, expected
    ok, contract, version, path, expected = c:check({ topic = "orders.x",
      payload_raw = testing.encode({ sku = "a" }) })
    assert.is_false(ok)
    assert.are.equal("", path)
    assert.truthy(expected:find("qty", 1, true))
    assert.is_nil(c:check({ topic = "other", payload = {} }))
  end)

  it("raises the config's errors, naming the key", function()
    local ok, err = pcall(testing.contracts, "schema/bad.conf.lua")
    assert.is_false(ok)
    assert.truthy(tostring(err):find('schemas[1].mode: expected "enforce" or "warn"', 1, true))
  end)
end)

describe("an event's schema_version in rule:run", function()
  it("is what the rule reads as ev.schema_version", function()
    local rule = testing.load("schema/10_version.lua")
    local res = rule:run({ topic = "orders.x", schema_version = "2.1", payload = 1 })
    assert.are.equal("2.1", res.event.headers.v)
    res = rule:run({ topic = "orders.x", schema_version = 3, payload = 1 })
    assert.are.equal("3", res.event.headers.v)
    res = rule:run({ topic = "orders.x", payload = 1 })
    assert.are.equal("none", res.event.headers.v)
    local ok, err = pcall(rule.run, rule,
      { topic = "orders.x", schema_version = "two", payload = 1 })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("event.schema_version must be a version", 1, true))
    rule:close()
  end)
end)
