-- sluice.conf.lua - the default config: what `make run` starts.
-- Relative paths are resolved against this file's folder.
return {
  inputs = {
    -- native protocol: msgpack event maps back to back over TCP
    { name = "app", type = "tcp", listen = "127.0.0.1:7400" },
  },
  outputs = {
    { name = "archive", type = "file", path = "var/archive.ndjson", format = "ndjson" },
    { name = "console", type = "stdout" },
  },
  routes = {                                  -- first match wins
    { topics = "orders.*", to = { "archive" } },
    { topics = "*",        to = "console" },
  },
  rules = { dir = "rules" },                  -- every rules/*.lua, in order
  shutdown_timeout = 10,                      -- seconds to drain on SIGTERM
  admin = { listen = "127.0.0.1:9090" },      -- /metrics, /tap: sluice top, sluice tap
}
