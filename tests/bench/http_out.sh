#!/usr/bin/env bash
# tests/bench/http_out.sh - `make bench` section: native tcp in -> the http
# output -> a second sluice's http input (POST /v1/events, NDJSON) -> null,
# plain and with gzip. The loadgen writes to the edge and counts what the
# sink's null output delivered through its /metrics; compare with the
# "sluice -> sluice, plain tcp" row of the tls section.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh
CONNS=${BENCH_CONNS:-1}

# run_pair GZIP: one run, GZIP true or false.
run_pair() {
  local port admin sport line sink_pid
  sport=$(bench_free_port)
  admin=$(bench_free_port)
  engine_start "http-sink" "return {
  inputs = { { name = \"web\", type = \"http\", listen = \"127.0.0.1:$sport\" } },
  outputs = { { name = \"out\", type = \"null\" } },
  routes = { { topics = \"*\", to = \"out\" } },
  admin = { listen = \"127.0.0.1:$admin\" },
}" || return 1
  sink_pid=$ENGINE_PID
  port=$(bench_free_port)
  engine_start "http-edge" "return {
  inputs = { { name = \"bench\", type = \"tcp\", listen = \"127.0.0.1:$port\" } },
  outputs = { { name = \"sink\", type = \"http\", format = \"ndjson\", gzip = $1,
                url = \"http://127.0.0.1:$sport/v1/events\" } },
  routes = { { topics = \"*\", to = \"sink\" } },
}" || { ENGINE_PID=$sink_pid engine_stop; return 1; }
  line=$("$LOADGEN" --to "127.0.0.1:$port" --events "$EVENTS" --conns "$CONNS" \
    --metrics "127.0.0.1:$admin" --output out) || line=
  [ -z "$line" ] || echo "$line rss_mb=$(engine_hwm_mb)"
  engine_stop || true
  ENGINE_PID=$sink_pid
  engine_stop || true
  [ -n "$line" ]
}

run_plain() { run_pair false; }
run_gzip() { run_pair true; }

bench_repeat "native -> http output -> sluice http input" run_plain
bench_repeat "native -> http output (gzip) -> sluice http input" run_gzip
