-- A topic guarded by a versioned payload contract (README "Schema
-- contracts"). Orders posted here must fit schemas/order.v1.json or
-- order.v2.json (the header schema-version picks one; none: the newest):
--   curl -H 'Content-Type: application/json' \
--        -d '{"topic":"orders.created","payload":{"sku":"ABC-1","qty":2,"customer":"c-7"}}' \
--        http://127.0.0.1:8081/v1/events
-- answers {"accepted":1}; one that does not fit is refused whole:
--   curl -H 'Content-Type: application/json' \
--        -d '{"topic":"orders.created","payload":{"sku":"ABC-1","qty":"two","customer":"c-7"}}' \
--        http://127.0.0.1:8081/v1/events
-- answers 400 naming the event's index, the JSON path (/qty) and what was
-- expected. `sluice check -c examples/schemas/sluice.conf.lua` compiles the
-- schemas and compares version 2 with version 1.
return {
  inputs  = { { name = "web", type = "http", listen = "127.0.0.1:8081" },
              { name = "apps", type = "tcp", listen = "127.0.0.1:7401" } },
  outputs = { { name = "orders", type = "file", path = "var/orders.ndjson",
                schema = "schemas/order.v1.json" } },
  routes  = { { topics = "orders.*", to = "orders" } },
  rules   = { dir = "rules" },
  admin   = { listen = "127.0.0.1:9091" },
  schemas = {
    { topics = "orders.*", file = "schemas/order.v1.json" },
    { topics = "orders.*", file = "schemas/order.v2.json" },
  },
}
