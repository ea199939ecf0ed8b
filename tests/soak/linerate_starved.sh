#!/usr/bin/env bash
# tests/soak/linerate_starved.sh - the line-rate case "rule on ev.topic"
# (tests/bench/linerate.sh: native tcp -> a rule -> null, the loadgen over
# STARVE_CONNS connections, no acks) run again and again for at most
# STARVE_SECONDS (default 240) under CPU starvation, keeping for every run
# the engine's log and its /metrics at the end. A run passes when the
# loadgen saw every event delivered and the engine's counters agree:
# events read = events delivered = events sent, and nothing refused, shed,
# timed out, bad, dropped or failed. A failing run's folder is kept (its
# path printed) and the script exits 1; passing runs' folders are removed.
#
# Starvation, one kind per run in turn:
#   quota  the engine in a cpu cgroup (v1 cpu.cfs_quota_us or v2 cpu.max)
#          allowed STARVE_QUOTA_PCT (25) % of one CPU per 100 ms: it is
#          stopped for most of each period, so the sockets fill and reads
#          and pauses fall at other places than on an idle machine
#   pinned engine (nice 10) and loadgen share one CPU with one busy loop
#   both   the quota and the pinning
# Without a writable cpu cgroup the quota is skipped (said once). The busy
# loop runs only during pinned runs, on one CPU, so the shared machine
# keeps its other CPU.
#
#   STARVE_SECONDS=120 STARVE_EVENTS=500000 tests/soak/linerate_starved.sh
#   SLUICE=build-asan/sluice ASAN_OPTIONS=detect_leaks=0 tests/soak/linerate_starved.sh
# The loadgen is told the engine's pid: an engine that dies mid-run (a
# crash) fails the run at once (loadgen exit 5), its log and status kept.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
BUILD=${BUILD:-build}
SLUICE=${SLUICE:-$PWD/$BUILD/sluice} # e.g. an ASan build's
LOADGEN=${LOADGEN:-$PWD/$BUILD/tools/loadgen}
SECONDS_MAX=${STARVE_SECONDS:-240}
EVENTS=${STARVE_EVENTS:-2000000}
CONNS=${STARVE_CONNS:-4}
QUOTA_PCT=${STARVE_QUOTA_PCT:-25}
RUN_TIMEOUT=${STARVE_RUN_TIMEOUT:-120}
KEEP=${STARVE_KEEP:-$(mktemp -d "${TMPDIR:-/tmp}/sluice-starved.XXXXXX")}
CG=
BUSY=
ENGINE=

for f in "$SLUICE" "$LOADGEN"; do
  [ -x "$f" ] || { echo "starved: $f is not built (run make)" >&2; exit 2; }
done

rule_topic='return { on_event = function(ev)
  if ev.topic == "audit.login" then return sluice.drop("never") end
  return "out"
end }'

# A cpu cgroup the engine can be put in; sets CG to its folder.
cgroup_make() {
  local base
  for base in /sys/fs/cgroup/cpu /sys/fs/cgroup; do
    if [ -w "$base" ] && { [ -f "$base/cpu.cfs_quota_us" ] || [ -f "$base/cpu.max" ]; }; then
      CG=$base/sluice-starved.$$
      mkdir "$CG" 2>/dev/null || { CG=; continue; }
      if [ -f "$CG/cpu.cfs_quota_us" ]; then
        echo 100000 >"$CG/cpu.cfs_period_us" &&
          echo $((QUOTA_PCT * 1000)) >"$CG/cpu.cfs_quota_us" && return 0
      elif echo "$((QUOTA_PCT * 1000)) 100000" >"$CG/cpu.max"; then
        return 0
      fi
      rmdir "$CG" 2>/dev/null
      CG=
    fi
  done
  echo "starved: no writable cpu cgroup; quota runs are pinned runs" >&2
  return 1
}

busy_stop() {
  if [ -n "$BUSY" ]; then
    kill "$BUSY" 2>/dev/null
    wait "$BUSY" 2>/dev/null
    BUSY=
  fi
}

cleanup() {
  busy_stop
  if [ -n "$ENGINE" ]; then
    kill -KILL "$ENGINE" 2>/dev/null
    wait "$ENGINE" 2>/dev/null
  fi
  if [ -n "$CG" ]; then
    # the engine is gone: the group is empty
    rmdir "$CG" 2>/dev/null
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# metric NAME_WITH_LABELS FILE: its value (0 when absent).
metric() {
  awk -v k="$1" 'index($0, k " ") == 1 { print $2; found = 1; exit }
    END { if (!found) print 0 }' "$2"
}

# sum_metric PREFIX FILE: the sum of every series whose line starts PREFIX.
sum_metric() {
  awk -v k="$1" 'index($0, k) == 1 { s += $NF } END { printf "%d\n", s }' "$2"
}

# run N KIND: one run; 0 when it passed.
run() {
  local n=$1 kind=$2 dir port admin rc=0 lg_rc pin='' i
  dir=$KEEP/run-$n-$kind
  mkdir -p "$dir/rules"
  printf '%s\n' "$rule_topic" >"$dir/rules/10_bench.lua"
  port=$("$LOADGEN" --free-port)
  admin=$("$LOADGEN" --free-port)
  while [ "$admin" = "$port" ]; do admin=$("$LOADGEN" --free-port); done
  cat >"$dir/sluice.conf.lua" <<EOF
return {
  log_level = "debug",
  inputs = { { name = "bench", type = "tcp", listen = "127.0.0.1:$port" } },
  outputs = { { name = "out", type = "null" } },
  routes = { { topics = "*", to = "out" } },
  rules = { dir = "$dir/rules" },
  admin = { listen = "127.0.0.1:$admin" },
}
EOF
  case $kind in pinned | both) pin="taskset -c 0" ;; esac
  # shellcheck disable=SC2086 # pin is a command prefix or nothing
  $pin nice -n "$([ -n "$pin" ] && echo 10 || echo 0)" "$SLUICE" run \
    -c "$dir/sluice.conf.lua" >"$dir/engine.stdout" 2>"$dir/engine.log" &
  ENGINE=$!
  if [ -n "$CG" ] && [ "$kind" != pinned ]; then
    echo "$ENGINE" >"$CG/cgroup.procs" 2>/dev/null ||
      echo "$ENGINE" >"$CG/tasks"
  fi
  for ((i = 0; i < 3000; i++)); do
    grep -q '"sluice started"' "$dir/engine.log" 2>/dev/null && break
    kill -0 "$ENGINE" 2>/dev/null || break
    sleep 0.01
  done
  if ! grep -q '"sluice started"' "$dir/engine.log"; then
    echo "starved: run $n: the engine did not start; see $dir" >&2
    return 1
  fi
  if [ -n "$pin" ]; then
    taskset -c 0 sh -c 'while :; do :; done' &
    BUSY=$!
  fi
  # shellcheck disable=SC2086
  $pin "$LOADGEN" --to "127.0.0.1:$port" --events "$EVENTS" --conns "$CONNS" \
    --metrics "127.0.0.1:$admin" --output out --pid "$ENGINE" \
    --timeout "$RUN_TIMEOUT" >"$dir/loadgen.out" 2>"$dir/loadgen.err"
  lg_rc=$?
  busy_stop
  curl -s --max-time 30 "http://127.0.0.1:$admin/metrics" >"$dir/metrics.txt"
  kill -TERM "$ENGINE" 2>/dev/null
  wait "$ENGINE" 2>/dev/null
  echo $? >"$dir/engine.status"
  ENGINE=
  check "$n" "$kind" "$dir" "$lg_rc" || rc=1
  if [ $rc = 0 ]; then rm -rf "$dir"; fi
  return $rc
}

# check N KIND DIR LOADGEN_RC: compare the loadgen's result and the
# engine's counters; print one line.
check() {
  local n=$1 kind=$2 dir=$3 lg_rc=$4 m=$3/metrics.txt in out refused timed bad
  local dropped rerr abandoned conns why=''
  in=$(metric 'sluice_input_events_total{input="bench"}' "$m")
  out=$(metric 'sluice_output_events_total{output="out"}' "$m")
  refused=$(sum_metric 'sluice_listener_connections_refused_total{listener="bench"' "$m")
  timed=$(metric 'sluice_listener_connections_timed_out_total{listener="bench",type="tcp"}' "$m")
  bad=$(metric 'sluice_input_bad_total{input="bench"}' "$m")
  abandoned=$(metric 'sluice_input_abandoned_total{input="bench"}' "$m")
  dropped=$(sum_metric 'sluice_events_dropped_total' "$m")
  rerr=$(sum_metric 'sluice_rule_errors_total' "$m")
  conns=$(metric 'sluice_input_connections_total{input="bench"}' "$m")
  [ "$lg_rc" = 0 ] || why="$why loadgen exit $lg_rc ($(tail -n 3 "$dir/loadgen.err" | tr '\n' ' '));"
  [ "$in" = "$EVENTS" ] || why="$why read $in of $EVENTS;"
  [ "$out" = "$EVENTS" ] || why="$why delivered $out of $EVENTS;"
  [ "$refused" = 0 ] || why="$why listener refused/shed $refused;"
  [ "$timed" = 0 ] || why="$why timed out $timed;"
  [ "$bad" = 0 ] || why="$why bad input $bad;"
  [ "$abandoned" = 0 ] || why="$why abandoned $abandoned;"
  [ "$dropped" = 0 ] || why="$why dropped $dropped;"
  [ "$rerr" = 0 ] || why="$why rule errors $rerr;"
  [ "$conns" = "$CONNS" ] || why="$why $conns connections (not $CONNS);"
  # a clean stop exits 0; a crash or a sanitizer's report does not
  [ "$(cat "$dir/engine.status")" = 0 ] ||
    why="$why engine exit status $(cat "$dir/engine.status");"
  if [ -n "$why" ]; then
    echo "run $n ($kind): FAILED:$why kept in $dir"
    return 1
  fi
  echo "run $n ($kind): ok, $(tr ' ' '\n' <"$dir/loadgen.out" |
    grep -E '^(events_per_s|seconds)=' | tr '\n' ' ')"
}

cgroup_make || true
start=$(date +%s)
n=0
failures=0
kinds="quota pinned both"
while [ $(($(date +%s) - start)) -lt "$SECONDS_MAX" ]; do
  for kind in $kinds; do
    [ $(($(date +%s) - start)) -lt "$SECONDS_MAX" ] || break
    if [ -z "$CG" ] && [ "$kind" != pinned ]; then continue; fi
    n=$((n + 1))
    run "$n" "$kind" || failures=$((failures + 1))
  done
done
echo "starved: $n runs in $(($(date +%s) - start)) s, $failures failed" \
  "(logs and metrics of failed runs under $KEEP)"
[ "$failures" = 0 ] && rmdir "$KEEP" 2>/dev/null
[ "$failures" = 0 ]
