-- An edge sidecar that relays to a central sluice: every event is kept on
-- disk until the central one acknowledged it, so neither a central restart
-- nor a crash of this one loses events (at-least-once). The central one is
-- named by the environment, so one file serves every deployment:
--   CENTRAL=central.logging.svc:7500 sluice run -c edge.conf.lua
-- (unset: 127.0.0.1:7500; a host name is resolved again on each reconnect).
return {
  inputs  = { { name = "app", type = "unix", listen = "var/edge.sock" } },
  outputs = {
    { name = "central", type = "tcp", address = "${CENTRAL:-127.0.0.1:7500}",
      ack = true,
      retry = { initial_ms = 100, max_ms = 5000 },
      buffer = { type = "disk", max_bytes = "512MiB", fsync = "interval",
                 fsync_interval_ms = 200 } },
  },
  routes  = { { topics = "*", to = "central" } },
  state_dir = "var/edge",  -- its own, beside central.conf.lua's
}
