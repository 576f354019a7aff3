"""The server dies (abort, no cleanup) after a write's commit decision is
logged and before any worker committed it, on a table whose partitions were
compacted: the next start commits the write, once, with its index entries,
and nothing else changes."""

import adbc_driver_flightsql.dbapi as flightsql
from tessera_server import crash_at_failpoint, free_port, start_server, stop_server


def rows(cur, sql):
    cur.execute(sql)
    return cur.fetch_arrow_table().to_pylist()


def state(cur):
    """What the table holds: by full scan, and through each index."""
    scan = rows(cur, "SELECT count(*) AS n, sum(k) AS s FROM t")[0]
    by_local = rows(cur, "SELECT count(*) AS n FROM t WHERE v = 7")[0]["n"]
    by_global = rows(cur, "SELECT count(*) AS n FROM t WHERE g = 7")[0]["n"]
    return scan["n"], scan["s"], by_local, by_global


def test_crash_between_decision_and_commit(data_dir):
    port = free_port()
    url = f"grpc://127.0.0.1:{port}"
    proc = start_server(data_dir, port)
    try:
        with flightsql.connect(url) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (k BIGINT, v BIGINT, g BIGINT) PARTITION BY HASH (k) PARTITIONS 4")
            cur.execute("CREATE INDEX by_v ON t (v) LOCAL")
            cur.execute("CREATE INDEX by_g ON t (g) GLOBAL SYNC PARTITIONS 2")
            for k in range(20):
                cur.execute(f"INSERT INTO t VALUES ({k}, {k % 10}, {k % 10})")
            cur.execute("COMPACT TABLE t")
            assert state(cur) == (20, sum(range(20)), 2, 2)
    finally:
        stop_server(proc)

    crash_at_failpoint(
        data_dir, port, "abort-after-decide",
        "INSERT INTO t SELECT value, 7 AS v, 7 AS g FROM range(100, 110)",
    )

    proc = start_server(data_dir, port)
    try:
        with flightsql.connect(url) as conn, conn.cursor() as cur:
            expected = (30, sum(range(20)) + sum(range(100, 110)), 12, 12)
            assert state(cur) == expected
            cur.execute("COMPACT TABLE t")
            assert state(cur) == expected
    finally:
        stop_server(proc)

    # And once more across a clean restart: the write is there once.
    proc = start_server(data_dir, port)
    try:
        with flightsql.connect(url) as conn, conn.cursor() as cur:
            assert state(cur) == expected
    finally:
        stop_server(proc)
