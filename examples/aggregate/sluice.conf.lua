-- Count page views per path and emit one summary event a minute.
return {
  inputs  = { { name = "app", type = "tcp", listen = "127.0.0.1:7400" } },
  outputs = { { name = "summaries", type = "file", path = "var/summaries.ndjson" },
              { name = "raw", type = "null" } },
  routes  = { { topics = "*", to = "raw" } },
  rules   = { dir = "rules" },
}
