#!/usr/bin/env python3
"""HTTPS, full handshakes, HTTP/2 and big bodies: the orchestrator beside nginx
and HAProxy doing the same job, one mode per run.

    cargo build --release -p orchestrator -p bench-backend
    python3 bench/protocols.py --mode https        # keep-alive HTTPS, wrk -c64
    python3 bench/protocols.py --mode handshakes   # one request per new TLS connection
    python3 bench/protocols.py --mode h2           # h2load over TLS: 8 connections x 100 streams
    python3 bench/protocols.py --mode h2c          # the same over cleartext (prior knowledge)
    python3 bench/protocols.py --mode big          # 1 MiB and 64 MiB down- and uploads
    python3 bench/protocols.py --mode h2 --syscalls   # also system calls per request (perf)

The setting is the proxy benchmark's (`bench/run.py`): one fast backend,
each proxy strips `/app` and forwards with upstream keep-alive, one worker
each, pinned to CPU 0, the load generator and the backend to CPU 1, rounds
interleaved, medians with min-max, ratios to nginx. TLS is 1.3 only with
one ECDSA P-256 certificate (made here by openssl) for every proxy, session
tickets and caches off in nginx and HAProxy (the load generators do not
resume anyway). nginx's upstream pool keeps 1,024 connections, so HTTP/2's
concurrent streams do not each open one, and nginx closes no connection
after 1,000 requests (its default `keepalive_requests`, which ends an
h2load connection with GOAWAY and left nginx at 8,000 requests per run). For big bodies every proxy
streams (nginx: `proxy_buffering off`, `proxy_request_buffering off`,
`client_max_body_size 0`), so none buffers a body on disk or in memory.

`ORCHESTRATOR_BIN=path` measures another build of the orchestrator (another
crypto provider, say) in the same setting.

Reports requests/s, p99 (wrk's, or h2load's per-request log), the proxy's
CPU per request (user + system from /proc), and peak RSS (VmHWM after the
run). Installs nothing; says what is missing. Stops everything it started.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as common  # noqa: E402  (the proxy benchmark's helpers)

RELEASE = os.path.join(common.ROOT, "target", "release")
MODES = ("https", "handshakes", "h2", "h2c", "big")
PROXIES = ("nginx", "haproxy", "orchestrator")
BIG = {"1MiB": 1 << 20, "64MiB": 64 << 20}


def configs(d, port, backend, mode, crt, key, pem):
    tls = mode in ("https", "handshakes", "h2")
    listen = f"127.0.0.1:{port['nginx']}" + (" ssl http2" if tls else " http2" if mode == "h2c" else "")
    ssl = f"""
    ssl_certificate {crt};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.3;
    ssl_session_tickets off;
    ssl_session_cache off;""" if tls else ""
    stream = """
      proxy_buffering off;
      proxy_request_buffering off;""" if mode == "big" else ""
    nginx = f"""
user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  client_max_body_size 0;
  client_body_temp_path {d}/nginx-body;
  proxy_temp_path {d}/nginx-proxy;
  fastcgi_temp_path {d}/nginx-fastcgi;
  uwsgi_temp_path {d}/nginx-uwsgi;
  scgi_temp_path {d}/nginx-scgi;
  upstream backend {{
    server 127.0.0.1:{backend};
    keepalive 1024;
    keepalive_requests 100000000;
  }}
  server {{
    listen {listen};{ssl}
    location /app/ {{
      proxy_pass http://backend/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;{stream}
    }}
  }}
}}
"""
    bind = f"bind 127.0.0.1:{port['haproxy']}"
    if tls:
        bind += f" ssl crt {pem} alpn h2,http/1.1 ssl-min-ver TLSv1.3 no-tls-tickets"
    elif mode == "h2c":
        bind += " proto h2"
    haproxy = f"""
global
  nbthread 1
  maxconn 8192
  tune.ssl.cachesize 0
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  {bind}
  http-request replace-path ^/app(/.*) \\1
  default_backend be
backend be
  server s1 127.0.0.1:{backend}
"""
    paths = {}
    for name, text in [("nginx.conf", nginx), ("haproxy.cfg", haproxy)]:
        paths[name] = os.path.join(d, name)
        with open(paths[name], "w") as f:
            f.write(text)
    return paths


def h2load(args, seconds, log=None):
    """h2load for `seconds` (or, with None, for the `-n` given in `args`)."""
    cmd = ["taskset", "-c", common.LOAD_CPU, "h2load", "-H", ":authority: localhost"]
    if seconds:
        cmd += ["-D", str(seconds)]
    if log:
        cmd += ["--log-file", log]
    out = subprocess.run(cmd + args, capture_output=True, text=True, timeout=(seconds or 0) + 120).stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored", out)
    if not m:
        sys.exit("h2load said:\n" + out)
    done, ok = int(m.group(3)), int(m.group(4))
    p99 = None
    if log and os.path.exists(log):
        with open(log) as f:
            lat = sorted(int(line.split()[2]) for line in f if line.strip())
        if lat:
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000.0
        os.remove(log)
    return {"rps": ok / (seconds or 1), "requests": ok, "errors": done - ok, "p99": p99}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=MODES, required=True)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=None,
                    help="connections (default: 64 for https, handshakes; 8 for h2, h2c; 4 for big)")
    ap.add_argument("--streams", type=int, default=100, help="h2, h2c: concurrent streams per connection")
    ap.add_argument("--targets", default=",".join(PROXIES))
    ap.add_argument("--syscalls", action="store_true",
                    help="also count each proxy's system calls per request (perf stat, the "
                         "raw_syscalls:sys_enter tracepoint; needs perf and root)")
    args = ap.parse_args()
    mode = args.mode
    targets = [t for t in args.targets.split(",") if t]
    if "nginx" not in targets:
        targets.insert(0, "nginx")
    conns = args.conns or {"https": 64, "handshakes": 64, "h2": 8, "h2c": 8, "big": 4}[mode]
    tools = ["nginx", "haproxy", "openssl", "taskset"] + (["h2load"] if mode in ("h2", "h2c", "big") else ["wrk"])
    tools += ["perf"] if args.syscalls else []
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        pkgs = {"h2load": "nghttp2-client", "taskset": "util-linux", "perf": "linux-perf"}
        sys.exit("missing: " + ", ".join(missing) + "\ninstall them (Debian): apt-get install "
                 + " ".join(sorted({pkgs.get(m, m) for m in missing})))
    for b in ("orchestrator", "bench-backend"):
        if not os.path.exists(os.path.join(RELEASE, b)):
            sys.exit(f"missing {RELEASE}/{b}: cargo build --release -p orchestrator -p bench-backend")

    tmp, log = common.scratch("waifus-protocols-")
    certs = os.path.join(tmp, "certs")
    os.makedirs(certs)
    crt, key = os.path.join(certs, "localhost.crt"), os.path.join(certs, "localhost.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    pem = os.path.join(tmp, "haproxy.pem")
    with open(pem, "w") as f:
        f.write(open(crt).read() + open(key).read())

    backend = common.free_port()
    common.start([os.path.join(RELEASE, "bench-backend"), f"127.0.0.1:{backend}"], common.LOAD_CPU, log)
    common.wait_ok(f"http://127.0.0.1:{backend}/hello", "the backend")
    port = {n: common.free_port() for n in ("nginx", "haproxy", "orchestrator", "relay", "caddy")}
    paths = configs(tmp, port, backend, mode, crt, key, pem)
    internal, plain = common.free_port(), common.free_port()
    tls = mode in ("https", "handshakes", "h2")
    env = dict(os.environ, DATA_DIR=os.path.join(tmp, "data"), INTERNAL_ADDR=f"127.0.0.1:{internal}",
               WORKER_THREADS="1", RUST_LOG="warn", MAX_BODY_SIZE="1GiB")
    if tls:
        env.update(HTTPS_ADDR=f"127.0.0.1:{port['orchestrator']}", PUBLIC_ADDR=f"127.0.0.1:{plain}",
                   CERT_DIR=certs)
    else:
        env.update(PUBLIC_ADDR=f"127.0.0.1:{port['orchestrator']}")
    procs = {
        "nginx": common.start(["nginx", "-c", paths["nginx.conf"], "-g", "daemon off;"], common.PROXY_CPU, log),
        "haproxy": common.start(["haproxy", "-db", "-f", paths["haproxy.cfg"]], common.PROXY_CPU, log),
        "orchestrator": common.start([os.environ.get("ORCHESTRATOR_BIN", os.path.join(RELEASE, "orchestrator"))],
                                     common.PROXY_CPU, log, env=env),
    }
    common.wait_ready(internal, 120)
    hello = json.dumps({"name": "app", "host": f"127.0.0.1:{backend}"}).encode()
    urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{internal}/__internal/hello", data=hello, method="POST"), timeout=5)

    scheme = "https" if tls else "http"
    # `localhost` in URLs: the TLS name, and the Host every proxy routes by.
    base = {n: f"{scheme}://localhost:{port[n]}/app" for n in PROXIES}
    ready = time.time() + 60
    for name in targets:
        while True:
            if mode == "h2c":
                r = h2load(["-n", "1", "-c", "1", base[name] + "/hello"], None)
                ok = r["requests"] == 1
            else:
                probe = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}",
                                        "--resolve", f"localhost:{port[name]}:127.0.0.1",
                                        base[name] + "/hello"], capture_output=True, text=True)
                ok = probe.stdout == "200"
            if ok:
                break
            if time.time() > ready or procs[name].poll() is not None:
                log.flush()
                sys.exit(f"{name} does not answer at {base[name]}; see {log.name}")
            time.sleep(0.3)

    def pids(name):
        if name == "orchestrator":
            # Not its managed PostgreSQL; the binary may have another name
            # (ORCHESTRATOR_BIN).
            binary = os.path.basename(os.environ.get("ORCHESTRATOR_BIN", "orchestrator"))[:15]
            return [p for p in common.tree(procs[name].pid)
                    if open(f"/proc/{p}/comm").read().strip() == binary]
        return common.tree(procs[name].pid)

    upload = os.path.join(tmp, "upload")

    def load(name, case, seconds):
        url = base[name]
        if mode in ("https", "handshakes"):
            extra = ["-H", "Connection: close"] if mode == "handshakes" else []
            return common.wrk(url + "/hello", conns, seconds, extra=extra)
        if mode in ("h2", "h2c"):
            return h2load(["-c", str(conns), "-m", str(args.streams), url + "/hello"], seconds,
                          os.path.join(tmp, "h2load.log"))
        direction, size = case
        if direction == "down":
            return h2load(["--h1", "-c", str(conns), f"{url}/big/{BIG[size]}"], seconds,
                          os.path.join(tmp, "h2load.log"))
        with open(upload, "wb") as f:
            f.truncate(BIG[size])
        return h2load(["--h1", "-c", str(conns), "-d", upload, f"{url}/upload"], seconds,
                      os.path.join(tmp, "h2load.log"))

    cases = [(d, s) for d in ("down", "up") for s in BIG] if mode == "big" else [None]
    common.quiet()
    results = {}
    for case in cases:
        for name in targets:
            load(name, case, 2)  # warm-up, discarded
        for _ in range(args.rounds):
            for name in targets:
                counting = None
                if args.syscalls:
                    counted = os.path.join(tmp, "syscalls.csv")
                    counting = subprocess.Popen(
                        ["perf", "stat", "-e", "raw_syscalls:sys_enter", "-x,", "-o", counted,
                         "-p", ",".join(map(str, pids(name)))], stderr=subprocess.DEVNULL)
                    time.sleep(0.5)
                before = common.cpu_split(pids(name))
                r = load(name, case, args.seconds)
                after = common.cpu_split(pids(name))
                if counting:
                    counting.send_signal(signal.SIGINT)
                    counting.wait()
                    calls = [int(line.split(",")[0]) for line in open(counted)
                             if "raw_syscalls" in line and line.split(",")[0].isdigit()]
                    if not calls:
                        sys.exit(f"perf stat counted no system calls of {name}; "
                                 f"see {counted} (perf needs root, or kernel.perf_event_paranoid <= -1)")
                    r["syscalls"] = calls[0] / r["requests"] if r["requests"] else None
                spent = after[0] + after[1] - before[0] - before[1]
                r["cpu_us"] = spent / r["requests"] * 1e6 if r["requests"] else None
                r["user_us"] = (after[0] - before[0]) / r["requests"] * 1e6 if r["requests"] else None
                r["cpu_share"] = spent / args.seconds
                results.setdefault((name, case), []).append(r)
    peak = {n: common.memory_kib(pids(n), "VmHWM") for n in targets}

    what = {"https": f"keep-alive HTTPS, `wrk -t1 -c{conns}`",
            "handshakes": f"one request per new TLS 1.3 connection, `wrk -t1 -c{conns} -H 'Connection: close'`",
            "h2": f"HTTP/2 over TLS, `h2load -c{conns} -m{args.streams}`",
            "h2c": f"HTTP/2 over cleartext (prior knowledge), `h2load -c{conns} -m{args.streams}`",
            "big": f"big bodies, `h2load --h1 -c{conns}` (down: GET /big/N; up: POST of N bytes)"}[mode]
    lines = [f"Run: {time.strftime('%Y-%m-%d %H:%M')}, `python3 bench/protocols.py --mode {mode}`: {what}; "
             f"{args.rounds} interleaved rounds of {args.seconds} s; proxies on CPU {common.PROXY_CPU}, "
             f"load and backend on CPU {common.LOAD_CPU}.", ""]
    if mode == "big":
        lines += ["| case | target | MiB/s | × nginx | proxy CPU ms/request | × nginx | errors |",
                  "|---|---|---|---|---|---|---|"]
    else:
        lines += ["| target | req/s | × nginx | p99 ms | × nginx p99 | proxy CPU µs/req | × nginx | errors |",
                  "|---|---|---|---|---|---|---|---|"]
    for case in cases:
        base_rs = results[("nginx", case)]
        b_rps = statistics.median(r["rps"] for r in base_rs)
        b_cpu = statistics.median(r["cpu_us"] for r in base_rs if r["cpu_us"] is not None)
        b_p99 = [r["p99"] for r in base_rs if r.get("p99") is not None]
        for name in targets:
            rs = results[(name, case)]
            rps = statistics.median(r["rps"] for r in rs)
            cpu = statistics.median(r["cpu_us"] for r in rs if r["cpu_us"] is not None)
            errors = sum(r["errors"] for r in rs)
            if mode == "big":
                size = BIG[case[1]]
                mib = [r["rps"] * size / (1 << 20) for r in rs]
                lines.append(f"| {case[0]} {case[1]} | {name} | {common.fmt(mib)} | {rps / b_rps:.2f} | "
                             f"{cpu / 1000:.2f} | {cpu / b_cpu:.2f} | {errors} |")
            else:
                p99 = [r["p99"] for r in rs if r.get("p99") is not None]
                p99_ratio = (f"{statistics.median(p99) / statistics.median(b_p99):.2f}"
                             if p99 and b_p99 else "n/a")
                lines.append(f"| {name} | {common.fmt([r['rps'] for r in rs])} | {rps / b_rps:.2f} | "
                             f"{common.fmt(p99, digits=2)} | {p99_ratio} | "
                             f"{common.fmt([r['cpu_us'] for r in rs], digits=1)} | {cpu / b_cpu:.2f} | {errors} |")
    lines += ["", "The proxies' CPU per request split (median µs): user space, and the kernel (the "
              "system calls, the same for every proxy doing the same job):", "",
              "| case | target | user µs/req | kernel µs/req | system calls/req |", "|---|---|---|---|---|"]
    for case in cases:
        for name in targets:
            rs = [r for r in results[(name, case)] if r["cpu_us"] is not None]
            user = statistics.median(r["user_us"] for r in rs)
            total = statistics.median(r["cpu_us"] for r in rs)
            label = f"{case[0]} {case[1]}" if case else mode
            calls = [r["syscalls"] for r in rs if r.get("syscalls") is not None]
            calls = f"{statistics.median(calls):.2f}" if calls else "not counted (--syscalls)"
            lines.append(f"| {label} | {name} | {user:.1f} | {total - user:.1f} | {calls} |")
    lines += ["", "| target | peak RSS KiB | × nginx |", "|---|---|---|"]
    for name in targets:
        lines.append(f"| {name} | {peak[name]:,} | {peak[name] / peak['nginx']:.2f} |")
    versions = [subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
                subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[0],
                subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()]
    lines += ["", "Versions: " + "; ".join(versions) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    shutil.rmtree(tmp, True)


if __name__ == "__main__":
    main()
