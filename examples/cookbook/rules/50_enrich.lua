-- 50_enrich.lua - enrich from a lookup table in lib/: a payment's country
-- code gains the country's name, region and currency.
local countries = require("countries")

return {
  topics = { "payments.*" },
  on_event = function(ev)
    local code = ev.payload.country
    local c = type(code) == "string" and countries[code:upper()]
    if c then
      ev.payload.country_name = c.name
      ev.payload.region = c.region
      ev.payload.currency = ev.payload.currency or c.currency
    else
      ev.headers.enrich = "unknown country"
    end
    return nil
  end,
}
