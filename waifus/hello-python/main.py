#!/usr/bin/env python3
"""hello-python: a waifu in Python, standard library only.

It follows the waifu protocol (docs/protocol.md) with the same environment
variables as the Rust SDK:

  ORCHESTRATOR_URL  default http://orchestrator:2137
  WAIFU_NAME        default: the hostname
  WAIFU_HOST        default: {hostname}:{PORT}
  PORT              default 8080 (listens on all interfaces)
  WAIFU_SECRET      claims the name with every hello, and asks for a database
  ORCHESTRATOR_TOKEN  the orchestrator's INTERNAL_TOKEN, sent as a bearer token
  WAIFU_BINDS       a JSON object like {"https://hello.waifu": "/"}
  LISTEN_ADDR       default 0.0.0.0 (all interfaces)

It says hello with retry and capped exponential backoff (and again every
30 s), answers GET /__internal/health with 204, asks for its database and
logs the answer's fields except the password, and serves GET / with 200.
"""

import json
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("hello-python")


def settings():
    hostname = socket.gethostname().lower()
    port = int(os.environ.get("PORT", "8080"))
    binds = os.environ.get("WAIFU_BINDS", "").strip()
    return {
        "orchestrator": os.environ.get("ORCHESTRATOR_URL", "http://orchestrator:2137").rstrip("/"),
        "name": os.environ.get("WAIFU_NAME", hostname),
        "host": os.environ.get("WAIFU_HOST", f"{hostname}:{port}"),
        "port": port,
        "listen": os.environ.get("LISTEN_ADDR", "0.0.0.0"),
        "secret": os.environ.get("WAIFU_SECRET") or None,
        "binds": json.loads(binds) if binds else {},
    }


TOKEN = os.environ.get("ORCHESTRATOR_TOKEN") or None


def post(url, body, timeout=10):
    """POSTs JSON; returns (status, parsed body or None). Raises OSError when unreachable."""
    headers = {"Content-Type": "application/json"}
    if TOKEN:
        headers["Authorization"] = "Bearer " + TOKEN
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"null")
        except ValueError:
            return e.code, None


def backoff(attempt):
    """250 ms doubling up to 30 s, with +-20 % jitter."""
    return min(0.25 * 2 ** min(attempt, 16), 30.0) * random.uniform(0.8, 1.2)


def announce(cfg):
    """Says hello until it works, then again every 30 s."""
    body = {"name": cfg["name"], "host": cfg["host"], "additionalBinds": cfg["binds"]}
    if cfg["secret"]:
        body["secret"] = cfg["secret"]
    attempt = 0
    while True:
        try:
            status, answer = post(cfg["orchestrator"] + "/__internal/hello", body)
        except OSError as e:
            status, answer = None, str(e)
        if status == 200:
            if attempt > 0 or answer.get("binds"):
                log.info("said hello: %s", answer.get("url"))
                for b in answer.get("binds", []):
                    if b.get("accepted"):
                        log.info("bind accepted: %s -> %s", b["bind"], b["target"])
                    else:
                        log.warning("bind refused: %s (%s)", b["bind"], b.get("reason"))
            attempt = 0
            time.sleep(30)
        else:
            wait = backoff(attempt)
            log.warning("hello failed (%s: %s); retrying in %.1f s", status, answer, wait)
            attempt += 1
            time.sleep(wait)


def ask_database(cfg):
    """Asks for this waifu's database; logs everything but the password."""
    if not cfg["secret"]:
        log.info("no WAIFU_SECRET: not asking for a database")
        return
    attempt = 0
    while True:
        try:
            status, answer = post(
                cfg["orchestrator"] + "/__internal/database",
                {"name": cfg["name"], "secret": cfg["secret"]},
            )
        except OSError as e:
            status, answer = None, str(e)
        if status == 200:
            shown = {k: v for k, v in answer.items() if k != "password"}
            log.info("database: %s", json.dumps(shown, sort_keys=True))
            return
        if status is not None and 400 <= status < 500 and status != 429:
            log.error("the orchestrator refused the database request (%s): %s", status, answer)
            return
        wait = backoff(attempt)
        log.warning("database request failed (%s); retrying in %.1f s", status, wait)
        attempt += 1
        time.sleep(wait)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/__internal/health":
            self.send_response(204)
            self.end_headers()
        elif path == "/":
            self.reply(200, "text/plain; charset=utf-8", b"hello from python\n")
        else:
            body = json.dumps({"error": "not_found", "message": "no such page"}).encode()
            self.reply(404, "application/json", body)

    def reply(self, status, content_type, body):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        log.debug(fmt, *args)


def main():
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    cfg = settings()
    server = ThreadingHTTPServer((cfg["listen"], cfg["port"]), Handler)
    server.daemon_threads = True
    log.info("listening on port %d as %s", cfg["port"], cfg["name"])
    threading.Thread(target=announce, args=(cfg,), daemon=True).start()
    threading.Thread(target=ask_database, args=(cfg,), daemon=True).start()

    def stop(_signum, _frame):
        log.info("shutting down")
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
