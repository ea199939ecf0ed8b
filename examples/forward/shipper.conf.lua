-- A sidecar that ships its events to a Fluentd, a Fluent Bit or the
-- receiver beside this file, over the forward protocol: gzip-compressed
-- PackedForward frames, the topic as the tag, each frame kept on disk until
-- the peer acked its chunk (at-least-once: a lost ack sends it again).
--   FORWARD_KEY=secret sluice run -c shipper.conf.lua
return {
  inputs  = { { name = "app", type = "tcp",
                listen = "${SHIPPER_LISTEN:-127.0.0.1:7400}" } },
  outputs = {
    { name = "fluentd", type = "forward",
      address = "${FORWARD_PEER:-127.0.0.1:24224}",
      shared_key = "${FORWARD_KEY:-change-me}", compress = "gzip",
      retry = { initial_ms = 100, max_ms = 5000, timeout_ms = 10000 },
      buffer = { type = "disk", max_bytes = "256MiB" } },
  },
  routes  = { { topics = "*", to = "fluentd" } },
  state_dir = "var/shipper",  -- its own: the receiver may run from this folder
}
