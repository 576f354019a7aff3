"""Files on the server's machine: `CREATE EXTERNAL TABLE ... LOCATION` reads
only under --import-dir, `COPY ... TO` writes only under --export-dir, an
external table is not written through, and a server started without them
reads and writes no files for clients."""

import os

import adbc_driver_flightsql.dbapi as flightsql
import pytest
from tessera_server import free_port, start_server, stop_server
from test_cluster_processes import rows


def test_import_and_export_dirs(data_dir):
    imports = os.path.join(data_dir, "imports")
    exports = os.path.join(data_dir, "exports")
    elsewhere = os.path.join(data_dir, "elsewhere")
    for d in (imports, exports, elsewhere):
        os.makedirs(d)
    server_dir = os.path.join(data_dir, "server")
    os.makedirs(server_dir)
    port = free_port()
    proc = start_server(server_dir, port, args=("--import-dir", imports, "--export-dir", exports))
    try:
        with flightsql.connect(f"grpc://127.0.0.1:{port}") as conn, conn.cursor() as cur:
            out = os.path.join(exports, "nums.parquet")
            assert rows(
                cur, f"COPY (SELECT value AS n FROM range(40)) TO '{out}' STORED AS PARQUET"
            ) == [{"count": 40}]
            assert os.path.exists(out)
            for bad in (
                os.path.join(elsewhere, "x.parquet"),
                os.path.join(exports, "..", "elsewhere", "x.parquet"),
                os.path.join(imports, "x.parquet"),
                "s3://bucket/x.parquet",
            ):
                with pytest.raises(flightsql.Error, match="COPY ... TO") as e:
                    cur.execute(f"COPY (SELECT 1 AS n) TO '{bad}' STORED AS PARQUET")
                assert "--export-dir" in str(e.value) or "not served" in str(e.value)
            assert os.listdir(elsewhere) == []

            # Reading: only under the import dir, symbolic links followed.
            with pytest.raises(flightsql.Error, match="outside the directories"):
                cur.execute(f"CREATE EXTERNAL TABLE e STORED AS PARQUET LOCATION '{out}'")
            os.replace(out, os.path.join(imports, "nums.parquet"))
            cur.execute(
                "CREATE EXTERNAL TABLE e STORED AS PARQUET "
                f"LOCATION '{os.path.join(imports, 'nums.parquet')}'"
            )
            assert rows(cur, "SELECT count(*) AS c, sum(n) AS s FROM e") == [{"c": 40, "s": 780}]
            with open(os.path.join(elsewhere, "secret.csv"), "w") as f:
                f.write("a\n1\n")
            os.symlink(elsewhere, os.path.join(imports, "link"))
            with pytest.raises(flightsql.Error, match="outside the directories"):
                cur.execute(
                    "CREATE EXTERNAL TABLE s STORED AS CSV "
                    f"LOCATION '{os.path.join(imports, 'link', 'secret.csv')}'"
                )
            with pytest.raises(flightsql.Error, match="external table"):
                cur.execute("INSERT INTO e VALUES (1)")
            assert rows(cur, "SELECT count(*) AS c FROM e") == [{"c": 40}]
    finally:
        stop_server(proc)


def test_no_files_by_default(data_dir):
    port = free_port()
    proc = start_server(data_dir, port)
    try:
        with flightsql.connect(f"grpc://127.0.0.1:{port}") as conn, conn.cursor() as cur:
            target = os.path.join(data_dir, "out.parquet")
            with pytest.raises(flightsql.Error, match="--export-dir DIR"):
                cur.execute(f"COPY (SELECT 1 AS n) TO '{target}' STORED AS PARQUET")
            with pytest.raises(flightsql.Error, match="--import-dir DIR"):
                cur.execute(f"CREATE EXTERNAL TABLE e STORED AS CSV LOCATION '{data_dir}'")
            with pytest.raises(flightsql.Error, match="--export-dir DIR"):
                cur.execute(f"EXPLAIN ANALYZE COPY (SELECT 1 AS n) TO '{target}' STORED AS CSV")
            assert not os.path.exists(target)
    finally:
        stop_server(proc)


def test_read_file_functions(data_dir):
    """read_csv, read_parquet and read_json read files under --import-dir as
    tables (a query, a join with a table, INSERT ... SELECT), refuse a path
    elsewhere or a bad argument with a clear error, and are for admins
    only, as CREATE EXTERNAL TABLE is."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    imports = os.path.join(data_dir, "imports")
    elsewhere = os.path.join(data_dir, "elsewhere")
    for d in (imports, elsewhere):
        os.makedirs(d)
    with open(os.path.join(imports, "cities.csv"), "w") as f:
        f.write("id,name,pop\n1,Oslo,709000\n2,Bergen,291000\n3,\"Ålesund, By\",67000\n")
    with open(os.path.join(imports, "events.jsonl"), "w") as f:
        for i in range(5):
            f.write(f'{{"id": {i % 3 + 1}, "kind": "k{i}"}}\n')
    pq.write_table(pa.table({"id": [1, 2, 3], "area": [454.0, 465.3, 98.6]}),
                   os.path.join(imports, "areas.parquet"))
    with open(os.path.join(elsewhere, "secret.csv"), "w") as f:
        f.write("a\n1\n")
    os.makedirs(os.path.join(imports, "parts"))
    for i in range(3):
        pq.write_table(pa.table({"n": list(range(i * 10, i * 10 + 10))}),
                       os.path.join(imports, "parts", f"part-{i}.parquet"))

    server_dir = os.path.join(data_dir, "server")
    os.makedirs(server_dir)
    port = free_port()
    password = "admin-" + os.urandom(6).hex()
    proc = start_server(server_dir, port, sign_in=True, env={"TESSERA_PASSWORD": password},
                        args=("--import-dir", imports))
    url = f"grpc://127.0.0.1:{port}"
    try:
        admin_conn = flightsql.connect(url, db_kwargs={"username": "admin", "password": password})
        with admin_conn as conn, conn.cursor() as cur:
            csv = os.path.join(imports, "cities.csv")
            assert rows(cur, f"SELECT id, name, pop FROM read_csv('{csv}') ORDER BY id") == [
                {"id": 1, "name": "Oslo", "pop": 709000},
                {"id": 2, "name": "Bergen", "pop": 291000},
                {"id": 3, "name": "Ålesund, By", "pop": 67000},
            ]
            areas = os.path.join(imports, "areas.parquet")
            events = os.path.join(imports, "events.jsonl")
            got = rows(cur, f"SELECT c.name, a.area, count(e.kind) AS n "
                            f"FROM read_csv('{csv}') c JOIN read_parquet('{areas}') a USING (id) "
                            f"JOIN read_json('{events}') e USING (id) "
                            f"GROUP BY c.name, a.area ORDER BY c.name")
            assert got == [{"name": "Bergen", "area": 465.3, "n": 2},
                           {"name": "Oslo", "area": 454.0, "n": 2},
                           {"name": "Ålesund, By", "area": 98.6, "n": 1}]
            # Into a partitioned table, as one INSERT.
            cur.execute("CREATE TABLE cities (id BIGINT, name VARCHAR, pop BIGINT) "
                        "PARTITION BY HASH (id) PARTITIONS 3")
            cur.execute(f"INSERT INTO cities SELECT id, name, pop FROM read_csv('{csv}')")
            assert rows(cur, "SELECT count(*) AS n, sum(pop) AS p FROM cities") == [
                {"n": 3, "p": 1067000}]

            # A glob, or a directory: all of its files.
            for where in ("parts/part-*.parquet", "parts"):
                got = rows(cur, "SELECT count(*) AS c, sum(n) AS s FROM "
                                f"read_parquet('{os.path.join(imports, where)}')")
                assert got == [{"c": 30, "s": sum(range(30))}], where

            secret = os.path.join(elsewhere, "secret.csv")
            with pytest.raises(flightsql.Error, match="outside the directories"):
                cur.execute(f"SELECT * FROM read_csv('{secret}')")
            with pytest.raises(flightsql.Error, match="takes one argument"):
                cur.execute("SELECT * FROM read_csv(1)")
            with pytest.raises(flightsql.Error, match="read_parquet"):
                cur.execute(f"SELECT * FROM read_parquet('{os.path.join(imports, 'none.parquet')}')")
            cur.execute("CREATE USER ana PASSWORD 'ana-pw'")

        reader = flightsql.connect(url, db_kwargs={"username": "ana", "password": "ana-pw"})
        with reader as conn, conn.cursor() as cur:
            assert rows(cur, "SELECT count(*) AS n FROM cities") == [{"n": 3}]
            with pytest.raises(flightsql.Error, match="reads files on it"):
                cur.execute(f"SELECT * FROM read_csv('{csv}')")
    finally:
        stop_server(proc)
