"""How long writes wait while a partition splits: `tessera serve --workers
3`, a RANGE table of ROWS rows in one partition, and one client inserting
single rows back to back; after a baseline, `ALTER TABLE t SPLIT
PARTITION 0` (at the median) runs while the client goes on.

Reported: the split's own report (rows per half, rows its catch-up
copied, its time and how long writes waited), and the INSERT latency
(count, median, p99, max) of the statements begun before the split and
of those begun while it ran.

    .venv/bin/python bench/split.py [ROWS] [TESSERA_BIN]
"""

import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))

import adbc_driver_flightsql.dbapi as flightsql  # noqa: E402
from tessera_server import free_port, start_server, stop_server  # noqa: E402

ROWS = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
if len(sys.argv) > 2:
    os.environ["TESSERA_BIN"] = sys.argv[2]
BASELINE_S = 5


def main() -> None:
    data_dir = tempfile.mkdtemp(prefix="tessera-split-bench-")
    port = free_port()
    url = f"grpc://127.0.0.1:{port}"
    proc = start_server(data_dir, port)
    try:
        with flightsql.connect(url) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (k BIGINT, v BIGINT, s VARCHAR) PARTITION BY RANGE (k)")
            cur.execute(
                f"INSERT INTO t SELECT value AS k, value % 97 AS v, 'row ' || value AS s "
                f"FROM range(0, {ROWS})"
            )
            cur.execute("COMPACT TABLE t")
        latencies = []  # (phase when begun, seconds)
        phase = ["before"]
        stop = threading.Event()

        def writer() -> None:
            with flightsql.connect(url) as conn, conn.cursor() as cur:
                k = 10 * ROWS
                while not stop.is_set():
                    began, t0 = phase[0], time.perf_counter()
                    cur.execute(f"INSERT INTO t VALUES ({k}, 1, 'w')")
                    latencies.append((began, time.perf_counter() - t0))
                    k += 1

        client = threading.Thread(target=writer)
        client.start()
        time.sleep(BASELINE_S)
        with flightsql.connect(url) as conn, conn.cursor() as cur:
            phase[0] = "during"
            cur.execute("ALTER TABLE t SPLIT PARTITION 0")
            report = cur.fetch_arrow_table().to_pylist()
            phase[0] = "after"
        stop.set()
        client.join()
        with flightsql.connect(url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) AS n FROM t")
            count = cur.fetch_arrow_table().to_pylist()[0]["n"]
    finally:
        stop_server(proc)

    print(f"{'half':>4} {'rows':>10} {'caught_up_rows':>14} {'seconds':>8} {'writes_paused':>13}")
    for r in report:
        print(f"{r['partition']:>4} {r['rows']:>10} {r['caught_up_rows']:>14} "
              f"{r['seconds']:>8.2f} {r['writes_paused']:>13.3f}")
    print()
    print(f"{'INSERTs begun':<14} {'n':>5} {'median ms':>10} {'p99 ms':>8} {'max ms':>8}")
    for p in ("before", "during"):
        v = sorted(s * 1000 for began, s in latencies if began == p)
        if v:
            p99 = v[int(0.99 * (len(v) - 1))]
            print(f"{p + ' split':<14} {len(v):>5} {statistics.median(v):>10.1f} {p99:>8.1f} "
                  f"{v[-1]:>8.1f}")
    print()
    assert count == ROWS + len(latencies), (count, ROWS, len(latencies))
    print(f"rows at the end: {count} (loaded {ROWS}, inserted {len(latencies)})")


if __name__ == "__main__":
    main()
