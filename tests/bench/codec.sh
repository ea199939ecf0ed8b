#!/usr/bin/env bash
# tests/bench/codec.sh - `make bench` section: the msgpack write paths in
# instructions per encode, counted by callgrind (not timed: the count does
# not depend on what else runs on the machine). CODEC_N encodes per case.
set -euo pipefail
BUILD=${BUILD:-build}
N=${CODEC_N:-20000}
bin="$BUILD/tools/codec_bench"
command -v valgrind >/dev/null || { echo "codec: valgrind missing, skipped"; exit 0; }
[ -x "$bin" ] || { echo "codec: $bin is not built (run make)" >&2; exit 1; }
out=$(mktemp "${TMPDIR:-/tmp}/sluice-codec.XXXXXX")
trap 'rm -f "$out"' EXIT
printf '%-6s %12s\n' case "instr/encode"
for c in event json lua ack puts; do
  valgrind --tool=callgrind --toggle-collect=run_case \
    --callgrind-out-file="$out" "$bin" "$c" "$N" >/dev/null 2>&1
  ir=$(sed -n 's/^summary: //p' "$out")
  # run_case runs N + 1 times (the first encode is the reference)
  awk -v c="$c" -v ir="$ir" -v n="$N" 'BEGIN { printf "%-6s %12.1f\n", c, ir / (n + 1) }'
done
