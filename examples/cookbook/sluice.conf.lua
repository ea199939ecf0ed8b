-- The cookbook: ten short rules people ask for, each scoped to its own
-- topics so they can live in one folder. Each has a spec beside it:
--   sluice test examples/cookbook
-- Copy the one you need into your rules/ and rename its outputs.
return {
  inputs  = { { name = "app", type = "tcp", listen = "127.0.0.1:7400" } },
  outputs = {
    { name = "orders_eu", type = "file", path = "var/orders-eu.ndjson" },
    { name = "orders_us", type = "file", path = "var/orders-us.ndjson" },
    { name = "orders_other", type = "file", path = "var/orders-other.ndjson" },
    { name = "summaries", type = "file", path = "var/summaries.ndjson" },
    { name = "siem", type = "file", path = "var/siem.ndjson" },
    { name = "archive", type = "file", path = "var/archive.ndjson" },
    { name = "analytics", type = "file", path = "var/analytics.ndjson" },
    { name = "all", type = "file", path = "var/all.ndjson" },
  },
  routes  = { { topics = "*", to = "all" } },
  rules   = { dir = "rules", persist = true },
}
