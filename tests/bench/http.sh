#!/bin/sh
# http.sh - HTTP ingest benchmark: wrk posts NDJSON batches of 100 events to
# the engine's http input over 2 keep-alive connections; the engine routes
# them to a null output. Prints events/s and latency (p50, p99) from wrk,
# and the events the engine counted (its /metrics).
#
#   tests/bench/http.sh                 build/sluice, 10 s
#   BUILD=build DURATION=30 tests/bench/http.sh
#   THREADS=2 tests/bench/http.sh       wrk threads (default 1: on a 2-core
#                                       machine a second wrk thread takes
#                                       the engine's core)
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
SLUICE=${SLUICE_BIN:-$BUILD/sluice}
DURATION=${DURATION:-10}
THREADS=${THREADS:-1}
PY=/usr/bin/python3

command -v wrk >/dev/null || { echo "http.sh: wrk is missing (make deps)" >&2; exit 1; }
[ -x "$SLUICE" ] || { echo "http.sh: $SLUICE is not built (make)" >&2; exit 1; }

dir=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

free_port() {
  $PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port=$(free_port)
admin=$(free_port)
while [ "$admin" = "$port" ]; do admin=$(free_port); done

cat >"$dir/bench.conf.lua" <<CONF
return {
  inputs  = { { name = "web", type = "http", listen = "127.0.0.1:$port" } },
  outputs = { { name = "null", type = "null" } },
  routes  = { { topics = "*", to = "null" } },
  admin   = { listen = "127.0.0.1:$admin" },
  log_level = "warn",
}
CONF

"$SLUICE" run -c "$dir/bench.conf.lua" 2>"$dir/stderr.log" &
pid=$!
i=0
until curl -s -o /dev/null "http://127.0.0.1:$admin/healthz"; do
  i=$((i + 1))
  if [ $i -gt 200 ] || ! kill -0 "$pid" 2>/dev/null; then
    echo "http.sh: the engine did not start:" >&2
    cat "$dir/stderr.log" >&2
    exit 1
  fi
  sleep 0.05
done

echo "wrk -t$THREADS -c2 -d${DURATION}s, keep-alive, POST /v1/events, NDJSON x100 -> null output"
wrk -t"$THREADS" -c2 -d"${DURATION}s" --latency -s "$ROOT/tests/bench/http_post.lua" \
  "http://127.0.0.1:$port/v1/events" | grep -E "^http ingest|Socket errors|Non-2xx"
curl -s "http://127.0.0.1:$admin/metrics" |
  awk '/^sluice_input_events_total/ { ev = $2 }
       /^sluice_output_events_total\{output="null"\}/ { out = $2 }
       /^sluice_http_requests_total/ { split($1, a, "code=\""); code = substr(a[2], 1, 3); req[code] += $2 }
       /^process_resident_memory_bytes/ { rss = $2 }
       END { printf "engine: %d events in, %d delivered to null, responses:", ev, out;
             for (c in req) printf " %s=%d", c, req[c];
             printf ", RSS %.1f MiB\n", rss / 1048576 }'
