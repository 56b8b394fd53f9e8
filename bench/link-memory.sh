#!/usr/bin/env bash
# Resident memory of the `link` waifu under light load, and its binary size.
#
#   bash bench/link-memory.sh
#
# Builds release binaries, starts the orchestrator (on its managed PostgreSQL,
# in a temporary DATA_DIR) and `link` on loopback, sends light load (4 clients,
# 2,000 requests: a tenth create links, the rest follow them), then prints
# link's RSS (VmRSS) and peak RSS (VmHWM) from /proc, and the binary size.
# Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p orchestrator -p link
dir=$(mktemp -d /tmp/waifus-linkmem.XXXXXX)
chmod 755 "$dir"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pub=$(free_port); int=$(free_port); lp=$(free_port)
DATA_DIR="$dir/data" PUBLIC_ADDR=127.0.0.1:$pub INTERNAL_ADDR=127.0.0.1:$int HEALTH_INTERVAL=1s \
    target/release/orchestrator 2>"$dir/orchestrator.log" & pids+=($!)
ORCHESTRATOR_URL=http://127.0.0.1:$int WAIFU_NAME=link WAIFU_HOST=127.0.0.1:$lp PORT=$lp \
    LISTEN_ADDR=127.0.0.1 WAIFU_SECRET=bench-secret RUST_LOG=warn \
    target/release/link 2>"$dir/link.log" & link_pid=$!; pids+=($link_pid)
python3 - "$pub" <<'PY'
import json, sys, threading, time, urllib.request, urllib.error
base = f"http://127.0.0.1:{sys.argv[1]}"
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k): return None
opener = urllib.request.build_opener(NoRedirect)
def call(method, path, body=None):
    req = urllib.request.Request(base + path, data=body, method=method,
                                 headers={"Host": "localhost", "Content-Type": "application/json"})
    try:
        with opener.open(req, timeout=10) as r: return r.status, r.read()
    except urllib.error.HTTPError as e: return e.code, e.read()
    except OSError: return None, b""
deadline = time.time() + 120
while call("POST", "/link/link", b'{"url":"https://example.com/warmup"}')[0] != 201:
    if time.time() > deadline: sys.exit("link never became reachable")
    time.sleep(0.5)
codes, errors = [], []
def client(n):
    for i in range(n):
        if i % 10 == 0:
            s, b = call("POST", "/link/link", json.dumps({"url": f"https://example.com/{i}"}).encode())
            if s == 201: codes.append(json.loads(b)["code"])
            else: errors.append(s)
        elif codes:
            s, _ = call("GET", "/link/link/" + codes[i % len(codes)])
            if s != 302: errors.append(s)
threads = [threading.Thread(target=client, args=(500,)) for _ in range(4)]
t0 = time.time()
for t in threads: t.start()
for t in threads: t.join()
print(f"load: 2000 requests in {time.time()-t0:.1f} s, {len(errors)} errors")
PY
grep -E 'VmRSS|VmHWM' /proc/$link_pid/status
size=$(stat -c %s target/release/link)
stripped=$(strip -o "$dir/link.stripped" target/release/link && stat -c %s "$dir/link.stripped")
echo "binary: target/release/link $((size / 1024)) KiB ($((stripped / 1024)) KiB stripped)"
