"""A worker that stops answering (SIGSTOP: its process is alive, its port
open, nothing moves) while a query streams rows from it: the query ends
with an error naming the worker and saying what to do, instead of hanging
or a bare transport error; the other worker's partitions still answer,
and once the worker runs again (SIGCONT) the query answers whole."""

import signal
import time

import adbc_driver_flightsql.dbapi as flightsql
import pytest
from test_cluster_processes import (
    rows,
    start_coordinator,
    start_worker,
    stop_all,
    wait_for,
    worker_id,
    workers,
)

ROWS = 2_000_000


def test_a_worker_stopped_mid_stream_is_named(data_dir):
    coord, coordinator = start_coordinator(data_dir, lease=2)
    procs = {"coordinator": coord}
    try:
        for name, host in (("w2", "127.0.0.2"), ("w3", "127.0.0.3")):
            procs[name] = start_worker(data_dir, coordinator, host, name)[0]
        with flightsql.connect(f"grpc://{coordinator}") as conn, conn.cursor() as cur:
            wait_for("two workers", lambda: len(workers(cur)) == 2, 30)
            cur.execute("CREATE TABLE t (k BIGINT, v BIGINT) PARTITION BY HASH (k) PARTITIONS 4")
            cur.execute(f"INSERT INTO t SELECT value AS k, value AS v FROM range({ROWS})")
            stopped_id = worker_id(data_dir, "w2")

            # The rows stream: the first batch is in when the worker stops.
            cur.execute("SELECT k FROM t")
            reader = cur.fetch_record_batch()
            got = reader.read_next_batch().num_rows
            procs["w2"].send_signal(signal.SIGSTOP)
            started = time.time()
            try:
                with pytest.raises(Exception) as e:
                    while True:
                        got += reader.read_next_batch().num_rows
                took = time.time() - started
                text = str(e.value)
                assert not isinstance(e.value, StopIteration), f"all {got} rows came"
                assert stopped_id in text and "127.0.0.2" in text, text
                assert "retry" in text, text
                assert took < 120, f"the error took {took:.0f} s"
            finally:
                procs["w2"].send_signal(signal.SIGCONT)

            wait_for("w2 up again",
                     lambda: [w["state"] for w in workers(cur).values()] == ["up", "up"], 60)
            assert rows(cur, "SELECT count(*) AS n FROM t") == [{"n": ROWS}]
    finally:
        stop_all(procs.values())
