-- A syslog collector: every local program (logger, rsyslog's omfwd, an
-- appliance) sends to 127.0.0.1:5514 over TCP (LF-framed or octet-counted)
-- or UDP:
--   logger --rfc5424 --tcp -n 127.0.0.1 -P 5514 -t billing -p user.err "payment failed"
-- Everything lands in var/syslog.ndjson; err and worse also go through a
-- command (here a shell appending to var/alerts.ndjson; a pager script in
-- real life). A line that is not syslog is kept, marked malformed.
return {
  inputs  = { { name = "syslog", type = "syslog",
                listen = "127.0.0.1:5514", udp = "127.0.0.1:5514",
                topic = "syslog.{facility}.{app}" } },
  outputs = { { name = "all", type = "file", path = "var/syslog.ndjson" },
              { name = "alerts", type = "exec",
                command = { "sh", "-c", "cat >> var/alerts.ndjson" } } },
  routes  = { { topics = "*", to = "all" } },
  rules   = { dir = "rules" },
}
