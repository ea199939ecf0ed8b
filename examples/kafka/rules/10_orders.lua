-- 10_orders.lua - Kafka orders: malformed ones are dropped (their offsets
-- are committed all the same), large ones are flagged for downstream.
return {
  topics = { "orders", "orders.*" },

  on_event = function(ev)
    local p = ev.payload
    local amount = type(p) == "table" and p.amount or nil
    if type(amount) ~= "number" then
      return sluice.drop("order without a numeric amount")
    end
    if amount > 1000 then
      ev.headers.priority = "high"
    end
    return "routed"
  end,
}
