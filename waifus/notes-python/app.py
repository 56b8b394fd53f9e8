#!/usr/bin/python3
"""notes-python: a plain Python app (http.server and Debian's psycopg2), with
no waifus code in it. `waifu-run` makes it a waifu and gives it its database:

  waifu-run --health /healthz --database -- python3 app.py

It listens on PORT and reads its database from DATABASE_URL (libpq would
also take PGHOST, PGPORT, PGDATABASE, PGUSER and PGPASSWORD). It creates its
table before it listens, so /healthz passes only once every route can be
served. It does nothing on SIGTERM: waifu-run sends that only once the
orchestrator has nothing in flight to it.

  GET  /        "{WAIFU_VERSION} notes from python"
  GET  /healthz 200 "ok"
  POST /notes   stores a note; its key is the Idempotency-Key or x-key header
                if there is one, else a random one; answers the key
  GET  /notes   every stored key, one per line
  GET  /slow?ms=N  answers after N ms (at most 10 s), like a slow report

Needs psycopg2 (Debian: python3-psycopg2; PyPI: psycopg2-binary).
"""

import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2
import psycopg2.pool

VERSION = os.environ.get("WAIFU_VERSION", "dev")
# Stay well under the per-role connection limit, shared by every instance.
POOL = psycopg2.pool.ThreadedConnectionPool(1, 4, os.environ["DATABASE_URL"])
SLOTS = threading.BoundedSemaphore(4)


def query(sql, args=(), fetch=False):
    """Runs `sql` on a pooled connection, once more on a fresh one if the
    pooled one broke (the database was restarted)."""
    with SLOTS:
        for attempt in (1, 2):
            conn = POOL.getconn()
            try:
                with conn, conn.cursor() as cur:
                    cur.execute(sql, args)
                    rows = cur.fetchall() if fetch else None
                POOL.putconn(conn)
                return rows
            except psycopg2.OperationalError:
                POOL.putconn(conn, close=True)
                if attempt == 2:
                    raise
    return None


query(
    "CREATE TABLE IF NOT EXISTS notes "
    "(key text NOT NULL, length int NOT NULL, at timestamptz NOT NULL DEFAULT now())"
)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status, text):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/healthz":
            self.answer(200, "ok\n")
        elif path == "/":
            self.answer(200, f"{VERSION} notes from python\n")
        elif path == "/slow":
            query_ms = self.path.partition("?ms=")[2]
            ms = min(int(query_ms) if query_ms.isdigit() else 1000, 10000)
            time.sleep(ms / 1000)
            self.answer(200, f"slept {ms}\n")
        elif path == "/notes":
            rows = query("SELECT key FROM notes ORDER BY at", fetch=True)
            self.answer(200, "".join(f"{key}\n" for (key,) in rows))
        else:
            self.answer(404, "not found\n")

    def do_POST(self):
        if self.path.split("?")[0] != "/notes":
            self.answer(404, "not found\n")
            return
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        key = self.headers.get("Idempotency-Key") or self.headers.get("x-key") or str(uuid.uuid4())
        query("INSERT INTO notes (key, length) VALUES (%s, %s)", (key, length))
        self.answer(200, f"{key}\n")

    def log_message(self, format, *args):
        pass


ThreadingHTTPServer.daemon_threads = True
server = ThreadingHTTPServer(("", int(os.environ.get("PORT", "8080"))), Handler)
print(f"notes-python {VERSION} listening on {server.server_address[1]}", flush=True)
server.serve_forever()
