#!/usr/bin/env bash
# The deploy benchmark: builds release binaries, then runs bench/deploy.py.
#   bash bench/deploy.sh [--rounds 3] [--seconds 12] [--goodbyes 200]
# Needs wrk (Debian: apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p orchestrator -p hello
exec python3 bench/deploy.py "$@"
