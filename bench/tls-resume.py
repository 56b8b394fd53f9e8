#!/usr/bin/env python3
"""TLS handshakes, full and resumed: the server's CPU time per connection.

For the orchestrator and nginx (one worker each, the same ECDSA P-256
certificate, TLS 1.3, session tickets on in both), N connections each make a
full handshake, send one request, read the answer (the tickets come before
it) and close; then N connections resume the session of the one before.
The server's user + system CPU time over each phase (from /proc, the
orchestrator's process or nginx's one worker; the client's own CPU is not
counted) divided by N is the cost of one connection.

    cargo build --release -p orchestrator
    python3 bench/tls-resume.py [--connections 2000] [--rounds 3]

Needs openssl and nginx (Debian: apt-get install nginx-light).
"""

import argparse
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def connect(port, context, session=None):
    raw = socket.create_connection(("127.0.0.1", port))
    tls = context.wrap_socket(raw, server_hostname="localhost", session=session)
    tls.sendall(b"GET /nobody HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    while tls.recv(65536):
        pass
    reused, session = tls.session_reused, tls.session
    tls.close()
    return reused, session


def phase(port, pid, n, resume):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    _, session = connect(port, context)
    reused_count = 0
    before = cpu_seconds(pid)
    for _ in range(n):
        reused, fresh = connect(port, context, session if resume else None)
        reused_count += reused
        if resume:
            session = fresh
    spent = cpu_seconds(pid) - before
    return spent / n * 1e6, reused_count


def wait_port(port, deadline=60):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"nothing listens on {port}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("nginx"):
        sys.exit("nginx is missing: apt-get install nginx-light")
    work = tempfile.mkdtemp(prefix="tls-resume-")
    certs = os.path.join(work, "certs")
    os.makedirs(certs)
    crt, key = os.path.join(certs, "localhost.crt"), os.path.join(certs, "localhost.key")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True)

    o_https, o_public, o_internal = free_port(), free_port(), free_port()
    env = dict(os.environ, DATA_DIR=os.path.join(work, "data"),
               HTTPS_ADDR=f"127.0.0.1:{o_https}", PUBLIC_ADDR=f"127.0.0.1:{o_public}",
               INTERNAL_ADDR=f"127.0.0.1:{o_internal}", CERT_DIR=certs, WORKER_THREADS="1",
               RUST_LOG="warn")
    orch = subprocess.Popen([os.path.join(ROOT, "target/release/orchestrator")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{o_internal}/__internal/health", timeout=1)
            break
        except Exception:
            if time.time() > end:
                sys.exit("the orchestrator did not start")
            time.sleep(0.3)

    n_port = free_port()
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  server {{
    listen 127.0.0.1:{n_port} ssl;
    ssl_certificate {crt};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets on;
    location / {{ return 404; }}
  }}
}}
""")
    nginx = subprocess.Popen(["nginx", "-c", conf, "-g", "daemon off;"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(n_port)
    time.sleep(0.5)
    worker = int(subprocess.run(["pgrep", "-P", str(nginx.pid)], capture_output=True,
                                text=True).stdout.split()[0])

    results = {}
    try:
        for _ in range(args.rounds):
            for name, port, pid in [("orchestrator", o_https, orch.pid),
                                    ("nginx", n_port, worker)]:
                for resume in (False, True):
                    us, reused = phase(port, pid, args.connections, resume)
                    results.setdefault((name, resume), []).append((us, reused))
    finally:
        orch.send_signal(signal.SIGTERM)
        nginx.send_signal(signal.SIGQUIT)
        orch.wait(timeout=30)
        nginx.wait(timeout=30)
    print(f"{args.connections} connections per phase, {args.rounds} rounds, "
          "server CPU µs per connection, median (min–max); resumed: how many reused")
    for name in ("orchestrator", "nginx"):
        line = []
        for resume in (False, True):
            runs = results[(name, resume)]
            us = [r[0] for r in runs]
            what = "resumed" if resume else "full"
            line.append(f"{what} {statistics.median(us):.1f} ({min(us):.1f}–{max(us):.1f})"
                        + (f", {min(r[1] for r in runs)}/{args.connections} reused" if resume else ""))
        print(f"  {name:12} " + "; ".join(line))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
