-- schema_testing_spec.lua: one contract, its version from the file name
return {
  inputs = { { name = "in", type = "tcp", listen = "127.0.0.1:1" } },
  schemas = { { topics = "orders.*", file = "order.v1.json", mode = "warn" } },
}
