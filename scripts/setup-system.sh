#!/usr/bin/env bash
# Installs the system packages Tessera builds and tests with, from Debian:
# protobuf-compiler (the etcd client's build compiles etcd's protocol) and
# etcd-server (the cluster metastore; tests start their own on loopback).
# Does nothing when both are there already.
set -euo pipefail
need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
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
command -v protoc >/dev/null && command -v etcd >/dev/null
