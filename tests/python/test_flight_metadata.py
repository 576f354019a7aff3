"""What JDBC tools and ADBC read about a server before they run anything:
GetSqlInfo, GetCatalogs, GetDbSchemas, GetTables (filters, table types,
schemas), GetTableTypes, the key listings and GetXdbcTypeInfo, through ADBC
and through a second, independent client (flightsql-dbapi, on pyarrow's
Flight client), against a real `tessera serve`."""

import os
import subprocess

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pytest
from flightsql import FlightSQLClient, TableRef
from tessera_server import free_port, start_server, stop_server

# Flight SQL's SqlInfo codes (FlightSql.proto).
SERVER_NAME, SERVER_VERSION, IDENTIFIER_QUOTE_CHAR, TRANSACTIONS = 0, 1, 504, 8
KEYWORDS, NUMERIC_FUNCTIONS, STRING_FUNCTIONS = 508, 509, 510


def server_version(binary):
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split()[-1]


@pytest.fixture
def server(data_dir):
    port = free_port()
    proc = start_server(data_dir, port)
    with flightsql.connect(f"grpc://127.0.0.1:{port}") as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE trips (id BIGINT, city VARCHAR, fare DOUBLE, at TIMESTAMP) "
            "PARTITION BY HASH (id) PARTITIONS 4"
        )
        cur.execute("CREATE TABLE trip_days (day DATE, n BIGINT)")
        cur.execute("CREATE TABLE other (x INT)")
    yield port
    stop_server(proc)


def test_adbc_reads_the_servers_metadata(server):
    binary = os.environ.get("TESSERA_BIN", "target/debug/tessera")
    with flightsql.connect(f"grpc://127.0.0.1:{server}") as conn:
        info = conn.adbc_get_info()
        assert info["vendor_name"] == "Tessera"
        assert info["vendor_version"] == server_version(binary)

        assert set(conn.adbc_get_table_types()) >= {"TABLE", "VIEW", "SYSTEM TABLE"}

        # Depth by depth, every catalog and schema.
        catalogs = conn.adbc_get_objects(depth="catalogs").read_all().to_pylist()
        assert [c["catalog_name"] for c in catalogs] == ["datafusion"]
        schemas = conn.adbc_get_objects(depth="db_schemas").read_all().to_pylist()
        names = {s["db_schema_name"] for s in schemas[0]["catalog_db_schemas"]}
        assert {"public", "information_schema", "tessera"} <= names

        # Tables, filtered by schema, name pattern and type.
        objects = conn.adbc_get_objects(
            depth="tables",
            db_schema_filter="public",
            table_name_filter="trip%",
            table_types_filter=["TABLE"],
        ).read_all().to_pylist()
        tables = [
            t["table_name"]
            for c in objects
            for s in c["catalog_db_schemas"]
            for t in s["db_schema_tables"]
        ]
        assert sorted(tables) == ["trip_days", "trips"]
        system = conn.adbc_get_objects(
            depth="tables", db_schema_filter="tessera", table_types_filter=["SYSTEM TABLE"]
        ).read_all().to_pylist()
        assert any(
            t["table_name"] == "queries"
            for s in system[0]["catalog_db_schemas"]
            for t in s["db_schema_tables"]
        )
        assert conn.adbc_get_objects(
            depth="tables", db_schema_filter="public", table_types_filter=["VIEW"]
        ).read_all().to_pylist()[0]["catalog_db_schemas"][0]["db_schema_tables"] in ([], None)

        # Columns, and a column filter.
        objects = conn.adbc_get_objects(
            depth="all", db_schema_filter="public", table_name_filter="trips",
            column_name_filter="f%",
        ).read_all().to_pylist()
        columns = objects[0]["catalog_db_schemas"][0]["db_schema_tables"][0]["table_columns"]
        assert [c["column_name"] for c in columns] == ["fare"]

        schema = conn.adbc_get_table_schema("trips", db_schema_filter="public")
        assert schema.names == ["id", "city", "fare", "at"]
        assert schema.field("id").type == pa.int64()
        # As queries return it.
        assert schema.field("city").type in (pa.string(), pa.string_view())
        assert schema.field("fare").type == pa.float64()
        assert pa.types.is_timestamp(schema.field("at").type)
        with pytest.raises(flightsql.Error):
            conn.adbc_get_table_schema("no_such_table", db_schema_filter="public")


def read_all(client, info):
    return client.do_get(info.endpoints[0].ticket).read_all()


def test_an_independent_flight_sql_client_reads_it_too(server):
    client = FlightSQLClient(host="127.0.0.1", port=server, insecure=True, metadata={})
    try:
        infos = read_all(
            client,
            client.get_sql_info(
                [SERVER_NAME, SERVER_VERSION, IDENTIFIER_QUOTE_CHAR, TRANSACTIONS, KEYWORDS,
                 NUMERIC_FUNCTIONS, STRING_FUNCTIONS]
            ),
        ).to_pylist()
        values = {i["info_name"]: i["value"] for i in infos}
        assert values[SERVER_NAME] == "Tessera"
        assert values[IDENTIFIER_QUOTE_CHAR] == '"'
        assert values[TRANSACTIONS] == 0  # no transactions
        assert "SELECT" in values[KEYWORDS]
        assert "ABS" in values[NUMERIC_FUNCTIONS]
        assert "UPPER" in values[STRING_FUNCTIONS]

        tables = read_all(
            client,
            client.get_tables(include_schema=True, db_schema_filter_pattern="public",
                              table_name_filter_pattern="trips"),
        )
        assert tables.column("table_name").to_pylist() == ["trips"]
        assert tables.column("table_type").to_pylist() == ["TABLE"]
        schema = pa.ipc.read_schema(pa.py_buffer(tables.column("table_schema")[0].as_py()))
        assert schema.names == ["id", "city", "fare", "at"]

        assert read_all(client, client.get_catalogs()).column(0).to_pylist() == ["datafusion"]
        kinds = read_all(client, client.get_table_types()).column(0).to_pylist()
        assert "TABLE" in kinds
        keys = read_all(client, client.get_primary_keys(TableRef(table="trips")))
        assert keys.num_rows == 0 and "key_sequence" in keys.schema.names
        types = read_all(client, client.get_xdbc_type_info(None)).column("type_name").to_pylist()
        assert {"BIGINT", "VARCHAR", "TIMESTAMP", "DOUBLE"} <= set(types)
    finally:
        client.close()
