-- 90_rate_limit.lua - rate-limit per customer: each customer may send 10
-- events a second (bursts of 20); the excess is dropped and counted.
local PER_SECOND, BURST = 10, 20

return {
  topics = { "api.*" },
  on_event = function(ev)
    local customer = tostring(ev.payload.customer or ev.key or "anonymous")
    if sluice.rate_limit(customer, PER_SECOND, BURST) then
      return nil
    end
    sluice.counter("rate_limited", { customer = customer }):inc()
    return sluice.drop("rate limited")
  end,
}
