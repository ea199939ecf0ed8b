-- Events in over local HTTP, out to a webhook, one request per topic:
--   python3 receiver.py 127.0.0.1:8081 received.ndjson &
--   sluice run -c webhook.conf.lua &
--   curl -H 'Content-Type: application/json' \
--        -d '{"topic":"orders.created","payload":{"amount":12}}' \
--        http://127.0.0.1:8080/v1/events
-- The receiver appends what it got to received.ndjson. HOOK_URL, HOOK_TOKEN
-- and LISTEN override the defaults.
return {
  inputs  = { { name = "web", type = "http", listen = "${LISTEN:-127.0.0.1:8080}" } },
  outputs = { { name = "hook", type = "http",
                url = "${HOOK_URL:-http://127.0.0.1:8081/hooks/{topic}}",
                format = "json_array", gzip = true, timeout_ms = 5000,
                bearer_token = "${HOOK_TOKEN:-dev-token}",
                headers = { ["X-Sent-By"] = "sluice" },
                retry = { initial_ms = 100, max_ms = 5000, max_attempts = 50 } } },
  routes  = { { topics = "*", to = "hook" } },
}
