#!/usr/bin/env python3
"""What health checks cost an orchestrator that does nothing else.

    cargo build --release -p orchestrator -p bench-backend
    python3 bench/health-cost.py [--instances 5000] [--interval 5] [--seconds 10]

Starts bench-backend and one orchestrator (one worker, on the proxy's CPU,
HEALTH_INTERVAL=--interval), says hello for --instances waifus (each with a
bind host of its own, as bench/scale.py does, one at a time), lets a few
rounds pass, then reads the orchestrator's CPU time from /proc over
--seconds and, over the next --seconds, counts its system calls with
`strace -c`. Prints the share of a core, the CPU per check and the system
calls per check. ORCHESTRATOR_BIN=path measures another build (the backend
stays this tree's). Lighter than bench/scale.py (no second orchestrator, no
load runs), so two builds can be compared back to back in a minute or two.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as common  # noqa: E402  (start, scratch, free_port, tree, ...)

RELEASE = os.path.join(common.ROOT, "target", "release")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=5000)
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between checks of an instance")
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    binary = os.environ.get("ORCHESTRATOR_BIN", os.path.join(RELEASE, "orchestrator"))
    d, log = common.scratch("health-cost-")
    backend = common.start_backend(RELEASE, log)
    public, internal = common.free_port(), common.free_port()
    env = dict(os.environ, DATA_DIR=os.path.join(d, "data"), WORKER_THREADS="1",
               PUBLIC_ADDR=f"127.0.0.1:{public}", INTERNAL_ADDR=f"127.0.0.1:{internal}",
               RUST_LOG="warn", HEALTH_INTERVAL=f"{args.interval}s")
    proc = common.start([binary], common.PROXY_CPU, log, env=env)
    common.wait_ready(internal, 300)
    for i in range(args.instances):
        body = {"name": f"w{i}", "host": backend, "additionalBinds": {f"http://w{i}.bind.test": "/"}}
        req = urllib.request.Request(f"http://127.0.0.1:{internal}/__internal/hello",
                                     data=json.dumps(body).encode(), method="POST")
        urllib.request.urlopen(req, timeout=60).read()
    time.sleep(2 * args.interval)  # every instance checked, connections pooled (not a measurement)
    pid = next(p for p in common.tree(proc.pid)
               if open(f"/proc/{p}/comm").read().strip() == "orchestrator")

    def cpu_ticks():
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    c0, t0 = cpu_ticks(), time.time()
    time.sleep(args.seconds)
    c1, t1 = cpu_ticks(), time.time()
    tick = os.sysconf("SC_CLK_TCK")
    share = (c1 - c0) / tick / (t1 - t0)
    checks_per_s = args.instances / args.interval
    report = os.path.join(d, "strace.txt")
    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", report, "-p", str(pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(args.seconds)
    tracer.send_signal(2)
    tracer.wait(timeout=60)
    calls = []
    for line in open(report).read().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[3].isdigit() and parts[-1] != "total":
            calls.append((int(parts[3]), parts[-1]))
    calls.sort(reverse=True)
    checks = checks_per_s * args.seconds
    print(f"{binary}: {args.instances} instances checked every {args.interval:g} s: "
          f"{share * 100:.2f} % of a core, {share / checks_per_s * 1e6:.1f} µs per check; "
          "system calls per check: " + ", ".join(f"{name} {n / checks:.2f}" for n, name in calls[:5]),
          flush=True)
    proc.terminate()
    proc.wait(timeout=60)


if __name__ == "__main__":
    main()
