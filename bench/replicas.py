"""Replicas, measured on a cluster of separate processes: a coordinator and
three workers on 127.0.0.2-4, each on a data dir of its own under a fresh
temporary directory.

1. Bulk INSERT throughput at REPLICAS 1, 2 and 3 (WRITE QUORUM MAJORITY):
   `INSERT INTO t SELECT ... FROM range(ROWS)` into a 6-partition table, as
   MB/s of the bytes one copy stores (SHOW PARTITIONS) and rows/s.
2. Writes after a SIGKILL: REPLICAS 3 (MAJORITY); a client runs one-row
   INSERTs back to back; one worker is SIGKILLed; reported is the gap from
   the last write acknowledged before the kill to the first one after it,
   and how many writes failed in between.
3. Catch-up: REPLICAS 2, WRITE QUORUM ONE; one worker is SIGKILLed, ROWS
   rows are inserted while it is down, then it is started again; reported
   is the time from its start until every copy is in sync, against the
   bytes its copies were behind. Then `ALTER TABLE n SET REPLICAS 2` on a
   table of ROWS rows in one copy: bytes copied and seconds, as it reports
   them.

    .venv/bin/python bench/replicas.py [ROWS] [TESSERA_BIN]
"""

import os
import shutil
import sys
import tempfile
import time

import adbc_driver_flightsql.dbapi as flightsql
from procs import Cluster, rows, wait_for, workers_up

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS = int(sys.argv[1]) if len(sys.argv) > 1 else 4_000_000
BIN = sys.argv[2] if len(sys.argv) > 2 else os.path.expanduser(
    "~/.cache/tessera-target/release/tessera")


INSERT = ("INSERT INTO {t} SELECT value AS id, value * 7 AS a, value % 1000 AS b, "
          "'comment ' || CAST(value % 9973 AS VARCHAR) AS c FROM range({lo}, {hi})")
COLUMNS = "(id BIGINT, a BIGINT, b BIGINT, c VARCHAR) PARTITION BY HASH (id) PARTITIONS 6"


def throughput(cur) -> None:
    print(f"bulk INSERT of {ROWS:,} rows into 6 partitions, 3 workers:")
    print(f"{'replicas':>8} {'seconds':>8} {'MB (one copy)':>14} {'MB/s':>8} {'rows/s':>12}")
    for r in (1, 2, 3):
        t = f"t{r}"
        cur.execute(f"CREATE TABLE {t} {COLUMNS} REPLICAS {r}")
        start = time.perf_counter()
        cur.execute(INSERT.format(t=t, lo=0, hi=ROWS))
        took = time.perf_counter() - start
        mb = sum(p["bytes"] or 0 for p in rows(cur, f"SHOW PARTITIONS {t}")) / 1e6
        print(f"{r:>8} {took:>8.2f} {mb:>14.1f} {mb / took:>8.1f} {ROWS / took:>12,.0f}")


def writes_after_kill(cluster: Cluster, cur) -> None:
    cur.execute(f"CREATE TABLE k {COLUMNS} REPLICAS 3")
    acked, failed = [], 0
    killed_at = None
    i = 0
    while True:
        try:
            cur.execute(INSERT.format(t="k", lo=i, hi=i + 1))
            acked.append(time.perf_counter())
        except flightsql.Error:
            failed += 1
        i += 1
        if killed_at is None and len(acked) == 50:
            killed_at = time.perf_counter()
            cluster.kill("w3")
        if killed_at is not None and acked[-1] > killed_at and len(
                [a for a in acked if a > killed_at]) >= 50:
            break
    before = max(a for a in acked if a <= killed_at)
    after = min(a for a in acked if a > killed_at)
    typical = sorted(b - a for a, b in zip(acked, acked[1:]) if b <= killed_at)[25]
    print(f"REPLICAS 3, one-row INSERTs, one worker SIGKILLed: last write before the kill to "
          f"first after: {(after - before) * 1000:.0f} ms (median gap between writes before: "
          f"{typical * 1000:.1f} ms; {failed} writes failed)")
    cluster.start("w3")
    # Joined again (once the coordinator holds the old process down) and
    # caught up.
    port = f":{cluster.ports['w3']}"
    wait_for(lambda: any(w["address"].endswith(port) and w["state"] == "up"
                         for w in rows(cur, "SHOW WORKERS")), 120)
    wait_for(lambda: all(p["in_sync"] == p["replicas"] for p in rows(cur, "SHOW PARTITIONS k")),
             120)


def catch_up(cluster: Cluster, cur) -> None:
    # A copy that missed ROWS rows while its worker was down.
    cur.execute(f"CREATE TABLE c {COLUMNS} REPLICAS 2 WRITE QUORUM ONE")
    cur.execute(INSERT.format(t="c", lo=0, hi=1000))
    assert all(p["in_sync"] == p["replicas"] for p in rows(cur, "SHOW PARTITIONS c"))
    cluster.kill("w4")
    cur.execute(INSERT.format(t="c", lo=1000, hi=ROWS))
    w4 = open(os.path.join(cluster.root, "w4", "worker.id")).read().strip()
    behind = sum(p["bytes"] or 0 for p in rows(cur, "SHOW PARTITIONS c")
                 if w4 in p["replicas"].split(", ")) / 1e6
    start = time.perf_counter()
    cluster.start("w4")
    port = f":{cluster.ports['w4']}"
    wait_for(lambda: any(w["address"].endswith(port) and w["state"] == "up"
                         for w in rows(cur, "SHOW WORKERS")), 120)
    joined = time.perf_counter() - start
    wait_for(lambda: all(p["in_sync"] == p["replicas"] for p in rows(cur, "SHOW PARTITIONS c")),
             600)
    took = time.perf_counter() - start
    print(f"catch-up after a restart: {behind:.1f} MB behind; from the worker's start to every "
          f"copy in sync {took:.2f} s ({behind / took:.1f} MB/s), of which {joined:.2f} s until "
          f"it had joined again")
    # A new copy of every partition, copied while the statement waits.
    cur.execute(f"CREATE TABLE n {COLUMNS}")
    cur.execute(INSERT.format(t="n", lo=0, hi=ROWS))
    done = rows(cur, "ALTER TABLE n SET REPLICAS 2")[0]
    mb = done["bytes_copied"] / 1e6
    print(f"ALTER TABLE SET REPLICAS 2: {done['copies_added']} copies, {mb:.1f} MB copied in "
          f"{done['seconds']:.2f} s ({mb / done['seconds']:.1f} MB/s)")


def main() -> None:
    if not os.path.exists(BIN):
        raise SystemExit(f"no binary at {BIN}: cargo build --release")
    root = tempfile.mkdtemp(prefix="tessera-bench-replicas-")
    cluster = Cluster(root, BIN)
    try:
        with flightsql.connect(f"grpc://{cluster.address}") as conn, conn.cursor() as cur:
            workers_up(cur, 3)
            throughput(cur)
            writes_after_kill(cluster, cur)
            catch_up(cluster, cur)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
