"""The server dies (abort, no cleanup) in the middle of a partition split:
once its copy of the partition is staged and nothing is decided, and once
its decision is logged and no worker has committed it. After a restart the
table holds every row once, by full scan and through its LOCAL index; the
partition map is the one before the split (first case) or after it
(second: the parent's files, which the crash kept from going, go at the
next start), and splitting again works."""

import os

import adbc_driver_flightsql.dbapi as flightsql
import pytest
from test_cluster_processes import wait_for
from tessera_server import crash_at_failpoint, free_port, start_server, stop_server

ROWS = 400


def rows(cur, sql):
    cur.execute(sql)
    return cur.fetch_arrow_table().to_pylist()


def state(cur):
    """What the table holds: by full scan, and through the index."""
    scan = rows(cur, "SELECT count(*) AS n, sum(k) AS s FROM t")[0]
    by_local = rows(cur, "SELECT count(*) AS n FROM t WHERE v = 7")[0]["n"]
    return scan["n"], scan["s"], by_local


def partition_dirs(data_dir, partition):
    """The directories of `partition` (data and index parts) on every
    worker under `data_dir`."""
    name = f"p{partition:04}"
    return [root for root, dirs, _ in os.walk(data_dir) if name in dirs]


def partitions(cur):
    return sorted(r["partition"] for r in rows(cur, "SHOW PARTITIONS t"))


EXPECTED = (ROWS, sum(range(ROWS)), ROWS // 10)


@pytest.mark.parametrize(
    "failpoint, after",
    [("abort-after-split-copy", [0]), ("abort-after-split-decide", [1, 2])],
)
def test_crash_mid_split(data_dir, failpoint, after):
    port = free_port()
    url = f"grpc://127.0.0.1:{port}"
    proc = start_server(data_dir, port)
    try:
        with flightsql.connect(url) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (k BIGINT, v BIGINT) PARTITION BY RANGE (k)")
            cur.execute("CREATE INDEX by_v ON t (v) LOCAL")
            # Several statements: several files, one compacted away.
            for lo in range(0, ROWS, 100):
                cur.execute(f"INSERT INTO t SELECT value AS k, value % 10 AS v FROM range({lo}, {lo + 100})")
            cur.execute("COMPACT TABLE t")
            assert state(cur) == EXPECTED
            assert partitions(cur) == [0]
    finally:
        stop_server(proc)

    crash_at_failpoint(data_dir, port, failpoint, "ALTER TABLE t SPLIT PARTITION 0 AT 150")

    for _ in range(2):  # and once more across a clean restart
        proc = start_server(data_dir, port)
        try:
            with flightsql.connect(url) as conn, conn.cursor() as cur:
                assert partitions(cur) == after
                assert state(cur) == EXPECTED
            if 0 in after:
                assert partition_dirs(data_dir, 0)
            else:
                # The split's parent, which the crash kept from going.
                wait_for("the parent partition's files to go",
                         lambda: not partition_dirs(data_dir, 0), 60)
        finally:
            stop_server(proc)

    # The table goes on: it splits again (into ids an aborted split may
    # have staged files under), takes writes, and compacts.
    proc = start_server(data_dir, port)
    try:
        with flightsql.connect(url) as conn, conn.cursor() as cur:
            cur.execute(f"ALTER TABLE t SPLIT PARTITION {after[-1]}")
            assert len(partitions(cur)) == len(after) + 1
            assert state(cur) == EXPECTED
            cur.execute(f"INSERT INTO t VALUES ({ROWS}, 7)")
            cur.execute("COMPACT TABLE t")
            assert state(cur) == (ROWS + 1, sum(range(ROWS + 1)), ROWS // 10 + 1)
    finally:
        stop_server(proc)
