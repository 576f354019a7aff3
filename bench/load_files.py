"""Loading a file side by side: `tessera load FILE --table t --create` into a
`tessera serve` of its own against DuckDB's `COPY t FROM` of the same file,
for a CSV and a Parquet file of about SIZE_MB megabytes (made here once,
kept in DIR). Prints MB/s of each and the peak memory (VmHWM) of the client
and the server process.

    .venv/bin/python bench/load_files.py DIR [SIZE_MB] [TESSERA_BIN]
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ROWS_PER_CHUNK = 500_000


def chunk(i: int) -> pa.Table:
    lo = i * ROWS_PER_CHUNK
    ids = pa.array(range(lo, lo + ROWS_PER_CHUNK), pa.int64())
    return pa.table({
        "id": ids,
        "customer": pa.array([f"customer#{n % 150_000:09d}" for n in range(lo, lo + ROWS_PER_CHUNK)]),
        "amount": pa.array([(n % 100_000) / 100 for n in range(lo, lo + ROWS_PER_CHUNK)], pa.float64()),
        "quantity": pa.array([n % 50 for n in range(lo, lo + ROWS_PER_CHUNK)], pa.int32()),
        "comment": pa.array([f"regular deposits {n % 977} cajole furiously" for n in range(lo, lo + ROWS_PER_CHUNK)]),
    })


def make_files(directory: str, size_mb: int) -> tuple[str, str]:
    os.makedirs(directory, exist_ok=True)
    csv_path = os.path.join(directory, f"rows-{size_mb}mb.csv")
    parquet_path = os.path.join(directory, f"rows-{size_mb}mb.parquet")
    if not os.path.exists(csv_path):
        with pacsv.CSVWriter(csv_path + ".tmp", chunk(0).schema) as w:
            i = 0
            while os.path.getsize(csv_path + ".tmp") < size_mb * 1_000_000:
                w.write_table(chunk(i))
                i += 1
        os.replace(csv_path + ".tmp", csv_path)
    if not os.path.exists(parquet_path):
        table = pacsv.read_csv(csv_path)
        # About as many bytes as the CSV: the same rows several times over.
        copies = max(1, round(size_mb * 1_000_000 / max(1, len(pq_bytes(table)))))
        with pq.ParquetWriter(parquet_path + ".tmp", table.schema) as w:
            for _ in range(copies):
                w.write_table(table)
        os.replace(parquet_path + ".tmp", parquet_path)
    return csv_path, parquet_path


def pq_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def peak_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_tessera(binary: str, path: str, table: str) -> tuple[float, int, int]:
    """Seconds, client peak KiB, server peak KiB."""
    data = tempfile.mkdtemp(prefix="tessera-load-bench-")
    port = free_port()
    server = subprocess.Popen(
        [binary, "serve", "--insecure", "--listen", f"127.0.0.1:{port}", "--data-dir", data],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("tessera serve did not start")
                time.sleep(0.1)
        server_before = peak_kib(server.pid)
        start = time.perf_counter()
        client = subprocess.Popen(
            [binary, "load", path, "--table", table, "--create",
             "--partition-by", "HASH (id) PARTITIONS 6", "--connect", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        client_peak = [0]

        def watch() -> None:
            while client.poll() is None:
                try:
                    client_peak[0] = max(client_peak[0], peak_kib(client.pid))
                except OSError:
                    break
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        _, err = client.communicate()
        seconds = time.perf_counter() - start
        watcher.join()
        if client.returncode != 0:
            raise RuntimeError(err.decode())
        return seconds, client_peak[0], peak_kib(server.pid) - server_before
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(data, ignore_errors=True)


def run_duckdb(path: str) -> float:
    """Seconds of DuckDB's COPY t FROM the file (in memory, every core)."""
    con = duckdb.connect()
    csv = path.endswith(".csv")
    reader = "read_csv_auto" if csv else "read_parquet"
    con.execute(f"CREATE TABLE t AS SELECT * FROM {reader}('{path}') LIMIT 0")
    start = time.perf_counter()
    con.execute(f"COPY t FROM '{path}' (FORMAT {'csv, HEADER' if csv else 'parquet'})")
    return time.perf_counter() - start


def main() -> None:
    directory = sys.argv[1]
    size_mb = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    binary = sys.argv[3] if len(sys.argv) > 3 else os.path.expanduser(
        "~/.cache/tessera-target/release/tessera")
    csv_path, parquet_path = make_files(directory, size_mb)
    print(f"{'file':<24} {'MB':>7} {'tessera MB/s':>13} {'duckdb MB/s':>12} {'ratio':>6} "
          f"{'client peak MiB':>16} {'server +MiB':>12}")
    for path in (csv_path, parquet_path):
        mb = os.path.getsize(path) / 1e6
        seconds, client_kib, server_kib = run_tessera(binary, path, "t")
        duck = run_duckdb(path)
        print(f"{os.path.basename(path):<24} {mb:7.0f} {mb / seconds:13.1f} {mb / duck:12.1f} "
              f"{duck / seconds:6.2f} {client_kib / 1024:16.0f} {server_kib / 1024:12.0f}")


if __name__ == "__main__":
    main()
