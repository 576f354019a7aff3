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
    stop_all,
    two_workers_with_rows,
    wait_for,
    worker_id,
    workers,
)

ROWS = 2_000_000


def test_a_worker_stopped_mid_stream_is_named(data_dir):
    procs = {}
    try:
        coordinator = two_workers_with_rows(data_dir, procs, ROWS, lease=2)
        with flightsql.connect(f"grpc://{coordinator}") as conn, conn.cursor() as cur:
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
