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
