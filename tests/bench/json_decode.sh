#!/usr/bin/env bash
# tests/bench/json_decode.sh - `make bench` section: rules' sluice.json.decode
# (the engine's JSON reader, then the msgpack -> Lua decoder) in us per call.
set -euo pipefail
BUILD=${BUILD:-build} luajit tests/bench/json_decode.lua
