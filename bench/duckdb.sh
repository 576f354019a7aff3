#!/usr/bin/env bash
# DuckDB's time on the TPC-H Parquet files that `tessera bench tpch` reads,
# for the side-by-side comparison:
#
#   cargo run --release -- bench tpch --sf 1 --parquet target/tpch-sf1
#   bench/duckdb.sh target/tpch-sf1 [ITERATIONS]
#
# Writes the files first (`tessera load tpch --parquet`) if the directory has
# none. Installs duckdb into the project's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:?usage: bench/duckdb.sh PARQUET_DIR [ITERATIONS] (SF from TESSERA_SF, default 1)}
ITERATIONS=${2:-3}
./scripts/setup-python.sh
.venv/bin/python -m pip install --quiet -r bench/requirements.txt
if [ ! -f "$DIR/lineitem.parquet" ]; then
    cargo run --release --quiet -- load tpch --sf "${TESSERA_SF:-1}" --parquet "$DIR"
fi
exec .venv/bin/python bench/duckdb_tpch.py "$DIR" "$ITERATIONS"
