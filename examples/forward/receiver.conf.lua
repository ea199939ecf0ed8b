-- A sluice that takes the Fluent forward protocol: applications logging
-- with a fluent-logger library (or a Fluent Bit / Fluentd forwarding) send
-- here as they would to Fluentd. Each record becomes an event whose topic
-- is "fluent." .. tag; senders must know the shared key. Acks ({"ack":
-- chunk}) go out only once the events are in the disk buffer's file.
-- Set FORWARD_KEY: the default "change-me" is for a first try on one machine.
--   FORWARD_KEY=secret sluice run -c receiver.conf.lua
return {
  inputs  = { { name = "fluent", type = "forward",
                listen = "${FORWARD_LISTEN:-127.0.0.1:24224}",
                tag_prefix = "fluent.",
                shared_key = "${FORWARD_KEY:-change-me}" } },
  outputs = { { name = "archive", type = "file", path = "var/fluent.ndjson",
                buffer = { type = "disk", max_bytes = "256MiB" } } },
  routes  = { { topics = "fluent.*", to = "archive" } },
  state_dir = "var/receiver",  -- its own: the shipper may run from this folder
}
