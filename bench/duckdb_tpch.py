"""Times the 22 TPC-H queries of datasets/tpch/queries on DuckDB over Parquet
files: median of N runs per query, as an aligned table with the total."""

import pathlib
import statistics
import sys
import time

import duckdb

TABLES = ["nation", "region", "part", "supplier", "partsupp", "customer", "orders", "lineitem"]


def main() -> None:
    parquet = pathlib.Path(sys.argv[1])
    iterations = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    queries = pathlib.Path(__file__).resolve().parent.parent / "datasets" / "tpch" / "queries"
    con = duckdb.connect()
    for t in TABLES:
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{parquet / (t + '.parquet')}')")
    rows = []
    for n in range(1, 23):
        sql = (queries / f"q{n:02}.sql").read_text()
        times = []
        for _ in range(iterations):
            start = time.perf_counter()
            con.execute(sql).fetchall()
            times.append((time.perf_counter() - start) * 1000.0)
        rows.append((f"Q{n:02}", statistics.median(times)))
        print(f"duckdb: Q{n:02} {rows[-1][1]:.1f} ms", file=sys.stderr)
    rows.append(("total", sum(ms for _, ms in rows)))
    print(f"DuckDB {duckdb.__version__}, median of {iterations} runs per query")
    print(f"{'query':<6} {'duckdb ms':>10}")
    for name, ms in rows:
        print(f"{name:<6} {ms:>10.1f}")


if __name__ == "__main__":
    main()
