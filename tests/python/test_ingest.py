"""ADBC bulk ingestion in each of its modes against a real `tessera serve`:
create makes the table from the uploaded schema (and refuses an existing
one), append adds rows (and refuses a missing table), replace replaces,
create_append does either."""

import datetime

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pytest
from tessera_server import free_port, start_server, stop_server


@pytest.fixture
def cur(data_dir):
    port = free_port()
    proc = start_server(data_dir, port)
    with flightsql.connect(f"grpc://127.0.0.1:{port}") as conn, conn.cursor() as cursor:
        yield cursor
    stop_server(proc)


def rows(cur, sql):
    cur.execute(sql)
    return cur.fetch_arrow_table().to_pylist()


def data(lo, hi):
    t0 = datetime.datetime(2026, 1, 1)
    return pa.table({
        "id": pa.array(range(lo, hi), pa.int64()),
        "name": pa.array([f"n{i}" if i % 7 else None for i in range(lo, hi)]),
        "at": pa.array([t0 + datetime.timedelta(seconds=i) for i in range(lo, hi)],
                       pa.timestamp("us")),
        "score": pa.array([i / 2 for i in range(lo, hi)], pa.float64()),
    })


def test_ingest_modes(cur):
    # create: a new table with the uploaded schema.
    assert cur.adbc_ingest("up", data(0, 1000), mode="create") == 1000
    got = rows(cur, "SELECT count(*) AS n, sum(id) AS s, count(name) AS named FROM up")[0]
    assert (got["n"], got["s"]) == (1000, sum(range(1000)))
    assert got["named"] == sum(1 for i in range(1000) if i % 7)
    described = {r["column_name"]: r["data_type"] for r in rows(cur, "DESCRIBE up")}
    assert described["id"] == "Int64" and described["score"] == "Float64"
    assert described["at"].startswith("Timestamp")
    first = rows(cur, "SELECT at FROM up WHERE id = 5")[0]["at"]
    assert first == datetime.datetime(2026, 1, 1, 0, 0, 5)

    # create on an existing table fails, and changes nothing.
    with pytest.raises(flightsql.Error, match="already exists"):
        cur.adbc_ingest("up", data(1000, 1010), mode="create")
    assert rows(cur, "SELECT count(*) AS n FROM up")[0]["n"] == 1000

    # append to a missing table fails; to an existing one adds.
    with pytest.raises(flightsql.Error, match="does not exist"):
        cur.adbc_ingest("missing", data(0, 10), mode="append")
    assert cur.adbc_ingest("up", data(1000, 1500), mode="append") == 500
    assert rows(cur, "SELECT count(*) AS n FROM up")[0]["n"] == 1500

    # replace: the old rows go, the new ones stay; the partitioning stays too.
    cur.execute("CREATE TABLE part (id BIGINT, name VARCHAR, at TIMESTAMP, score DOUBLE) "
                "PARTITION BY HASH (id) PARTITIONS 4")
    cur.adbc_ingest("part", data(0, 100), mode="append")
    assert cur.adbc_ingest("part", data(500, 520), mode="replace") == 20
    got = rows(cur, "SELECT min(id) AS lo, count(*) AS n FROM part")[0]
    assert (got["lo"], got["n"]) == (500, 20)
    assert len(rows(cur, "SHOW PARTITIONS part")) == 4
    # replace of a missing table creates it.
    assert cur.adbc_ingest("fresh", data(0, 3), mode="replace") == 3

    # create_append: creates, then appends.
    assert cur.adbc_ingest("ca", data(0, 10), mode="create_append") == 10
    assert cur.adbc_ingest("ca", data(10, 30), mode="create_append") == 20
    assert rows(cur, "SELECT count(*) AS n FROM ca")[0]["n"] == 30

    # A column no table can hold is refused with what to do.
    nested = pa.table({"id": pa.array([1], pa.int64()),
                       "tags": pa.array([["a"]], pa.list_(pa.string()))})
    with pytest.raises(flightsql.Error, match="cast it"):
        cur.adbc_ingest("nested", nested, mode="create")
