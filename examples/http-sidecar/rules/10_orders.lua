-- 10_orders.lua - orders go to their own file; an order without a
-- customer is a bug upstream: dropped with a reason.
return {
  topics = { "orders.*" },
  on_event = function(ev)
    if ev.payload.customer == nil then
      return sluice.drop("order without customer")
    end
    ev.key = ev.payload.customer   -- per-customer order downstream
    return "orders"
  end,
}
