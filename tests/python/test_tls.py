"""TLS with certificates made by `tessera cert`: `tessera serve` over TLS
reached by ADBC (grpc+tls) and the shell (--tls-ca), a plaintext client
told to use TLS, a CA that did not sign the server's certificate refused;
a cluster of processes with mutual TLS, where a worker whose certificate
another CA signed cannot join, a plaintext worker is told to use TLS, and a
caller without a certificate cannot reach a worker."""

import os
import subprocess

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow.flight as flight
import pytest
from adbc_driver_flightsql import DatabaseOptions
from tessera_server import (
    free_port,
    server_log,
    start_process,
    start_server,
    stop_server,
    wait_listening,
)
from test_cluster_processes import rows, secret_file, wait_for, workers

PASSWORD = "admin-" + os.urandom(6).hex()
REFUSED = "accepts TLS connections only"


def tessera(*args, env=None):
    binary = os.environ.get("TESSERA_BIN", "target/debug/tessera")
    return subprocess.run(
        [binary, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def make_certs(certs_dir, *hosts):
    """A CA and a node certificate for `hosts` in `certs_dir`."""
    for args in (["create-ca"], ["create-node", *hosts]):
        done = tessera("cert", *args, "--certs-dir", certs_dir)
        assert done.returncode == 0, done.stderr
    return {
        name: os.path.join(certs_dir, f"{name}")
        for name in ("ca.crt", "ca.key", "node.crt", "node.key")
    }


def tls_connect(url, ca_path, user="admin", password=PASSWORD):
    with open(ca_path) as f:
        ca = f.read()
    kwargs = {DatabaseOptions.TLS_ROOT_CERTS.value: ca}
    if user:
        kwargs.update({"username": user, "password": password})
    return flightsql.connect(url, db_kwargs=kwargs)


def test_serve_over_tls(data_dir):
    certs = make_certs(os.path.join(data_dir, "certs"), "127.0.0.1", "localhost")
    # Certificates are not made over ones that exist.
    again = tessera("cert", "create-ca", "--certs-dir", os.path.join(data_dir, "certs"))
    assert again.returncode != 0 and "exists" in again.stderr
    assert os.stat(certs["ca.key"]).st_mode & 0o077 == 0, "the CA key is private"

    port = free_port()
    proc = start_server(
        data_dir,
        port,
        env={"TESSERA_PASSWORD": PASSWORD},
        sign_in=True,
        args=("--tls-cert", certs["node.crt"], "--tls-key", certs["node.key"]),
    )
    try:
        url = f"grpc+tls://127.0.0.1:{port}"
        with tls_connect(url, certs["ca.crt"]) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (k BIGINT, v VARCHAR) PARTITION BY HASH (k) PARTITIONS 3")
            cur.execute("INSERT INTO t SELECT value, 'v' || value FROM generate_series(1, 500)")
            assert rows(cur, "SELECT count(*) AS n, sum(k) AS s FROM t") == [
                {"n": 500, "s": 125250}
            ]
        # By host name too: the certificate names localhost.
        with tls_connect(f"grpc+tls://localhost:{port}", certs["ca.crt"]) as conn:
            with conn.cursor() as cur:
                assert rows(cur, "SELECT count(*) AS n FROM t") == [{"n": 500}]

        # Plaintext to the TLS port: told to use TLS.
        with pytest.raises(flightsql.Error, match=REFUSED):
            with flightsql.connect(
                f"grpc://127.0.0.1:{port}",
                db_kwargs={"username": "admin", "password": PASSWORD},
            ) as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")

        # A CA that did not sign the server's certificate: refused.
        other = make_certs(os.path.join(data_dir, "other"), "127.0.0.1")
        with pytest.raises(flightsql.Error):
            with tls_connect(url, other["ca.crt"]) as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")

        # The shell: with --tls-ca, and in plaintext.
        env = {"TESSERA_PASSWORD": PASSWORD}
        shell = tessera(
            "shell", "--connect", f"127.0.0.1:{port}", "--tls-ca", certs["ca.crt"],
            "--user", "admin", "-c", "SELECT count(*) AS n FROM t", env=env,
        )
        assert shell.returncode == 0, shell.stderr
        assert "500" in shell.stdout
        plain = tessera(
            "shell", "--connect", f"127.0.0.1:{port}", "--user", "admin", "-c", "SELECT 1",
            env=env,
        )
        assert plain.returncode != 0 and REFUSED in plain.stderr, plain.stderr
        no_ca = tessera("shell", "--connect", url, "-c", "SELECT 1", env=env)
        assert no_ca.returncode != 0 and "--tls-ca" in no_ca.stderr, no_ca.stderr
        assert "grpc+tls://" in server_log(proc)
    finally:
        stop_server(proc)


def tls_args(certs):
    return ["--tls-cert", certs["node.crt"], "--tls-key", certs["node.key"],
            "--tls-ca", certs["ca.crt"]]


def test_cluster_with_mutual_tls(data_dir):
    hosts = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")
    certs = make_certs(os.path.join(data_dir, "certs"), *hosts)
    secret = secret_file(data_dir, "cluster.secret", os.urandom(24).hex())
    cport = free_port()
    coordinator = start_process(
        ["coordinator", "--insecure", "--listen", f"127.0.0.2:{cport}",
         "--data-dir", os.path.join(data_dir, "coordinator"), "--cluster-secret-file", secret,
         "--worker-lease", "2", *tls_args(certs)],
        os.path.join(data_dir, "coordinator.log"),
    )
    procs = [coordinator]

    def worker(host, name, args):
        port = free_port()
        proc = start_process(
            ["worker", "--join", f"127.0.0.2:{cport}", "--listen", f"{host}:{port}",
             "--data-dir", os.path.join(data_dir, name), "--cluster-secret-file", secret, *args],
            os.path.join(data_dir, f"{name}.log"),
        )
        procs.append(proc)
        wait_listening(proc, host, port, f"worker {name}")
        return proc, port

    try:
        wait_listening(coordinator, "127.0.0.2", cport, "coordinator")
        _, w1_port = worker("127.0.0.3", "w1", tls_args(certs))
        worker("127.0.0.4", "w2", tls_args(certs))
        url = f"grpc+tls://127.0.0.2:{cport}"
        with tls_connect(url, certs["ca.crt"], user=None) as conn, conn.cursor() as cur:
            wait_for("two workers", lambda: len(workers(cur)) == 2, 30)
            assert all(w["address"].startswith("https://") for w in workers(cur).values())
            cur.execute("CREATE TABLE t (k BIGINT, g BIGINT) PARTITION BY HASH (k) PARTITIONS 4")
            cur.execute("INSERT INTO t SELECT value, value % 7 FROM generate_series(1, 2000)")
            # A join across workers: stages exchange rows worker to worker.
            got = rows(cur, "SELECT a.g, count(*) AS n FROM t a JOIN t b ON a.k = b.k + 1 "
                            "GROUP BY a.g ORDER BY a.g")
            assert sum(r["n"] for r in got) == 1999

            # A worker whose certificate another CA signed cannot join.
            other = make_certs(os.path.join(data_dir, "other"), *hosts)
            stranger, _ = worker("127.0.0.4", "w3", tls_args(other))
            wait_for("the stranger's refusal",
                     lambda: "Not joined yet" in server_log(stranger), 30)
            # A worker without TLS is told to use it.
            plain, _ = worker("127.0.0.3", "w4", [])
            wait_for("the plaintext worker's refusal",
                     lambda: REFUSED in server_log(plain), 30)
            assert len(workers(cur)) == 2

        # A caller without a certificate (a client, not a member) cannot
        # reach a worker, even with the right CA.
        with open(certs["ca.crt"], "rb") as f:
            client = flight.FlightClient(f"grpc+tls://127.0.0.3:{w1_port}", tls_root_certs=f.read())
        with pytest.raises(flight.FlightError):
            list(client.list_actions())
        client.close()
    finally:
        for p in procs:
            stop_server(p)
