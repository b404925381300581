#!/usr/bin/env bash
# The proxy's link order, proxy/pgo/pillion-proxy.order.xz: the functions it runs, placed first
# and together by the linker (scripts/build-release.sh), so that a running proxy has ~3 MB of its
# code resident instead of ~5 (the kernel maps 64 KB around every page of code touched).
#   bash benches/pgo_order.sh     # after benches/pgo.sh's profile (it runs this); ~3 minutes
# The profile names the Rust functions that ran in training, by heat; callgrind adds what it
# cannot name (the standard library, glibc, jemalloc, aws-lc), running the release proxy
# through start, h2c and HTTP/1.1 requests, the mTLS pair, and shutdown.
set -euo pipefail
cd "$(dirname "$0")/.."
profdata=$(find "$(rustc --print sysroot)/lib/rustlib" -name llvm-profdata -type f | head -1)
[ -n "$profdata" ] || { echo "needs llvm-profdata of this toolchain: rustup component add llvm-tools" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The app and control plane callgrind.sh runs the proxy with, and the proxy as it is now.
cargo build --release --locked --workspace --bins --exclude pillion-proxy
bash scripts/build-release.sh --proxy-only
FUNCTIONS="$work/plain" bash benches/callgrind.sh pillion
FUNCTIONS="$work/mtls" bash benches/callgrind.sh pillion-mtls
xz -dc proxy/pgo/pillion-proxy.profdata.xz >"$work/profile"
"$profdata" show --all-functions --counts "$work/profile" |
  python3 benches/pgo_order.py "$work/plain" "$work/mtls" >"$work/order"
xz -9 -c "$work/order" >proxy/pgo/pillion-proxy.order.xz
echo "wrote proxy/pgo/pillion-proxy.order.xz ($(wc -l <"$work/order") functions); linking with it"
bash scripts/build-release.sh --proxy-only
