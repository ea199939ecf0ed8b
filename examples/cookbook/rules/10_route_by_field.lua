-- 10_route_by_field.lua - route by a payload field: orders go to the
-- output of their region; an unknown or missing region has its own.
local by_region = { eu = "orders_eu", us = "orders_us" }

return {
  topics = { "orders.*" },
  on_event = function(ev)
    return by_region[ev.payload.region] or "orders_other"
  end,
}
