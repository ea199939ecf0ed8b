-- schema_testing_spec.lua: contracts() raises the config's errors
return {
  schemas = { { topics = "orders.*", file = "order.v1.json", mode = "loud" } },
}
