#!/bin/sh
# make soak: long runs that do not belong in `make test`.
set -e
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
SLUICE_BIN=$BUILD/sluice /usr/bin/python3 tests/soak/reload_soak.py
# the line-rate topic-rule case under CPU starvation, logs kept on failure
BUILD=$BUILD tests/soak/linerate_starved.sh
