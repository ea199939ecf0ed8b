-- 10_orders.lua - drops test orders; marks big ones for whoever reads
-- orders.accepted (the header becomes the field h:priority).
return {
  topics = { "orders" },
  on_event = function(ev)
    if ev.payload.test then return sluice.drop("test order") end
    if (ev.payload.amount or 0) >= 1000 then ev.headers.priority = "high" end
    return nil -- no decision: the config routes it
  end,
}
