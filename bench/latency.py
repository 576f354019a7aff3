"""Latency of single statements through the ADBC Flight SQL driver against a
running `tessera serve`: 60 runs each, the first 10 dropped, p50 and max.

    .venv/bin/python bench/latency.py grpc://127.0.0.1:50051 "SELECT 1" "SELECT ..."
"""

import statistics
import sys
import time

import adbc_driver_flightsql.dbapi as flightsql

RUNS = 60
WARMUP = 10


def main() -> None:
    conn = flightsql.connect(sys.argv[1], autocommit=True)
    cur = conn.cursor()
    for sql in sys.argv[2:]:
        times = []
        for _ in range(RUNS):
            start = time.perf_counter()
            cur.execute(sql)
            cur.fetch_arrow_table()
            times.append((time.perf_counter() - start) * 1000.0)
        times = times[WARMUP:]
        print(f"{statistics.median(times):8.2f} ms p50 {max(times):8.2f} ms max  {sql}")


if __name__ == "__main__":
    main()
