"""Each client has its own session: `SET` in one connection changes
nothing in another, against a real `tessera serve`."""

import adbc_driver_flightsql.dbapi as flightsql
import pytest
from tessera_server import free_port, start_server, stop_server


@pytest.fixture
def url(data_dir):
    port = free_port()
    proc = start_server(data_dir, port)
    yield f"grpc://127.0.0.1:{port}"
    stop_server(proc)


def value(cur, sql):
    cur.execute(sql)
    return cur.fetch_arrow_table().to_pylist()


def test_settings_belong_to_the_connection(url):
    with flightsql.connect(url) as c1, c1.cursor() as one, \
            flightsql.connect(url) as c2, c2.cursor() as two:
        one.execute("SET tessera.ansi = false")
        one.execute("SET datafusion.execution.batch_size = 1234")
        # Wrapping arithmetic in the first connection only.
        assert value(one, "SELECT 9223372036854775807 + 1 AS v")[0]["v"] == -9223372036854775808
        with pytest.raises(flightsql.Error, match="overflow"):
            value(two, "SELECT 9223372036854775807 + 1 AS v")
        shown = {r["name"]: r["value"] for r in value(one, "SHOW ALL")}
        assert shown["datafusion.execution.batch_size"] == "1234"
        shown = {r["name"]: r["value"] for r in value(two, "SHOW ALL")}
        assert shown["datafusion.execution.batch_size"] == "8192"
        # A third connection starts from the defaults.
        with flightsql.connect(url) as c3, c3.cursor() as three:
            with pytest.raises(flightsql.Error, match="overflow"):
                value(three, "SELECT 9223372036854775807 + 1 AS v")
