#!/usr/bin/env python3
"""Scale benchmark (issue 5): routing with 10,000 waifus and binds, hello to
routable latency, and health-check rounds under load.

    bash bench/scale.sh          # builds release binaries, then runs this

1. Throughput and p99 through the orchestrator with one waifu registered.
2. 10,000 more waifus registered, each with its own bind host; every one is
   health-checked (HEALTH_INTERVAL 5 s, so each load run spans rounds over
   10,000 instances). Throughput and p99 again, through the main domain and
   through a bind; ratios to step 1.
3. 1,000 hellos of new waifus, one at a time: the time from sending the hello
   to the first 200 through the proxy (hello, first health check, publish).

The orchestrator runs pinned to CPU 0; wrk, the backend and this script to CPU 1.
Runs (with baseline and loaded rounds interleaved) take about 3 minutes.
"""

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402  (shared helpers: start, wrk, get, free_port, ...)


def hello_conn(port):
    return http.client.HTTPConnection("127.0.0.1", port, timeout=10)


def hello(conn, name, host, binds=None):
    body = {"name": name, "host": host}
    if binds:
        body["additionalBinds"] = binds
    conn.request("POST", "/__internal/hello", json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        sys.exit(f"hello {name}: {r.status} {data[:200]!r}")
    answer = json.loads(data)
    refused = [b for b in answer["binds"] if not b["accepted"]]
    if refused:
        sys.exit(f"hello {name}: binds refused: {refused}")
    return answer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--waifus", type=int, default=10_000)
    ap.add_argument("--hellos", type=int, default=1_000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--out", default=os.path.join(R.ROOT, "bench", "scale-results.md"))
    args = ap.parse_args()
    if not __import__("shutil").which("wrk"):
        sys.exit("missing: wrk (Debian: apt-get install wrk)")
    os.sched_setaffinity(0, {int(R.LOAD_CPU)})

    release = os.path.join(R.ROOT, "target", "release")
    tmp = tempfile.mkdtemp(prefix="waifus-scale-")
    os.chmod(tmp, 0o755)
    log = open(os.path.join(tmp, "servers.log"), "w")
    backend, public, internal = R.free_port(), R.free_port(), R.free_port()
    R.start([os.path.join(release, "bench-backend"), f"127.0.0.1:{backend}"], R.LOAD_CPU, log)
    R.wait_ok(f"http://127.0.0.1:{backend}/hello", "the backend")
    orch = R.start([os.path.join(release, "orchestrator")], R.PROXY_CPU, log, env=dict(
        os.environ, DATA_DIR=os.path.join(tmp, "data"), PUBLIC_ADDR=f"127.0.0.1:{public}",
        INTERNAL_ADDR=f"127.0.0.1:{internal}", RUST_LOG="warn", HEALTH_INTERVAL="5s",
        MAIN_DOMAIN="localhost"))
    deadline = time.time() + 90
    while R.get(f"http://127.0.0.1:{internal}/__internal/health") != 204:
        if time.time() > deadline:
            sys.exit("the orchestrator did not become ready")
        time.sleep(0.2)
    up = f"127.0.0.1:{backend}"
    conn = hello_conn(internal)
    hello(conn, "app", up, {"http://app.bind.test": "/"})
    main_url = f"http://127.0.0.1:{public}/app/hello"
    R.wait_ok(main_url, "the first waifu")

    def load(host="localhost"):
        out = R.wrk(main_url if host == "localhost" else f"http://127.0.0.1:{public}/hello",
                         args.conns, args.seconds, host)
        return out

    R.quiet()
    base = [load() for _ in range(args.rounds)]

    # Register many waifus, 8 at a time.
    started = time.time()
    names = iter(range(args.waifus))
    lock = threading.Lock()

    def register():
        c = hello_conn(internal)
        while True:
            with lock:
                i = next(names, None)
            if i is None:
                return
            hello(c, f"w{i}", up, {f"http://w{i}.bind.test": "/"})

    threads = [threading.Thread(target=register) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    registered_in = time.time() - started
    fds_orch = len(os.listdir(f"/proc/{orch.pid}/fd"))
    # Wait until a full health round has passed, so every instance is healthy.
    time.sleep(6)
    R.wait_ok(f"http://127.0.0.1:{public}/w{args.waifus - 1}/hello", "the last waifu")
    many, many_bind = [], []
    for _ in range(args.rounds):
        many.append(load())
        many_bind.append(load(f"w{args.waifus // 2}.bind.test"))
    rss = R.memory_kib([orch.pid], "VmRSS")

    # hello -> routable, one at a time.
    latencies = []
    proxy = http.client.HTTPConnection("127.0.0.1", public, timeout=10)
    for i in range(args.hellos):
        t0 = time.perf_counter()
        hello(conn, f"n{i}", up)
        while True:
            proxy.request("GET", f"/n{i}/hello", headers={"Host": "localhost"})
            r = proxy.getresponse()
            r.read()
            if r.status == 200:
                break
            if time.perf_counter() - t0 > 10:
                sys.exit(f"n{i} not routable after 10 s (last status {r.status})")
        latencies.append((time.perf_counter() - t0) * 1e3)
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731

    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    lines = [
        f"Run: {time.strftime('%Y-%m-%d %H:%M')}; orchestrator on CPU {R.PROXY_CPU}, wrk and backend on "
        f"CPU {R.LOAD_CPU}; `wrk -c{args.conns} -d{args.seconds}s`, {args.rounds} rounds each (median, min–max).",
        "",
        "| routes registered | path | req/s | × one waifu | p99 ms | × one waifu | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, path, rs in [("1 waifu", "main domain `/app`", base),
                            (f"{args.waifus + 1:,} waifus + binds", "main domain `/app`", many),
                            (f"{args.waifus + 1:,} waifus + binds", "bind host", many_bind)]:
        lines.append(
            f"| {label} | {path} | {R.fmt([r['rps'] for r in rs])} | {med(rs, 'rps') / med(base, 'rps'):.2f} | "
            f"{R.fmt([r['p99'] for r in rs], digits=2)} | {med(rs, 'p99') / med(base, 'p99'):.2f} | "
            f"{sum(r['errors'] for r in rs)} |")
    lines += [
        "",
        f"Registering {args.waifus:,} waifus (8 clients): {registered_in:.1f} s "
        f"({args.waifus / registered_in:,.0f} hellos/s). Orchestrator RSS with them: "
        f"{rss / 1024:.1f} MiB; open fds: {fds_orch}.",
        f"Hello → routable over {args.hellos:,} hellos (on top of {args.waifus:,} waifus; hello, then GETs "
        f"until 200): p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms, max {latencies[-1]:.2f} ms.",
        "Each load run spans at least one health round over every instance (HEALTH_INTERVAL 5 s).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
