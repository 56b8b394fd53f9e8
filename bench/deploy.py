#!/usr/bin/env python3
"""Deploys under load: what a version change costs, and how fast a goodbye spreads.

    bash bench/deploy.sh         # builds release binaries, then runs this

1. Replace: the orchestrator (release, managed PostgreSQL) in front of the
   SDK's `hello` waifu, version 1. wrk with 8 keep-alive connections runs
   `--seconds` with nothing changing (the baseline), then `--seconds` again
   while version 2 starts (at 1/4 of the run) and version 1 gets SIGTERM (at
   1/2): it says goodbye, drains and exits. Reported per round: requests/s of
   both runs, failed requests (non-2xx and socket errors) of both, and how
   long version 1 took from SIGTERM to exit.
2. Goodbye across replicas: a second orchestrator on the same PostgreSQL.
   `--goodbyes` times, an instance says hello to the first orchestrator; once
   the second routes to it, a goodbye goes to the first, and the time until
   the second no longer routes to it is measured (polled every millisecond).
   Reported as p50/p99/max.

Installs nothing; needs wrk (Debian: apt-get install wrk). Stops every
process it started.
"""

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import ROOT, STARTED, free_port, get  # noqa: E402

RELEASE = os.path.join(ROOT, "target", "release")


def start(cmd, log, env):
    p = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                         env={**os.environ, **env}, start_new_session=True)
    STARTED.append(p)
    return p


def wait_for(what, check, seconds=60):
    deadline = time.time() + seconds
    while not check():
        if time.time() > deadline:
            sys.exit(f"{what} did not happen within {seconds} s")
        time.sleep(0.01)


def orchestrator(tmp, tag, log, extra):
    public, internal = free_port(), free_port()
    env = {"PUBLIC_ADDR": f"127.0.0.1:{public}", "INTERNAL_ADDR": f"127.0.0.1:{internal}",
           "DATA_DIR": os.path.join(tmp, "data"), "WORKER_THREADS": "1", **extra}
    p = start([os.path.join(RELEASE, "orchestrator")], log, env)
    wait_for(f"orchestrator {tag}", lambda: get(f"http://127.0.0.1:{internal}/__internal/health") == 204)
    return p, public, internal


def hello_waifu(internal, name, version, log):
    port = free_port()
    env = {"ORCHESTRATOR_URL": f"http://127.0.0.1:{internal}", "WAIFU_NAME": name,
           "WAIFU_HOST": f"127.0.0.1:{port}", "PORT": str(port), "LISTEN_ADDR": "127.0.0.1",
           "WAIFU_VERSION": version, "RUST_LOG": "warn"}
    return start([os.path.join(RELEASE, "hello")], log, env), f"127.0.0.1:{port}"


def api(conn, method, path, body=None):
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, json.loads(r.read() or b"null")


def instances(conn, name):
    status, waifus = api(conn, "GET", "/__internal/waifus")
    assert status == 200, waifus
    return [i for w in waifus if w["name"] == name for i in w["instances"]]


def wrk(url, seconds):
    """Starts wrk (8 keep-alive connections); `finish()` gives (req/s, requests, failed)."""
    run = subprocess.Popen(
        ["wrk", "-t1", "-c8", f"-d{seconds}s", "-H", "Host: localhost", url],
        stdout=subprocess.PIPE, text=True)

    def finish():
        out = run.communicate(timeout=seconds + 60)[0]
        rps = float(out.split("Requests/sec:")[1].split()[0])
        requests = int(out.split(" requests in")[0].split()[-1])
        failed = 0
        for line in out.splitlines():
            if "Non-2xx" in line:
                failed += int(line.split(":")[1])
            if "Socket errors" in line:
                failed += sum(int(p.split()[-1]) for p in line.split(":")[1].split(","))
        return rps, requests, failed
    return finish


def replace_round(public, internal, seconds, log, n):
    old, _ = hello_waifu(internal, "hello", f"{n}.1", log)
    url = f"http://127.0.0.1:{public}/hello/"
    wait_for("hello v1 routable", lambda: get(url) == 200)
    base_rps, _, base_failed = wrk(url, seconds)()
    during = wrk(url, seconds)
    time.sleep(seconds / 4)
    new, _ = hello_waifu(internal, "hello", f"{n}.2", log)
    time.sleep(seconds / 4)
    sigterm = time.time()
    old.send_signal(signal.SIGTERM)
    code = old.wait(timeout=60)
    exit_s = time.time() - sigterm
    rps, requests, failed = during()
    new.send_signal(signal.SIGTERM)
    new.wait(timeout=60)
    return {"base_rps": base_rps, "base_errors": base_failed, "rps": rps,
            "requests": requests, "errors": failed, "old_exit": code, "exit_s": exit_s}


def goodbye_spread(internal_one, internal_two, times, log):
    one = http.client.HTTPConnection("127.0.0.1", internal_one)
    two = http.client.HTTPConnection("127.0.0.1", internal_two)
    waifu, host = hello_waifu(internal_one, "probe", "1", log)
    # The waifu's own hello is the first; then the loop says hello for it.
    wait_for("probe on two", lambda: any(i["healthy"] for i in instances(two, "probe")))
    took = []
    for _ in range(times):
        status, answer = api(one, "POST", "/__internal/hello", {"name": "probe", "host": host})
        assert status == 200, answer
        wait_for("probe routable on two",
                 lambda: any(i["healthy"] and not i["draining"] for i in instances(two, "probe")))
        said = time.perf_counter()
        status, answer = api(one, "POST", "/__internal/goodbye", {"name": "probe", "host": host})
        assert status == 200, answer
        while any(not i["draining"] for i in instances(two, "probe")):
            time.sleep(0.001)
        took.append(time.perf_counter() - said)
    waifu.kill()
    return took


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=12)
    ap.add_argument("--goodbyes", type=int, default=200)
    args = ap.parse_args()
    for exe in ("orchestrator", "hello"):
        if not os.path.exists(os.path.join(RELEASE, exe)):
            sys.exit(f"target/release/{exe} is missing: run bench/deploy.sh")
    if subprocess.run(["which", "wrk"], capture_output=True).returncode != 0:
        sys.exit("wrk is missing (Debian: apt-get install wrk)")

    tmp = tempfile.mkdtemp(prefix="waifus-deploy-")
    log = open(os.path.join(tmp, "log"), "w")
    print(f"logs in {tmp}/log")
    _, public, internal = orchestrator(tmp, "one", log, {})
    rounds = []
    for n in range(1, args.rounds + 1):
        r = replace_round(public, internal, args.seconds, log, n)
        rounds.append(r)
        print(f"round {n}: baseline {r['base_rps']:.0f} req/s, {r['base_errors']} failed; "
              f"during the replace {r['rps']:.0f} req/s ({r['rps'] / r['base_rps']:.2f}x), "
              f"{r['errors']} of {r['requests']} failed; v1 exited {r['old_exit']} "
              f"{r['exit_s']:.2f} s after SIGTERM", flush=True)

    password = open(os.path.join(tmp, "data", "postgres-password")).read().strip()
    port = open(os.path.join(tmp, "data", "postgres-port")).read().strip()
    url = f"postgres://waifus:{password}@127.0.0.1:{port}/waifus"
    _, _, internal_two = orchestrator(tmp, "two", log, {"DATABASE_URL": url})
    took = sorted(goodbye_spread(internal, internal_two, args.goodbyes, log))
    ms = [t * 1000 for t in took]
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"goodbye on one -> draining on two, {len(ms)} times: p50 {statistics.median(ms):.1f} ms, "
          f"p99 {p99:.1f} ms, max {ms[-1]:.1f} ms")
    failed = sum(r["errors"] for r in rounds)
    print(f"summary: {failed} failed requests in {sum(r['requests'] for r in rounds)} during "
          f"{len(rounds)} replaces; requests/s during a replace "
          f"{min(r['rps'] / r['base_rps'] for r in rounds):.2f}-"
          f"{max(r['rps'] / r['base_rps'] for r in rounds):.2f}x the baseline")


if __name__ == "__main__":
    main()
