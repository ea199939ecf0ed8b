return {
  topics = { "orders.*" },
  on_event = function(ev)
    ev.headers.v = ev.schema_version or "none"
    return "out"
  end,
}
