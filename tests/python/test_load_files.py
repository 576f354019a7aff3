"""Loading files: `tessera load FILE --table t` uploads CSV and Parquet from
the client's machine (one atomic write; a bad value names its line and
loads nothing), and `COPY t FROM 'path'` reads files on the server under
its --import-dir."""

import os
import subprocess

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from tessera_server import free_port, start_server, stop_server
from test_cluster_processes import rows

N = 100_000


def tessera(*args):
    binary = os.environ.get("TESSERA_BIN", "target/debug/tessera")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=300)


def table(lo, hi):
    return pa.table({
        "id": pa.array(range(lo, hi), pa.int64()),
        "name": pa.array([f"name {i}, quoted \"{i % 10}\"" for i in range(lo, hi)]),
        "amount": pa.array([i % 1000 for i in range(lo, hi)], pa.int64()),
    })


@pytest.fixture
def server(data_dir):
    files = os.path.join(data_dir, "files")
    os.makedirs(files)
    port = free_port()
    proc = start_server(os.path.join(data_dir), port, args=("--import-dir", files))
    yield port, files
    stop_server(proc)


def test_load_local_files_and_copy_from(server):
    port, files = server
    csv_path = os.path.join(files, "data.csv")
    pacsv.write_csv(table(0, N), csv_path)
    parquet_path = os.path.join(files, "data.parquet")
    pq.write_table(table(N, 2 * N), parquet_path)
    connect = ("--connect", f"127.0.0.1:{port}")

    done = tessera("load", csv_path, "--table", "c", "--create",
                   "--partition-by", "HASH (id) PARTITIONS 4", *connect)
    assert done.returncode == 0, done.stderr
    assert f"loaded {N} rows into c" in done.stderr
    done = tessera("load", parquet_path, "--table", "p", "--create", *connect)
    assert done.returncode == 0, done.stderr
    # Both kinds of file into one table, in one write.
    done = tessera("load", csv_path, parquet_path, "--table", "c", *connect)
    assert done.returncode == 0, done.stderr

    with flightsql.connect(f"grpc://127.0.0.1:{port}") as conn, conn.cursor() as cur:
        total = sum(i % 1000 for i in range(N))
        assert rows(cur, "SELECT count(*) AS n, sum(amount) AS s, count(DISTINCT id) AS d "
                         "FROM c") == [{"n": 3 * N, "s": 3 * total, "d": 2 * N}]
        assert rows(cur, "SELECT count(*) AS n, min(id) AS lo FROM p") == [{"n": N, "lo": N}]
        assert rows(cur, "SELECT name FROM c WHERE id = 7 LIMIT 1") == [
            {"name": 'name 7, quoted "7"'}]
        assert len(rows(cur, "SHOW PARTITIONS c")) == 4

        # A bad value in line 5,000 of a CSV: its line named, nothing loaded.
        bad_path = os.path.join(files, "bad.csv")
        with open(bad_path, "w") as f:
            f.write("id,name,amount\n")
            for i in range(1, 6000):
                amount = "oops" if i == 4999 else str(i)
                f.write(f"{i},n{i},{amount}\n")
        done = tessera("load", bad_path, "--table", "c", *connect)
        assert done.returncode != 0
        assert "line 5000" in done.stderr and "nothing was loaded" in done.stderr, done.stderr
        assert rows(cur, "SELECT count(*) AS n FROM c") == [{"n": 3 * N}]

        # COPY FROM, on the server, under its import directory only.
        cur.execute(f"COPY p FROM '{parquet_path}'")
        cur.execute(f"COPY c FROM '{csv_path}' (FORMAT csv, HEADER true)")
        assert rows(cur, "SELECT count(*) AS n FROM p") == [{"n": 2 * N}]
        assert rows(cur, "SELECT count(*) AS n FROM c") == [{"n": 4 * N}]
        with pytest.raises(flightsql.Error, match="outside the directories"):
            cur.execute(f"COPY c FROM '{os.path.dirname(files)}/serve.log' (FORMAT csv)")
        with pytest.raises(flightsql.Error, match="does not exist"):
            cur.execute(f"COPY nope FROM '{csv_path}'")
