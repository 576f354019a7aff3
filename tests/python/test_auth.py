"""Signing in, against a real `tessera serve` that requires it: no
credentials and a wrong password are refused with a clear Unauthenticated,
a reader cannot write, a changed password revokes its tokens, a token
expires, passwords never reach the query log, and the shell signs in with
--user."""

import os
import re
import subprocess
import time

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow.flight as flight
import pytest
from tessera_server import free_port, server_log, start_server, stop_server
from test_cluster_processes import wait_for

ADMIN_PASSWORD = "admin-" + os.urandom(6).hex()


def connect(port, user=None, password=None):
    kwargs = {}
    if user:
        kwargs["db_kwargs"] = {"username": user, "password": password}
    return flightsql.connect(f"grpc://127.0.0.1:{port}", **kwargs)


def rows(cur, sql):
    cur.execute(sql)
    return cur.fetch_arrow_table().to_pylist()


@pytest.fixture
def server(data_dir):
    port = free_port()
    proc = start_server(data_dir, port, env={"TESSERA_PASSWORD": ADMIN_PASSWORD}, sign_in=True)
    yield port, proc
    stop_server(proc)


def test_sign_in_roles_and_tokens(server, data_dir):
    port, proc = server
    wait_for("the sign-in hint", lambda: "password in TESSERA_PASSWORD" in server_log(proc), 30)

    # No credentials, a wrong password: refused, saying what to do.
    with connect(port) as conn, conn.cursor() as cur:
        with pytest.raises(flightsql.Error, match="requires signing in") as e:
            cur.execute("SELECT 1")
        assert "UNAUTHENTICATED" in str(e.value).upper()
    with pytest.raises(flightsql.Error, match="wrong user name or password"):
        with connect(port, "admin", "not-it") as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")

    with connect(port, "admin", ADMIN_PASSWORD) as conn, conn.cursor() as admin:
        admin.execute("CREATE USER ana PASSWORD 'first-pw'")
        admin.execute("CREATE TABLE t (k BIGINT, v VARCHAR) PARTITION BY HASH (k) PARTITIONS 3")
        admin.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
        users = {r["user_name"]: r["role"] for r in rows(admin, "SHOW USERS")}
        assert users == {"admin": "admin", "ana": "reader"}
        logged = [r["sql"] for r in rows(
            admin, "SELECT sql FROM tessera.queries WHERE sql LIKE 'CREATE USER%'")]
        assert logged and all("first-pw" not in s and "'***'" in s for s in logged)

        # A reader reads, and nothing else.
        admin.execute("SET tessera.compaction = 'paused'")
        out = os.path.join(data_dir, "never.csv")
        with connect(port, "ana", "first-pw") as c2, c2.cursor() as ana:
            assert rows(ana, "SELECT count(*) AS n FROM t")[0]["n"] == 2
            assert rows(ana, "EXPLAIN SELECT * FROM t WHERE k = 1")
            for sql in ["DROP TABLE t", "INSERT INTO t VALUES (3, 'x')", "CREATE USER eve PASSWORD 'x'",
                        f"COPY (SELECT 1) TO '{out}'",
                        f"EXPLAIN ANALYZE COPY (SELECT 'x') TO '{out}' STORED AS CSV",
                        "EXPLAIN ANALYZE INSERT INTO t VALUES (4, 'y')",
                        "SET tessera.compaction = 'running'", "SHOW USERS",
                        "SET datafusion.runtime.temp_directory = '/tmp'"]:
                with pytest.raises(flightsql.Error, match="may only read") as e:
                    ana.execute(sql)
                assert "PERMISSION" in str(e.value).upper()
            assert not os.path.exists(out)
            # Her own settings are hers, and leave the server's switches alone.
            ana.execute("SET datafusion.execution.batch_size = 100")
            assert rows(admin, "SHOW tessera.compaction")[0]["value"] == "paused"
            assert rows(ana, "SELECT count(*) AS n FROM t")[0]["n"] == 2
        admin.execute("SET tessera.compaction = 'running'")

        # A token dies with a change of its user.
        client = flight.FlightClient(f"grpc://127.0.0.1:{port}")
        token = client.authenticate_basic_token("ana", "first-pw")
        options = flight.FlightCallOptions(headers=[token])
        list(client.list_actions(options))
        admin.execute("ALTER USER ana PASSWORD 'second-pw'")
        with pytest.raises(flight.FlightUnauthenticatedError, match="revoked"):
            list(client.list_actions(options))
        with pytest.raises(flight.FlightUnauthenticatedError):
            client.authenticate_basic_token("ana", "first-pw")
        client.authenticate_basic_token("ana", "second-pw")

        # Granted admin, she may write.
        admin.execute("GRANT admin TO ana")
        with connect(port, "ana", "second-pw") as c3, c3.cursor() as ana:
            ana.execute("INSERT INTO t VALUES (3, 'three')")
        # Dropped and made again, she is another user: old tokens die.
        token = client.authenticate_basic_token("ana", "second-pw")
        admin.execute("DROP USER ana")
        admin.execute("CREATE USER ana PASSWORD 'second-pw'")
        with pytest.raises(flight.FlightUnauthenticatedError, match="revoked"):
            list(client.list_actions(flight.FlightCallOptions(headers=[token])))
        admin.execute("DROP USER ana")
        # The last admin stays one.
        for sql in ["GRANT reader TO admin", "DROP USER admin"]:
            with pytest.raises(flightsql.Error, match="last admin"):
                admin.execute(sql)

    # The shell signs in with --user, the password from TESSERA_PASSWORD.
    binary = os.environ.get("TESSERA_BIN", "target/debug/tessera")
    out = subprocess.run(
        [binary, "shell", "--connect", f"127.0.0.1:{port}", "--user", "admin", "-c",
         "SELECT count(*) AS n FROM t"],
        capture_output=True, text=True, env={**os.environ, "TESSERA_PASSWORD": ADMIN_PASSWORD},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "3" in out.stdout
    out = subprocess.run(
        [binary, "shell", "--connect", f"127.0.0.1:{port}", "--user", "admin", "-c", "SELECT 1"],
        capture_output=True, text=True, env={**os.environ, "TESSERA_PASSWORD": "wrong"},
        timeout=60,
    )
    assert out.returncode != 0 and "wrong user name or password" in out.stderr


def test_a_generated_first_password_and_expiring_tokens(data_dir):
    port = free_port()
    proc = start_server(data_dir, port, env={"TESSERA_PASSWORD": ""}, sign_in=True,
                        args=["--token-ttl", "0.5"])
    try:
        found = wait_for(
            "the generated password",
            lambda: re.search(r"admin \(role admin\), with password (\w+)", server_log(proc)),
            30,
        )
        client = flight.FlightClient(f"grpc://127.0.0.1:{port}")
        token = client.authenticate_basic_token("admin", found.group(1))
        options = flight.FlightCallOptions(headers=[token])
        list(client.list_actions(options))
        time.sleep(1.0)  # past the token's half-second life
        with pytest.raises(flight.FlightUnauthenticatedError, match="expired"):
            list(client.list_actions(options))
    finally:
        stop_server(proc)
