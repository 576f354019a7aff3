#!/usr/bin/env bash
# `tessera load` of a CSV and a Parquet file against DuckDB's COPY FROM of
# the same files (made once in DIR, about SIZE_MB each), with the peak memory
# of Tessera's client and server:
#
#   bench/load_files.sh target/load-bench [SIZE_MB]
#
# Builds the release binary and installs duckdb into the project's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:?usage: bench/load_files.sh DIR [SIZE_MB]}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tessera-target}
./scripts/setup-python.sh
.venv/bin/python -m pip install --quiet -r bench/requirements.txt
cargo build --release --quiet --bin tessera
exec .venv/bin/python bench/load_files.py "$DIR" "${2:-1000}" "$CARGO_TARGET_DIR/release/tessera"
