#!/usr/bin/env python3
"""Side-by-side proxy benchmark: direct, relay, nginx, HAProxy, Caddy, orchestrator.

    bash bench/run.sh            # builds release binaries, then runs this

Every proxy gets the same job: strip the prefix /app and forward to one fast
backend with upstream keep-alive. Proxies run pinned to CPU 0 with one worker;
wrk and the backend run pinned to CPU 1. Rounds are interleaved (A B C D E A B
C D E ...), and each metric is reported as the median with min-max, and as a
ratio to nginx. Installs nothing; says what is missing. Stops every process it
started. Bounded: the default run takes about 8 minutes.

"relay" is not a proxy but the floor under all of them (`bench-relay`): bytes
copied between a client connection and an upstream connection of its own,
no HTTP at all, with the same system calls per request as a proxy. What a
proxy spends above it is its HTTP work.
"""

import argparse
import atexit
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROXY_CPU, LOAD_CPU = "0", "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
STARTED = []


def stop_all():
    for p in STARTED:
        try:
            os.killpg(p.pid, signal.SIGTERM)
            os.killpg(p.pid, signal.SIGCONT)  # scale.py stops orchestrators in turn
        except ProcessLookupError:
            pass
    deadline = time.time() + 20
    for p in STARTED:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


atexit.register(stop_all)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))


def start(cmd, cpu, log, env=None):
    p = subprocess.Popen(["taskset", "-c", cpu] + cmd, stdout=log, stderr=log,
                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    STARTED.append(p)
    return p


GIVEN = set()


def free_port():
    """A free loopback port, never one this script handed out before: the
    kernel may offer a just-closed port again, and two servers told the same
    port means one fails to start while the other answers for both."""
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in GIVEN:
            GIVEN.add(port)
            return port


def get(url, host="localhost", timeout=2):
    req = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except Exception:
        return None


def wait_ok(url, what, seconds=60):
    deadline = time.time() + seconds
    while get(url) != 200:
        if time.time() > deadline:
            sys.exit(f"{what} did not come up ({url})")
        time.sleep(0.2)


def scratch(prefix):
    """A new scratch directory others may read (PostgreSQL runs as its own
    user) and a log file in it for the servers a script starts; removed at
    exit, after every process started is stopped."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    os.chmod(tmp, 0o755)
    atexit.register(lambda: (stop_all(), shutil.rmtree(tmp, True)))
    return tmp, open(os.path.join(tmp, "servers.log"), "w")


def start_backend(release, log):
    """Starts bench-backend on the load CPU; returns its address."""
    port = free_port()
    start([os.path.join(release, "bench-backend"), f"127.0.0.1:{port}"], LOAD_CPU, log)
    wait_ok(f"http://127.0.0.1:{port}/hello", "the backend")
    return f"127.0.0.1:{port}"


def wait_ready(internal, seconds=90):
    """Waits for an orchestrator's internal health endpoint to answer 204."""
    deadline = time.time() + seconds
    while get(f"http://127.0.0.1:{internal}/__internal/health") != 204:
        if time.time() > deadline:
            sys.exit("the orchestrator did not become ready")
        time.sleep(0.2)


def tree(pid):
    """pid and all its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_split(pids):
    """(user, system) CPU seconds of these processes."""
    user = system = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])  # utime
            system += int(fields[12])  # stime
        except OSError:
            pass
    return user / CLK_TCK, system / CLK_TCK


def memory_kib(pids, field):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def configs(tmp, port, backend):
    nginx = f"""
user root;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/nginx-body;
  proxy_temp_path {tmp}/nginx-proxy;
  fastcgi_temp_path {tmp}/nginx-fastcgi;
  uwsgi_temp_path {tmp}/nginx-uwsgi;
  scgi_temp_path {tmp}/nginx-scgi;
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port['nginx']};
    location /app/ {{
      proxy_pass http://backend/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
    }}
  }}
}}
"""
    haproxy = f"""
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:{port['haproxy']}
  http-request replace-path ^/app(/.*) \\1
  default_backend be
backend be
  server s1 127.0.0.1:{backend}
"""
    caddy = f"""
{{
  admin off
  auto_https off
}}
http://:{port['caddy']} {{
  bind 127.0.0.1
  handle_path /app/* {{
    reverse_proxy 127.0.0.1:{backend}
  }}
}}
"""
    # Caddy with an upstream pool as large as nginx's here (its default keeps
    # 32 idle connections per upstream, so at 64 and 256 client connections
    # most requests open a connection to the backend, as nginx's default of
    # none would).
    caddy_tuned = f"""
{{
  admin off
  auto_https off
}}
http://:{port['caddy-tuned']} {{
  bind 127.0.0.1
  handle_path /app/* {{
    reverse_proxy 127.0.0.1:{backend} {{
      transport http {{
        keepalive 2m
        keepalive_idle_conns 256
        keepalive_idle_conns_per_host 256
      }}
    }}
  }}
}}
"""
    paths = {}
    for name, text in [("nginx.conf", nginx), ("haproxy.cfg", haproxy), ("Caddyfile", caddy),
                       ("Caddyfile-tuned", caddy_tuned)]:
        paths[name] = os.path.join(tmp, name)
        with open(paths[name], "w") as f:
            f.write(text)
    return paths


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url, conns, seconds, host="localhost", extra=()):
    out = subprocess.run(
        ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency",
         "-H", f"Host: {host}", *extra, url],
        capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    lat = {}
    for pct, num, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        lat[pct] = float(num) * UNITS[unit]
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors += sum(int(x) for x in m.groups()) if m else 0
    return {"rps": rps, "requests": requests, "p50": lat.get("50"), "p99": lat.get("99"), "errors": errors}


def quiet(max_wait=60):
    deadline = time.time() + max_wait
    while time.time() < deadline:
        with open("/proc/loadavg") as f:
            if float(f.read().split()[0]) < 0.5:
                return True
        time.sleep(2)
    print("warning: the machine did not get quiet (load average >= 0.5); numbers may be noisy")
    return False


def fmt(values, unit="", digits=0):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    med = statistics.median(values)
    return f"{med:,.{digits}f}{unit} ({min(values):,.{digits}f}–{max(values):,.{digits}f})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=8, help="length of one wrk run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", default="64,256")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results.md"))
    ap.add_argument("--targets", default="direct,relay,nginx,haproxy,caddy,caddy-tuned,orchestrator",
                    help="which targets get load (nginx always: ratios are to it); fewer "
                         "targets leave time for more rounds")
    args = ap.parse_args()
    targets = set(args.targets.split(",")) | {"nginx"}
    unknown = targets - {"direct", "relay", "nginx", "haproxy", "caddy", "caddy-tuned", "orchestrator"}
    if unknown:
        sys.exit("unknown targets: " + ", ".join(sorted(unknown)))

    missing = [t for t in ("nginx", "haproxy", "caddy", "wrk", "taskset") if not shutil.which(t)]
    if missing:
        sys.exit("missing: " + ", ".join(missing) + "\ninstall them (Debian): apt-get install "
                 + " ".join({"taskset": "util-linux"}.get(m, m) for m in missing))
    release = os.path.join(ROOT, "target", "release")
    for b in ("orchestrator", "bench-backend", "bench-relay"):
        if not os.path.exists(os.path.join(release, b)):
            sys.exit(f"missing {release}/{b}: run bash bench/run.sh (it builds them)")
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs at least 2 CPUs: proxies on CPU 0, load on CPU 1")

    tmp, log = scratch("waifus-bench-")
    backend = free_port()
    port = {n: free_port() for n in ("relay", "nginx", "haproxy", "caddy", "caddy-tuned", "orchestrator")}
    internal = free_port()
    paths = configs(tmp, port, backend)

    start([os.path.join(release, "bench-backend"), f"127.0.0.1:{backend}"], LOAD_CPU, log)
    wait_ok(f"http://127.0.0.1:{backend}/hello", "the backend")
    procs = {
        "relay": start([os.path.join(release, "bench-relay"), f"127.0.0.1:{port['relay']}",
                        f"127.0.0.1:{backend}"], PROXY_CPU, log),
        "nginx": start(["nginx", "-c", paths["nginx.conf"], "-g", "daemon off;"], PROXY_CPU, log),
        "haproxy": start(["haproxy", "-db", "-f", paths["haproxy.cfg"]], PROXY_CPU, log),
        "caddy": start(["caddy", "run", "--config", paths["Caddyfile"], "--adapter", "caddyfile"],
                       PROXY_CPU, log, env=dict(os.environ, HOME=tmp, XDG_DATA_HOME=tmp, XDG_CONFIG_HOME=tmp)),
        "caddy-tuned": start(["caddy", "run", "--config", paths["Caddyfile-tuned"], "--adapter", "caddyfile"],
                             PROXY_CPU, log, env=dict(os.environ, HOME=tmp, XDG_DATA_HOME=tmp,
                                                      XDG_CONFIG_HOME=tmp)),
        "orchestrator": start([os.path.join(release, "orchestrator")], PROXY_CPU, log, env=dict(
            os.environ, DATA_DIR=os.path.join(tmp, "data"), PUBLIC_ADDR=f"127.0.0.1:{port['orchestrator']}",
            INTERNAL_ADDR=f"127.0.0.1:{internal}", RUST_LOG="warn")),
    }
    wait_ready(internal)
    hello = json.dumps({"name": "app", "host": f"127.0.0.1:{backend}"}).encode()
    urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{internal}/__internal/hello", data=hello, method="POST"), timeout=5)
    urls = {"direct": f"http://127.0.0.1:{backend}/hello"}
    for name in procs:
        # The relay does not strip the prefix: the backend answers any path.
        urls[name] = f"http://127.0.0.1:{port[name]}/app/hello"
        wait_ok(urls[name], name)
    # Whatever answered must be the server started for it.
    for name, proc in procs.items():
        if proc.poll() is not None:
            log.flush()
            with open(log.name) as f:
                tail = "".join(f.readlines()[-20:])
            sys.exit(f"{name} exited (status {proc.returncode}); the servers' log ends:\n{tail}")

    # Only the proxy's own processes count (not the orchestrator's PostgreSQL).
    def pids(name):
        if name == "direct":
            return []
        if name == "orchestrator":
            return [p for p in tree(procs[name].pid)
                    if open(f"/proc/{p}/comm").read().strip() == "orchestrator"]
        return tree(procs[name].pid)

    time.sleep(2)
    idle = {n: memory_kib(pids(n), "VmRSS") for n in urls}
    quiet()
    names = [n for n in urls if n in targets]
    results = {}
    for conns in [int(c) for c in args.conns.split(",")]:
        for name in names:  # warm-up, discarded
            wrk(urls[name], conns, 2)
        for _ in range(args.rounds):
            for name in names:
                before = cpu_split(pids(name))
                r = wrk(urls[name], conns, args.seconds)
                after = cpu_split(pids(name))
                counted = name != "direct" and r["requests"]
                per = (lambda s: s / r["requests"] * 1e6) if counted else (lambda s: None)
                r["user_us"] = per(after[0] - before[0])
                r["sys_us"] = per(after[1] - before[1])
                r["cpu_us"] = per(after[0] + after[1] - before[0] - before[1])
                results.setdefault((name, conns), []).append(r)
    peak = {n: memory_kib(pids(n), "VmHWM") for n in urls}

    lines = [f"Run: {time.strftime('%Y-%m-%d %H:%M')}, {args.rounds} interleaved rounds of {args.seconds} s "
             f"per target and concurrency; proxies on CPU {PROXY_CPU}, wrk and backend on CPU {LOAD_CPU}.", ""]
    lines.append("| target | conns | req/s | × nginx | p50 ms | p99 ms | × nginx p99 | proxy CPU µs/req | × nginx | errors |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for conns in [int(c) for c in args.conns.split(",")]:
        base = results[("nginx", conns)]
        b_rps = statistics.median(r["rps"] for r in base)
        b_p99 = statistics.median(r["p99"] for r in base)
        b_cpu = statistics.median(r["cpu_us"] for r in base)
        for name in names:
            rs = results[(name, conns)]
            rps = statistics.median(r["rps"] for r in rs)
            p99 = statistics.median(r["p99"] for r in rs)
            cpu = [r["cpu_us"] for r in rs]
            cpu_ratio = f"{statistics.median(cpu) / b_cpu:.2f}" if cpu[0] is not None else "n/a"
            lines.append(
                f"| {name} | {conns} | {fmt([r['rps'] for r in rs])} | {rps / b_rps:.2f} | "
                f"{fmt([r['p50'] for r in rs], digits=2)} | {fmt([r['p99'] for r in rs], digits=2)} | "
                f"{p99 / b_p99:.2f} | {fmt(cpu, digits=1)} | {cpu_ratio} | {sum(r['errors'] for r in rs)} |")
    lines += ["", "Where each proxy's CPU time per request goes (median µs; user space and kernel, "
              "from `/proc/PID/stat`), and the kernel time alone against the CPU target "
              "(0.8× nginx's total):", "",
              "| target | conns | user µs/req | kernel µs/req | kernel ÷ (0.8 × nginx total) |",
              "|---|---|---|---|---|"]
    for conns in [int(c) for c in args.conns.split(",")]:
        b_cpu = statistics.median(r["cpu_us"] for r in results[("nginx", conns)])
        for name in names:
            rs = results[(name, conns)]
            if rs[0]["cpu_us"] is None:
                continue
            user = statistics.median(r["user_us"] for r in rs)
            system = statistics.median(r["sys_us"] for r in rs)
            lines.append(f"| {name} | {conns} | {user:.1f} | {system:.1f} | {system / (0.8 * b_cpu):.2f} |")
    lines += ["", "| target | idle RSS KiB | peak RSS KiB | × nginx peak |", "|---|---|---|---|"]
    for name in names:
        if name == "direct":
            continue
        lines.append(f"| {name} | {idle[name]:,} | {peak[name]:,} | {peak[name] / peak['nginx']:.2f} |")
    versions = {
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
        "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[0],
        "caddy": subprocess.run(["caddy", "version"], capture_output=True, text=True).stdout.strip(),
        "wrk": "wrk " + subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[1],
    }
    with open("/proc/cpuinfo") as f:
        cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    lines += ["", f"Machine: {os.cpu_count()} × {cpu}; kernel {os.uname().release}.",
              "Versions: " + "; ".join(versions.values()) + "."]
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
