-- http_post.lua - wrk script for tests/bench/http.sh: every request POSTs
-- one NDJSON batch of 100 events (about 120 bytes each) to /v1/events, and
-- the summary is printed as events/s and latency percentiles.
local lines = {}
for i = 1, 100 do
  lines[i] = string.format(
    '{"topic":"bench.http","key":"k%02d","payload":{"i":%d,"user":"u%06d",' ..
    '"amount":%d,"note":"%s"}}', i % 16, i, i * 31, i * 7, string.rep("x", 24))
end

wrk.method = "POST"
wrk.body = table.concat(lines, "\n") .. "\n"
wrk.headers["Content-Type"] = "application/x-ndjson"

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "http ingest: %.0f events/s (%.0f requests/s of 100), latency p50 %.2f ms, " ..
    "p99 %.2f ms, max %.2f ms; %d requests in %.1f s; errors: %d non-2xx, " ..
    "%d connect, %d read, %d write, %d timeout\n",
    summary.requests * 100 / secs, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, summary.requests, secs, e.status, e.connect, e.read,
    e.write, e.timeout))
end
