#!/usr/bin/env bash
# Starts a cluster of separate processes on this machine, for a try:
# etcd, two coordinators (both serve clients; one leads) and three workers on
# 127.0.0.2-4, sharing a cluster secret, clients let in without signing in
# (--insecure: a try on one machine). Ctrl-C stops them all.
#
#   scripts/cluster.sh [DIR]        # data under DIR (default: a new temp dir)
#   scripts/cluster.sh --files DIR  # one coordinator on the file metastore, no etcd
#   TESSERA_BIN=path/to/tessera scripts/cluster.sh   # use that binary, no build
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tessera-target}
"$root/scripts/setup-system.sh"
if [ -n "${TESSERA_BIN:-}" ]; then
    bin="$TESSERA_BIN"   # a tessera binary built already
else
    cargo build --quiet --release --manifest-path "$root/Cargo.toml" --bin tessera
    bin="$CARGO_TARGET_DIR/release/tessera"
fi

files=false
if [ "${1:-}" = "--files" ]; then
    files=true
    shift
fi
dir="${1:-$(mktemp -d -t tessera-cluster-XXXX)}"
mkdir -p "$dir"
secret="$dir/cluster.secret"
[ -s "$secret" ] || head -c 32 /dev/urandom | base64 > "$secret"

pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

if $files; then
    coordinators="127.0.0.1:50051"
    "$bin" coordinator --insecure --listen 127.0.0.1:50051 --data-dir "$dir/coordinator" \
        --cluster-secret-file "$secret" 2> "$dir/coordinator.log" &
    pids+=($!)
else
    mkdir -p "$dir/etcd"
    etcd --name tessera --data-dir "$dir/etcd/data" \
        --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster tessera=http://127.0.0.1:2380 --max-txn-ops 4096 \
        2> "$dir/etcd/etcd.log" &
    pids+=($!)
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/2379) 2>/dev/null && break
        sleep 0.1
    done
    coordinators="127.0.0.1:50051,127.0.0.1:50052"
    for port in 50051 50052; do
        "$bin" coordinator --insecure --listen "127.0.0.1:$port" --data-dir "$dir/coordinator-$port" \
            --metastore etcd://127.0.0.1:2379/tessera --cluster-secret-file "$secret" \
            2> "$dir/coordinator-$port.log" &
        pids+=($!)
    done
fi
for i in 2 3 4; do
    "$bin" worker --join "$coordinators" --listen "127.0.0.$i:50060" \
        --data-dir "$dir/worker-$i" --cluster-secret-file "$secret" 2> "$dir/worker-$i.log" &
    pids+=($!)
done

echo "Data and logs: $dir"
echo "Coordinators: $coordinators (with etcd, both serve clients; the first to start leads, the other takes over if it stops)"
echo "Try: $bin shell --connect 127.0.0.1:50051 -c 'SHOW WORKERS'"
echo "Ctrl-C stops the cluster."
wait
