-- a rule that drops sku when asked: its output no longer fits order.v1
return {
  topics = { "orders.*" },
  on_event = function(ev)
    if ev.payload.strip then ev.payload.sku = nil end
    return "out"
  end,
}
