#!/usr/bin/env bash
# tests/bench/tls.sh - `make bench` section: sluice -> sluice (native tcp
# output with acks into a native tcp input), plain and over mTLS, one after
# the other so the two rows compare runs made on the same (noisy) machine.
# The loadgen writes to the edge and counts what the central's null output
# delivered through its /metrics.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh
CONNS=${BENCH_CONNS:-1}
certs=$WORK/tls-certs

make_certs() {
  local key="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
  mkdir -p "$certs"
  cd "$certs"
  # shellcheck disable=SC2086 # $key is several options
  {
    openssl req -x509 $key -keyout ca.key -out ca.pem -days 2 -subj /CN=bench-ca
    openssl req $key -keyout central.key -out central.csr -subj /CN=central
    echo "subjectAltName=IP:127.0.0.1" >central.ext
    openssl x509 -req -in central.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
      -days 2 -extfile central.ext -out central.pem
    openssl req $key -keyout edge.key -out edge.csr -subj /CN=edge
    openssl x509 -req -in edge.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
      -days 2 -out edge.pem
  } >/dev/null 2>&1
  cd - >/dev/null
}

# run_pair MODE: one run, MODE plain or tls.
run_pair() {
  local port admin cport line central_pid in_tls="" out_tls=""
  if [ "$1" = tls ]; then
    in_tls="tls = { cert_file = \"$certs/central.pem\", key_file = \"$certs/central.key\",
                    client_ca_file = \"$certs/ca.pem\" },"
    out_tls="tls = { ca_file = \"$certs/ca.pem\", cert_file = \"$certs/edge.pem\",
                     key_file = \"$certs/edge.key\" },"
  fi
  cport=$(bench_free_port)
  admin=$(bench_free_port)
  engine_start "central-$1" "return {
  inputs = { { name = \"edges\", type = \"tcp\", listen = \"127.0.0.1:$cport\", $in_tls } },
  outputs = { { name = \"out\", type = \"null\" } },
  routes = { { topics = \"*\", to = \"out\" } },
  admin = { listen = \"127.0.0.1:$admin\" },
}" || return 1
  central_pid=$ENGINE_PID
  port=$(bench_free_port)
  engine_start "edge-$1" "return {
  inputs = { { name = \"bench\", type = \"tcp\", listen = \"127.0.0.1:$port\" } },
  outputs = { { name = \"central\", type = \"tcp\", address = \"127.0.0.1:$cport\",
                ack = true, $out_tls } },
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

run_plain() { run_pair plain; }
run_tls() { run_pair tls; }

command -v openssl >/dev/null || { echo "tls: openssl missing, skipped"; exit 0; }
make_certs
bench_repeat "sluice -> sluice, plain tcp" run_plain
bench_repeat "sluice -> sluice, mTLS" run_tls
