"""A cluster of separate processes: one `tessera coordinator` and three
`tessera worker --join` on different loopback addresses (127.0.0.2-4, so
nothing may be hard-wired to 127.0.0.1), driven through ADBC. A worker is
SIGKILLed: it shows `down` within the lease, queries that need it fail
naming it, the others answer; restarted at another port, everything
answers again with exact counts. Every process presents the cluster
secret; a worker with another one is refused."""

import os
import signal
import time

import adbc_driver_flightsql.dbapi as flightsql
from tessera_server import free_port, server_log, start_process, stop_server, wait_listening

LEASE_S = 2.0
ROWS = 3000


def rows(cur, sql):
    cur.execute(sql)
    return cur.fetch_arrow_table().to_pylist()


def workers(cur):
    return {w["id"]: w for w in rows(cur, "SHOW WORKERS")}


def wait_for(what, check, timeout):
    """Polls `check` until it returns something true; fails after `timeout`."""
    deadline = time.time() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.time() > deadline:
            raise AssertionError(f"{what} not within {timeout} s")
        time.sleep(0.05)


def secret_file(data_dir, name, secret):
    path = os.path.join(data_dir, name)
    with open(path, "w") as f:
        f.write(secret + "\n")
    return path


def start_coordinator(data_dir, lease=None, address=None):
    """An insecure `tessera coordinator` on 127.0.0.1 with a new cluster
    secret in data_dir; returns (process, address) once it listens. Given
    the address of one that stopped, starts it again there, on its data
    and secret."""
    if address is None:
        port = free_port()
        address = f"127.0.0.1:{port}"
        secret_file(data_dir, "cluster.secret", "s3cret-" + os.urandom(16).hex())
    else:
        port = int(address.rsplit(":", 1)[1])
    args = ["coordinator", "--insecure", "--listen", address,
            "--data-dir", os.path.join(data_dir, "coordinator"),
            "--cluster-secret-file", os.path.join(data_dir, "cluster.secret")]
    if lease:
        args += ["--worker-lease", str(lease)]
    proc = start_process(args, os.path.join(data_dir, "coordinator.log"))
    try:
        wait_listening(proc, "127.0.0.1", port, "coordinator")
    except BaseException:
        stop_server(proc)
        raise
    return proc, address


def two_workers_with_rows(data_dir, procs, n, lease):
    """Starts a coordinator (worker lease `lease` s) and workers w2 and w3
    on 127.0.0.2 and .3, into `procs` (the caller stops them), and fills
    table t (k, v) with `n` rows in 4 HASH partitions; returns the
    coordinator's address."""
    coord, coordinator = start_coordinator(data_dir, lease=lease)
    procs["coordinator"] = coord
    for name, host in (("w2", "127.0.0.2"), ("w3", "127.0.0.3")):
        procs[name] = start_worker(data_dir, coordinator, host, name)[0]
    with flightsql.connect(f"grpc://{coordinator}") as conn, conn.cursor() as cur:
        wait_for("two workers", lambda: len(workers(cur)) == 2, 30)
        cur.execute("CREATE TABLE t (k BIGINT, v BIGINT) PARTITION BY HASH (k) PARTITIONS 4")
        cur.execute(f"INSERT INTO t SELECT value AS k, value AS v FROM range({n})")
    return coordinator


def stop_all(procs):
    """Stops the processes still running (a killed one's log is closed)."""
    for p in procs:
        if p.poll() is None:
            stop_server(p)
        else:
            p.log.close()


def start_worker(data_dir, coordinator, host, name, secret=None):
    port = free_port()
    proc = start_process(
        [
            "worker",
            "--join", coordinator,
            "--listen", f"{host}:{port}",
            "--data-dir", os.path.join(data_dir, name),
            "--cluster-secret-file", secret or os.path.join(data_dir, "cluster.secret"),
        ],
        os.path.join(data_dir, f"{name}-{port}.log"),
    )
    wait_listening(proc, host, port, f"worker {name}")
    return proc, port


def worker_id(data_dir, name):
    return wait_for(
        f"{name} to keep its id",
        lambda: open(os.path.join(data_dir, name, "worker.id")).read().strip()
        if os.path.exists(os.path.join(data_dir, name, "worker.id"))
        else None,
        30,
    )


def test_worker_processes_join_die_and_return(data_dir):
    cport = free_port()
    coordinator = f"127.0.0.1:{cport}"
    secret_file(data_dir, "cluster.secret", "s3cret-" + os.urandom(16).hex())
    coord = start_process(
        [
            "coordinator",
            "--insecure",
            "--listen", coordinator,
            "--data-dir", os.path.join(data_dir, "coordinator"),
            "--worker-lease", str(LEASE_S),
            "--cluster-secret-file", os.path.join(data_dir, "cluster.secret"),
        ],
        os.path.join(data_dir, "coordinator.log"),
    )
    procs = {}
    try:
        wait_listening(coord, "127.0.0.1", cport, "coordinator")
        hosts = {"w2": "127.0.0.2", "w3": "127.0.0.3", "w4": "127.0.0.4"}
        for name, host in hosts.items():
            procs[name] = start_worker(data_dir, coordinator, host, name)
        ids = {name: worker_id(data_dir, name) for name in hosts}
        assert len(set(ids.values())) == 3, ids

        with flightsql.connect(f"grpc://{coordinator}") as conn, conn.cursor() as cur:
            wait_for(
                "three workers up",
                lambda: [w["state"] for w in workers(cur).values()] == ["up"] * 3,
                30,
            )
            seen = workers(cur)
            for name, host in hosts.items():
                assert seen[ids[name]]["address"].startswith(f"http://{host}:"), seen

            # A worker with another secret is refused, and says so.
            other = secret_file(data_dir, "other.secret", "other-" + os.urandom(16).hex())
            intruder, _ = start_worker(data_dir, coordinator, "127.0.0.5", "intruder", other)
            wait_for(
                "the intruder to be refused",
                lambda: b"does not carry this cluster's secret" in server_log(intruder).encode(),
                30,
            )
            stop_server(intruder)
            assert len(workers(cur)) == 3
            assert "refused a call without this cluster's secret" in server_log(coord)

            cur.execute("CREATE TABLE t (k BIGINT, v BIGINT) PARTITION BY HASH (k) PARTITIONS 6")
            for lo in range(0, ROWS, 500):
                cur.execute(f"INSERT INTO t SELECT value, value * 2 FROM range({lo}, {lo + 500})")
            expected = (ROWS, sum(2 * k for k in range(ROWS)))
            got = rows(cur, "SELECT count(*) AS n, sum(v) AS s FROM t")[0]
            assert (got["n"], got["s"]) == expected
            held = workers(cur)
            assert sum(w["partitions"] for w in held.values()) == 6
            assert all(w["partitions"] == 2 for w in held.values()), held

            # SIGKILL the worker on 127.0.0.3.
            victim = ids["w3"]
            proc, old_port = procs.pop("w3")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed = time.time()
            wait_for(
                f"{victim} down",
                lambda: workers(cur)[victim]["state"] == "down",
                LEASE_S * 3,
            )
            down_after = time.time() - killed
            assert down_after <= LEASE_S + 1.5, down_after
            others = [w for w in workers(cur).values() if w["id"] != victim]
            # Alive (a beat late under load is suspect, not down).
            assert all(w["state"] in ("up", "suspect") for w in others), others

            # Whole-table reads need it: a clear error naming it.
            try:
                cur.execute("SELECT count(*) FROM t")
                cur.fetchall()
                raise AssertionError("a read of the dead worker's partitions answered")
            except flightsql.Error as e:
                text = str(e)
                assert victim in text and "down" in text and "start it again" in text, text
            # Point reads on the other workers answer.
            answered, refused = 0, 0
            for k in range(30):
                try:
                    n = rows(cur, f"SELECT count(*) AS n FROM t WHERE k = {k}")[0]["n"]
                    assert n == 1
                    answered += 1
                except flightsql.Error as e:
                    assert victim in str(e), str(e)
                    refused += 1
            assert answered > 0 and refused > 0, (answered, refused)

            # Back at another port: everything answers, nothing lost or doubled.
            port = old_port
            while port == old_port:
                proc, port = start_worker(data_dir, coordinator, "127.0.0.3", "w3")
                if port == old_port:
                    stop_server(proc)
            procs["w3"] = (proc, port)
            wait_for(
                f"{victim} up again",
                lambda: workers(cur)[victim]["state"] == "up",
                30,
            )
            assert workers(cur)[victim]["address"] == f"http://127.0.0.3:{port}"
            got = rows(cur, "SELECT count(*) AS n, sum(v) AS s FROM t")[0]
            assert (got["n"], got["s"]) == expected
            cur.execute("INSERT INTO t VALUES (100000, 1)")
            got = rows(cur, "SELECT count(*) AS n FROM t")[0]
            assert got["n"] == ROWS + 1
        print(f"\nkilled worker shown down after {down_after:.2f} s (lease {LEASE_S} s)")
    except BaseException:
        print(server_log(coord))
        raise
    finally:
        for proc, _ in procs.values():
            stop_server(proc)
        stop_server(coord)
