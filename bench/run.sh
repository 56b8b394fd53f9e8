#!/usr/bin/env bash
# The proxy benchmark: builds release binaries, then runs bench/run.py.
#   bash bench/run.sh [--seconds 8] [--rounds 3] [--conns 64,256]
# Needs nginx, haproxy, caddy and wrk (Debian: apt-get install nginx haproxy caddy wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p orchestrator -p bench-backend
exec python3 bench/run.py "$@"
