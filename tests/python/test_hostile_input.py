"""Statements built to exhaust a server (deep nesting, huge lists and
literals) each get a result or a clean error, through ADBC against a real
`tessera serve`, and the server stays up for the next client."""

import adbc_driver_flightsql.dbapi as flightsql
import pytest
from tessera_server import free_port, server_log, start_server, stop_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    proc = start_server(str(tmp_path_factory.mktemp("hostile")), port)
    url = f"grpc://127.0.0.1:{port}"
    with flightsql.connect(url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE h (k BIGINT, s VARCHAR) PARTITION BY HASH (k) PARTITIONS 4")
        cur.execute("INSERT INTO h SELECT value, 'row' || value FROM range(1000)")
    yield proc, url
    stop_server(proc)


def nested_parens(n):
    return "SELECT " + "(" * n + "1" + ")" * n


def nested_subqueries(n):
    return "SELECT " + "(SELECT " * n + "1" + ")" * n


HOSTILE = {
    "2000-deep parentheses": nested_parens(2000),
    "300 nested subqueries": nested_subqueries(300),
    "5000-term sum": "SELECT " + " + ".join(["1"] * 5000),
    "5000-term sum over a partitioned table": "SELECT " + " + ".join(["k"] * 5000) + " FROM h",
    "900-term sum over a partitioned table": "SELECT sum(" + " + ".join(["k"] * 900) + ") FROM h",
    "10000-item IN list": "SELECT count(*) FROM h WHERE k IN ("
    + ", ".join(str(i) for i in range(10_000))
    + ")",
    "1 MB string literal": "SELECT length('" + "x" * 1_000_000 + "')",
    "1 MB string literal against a partitioned table": "SELECT count(*) FROM h WHERE s = '"
    + "y" * 1_000_000
    + "'",
}

# What the ones with a result must return.
EXPECTED = {
    "900-term sum over a partitioned table": 900 * sum(range(1000)),
    "10000-item IN list": 1000,
    "1 MB string literal": 1_000_000,
    "1 MB string literal against a partitioned table": 0,
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_answers_and_stays_up(server, name):
    proc, url = server
    with flightsql.connect(url) as conn, conn.cursor() as cur:
        try:
            cur.execute(HOSTILE[name])
            value = cur.fetchone()[0]
        except Exception as e:  # noqa: BLE001 - any clean error will do
            message = str(e)
            assert name not in EXPECTED, f"{name}: {message[:500]}"
            # A clean error says what was wrong, not that the server went away.
            for sign in ("transport", "Unavailable", "connection", "broken pipe"):
                assert sign.lower() not in message.lower(), f"{name}: {message[:500]}"
            assert "limit" in message.lower(), f"{name}: {message[:500]}"
        else:
            if name in EXPECTED:
                assert value == EXPECTED[name], name
    assert proc.poll() is None, f"the server died on {name}:\n{server_log(proc)[-3000:]}"
    with flightsql.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM h")
        assert cur.fetchone()[0] == 1000
