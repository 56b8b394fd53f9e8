#!/usr/bin/env bash
# Instructions per proxied request in the orchestrator, counted by callgrind
# (repeatable whatever else the machine does): N keep-alive GETs through the
# public port to bench-backend, minus a run of M, divided by N - M.
#
#   cargo build --release -p orchestrator -p bench-backend
#   bash bench/callgrind.sh [N=2500] [M=500]      # extra settings from the environment
#
# The orchestrator runs on its managed PostgreSQL (a child, not counted).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2500}
M=${2:-500}
bin=${ORCHESTRATOR_BIN:-target/release/orchestrator}
backend=target/release/bench-backend
free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() {
    local count=$1 dir
    dir=$(mktemp -d)
    local public internal bport
    public=$(free); internal=$(free); bport=$(free)
    "$backend" "127.0.0.1:$bport" >/dev/null 2>&1 &
    local bpid=$!
    DATA_DIR="$dir/data" PUBLIC_ADDR="127.0.0.1:$public" INTERNAL_ADDR="127.0.0.1:$internal" \
        WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" \
        "$bin" >"$dir/log" 2>&1 &
    local opid=$!
    for _ in $(seq 600); do
        curl -fs "http://127.0.0.1:$internal/__internal/health" >/dev/null 2>&1 && break
        sleep 0.5
    done
    curl -fs -X POST "http://127.0.0.1:$internal/__internal/hello" \
        -d "{\"name\":\"b\",\"host\":\"127.0.0.1:$bport\"}" >/dev/null
    python3 - "$public" "$count" <<'PY'
import http.client, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
deadline = time.time() + 120
while True:
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("GET", "/b/", headers={"Host": "localhost"})
    r = c.getresponse(); r.read()
    if r.status == 200: break
    if time.time() > deadline: sys.exit("never routable")
    time.sleep(0.2)
for _ in range(n):
    c.request("GET", "/b/", headers={"Host": "localhost"})
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
    kill -TERM "$opid"; wait "$opid" || true
    kill "$bpid" 2>/dev/null || true
    grep -E '^(summary|totals):' "$dir/cg.out" | head -1 | awk '{print $2}'
    rm -rf "$dir"
}

big=$(run "$N")
small=$(run "$M")
echo "instructions: $big for $N requests, $small for $M; per request: $(( (big - small) / (N - M) ))"
