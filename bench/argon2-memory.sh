#!/usr/bin/env bash
# Resident memory of the orchestrator around a burst of database calls.
#
#   bash bench/argon2-memory.sh [CALLS] [AT_ONCE]     (default 1000, 20)
#
# A secret that is not remembered as verified is checked with Argon2id,
# which fills 19 MiB. Builds the release binary, starts the orchestrator
# (on its managed PostgreSQL, in a temporary DATA_DIR), claims CALLS/4
# names (one Argon2 hash each), then makes CALLS database calls, AT_ONCE at
# a time, each with a different wrong secret, four per name and each from
# its own loopback address: every one is a real Argon2 verification (a
# wrong secret is never remembered, and no name or address reaches its
# lockout, so none is answered 429 without a check). Prints VmRSS before
# and after and VmHWM from /proc; then waits for the hashing threads' idle
# release (30 s) and prints VmRSS again. Everything it starts is stopped
# on exit.
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
names = max(1, calls // 4)
for n in range(names):
    body = json.dumps({"name": f"bench-{n}", "host": "127.0.0.1:9", "secret": f"right-{n}"}).encode()
    assert call("/__internal/hello", body) == 200
after_claims = vm("VmRSS")
jobs = [(f"bench-{i % names}", f"wrong-{i}", f"127.0.{1 + i // 250}.{1 + i % 250}") for i in range(calls)]
answers, lock = {}, threading.Lock()
def call_from(source, path, body):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", int(internal), timeout=30, source_address=(source, 0))
    try:
        conn.request("POST", path, body, {"content-type": "application/json"})
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()
def worker():
    while True:
        with lock:
            if not jobs: return
            name, secret, source = jobs.pop()
        status = call_from(source, "/__internal/database", json.dumps({"name": name, "secret": secret}).encode())
        with lock: answers[status] = answers.get(status, 0) + 1
t0 = time.time()
threads = [threading.Thread(target=worker) for _ in range(at_once)]
for t in threads: t.start()
for t in threads: t.join()
took = time.time() - t0
after, peak = vm("VmRSS"), vm("VmHWM")
checked = answers.get(403, 0)
print(f"{calls} database calls with distinct wrong secrets over {names} names, {at_once} at a time, "
      f"in {took:.1f} s ({calls / took:.0f}/s): {checked} verified by Argon2 and refused (403), "
      f"other answers {({k: v for k, v in answers.items() if k != 403})}")
print(f"RSS idle {idle / 1024:.1f} MiB, after {names} claims {after_claims / 1024:.1f} MiB, "
      f"after all {after / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB: "
      f"{(peak - idle) / 1024:.1f} MiB above idle (bound 48)")
time.sleep(35)
print(f"RSS 35 s later: {vm('VmRSS') / 1024:.1f} MiB")
PY
