#!/usr/bin/env bash
# Installs the system packages Tessera builds and tests with, from Debian:
# a C compiler (ring, zstd and lzma build C code), protobuf-compiler and
# libprotobuf-dev (the etcd client's build compiles etcd's protocol, which
# imports protobuf's well-known types from /usr/include), etcd-server (the cluster
# metastore; tests start their own on loopback), python3-venv (the
# client tests' .venv) and binutils (scripts/install.sh strips the binary). Does nothing when all are there already. Rust itself
# is checked, not installed: it comes from rustup.
set -euo pipefail
min_rust=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' "$(dirname "$0")/../Cargo.toml")
have_rust=$(rustc --version 2>/dev/null | awk '{print $2}')
if [ -z "$have_rust" ]; then
    echo "error: Rust is not installed; install Rust $min_rust or newer with rustup (https://rustup.rs), then run this again" >&2
    exit 1
fi
if [ "$(printf '%s\n%s\n' "$min_rust" "$have_rust" | sort -V | head -n1)" != "$min_rust" ]; then
    echo "error: Rust $have_rust is older than the $min_rust Tessera needs; run \`rustup update\`, then this again" >&2
    exit 1
fi
need=()
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v objcopy >/dev/null 2>&1 || need+=(binutils)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
echo "installing ${need[*]} (apt-get)"
export DEBIAN_FRONTEND=noninteractive
if ! $sudo apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; then
    $sudo apt-get update >/dev/null
    $sudo apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian's package may start a system-wide etcd on 2379; Tessera's tests use
# their own, so it is stopped if it was started here.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
    $sudo systemctl stop etcd || true
fi
command -v cc >/dev/null && command -v protoc >/dev/null && command -v etcd >/dev/null &&
    [ -f /usr/include/google/protobuf/descriptor.proto ]
