#!/usr/bin/python3
"""What the hello's one statement costs PostgreSQL on a connection: parsed,
planned, executed, and again after new statistics.

Starts the release orchestrator on its managed PostgreSQL (so the tables are
the real ones, migrated), then on fresh connections of its own:

- prepares the statement the orchestrator records a hello with (read from
  crates/store/src/hello.rs) and times the prepare and the first 8
  executions (PostgreSQL plans the first five with the parameters' values,
  then settles on a generic plan);
- runs `ANALYZE` on each table the statement writes and times the next
  executions: new statistics invalidate the prepared statement, and its next
  execution parses and plans it again.

Every execution records a new waifu (a durable commit, as a hello's is).
`--statement first` does the same for the short statement a new waifu's
first hello without binds runs (`FIRST`).

    cargo build --release -p orchestrator
    /usr/bin/python3 bench/hello-statement.py [--connections 3] [--statement first]

Needs Debian's python3-psycopg2 (hence /usr/bin/python3).
"""

import argparse
import os
import re
import sys
import time

import psycopg2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402

TYPES = {
    "hello": ("text,text,text[],text[],text[],text[],text,text,text,text,bigint,boolean,text,"
              "bigint,integer,bigint,text,text[],text[],boolean,integer[],bigint"),
    "first": "text,text,text,text,text,text,bigint,text,bigint,integer,bigint,text",
}
ANALYZED = ["waifus", "instances", "waifu_versions", "audit", "health_history"]


def statement_sql(const):
    src = open(os.path.join(R.ROOT, "crates", "store", "src", "hello.rs")).read()
    m = re.search(r'const ' + const + r': &str = "(.*?)";\n', src, re.S)
    if not m:
        sys.exit(f"the {const} statement was not found in crates/store/src/hello.rs")
    return m.group(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=3)
    ap.add_argument("--statement", choices=["hello", "first"], default="hello")
    args = ap.parse_args()
    tmp, log = R.scratch("waifus-hello-statement-")
    data = os.path.join(tmp, "data")
    internal = R.free_port()
    R.start([os.path.join(R.ROOT, "target", "release", "orchestrator")], R.PROXY_CPU, log,
            env=dict(os.environ, DATA_DIR=data, PUBLIC_ADDR=f"127.0.0.1:{R.free_port()}",
                     INTERNAL_ADDR=f"127.0.0.1:{internal}", RUST_LOG="warn"))
    try:
        R.wait_ready(internal)
        port = open(os.path.join(data, "postgres-port")).read().strip()
        password = open(os.path.join(data, "postgres-password")).read().strip()
        sql = statement_sql(args.statement.upper())
        n = [0]

        def params():
            n[0] += 1
            name = f"s{n[0]}"
            if args.statement == "first":
                return (f"('{name}','127.0.0.1:9','waifus_changes','bench {name}','127.0.0.1',"
                        f"NULL,{1_700_000_000_000 + n[0]},NULL,NULL,NULL,NULL,'bench')")
            return (f"('{name}','127.0.0.1:9','{{}}','{{}}','{{}}','{{}}','waifus_changes',"
                    f"'bench {name}','127.0.0.1',NULL,NULL,false,NULL,NULL,NULL,NULL,'bench',"
                    f"'{{}}','{{}}',false,'{{}}',0)")

        def timed(cur, statement):
            t = time.perf_counter()
            cur.execute(statement)
            if cur.description:
                cur.fetchall()
            return (time.perf_counter() - t) * 1e3

        print(f"the hello's statement ({args.statement.upper()}) on {args.connections} fresh connections (ms):")
        for c in range(args.connections):
            conn = psycopg2.connect(host="127.0.0.1", port=port, user="waifus",
                                    password=password, dbname="waifus")
            conn.autocommit = True
            cur = conn.cursor()
            prepare = timed(cur, f"PREPARE hello({TYPES[args.statement]}) AS {sql}")
            first = [timed(cur, "EXECUTE hello" + params()) for _ in range(8)]
            line = [f"prepare {prepare:.2f}", "executions " + " ".join(f"{t:.2f}" for t in first)]
            for table in ANALYZED:
                other = psycopg2.connect(host="127.0.0.1", port=port, user="waifus",
                                         password=password, dbname="waifus")
                other.autocommit = True
                other.cursor().execute(f"ANALYZE {table}")
                other.close()
                after = [timed(cur, "EXECUTE hello" + params()) for _ in range(2)]
                line.append(f"after ANALYZE {table} " + " ".join(f"{t:.2f}" for t in after))
            print(f"  connection {c + 1}: " + "; ".join(line))
            conn.close()
    finally:
        R.stop_all()


if __name__ == "__main__":
    main()
