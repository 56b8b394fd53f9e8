#!/usr/bin/env python3
"""User-space work per request, counted, not timed: nginx, HAProxy, the relay
and the orchestrator, each under `valgrind --tool=callgrind`, for the same
fixed stream of keep-alive GETs; and system calls per request under
`strace -c -f` for the same stream.

    cargo build --release -p orchestrator -p bench-backend
    python3 bench/callgrind.py [--requests 20000] [--conns 8] [--repeat 2]

Each target is started under callgrind with one worker, warmed up, and then
its counters are zeroed (`callgrind_control -z`), the stream is sent
(`h2load --h1 -n N -c C`, every response checked), and the counters dumped
(`callgrind_control -d`): the dump holds the instructions of exactly that
window, whatever start-up cost. Valgrind handles a control command only while
the program runs, so single requests are sent until it answers (a handful
before the zero, one after the dump: noise of about 1 in N). Instructions are
repeatable whatever else the machine does; each target is measured `--repeat`
times and every reading is printed. The orchestrator's top functions by
inclusive and exclusive cost follow, per request.

Installs nothing; says what is missing. Stops every process it started.
"""

import argparse
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import protocols  # noqa: E402  (the TLS configurations)
import run as common  # noqa: E402  (the proxy benchmark's helpers and configs)

ROOT = common.ROOT
RELEASE = os.path.join(ROOT, "target", "release")
TARGETS = ("nginx", "haproxy", "relay", "orchestrator")


UNVERIFIED = ssl.create_default_context()
UNVERIFIED.check_hostname = False
UNVERIFIED.verify_mode = ssl.CERT_NONE


def poke(url):
    """One request on a new connection; the answer does not matter."""
    try:
        req = urllib.request.Request(url, headers={"Host": "localhost"})
        with urllib.request.urlopen(req, timeout=30, context=UNVERIFIED) as r:
            r.read()
    except Exception:
        pass


def control(flag, pid, url):
    """Runs `callgrind_control FLAG PID`, waking the program with requests
    until valgrind has handled the command."""
    ctl = subprocess.Popen(["callgrind_control", flag, str(pid)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    pokes = 0
    deadline = time.time() + 120
    while ctl.poll() is None:
        if time.time() > deadline:
            ctl.kill()
            sys.exit(f"callgrind_control {flag} {pid} got no answer")
        poke(url)
        pokes += 1
        try:
            ctl.wait(timeout=0.3)
        except subprocess.TimeoutExpired:
            pass
    return pokes


def h2load(url, n, conns):
    out = subprocess.run(["h2load", "--h1", "-n", str(n), "-c", str(conns), "-H", ":authority: localhost", url],
                         capture_output=True, text=True, timeout=3600).stdout
    m = re.search(r"status codes: (\d+) 2xx", out)
    ok = int(m.group(1)) if m else 0
    if ok != n:
        sys.exit(f"h2load: {ok} of {n} answered 2xx against {url}:\n{out}")


def total_instructions(path):
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    sys.exit(f"no totals in {path}")


def newest_dump(prefix):
    dumps = [p for p in os.listdir(os.path.dirname(prefix))
             if p.startswith(os.path.basename(prefix) + ".")]
    # cg.out.<pid>.<n>[-<thread>]; with --separate-threads=no one file per dump
    dumps.sort(key=lambda p: os.path.getmtime(os.path.join(os.path.dirname(prefix), p)))
    return os.path.join(os.path.dirname(prefix), dumps[-1])


def short(name, width=110):
    name = re.sub(r"\s*\[[^\]]*\]$", "", name)  # the object file it is in
    name = re.sub(r"::h[0-9a-f]{16}$", "", name)
    name = re.sub(r"<[^<>]*>", "<…>", name) if len(name) > width else name
    return name if len(name) <= width else name[: width - 1] + "…"


def top(path, n, inclusive, per):
    out = subprocess.run(["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}",
                          "--threshold=100", path], capture_output=True, text=True).stdout
    rows = []
    total = total_instructions(path)
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+\([\s\d.]+%\)\s+(.*)$", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        count = int(m.group(1).replace(",", ""))
        if count >= total:
            # callgrind_annotate lists the frames below `main` with the
            # whole window as their own cost after a zeroing; they are not.
            continue
        where = m.group(2)
        where = where.split(":", 1)[1] if ":" in where and where.startswith(("/", "?", "???")) else where
        rows.append((count, short(where.strip())))
        if len(rows) == n:
            break
    return [f"| {c / per:,.0f} | `{w}` |" for c, w in rows]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--tls", action="store_true",
                    help="HTTPS (TLS 1.3, one ECDSA P-256 certificate) to nginx, HAProxy and the "
                         "orchestrator; the relay does no TLS and is left out")
    ap.add_argument("--no-strace", action="store_true")
    ap.add_argument("--keep", metavar="FILE", help="copy the orchestrator's last callgrind dump here")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "callgrind-results.md"))
    args = ap.parse_args()
    targets = [t for t in args.targets.split(",") if t and not (args.tls and t == "relay")]
    if set(targets) - set(TARGETS):
        sys.exit("unknown targets: " + ", ".join(sorted(set(targets) - set(TARGETS))))
    tools = ["valgrind", "callgrind_control", "callgrind_annotate", "h2load"] + \
        ([] if args.no_strace else ["strace"]) + [t for t in ("nginx", "haproxy") if t in targets]
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        pkgs = {"callgrind_control": "valgrind", "callgrind_annotate": "valgrind", "h2load": "nghttp2-client"}
        sys.exit("missing: " + ", ".join(missing) + "\ninstall them (Debian): apt-get install "
                 + " ".join(sorted({pkgs.get(m, m) for m in missing})))
    for b in ["bench-backend", "bench-relay"] + (["orchestrator"] if "orchestrator" in targets else []):
        if not os.path.exists(os.path.join(RELEASE, b)):
            sys.exit(f"missing {RELEASE}/{b}: cargo build --release -p orchestrator -p bench-backend")

    tmp, log = common.scratch("waifus-callgrind-")
    backend = int(common.start_backend(RELEASE, log).rsplit(":", 1)[1])

    certs = os.path.join(tmp, "certs")
    os.makedirs(certs)
    crt, key = os.path.join(certs, "localhost.crt"), os.path.join(certs, "localhost.key")
    pem = os.path.join(tmp, "haproxy.pem")
    if args.tls:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
        with open(pem, "w") as f:
            f.write(open(crt).read() + open(key).read())

    def launch(name, wrap):
        """Starts one target under `wrap` (a command prefix); returns its
        process, its URL and the pid to control."""
        port = {n: common.free_port() for n in ("relay", "nginx", "haproxy", "caddy", "caddy-tuned", "orchestrator")}
        d = tempfile.mkdtemp(dir=tmp)
        paths = common.configs(d, port, backend)
        if args.tls:
            paths = protocols.configs(d, port, backend, "https", crt, key, pem)
        if name == "nginx":
            # One process: the worker is the master.
            with open(paths["nginx.conf"]) as f:
                text = f.read()
            with open(paths["nginx.conf"], "w") as f:
                f.write("master_process off;\n" + text)
            cmd = ["nginx", "-c", paths["nginx.conf"], "-g", "daemon off;"]
        elif name == "haproxy":
            cmd = ["haproxy", "-db", "-f", paths["haproxy.cfg"]]
        elif name == "relay":
            cmd = [os.path.join(RELEASE, "bench-relay"), f"127.0.0.1:{port['relay']}", f"127.0.0.1:{backend}"]
        else:
            cmd = [os.path.join(RELEASE, "orchestrator")]
        env = None
        internal = None
        if name == "orchestrator":
            internal = common.free_port()
            env = dict(os.environ, DATA_DIR=os.path.join(d, "data"), WORKER_THREADS="1",
                       PUBLIC_ADDR=f"127.0.0.1:{port['orchestrator']}",
                       INTERNAL_ADDR=f"127.0.0.1:{internal}", RUST_LOG="warn")
            if args.tls:
                env.update(PUBLIC_ADDR=f"127.0.0.1:{common.free_port()}", CERT_DIR=certs,
                           HTTPS_ADDR=f"127.0.0.1:{port['orchestrator']}")
        proc = common.start(wrap(d) + cmd, common.PROXY_CPU, log, env=env)
        if internal:
            deadline = time.time() + 300
            while common.get(f"http://127.0.0.1:{internal}/__internal/health", timeout=10) != 204:
                if time.time() > deadline or proc.poll() is not None:
                    sys.exit("the orchestrator did not become ready")
                time.sleep(0.5)
            hello = json.dumps({"name": "app", "host": f"127.0.0.1:{backend}"}).encode()
            urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{internal}/__internal/hello", data=hello, method="POST"), timeout=30)
        url = f"{'https' if args.tls else 'http'}://localhost:{port[name]}/app/hello"
        deadline = time.time() + 300
        while True:
            try:
                req = urllib.request.Request(url, headers={"Host": "localhost"})
                with urllib.request.urlopen(req, timeout=10, context=UNVERIFIED) as r:
                    if r.status == 200:
                        break
            except Exception:
                pass
            if time.time() > deadline:
                sys.exit(f"{name} did not come up ({url})")
            time.sleep(0.3)
        return proc, url, d

    def stop(proc):
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    per_request = {}
    dumps = {}
    for name in targets:
        for _ in range(args.repeat):
            out = {}

            def wrap(d, out=out):
                out["prefix"] = os.path.join(d, "cg.out")
                return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out['prefix']}.%p",
                        "--dump-instr=no", "--dump-line=no"]
            proc, url, d = launch(name, wrap)
            # The valgrind process is the target itself (exec'd through taskset).
            pid = proc.pid
            h2load(url, min(500, args.requests), args.conns)  # warm-up: pools, caches
            control("-z", pid, url)
            h2load(url, args.requests, args.conns)
            control("-d", pid, url)
            dump = newest_dump(out["prefix"] + f".{pid}")
            instructions = total_instructions(dump)
            per_request.setdefault(name, []).append(instructions / args.requests)
            dumps[name] = dump
            stop(proc)
            print(f"{name}: {instructions:,} instructions for {args.requests} requests = "
                  f"{instructions / args.requests:,.0f} per request", flush=True)

    syscalls = {}
    if not args.no_strace:
        for name in targets:
            proc, url, d = launch(name, lambda d: [])
            h2load(url, min(500, args.requests), args.conns)
            pids = common.tree(proc.pid) if name != "orchestrator" else [
                p for p in common.tree(proc.pid) if open(f"/proc/{p}/comm").read().strip() == "orchestrator"]
            report = os.path.join(d, "strace.txt")
            tracer = subprocess.Popen(["strace", "-c", "-f", "-o", report] +
                                      [a for p in pids for a in ("-p", str(p))],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)  # strace attaches before the stream (not a measurement)
            h2load(url, args.requests, args.conns)
            tracer.send_signal(2)
            tracer.wait(timeout=60)
            stop(proc)
            with open(report) as f:
                text = f.read()
            m = re.search(r"^\s*100\.00\s+\S+\s+\S+\s+(\d+)\s+(\d+)?\s*total", text, re.M)
            total = int(m.group(1)) if m else 0
            calls = {}
            for line in text.splitlines():
                parts = line.split()
                if len(parts) >= 5 and parts[-1] != "total" and parts[3].isdigit():
                    calls[parts[-1]] = int(parts[3])
            syscalls[name] = (total / args.requests, calls)
            print(f"{name}: {total / args.requests:.2f} system calls per request", flush=True)

    nginx = sum(per_request["nginx"]) / len(per_request["nginx"]) if "nginx" in per_request else None
    lines = [f"Run: {time.strftime('%Y-%m-%d %H:%M')}, `python3 bench/callgrind.py --requests "
             f"{args.requests} --conns {args.conns} --repeat {args.repeat}{' --tls' if args.tls else ''}`: "
             f"{args.requests:,} keep-alive {'HTTPS ' if args.tls else ''}"
             f"GETs (`h2load --h1 -c {args.conns}`) through each, one worker each, the counters zeroed "
             f"before and dumped after the stream.", "",
             "| target | instructions per request (each run) | × nginx | system calls per request |",
             "|---|---|---|---|"]
    for name in targets:
        runs = per_request[name]
        mean = sum(runs) / len(runs)
        ratio = f"{mean / nginx:.2f}" if nginx else "n/a"
        sc = f"{syscalls[name][0]:.2f}" if name in syscalls else "n/a"
        lines.append(f"| {name} | {' / '.join(f'{r:,.0f}' for r in runs)} | {ratio} | {sc} |")
    if syscalls:
        lines += ["", "System calls per request, the most frequent (`strace -c -f`):", ""]
        for name, (_, calls) in syscalls.items():
            common_calls = sorted(calls.items(), key=lambda kv: -kv[1])[:6]
            lines.append(f"- {name}: " + ", ".join(f"{k} {v / args.requests:.2f}" for k, v in common_calls))
    if "orchestrator" in dumps:
        for inclusive in (True, False):
            kind = "inclusive" if inclusive else "exclusive"
            lines += ["", f"The orchestrator's top {args.top} functions by {kind} cost "
                      "(instructions per request):", "", "| instructions | function |", "|---|---|"]
            lines += top(dumps["orchestrator"], args.top, inclusive, args.requests)
    if args.keep and "orchestrator" in dumps:
        shutil.copy(dumps["orchestrator"], args.keep)
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    shutil.rmtree(tmp, True)


if __name__ == "__main__":
    main()
