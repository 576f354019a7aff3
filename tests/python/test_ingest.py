"""ADBC bulk ingestion in each of its modes against a real `tessera serve`:
create makes the table from the uploaded schema (and refuses an existing
one), append adds rows (and refuses a missing table), replace replaces,
create_append does either."""

import datetime

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from tessera_server import free_port, start_server, stop_server


@pytest.fixture
def uri(data_dir):
    port = free_port()
    proc = start_server(data_dir, port)
    yield f"grpc://127.0.0.1:{port}"
    stop_server(proc)


@pytest.fixture
def cur(uri):
    with flightsql.connect(uri) as conn, conn.cursor() as cursor:
        yield cursor


def rows(cur, sql):
    cur.execute(sql)
    return cur.fetch_arrow_table().to_pylist()


def data(lo, hi):
    t0 = datetime.datetime(2026, 1, 1)
    return pa.table({
        "id": pa.array(range(lo, hi), pa.int64()),
        "name": pa.array([f"n{i}" if i % 7 else None for i in range(lo, hi)]),
        "at": pa.array([t0 + datetime.timedelta(seconds=i) for i in range(lo, hi)],
                       pa.timestamp("us")),
        "score": pa.array([i / 2 for i in range(lo, hi)], pa.float64()),
    })


def test_ingest_modes(cur):
    # create: a new table with the uploaded schema.
    assert cur.adbc_ingest("up", data(0, 1000), mode="create") == 1000
    got = rows(cur, "SELECT count(*) AS n, sum(id) AS s, count(name) AS named FROM up")[0]
    assert (got["n"], got["s"]) == (1000, sum(range(1000)))
    assert got["named"] == sum(1 for i in range(1000) if i % 7)
    described = {r["column_name"]: r["data_type"] for r in rows(cur, "DESCRIBE up")}
    assert described["id"] == "Int64" and described["score"] == "Float64"
    assert described["at"].startswith("Timestamp")
    first = rows(cur, "SELECT at FROM up WHERE id = 5")[0]["at"]
    assert first == datetime.datetime(2026, 1, 1, 0, 0, 5)

    # create on an existing table fails, and changes nothing.
    with pytest.raises(flightsql.Error, match="already exists"):
        cur.adbc_ingest("up", data(1000, 1010), mode="create")
    assert rows(cur, "SELECT count(*) AS n FROM up")[0]["n"] == 1000

    # append to a missing table fails; to an existing one adds.
    with pytest.raises(flightsql.Error, match="does not exist"):
        cur.adbc_ingest("missing", data(0, 10), mode="append")
    assert cur.adbc_ingest("up", data(1000, 1500), mode="append") == 500
    assert rows(cur, "SELECT count(*) AS n FROM up")[0]["n"] == 1500

    # replace: the old rows go, the new ones stay; the partitioning stays too.
    cur.execute("CREATE TABLE part (id BIGINT, name VARCHAR, at TIMESTAMP, score DOUBLE) "
                "PARTITION BY HASH (id) PARTITIONS 4")
    cur.adbc_ingest("part", data(0, 100), mode="append")
    assert cur.adbc_ingest("part", data(500, 520), mode="replace") == 20
    got = rows(cur, "SELECT min(id) AS lo, count(*) AS n FROM part")[0]
    assert (got["lo"], got["n"]) == (500, 20)
    assert len(rows(cur, "SHOW PARTITIONS part")) == 4
    # replace of a missing table creates it.
    assert cur.adbc_ingest("fresh", data(0, 3), mode="replace") == 3
    # The old table's index goes with a replace.
    cur.execute("CREATE INDEX part_name ON part (name)")
    new = pa.table({"id": pa.array([1], pa.int64()), "name": pa.array(["x"])})
    assert cur.adbc_ingest("part", new, mode="replace") == 1
    assert rows(cur, "SELECT id, name FROM part") == [{"id": 1, "name": "x"}]
    assert rows(cur, "SHOW INDEXES ON part") == []
    tables = [r["table_name"] for r in rows(cur, "SHOW TABLES")]
    assert not [t for t in tables if "staging" in t], tables
    with pytest.raises(flightsql.Error, match="reserved"):
        cur.execute('CREATE TABLE "tessera$staging$1" (id BIGINT)')

    # create_append: creates, then appends.
    assert cur.adbc_ingest("ca", data(0, 10), mode="create_append") == 10
    assert cur.adbc_ingest("ca", data(10, 30), mode="create_append") == 20
    assert rows(cur, "SELECT count(*) AS n FROM ca")[0]["n"] == 30

    # A value that does not fit its column is refused, not stored as NULL.
    cur.execute("CREATE TABLE narrow (id INT)")
    with pytest.raises(flightsql.Error, match="column 'id'"):
        cur.adbc_ingest("narrow", pa.table({"id": pa.array([1, 2**40], pa.int64())}),
                        mode="append")
    assert rows(cur, "SELECT count(*) AS n FROM narrow")[0]["n"] == 0

    # A column no table can hold is refused with what to do.
    nested = pa.table({"id": pa.array([1], pa.int64()),
                       "tags": pa.array([["a"]], pa.list_(pa.string()))})
    with pytest.raises(flightsql.Error, match="cast it"):
        cur.adbc_ingest("nested", nested, mode="create")


def varint(n):
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def pb_field(number, payload):
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def ingest_command(table, replace):
    """Flight SQL's CommandStatementIngest (create if missing; replace or
    append if there), packed in a protobuf Any, as a client sends it."""
    options = varint(1 << 3) + varint(1) + varint(2 << 3) + varint(3 if replace else 2)
    command = pb_field(1, options) + pb_field(2, table.encode())
    url = b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementIngest"
    return pb_field(1, url) + pb_field(2, command)


def test_a_replace_the_client_abandons_changes_nothing(uri, cur, data_dir):
    """A client that goes away in the middle of a replacing upload (its
    rows already on the workers): the old table stays whole, and the rows
    staged for its replacement are dropped."""
    import glob
    import os
    import subprocess
    import sys

    from test_cluster_processes import wait_for

    cur.execute("CREATE TABLE t (id BIGINT, v BIGINT) PARTITION BY HASH (id) PARTITIONS 4")
    cur.execute("INSERT INTO t SELECT value AS id, value AS v FROM range(1000)")
    tables = lambda: set(glob.glob(os.path.join(data_dir, "worker-*", "t*")))  # noqa: E731
    before = tables()
    # The client: another process, killed mid-upload.
    client = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {os.path.dirname(__file__)!r})
import pyarrow as pa, pyarrow.flight as flight
from test_ingest import ingest_command
schema = pa.schema([("id", pa.int64()), ("v", pa.int64())])
client = flight.FlightClient({uri!r})
descriptor = flight.FlightDescriptor.for_command(ingest_command("t", replace=True))
writer, _ = client.do_put(descriptor, schema)
ids = pa.array(range(10**6, 10**6 + 65536), pa.int64())
for _ in range(16):
    writer.write_batch(pa.record_batch([ids, ids], schema=schema))
time.sleep(600)
"""])
    try:
        # The coordinator sends rows on in 2 MiB pieces: they reach the workers.
        wait_for("rows staged for the replacement",
                 lambda: [d for d in tables() - before
                          if glob.glob(os.path.join(d, "p*", "staged", "*"))], 60)
    finally:
        client.kill()
        client.wait()
    wait_for("the replacement's rows dropped", lambda: tables() == before, 30)
    assert rows(cur, "SELECT count(*) AS n, sum(v) AS s FROM t") == [
        {"n": 1000, "s": sum(range(1000))}]
    assert [r["table_name"] for r in rows(cur, "SHOW TABLES")] == ["t"]


def memory_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def two_worker_cluster(data_dir):
    """A `tessera coordinator` and two workers (127.0.0.2 and .3) as
    processes: (coordinator process, its address, every process)."""
    from test_cluster_processes import start_coordinator, start_worker, stop_all

    coord, coordinator = start_coordinator(data_dir)
    procs = [coord]
    try:
        for name, host in (("w2", "127.0.0.2"), ("w3", "127.0.0.3")):
            procs.append(start_worker(data_dir, coordinator, host, name)[0])
    except Exception:
        stop_all(procs)
        raise
    return coord, coordinator, procs


def ingest_bounded(cur, coord, table, schema, batches, mode, upload_bytes):
    """Ingests `batches` into `table` in `mode`, and fails if the
    coordinator's peak memory grows by half the upload or more; the rows
    written."""
    before = memory_kib(coord.pid, "VmHWM")
    reader = pa.RecordBatchReader.from_batches(schema, batches)
    written = cur.adbc_ingest(table, reader, mode=mode)
    grew = (memory_kib(coord.pid, "VmHWM") - before) * 1024
    assert grew < upload_bytes / 2, (
        f"the coordinator grew by {grew >> 20} MiB for a {upload_bytes >> 20} MiB {mode}")
    return written


def test_ingest_streams_in_bounded_memory(data_dir):
    """An upload larger than the coordinator may hold goes through it in
    pieces: its peak memory grows by a fraction of the upload, and the
    rows all arrive, exactly once. A replace of the table streams as
    well, and readers see the old rows or the new ones."""
    import threading

    from test_cluster_processes import wait_for, workers

    coord, coordinator, procs = two_worker_cluster(data_dir)
    try:
        # 256 MiB of rows, made as they are sent.
        batches, rows_per_batch = 128, 65536
        schema = pa.schema([("id", pa.int64()), ("a", pa.int64()), ("b", pa.int64()),
                            ("c", pa.int64())])

        def upload():
            for i in range(batches):
                ids = pa.array(range(i * rows_per_batch, (i + 1) * rows_per_batch), pa.int64())
                yield pa.record_batch([ids, ids, ids, ids], schema=schema)

        upload_bytes = batches * rows_per_batch * 4 * 8
        with flightsql.connect(f"grpc://{coordinator}") as conn, conn.cursor() as cur:
            wait_for("two workers", lambda: len(workers(cur)) == 2, 30)
            cur.execute("CREATE TABLE big (id BIGINT, a BIGINT, b BIGINT, c BIGINT) "
                        "PARTITION BY HASH (id) PARTITIONS 4")
            assert ingest_bounded(cur, coord, "big", schema, upload(), "append",
                                  upload_bytes) == batches * rows_per_batch
            got = rows(cur, "SELECT count(*) AS n, count(DISTINCT id) AS d, sum(a) AS s FROM big")
            n = batches * rows_per_batch
            assert got == [{"n": n, "d": n, "s": n * (n - 1) // 2}]

            # replace streams too, and readers see the old rows or the new
            # ones (a = id + 1), whole, never a mix or an error.
            seen, stop = [], threading.Event()

            def read():
                with flightsql.connect(f"grpc://{coordinator}") as c, c.cursor() as r:
                    while not stop.is_set():
                        try:
                            seen.append(rows(r, "SELECT sum(a) AS s FROM big")[0]["s"])
                        except flightsql.Error as e:
                            seen.append(str(e))

            def replacement():
                for batch in upload():
                    ids = batch.column(0)
                    yield pa.record_batch([ids, pc.add(ids, 1), ids, ids], schema=schema)

            old_sum, new_sum = n * (n - 1) // 2, n * (n + 1) // 2
            reader_thread = threading.Thread(target=read, daemon=True)
            reader_thread.start()
            wait_for("a read before the replace", lambda: seen, 30)
            assert ingest_bounded(cur, coord, "big", schema, replacement(), "replace",
                                  upload_bytes) == n
            wait_for("a read after the replace", lambda: seen[-1] == new_sum, 30)
            stop.set()
            reader_thread.join(30)
            assert set(seen) == {old_sum, new_sum} and seen[0] == old_sum, set(seen)
            assert rows(cur, "SELECT count(*) AS n, sum(a) AS s FROM big") == [
                {"n": n, "s": new_sum}]
            assert len(rows(cur, "SHOW PARTITIONS big")) == 4
    finally:
        for p in procs:
            stop_server(p)


def test_ingest_into_a_clustered_indexed_table_streams(data_dir):
    """A CLUSTER BY table with a LOCAL, a GLOBAL SYNC and a GLOBAL ASYNC
    index takes an upload in pieces too: the coordinator grows by a
    fraction of it, and every index finds exactly the rows a full scan
    finds (entries name the rows where the pieces put them)."""
    from test_cluster_processes import wait_for, workers

    coord, coordinator, procs = two_worker_cluster(data_dir)
    try:
        # 128 MiB of rows, made as they are sent; ts runs backwards so
        # that CLUSTER BY has to sort every piece.
        batches, rows_per_batch = 64, 65536
        n = batches * rows_per_batch
        schema = pa.schema([("id", pa.int64()), ("ts", pa.int64()), ("b", pa.int64()),
                            ("c", pa.int64()), ("d", pa.int64())])

        def upload():
            for i in range(batches):
                ids = pa.array(range(i * rows_per_batch, (i + 1) * rows_per_batch), pa.int64())
                yield pa.record_batch(
                    [ids, pc.subtract(n, ids), pc.divide(ids, 4096), pc.divide(ids, 8192),
                     pc.divide(ids, 2048)],
                    schema=schema)

        upload_bytes = n * 5 * 8
        with flightsql.connect(f"grpc://{coordinator}") as conn, conn.cursor() as cur:
            wait_for("two workers", lambda: len(workers(cur)) == 2, 30)
            cur.execute("CREATE TABLE ci (id BIGINT, ts BIGINT, b BIGINT, c BIGINT, d BIGINT) "
                        "PARTITION BY HASH (id) PARTITIONS 4 CLUSTER BY (ts)")
            cur.execute("CREATE INDEX ci_local ON ci (b) LOCAL")
            cur.execute("CREATE INDEX ci_sync ON ci (c) GLOBAL SYNC PARTITIONS 3")
            cur.execute("CREATE INDEX ci_async ON ci (d) GLOBAL ASYNC PARTITIONS 2")
            assert ingest_bounded(cur, coord, "ci", schema, upload(), "append", upload_bytes) == n
            assert rows(cur, "SELECT count(*) AS n, sum(id) AS s, min(ts) AS lo FROM ci") == [
                {"n": n, "s": n * (n - 1) // 2, "lo": 1}]

            # Each index finds what a full scan (`+ 0` uses no index) finds.
            cur.execute("SET tessera.index_read = 'fresh'")
            for index, column, width in (("ci_local", "b", 4096), ("ci_sync", "c", 8192),
                                         ("ci_async", "d", 2048)):
                for term in (0, 7, n // width - 1):
                    ids = range(term * width, (term + 1) * width)
                    want = [{"n": width, "s": sum(ids), "t": sum(n - i for i in ids)}]
                    query = "SELECT count(*) AS n, sum(id) AS s, sum(ts) AS t FROM ci WHERE "
                    plan = rows(cur, f"EXPLAIN {query} {column} = {term}")
                    assert index in str(plan), plan
                    assert rows(cur, f"{query} {column} = {term}") == want, (index, term)
                    assert rows(cur, f"{query} {column} + 0 = {term}") == want, (index, term)
    finally:
        for p in procs:
            stop_server(p)


def test_a_worker_killed_mid_ingest_changes_nothing(data_dir):
    """SIGKILL a worker while an upload streams to it: the ingest fails
    naming it, readers meanwhile see all of the table's earlier rows and
    none of the upload, and after the worker's restart the upload's rows are
    nowhere; the same upload then goes in whole, exactly once."""
    import glob
    import os
    import signal
    import threading

    from test_cluster_processes import (
        start_coordinator,
        start_worker,
        stop_all,
        wait_for,
        workers,
    )

    coord, coordinator = start_coordinator(data_dir, lease=2)
    procs = {"coordinator": coord}
    try:
        for name, host in (("w2", "127.0.0.2"), ("w3", "127.0.0.3")):
            procs[name] = start_worker(data_dir, coordinator, host, name)[0]
        schema = pa.schema([("id", pa.int64()), ("v", pa.int64())])
        rows_per_batch = 65536
        started = threading.Event()

        def upload(batches, first):
            for i in range(batches):
                if i == 8:
                    started.set()
                ids = pa.array(range(first + i * rows_per_batch, first + (i + 1) * rows_per_batch),
                               pa.int64())
                yield pa.record_batch([ids, ids], schema=schema)

        with flightsql.connect(f"grpc://{coordinator}") as conn, conn.cursor() as cur:
            wait_for("two workers", lambda: len(workers(cur)) == 2, 30)
            cur.execute("CREATE TABLE t (id BIGINT, v BIGINT) PARTITION BY HASH (id) PARTITIONS 4")
            cur.execute("CREATE INDEX t_v ON t (v) GLOBAL SYNC PARTITIONS 2")
            cur.execute("CREATE INDEX t_local ON t (id) LOCAL")
            cur.execute("INSERT INTO t SELECT value AS id, value AS v FROM range(1000)")

            # A long upload (it never ends by itself before the kill).
            outcome = {}

            def ingest():
                with flightsql.connect(f"grpc://{coordinator}") as c, c.cursor() as k:
                    try:
                        reader = pa.RecordBatchReader.from_batches(schema, upload(100000, 10**6))
                        outcome["rows"] = k.adbc_ingest("t", reader, mode="append")
                    except flightsql.Error as e:
                        outcome["error"] = str(e)

            seen = []
            stop = threading.Event()

            def read():
                with flightsql.connect(f"grpc://{coordinator}") as c, c.cursor() as r:
                    while not stop.is_set():
                        try:
                            seen.append(rows(r, "SELECT count(*) AS n FROM t")[0]["n"])
                            # Through the GLOBAL index: an early row, and
                            # one of the upload's.
                            seen.append(rows(r, "SELECT count(*) AS n FROM t WHERE v = 5 "
                                                "OR v = 1000005")[0]["n"] + 999)
                        except flightsql.Error:
                            pass  # a partition on the killed worker

            writer = threading.Thread(target=ingest, daemon=True)
            reader_thread = threading.Thread(target=read, daemon=True)
            writer.start()
            reader_thread.start()
            assert started.wait(60)
            staged = os.path.join(data_dir, "w2", "t*", "p*", "staged", "*")
            wait_for("rows staged on w2", lambda: glob.glob(staged), 60)
            procs["w2"].send_signal(signal.SIGKILL)
            procs["w2"].wait()
            writer.join(120)
            assert not writer.is_alive()
            assert "rows" not in outcome, outcome
            assert "changed nothing" in outcome["error"], outcome["error"]
            stop.set()
            reader_thread.join(30)
            assert seen and set(seen) == {1000}, set(seen)

            # Back: the upload's rows are nowhere, its staged files gone.
            procs["w2"] = start_worker(data_dir, coordinator, "127.0.0.2", "w2")[0]
            wait_for("w2 up again",
                     lambda: [w["state"] for w in workers(cur).values()] == ["up", "up"], 30)
            assert rows(cur, "SELECT count(*) AS n FROM t") == [{"n": 1000}]
            wait_for("staged files dropped", lambda: not glob.glob(staged), 30)

            reader = pa.RecordBatchReader.from_batches(schema, upload(16, 10**6))
            assert cur.adbc_ingest("t", reader, mode="append") == 16 * rows_per_batch
            got = rows(cur, "SELECT count(*) AS n, count(DISTINCT id) AS d FROM t")
            assert got == [{"n": 1000 + 16 * rows_per_batch, "d": 1000 + 16 * rows_per_batch}]
            # Each index names the upload's rows once, the aborted one's never.
            for column in ("v", "id"):
                got = rows(cur, f"SELECT count(*) AS n FROM t WHERE {column} IN "
                                f"(5, 1000005, {10**6 + 16 * rows_per_batch - 1})")
                assert got == [{"n": 3}], (column, got)
    finally:
        stop_all(procs.values())
