-- The config examples/systemd/sluice.service runs, as
-- /etc/sluice/sluice.conf.lua. The config folder stays read-only: every
-- file the engine writes goes to state_dir, the unit's StateDirectory=.
return {
  state_dir = "/var/lib/sluice",
  inputs = {
    { name = "app", type = "tcp", listen = "127.0.0.1:7400" },
    { name = "web", type = "http", listen = "127.0.0.1:7401" },
  },
  outputs = {
    { name = "archive", type = "file", path = "/var/lib/sluice/archive.ndjson",
      buffer = { type = "disk" } },
  },
  routes = { { topics = "*", to = "archive" } },
  admin = { listen = "127.0.0.1:9090" },
}
