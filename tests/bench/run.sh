#!/usr/bin/env bash
# shellcheck disable=SC2317 # sections and runs are called by name
# tests/bench/run.sh - `make bench`: throughput and memory of the engine,
# each case the median of RUNS runs, printed as one table at the end.
#
#   make bench                                   every section
#   BENCH_EVENTS=500000 BENCH_RUNS=1 make bench  quicker
#   BENCH_SECTIONS="core" make bench             only some sections
#   BENCH_CONNS=2 make bench                     client connections
#   BENCH_SECTIONS="linerate" make bench         issue 14's targets, latency
#                                                and workers (linerate.sh)
#
# A section is a function section_NAME below, or an executable script
# tests/bench/NAME.sh run with BUILD, WORK, RUNS, EVENTS, SLUICE and
# LOADGEN in its environment (it may source tests/bench/lib.sh). Lines a
# section prints as "row|case|events|events/s|MB/s|peak RSS MB" become
# table rows; everything else is shown as it comes. Add a section by adding
# a function (and its name to SECTIONS) or by dropping a script here.
set -euo pipefail

cd "$(dirname "$0")/../.."
export BUILD=${BUILD:-build}
export EVENTS=${BENCH_EVENTS:-2000000}
export RUNS=${BENCH_RUNS:-3}
CONNS=${BENCH_CONNS:-1}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench.XXXXXX")
export WORK
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh
export SLUICE LOADGEN

cleanup() {
  engine_stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

for f in "$SLUICE" "$LOADGEN"; do
  [ -x "$f" ] || { echo "bench: $f is not built (run make)" >&2; exit 1; }
done

# ---- core: native tcp in, routed by topic, to null and to a tcp sink ------

core_routes='routes = { { topics = "orders.*", to = "out" },
              { topics = "users.*", to = "out" },
              { topics = "*", to = "out" } },'

# One run into a null output; the loadgen polls /metrics for the count.
run_null() {
  local port admin line
  port=$(bench_free_port)
  admin=$(bench_free_port)
  engine_start null "return {
  inputs = { { name = \"bench\", type = \"tcp\", listen = \"127.0.0.1:$port\" } },
  outputs = { { name = \"out\", type = \"null\" } },
  $core_routes
  admin = { listen = \"127.0.0.1:$admin\" },
}" || return 1
  line=$("$LOADGEN" --to "127.0.0.1:$port" --events "$EVENTS" --conns "$CONNS" \
    --metrics "127.0.0.1:$admin" --output out) || { engine_failed; return 1; }
  echo "$line rss_mb=$(engine_hwm_mb)"
  engine_stop
}

# One run into a tcp output; the loadgen is also the sink that counts.
run_tcp_sink() {
  local port sink line lg
  port=$(bench_free_port)
  sink=$(bench_free_port)
  "$LOADGEN" --to "127.0.0.1:$port" --events "$EVENTS" --conns "$CONNS" \
    --sink-port "$sink" >"$WORK/loadgen.out" 2>"$WORK/loadgen.err" &
  lg=$!
  until grep -q "sink listening" "$WORK/loadgen.err" 2>/dev/null; do
    kill -0 "$lg" 2>/dev/null || { cat "$WORK/loadgen.err" >&2; return 1; }
    sleep 0.01
  done
  engine_start tcp "return {
  inputs = { { name = \"bench\", type = \"tcp\", listen = \"127.0.0.1:$port\" } },
  outputs = { { name = \"out\", type = \"tcp\", address = \"127.0.0.1:$sink\" } },
  $core_routes
}" || { kill "$lg"; return 1; }
  if ! wait "$lg"; then
    cat "$WORK/loadgen.err" >&2
    engine_stop || true
    return 1
  fi
  line=$(cat "$WORK/loadgen.out")
  echo "$line rss_mb=$(engine_hwm_mb)"
  engine_stop || true # the sink went away first: a warning, not a failure
}

section_core() {
  bench_repeat "native tcp -> null" run_null
  bench_repeat "native tcp -> tcp sink" run_tcp_sink
}

# ---- rules: the same pipeline with a rule in front -------------------------

# run_rule NAME LUA: one run into null with the rule file NAME = LUA.
run_rule() {
  local port admin line dir=$WORK/rules-$1
  rm -rf "$dir"
  mkdir -p "$dir"
  printf '%s\n' "$2" >"$dir/10_bench.lua"
  port=$(bench_free_port)
  admin=$(bench_free_port)
  engine_start "rule-$1" "return {
  inputs = { { name = \"bench\", type = \"tcp\", listen = \"127.0.0.1:$port\" } },
  outputs = { { name = \"out\", type = \"null\" } },
  $core_routes
  rules = { dir = \"$dir\" },
  admin = { listen = \"127.0.0.1:$admin\" },
}" || return 1
  line=$("$LOADGEN" --to "127.0.0.1:$port" --events "$EVENTS" --conns "$CONNS" \
    --metrics "127.0.0.1:$admin" --output out) || { engine_failed; return 1; }
  echo "$line rss_mb=$(engine_hwm_mb)"
  engine_stop
}

rule_topic='return { on_event = function(ev)
  if ev.topic == "audit.login" then return sluice.drop("never") end
  return "out"
end }'
rule_payload='return { on_event = function(ev)
  if ev.payload.amount > 2000000 then return sluice.drop("never") end
  return "out"
end }'
rule_field='return { on_event = function(ev)
  if ev:field("amount") > 2000000 then return sluice.drop("never") end
  return "out"
end }'
rule_change='return { on_event = function(ev)
  ev.headers.seen = "yes"
  return "out"
end }'

run_rule_topic() { run_rule topic "$rule_topic"; }
run_rule_payload() { run_rule payload "$rule_payload"; }
run_rule_field() { run_rule field "$rule_field"; }
run_rule_change() { run_rule change "$rule_change"; }

# The no-rule case runs again here so that the ratios compare runs made
# one after the other on this (shared, noisy) machine.
section_rules() {
  bench_repeat "no rule -> null" run_null
  bench_repeat "rule on ev.topic -> null" run_rule_topic
  bench_repeat "rule reads ev.payload.amount -> null" run_rule_payload
  bench_repeat "rule reads ev:field(\"amount\") -> null" run_rule_field
  bench_repeat "rule sets a header -> null" run_rule_change
}

# ---- running the sections ---------------------------------------------------

if [ -z "${BENCH_SECTIONS:-}" ]; then
  BENCH_SECTIONS="core rules"
  for s in tests/bench/*.sh; do
    s=$(basename "$s" .sh)
    case $s in run | lib) ;; *) BENCH_SECTIONS="$BENCH_SECTIONS $s" ;; esac
  done
fi

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo "sluice bench: $EVENTS events per run, median of $RUNS runs, $CONNS client" \
  "connection(s); $(nproc) CPUs ($cpu)"
: >"$WORK/rows"
failed=0
for s in $BENCH_SECTIONS; do
  echo "== $s"
  if declare -F "section_$s" >/dev/null; then
    "section_$s" >"$WORK/section.out" || failed=1
  elif [ -x "tests/bench/$s.sh" ]; then
    "tests/bench/$s.sh" >"$WORK/section.out" || failed=1
  else
    echo "bench: no section $s" >&2
    failed=1
    continue
  fi
  grep '^row|' "$WORK/section.out" >>"$WORK/rows" || true
  grep -v '^row|' "$WORK/section.out" || true
done

echo
printf '%-36s %12s %12s %9s %14s\n' "case" "events" "events/s" "MB/s" "peak RSS (MB)"
while IFS='|' read -r _ case events eps mbps rss; do
  printf '%-36s %12s %12.0f %9.1f %14.1f\n' "$case" "$events" "$eps" "$mbps" "$rss"
done <"$WORK/rows"
exit $failed
