#!/usr/bin/env bash
# The scale benchmark: builds release binaries, then runs bench/scale.py.
#   bash bench/scale.sh [--waifus 10000] [--hellos 1000] [--seconds 5] [--rounds 8] [--data-in DIR]
# Needs wrk (Debian: apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p orchestrator -p bench-backend
exec python3 bench/scale.py "$@"
