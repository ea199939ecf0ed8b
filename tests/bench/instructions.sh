#!/usr/bin/env bash
# tests/bench/instructions.sh - `make bench` section: the whole engine's
# instructions per event (native tcp in -> rules -> null), counted by
# callgrind: unlike events/s, the count does not move with the machine's
# load, so two builds compare fairly on a busy box. Each case runs the
# engine twice (INSTR_SMALL and INSTR_LARGE events) and divides the
# difference, so startup does not count. SLUICE may name another build.
# A case ending in _jit is the same rule with rules.jit on.
set -euo pipefail
. tests/bench/lib.sh
SMALL=${INSTR_SMALL:-20000}
LARGE=${INSTR_LARGE:-80000}
command -v valgrind >/dev/null || { echo "instructions: valgrind missing, skipped"; exit 0; }
dir=$(mktemp -d "${TMPDIR:-/tmp}/sluice-instr.XXXXXX")
trap 'rm -rf "$dir"' EXIT

rule_of() {
  case ${1%_jit} in
  none) ;;
  topic) echo 'return { on_event = function(ev)
  if ev.topic == "audit.login" then return sluice.drop("never") end
  return "out" end }' ;;
  payload_read) echo 'return { on_event = function(ev)
  if ev.payload.amount > 2000000 then return sluice.drop("never") end
  return "out" end }' ;;
  payload_write) echo 'return { on_event = function(ev)
  if ev.payload.amount > 1000 then ev.payload.priority = "high" end
  return "out" end }' ;;
  payload_two) echo 'return { on_event = function(ev)
  if ev.payload.amount > 1000 then ev.payload.priority = "high" end
  if ev.payload.currency == "EUR" then return "eur" end
  return "other" end }' ;;
  header) echo 'return { on_event = function(ev)
  ev.headers.seen = "yes"
  return "out" end }' ;;
  esac
}

# Instructions of one engine run over n events.
run_one() {
  local c=$1 n=$2 d="$dir/$1.$2" port admin rules="" pid i jit=false
  local outs=out ocfg="" o
  case $c in *_jit) jit=true ;; esac # the same rule with rules.jit on
  mkdir -p "$d/rules"
  port=$(bench_free_port)
  admin=$(bench_free_port)
  if [ "$c" != none ]; then
    rule_of "$c" >"$d/rules/10_bench.lua"
    rules="rules = { dir = \"$d/rules\", cpu_budget_ms = 1000, jit = $jit },"
  fi
  # the two-output case routes by a payload field to eur or other
  case $c in payload_two*) outs=eur,other ;; esac
  for o in ${outs//,/ }; do ocfg="$ocfg{ name = \"$o\", type = \"null\" }, "; done
  cat >"$d/conf.lua" <<EOC
return {
  inputs = { { name = "bench", type = "tcp", listen = "127.0.0.1:$port" } },
  outputs = { $ocfg},
  routes = { { topics = "*", to = "${outs%%,*}" } },
  $rules
  admin = { listen = "127.0.0.1:$admin" },
}
EOC
  valgrind --tool=callgrind --callgrind-out-file="$d/cg.out" \
    "$SLUICE" run -c "$d/conf.lua" >"$d/out" 2>"$d/err" &
  pid=$!
  for i in $(seq 600); do
    curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat "$d/err" >&2; return 1; }
    sleep 0.2
  done
  "$LOADGEN" --to "127.0.0.1:$port" --events "$n" --metrics "127.0.0.1:$admin" \
    --output "$outs" --timeout 600 >/dev/null
  # valgrind's pid is the engine's: SIGTERM drains and exits
  kill -TERM "$pid"
  wait "$pid" || true
  sed -n 's/^summary: //p' "$d/cg.out"
}

printf '%-18s %14s\n' case "instr/event"
for c in ${INSTR_CASES:-none topic topic_jit payload_read payload_write payload_write_jit payload_two header}; do
  a=$(run_one "$c" "$SMALL")
  b=$(run_one "$c" "$LARGE")
  awk -v c="$c" -v a="$a" -v b="$b" -v n=$((LARGE - SMALL)) \
    'BEGIN { printf "%-18s %14.0f\n", c, (b - a) / n }'
done
