#!/usr/bin/env bash
# tests/bench/forward.sh - `make bench` section: the forward input into a
# null output, fed by a sluice whose forward output waits for each chunk's
# ack (plain, then gzip), beside the same pair over the native protocol with
# acks, one after the other so the rows compare runs on the same (noisy)
# machine. The loadgen writes native events to the edge and counts what the
# central's null output delivered through its /metrics.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh
CONNS=${BENCH_CONNS:-1}

# run_pair MODE: one run, MODE native, forward or gzip.
run_pair() {
  local port admin cport line central_pid in_type=forward out
  out="type = \"forward\""
  case $1 in
  native) in_type=tcp out="type = \"tcp\", ack = true" ;;
  gzip) out="type = \"forward\", compress = \"gzip\"" ;;
  esac
  cport=$(bench_free_port)
  admin=$(bench_free_port)
  engine_start "central-$1" "return {
  inputs = { { name = \"edges\", type = \"$in_type\", listen = \"127.0.0.1:$cport\" } },
  outputs = { { name = \"out\", type = \"null\" } },
  routes = { { topics = \"*\", to = \"out\" } },
  admin = { listen = \"127.0.0.1:$admin\" },
}" || return 1
  central_pid=$ENGINE_PID
  port=$(bench_free_port)
  engine_start "edge-$1" "return {
  inputs = { { name = \"bench\", type = \"tcp\", listen = \"127.0.0.1:$port\" } },
  outputs = { { name = \"central\", $out, address = \"127.0.0.1:$cport\" } },
  routes = { { topics = \"*\", to = \"central\" } },
}" || { ENGINE_PID=$central_pid engine_stop; return 1; }
  line=$("$LOADGEN" --to "127.0.0.1:$port" --events "$EVENTS" --conns "$CONNS" \
    --metrics "127.0.0.1:$admin" --output out) || line=
  [ -z "$line" ] || echo "$line rss_mb=$(engine_hwm_mb)"
  engine_stop || true
  ENGINE_PID=$central_pid
  engine_stop || true
  [ -n "$line" ]
}

run_native() { run_pair native; }
run_forward() { run_pair forward; }
run_gzip() { run_pair gzip; }

bench_repeat "sluice -> sluice, native acks" run_native
bench_repeat "sluice -> sluice, forward acks" run_forward
bench_repeat "sluice -> sluice, forward gzip" run_gzip
