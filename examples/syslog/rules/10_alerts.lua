-- 10_alerts.lua - syslog severities err (3) and worse reach the alerts
-- command as well as the file; the host becomes the key, so a consumer
-- downstream keeps each host's messages in order.
return {
  topics = { "syslog.*" },
  on_event = function(ev)
    local p = ev.payload
    if p.hostname then
      ev.key = p.hostname
    end
    if not p.malformed and p.severity <= 3 then
      return { "all", "alerts" }
    end
    return "all"
  end,
}
