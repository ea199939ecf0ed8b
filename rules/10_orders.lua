-- 10_orders.lua - orders: malformed ones are dropped, large ones are
-- flagged and also shown on the console, the rest go to the archive.
return {
  topics = { "orders.*" },

  on_event = function(ev)
    local p = ev.payload
    local amount = type(p) == "table" and p.amount or nil
    if type(amount) ~= "number" then
      return sluice.drop("order without a numeric amount")
    end
    if amount > 1000 then
      ev.headers.priority = "high"
      return { "archive", "console" }
    end
    return "archive"
  end,
}
