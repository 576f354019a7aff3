"""Prepared statements with parameters, as JDBC and ADBC send them (`?`, or
`$1`), against a real `tessera serve`: queries and updates with integer,
string, timestamp and NULL values, `executemany` as one statement, and a
second client (flightsql-dbapi) binding a parameter."""

import datetime

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pytest
from flightsql import FlightSQLClient
from tessera_server import free_port, start_server, stop_server


@pytest.fixture
def server(data_dir):
    port = free_port()
    proc = start_server(data_dir, port)
    with flightsql.connect(f"grpc://127.0.0.1:{port}") as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE events (id BIGINT, name VARCHAR, at TIMESTAMP, score INT) "
            "PARTITION BY HASH (id) PARTITIONS 4"
        )
    yield port
    stop_server(proc)


def rows(cur, sql, params=None):
    cur.execute(sql, params)
    return cur.fetch_arrow_table().to_pylist()


def test_adbc_binds_parameters_to_queries_and_updates(server):
    t0 = datetime.datetime(2026, 1, 2, 3, 4, 5)
    with flightsql.connect(f"grpc://127.0.0.1:{server}") as conn, conn.cursor() as cur:
        # An update with every kind of value, NULL among them.
        cur.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (1, "one", t0, 10))
        cur.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (2, None, None, None))
        cur.execute("INSERT INTO events VALUES ($1, $2, $3, $4)", (3, "it's", t0, 30))
        got = rows(cur, "SELECT id, name, at, score FROM events ORDER BY id")
        assert [r["id"] for r in got] == [1, 2, 3]
        assert got[0]["name"] == "one" and got[0]["at"] == t0 and got[0]["score"] == 10
        assert got[1]["name"] is None and got[1]["at"] is None and got[1]["score"] is None
        assert got[2]["name"] == "it's"

        # Queries with an integer, a string, a timestamp, and $n.
        assert [r["id"] for r in rows(cur, "SELECT id FROM events WHERE id = ?", (3,))] == [3]
        assert rows(cur, "SELECT id FROM events WHERE name = ?", ("one",))[0]["id"] == 1
        assert len(rows(cur, "SELECT id FROM events WHERE at = ?", (t0,))) == 2
        assert rows(cur, "SELECT count(*) AS n FROM events WHERE id > $1 AND score < $2",
                    (1, 100))[0]["n"] == 1
        # A NULL parameter compares as NULL: nothing matches.
        assert rows(cur, "SELECT id FROM events WHERE score = ?", (None,)) == []
        # A value that cannot be what the statement expects says so.
        with pytest.raises(flightsql.Error, match="parameter"):
            rows(cur, "SELECT id FROM events WHERE at = ?", ("not a time",))

        # executemany: one INSERT of every row (one statement in the log).
        before = rows(cur, "SELECT count(*) AS n FROM tessera.queries "
                           "WHERE sql LIKE 'INSERT INTO events (id, name) VALUES%'")[0]["n"]
        cur.executemany(
            "INSERT INTO events (id, name) VALUES (?, ?)",
            [(i, f"bulk {i}") for i in range(100, 600)],
        )
        after = rows(cur, "SELECT count(*) AS n FROM tessera.queries "
                          "WHERE sql LIKE 'INSERT INTO events (id, name) VALUES%'")[0]["n"]
        assert after - before == 1
        got = rows(cur, "SELECT count(*) AS n, sum(id) AS s FROM events WHERE id >= 100")[0]
        assert (got["n"], got["s"]) == (500, sum(range(100, 600)))


def test_parameter_schema_and_a_second_client(server):
    with flightsql.connect(f"grpc://127.0.0.1:{server}") as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO events (id, name) VALUES (?, ?)", [(7, "seven"), (8, "eight")])
        # The parameter schema comes from the statement's types.
        schema = cur.adbc_prepare("SELECT name FROM events WHERE id = ? AND name <> ?")
        assert schema.names == ["$1", "$2"]
        assert schema.field(0).type == pa.int64()
        assert schema.field(1).type in (pa.string(), pa.string_view())

    client = FlightSQLClient(host="127.0.0.1", port=server, insecure=True, metadata={})
    try:
        with client.prepare("SELECT name FROM events WHERE id = ?") as ps:
            info = ps.execute(pa.record_batch([pa.array([8], pa.int64())], names=["p"]))
            got = client.do_get(info.endpoints[0].ticket).read_all()
        assert got.column("name").to_pylist() == ["eight"]
    finally:
        client.close()
