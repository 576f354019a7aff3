"""A cluster on a real etcd: two `tessera coordinator --metastore etcd://...`
(one leads, the other stands by) and three `tessera worker` joining both.
The leader is SIGKILLed with an ASYNC index behind: the standby takes over
within the leader lease, the workers heartbeat to it, every acknowledged row
is there exactly once and the index converges."""

import os
import signal
import time

import adbc_driver_flightsql.dbapi as flightsql
from tessera_server import (
    free_port,
    server_log,
    start_etcd,
    start_process,
    stop_server,
    wait_listening,
)
from test_cluster_processes import rows, secret_file, start_worker, wait_for, workers

LEADER_LEASE_S = 4.0
WORKER_LEASE_S = 2.0


def start_coordinator(data_dir, name, port, etcd):
    return start_process(
        [
            "coordinator",
            "--listen", f"127.0.0.1:{port}",
            "--data-dir", os.path.join(data_dir, name),
            "--metastore", f"{etcd}/cluster",
            "--leader-lease", str(LEADER_LEASE_S),
            "--worker-lease", str(WORKER_LEASE_S),
            "--cluster-secret-file", os.path.join(data_dir, "cluster.secret"),
        ],
        os.path.join(data_dir, f"{name}.log"),
    )


def print_logs(*coordinators):
    for p in coordinators:
        if p is not None:
            print(server_log(p))


def stop_all(workers, coordinators, etcd):
    for p in workers:
        stop_server(p)
    for p in coordinators:
        if p is not None and p.poll() is None:
            stop_server(p)
    stop_server(etcd)


def test_standby_coordinator_takes_over_on_etcd(data_dir):
    etcd, etcd_url = start_etcd(data_dir)
    secret_file(data_dir, "cluster.secret", "s3cret-" + os.urandom(16).hex())
    pa, pb = free_port(), free_port()
    a = start_coordinator(data_dir, "coord-a", pa, etcd_url)
    procs = []
    b = None
    try:
        wait_listening(a, "127.0.0.1", pa, "coordinator a")
        b = start_coordinator(data_dir, "coord-b", pb, etcd_url)
        wait_for("b to stand by", lambda: "Standby: coordinator" in server_log(b), 30)
        join = f"127.0.0.1:{pa},127.0.0.1:{pb}"
        for name, host in {"w2": "127.0.0.2", "w3": "127.0.0.3", "w4": "127.0.0.4"}.items():
            procs.append(start_worker(data_dir, join, host, name)[0])

        with flightsql.connect(f"grpc://127.0.0.1:{pa}") as conn, conn.cursor() as cur:
            wait_for("three workers up", lambda: len(workers(cur)) == 3, 30)
            cur.execute("CREATE TABLE t (k BIGINT, g BIGINT) PARTITION BY HASH (k) PARTITIONS 6")
            cur.execute("CREATE INDEX by_g ON t (g) GLOBAL ASYNC PARTITIONS 2")
            cur.execute("SET tessera.index_apply = 'paused'")
            for lo in range(0, 1000, 250):
                cur.execute(f"INSERT INTO t SELECT value, value % 10 FROM range({lo}, {lo + 250})")

        a.send_signal(signal.SIGKILL)
        a.wait()
        killed = time.time()
        wait_listening(b, "127.0.0.1", pb, "coordinator b", timeout=30)
        took_over = time.time() - killed
        assert "Leading the cluster" in server_log(b)

        with flightsql.connect(f"grpc://127.0.0.1:{pb}") as conn, conn.cursor() as cur:
            # Heard from since b took over (no heartbeat yet: NULL).
            wait_for(
                "the workers heartbeating to b",
                lambda: all(
                    w["state"] == "up" and w["last_heartbeat"] is not None
                    for w in workers(cur).values()
                )
                and len(workers(cur)) == 3,
                30,
            )
            got = rows(cur, "SELECT count(*) AS n, sum(k) AS s FROM t")[0]
            assert (got["n"], got["s"]) == (1000, sum(range(1000)))
            # The index applier runs on the new leader: the index converges.
            wait_for(
                "the ASYNC index to converge",
                lambda: rows(cur, "SELECT count(*) AS n FROM t WHERE g = 3")[0]["n"] == 100,
                60,
            )
            cur.execute("INSERT INTO t VALUES (5000, 3)")
            got = rows(cur, "SELECT count(*) AS n FROM t")[0]
            assert got["n"] == 1001
        print(f"\nstandby took over {took_over:.2f} s after the leader was killed "
              f"(leader lease {LEADER_LEASE_S} s)")
    except BaseException:
        print_logs(a, b)
        raise
    finally:
        stop_all(procs, [a, b], etcd)


def test_leader_and_standby_ride_out_an_etcd_restart(data_dir):
    """etcd SIGKILLed and started again on its data within the leader lease:
    the leader keeps the lead (its keep-alive reconnects), the standby keeps
    waiting, and writes go on once etcd is back."""
    etcd, etcd_url = start_etcd(data_dir)
    secret_file(data_dir, "cluster.secret", "s3cret-" + os.urandom(16).hex())
    pa, pb = free_port(), free_port()
    a = start_coordinator(data_dir, "coord-a", pa, etcd_url)
    b = None
    procs = []
    try:
        wait_listening(a, "127.0.0.1", pa, "coordinator a")
        b = start_coordinator(data_dir, "coord-b", pb, etcd_url)
        wait_for("b to stand by", lambda: "Standby: coordinator" in server_log(b), 30)
        procs.append(start_worker(data_dir, f"127.0.0.1:{pa},127.0.0.1:{pb}", "127.0.0.2", "w2")[0])
        with flightsql.connect(f"grpc://127.0.0.1:{pa}") as conn, conn.cursor() as cur:
            wait_for("the worker up", lambda: len(workers(cur)) == 1, 30)
            cur.execute("CREATE TABLE t (k BIGINT) PARTITION BY HASH (k) PARTITIONS 2")
            cur.execute("INSERT INTO t SELECT value FROM range(100)")

            ports = etcd.ports
            etcd.send_signal(signal.SIGKILL)
            etcd.wait()
            etcd, _ = start_etcd(data_dir, ports)

            # Writes go on once etcd answers again (a statement in the gap
            # may fail: the metastore is away).
            def insert():
                try:
                    cur.execute("INSERT INTO t VALUES (1000)")
                    return True
                except flightsql.Error:
                    return False

            wait_for("a write after etcd is back", insert, 30)
            # Longer than the leader lease: a lost lead would show by now.
            deadline = time.time() + 2 * LEADER_LEASE_S
            while time.time() < deadline:
                assert a.poll() is None, "the leader stopped: " + server_log(a)
                assert b.poll() is None, "the standby stopped: " + server_log(b)
                time.sleep(0.2)
            assert "Leading the cluster" not in server_log(b)
            got = rows(cur, "SELECT count(*) AS n FROM t")[0]
            assert got["n"] == 101
    except BaseException:
        print_logs(a, b)
        raise
    finally:
        stop_all(procs, [a, b], etcd)
