-- Redis Streams in and out: sluice reads the stream "orders" as one consumer
-- of the group "router", a rule drops test orders and marks big ones, and
-- the rest is written to "orders.accepted". Entries are acknowledged (XACK)
-- only once written there; run several of these with different CONSUMER
-- names (each its state folder, var/CONSUMER) and ADMIN addresses to share
-- the stream, and a dead one's entries are claimed by the others after
-- claim_idle_ms.
--   REDIS=127.0.0.1:6379 CONSUMER=router-1 sluice run -c sluice.conf.lua
--   redis-cli XADD orders '*' payload '{"order":1,"amount":1500}'
--   redis-cli XRANGE orders.accepted - +
return {
  inputs = {
    { name = "orders", type = "redis", address = "${REDIS:-127.0.0.1:6379}",
      stream = "orders", group = "router",
      consumer = "${CONSUMER:-router-1}", claim_idle_ms = 30000 },
  },
  outputs = {
    { name = "accepted", type = "redis", address = "${REDIS:-127.0.0.1:6379}",
      stream = "{topic}.accepted", maxlen = 100000 },
  },
  rules = { dir = "rules" },
  routes = { { topics = "*", to = "accepted" } },
  admin = { listen = "${ADMIN:-127.0.0.1:9093}" },
  state_dir = "var/${CONSUMER:-router-1}",
}
