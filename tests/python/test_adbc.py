"""Tessera through the real ADBC Flight SQL driver, against a real `tessera serve`."""

import os
import shutil
import socket
import subprocess
import tempfile
import time

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pytest


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    binary = os.environ.get("TESSERA_BIN", "target/debug/tessera")
    data_dir = tempfile.mkdtemp(prefix="tessera-adbc-")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--workers", "3", "--data-dir", data_dir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError("tessera serve exited: " + proc.stderr.read().decode())
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline:
                proc.kill()
                raise RuntimeError("tessera serve did not start listening in 60 s")
            time.sleep(0.2)
    yield f"grpc://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
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
