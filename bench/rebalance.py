"""A real rebalance, measured: TPC-H at scale factor SF on three workers
(separate processes on 127.0.0.2-4, every table hash-partitioned into 12),
then a fourth worker (127.0.0.5) joins and `REBALANCE APPLY` moves copies
to it while clients keep reading and writing.

Reported: the plan (partitions to move, bytes against the optimum: the
bytes that must move for the new worker to hold a fair share), the bytes
actually copied, the time from APPLY to the last step done, the skew
(most over mean bytes per worker) before and after, and the latency of a
point query (`SELECT ... FROM orders WHERE o_orderkey = k`) and of a
one-row INSERT into orders: p50 and p99 during 20 s before the move, and
during the move. Each client runs its statements back to back on a
connection of its own.

    .venv/bin/python bench/rebalance.py [SF] [TESSERA_BIN] [RATE]

RATE, if given, is `SET tessera.rebalance_rate` for the move ('64MB/s').
"""

import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import adbc_driver_flightsql.dbapi as flightsql
from procs import Cluster, rows, wait_for, workers_up

SF = sys.argv[1] if len(sys.argv) > 1 else "1"
BIN = sys.argv[2] if len(sys.argv) > 2 else os.path.expanduser(
    "~/.cache/tessera-target/release/tessera")
RATE = sys.argv[3] if len(sys.argv) > 3 else None
PARTITIONS = 12
BASELINE_S = 20


class Clients:
    """A point-query client and an INSERT client, recording each
    statement's latency with the phase it began in."""

    def __init__(self, address: str, max_key: int):
        self.address = address
        self.max_key = max_key
        self.phase = "before"
        self.stop = threading.Event()
        self.latencies = {"point query": [], "INSERT": []}
        self.errors = []
        self.threads = [threading.Thread(target=self.point, daemon=True),
                        threading.Thread(target=self.insert, daemon=True)]

    def run(self, name, statement):
        with flightsql.connect(f"grpc://{self.address}") as conn, conn.cursor() as cur:
            i = 0
            while not self.stop.is_set():
                phase = self.phase
                start = time.perf_counter()
                try:
                    cur.execute(statement(i))
                    cur.fetch_arrow_table()
                    self.latencies[name].append((phase, time.perf_counter() - start))
                except flightsql.Error as e:
                    self.errors.append((name, phase, str(e)[:200]))
                i += 1

    def point(self):
        rng = random.Random(7)
        # TPC-H order keys are sparse: 8 of every 32 are used.
        self.run("point query", lambda i: "SELECT o_totalprice FROM orders WHERE o_orderkey = "
                 f"{rng.randrange(1, self.max_key // 32) * 32 + 1}")

    def insert(self):
        base = self.max_key * 4
        self.run("INSERT", lambda i: (
            f"INSERT INTO orders VALUES ({base + i}, 1, 'O', 100.00, DATE '1998-08-02', "
            "'5-LOW', 'Clerk#000000001', 0, 'rebalance bench')"))

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(60)


def quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def total(plan):
    (t,) = [r for r in plan if r["operation"] == "total"]
    return t


def main() -> None:
    if not os.path.exists(BIN):
        raise SystemExit(f"no binary at {BIN}: cargo build --release")
    root = tempfile.mkdtemp(prefix="tessera-bench-rebalance-")
    cluster = Cluster(root, BIN)
    try:
        with flightsql.connect(f"grpc://{cluster.address}") as conn, conn.cursor() as cur:
            workers_up(cur, 3)
            started = time.perf_counter()
            subprocess.run([BIN, "load", "tpch", "--sf", SF, "--partitions", str(PARTITIONS),
                            "--connect", cluster.address], check=True,
                           stdout=subprocess.DEVNULL)
            print(f"TPC-H SF {SF} loaded into 3 workers in {time.perf_counter() - started:.0f} s")
            max_key = rows(cur, "SELECT max(o_orderkey) AS k FROM orders")[0]["k"]
            if RATE:
                cur.execute(f"SET tessera.rebalance_rate = '{RATE}'")

            clients = Clients(cluster.address, max_key)
            clients.start()
            time.sleep(BASELINE_S)

            cluster.start("w5")
            workers_up(cur, 4)
            plan = rows(cur, "EXPLAIN REBALANCE")
            planned = total(plan)
            clients.phase = "during"
            started = time.perf_counter()
            rows(cur, "REBALANCE APPLY")
            wait_for(lambda: all(s["state"] not in ("pending", "running")
                                 for s in rows(cur, "SHOW REBALANCE")), 3600)
            took = time.perf_counter() - started
            clients.phase = "after"
            clients.finish()
            steps = rows(cur, "SHOW REBALANCE")
            after = total(rows(cur, "EXPLAIN REBALANCE"))
            failed = [s for s in steps if s["state"] != "done"]

            copied = sum(s["bytes_copied"] for s in steps)
            moves = [s for s in steps if s["operation"] == "move"]
            print(f"plan: {len(moves)} moves of {PARTITIONS} partitions x 8 tables' copies; "
                  f"{planned['bytes'] / 1e6:.1f} MB planned, optimum "
                  f"{planned['optimum_bytes'] / 1e6:.1f} MB "
                  f"(ratio {planned['moved_vs_optimum']:.3f})")
            print(f"applied in {took:.1f} s{' at ' + RATE if RATE else ''}: "
                  f"{copied / 1e6:.1f} MB copied ({copied / 1e6 / took:.1f} MB/s), "
                  f"{len(failed)} steps not done")
            print(f"skew (max/mean bytes per worker): before {planned['skew_bytes_before']:.3f}, "
                  f"after {after['skew_bytes_before']:.3f}; partitions "
                  f"{planned['skew_partitions_before']:.3f} -> "
                  f"{after['skew_partitions_before']:.3f}")
            print(f"{'statement':<12} {'phase':<7} {'count':>6} {'p50 ms':>8} {'p99 ms':>8} "
                  f"{'max ms':>8}")
            for name, lat in clients.latencies.items():
                for phase in ("before", "during"):
                    got = [s for p, s in lat if p == phase]
                    if got:
                        print(f"{name:<12} {phase:<7} {len(got):>6} {quantile(got, 0.5):>8.1f} "
                              f"{quantile(got, 0.99):>8.1f} {max(got) * 1000:>8.1f}")
            print(f"client errors: {len(clients.errors)} {clients.errors[:3]}")
            n = rows(cur, "SELECT count(*) AS n FROM orders WHERE o_comment = 'rebalance bench'")
            inserted = len(clients.latencies["INSERT"])
            print(f"rows inserted and acknowledged: {inserted}, found after: {n[0]['n']}")
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
