"""Cancelling, against a real `tessera serve` with users: `tessera.queries`
lists running queries with their user and client address; `CANCEL QUERY
'id'` stops one (its owner or an admin; a reader sees and cancels only its
own); Flight's `CancelFlightInfo` stops one whose rows stream, and drops
one whose rows were not fetched; ADBC's cancel ends the stream."""

import os
import signal
import threading

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from tessera_server import free_port, start_server, stop_server
from test_cluster_processes import rows, wait_for

PASSWORD = "admin-" + os.urandom(6).hex()
# Long enough never to end by itself within a test.
LONG = "SELECT count(*) AS n FROM range(1000000000000)"


def connect(port, user="admin", password=PASSWORD):
    return flightsql.connect(
        f"grpc://127.0.0.1:{port}", db_kwargs={"username": user, "password": password}
    )


@pytest.fixture
def port(data_dir):
    port = free_port()
    proc = start_server(data_dir, port, env={"TESSERA_PASSWORD": PASSWORD}, sign_in=True)
    yield port
    stop_server(proc)


def in_background(run):
    """Runs `run` in a thread; returns a dict that gets its error."""
    outcome = {}

    def target():
        try:
            run()
            outcome["error"] = None
        except Exception as e:  # noqa: BLE001 - the test inspects it
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    outcome["thread"] = thread
    return outcome


def running(cur, marker):
    return [r for r in rows(cur, "SELECT query_id, user_name, client, status, sql "
                                 "FROM tessera.queries WHERE status = 'running'")
            if marker in r["sql"]]


def test_cancel_query_statement(port):
    with connect(port) as conn, conn.cursor() as admin:
        admin.execute("CREATE USER ana PASSWORD 'ana-pw'")
        admin.execute("CREATE USER bo PASSWORD 'bo-pw'")

        with connect(port, "ana", "ana-pw") as ana_conn, ana_conn.cursor() as ana:
            long_running = in_background(lambda: rows(ana, LONG))
            found = wait_for("the query to run", lambda: running(admin, "range(1000000000000)"),
                             30)
            (query,) = found
            assert query["user_name"] == "ana"
            assert query["client"].startswith("127.0.0.1:")

            # Another reader neither sees nor cancels it.
            with connect(port, "bo", "bo-pw") as bo_conn, bo_conn.cursor() as bo:
                assert running(bo, "range(1000000000000)") == []
                with pytest.raises(flightsql.Error, match="not yours to cancel"):
                    bo.execute(f"CANCEL QUERY '{query['query_id']}'")
            assert long_running["thread"].is_alive()

            admin.execute(f"CANCEL QUERY '{query['query_id']}'")
            long_running["thread"].join(30)
            assert not long_running["thread"].is_alive()
            assert "cancelled" in str(long_running["error"])
            status = rows(admin, "SELECT status FROM tessera.queries WHERE query_id = "
                                 f"'{query['query_id']}'")
            assert status == [{"status": "cancelled"}]

            # Its owner may cancel its own.
            again = in_background(lambda: rows(ana, LONG + " -- again"))
            with connect(port, "ana", "ana-pw") as c2, c2.cursor() as ana2:
                (mine,) = wait_for("the second query", lambda: running(ana2, "-- again"), 30)
                ana2.execute(f"CANCEL QUERY '{mine['query_id']}'")
            again["thread"].join(30)
            assert "cancelled" in str(again["error"])

        with pytest.raises(flightsql.Error, match="no query 'nope-1' is running"):
            admin.execute("CANCEL QUERY 'nope-1'")


def test_adbc_cancel_ends_the_stream(port):
    with connect(port) as conn, conn.cursor() as cur, connect(port) as c2, c2.cursor() as watch:
        long_running = in_background(lambda: rows(cur, LONG + " -- adbc"))
        wait_for("the query to run", lambda: running(watch, "-- adbc"), 30)
        cur.adbc_cancel()
        long_running["thread"].join(30)
        assert not long_running["thread"].is_alive()
        assert long_running["error"] is not None
        wait_for("the query to end", lambda: not running(watch, "-- adbc"), 30)


def _varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number, payload):
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def statement_query(sql):
    """A Flight SQL CommandStatementQuery, packed in protobuf's Any."""
    command = _field(1, sql.encode())
    type_url = b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"
    return _field(1, type_url) + _field(2, command)


def test_cancel_flight_info(port):
    client = flight.FlightClient(f"grpc://127.0.0.1:{port}")
    token = client.authenticate_basic_token(b"admin", PASSWORD.encode())
    options = flight.FlightCallOptions(headers=[token])

    def cancel(info):
        action = flight.Action("CancelFlightInfo", _field(1, info.serialize()))
        (result,) = list(client.do_action(action, options=options))
        return result.body.to_pybytes()

    # Rows not fetched yet: the result is dropped.
    info = client.get_flight_info(
        flight.FlightDescriptor.for_command(statement_query(LONG + " -- parked")), options)
    with connect(port) as conn, conn.cursor() as watch:
        (parked,) = [r for r in rows(watch, "SELECT status, sql FROM tessera.queries")
                     if r["sql"].endswith("-- parked")]
        assert parked["status"] == "waiting"
    assert cancel(info) == b"\x08\x01"  # CANCELLED
    with pytest.raises(pa.ArrowKeyError, match="unknown or expired result handle"):
        client.do_get(info.endpoints[0].ticket, options).read_all()

    # Rows streaming: the query stops. (pyarrow turns a call that ends
    # CANCELLED into a simulated Ctrl-C of the main thread: held off here.)
    previous = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        cancel_streaming(port, client, options, cancel)
    finally:
        signal.signal(signal.SIGINT, previous)
    client.close()


def cancel_streaming(port, client, options, cancel):
    info = client.get_flight_info(
        flight.FlightDescriptor.for_command(statement_query(LONG + " -- streaming")), options)
    streaming = in_background(
        lambda: client.do_get(info.endpoints[0].ticket, options).read_all())
    with connect(port) as conn, conn.cursor() as watch:
        wait_for("the stream to start", lambda: running(watch, "-- streaming"), 30)
        assert cancel(info) == b"\x08\x02"  # CANCELLING
        streaming["thread"].join(30)
        assert not streaming["thread"].is_alive()
        assert "cancelled" in str(streaming["error"])
        assert rows(watch, "SELECT status FROM tessera.queries "
                           "WHERE sql LIKE '%-- streaming'") == [{"status": "cancelled"}]
        # Ended: nothing to cancel.
        assert cancel(info) == b"\x08\x03"  # NOT_CANCELLABLE
