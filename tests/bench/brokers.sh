#!/usr/bin/env bash
# tests/bench/brokers.sh - `make bench` section: Kafka (the librdkafka mock),
# NATS JetStream and Redis Streams, each broker -> sluice (a rule reading
# ev.payload.amount) -> broker: events/s and end-to-end latency p50/p99
# (tests/bench/brokers.py), beside the native tcp pipeline with the same
# rule in the same run. BROKER_EVENTS (default 100000, not BENCH_EVENTS:
# nats_tool loads JetStream one acked publish at a time) events per broker;
# BENCH_LAT_RATE events/s (500) for BENCH_LAT_SECONDS (4) for the latency.
#
# Where the limit is: the table's last two columns are the broker's own
# client alone, without sluice (kcat -P/-C -e, nats_tool pub --js/consume,
# pipelined XADD/XRANGE on a socket), loading and reading the same events;
# with small counts they are mostly the client's start-up. What one run
# showed (5000 events, loaded machine, not figures to keep):
# - Kafka latency is the mock's: it answers a fetch that found no data only
#   after the fetch's full fetch.wait.max.ms (librdkafka's default 500 ms),
#   not when data arrives, so sluice's consumer sees p50 ~270 ms; the
#   "fetch.wait 10 ms" row runs sluice's input with options =
#   "fetch.wait.max.ms=10" (p50 ~17 ms: librdkafka's linger.ms of 5 in
#   sluice's producer plus up to 10 ms in each of the two fetches on the
#   mock, sluice's and the bench consumer's). A real broker answers a
#   waiting fetch when data arrives: there the default row is the one to
#   read.
# - NATS: nats_tool pub --js waits for each publish ack (a round trip per
#   message, ~8k/s) and loads slower than sluice forwards; sluice's own
#   rate is bounded by its output's max_in_flight publish acks and the
#   input's fetch batches. The p99 is the JetStream file store's flushes.
# - Redis: the closest to the native row; one XREADGROUP of `count` (100)
#   entries per round trip is the input's pace.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh
export BROKER_EVENTS=${BROKER_EVENTS:-100000}

for tool in kcat redis-server /usr/sbin/nats-server "$BUILD/tools/kafka_mock" \
  "$BUILD/tools/nats_tool" "$BUILD/tools/kafka_pipe"; do
  command -v "$tool" >/dev/null || { echo "brokers: $tool missing, skipped"; exit 0; }
done

# The native pipeline with the same rule, into the loadgen's own tcp sink.
run_native() {
  local port sink dir=$WORK/rules-brokers
  mkdir -p "$dir"
  printf '%s\n' 'return { on_event = function(ev)
  if ev.payload.amount > 1000 then ev.headers.priority = "high" end
  return "out"
end }' >"$dir/10_bench.lua"
  port=$(bench_free_port)
  sink=$(bench_free_port)
  "$LOADGEN" --to "127.0.0.1:$port" --events "$BROKER_EVENTS" \
    --sink-port "$sink" >"$WORK/native.out" 2>"$WORK/native.err" &
  local lg=$!
  until grep -q "sink listening" "$WORK/native.err" 2>/dev/null; do
    kill -0 "$lg" 2>/dev/null || { cat "$WORK/native.err" >&2; return 1; }
    sleep 0.01
  done
  engine_start native-rule "return {
  inputs = { { name = \"in\", type = \"tcp\", listen = \"127.0.0.1:$port\" } },
  outputs = { { name = \"out\", type = \"tcp\", address = \"127.0.0.1:$sink\" } },
  routes = { { topics = \"*\", to = \"out\" } },
  rules = { dir = \"$dir\" },
}" || { kill "$lg"; return 1; }
  wait "$lg" || { cat "$WORK/native.err" >&2; engine_stop || true; return 1; }
  echo "$(kv events_per_s "$(cat "$WORK/native.out")") $(engine_hwm_mb)"
  engine_stop || true
}

native=$(run_native) || native="0 0"
printf 'row|native tcp -> rule -> tcp sink|%s|%s|0|%s\n' \
  "$BROKER_EVENTS" "${native% *}" "${native#* }"
/usr/bin/python3 tests/bench/brokers.py "${native% *}"
