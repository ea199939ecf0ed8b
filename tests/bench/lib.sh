# shellcheck shell=bash
# tests/bench/lib.sh - helpers shared by the benchmark sections; sourced by
# tests/bench/run.sh (and by section scripts that want them). Needs BUILD,
# WORK (a scratch folder) and RUNS set; defines SLUICE and LOADGEN.
#
#   bench_free_port               a free TCP port on 127.0.0.1
#   engine_start NAME CONFIG      write CONFIG (Lua text) to a fresh folder,
#                                 start the engine, wait for "sluice started";
#                                 sets ENGINE_PID and ENGINE_DIR
#   engine_stop                   SIGTERM, wait (SIGKILL after 30 s); returns
#                                 the engine's exit code
#   engine_hwm_mb                 the engine's peak RSS (VmHWM) in MB
#   engine_failed                 a run failed: stop the engine and show its
#                                 warnings, errors and output totals (the
#                                 scratch folder with its log goes at exit)
#   bench_repeat CASE FN [ARGS]   run FN RUNS times; FN prints one line with
#                                 events=N events_per_s=X mb_per_s=Y rss_mb=Z;
#                                 prints the medians as a table row
#   bench_row CASE EVENTS EPS MBPS RSS_MB   print a table row ("row|..."),
#                                 which run.sh collects into its table
#   bench_runs CASE FN [ARGS]     run FN RUNS times, each line shown on
#                                 stderr and kept in $WORK/runs
#   bench_median KEY              the median of KEY=value over $WORK/runs

SLUICE=${SLUICE:-$PWD/$BUILD/sluice}
LOADGEN=${LOADGEN:-$PWD/$BUILD/tools/loadgen}
ENGINE_PID=
ENGINE_DIR=
_engine_seq=0

# A port nothing listens on now and never one given before in this run
# (noted in a file in $WORK: each call runs in a subshell): the kernel
# may hand one ephemeral port to two calls in a row, and a config then got
# it twice ("admin.listen: ... address already in use", seen in make test).
bench_free_port() {
  local p i=0 given=${WORK:-${TMPDIR:-/tmp}}/sluice-ports.given.$$
  while [ $i -lt 100 ]; do
    p=$("$LOADGEN" --free-port) || return 1
    if ! grep -qx "$p" "$given" 2>/dev/null; then
      echo "$p" >>"$given"
      echo "$p"
      return 0
    fi
    i=$((i + 1))
  done
  echo "bench: no fresh free port in 100 tries" >&2
  return 1
}

engine_start() {
  local name=$1 config=$2 i=0
  _engine_seq=$((_engine_seq + 1))
  ENGINE_DIR=$WORK/$name.$_engine_seq
  mkdir -p "$ENGINE_DIR"
  printf '%s\n' "$config" >"$ENGINE_DIR/sluice.conf.lua"
  # RT_CMD (unquoted: empty, or e.g. "chrt -f 10", which execs the engine
  # under SCHED_FIFO with the same pid): see linerate.sh's latency
  ${RT_CMD:-} "$SLUICE" run -c "$ENGINE_DIR/sluice.conf.lua" >"$ENGINE_DIR/stdout" \
    2>"$ENGINE_DIR/stderr" &
  ENGINE_PID=$!
  until grep -q '"sluice started"' "$ENGINE_DIR/stderr" 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 1000 ] || ! kill -0 "$ENGINE_PID" 2>/dev/null; then
      echo "bench: the engine did not start:" >&2
      cat "$ENGINE_DIR/stderr" >&2
      return 1
    fi
    sleep 0.01
  done
}

engine_stop() {
  local i=0 rc=0
  [ -n "$ENGINE_PID" ] || return 0
  kill -TERM "$ENGINE_PID" 2>/dev/null || true
  while kill -0 "$ENGINE_PID" 2>/dev/null && [ $i -lt 3000 ]; do
    sleep 0.01
    i=$((i + 1))
  done
  kill -KILL "$ENGINE_PID" 2>/dev/null || true
  wait "$ENGINE_PID" || rc=$?
  ENGINE_PID=
  return $rc
}

engine_failed() {
  local log=$ENGINE_DIR/stderr rc=0
  engine_stop >/dev/null 2>&1 || rc=$?
  [ -n "$ENGINE_DIR" ] && [ -f "$log" ] || return 0
  # a crash (128 + signal) leaves no line in the log: its status says it
  echo "bench: the run failed; the engine exited with status $rc" \
    "$([ $rc -gt 128 ] && echo "(signal $((rc - 128)), before our SIGTERM if not 15)")" \
    "; its warnings, errors and totals (from $log):" >&2
  grep -E '"level":"(warn|error)"|"msg":"output totals"' "$log" |
    tail -n 40 >&2 || echo "  (none)" >&2
}

engine_hwm_mb() {
  awk '/^VmHWM:/ { printf "%.1f\n", $2 / 1024 }' "/proc/$ENGINE_PID/status"
}

# the value of key=value in a line
kv() {
  printf '%s\n' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1
}

median() {
  sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2];
                                      else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

bench_row() {
  printf 'row|%s|%s|%s|%s|%s\n' "$@"
}

bench_runs() {
  local case=$1 fn=$2 r line
  shift 2
  : >"$WORK/runs"
  for r in $(seq 1 "$RUNS"); do
    line=$("$fn" "$@") || { echo "bench: $case: run $r failed" >&2; return 1; }
    printf '  %-34s run %d: %s\n' "$case" "$r" "$line" >&2
    printf '%s\n' "$line" >>"$WORK/runs"
  done
}

bench_median() {
  while read -r l; do kv "$1" "$l"; done <"$WORK/runs" | median
}

bench_repeat() {
  local case=$1
  bench_runs "$@" || return 1
  bench_row "$case" "$(kv events "$(tail -n 1 "$WORK/runs")")" \
    "$(bench_median events_per_s)" "$(bench_median mb_per_s)" \
    "$(bench_median rss_mb)"
}
