-- Tag large orders; the header travels on as a NATS header.
return {
  topics = { "orders.*" },
  on_event = function(ev)
    local amount = ev:field("amount")
    if amount == nil then return sluice.drop("no amount") end
    ev.headers.priority = amount > 100 and "high" or "normal"
    return "routed"
  end,
}
