#!/usr/bin/env bash
# Everything CI checks: formatting, lints, Rust tests, and the Python client tests
# against a real `tessera serve`. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tessera-target}
export CARGO_TERM_COLOR=never

echo "== system packages (protoc, etcd)"
./scripts/setup-system.sh

echo "== python clients"
./scripts/setup-python.sh

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test"
cargo test --workspace

echo "== python client tests (ADBC Flight SQL)"
# Every target, as `cargo test` built them: the binary then shares their
# dependencies (`cargo build --bin tessera` alone resolves features
# differently and builds DataFusion a second time).
cargo build --workspace --all-targets
TESSERA_BIN="$CARGO_TARGET_DIR/debug/tessera" .venv/bin/python -m pytest -q tests/python
