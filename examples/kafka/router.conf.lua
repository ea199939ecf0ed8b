-- Kafka in, rules, Kafka out: consume the orders topics in a consumer
-- group, flag large orders, drop malformed ones, and produce the rest to
-- routed.<topic>. Offsets are committed only for events the output has
-- delivered (acks=all), so a crash or a kill -9 loses nothing. Scale out
-- by starting more copies with the same group: Kafka splits the
-- partitions between them and hands a dead one's share to the others.
-- Each copy needs its own state folder (var/INSTANCE):
--   KAFKA_BROKERS=kafka-1:9092,kafka-2:9092 sluice run -c router.conf.lua
--   KAFKA_BROKERS=kafka-1:9092,kafka-2:9092 INSTANCE=2 sluice run -c router.conf.lua
return {
  inputs  = { { name = "orders", type = "kafka",
                brokers = "${KAFKA_BROKERS:-127.0.0.1:9092}",
                group = "sluice-router", topics = "orders,^orders\\..*",
                start = "earliest", format = "json" } },
  outputs = { { name = "routed", type = "kafka",
                brokers = "${KAFKA_BROKERS:-127.0.0.1:9092}",
                topic = "routed.{topic}", format = "json" } },
  routes  = { { topics = "*", to = "routed" } },
  rules   = { dir = "rules" },
  state_dir = "var/${INSTANCE:-1}",  -- one per copy: a second on var/1 would not start
}
