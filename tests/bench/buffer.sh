#!/usr/bin/env bash
# tests/bench/buffer.sh - the delivery benchmarks of issue 5, a section of
# `make bench` (tests/bench/run.sh runs it with BUILD, WORK, RUNS, EVENTS,
# SLUICE and LOADGEN set) that also runs alone:
#
#   tests/bench/buffer.sh                       all of it
#   BUFFER_PARTS=throughput tests/bench/buffer.sh
#   BUFFER_PARTS=overload OVERLOAD_SECONDS=20 tests/bench/buffer.sh
#
# throughput: native tcp in -> null and -> a tcp sink, with the memory
#   queue and with a disk buffer (fsync = "interval"); rows for run.sh's
#   table (median of RUNS runs of EVENTS events).
# overload: a null output rate-limited to OVERLOAD_RATE events/s, offered
#   ten times that for OVERLOAD_SECONDS; prints the engine's RSS every
#   second. With when_full = "block" the input is paused and RSS stays
#   flat; with "spill" the excess goes to disk and RSS stays bounded.
#   Exits non-zero when RSS grows past OVERLOAD_MAX_GROWTH_MB (default 64)
#   over the run.
set -euo pipefail

cd "$(dirname "$0")/../.."
export BUILD=${BUILD:-build}
export EVENTS=${EVENTS:-${BENCH_EVENTS:-1000000}}
export RUNS=${RUNS:-${BENCH_RUNS:-1}}
PARTS=${BUFFER_PARTS:-throughput overload}
OVERLOAD_RATE=${OVERLOAD_RATE:-20000}
OVERLOAD_SECONDS=${OVERLOAD_SECONDS:-10}
OVERLOAD_MAX_GROWTH_MB=${OVERLOAD_MAX_GROWTH_MB:-64}
PY=/usr/bin/python3
own_work=
if [ -z "${WORK:-}" ]; then
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench-buffer.XXXXXX")
  own_work=1
fi
export WORK
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh

cleanup() {
  engine_stop >/dev/null 2>&1 || true
  [ -z "$own_work" ] || rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

for f in "$SLUICE" "$LOADGEN"; do
  [ -x "$f" ] || { echo "buffer.sh: $f is not built (run make)" >&2; exit 1; }
done

MEMORY_Q=''
DISK_Q='buffer = { type = "disk", max_bytes = "4GiB", fsync = "interval" },'

# ---- throughput ----------------------------------------------------------------

# One run into a null output; the loadgen polls /metrics for the count.
run_null() {
  local extra=$1 port admin line
  port=$(bench_free_port)
  admin=$(bench_free_port)
  engine_start buffer-null "return {
  inputs = { { name = \"bench\", type = \"tcp\", listen = \"127.0.0.1:$port\" } },
  outputs = { { name = \"out\", type = \"null\", $extra } },
  routes = { { topics = \"*\", to = \"out\" } },
  admin = { listen = \"127.0.0.1:$admin\" },
}" || return 1
  line=$("$LOADGEN" --to "127.0.0.1:$port" --events "$EVENTS" \
    --metrics "127.0.0.1:$admin" --output out) || { engine_failed; return 1; }
  echo "$line rss_mb=$(engine_hwm_mb)"
  engine_stop >/dev/null || true
}

# One run into a tcp output; the loadgen is the sink that counts.
run_tcp() {
  local extra=$1 port sink line lg
  port=$(bench_free_port)
  sink=$(bench_free_port)
  "$LOADGEN" --to "127.0.0.1:$port" --events "$EVENTS" --sink-port "$sink" \
    >"$WORK/loadgen.out" 2>"$WORK/loadgen.err" &
  lg=$!
  until grep -q "sink listening" "$WORK/loadgen.err" 2>/dev/null; do
    kill -0 "$lg" 2>/dev/null || { cat "$WORK/loadgen.err" >&2; return 1; }
    sleep 0.01
  done
  engine_start buffer-tcp "return {
  inputs = { { name = \"bench\", type = \"tcp\", listen = \"127.0.0.1:$port\" } },
  outputs = { { name = \"out\", type = \"tcp\", address = \"127.0.0.1:$sink\", $extra } },
  routes = { { topics = \"*\", to = \"out\" } },
}" || { kill "$lg"; return 1; }
  if ! wait "$lg"; then
    cat "$WORK/loadgen.err" >&2
    engine_stop || true
    return 1
  fi
  line=$(cat "$WORK/loadgen.out")
  echo "$line rss_mb=$(engine_hwm_mb)"
  engine_stop >/dev/null 2>&1 || true # the sink went first: a warning
}

part_throughput() {
  bench_repeat "tcp -> null, memory queue" run_null "$MEMORY_Q"
  bench_repeat "tcp -> null, disk fsync=interval" run_null "$DISK_Q"
  bench_repeat "tcp -> tcp, memory queue" run_tcp "$MEMORY_Q"
  bench_repeat "tcp -> tcp, disk fsync=interval" run_tcp "$DISK_Q"
}

# ---- 10x overload ----------------------------------------------------------------

overload() {
  local policy=$1 port admin line first max growth
  port=$(bench_free_port)
  admin=$(bench_free_port)
  engine_start "overload-$policy" "return {
  inputs = { { name = \"bench\", type = \"tcp\", listen = \"127.0.0.1:$port\" } },
  outputs = { { name = \"out\", type = \"null\",
                queue = { max_events = 50000, when_full = \"$policy\" },
                rate_limit = { events_per_second = $OVERLOAD_RATE } } },
  routes = { { topics = \"*\", to = \"out\" } },
  admin = { listen = \"127.0.0.1:$admin\" },
}" || return 1
  echo "overload, when_full = $policy: output limited to $OVERLOAD_RATE events/s," \
    "offered $((OVERLOAD_RATE * 10)) events/s for ${OVERLOAD_SECONDS}s"
  "$PY" tests/bench/overload.py --to "127.0.0.1:$port" --pid "$ENGINE_PID" \
    --admin "127.0.0.1:$admin" --output out --rate $((OVERLOAD_RATE * 10)) \
    --seconds "$OVERLOAD_SECONDS" >"$WORK/overload.out" ||
    { cat "$WORK/overload.out"; engine_stop; return 1; }
  sed '$d' "$WORK/overload.out"
  line=$(tail -n 1 "$WORK/overload.out")
  if [ "$policy" = spill ]; then
    echo "  disk buffer: $(du -sh "$ENGINE_DIR/var/buffer/out" 2>/dev/null | cut -f1)"
  fi
  kill -KILL "$ENGINE_PID" 2>/dev/null || true # no drain of the backlog
  wait "$ENGINE_PID" 2>/dev/null || true
  ENGINE_PID=
  first=$(kv rss_first_mb "$line")
  max=$(kv rss_max_mb "$line")
  growth=$(awk -v a="$first" -v b="$max" 'BEGIN { printf "%.1f", b - a }')
  echo "  $policy: $line rss_growth_mb=$growth"
  awk -v g="$growth" -v m="$OVERLOAD_MAX_GROWTH_MB" 'BEGIN { exit !(g <= m) }' || {
    echo "buffer.sh: RSS grew $growth MB under overload with $policy" >&2
    return 1
  }
}

part_overload() {
  overload block >&2
  overload spill >&2
}

failed=0
for p in $PARTS; do
  "part_$p" || failed=1
done
exit $failed
