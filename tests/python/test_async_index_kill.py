"""A GLOBAL ASYNC index survives SIGKILL of the server between acknowledging
rows and applying their index entries: after a restart it converges with
nothing missing or doubled."""

import threading
import time

import adbc_driver_flightsql.dbapi as flightsql
from tessera_server import free_port, start_server


def one(cur, sql):
    cur.execute(sql)
    return cur.fetch_arrow_table().column(0).to_pylist()[0]


def index_row(cur, name):
    cur.execute("SHOW INDEXES")
    rows = cur.fetch_arrow_table().to_pylist()
    return next(r for r in rows if r["index_name"] == name)


def test_kill_between_acknowledgement_and_apply(data_dir):
    port = free_port()
    url = f"grpc://127.0.0.1:{port}"
    proc = start_server(data_dir, port)
    try:
        with flightsql.connect(url) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE cars (id BIGINT, color VARCHAR) PARTITION BY HASH (id) PARTITIONS 6")
            cur.execute(
                "INSERT INTO cars SELECT value, CASE WHEN value % 10 = 0 THEN NULL "
                "ELSE 'c' || (value % 5) END FROM range(3000)"
            )
            cur.execute("CREATE INDEX by_color ON cars (color) GLOBAL ASYNC PARTITIONS 4")
            cur.execute("SET tessera.index_apply = 'paused'")
            cur.execute("INSERT INTO cars SELECT value, 'c1' FROM range(3000, 3100)")
            row = index_row(cur, "by_color")
            assert (row["entries"], row["lag_entries"]) == (2700, 100)
            assert one(cur, "SELECT count(*) FROM cars WHERE color = 'c1'") == 600
    finally:
        proc.kill()
        proc.wait()

    proc = start_server(data_dir, port)
    try:
        with flightsql.connect(url) as conn, conn.cursor() as cur:
            cur.execute("SET tessera.index_read = 'fresh'")
            assert one(cur, "SELECT count(*) FROM cars WHERE color = 'c1'") == 700
            row = index_row(cur, "by_color")
            assert (row["entries"], row["lag_entries"]) == (2800, 0)
            assert one(cur, "SELECT count(*) FROM cars WHERE color IN ('c0', 'c1', 'c2', 'c3', 'c4')") == 2800

            # Now kill while inserts and the applier are both running.
            acknowledged = []
            stop = threading.Event()

            def insert():
                writer_conn = flightsql.connect(url)
                w = writer_conn.cursor()
                n = 10_000
                try:
                    while not stop.is_set():
                        w.execute(f"INSERT INTO cars SELECT value, 'c' || (value % 5) FROM range({n}, {n + 50})")
                        acknowledged.append(n)
                        n += 50
                except Exception:
                    pass  # the server was killed mid-statement
                finally:
                    for handle in (w, writer_conn):
                        try:
                            handle.close()
                        except Exception:
                            pass

            writer = threading.Thread(target=insert)
            writer.start()
            time.sleep(3)
    finally:
        proc.kill()
        proc.wait()
        stop.set()
        writer.join()
    assert len(acknowledged) >= 2, f"{len(acknowledged)} inserts acknowledged before the kill"

    proc = start_server(data_dir, port)
    try:
        with flightsql.connect(url) as conn, conn.cursor() as cur:
            cur.execute("SET tessera.index_read = 'fresh'")
            total = one(cur, "SELECT count(*) FROM cars")
            # Every acknowledged insert is there; one in flight at the kill may be too.
            assert total in (3100 + 50 * len(acknowledged), 3100 + 50 * (len(acknowledged) + 1))
            non_null = total - 300
            row = index_row(cur, "by_color")
            assert (row["entries"], row["lag_entries"]) == (non_null, 0)
            assert one(cur, "SELECT count(*) FROM cars WHERE color IN ('c0', 'c1', 'c2', 'c3', 'c4')") == non_null
            for c in ["c0", "c3"]:
                through_index = one(cur, f"SELECT count(*) FROM cars WHERE color = '{c}'")
                full_scan = one(cur, f"SELECT count(*) FROM cars WHERE color || '' = '{c}'")
                assert through_index == full_scan
    finally:
        proc.kill()
        proc.wait()
