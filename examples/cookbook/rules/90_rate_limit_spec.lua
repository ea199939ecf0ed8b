local testing = require("sluice.testing")

describe("cookbook: rate-limit per customer", function()
  local function call(rule, customer)
    return rule:run({ topic = "api.request", payload = { customer = customer } }).verdict
  end

  it("lets a burst through, then drops, per customer", function()
    local rule = testing.load("90_rate_limit.lua")
    for _ = 1, 20 do assert.equal("pass", call(rule, "acme")) end
    assert.equal("drop", call(rule, "acme"))
    assert.equal("pass", call(rule, "globex")) -- another customer is not held back
    assert.equal(1, rule:counters()['rate_limited{customer="acme"}'])
  end)

  it("refills at the rate", function()
    local rule = testing.load("90_rate_limit.lua")
    for _ = 1, 20 do call(rule, "acme") end
    assert.equal("drop", call(rule, "acme"))
    rule:advance(1000)
    for _ = 1, 10 do assert.equal("pass", call(rule, "acme")) end
    assert.equal("drop", call(rule, "acme"))
  end)
end)
