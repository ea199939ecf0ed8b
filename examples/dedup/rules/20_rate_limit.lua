-- 20_rate_limit.lua - at most 100 debug events a second per service (burst
-- 200); the excess is dropped with a reason and counted.
local limited = sluice.counter("debug_events_limited")

return {
  topics = { "log.debug" },
  on_event = function(ev)
    local service = ev.headers.service or "unknown"
    if not sluice.rate_limit(service, 100, 200) then
      limited:inc(1)
      return sluice.drop("rate limited: " .. service)
    end
    return nil
  end,
}
