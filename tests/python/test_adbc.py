"""Tessera through the real ADBC Flight SQL driver, against a real `tessera serve`."""

import shutil
import tempfile

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pytest
from tessera_server import free_port, start_server, stop_server


@pytest.fixture(scope="module")
def server():
    data_dir = tempfile.mkdtemp(prefix="tessera-adbc-")
    port = free_port()
    proc = start_server(data_dir, port)
    yield f"grpc://127.0.0.1:{port}"
    stop_server(proc)
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def cur(server):
    with flightsql.connect(server) as conn:
        with conn.cursor() as cursor:
            yield cursor


def test_create_insert_read_back(cur):
    cur.execute("CREATE TABLE adbc_t (k BIGINT, v VARCHAR) PARTITION BY HASH (k) PARTITIONS 4")
    cur.execute("INSERT INTO adbc_t VALUES (1, 'one'), (2, 'two'), (3, 'three')")
    cur.execute("INSERT INTO adbc_t SELECT value + 10, 'gen' FROM range(1000)")
    cur.execute("SELECT k, v FROM adbc_t WHERE k <= 3 ORDER BY k")
    table = cur.fetch_arrow_table()
    assert table.num_rows == 3
    assert table.column("k").to_pylist() == [1, 2, 3]
    assert [str(v) for v in table.column("v").to_pylist()] == ["one", "two", "three"]
    cur.execute("SELECT count(*) AS n FROM adbc_t")
    assert cur.fetch_arrow_table().column("n").to_pylist() == [1003]


def test_error_text_reaches_the_client(cur):
    with pytest.raises(Exception) as err:
        cur.execute("SELECT * FROM no_such_table")
    assert "no_such_table" in str(err.value)
    assert "SHOW TABLES" in str(err.value)


def test_show_partitions(cur):
    cur.execute("CREATE TABLE adbc_p (k BIGINT) PARTITION BY HASH (k) PARTITIONS 8")
    cur.execute("INSERT INTO adbc_p SELECT value FROM range(8000)")
    cur.execute("SHOW PARTITIONS adbc_p")
    parts = cur.fetch_arrow_table()
    assert parts.num_rows == 8
    assert pa.compute.sum(parts.column("rows")).as_py() == 8000
