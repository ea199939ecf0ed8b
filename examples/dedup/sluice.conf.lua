-- Drop repeated deliveries of the same event id, and cap noisy sources.
return {
  inputs  = { { name = "app", type = "tcp", listen = "127.0.0.1:7400" } },
  outputs = { { name = "events", type = "file", path = "var/events.ndjson" } },
  routes  = { { topics = "*", to = "events" } },
  rules   = { dir = "rules" },
}
