local testing = require("sluice.testing")

describe("cookbook: enrich from a lookup table in lib/", function()
  local rule = testing.load("50_enrich.lua")

  it("adds name, region and currency for a known code", function()
    local r = rule:run({ topic = "payments.card", payload = { amount = 10, country = "de" } })
    assert.same({ amount = 10, country = "de", country_name = "Germany",
                  region = "eu", currency = "EUR" }, r.event.payload)
  end)

  it("keeps a currency the event already has", function()
    local r = rule:run({ topic = "payments.card", payload = { country = "JP", currency = "USD" } })
    assert.equal("USD", r.event.payload.currency)
    assert.equal("apac", r.event.payload.region)
  end)

  it("marks an unknown code instead of failing", function()
    local r = rule:run({ topic = "payments.card", payload = { country = "XX" } })
    assert.equal("unknown country", r.event.headers.enrich)
    assert.equal("pass", r.verdict)
  end)
end)
