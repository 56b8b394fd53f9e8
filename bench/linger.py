#!/usr/bin/env python3
"""300 clients at once each declare a body over the limit and keep sending
for 8 s (the lingering close after a 413), while one client keeps asking for
a page: every attacker must get its 413, the page must keep answering, and
what the connections held must be given back.

    cargo build --release -p orchestrator -p bench-backend
    python3 bench/linger.py          # ORCHESTRATOR_BIN=path for another build
"""
import os, sys, time, socket, threading, tempfile, http.client
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R, scale as S  # noqa: E402
RELEASE = os.path.join(R.ROOT, "target", "release")
tmp = tempfile.mkdtemp(prefix="linger-"); os.chmod(tmp, 0o755)
log = open(os.path.join(tmp, "log"), "w")
backend = R.free_port()
R.start([os.path.join(RELEASE, "bench-backend"), f"127.0.0.1:{backend}"], R.LOAD_CPU, log)
R.wait_ok(f"http://127.0.0.1:{backend}/hello", "backend")
public, internal = R.free_port(), R.free_port()
env = dict(os.environ, DATA_DIR=os.path.join(tmp, "data"), PUBLIC_ADDR=f"127.0.0.1:{public}",
           INTERNAL_ADDR=f"127.0.0.1:{internal}", RUST_LOG="warn", MAIN_DOMAIN="localhost", MAX_BODY_SIZE="1MiB")
p = R.start([os.environ.get("ORCHESTRATOR_BIN") or os.path.join(RELEASE, "orchestrator")], R.PROXY_CPU, log, env=env)
while R.get(f"http://127.0.0.1:{internal}/__internal/health") != 204: time.sleep(0.3)
S.hello(S.hello_conn(internal), "app", f"127.0.0.1:{backend}")
R.wait_ok(f"http://127.0.0.1:{public}/app/hello", "app")
rss0 = R.memory_kib([p.pid], "VmRSS")
stop = time.time() + 8
got = {"413": 0, "other": 0, "err": 0, "sent": 0}
lock = threading.Lock()
chunk = b"x" * 65536
def attack():
    try:
        s = socket.create_connection(("127.0.0.1", public))
        s.sendall(b"POST /app/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000000\r\n\r\n")
        s.settimeout(0.5)
        sent = 0
        while time.time() < stop:
            try:
                s.sendall(chunk); sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                break
        s.settimeout(10)
        data = b""
        try:
            data = s.recv(200)
        except OSError:
            pass
        with lock:
            got["sent"] += sent
            got["413" if b" 413 " in data else "other"] += 1
    except OSError:
        with lock: got["err"] += 1
ts = [threading.Thread(target=attack) for _ in range(300)]
[t.start() for t in ts]
lat = []; fails = 0; peak = rss0; fds = 0
c = http.client.HTTPConnection("127.0.0.1", public, timeout=10)
while time.time() < stop:
    t0 = time.perf_counter()
    try:
        c.request("GET", "/app/hello", headers={"Host": "localhost"}); r = c.getresponse(); r.read()
        if r.status != 200: fails += 1
    except Exception:
        fails += 1; c = http.client.HTTPConnection("127.0.0.1", public, timeout=10)
    lat.append((time.perf_counter() - t0) * 1e3)
    peak = max(peak, R.memory_kib([p.pid], "VmRSS")); fds = max(fds, len(os.listdir(f"/proc/{p.pid}/fd")))
    time.sleep(0.05)
[t.join() for t in ts]
lat.sort()
print(f"attackers: {got}; GETs meanwhile: {len(lat)}, failed {fails}, p50 {lat[len(lat)//2]:.2f} ms, max {lat[-1]:.2f} ms; RSS {rss0/1024:.1f} -> peak {peak/1024:.1f} MiB; fds peak {fds}")
time.sleep(6)
print("after: RSS", R.memory_kib([p.pid], "VmRSS")/1024, "MiB, fds", len(os.listdir(f"/proc/{p.pid}/fd")))
R.stop_all()
