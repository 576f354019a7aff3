"""The server dies (abort, no cleanup) after DROP TABLE took the table out
of the catalog and before its files left the workers: the next start
removes them (data and index directories on every worker), and leaves
every other table's files and rows alone."""

import os
import signal

import adbc_driver_flightsql.dbapi as flightsql
from test_cluster_processes import wait_for
from tessera_server import free_port, start_server, stop_server


def rows(cur, sql):
    cur.execute(sql)
    return cur.fetch_arrow_table().to_pylist()


def table_dirs(data_dir):
    """The storage directories (those holding partition directories) of
    every worker under `data_dir`."""
    found = set()
    for root, dirs, _ in os.walk(data_dir):
        if any(d.startswith("p") and d[1:].isdigit() for d in dirs):
            found.add(os.path.relpath(root, data_dir))
    return found


def test_files_of_a_table_dropped_before_a_crash_go_at_the_next_start(data_dir):
    port = free_port()
    url = f"grpc://127.0.0.1:{port}"
    proc = start_server(data_dir, port)
    try:
        with flightsql.connect(url) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE kept (k BIGINT) PARTITION BY HASH (k) PARTITIONS 4")
            cur.execute("INSERT INTO kept SELECT value FROM range(50)")
            kept = table_dirs(data_dir)
            cur.execute("CREATE TABLE gone (k BIGINT, v BIGINT) PARTITION BY HASH (k) PARTITIONS 4")
            cur.execute("CREATE INDEX gone_v ON gone (v) LOCAL")
            cur.execute("CREATE INDEX gone_g ON gone (v) GLOBAL SYNC PARTITIONS 2")
            cur.execute("INSERT INTO gone SELECT value, value % 10 FROM range(100)")
    finally:
        stop_server(proc)
    dropped = table_dirs(data_dir) - kept
    # The rows and both indexes, on every worker.
    assert len(dropped) >= 6, dropped
    assert len(kept) == 3, kept

    proc = start_server(data_dir, port, env={"TESSERA_FAILPOINT": "abort-before-file-removal"})
    try:
        with flightsql.connect(url) as conn, conn.cursor() as cur:
            cur.execute("DROP TABLE gone")
    except Exception:
        pass  # the server may die before it answers
    code = proc.wait(timeout=30)
    proc.log.close()
    assert code == -signal.SIGABRT, f"the server did not die at the failpoint: exit {code}"
    # The table's own directories at least (its indexes' may have gone
    # with DROP INDEX before it).
    left = table_dirs(data_dir)
    assert kept < left <= kept | dropped, (left, kept, dropped)
    assert len(left - kept) >= 3, left

    proc = start_server(data_dir, port)
    try:
        wait_for("the dropped table's files to go", lambda: table_dirs(data_dir) == kept, 60)
        with flightsql.connect(url) as conn, conn.cursor() as cur:
            assert rows(cur, "SELECT count(*) AS n, sum(k) AS s FROM kept") == [
                {"n": 50, "s": sum(range(50))}
            ]
            # The name is free, and a new table of that name starts empty.
            cur.execute("CREATE TABLE gone (k BIGINT) PARTITION BY HASH (k) PARTITIONS 2")
            assert rows(cur, "SELECT count(*) AS n FROM gone") == [{"n": 0}]
    finally:
        stop_server(proc)
