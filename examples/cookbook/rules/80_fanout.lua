-- 80_fanout.lua - fan out a copy: audit events go whole to the SIEM and
-- the archive, and a trimmed copy (no user details) to analytics.
return {
  topics = { "audit.*" },
  on_event = function(ev)
    sluice.emit("analytics", {
      topic = "analytics." .. ev.topic,
      key = ev.key,
      time_ns = ev.time_ns,          -- the original time, exactly
      payload = { action = ev.payload.action, ok = ev.payload.ok },
    })
    return { "siem", "archive" }
  end,
}
