-- A sidecar the application reaches over local HTTP:
--   curl -H 'Content-Type: application/json' \
--        -d '{"topic":"orders.created","payload":{"customer":"c-7","amount":12}}' \
--        http://127.0.0.1:8080/v1/events
-- with health, readiness, metrics, rule status and a tap on 127.0.0.1:9090.
return {
  inputs  = { { name = "web", type = "http", listen = "127.0.0.1:8080",
                max_body_bytes = "4MiB" } },
  outputs = { { name = "orders", type = "file", path = "var/orders.ndjson" },
              { name = "console", type = "stdout" } },
  routes  = { { topics = "*", to = "console" } },
  rules   = { dir = "rules" },
  admin   = { listen = "127.0.0.1:9090" },
}
