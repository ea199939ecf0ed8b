#!/usr/bin/env bash
# tests/bench/schema.sh - `make bench` section: the native tcp pipeline
# (loadgen -> tcp input -> route -> null) without and with a payload
# contract on its topics (issue 16), events/s and the engine's CPU time
# per event (utime + stime from /proc, so a loaded box shows in events/s
# more than in CPU). The contract covers the loadgen's whole payload
# (order, amount, currency, sku, source: types, bounds, an enum, a
# pattern, required, additionalProperties), and the same contract when every
# event misfits at its last field (dead-lettered: rejecting must cost what
# accepting does, issue 16). With SCHEMA_INSTR=1 (and
# valgrind) it also prints callgrind instructions per event for each (and
# for the contract without its pattern), the
# figure that does not move with the machine's load.
set -euo pipefail
. tests/bench/lib.sh

dir=$(mktemp -d "${TMPDIR:-/tmp}/sluice-schema-bench.XXXXXX")
trap 'engine_stop >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
cat >"$dir/order.v1.json" <<'EOF'
{
  "type": "object",
  "required": ["order", "amount", "currency", "sku", "source"],
  "additionalProperties": false,
  "properties": {
    "order": { "type": "integer", "minimum": 0 },
    "amount": { "type": "integer", "minimum": 0, "maximum": 1000000 },
    "currency": { "enum": ["EUR", "USD", "GBP"] },
    "sku": { "type": "string", "pattern": "^SKU-[0-9]+$" },
    "source": { "type": "string", "maxLength": 64 }
  }
}
EOF

# the same without its pattern (its regex is most of the cost)
sed 's/, "pattern": "[^"]*"//' "$dir/order.v1.json" >"$dir/plain.v1.json"
# one every event misfits at its last field (source, after the pattern):
# the dearest reject, dead-lettered (the dead letter is out, so the run
# ends as the others do) against the accepts above
sed 's/"maxLength": 64/"maxLength": 4/' "$dir/order.v1.json" >"$dir/misfit.v1.json"

config() { # $1 port, $2 admin, $3 contract: 0 none, 1 full, 2 no pattern,
  # 3 every event misfits (to the dead letter)
  local schemas="" f=order
  [ "$3" = 2 ] && f=plain
  [ "$3" = 3 ] && f=misfit && schemas='dead_letter = "out",'
  [ "$3" != 0 ] && schemas="$schemas schemas = { { topics = \"*\", file = \"$dir/$f.v1.json\" } },"
  cat <<EOC
return {
  inputs = { { name = "bench", type = "tcp", listen = "127.0.0.1:$1" } },
  outputs = { { name = "out", type = "null" } },
  routes = { { topics = "*", to = "out" } },
  admin = { listen = "127.0.0.1:$2" },
  $schemas
}
EOC
}

cpu_ticks() { # utime + stime of the engine, in clock ticks
  awk '{ print $14 + $15 }' "/proc/$ENGINE_PID/stat"
}

# One run; prints the loadgen's line with cpu_us (per event) added.
run_case() {
  local port admin line t0 t1
  port=$(bench_free_port)
  admin=$(bench_free_port)
  engine_start schema "$(config "$port" "$admin" "$1")" || return 1
  t0=$(cpu_ticks)
  line=$("$LOADGEN" --to "127.0.0.1:$port" --events "$EVENTS" \
    --metrics "127.0.0.1:$admin" --output out) || { engine_failed; return 1; }
  t1=$(cpu_ticks)
  if [ "$1" != 0 ]; then
    # every event was checked and fit: the contract really ran
    local m want result=valid
    [ "$1" = 3 ] && result=invalid
    m=$(curl -sf "http://127.0.0.1:$admin/metrics")
    want="sluice_schema_events_total{contract=\"*\",version=\"1\",result=\"$result\"} $EVENTS"
    case $'\n'"$m"$'\n' in
    *$'\n'"$want"$'\n'*) ;;
    *)
      echo "schema bench: not every event was counted $result (want $want)" >&2
      engine_stop
      return 1
      ;;
    esac
  fi
  engine_stop || true
  awk -v l="$line" -v t="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" -v n="$EVENTS" \
    'BEGIN { printf "%s cpu_us=%.3f\n", l, t * 1e6 / hz / n }'
}

printf '%-22s %12s %14s\n' case events/s "cpu us/event"
for c in 0 1 3; do
  name=$(case $c in 0) echo "tcp, no contract" ;; 1) echo "tcp + contract" ;;
         *) echo "+ contract, misfits" ;; esac)
  eps=""
  cpu=""
  for _ in $(seq "$RUNS"); do
    line=$(run_case "$c")
    eps="$eps $(kv events_per_s "$line")"
    cpu="$cpu $(kv cpu_us "$line")"
  done
  printf '%-22s %12.0f %14.3f\n' "$name" \
    "$(printf '%s\n' $eps | median)" "$(printf '%s\n' $cpu | median)"
done

[ "${SCHEMA_INSTR:-0}" = 1 ] || exit 0
command -v valgrind >/dev/null || { echo "schema: valgrind missing"; exit 0; }

# Instructions of one engine run over n events, under callgrind.
instr() { # $1 with a contract, $2 events
  local port admin pid
  port=$(bench_free_port)
  admin=$(bench_free_port)
  config "$port" "$admin" "$1" >"$dir/conf.$1.lua"
  valgrind --tool=callgrind --callgrind-out-file="$dir/cg.$1.$2" \
    "$SLUICE" run -c "$dir/conf.$1.lua" >/dev/null 2>"$dir/err" &
  pid=$!
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat "$dir/err" >&2; return 1; }
    sleep 0.2
  done
  "$LOADGEN" --to "127.0.0.1:$port" --events "$2" --metrics "127.0.0.1:$admin" \
    --output out --timeout 600 >/dev/null
  kill -TERM "$pid"
  wait "$pid" || true
  sed -n 's/^summary: //p' "$dir/cg.$1.$2"
}

small=${INSTR_SMALL:-20000}
large=${INSTR_LARGE:-80000}
printf '%-22s %14s\n' case "instr/event"
for c in 0 1 2 3; do
  a=$(instr "$c" "$small")
  b=$(instr "$c" "$large")
  awk -v c="$(case $c in 0) echo "tcp, no contract" ;; 1) echo "tcp + contract" ;;
              2) echo "+ contract, no pattern" ;; *) echo "+ contract, misfits" ;; esac)" \
    -v a="$a" -v b="$b" -v n=$((large - small)) \
    'BEGIN { printf "%-22s %14.0f\n", c, (b - a) / n }'
done
