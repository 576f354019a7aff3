"""A cluster on a real etcd: two `tessera coordinator --metastore etcd://...`
(one leads, the other follows; both serve clients) and three `tessera
worker` joining both. DDL and writes through either coordinator are read
through the other at once, with writers and readers on both; the leader is
SIGKILLed with an ASYNC index behind: the follower takes over within the
leader lease, the workers heartbeat to it, every acknowledged row is there
exactly once and the index converges."""

import os
import random
import signal
import statistics
import threading
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
from test_cluster_processes import (
    rows,
    secret_file,
    start_worker,
    wait_for,
    worker_id,
    workers,
)

LEADER_LEASE_S = 4.0
# Clients sign in; the coordinators and workers present the cluster secret.
ADMIN_PASSWORD = "admin-" + os.urandom(6).hex()
CREDS = {"username": "admin", "password": ADMIN_PASSWORD}
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
        env={"TESSERA_PASSWORD": ADMIN_PASSWORD},
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


def start_etcd_with_secret(data_dir):
    """A fresh etcd, and the cluster secret the processes present."""
    etcd, etcd_url = start_etcd(data_dir)
    secret_file(data_dir, "cluster.secret", "s3cret-" + os.urandom(16).hex())
    return etcd, etcd_url


def start_pair(data_dir, etcd_url):
    """Coordinator a, leading once it says so, and b, following it."""
    pa, pb = free_port(), free_port()
    a = start_coordinator(data_dir, "coord-a", pa, etcd_url)
    wait_listening(a, "127.0.0.1", pa, "coordinator a")
    wait_for("a to lead", lambda: "Leading the cluster" in server_log(a), 30)
    b = start_coordinator(data_dir, "coord-b", pb, etcd_url)
    wait_listening(b, "127.0.0.1", pb, "coordinator b")
    wait_for("b to follow", lambda: "Following coordinator" in server_log(b), 30)
    return a, pa, b, pb


def start_three_workers(data_dir, join):
    """w2-w4 on 127.0.0.2-4, joining `join`: {name: (process, port)}."""
    return {name: start_worker(data_dir, join, host, name)
            for name, host in {"w2": "127.0.0.2", "w3": "127.0.0.3", "w4": "127.0.0.4"}.items()}


def point_query_ms(cur, n=60):
    """Median wall time of a one-partition read, in milliseconds."""
    times = []
    for i in range(n):
        started = time.perf_counter()
        rows(cur, f"SELECT * FROM t WHERE k = {i}")
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def writers_and_readers(urls, batches, seed):
    """One writer and one reader per coordinator: every writer inserts
    `batches` batches of 10 rows (one batch id per statement), every reader
    checks until the writers are done that each batch it sees is whole.
    Returns the acknowledged batch ids and the reads that saw half a batch
    or failed."""
    rng = random.Random(seed)
    acked, bad, stop = [], [], threading.Event()
    next_batch = iter(range(100_000, 10**9))
    lock = threading.Lock()

    def writer(url):
        with flightsql.connect(url, db_kwargs=CREDS) as conn, conn.cursor() as cur:
            for _ in range(batches):
                with lock:
                    b = next(next_batch)
                lo = b * 10
                cur.execute(
                    f"INSERT INTO w SELECT value, {b} FROM range({lo}, {lo + 10})"
                )
                with lock:
                    acked.append(b)

    def reader(url):
        with flightsql.connect(url, db_kwargs=CREDS) as conn, conn.cursor() as cur:
            while not stop.is_set():
                try:
                    seen = rows(cur, "SELECT b, count(*) AS n FROM w GROUP BY b")
                except flightsql.Error as e:
                    bad.append(f"{url}: {e}")
                    continue
                bad.extend(f"{url}: batch {r['b']} seen with {r['n']} rows"
                           for r in seen if r["n"] != 10)

    writers = [threading.Thread(target=writer, args=(u,)) for u in urls]
    readers = [threading.Thread(target=reader, args=(u,)) for u in urls]
    order = writers + readers
    rng.shuffle(order)
    for t in order:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    return acked, bad


def test_two_coordinators_serve_and_the_follower_takes_over(data_dir):
    """Both coordinators serve clients: DDL and writes through either are
    read through the other at once; SIGKILL the leader (its ASYNC index
    behind) and the follower takes over within the leader lease."""
    etcd, etcd_url = start_etcd_with_secret(data_dir)
    procs = []
    a = b = None
    try:
        a, pa, b, pb = start_pair(data_dir, etcd_url)
        # Joining through the follower first: it passes joins to the leader.
        join = f"127.0.0.1:{pb},127.0.0.1:{pa}"
        started = start_three_workers(data_dir, join)
        procs.extend(p for p, _ in started.values())
        ua, ub = f"grpc://127.0.0.1:{pa}", f"grpc://127.0.0.1:{pb}"
        with flightsql.connect(ua, db_kwargs=CREDS) as ca, ca.cursor() as cur_a, \
                flightsql.connect(ub, db_kwargs=CREDS) as cb, cb.cursor() as cur_b:
            wait_for("three workers up", lambda: len(workers(cur_b)) == 3, 30)
            assert all(w["state"] == "up" for w in workers(cur_b).values())
            # DDL through the follower, seen by the leader at once, and back.
            cur_b.execute("CREATE TABLE t (k BIGINT, g BIGINT) PARTITION BY HASH (k) PARTITIONS 6")
            assert rows(cur_a, "SELECT count(*) AS n FROM t")[0]["n"] == 0
            cur_a.execute("CREATE INDEX by_g ON t (g) GLOBAL ASYNC PARTITIONS 2")
            assert [i["index_name"] for i in rows(cur_b, "SHOW INDEXES")] == ["by_g"]
            # The switch of the leader's applier, set through the follower.
            cur_b.execute("SET tessera.index_apply = 'paused'")
            for lo in range(0, 1000, 250):
                cur = cur_a if lo % 500 == 0 else cur_b
                cur.execute(f"INSERT INTO t SELECT value, value % 10 FROM range({lo}, {lo + 250})")
                # Each coordinator reads what either acknowledged.
                for reader in (cur_a, cur_b):
                    got = rows(reader, "SELECT count(*) AS n FROM t")[0]["n"]
                    assert got == lo + 250
            # Paused on the leader: the ASYNC index has applied nothing yet.
            assert rows(cur_b, "SELECT count(*) AS n FROM t WHERE g = 3")[0]["n"] == 0
            ms_a, ms_b = point_query_ms(cur_a), point_query_ms(cur_b)

            # Parameters through the follower: the leader runs the writes.
            cur_b.execute("CREATE TABLE p (k BIGINT, v VARCHAR) PARTITION BY HASH (k) PARTITIONS 3")
            cur_b.executemany("INSERT INTO p VALUES (?, ?)", [(i, f"v{i}") for i in range(20)])
            cur_b.execute("INSERT INTO p VALUES (?, ?)", (20, None))
            for cur in (cur_a, cur_b):
                assert rows(cur, "SELECT count(*) AS n FROM p")[0]["n"] == 21
                cur.execute("SELECT v FROM p WHERE k = ?", (7,))
                assert cur.fetch_arrow_table().to_pylist() == [{"v": "v7"}]

            cur_a.execute("CREATE TABLE w (k BIGINT, b BIGINT) PARTITION BY HASH (k) PARTITIONS 6")
            seed = int(os.environ.get("TESSERA_SEED", random.randrange(1 << 30)))
            acked, bad = writers_and_readers([ua, ub], 40, seed)
            assert not bad, f"seed {seed}: {bad[:5]}"
            for reader in (cur_a, cur_b):
                seen = rows(reader, "SELECT b, count(*) AS n FROM w GROUP BY b")
                assert sorted(r["b"] for r in seen) == sorted(acked), f"seed {seed}"
                assert all(r["n"] == 10 for r in seen), f"seed {seed}"

            # SIGKILL a worker: the follower routes by the leader's view.
            victim = worker_id(data_dir, "w3")
            proc, old_port = started["w3"]
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed = time.time()
            wait_for(f"{victim} down", lambda: workers(cur_b)[victim]["state"] == "down",
                     WORKER_LEASE_S * 3)
            down_after = time.time() - killed
            for cur in (cur_a, cur_b):
                try:
                    rows(cur, "SELECT count(*) AS n FROM t")
                    raise AssertionError("a read of the dead worker's partitions answered")
                except flightsql.Error as e:
                    assert victim in str(e) and "down" in str(e), str(e)
            # Back at another port: everything answers through both.
            port = old_port
            while port == old_port:
                proc, port = start_worker(data_dir, join, "127.0.0.3", "w3")
                procs.append(proc)
            wait_for(f"{victim} up again", lambda: workers(cur_b)[victim]["state"] == "up", 30)
            for cur in (cur_a, cur_b):
                got = rows(cur, "SELECT count(*) AS n, sum(k) AS s FROM t")[0]
                assert (got["n"], got["s"]) == (1000, sum(range(1000)))

        a.send_signal(signal.SIGKILL)
        a.wait()
        killed = time.time()
        wait_for("b to lead", lambda: "Leading the cluster" in server_log(b), 30)
        took_over = time.time() - killed

        with flightsql.connect(ub, db_kwargs=CREDS) as conn, conn.cursor() as cur:
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
            assert rows(cur, "SELECT count(*) AS n FROM w")[0]["n"] == 10 * len(acked)
            # The index applier runs on the new leader: the index converges.
            wait_for(
                "the ASYNC index to converge",
                lambda: rows(cur, "SELECT count(*) AS n FROM t WHERE g = 3")[0]["n"] == 100,
                60,
            )
            cur.execute("INSERT INTO t VALUES (5000, 3)")
            got = rows(cur, "SELECT count(*) AS n FROM t")[0]
            assert got["n"] == 1001
        print(f"\npoint query through the leader {ms_a:.2f} ms, through the follower "
              f"{ms_b:.2f} ms (median of 60); {len(acked)} batches written through both "
              f"with readers on both, none seen half")
        print(f"follower took over {took_over:.2f} s after the leader was killed "
              f"(leader lease {LEADER_LEASE_S} s); a killed worker was down after "
              f"{down_after:.2f} s (worker lease {WORKER_LEASE_S} s)")
    except BaseException:
        print_logs(a, b)
        raise
    finally:
        stop_all(procs, [a, b], etcd)


def test_leader_and_follower_ride_out_an_etcd_restart(data_dir):
    """etcd SIGKILLed and started again on its data within the leader lease:
    the leader keeps the lead (its keep-alive reconnects), the follower keeps
    following, and writes go on once etcd is back."""
    etcd, etcd_url = start_etcd(data_dir)
    secret_file(data_dir, "cluster.secret", "s3cret-" + os.urandom(16).hex())
    a = b = None
    procs = []
    try:
        a, pa, b, pb = start_pair(data_dir, etcd_url)
        procs.append(start_worker(data_dir, f"127.0.0.1:{pa},127.0.0.1:{pb}", "127.0.0.2", "w2")[0])
        with flightsql.connect(f"grpc://127.0.0.1:{pa}", db_kwargs=CREDS) as conn, conn.cursor() as cur:
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
                assert b.poll() is None, "the follower stopped: " + server_log(b)
                time.sleep(0.2)
            assert "Leading the cluster" not in server_log(b)
            got = rows(cur, "SELECT count(*) AS n FROM t")[0]
            assert got["n"] == 101
    except BaseException:
        print_logs(a, b)
        raise
    finally:
        stop_all(procs, [a, b], etcd)


def test_the_follower_takes_over_mid_rebalance(data_dir):
    """The leader is SIGKILLed while a rebalance moves copies to a fourth
    worker (paced, so that it is mid-way): the follower takes over; reads
    through it answer with every row once; the copies a move had
    added catch up; REBALANCE APPLY through the new leader finishes the job
    with each partition's two copies."""
    etcd, etcd_url = start_etcd_with_secret(data_dir)
    procs = []
    a = b = None
    try:
        a, pa, b, pb = start_pair(data_dir, etcd_url)
        join = f"127.0.0.1:{pa},127.0.0.1:{pb}"
        procs.extend(p for p, _ in start_three_workers(data_dir, join).values())
        ua, ub = f"grpc://127.0.0.1:{pa}", f"grpc://127.0.0.1:{pb}"
        with flightsql.connect(ua, db_kwargs=CREDS) as ca, ca.cursor() as cur_a:
            wait_for("three workers up", lambda: len(workers(cur_a)) == 3, 30)
            cur_a.execute("CREATE TABLE r (id BIGINT, b BIGINT) PARTITION BY HASH (id) "
                          "PARTITIONS 12 REPLICAS 2")
            cur_a.execute("INSERT INTO r SELECT value AS id, value % 7 AS b FROM range(300000)")
            procs.append(start_worker(data_dir, join, "127.0.0.5", "w5")[0])
            wait_for("four workers up", lambda: len(workers(cur_a)) == 4, 30)
            new = worker_id(data_dir, "w5")
            cur_a.execute("SET tessera.rebalance_rate = '200KB/s'")
            moves = [s for s in rows(cur_a, "REBALANCE APPLY") if s["operation"] == "move"]
            assert moves
            wait_for("a move under way", lambda: any(
                s["state"] != "pending" for s in rows(cur_a, "SHOW REBALANCE")), 30)
        a.send_signal(signal.SIGKILL)
        a.wait()
        with flightsql.connect(ub, db_kwargs=CREDS) as cb, cb.cursor() as cur:
            # Until b leads, its reads say to retry (it takes snapshots from
            # the leader); then every row is there once.
            whole = {"n": 300000, "d": 300000}
            wait_for("b to lead", lambda: "Leading the cluster" in server_log(b), 30)
            assert rows(cur, "SELECT count(*) AS n, count(DISTINCT id) AS d FROM r") == [whole]
            wait_for("four workers heartbeating to b", lambda: [
                w["state"] for w in workers(cur).values()] == ["up"] * 4, 30)
            wait_for("every copy in sync", lambda: all(
                p["in_sync"] == p["replicas"] for p in rows(cur, "SHOW PARTITIONS r")), 120)
            rows(cur, "REBALANCE APPLY")
            wait_for("the rebalance", lambda: all(
                s["state"] not in ("pending", "running")
                for s in rows(cur, "SHOW REBALANCE")), 120)
            assert all(s["state"] == "done" for s in rows(cur, "SHOW REBALANCE"))
            assert [r["operation"] for r in rows(cur, "EXPLAIN REBALANCE")] == ["total"]
            for p in rows(cur, "SHOW PARTITIONS r"):
                assert len(p["replicas"].split(", ")) == 2 and p["in_sync"] == p["replicas"], p
            assert workers(cur)[new]["held"] >= 12 * 2 // 4, workers(cur)
            assert rows(cur, "SELECT count(*) AS n, count(DISTINCT id) AS d FROM r") == [whole]
    except BaseException:
        print_logs(a, b)
        raise
    finally:
        stop_all(procs, [a, b], etcd)
