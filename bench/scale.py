#!/usr/bin/env python3
"""Scale benchmark: routing with 10,000 waifus and binds, hello to
routable latency, and health-check rounds under load.

    bash bench/scale.sh          # builds release binaries, then runs this

Two phases, one after the other, each with two orchestrators side by side on
the same core: one keeps a single waifu (the baseline), the other gets 10,000
more, each with its own bind host. Their load runs come in pairs, the
same path on both back to back, in alternating order (one waifu then 10,000,
then 10,000 then one, ...), so drift in the machine's speed hits both alike;
each ratio is the median of the per-pair ratios. The orchestrator not under load is
stopped (SIGSTOP; its PostgreSQL runs on) for the other's turn, so that its
health rounds and resyncs never land in the baseline's measurement.

A. Routing state only (HEALTH_INTERVAL 1 h, so no periodic checks run during
   the load); then 1,000 hellos of new waifus, one at a time, timing hello to
   the first 200 through the proxy (hello, publish, first health check).
B. Health checking (HEALTH_INTERVAL 5 s, the default): 10,000 instances
   checked every 5 s, so every load run spans a full health round.

The orchestrators run pinned to CPU 0; wrk, the backend and this script to
CPU 1. About 12 minutes.
"""

import argparse
import atexit
import shutil
import signal
import subprocess
import http.client
import json
import os
import sys
import tempfile
import threading
import time
import urllib.parse

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


def orchestrator(tmp, tag, interval, log, up):
    """Starts an orchestrator with the waifu "app" (bound to app.bind.test);
    returns (process, public port, internal port)."""
    release = os.path.join(R.ROOT, "target", "release")
    public, internal = R.free_port(), R.free_port()
    binary = os.environ.get("ORCHESTRATOR_BIN") or os.path.join(release, "orchestrator")
    proc = R.start([binary], R.PROXY_CPU, log, env=dict(
        os.environ, DATA_DIR=os.path.join(tmp, f"data-{tag}"), PUBLIC_ADDR=f"127.0.0.1:{public}",
        INTERNAL_ADDR=f"127.0.0.1:{internal}", RUST_LOG="warn", HEALTH_INTERVAL=interval,
        MAIN_DOMAIN="localhost"))
    R.wait_ready(internal)
    hello(hello_conn(internal), "app", up, {"http://app.bind.test": "/"})
    R.wait_ok(f"http://127.0.0.1:{public}/app/hello", "the first waifu")
    return proc, public, internal


def phase(args, interval, hellos):
    release = os.path.join(R.ROOT, "target", "release")
    tmp = tempfile.mkdtemp(prefix="waifus-scale-", dir=args.data_in)
    # Removed only after every process is stopped (atexit runs last first).
    atexit.register(lambda: (R.stop_all(), shutil.rmtree(tmp, True)))
    os.chmod(tmp, 0o755)
    log = open(os.path.join(tmp, "servers.log"), "w")
    backend = R.free_port()
    backend_proc = R.start([os.path.join(release, "bench-backend"), f"127.0.0.1:{backend}"], R.LOAD_CPU, log)
    R.wait_ok(f"http://127.0.0.1:{backend}/hello", "the backend")
    up = f"127.0.0.1:{backend}"
    # The baseline keeps a single waifu; the other gets 10,000 more.
    one, one_public, _ = orchestrator(tmp, "one", interval, log, up)
    orch, public, internal = orchestrator(tmp, "many", interval, log, up)
    out = {}

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
    out["registered_in"] = time.time() - started
    R.wait_ok(f"http://127.0.0.1:{public}/w{args.waifus - 1}/hello", "the last waifu")
    time.sleep(6)
    R.quiet()
    def only(proc):
        """Stops the other orchestrator (not its PostgreSQL) until `proc`'s
        turn is over: its background work (health rounds, resyncs) would
        otherwise share CPU 0 with the one measured and land in both sides
        of every comparison alike."""
        for p in (one, orch):
            os.kill(p.pid, signal.SIGCONT if p is proc else signal.SIGSTOP)
        time.sleep(1)

    def load(proc, url, host="localhost"):
        """One wrk run, with the orchestrator's CPU time per request, then
        with --steady-rate one open-loop run at that rate."""
        only(proc)
        before = sum(R.cpu_split([proc.pid]))
        r = R.wrk(url, args.conns, args.seconds, host)
        r["cpu_us"] = (sum(R.cpu_split([proc.pid])) - before) * 1e6 / max(r["requests"], 1)
        if args.steady_rate:
            r["steady"] = steady(url, host)
        return r

    def steady(url, host):
        target = urllib.parse.urlsplit(url)
        out = subprocess.run(
            ["taskset", "-c", R.LOAD_CPU, os.path.join(release, "bench-load"), target.netloc, host,
             target.path,
             str(args.conns), str(args.steady_rate), str(args.seconds)],
            capture_output=True, text=True, timeout=args.seconds + 60, check=True).stdout
        return json.loads(out)

    # Each path is compared with the same path on the baseline: a bind
    # skips the prefix rewrite, so it is cheaper on both.
    for key in ("base", "base_bind", "many", "many_bind"):
        out[key] = []
    # Runs come in pairs, one waifu and 10,000 on the same path back to
    # back, in alternating order (ABBA...), so each pair sees the same
    # machine and slow drift cancels; ratios are taken per pair.
    pairs = [
        (("base", one, f"http://127.0.0.1:{one_public}/app/hello", "localhost"),
         ("many", orch, f"http://127.0.0.1:{public}/app/hello", "localhost")),
        (("base_bind", one, f"http://127.0.0.1:{one_public}/hello", "app.bind.test"),
         ("many_bind", orch, f"http://127.0.0.1:{public}/hello", f"w{args.waifus // 2}.bind.test")),
    ]
    # The cost of the health checks alone: the orchestrator idle, its CPU
    # time over a window of whole rounds.
    only(orch)
    window = 20
    before = sum(R.cpu_split([orch.pid]))
    time.sleep(window)
    out["idle_cpu"] = (sum(R.cpu_split([orch.pid])) - before) / window
    for i in range(0 if args.memory_only else args.rounds):
        for pair in pairs:
            for key, proc, url, host in (pair if i % 2 == 0 else pair[::-1]):
                out[key].append(load(proc, url, host))
    only(orch)
    out["rss"] = R.memory_kib([orch.pid], "VmRSS")
    out["fds"] = len(os.listdir(f"/proc/{orch.pid}/fd"))

    latencies = []
    # The hello's own answer (a durable commit), and the GETs after it.
    answered = []
    tries = []
    # Fresh connections: idle ones were closed by the header-read timeout.
    conn = hello_conn(internal)
    proxy = http.client.HTTPConnection("127.0.0.1", public, timeout=10)
    for i in range(hellos):
        t0 = time.perf_counter()
        hello(conn, f"n{i}", up)
        answered.append((time.perf_counter() - t0) * 1e3)
        gets = 0
        while True:
            gets += 1
            proxy.request("GET", f"/n{i}/hello", headers={"Host": "localhost"})
            r = proxy.getresponse()
            r.read()
            if r.status == 200:
                break
            if time.perf_counter() - t0 > 10:
                sys.exit(f"n{i} not routable after 10 s (last status {r.status})")
        latencies.append((time.perf_counter() - t0) * 1e3)
        tries.append(gets)
    out["latencies"] = sorted(latencies)
    out["answered"] = sorted(answered)
    out["tries"] = sorted(tries)
    for p in (orch, one, backend_proc):
        os.killpg(p.pid, signal.SIGTERM)
        os.killpg(p.pid, signal.SIGCONT)
        p.wait(timeout=30)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--waifus", type=int, default=10_000)
    ap.add_argument("--hellos", type=int, default=1_000)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--steady-rate", type=int, default=0, metavar="REQ_PER_S",
                    help="after each wrk run, an open-loop run at this rate (bench-load), "
                         "for latency at a load the proxy carries; off by default: on a "
                         "noisy VM its tail is the VM's (bench/README.md)")
    ap.add_argument("--data-in", default=None, metavar="DIR",
                    help="where the orchestrators' data directories (their PostgreSQL) go; "
                         "default: the system's temporary directory. /dev/shm takes the disk's "
                         "fsync out of the hello timings")
    ap.add_argument("--memory-only", action="store_true",
                    help="no load runs: registration, RSS, idle CPU and hello → routable only "
                         "(about 3 minutes)")
    ap.add_argument("--out", default=os.path.join(R.ROOT, "bench", "scale-results.md"))
    args = ap.parse_args()
    if not shutil.which("wrk") and not args.memory_only:
        sys.exit("missing: wrk (Debian: apt-get install wrk)")
    os.sched_setaffinity(0, {int(R.LOAD_CPU)})
    a = phase(args, "1h", args.hellos)
    b = phase(args, "5s", 0)

    def ratio(rs, base, k):
        """Median (min–max) of the per-pair ratios."""
        return R.fmt([run[k] / against[k] for run, against in zip(rs, base)], digits=2)

    where = args.data_in or tempfile.gettempdir()
    lines = [
        f"Run: {time.strftime('%Y-%m-%d %H:%M')}; orchestrator on CPU {R.PROXY_CPU}, wrk and backend on "
        f"CPU {R.LOAD_CPU}; `wrk -c{args.conns} -d{args.seconds}s`, {args.rounds} rounds each (median, min–max); "
        f"data directories in {where}.",
        "",
        "Each ratio compares a path with the same path on the one-waifu orchestrator: the median "
        "(min–max) of the ratios of runs made back to back, the other orchestrator stopped. CPU is "
        "the orchestrator's (user + kernel) per request.",
        "",
        "| health checks | routes registered | path | req/s | × one waifu | p99 ms | × one waifu "
        "| CPU µs/req | × one waifu | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    n = f"{args.waifus + 1:,} waifus + binds"

    def rows():
        """(health checks, routes, path, runs, the baseline's runs) per row."""
        for checks, res in [("every 1 h (none during runs)", a), ("every 5 s (a round per run)", b)]:
            yield checks, "1 waifu", "main domain", res["base"], res["base"]
            yield checks, n, "main domain", res["many"], res["base"]
            yield checks, "1 waifu", "bind host", res["base_bind"], res["base_bind"]
            yield checks, n, "bind host", res["many_bind"], res["base_bind"]

    for checks, label, path, rs, base in ([] if args.memory_only else rows()):
        lines.append(
            f"| {checks} | {label} | {path} | {R.fmt([r['rps'] for r in rs])} | "
            f"{ratio(rs, base, 'rps')} | {R.fmt([r['p99'] for r in rs], digits=2)} | "
            f"{ratio(rs, base, 'p99')} | {R.fmt([r['cpu_us'] for r in rs], digits=1)} | "
            f"{ratio(rs, base, 'cpu_us')} | {sum(r['errors'] for r in rs)} |")
    if args.steady_rate:
        lines += [
            "",
            f"Open loop at a steady {args.steady_rate:,} req/s (`bench-load`, {args.conns} connections, "
            f"{args.seconds} s, right after each wrk run on the same orchestrator): latency from when "
            "each request was due, ratios per pair as above.",
            "",
            "| health checks | routes registered | path | p50 ms | p99 ms | × one waifu | p99.9 ms "
            "| × one waifu | errors |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for checks, label, path, rs, base in rows():
            ss, bs = [r["steady"] for r in rs], [r["steady"] for r in base]
            lines.append(
                f"| {checks} | {label} | {path} | {R.fmt([x['p50'] for x in ss], digits=2)} | "
                f"{R.fmt([x['p99'] for x in ss], digits=2)} | {ratio(ss, bs, 'p99')} | "
                f"{R.fmt([x['p999'] for x in ss], digits=2)} | {ratio(ss, bs, 'p999')} | "
                f"{sum(x['sent'] - x['answered'] for x in ss)} |")
    lat = a["latencies"]
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
    lines += [
        "",
        f"Registering {args.waifus:,} waifus (8 clients): {a['registered_in']:.1f} s "
        f"({args.waifus / a['registered_in']:,.0f} hellos/s). Orchestrator with them: RSS "
        f"{a['rss'] / 1024:.1f} MiB, {a['fds']} open fds (1 h checks); RSS {b['rss'] / 1024:.1f} MiB, "
        f"{b['fds']} fds (5 s checks, one kept-alive connection per instance).",
        f"Idle with them: {a['idle_cpu'] * 100:.2f} % of a core (1 h checks), "
        f"{b['idle_cpu'] * 100:.2f} % (5 s checks: {args.waifus + 1:,} instances, "
        f"{(b['idle_cpu'] - a['idle_cpu']) * 1e6 / ((args.waifus + 1) / 5):.1f} µs of CPU per check).",
        f"Hello → routable over {len(lat):,} hellos on top of {args.waifus:,} waifus (Python client: "
        f"hello, then GETs until 200): p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms, max {lat[-1]:.2f} ms.",
    ]
    if "answered" in a:
        ans, tries = a["answered"], a["tries"]
        q = lambda xs, f: xs[min(len(xs) - 1, int(f * len(xs)))]  # noqa: E731
        lines.append(
            f"Of that, the hello's own answer (its commit): p50 {q(ans, 0.5):.2f} ms, "
            f"p99 {q(ans, 0.99):.2f} ms, max {ans[-1]:.2f} ms; GETs until routable: "
            f"p50 {q(tries, 0.5)}, p99 {q(tries, 0.99)}, max {tries[-1]}.")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
