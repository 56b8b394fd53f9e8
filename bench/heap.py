#!/usr/bin/env python3
"""Where the memory of an orchestrator with 10,000 waifus goes.

    cargo build --release -p orchestrator -p bench-backend
    python3 bench/heap.py                    # massif heap profile, about 2 minutes
    python3 bench/heap.py --native           # RSS and /proc/PID/smaps_rollup instead
    RESYNC_INTERVAL=2s python3 bench/heap.py --native --cpu 20   # and what a resync costs

Starts the orchestrator (managed PostgreSQL, HEALTH_INTERVAL=1h unless
--interval) in front of bench-backend, registers --waifus waifus with one bind
each over 8 connections (as bench/scale.py does), waits --settle seconds, then
either takes a detailed massif snapshot (`vgdb ... detailed_snapshot`) and
prints the heap, malloc's own overhead and the largest allocation sites, or,
with --native, prints the RSS, the anonymous and file-backed parts and the
largest mappings. `ORCHESTRATOR_BIN=path` measures another build.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402
import scale as S  # noqa: E402


def frames(snapshot, depth, floor):
    """The heap tree of a massif snapshot, `depth` levels deep, sites of at
    least `floor` bytes."""
    lines = open(snapshot).read().split("\n")
    start = [i for i, line in enumerate(lines) if "heap allocation functions" in line][-1]
    out = []
    for line in lines[start:]:
        m = re.match(r"( *)n\d+: (\d+) (.*)", line)
        if not m or len(m.group(1)) > depth or int(m.group(2)) < floor:
            continue
        where = re.sub(r" \(in .*\)$", "", re.sub(r"^0x[0-9A-F]+: ", "", m.group(3)))
        out.append(f"{'  ' * len(m.group(1))}{int(m.group(2)) / 1e6:6.2f} MB  {where[:150]}")
    return out


def cpu_times(root):
    """User + system CPU seconds of `root` and of its descendants (the
    managed PostgreSQL and its backends), apart."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(pid)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    own, below, frontier = stats.get(root, (0, 0))[1], 0.0, {root}
    while frontier:
        children = {p for p, (ppid, _) in stats.items() if ppid in frontier}
        below += sum(stats[p][1] for p in children)
        frontier = children
    return own, below


def cpu_over(pid, seconds):
    """Prints the CPU time spent over `seconds`, per resync when
    RESYNC_INTERVAL is set (as seconds, `2s`). Backends that exit meanwhile
    are not counted; the managed PostgreSQL keeps its connections open."""
    own0, pg0 = cpu_times(pid)
    time.sleep(seconds)
    own1, pg1 = cpu_times(pid)
    own, pg = (own1 - own0) * 1000, (pg1 - pg0) * 1000
    line = f"CPU over {seconds:.0f} s: orchestrator {own:.0f} ms, PostgreSQL {pg:.0f} ms"
    interval = os.environ.get("RESYNC_INTERVAL", "")
    if interval.endswith("s") and interval[:-1].replace(".", "").isdigit():
        n = seconds / float(interval[:-1])
        line += f"; per resync ({n:.0f}): {own / n:.1f} and {pg / n:.1f} ms"
    print(line)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--waifus", type=int, default=10_000)
    ap.add_argument("--interval", default="1h", help="HEALTH_INTERVAL")
    ap.add_argument("--settle", type=float, default=40, help="seconds between the last hello and the reading")
    ap.add_argument("--native", action="store_true", help="RSS and mappings instead of a heap profile")
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--cpu", type=float, default=0, metavar="SECONDS",
                    help="with --native, also the CPU time the orchestrator and its PostgreSQL "
                         "spend over SECONDS after the reading (per resync if RESYNC_INTERVAL is set)")
    args = ap.parse_args()
    release = os.path.join(R.ROOT, "target", "release")
    binary = os.environ.get("ORCHESTRATOR_BIN") or os.path.join(release, "orchestrator")
    if not args.native and not shutil.which("valgrind"):
        sys.exit("valgrind is missing: apt-get install valgrind")
    tmp = tempfile.mkdtemp(prefix="waifus-heap-")
    os.chmod(tmp, 0o755)
    log = open(os.path.join(tmp, "servers.log"), "w")
    backend = R.free_port()
    procs = [subprocess.Popen([os.path.join(release, "bench-backend"), f"127.0.0.1:{backend}"],
                              stdout=log, stderr=log)]
    public, internal = R.free_port(), R.free_port()
    env = dict(os.environ, DATA_DIR=os.path.join(tmp, "data"), PUBLIC_ADDR=f"127.0.0.1:{public}",
               INTERNAL_ADDR=f"127.0.0.1:{internal}", RUST_LOG="warn",
               HEALTH_INTERVAL=args.interval, MAIN_DOMAIN="localhost")
    snapshot = os.path.join(tmp, "massif.snapshot")
    cmd = [binary] if args.native else [
        "valgrind", "--tool=massif", f"--massif-out-file={os.path.join(tmp, 'massif.out')}",
        "--threshold=0.3", "--depth=40", binary]
    orch = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
    procs.append(orch)
    try:
        deadline = time.time() + 300
        while R.get(f"http://127.0.0.1:{internal}/__internal/health") != 204:
            if time.time() > deadline or orch.poll() is not None:
                sys.exit(f"the orchestrator did not become ready (log: {log.name})")
            time.sleep(0.5)
        up = f"127.0.0.1:{backend}"
        names = iter(range(args.waifus))
        lock = threading.Lock()

        def register():
            c = S.hello_conn(internal)
            c.timeout = 60
            while True:
                with lock:
                    i = next(names, None)
                if i is None:
                    return
                S.hello(c, f"w{i}", up, {f"http://w{i}.bind.test": "/"})

        started = time.time()
        threads = [threading.Thread(target=register) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"registered {args.waifus} waifus in {time.time() - started:.1f} s; "
              f"reading {args.settle:.0f} s later")
        time.sleep(args.settle)
        if args.native:
            rollup = open(f"/proc/{orch.pid}/smaps_rollup").read()
            pick = lambda k: int(re.search(rf"^{k}:\s+(\d+)", rollup, re.M).group(1))  # noqa: E731
            rss, anon = pick("Rss"), pick("Anonymous")
            print(f"RSS {rss / 1024:.1f} MiB: anonymous {anon / 1024:.1f}, "
                  f"file-backed {(rss - anon) / 1024:.1f}")
            maps, name = [], ""
            for line in open(f"/proc/{orch.pid}/smaps"):
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                    parts = line.split()
                    name = parts[5] if len(parts) > 5 else "[anonymous]"
                elif line.startswith("Rss:"):
                    maps.append((int(line.split()[1]), name))
            for kib, name in sorted(maps, reverse=True)[:8]:
                print(f"  {kib / 1024:6.2f} MiB  {name}")
            if args.cpu:
                cpu_over(orch.pid, args.cpu)
        else:
            subprocess.run(["vgdb", f"--pid={orch.pid}", "detailed_snapshot", snapshot],
                           check=True, timeout=300, stdout=subprocess.DEVNULL)
            head = open(snapshot).read()
            heap = int(re.search(r"mem_heap_B=(\d+)", head).group(1))
            extra = int(re.search(r"mem_heap_extra_B=(\d+)", head).group(1))
            print(f"heap {heap / 1e6:.2f} MB, malloc's overhead {extra / 1e6:.2f} MB "
                  f"({(heap + extra) / args.waifus:.0f} bytes per waifu)")
            print("\n".join(frames(snapshot, args.depth, 100_000)))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, True)


if __name__ == "__main__":
    main()
