"""Rebalancing on separate worker processes while a writer and a reader
run: a fourth worker joins three, EXPLAIN REBALANCE shows the moves
without making them, REBALANCE APPLY makes them (a copy added, caught
up, switched in, the old one dropped); every read meanwhile sees whole
statements, no acknowledged batch is lost or doubled, and the workers end
evenly loaded. Then the new worker is drained: it ends holding nothing."""

import glob
import os
import random
import signal
import threading
import time

import adbc_driver_flightsql.dbapi as flightsql
import pytest
from test_cluster_processes import (
    rows,
    start_coordinator,
    start_worker,
    stop_all,
    wait_for,
    workers,
)

BATCH = 200
HOSTS = {"w2": "127.0.0.2", "w3": "127.0.0.3", "w4": "127.0.0.4", "w5": "127.0.0.5"}


def worker_of(data_dir, name):
    with open(os.path.join(data_dir, name, "worker.id")) as f:
        return f.read().strip()


def placements(cur, table):
    return {p["partition"]: p["replicas"] for p in rows(cur, f"SHOW PARTITIONS {table}")}


def total_row(plan):
    (total,) = [r for r in plan if r["operation"] == "total"]
    return total


def finished(cur):
    steps = rows(cur, "SHOW REBALANCE")
    return steps and all(s["state"] not in ("pending", "running") for s in steps)


@pytest.fixture
def cluster(data_dir):
    """A coordinator and three workers (127.0.0.2-4); yields (coordinator
    address, {name: process}); a test may add w5 to the processes."""
    coord, coordinator = start_coordinator(data_dir, lease=2)
    procs = {"coordinator": coord}
    try:
        for name in ("w2", "w3", "w4"):
            procs[name] = start_worker(data_dir, coordinator, HOSTS[name], name)[0]
        with flightsql.connect(f"grpc://{coordinator}") as conn, conn.cursor() as cur:
            wait_for("three workers", lambda: len(workers(cur)) == 3, 30)
        yield coordinator, procs
    finally:
        stop_all(procs.values())


def test_rebalance_and_drain_under_load(cluster, data_dir):
    coordinator, procs = cluster
    seed = int(os.environ.get("TESSERA_TEST_SEED", random.randrange(1 << 30)))
    print(f"seed {seed}")
    rng = random.Random(seed)
    with flightsql.connect(f"grpc://{coordinator}") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE h (id BIGINT, b BIGINT) PARTITION BY HASH (id) "
                    "PARTITIONS 8")
        cur.execute("CREATE TABLE r (id BIGINT, b BIGINT) PARTITION BY HASH (id) "
                    "PARTITIONS 6 REPLICAS 2")
        for t in ("h", "r"):
            cur.execute(f"INSERT INTO {t} SELECT value AS id, -1 AS b FROM range(20000)")

        acked = {"h": [], "r": []}
        failed, seen, errors = [], [], []
        stop = threading.Event()

        def write():
            with flightsql.connect(f"grpc://{coordinator}") as c, c.cursor() as w:
                b = 0
                while not stop.is_set():
                    t = rng.choice(["h", "r"])
                    lo = 100000 + b * BATCH
                    try:
                        w.execute(f"INSERT INTO {t} SELECT value AS id, {b} AS b FROM "
                                  f"range({lo}, {lo + BATCH})")
                        acked[t].append(b)
                    except flightsql.Error as e:
                        failed.append((t, b, str(e)))
                    b += 1

        def read():
            with flightsql.connect(f"grpc://{coordinator}") as c, c.cursor() as rd:
                while not stop.is_set():
                    for t in ("h", "r"):
                        try:
                            seen.append(rows(rd, f"SELECT count(*) AS n, count(DISTINCT b) "
                                                 f"AS d FROM {t} WHERE b >= 0")[0])
                        except flightsql.Error as e:
                            errors.append(str(e))

        threads = [threading.Thread(target=write, daemon=True),
                   threading.Thread(target=read, daemon=True)]
        for t in threads:
            t.start()

        # A fourth worker: the plan moves copies to it, and only to it.
        procs["w5"] = start_worker(data_dir, coordinator, HOSTS["w5"], "w5")[0]
        wait_for("four workers", lambda: len(workers(cur)) == 4, 30)
        new = worker_of(data_dir, "w5")
        before = {t: placements(cur, t) for t in ("h", "r")}
        plan = rows(cur, "EXPLAIN REBALANCE")
        steps = [s for s in plan if s["operation"] != "total"]
        assert steps and all(s["operation"] == "move" and s["to_worker"] == new
                             for s in steps), plan
        total = total_row(plan)
        assert total["skew_partitions_after"] <= 1.25, total
        assert total["moved_vs_optimum"] <= 1.15, total
        assert {t: placements(cur, t) for t in ("h", "r")} == before, "EXPLAIN moved"
        # The time estimate follows tessera.rebalance_rate when it is lower.
        cur.execute("SET tessera.rebalance_rate = '10KB/s'")
        slow = total_row(rows(cur, "EXPLAIN REBALANCE"))
        cur.execute("SET tessera.rebalance_rate = 'unlimited'")
        assert slow["est_seconds"] >= slow["bytes"] / 10e3, slow
        assert total["est_seconds"] < slow["est_seconds"], (total, slow)

        applied = rows(cur, "REBALANCE APPLY")
        assert len(applied) == len(plan)
        wait_for("the rebalance", lambda: finished(cur), 120)
        done = rows(cur, "SHOW REBALANCE")
        assert all(s["state"] == "done" for s in done), done
        assert sum(s["bytes_copied"] for s in done) > 0, done
        # Nothing left to do, and the new worker holds its share.
        assert [r["operation"] for r in rows(cur, "EXPLAIN REBALANCE")] == ["total"]
        held = {w: v["held"] for w, v in workers(cur).items()}
        assert held[new] >= (8 + 6 * 2) // 4, held
        after = total_row(rows(cur, "EXPLAIN REBALANCE"))
        assert after["skew_partitions_before"] <= 1.25, after

        # Drained under load: it ends holding nothing.
        cur.execute(f"ALTER WORKER '{new}' DRAIN")
        drain = rows(cur, "REBALANCE APPLY")
        assert all(s["from_worker"] == new for s in drain if s["operation"] != "total")
        wait_for("the drain", lambda: finished(cur), 120)
        assert all(s["state"] == "done" for s in rows(cur, "SHOW REBALANCE"))
        assert workers(cur)[new]["held"] == 0, workers(cur)

        stop.set()
        for t in threads:
            t.join(60)
        print(f"{sum(len(a) for a in acked.values())} batches acknowledged, "
              f"{len(failed)} failed, {len(seen)} reads")
        assert not errors, errors[:3]
        assert not failed, failed[:3]
        assert all(s["n"] == s["d"] * BATCH for s in seen), [
            s for s in seen if s["n"] != s["d"] * BATCH][:3]
        for t in ("h", "r"):
            got = rows(cur, f"SELECT b, count(*) AS n, count(DISTINCT id) AS d FROM {t} "
                            "WHERE b >= 0 GROUP BY b")
            assert sorted(g["b"] for g in got) == sorted(acked[t]), t
            assert all(g["n"] == BATCH and g["d"] == BATCH for g in got), got
            assert rows(cur, f"SELECT count(*) AS n FROM {t} WHERE b = -1") == [
                {"n": 20000}]
        # The drained worker's files go once no query may read them.
        wait_for("the drained worker's files gone", lambda: not glob.glob(
            os.path.join(data_dir, "w5", "t*", "p*", "*.parquet")), 30)


def load_then_join_w5(cur, data_dir, coordinator, procs):
    """Table r (12 partitions, REPLICAS 2, 300k rows), then a fourth worker
    (w5) joins; its id."""
    cur.execute("CREATE TABLE r (id BIGINT, b BIGINT) PARTITION BY HASH (id) "
                "PARTITIONS 12 REPLICAS 2")
    cur.execute("INSERT INTO r SELECT value AS id, value % 7 AS b FROM range(300000)")
    procs["w5"] = start_worker(data_dir, coordinator, HOSTS["w5"], "w5")[0]
    wait_for("four workers", lambda: len(workers(cur)) == 4, 30)
    return worker_of(data_dir, "w5")


def test_target_killed_mid_move(cluster, data_dir):
    """The worker copies move to is SIGKILLed while the moves run: reads
    keep answering from the old copies (REPLICAS 2), the moves to it fail
    or roll back, nothing acknowledged is lost; back again, REBALANCE
    APPLY finishes the job."""
    coordinator, procs = cluster
    with flightsql.connect(f"grpc://{coordinator}") as conn, conn.cursor() as cur:
        new = load_then_join_w5(cur, data_dir, coordinator, procs)
        planned = [s for s in rows(cur, "REBALANCE APPLY") if s["operation"] == "move"]
        assert planned
        procs["w5"].send_signal(signal.SIGKILL)
        procs["w5"].wait()
        # Reads answer throughout, from the copies left.
        deadline = time.time() + 60
        while not finished(cur):
            assert rows(cur, "SELECT count(*) AS n FROM r") == [{"n": 300000}]
            assert time.time() < deadline, rows(cur, "SHOW REBALANCE")
        states = [s["state"] for s in rows(cur, "SHOW REBALANCE")]
        assert any(not s.startswith("done") for s in states), states
        assert rows(cur, "SELECT count(*) AS n, count(DISTINCT id) AS d FROM r") == [
            {"n": 300000, "d": 300000}]
        for p in rows(cur, "SHOW PARTITIONS r"):
            assert len([w for w in p["in_sync"].split(", ") if w != new]) >= 1, p

        # Back: applied again, the moves finish.
        procs["w5"] = start_worker(data_dir, coordinator, HOSTS["w5"], "w5")[0]
        wait_for("w5 up", lambda: workers(cur)[new]["state"] == "up", 60)
        wait_for("w5's copies in sync", lambda: all(
            p["in_sync"] == p["replicas"] for p in rows(cur, "SHOW PARTITIONS r")), 60)
        rows(cur, "REBALANCE APPLY")
        wait_for("the rebalance", lambda: finished(cur), 120)
        assert all(s["state"] == "done" for s in rows(cur, "SHOW REBALANCE"))
        assert [r["operation"] for r in rows(cur, "EXPLAIN REBALANCE")] == ["total"]
        assert rows(cur, "SELECT count(*) AS n, count(DISTINCT id) AS d FROM r") == [
            {"n": 300000, "d": 300000}]


def test_coordinator_killed_mid_move(cluster, data_dir):
    """The coordinator is SIGKILLed while moves run. Started again, every
    row is there once, the copies a move had added catch up, and REBALANCE
    APPLY finishes: each partition ends with its two copies."""
    coordinator, procs = cluster
    with flightsql.connect(f"grpc://{coordinator}") as conn, conn.cursor() as cur:
        load_then_join_w5(cur, data_dir, coordinator, procs)
        assert [s for s in rows(cur, "REBALANCE APPLY") if s["operation"] == "move"]
    procs["coordinator"].send_signal(signal.SIGKILL)
    procs["coordinator"].wait()
    procs["coordinator"].log.close()
    procs["coordinator"] = start_coordinator(data_dir, lease=2, address=coordinator)[0]
    with flightsql.connect(f"grpc://{coordinator}") as conn, conn.cursor() as cur:
        wait_for("four workers up", lambda: [w["state"] for w in workers(cur).values()]
                 == ["up"] * 4, 60)
        assert rows(cur, "SELECT count(*) AS n, count(DISTINCT id) AS d FROM r") == [
            {"n": 300000, "d": 300000}]
        wait_for("every copy in sync", lambda: all(
            p["in_sync"] == p["replicas"] for p in rows(cur, "SHOW PARTITIONS r")), 60)
        # Killed mid-way: work is left (moves, or copies to drop).
        left = [s for s in rows(cur, "EXPLAIN REBALANCE") if s["operation"] != "total"]
        assert left
        rows(cur, "REBALANCE APPLY")
        wait_for("the rebalance", lambda: finished(cur), 120)
        assert all(s["state"] == "done" for s in rows(cur, "SHOW REBALANCE"))
        assert [r["operation"] for r in rows(cur, "EXPLAIN REBALANCE")] == ["total"]
        for p in rows(cur, "SHOW PARTITIONS r"):
            assert len(p["replicas"].split(", ")) == 2 and p["in_sync"] == p["replicas"], p
        assert rows(cur, "SELECT count(*) AS n, count(DISTINCT id) AS d FROM r") == [
            {"n": 300000, "d": 300000}]


def test_auto_rebalance_on_join_and_drain_never_on_down(cluster, data_dir):
    """With tessera.auto_rebalance on, a joining worker gets its share and a
    draining one is emptied, with nobody typing REBALANCE APPLY; a worker
    that is merely down keeps its copies (they would move only once it is
    drained). tessera.rebalance_rate is a coordinator-wide setting."""
    coordinator, procs = cluster
    with flightsql.connect(f"grpc://{coordinator}") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE h (id BIGINT, b BIGINT) PARTITION BY HASH (id) "
                    "PARTITIONS 8")
        cur.execute("INSERT INTO h SELECT value AS id, value % 7 AS b FROM range(50000)")
        cur.execute("SET tessera.rebalance_rate = '200MB/s'")
        with pytest.raises(flightsql.Error, match="not a unit of size"):
            cur.execute("SET tessera.rebalance_rate = '64 parsecs'")
        with pytest.raises(flightsql.Error, match="'on' or 'off'"):
            cur.execute("SET tessera.auto_rebalance = 'maybe'")
        cur.execute("SET tessera.auto_rebalance = 'on'")
        with flightsql.connect(f"grpc://{coordinator}") as other, other.cursor() as oc:
            shown = {r["name"]: r["value"] for r in rows(oc, "SHOW tessera")}
        assert shown["tessera.rebalance_rate"] == "200MB/s", shown
        assert shown["tessera.auto_rebalance"] == "on", shown

        # A fifth worker joins: it gets its share by itself.
        procs["w5"] = start_worker(data_dir, coordinator, HOSTS["w5"], "w5")[0]
        new = worker_of(data_dir, "w5")
        wait_for("the automatic rebalance", lambda: finished(cur), 120)
        done = rows(cur, "SHOW REBALANCE")
        assert all(s["state"] == "done" and s["to_worker"] == new for s in done), done
        assert workers(cur)[new]["held"] == 2, workers(cur)
        assert [r["operation"] for r in rows(cur, "EXPLAIN REBALANCE")] == ["total"]

        # A worker killed is down, not gone: its copies stay. Draining
        # another one then moves only that one's copies.
        w2, w3 = worker_of(data_dir, "w2"), worker_of(data_dir, "w3")
        on_w2 = {p: r for p, r in placements(cur, "h").items() if r == w2}
        assert on_w2
        procs["w2"].send_signal(signal.SIGKILL)
        procs["w2"].wait()
        wait_for("w2 down", lambda: workers(cur)[w2]["state"] == "down", 30)
        cur.execute(f"ALTER WORKER '{w3}' DRAIN")
        wait_for("the drain", lambda: finished(cur) and workers(cur)[w3]["held"] == 0, 120)
        drained = rows(cur, "SHOW REBALANCE")
        assert all(s["state"] == "done" and s["from_worker"] == w3 for s in drained), [
            (s["state"], s["from_worker"], s["to_worker"]) for s in drained]
        assert workers(cur)[w3]["held"] == 0, workers(cur)
        now = placements(cur, "h")
        assert {p: now[p] for p in on_w2} == on_w2, now
        # Back again, it serves its partitions: every row is there once.
        procs["w2"] = start_worker(data_dir, coordinator, HOSTS["w2"], "w2")[0]
        wait_for("w2 up", lambda: workers(cur)[w2]["state"] == "up", 60)
        assert rows(cur, "SELECT count(*) AS n, count(DISTINCT id) AS d FROM h") == [
            {"n": 50000, "d": 50000}]
