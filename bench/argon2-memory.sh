#!/usr/bin/env bash
# Resident memory of the orchestrator around a burst of database calls.
#
#   bash bench/argon2-memory.sh [CALLS] [AT_ONCE]     (default 1000, 20)
#
# Every call to /__internal/database checks the waifu's secret with
# Argon2id, which fills 19 MiB. Builds the release binary, starts the
# orchestrator (on its managed PostgreSQL, in a temporary DATA_DIR), makes
# one call (which provisions the database), then CALLS more, AT_ONCE at a
# time, and prints VmRSS before and after and VmHWM from /proc; then waits
# for the hashing threads' idle release (30 s) and prints VmRSS again.
# Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
calls=${1:-1000}
at_once=${2:-20}
cargo build --release -q -p orchestrator
dir=$(mktemp -d /tmp/waifus-argon2mem.XXXXXX)
chmod 755 "$dir"
pid=
cleanup() {
    if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pub=$(free_port); int=$(free_port)
DATA_DIR="$dir/data" PUBLIC_ADDR=127.0.0.1:$pub INTERNAL_ADDR=127.0.0.1:$int \
    target/release/orchestrator 2>"$dir/orchestrator.log" & pid=$!
python3 - "$int" "$pid" "$calls" "$at_once" <<'PY'
import json, sys, threading, time, urllib.request, urllib.error
internal, pid, calls, at_once = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def vm(field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
def call(path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{internal}{path}", data=body,
                                 method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r: return r.status
    except urllib.error.HTTPError as e: return e.code
    except OSError: return None
deadline = time.time() + 120
while call("/__internal/health") != 204:
    if time.time() > deadline: sys.exit("the orchestrator never became ready")
    time.sleep(0.2)
idle = vm("VmRSS")
body = json.dumps({"name": "bench", "secret": "bench-secret"}).encode()
assert call("/__internal/database", body) == 200
after_first = vm("VmRSS")
left, failed, lock = [calls], [], threading.Lock()
def worker():
    while True:
        with lock:
            if left[0] == 0: return
            left[0] -= 1
        status = call("/__internal/database", body)
        if status != 200: failed.append(status)
t0 = time.time()
threads = [threading.Thread(target=worker) for _ in range(at_once)]
for t in threads: t.start()
for t in threads: t.join()
took = time.time() - t0
after, peak = vm("VmRSS"), vm("VmHWM")
print(f"{calls} database calls, {at_once} at a time, in {took:.1f} s ({calls / took:.0f}/s), {len(failed)} failed")
print(f"RSS idle {idle / 1024:.1f} MiB, after the first call {after_first / 1024:.1f} MiB, "
      f"after all {after / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB: "
      f"{(peak - idle) / 1024:.1f} MiB above idle (bound 48)")
time.sleep(35)
print(f"RSS 35 s later: {vm('VmRSS') / 1024:.1f} MiB")
PY
