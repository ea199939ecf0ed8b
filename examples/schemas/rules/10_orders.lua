-- Orders arrive checked against their contract: the rule may rely on
-- the shape of the version the event was checked against.
return {
  topics = { "orders.*" },
  on_event = function(ev)
    ev.headers["order-version"] = ev.schema_version or "none"
    if ev.payload.qty >= 100 then
      ev.headers.bulk = "yes"
    end
    return "orders"
  end,
}
