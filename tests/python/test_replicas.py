"""Replicas on separate worker processes: copies of each partition on
distinct workers, writes acknowledged once the write quorum of every
partition holds them, reads from in-sync copies. A worker is SIGKILLed
while a writer loads batches and a reader aggregates: no acknowledged
batch is lost or doubled, no statement is seen in part, the reader keeps
answering, and the dead worker's copies leave the in-sync set."""

import glob
import json
import os
import random
import re
import signal
import threading

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pytest
from tessera_server import server_log
from test_cluster_processes import (
    rows,
    start_coordinator,
    start_worker,
    stop_all,
    wait_for,
    workers,
)

BATCH = 500


@pytest.fixture
def cluster(data_dir):
    """A coordinator and three workers (127.0.0.2-4); yields
    (coordinator address, {name: process}, start(name))."""
    coord, coordinator = start_coordinator(data_dir, lease=2)
    procs = {"coordinator": coord}
    hosts = {"w2": "127.0.0.2", "w3": "127.0.0.3", "w4": "127.0.0.4"}

    def start(name):
        procs[name] = start_worker(data_dir, coordinator, hosts[name], name)[0]

    try:
        for name in hosts:
            start(name)
        yield coordinator, procs, start
    finally:
        stop_all(procs.values())


def wait_joined(cur, procs):
    """Waits for the three workers to have joined; says what their logs
    say if they do not."""
    try:
        wait_for("three workers", lambda: len(workers(cur)) == 3, 30)
    except AssertionError as e:
        logs = {n: server_log(p)[-2000:] for n, p in procs.items()}
        raise AssertionError(f"{e}: {workers(cur)}; logs: {logs}") from None


def kill(procs, name):
    procs[name].send_signal(signal.SIGKILL)
    procs[name].wait()


def worker_of(data_dir, name):
    with open(os.path.join(data_dir, name, "worker.id")) as f:
        return f.read().strip()


def partitions(cur, table):
    return rows(cur, f"SHOW PARTITIONS {table}")


def manifests(data_dir):
    """{partition directory: {worker: [file names]}} of the copies of the
    tables' partitions (directories t<id>), read off the workers' data
    directories."""
    out = {}
    for path in glob.glob(os.path.join(data_dir, "w*", "t[0-9]*", "p*")):
        manifest = read_manifest(path)
        if manifest is None:
            continue
        part = os.path.relpath(path, os.path.join(data_dir))
        worker, rest = part.split(os.sep, 1)
        out.setdefault(rest, {})[worker] = [x["name"] for x in manifest["files"]]
    return out


def read_manifest(partition_dir):
    """A partition's manifest: of its two slots (manifest.0 and .1, each
    a line of JSON and a line with the xxh3 checksum of it), the whole one
    with the higher sequence number; None if there is none. The checksum
    is not checked here: a slot that parses is taken as whole."""
    newest = None
    for name in ("manifest.0", "manifest.1"):
        try:
            with open(os.path.join(partition_dir, name)) as f:
                slot = json.loads(f.read().rstrip("\n").rsplit("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            continue
        if newest is None or slot["seq"] > newest["seq"]:
            newest = slot
    return newest and newest["manifest"]


def reads_per_worker(cur, sql, table):
    """How many partitions of `table` each worker reads for `sql`, from
    its EXPLAIN."""
    plan = "\n".join(str(v) for r in rows(cur, f"EXPLAIN {sql}") for v in r.values())
    counts = {}
    pattern = rf"PartitionScanExec: table={table}, [^\n]*?workers=\[([^\]]*)\], read=\[([^\]]*)\]"
    for found, read in re.findall(pattern, plan):
        assert ", " not in found, f"one task reads from one worker: {found}"
        counts[found] = counts.get(found, 0) + len(read.split(", "))
    return counts


def test_placement_and_quorums(cluster, data_dir):
    coordinator, procs, _ = cluster
    with flightsql.connect(f"grpc://{coordinator}") as conn, conn.cursor() as cur:
        wait_joined(cur, procs)
        with pytest.raises(flightsql.Error, match="REPLICAS 4 needs 4 workers and 3 are"):
            cur.execute("CREATE TABLE big (k BIGINT) PARTITION BY HASH (k) PARTITIONS 4 "
                        "REPLICAS 4")
        cur.execute("CREATE TABLE t_all (k BIGINT) PARTITION BY HASH (k) PARTITIONS 6 "
                    "REPLICAS 2 WRITE QUORUM ALL")
        cur.execute("CREATE TABLE t_maj (k BIGINT) PARTITION BY HASH (k) PARTITIONS 6 "
                    "REPLICAS 3")
        for table, copies in (("t_all", 2), ("t_maj", 3)):
            placed = partitions(cur, table)
            assert len(placed) == 6
            for p in placed:
                replicas = p["replicas"].split(", ")
                assert len(set(replicas)) == copies, p
                assert replicas[0] == p["worker"] and p["in_sync"] == p["replicas"]
                assert all(s.endswith(" in_sync") for s in p["states"].split(", ")), p
            led = [p["worker"] for p in placed]
            assert sorted(led.count(w) for w in set(led)) == [2, 2, 2], led
        shown = workers(cur)
        assert sorted(w["held"] for w in shown.values()) == [10, 10, 10], shown
        count = "SELECT count(*) FROM t_maj"
        assert sorted(reads_per_worker(cur, count, "t_maj").values()) == [2, 2, 2]
        cur.execute("INSERT INTO t_all SELECT value AS k FROM range(1000)")
        cur.execute("INSERT INTO t_maj SELECT value AS k FROM range(1000)")

        w2 = worker_of(data_dir, "w2")
        kill(procs, "w2")
        # ALL: a write to partitions w2 holds fails, naming it, changing nothing.
        with pytest.raises(flightsql.Error, match=f"needs its write on 2 in-sync copies.*{w2}"):
            cur.execute("INSERT INTO t_all SELECT value AS k FROM range(1000, 2000)")
        assert rows(cur, "SELECT count(*) AS n FROM t_all") == [{"n": 1000}]
        # MAJORITY of 3: writes go on, and w2 leaves the in-sync sets.
        cur.execute("INSERT INTO t_maj SELECT value AS k FROM range(1000, 2000)")
        assert rows(cur, "SELECT count(*) AS n, count(DISTINCT k) AS d FROM t_maj") == [
            {"n": 2000, "d": 2000}]
        wait_for("w2 down", lambda: workers(cur)[w2]["state"] == "down", 30)
        for p in partitions(cur, "t_maj"):
            assert w2 not in p["in_sync"].split(", "), p
            assert f"{w2} down" in p["states"], p
        # The dead leader's reads are shared by the two copies left.
        assert sorted(reads_per_worker(cur, count, "t_maj").values()) == [3, 3]
        # Bulk ingest (streamed) goes on as well.
        table = pa.table({"k": pa.array(range(2000, 102000), pa.int64())})
        assert cur.adbc_ingest("t_maj", table, mode="append") == 100000
        assert rows(cur, "SELECT count(*) AS n, count(DISTINCT k) AS d FROM t_maj") == [
            {"n": 102000, "d": 102000}]
        # Reads of t_all find the copies that are up.
        assert rows(cur, "SELECT count(*) AS n, sum(k) AS s FROM t_all") == [
            {"n": 1000, "s": sum(range(1000))}]


def test_a_worker_killed_mid_load_loses_nothing(cluster, data_dir):
    """REPLICAS 2, WRITE QUORUM ONE: a writer keeps loading batches while
    a reader aggregates; one worker is SIGKILLed mid-load. Each batch is
    there whole or not at all, every acknowledged one exactly once, the
    reader never fails, and the dead worker leaves the in-sync sets.
    Restarted while the writer goes on, it catches up and rejoins them;
    then another worker dies and every row is still there, once."""
    coordinator, procs, start = cluster
    seed = int(os.environ.get("TESSERA_TEST_SEED", random.randrange(1 << 30)))
    print(f"seed {seed}")
    rng = random.Random(seed)
    with flightsql.connect(f"grpc://{coordinator}") as conn, conn.cursor() as cur:
        wait_joined(cur, procs)
        cur.execute("CREATE TABLE t (id BIGINT, b BIGINT) PARTITION BY HASH (id) PARTITIONS 6 "
                    "REPLICAS 2 WRITE QUORUM ONE")
        acked, failed = [], []
        stop = threading.Event()
        loaded = threading.Event()

        def write():
            with flightsql.connect(f"grpc://{coordinator}") as c, c.cursor() as w:
                b = 0
                while not stop.is_set():
                    try:
                        w.execute(f"INSERT INTO t SELECT value AS id, {b} AS b FROM "
                                  f"range({b * BATCH}, {(b + 1) * BATCH})")
                        acked.append(b)
                    except flightsql.Error as e:
                        failed.append((b, str(e)))
                    b += 1
                    if len(acked) >= 10:
                        loaded.set()

        seen, errors = [], []

        def read():
            with flightsql.connect(f"grpc://{coordinator}") as c, c.cursor() as r:
                while not stop.is_set():
                    try:
                        got = rows(r, "SELECT count(*) AS n, count(DISTINCT b) AS d FROM t")[0]
                        seen.append(got)
                    except flightsql.Error as e:
                        errors.append(str(e))

        threads = [threading.Thread(target=write, daemon=True),
                   threading.Thread(target=read, daemon=True)]
        for t in threads:
            t.start()
        assert loaded.wait(120), failed[-3:]
        victim = rng.choice(["w2", "w3", "w4"])
        dead = worker_of(data_dir, victim)
        kill(procs, victim)
        before = len(acked)
        wait_for("ten more acknowledged batches", lambda: len(acked) >= before + 10, 120)
        wait_for("the victim down", lambda: workers(cur)[dead]["state"] == "down", 30)
        placed = partitions(cur, "t")
        held = [p for p in placed if dead in p["replicas"].split(", ")]
        assert held
        for p in held:
            assert dead not in p["in_sync"].split(", "), p
            assert f"{dead} down" in p["states"], p

        # Back while the writer goes on: its copies catch up and rejoin
        # the in-sync sets (writes held back a moment if they keep landing).
        start(victim)
        wait_for("every copy in sync", lambda: all(
            p["in_sync"] == p["replicas"] for p in partitions(cur, "t")), 60)
        before = len(acked)
        wait_for("five more acknowledged batches", lambda: len(acked) >= before + 5, 120)
        stop.set()
        for t in threads:
            t.join(60)
        print(f"{len(acked)} batches acknowledged, {len(failed)} failed, {len(seen)} reads")
        assert not errors, errors[:3]
        # Every read saw whole statements: as many rows as batches times BATCH.
        assert all(s["n"] == s["d"] * BATCH for s in seen), [s for s in seen if
                                                             s["n"] != s["d"] * BATCH][:3]
        got = rows(cur, "SELECT b, count(*) AS n, count(DISTINCT id) AS d FROM t GROUP BY b")
        present = {r["b"]: r for r in got}
        assert all(r["n"] == BATCH and r["d"] == BATCH for r in got), got
        assert set(acked) <= set(present), sorted(set(acked) - set(present))
        for b, why in failed:
            if b in present:
                assert "changed nothing" not in why and "nothing was written" not in why, why
        assert all(p["in_sync"] == p["replicas"] for p in partitions(cur, "t"))
        # Compaction merges the same files on every copy: after COMPACT
        # TABLE the copies of a partition list the same files, few of them
        # (the newest merge may wait for its commit to be confirmed).
        cur.execute("COMPACT TABLE t")
        alike = manifests(data_dir)
        assert len(alike) == 6, alike
        for part, copies in alike.items():
            assert len(copies) == 2, (part, copies)
            names = list(copies.values())
            assert names[0] == names[1] and len(names[0]) <= 3, (part, copies)
        # Then another worker dies: every row is still there, once.
        other = rng.choice([w for w in ["w2", "w3", "w4"] if w != victim])
        kill(procs, other)
        got = rows(cur, "SELECT b, count(*) AS n, count(DISTINCT id) AS d FROM t GROUP BY b")
        assert {r["b"]: r for r in got} == present


def test_set_replicas_adds_and_removes_copies(cluster, data_dir):
    """ALTER TABLE SET REPLICAS 2 on a table of one copy: the new copies
    are caught up before it returns (bytes copied), so any one worker may
    then die with every row still readable; SET REPLICAS 1 takes the
    copies away again."""
    coordinator, procs, _ = cluster
    with flightsql.connect(f"grpc://{coordinator}") as conn, conn.cursor() as cur:
        wait_joined(cur, procs)
        cur.execute("CREATE TABLE s (k BIGINT, v VARCHAR) PARTITION BY HASH (k) PARTITIONS 6")
        cur.execute("INSERT INTO s SELECT value AS k, 'v' || CAST(value AS VARCHAR) AS v "
                    "FROM range(20000)")
        done = rows(cur, "ALTER TABLE s SET REPLICAS 2")[0]
        assert done["copies_added"] == 6 and done["copies_removed"] == 0, done
        assert done["bytes_copied"] > 0, done
        for p in partitions(cur, "s"):
            assert len(p["replicas"].split(", ")) == 2 and p["in_sync"] == p["replicas"], p
        with pytest.raises(flightsql.Error, match="REPLICAS 4 needs 4 live workers"):
            cur.execute("ALTER TABLE s SET REPLICAS 4")
        w3 = worker_of(data_dir, "w3")
        # Right after the kill, while w3's heartbeats still look on time: the
        # first run reads w3's partitions from it and fails. A session that
        # allows one run gets that error; the default runs the query again
        # on the other copies, and tessera.queries shows both runs.
        with flightsql.connect(f"grpc://{coordinator}") as once, once.cursor() as once_cur:
            once_cur.execute("SET tessera.query_runs = 1")
            kill(procs, "w3")
            with pytest.raises(flightsql.Error, match=w3):
                rows(once_cur, "SELECT count(*) AS n FROM s")
        assert rows(cur, "SELECT count(*) AS n, count(DISTINCT k) AS d FROM s") == [
            {"n": 20000, "d": 20000}]
        runs = rows(cur, "SELECT run, status FROM tessera.queries WHERE sql = "
                         "'SELECT count(*) AS n, count(DISTINCT k) AS d FROM s' ORDER BY started")
        assert runs[-1]["status"] == "ok" and runs[-1]["run"] > 1, runs
        assert [r["run"] for r in runs] == list(range(1, len(runs) + 1)), runs
        assert all(r["status"].startswith("error") for r in runs[:-1]), runs
        wait_for("w3 down", lambda: workers(cur)[w3]["state"] == "down", 30)
        done = rows(cur, "ALTER TABLE s SET REPLICAS 1")[0]
        assert done["copies_removed"] == 6, done
        placed = partitions(cur, "s")
        assert all(p["replicas"] != w3 for p in placed), placed
        assert rows(cur, "SELECT count(*) AS n FROM s") == [{"n": 20000}]


def test_global_indexes_on_replicated_tables(cluster, data_dir):
    """GLOBAL SYNC and ASYNC indexes on a REPLICAS 2 table: their
    partitions have two copies too. With a worker dead, writes and index
    lookups go on; back, its copies of the table's partitions, outboxes
    and index partitions catch up; then with another worker dead every
    lookup still finds every row. SET REPLICAS changes the index
    partitions' copies with the table's."""
    coordinator, procs, start = cluster
    with flightsql.connect(f"grpc://{coordinator}") as conn, conn.cursor() as cur:
        wait_joined(cur, procs)
        cur.execute("CREATE TABLE g (id BIGINT, email VARCHAR, c VARCHAR) PARTITION BY HASH (id) "
                    "PARTITIONS 6 REPLICAS 2 WRITE QUORUM ONE")
        load = ("INSERT INTO g SELECT value AS id, 'u' || CAST(value AS VARCHAR) AS email, "
                "'c' || CAST(value % 5 AS VARCHAR) AS c FROM range({}, {})")
        cur.execute(load.format(0, 3000))
        cur.execute("CREATE INDEX g_email ON g (email) GLOBAL SYNC PARTITIONS 4")
        cur.execute("CREATE INDEX g_c ON g (c) GLOBAL ASYNC PARTITIONS 4")
        cur.execute("SET tessera.index_read = 'fresh'")
        for index in ("g_email", "g_c"):
            for p in partitions(cur, index):
                assert len(p["replicas"].split(", ")) == 2 and p["in_sync"] == p["replicas"], p
        assert sum(w["held"] for w in workers(cur).values()) == 6 * 2 + 4 * 2 + 4 * 2

        def lookups(total):
            by_email = "SELECT id FROM g WHERE email = 'u1234'"
            plan = "\n".join(str(v) for r in rows(cur, f"EXPLAIN {by_email}") for v in r.values())
            assert "index=" in plan, plan
            assert rows(cur, by_email) == [{"id": 1234}]
            assert rows(cur, f"SELECT id FROM g WHERE email = 'u{total - 1}'") == [
                {"id": total - 1}]
            assert rows(cur, "SELECT count(*) AS n FROM g WHERE c = 'c3'") == [{"n": total // 5}]

        lookups(3000)
        victim = "w3"
        dead = worker_of(data_dir, victim)
        kill(procs, victim)
        cur.execute(load.format(3000, 4000))
        lookups(4000)
        wait_for("the victim down", lambda: workers(cur)[dead]["state"] == "down", 30)
        assert any(dead not in p["in_sync"] for p in partitions(cur, "g_email")
                   if dead in p["replicas"])
        cur.execute(load.format(4000, 5000))

        # Back: every copy it holds catches up, index partitions included.
        start(victim)
        try:
            wait_for("every copy in sync", lambda: all(
                p["in_sync"] == p["replicas"]
                for name in ("g", "g_email", "g_c") for p in partitions(cur, name)), 60)
        except AssertionError as e:
            shown = {n: partitions(cur, n) for n in ("g", "g_email", "g_c")}
            raise AssertionError(f"{e}: {shown}; {server_log(procs['coordinator'])[-3000:]}")
        other = "w2" if victim != "w2" else "w4"
        kill(procs, other)
        lookups(5000)
        assert rows(cur, "SELECT count(*) AS n, count(DISTINCT email) AS d FROM g") == [
            {"n": 5000, "d": 5000}]

        # Down to one copy of everything, the dead worker's copies first.
        wait_for("the other down",
                 lambda: workers(cur)[worker_of(data_dir, other)]["state"] == "down", 30)
        done = rows(cur, "ALTER TABLE g SET REPLICAS 1")[0]
        assert done["copies_removed"] == 6 + 4 + 4, done
        for name in ("g", "g_email", "g_c"):
            for p in partitions(cur, name):
                assert p["replicas"] == p["in_sync"] and ", " not in p["replicas"], p
        lookups(5000)
