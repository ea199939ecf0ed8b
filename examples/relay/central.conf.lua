-- The central sluice the edges relay to: archives everything.
return {
  inputs  = { { name = "edges", type = "tcp", listen = "127.0.0.1:7500" } },
  -- acks to the edges mean "on disk here": the disk buffer makes that true
  outputs = { { name = "archive", type = "file", path = "var/central.ndjson",
                buffer = { type = "disk", max_bytes = "1GiB", fsync = "interval" } } },
  routes  = { { topics = "*", to = "archive" } },
  admin   = { listen = "127.0.0.1:9091" },
  -- its own state folder (pid, lock, dead letter, disk buffer), so an edge
  -- can run from this folder beside it
  state_dir = "var/central",
}
