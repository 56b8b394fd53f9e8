#!/usr/bin/env python3
"""What waifus repeating their hello cost: every waifu says hello again
every 30 s (the protocol asks it to, so that a restarted orchestrator learns
it back), so 10,000 waifus make 333 hellos a second that change nothing.

Starts the release orchestrator on its managed PostgreSQL and the bench
backend, registers `--waifus` waifus (8 clients), then repeats every hello at
`--waifus / 30` a second for `--seconds` (8 paced clients, each hello on a
kept-alive connection), and reports the CPU the orchestrator and its
PostgreSQL spent (user + system, from /proc) as a share of one core and per
hello, and the hellos' latency.

    cargo build --release -p orchestrator -p bench-backend
    python3 bench/rehello.py [--waifus 10000] [--seconds 20] [--binds]

With `--binds` each waifu also asks for a bind host of its own, as waifus
with their own domains do (a hello with binds locks its hosts in a
transaction of its own).

`ORCHESTRATOR_BIN=path` runs another build.
"""

import argparse
import http.client
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402

CLIENTS = 8


def hello(conn, name, up, bind):
    body = {"name": name, "host": up}
    if bind:
        body["additionalBinds"] = {f"http://{name}.bind.test": "/"}
    body = json.dumps(body)
    conn.request("POST", "/__internal/hello", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        sys.exit(f"hello {name}: {r.status} {data[:200]!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--waifus", type=int, default=10_000)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--every", type=float, default=30.0, help="seconds between a waifu's hellos")
    ap.add_argument("--binds", action="store_true",
                    help="each waifu also binds a host of its own (w1.bind.test, ...)")
    args = ap.parse_args()
    release = os.path.join(R.ROOT, "target", "release")
    tmp, log = R.scratch("waifus-rehello-")
    up = R.start_backend(release, log)
    internal = R.free_port()
    binary = os.environ.get("ORCHESTRATOR_BIN") or os.path.join(release, "orchestrator")
    orch = R.start([binary], R.PROXY_CPU, log, env=dict(
        os.environ, DATA_DIR=os.path.join(tmp, "data"), PUBLIC_ADDR=f"127.0.0.1:{R.free_port()}",
        INTERNAL_ADDR=f"127.0.0.1:{internal}", RUST_LOG="warn", HEALTH_INTERVAL="1h"))
    R.wait_ready(internal)

    def clients(work):
        threads = [threading.Thread(target=work, args=(k,)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def register(k):
        c = http.client.HTTPConnection("127.0.0.1", internal, timeout=30)
        for i in range(k, args.waifus, CLIENTS):
            hello(c, f"w{i}", up, args.binds)

    started = time.time()
    clients(register)
    print(f"registered {args.waifus:,} waifus in {time.time() - started:.1f} s")
    time.sleep(5)
    R.quiet()

    rate = args.waifus / args.every
    total = int(rate * args.seconds)
    latencies = [[] for _ in range(CLIENTS)]

    def repeat(k):
        c = http.client.HTTPConnection("127.0.0.1", internal, timeout=30)
        # Hello n is due at t0 + n / rate; this client sends every CLIENTS-th.
        for n in range(k, total, CLIENTS):
            due = t0 + n / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            s = time.perf_counter()
            hello(c, f"w{n % args.waifus}", up, args.binds)
            latencies[k].append((time.perf_counter() - s) * 1e3)

    pids = R.tree(orch.pid)
    own = [orch.pid]
    pg = [p for p in pids if p != orch.pid]
    before = (sum(R.cpu_split(own)), sum(R.cpu_split(pg)))
    t0 = time.perf_counter()
    clients(repeat)
    elapsed = time.perf_counter() - t0
    pg = [p for p in R.tree(orch.pid) if p != orch.pid]
    after = (sum(R.cpu_split(own)), sum(R.cpu_split(pg)))
    lat = sorted(x for xs in latencies for x in xs)
    o, p = after[0] - before[0], after[1] - before[1]
    print(f"{total:,} repeated hellos at {rate:,.0f}/s over {elapsed:.1f} s "
          f"({total / elapsed:,.0f}/s achieved)")
    print(f"orchestrator: {100 * o / elapsed:.1f} % of a core, {1e6 * o / total:.0f} µs per hello")
    print(f"its PostgreSQL: {100 * p / elapsed:.1f} % of a core, {1e6 * p / total:.0f} µs per hello")
    print(f"hello latency: p50 {lat[len(lat) // 2]:.2f} ms, p99 {lat[int(len(lat) * 0.99)]:.2f} ms, "
          f"max {lat[-1]:.2f} ms")
    R.stop_all()


if __name__ == "__main__":
    main()
