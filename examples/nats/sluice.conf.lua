-- NATS JetStream in and out, at least once: orders published to the ORDERS
-- stream are read by a durable pull consumer, tagged by a rule and
-- republished to the ROUTED stream; a message is acked on ORDERS only once
-- ROUTED acked its event (or it went to the dead letter). Start it as many
-- times as you like (same durable; each with its own INSTANCE, its state
-- folder): the instances share the stream, and what a killed one had not
-- acked is redelivered to the others.
--   nats-server -js -sd /var/lib/nats &
--   NATS_URL=nats://127.0.0.1:4222 sluice run -c examples/nats/sluice.conf.lua
--   NATS_URL=nats://127.0.0.1:4222 INSTANCE=2 sluice run -c examples/nats/sluice.conf.lua
return {
  inputs = {
    { name = "orders", type = "nats", url = "${NATS_URL:-nats://127.0.0.1:4222}",
      stream = "ORDERS", subject = "orders.>", durable = "router",
      create_stream = true, batch = 64, max_ack_pending = 1024 },
  },
  outputs = {
    { name = "routed", type = "nats", url = "${NATS_URL:-nats://127.0.0.1:4222}",
      stream = "ROUTED", subject = "routed.{topic}", create_stream = true },
  },
  routes = { { topics = "*", to = "routed" } },
  rules  = { dir = "rules" },
  state_dir = "var/${INSTANCE:-1}",  -- one per instance: a second on var/1 would not start
}
