#!/usr/bin/env bash
# Puts `tessera` on PATH: builds the release binary (in the same cargo
# target dir as scripts/tessera and scripts/test.sh) and installs a copy
# without its debug line tables (about a fifth of the size; the build dir
# keeps the full one for profilers) as $PREFIX/bin/tessera, PREFIX being
# ~/.local by default.
#
#   scripts/install.sh [--prefix DIR] [--from BINARY]
#
# --from installs that binary instead of building one.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="$HOME/.local"
from=""
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="$2"; shift 2 ;;
        --from) from="$2"; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown option '$1'; scripts/install.sh [--prefix DIR] [--from BINARY]" >&2; exit 2 ;;
    esac
done
"$root/scripts/setup-system.sh"
if [ -z "$from" ]; then
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tessera-target}
    echo "building tessera (release; the first build takes a while)"
    cargo build --quiet --release --manifest-path "$root/Cargo.toml" --bin tessera
    from="$CARGO_TARGET_DIR/release/tessera"
fi
if [ ! -x "$from" ]; then
    echo "error: $from is not an executable tessera binary" >&2
    exit 1
fi
mkdir -p "$prefix/bin"
tmp="$prefix/bin/.tessera.installing"
objcopy --strip-debug "$from" "$tmp"
chmod 755 "$tmp"
mv -f "$tmp" "$prefix/bin/tessera"
size=$(du -h "$prefix/bin/tessera" | cut -f1)
echo "installed $prefix/bin/tessera ($size; $("$prefix/bin/tessera" --version))"
case ":$PATH:" in
    *":$prefix/bin:"*) ;;
    *) echo "note: $prefix/bin is not on PATH; add it: export PATH=\"$prefix/bin:\$PATH\"" ;;
esac
