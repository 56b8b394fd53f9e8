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
  WAIFU_VERSION     this build's version, sent with every hello (default: none)
  DRAIN_FOR         seconds to wait for in-flight requests on shutdown (default 25)

WAIFU_SECRET_FILE and ORCHESTRATOR_TOKEN_FILE name files holding those two
(Docker or Kubernetes secrets), read without their trailing newline.

It says hello with retry and capped exponential backoff (and again every
30 s), answers GET /__internal/health with 204, asks for its database and
logs the answer's fields except the password, and serves GET / with 200.

On SIGTERM (or SIGINT) it leaves gracefully: it stops saying hello, says
goodbye (retrying for up to 5 s), waits 1 s so that every orchestrator
replica has stopped sending it new requests, stops accepting connections,
waits for the requests in flight (at most DRAIN_FOR seconds) and exits 0.
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


def secret(name):
    """The setting `name`, or the content of the file `{name}_FILE` names."""
    value = os.environ.get(name) or None
    path = os.environ.get(name + "_FILE")
    if not path:
        return value
    if value:
        sys.exit(f"{name} and {name}_FILE are both set: set one of them")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().rstrip("\r\n")
    except OSError as e:
        sys.exit(f"{name}_FILE={path!r}: cannot be read: {e}")
    if not text:
        sys.exit(f"{name}_FILE={path!r} is empty")
    return text


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
        "secret": secret("WAIFU_SECRET"),
        "binds": json.loads(binds) if binds else {},
        "version": os.environ.get("WAIFU_VERSION", "").strip() or None,
        "drain_for": float(os.environ.get("DRAIN_FOR", "25")),
    }


TOKEN = secret("ORCHESTRATOR_TOKEN")


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


LEAVING = threading.Event()


def identity(cfg):
    """The fields hello and goodbye share."""
    body = {"name": cfg["name"], "host": cfg["host"]}
    if cfg["secret"]:
        body["secret"] = cfg["secret"]
    return body


def announce(cfg):
    """Says hello until it works, then again every 30 s, until the waifu leaves."""
    body = identity(cfg)
    body["additionalBinds"] = cfg["binds"]
    if cfg["version"]:
        body["version"] = cfg["version"]
    attempt = 0
    while not LEAVING.is_set():
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
            LEAVING.wait(30)
        else:
            wait = backoff(attempt)
            log.warning("hello failed (%s: %s); retrying in %.1f s", status, answer, wait)
            attempt += 1
            LEAVING.wait(wait)


def goodbye(cfg):
    """Says goodbye, retrying for up to 5 s; True once the orchestrator drains this instance."""
    deadline = time.monotonic() + 5
    while True:
        try:
            status, answer = post(cfg["orchestrator"] + "/__internal/goodbye", identity(cfg), timeout=2)
        except OSError as e:
            status, answer = None, str(e)
        if status == 200:
            return True
        if status is not None and 400 <= status < 500 and status != 429:
            # 404: the orchestrator does not know this instance; nothing to drain.
            log.warning("goodbye refused (%s): %s", status, answer)
            return False
        if time.monotonic() >= deadline:
            log.warning("goodbye failed (%s: %s); leaving anyway", status, answer)
            return False
        time.sleep(0.25)


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


class InFlight:
    """Counts requests being answered, so that shutdown can wait for them."""

    def __init__(self):
        self.count = 0
        self.changed = threading.Condition()

    def __enter__(self):
        with self.changed:
            self.count += 1

    def __exit__(self, *_):
        with self.changed:
            self.count -= 1
            self.changed.notify_all()

    def wait_idle(self, timeout):
        with self.changed:
            return self.changed.wait_for(lambda: self.count == 0, timeout)


IN_FLIGHT = InFlight()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are separate writes: without this, Nagle's algorithm
    # holds the body until the client's delayed ACK, 40 ms per request.
    disable_nagle_algorithm = True

    def handle_one_request(self):
        # Counted from the first byte of a request, not while a keep-alive
        # connection waits for one.
        try:
            ready = self.rfile.peek(1)
        except (OSError, ValueError):
            ready = b""
        if not ready:
            self.close_connection = True
            return
        with IN_FLIGHT:
            super().handle_one_request()
            if LEAVING.is_set():
                self.close_connection = True

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

    def leave():
        log.info("shutting down: saying goodbye")
        if goodbye(cfg):
            # Every orchestrator replica stops sending new requests within 1 s.
            time.sleep(1)
        server.shutdown()

    def stop(_signum, _frame):
        if not LEAVING.is_set():
            LEAVING.set()
            threading.Thread(target=leave, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()
    server.server_close()
    if not IN_FLIGHT.wait_idle(cfg["drain_for"]):
        log.warning("%d requests still in flight after %.0f s; exiting", IN_FLIGHT.count, cfg["drain_for"])
    log.info("bye")


if __name__ == "__main__":
    main()
