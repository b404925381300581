#!/usr/bin/env bash
# Release binaries, the sidecar optimized with its profile (profile-guided optimization):
#   bash scripts/build-release.sh                  # every binary of the workspace
#   bash scripts/build-release.sh --bin pillion-control-plane    # these (cargo build args), and the proxy
#   bash scripts/build-release.sh --proxy-only     # the proxy alone
#
# proxy/pgo/pillion-proxy.profdata.xz records which branches and calls the proxy takes under
# the benchmark harness's load (benches/pgo.sh makes it). With it LLVM lays out, inlines and
# splits hot from cold code by measurement instead of guesses: one h2c hop went from 45,658 to
# 34,105 instructions per request (docs/benchmarks.md). Code changed since the profile was made
# is optimized as without one; refresh the profile when the request path changes.
#
# A profile names functions by their symbols, and those carry a hash of each crate's resolved
# features: the proxy is built alone (`-p pillion-proxy`, as benches/pgo.sh instruments it), in a
# target directory of its own, because a workspace build unifies features with the other
# binaries' and would match nothing. The result is copied to target/release/pillion-proxy.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --proxy-only ]; then
  shift
else
  [ $# -gt 0 ] || set -- --workspace --bins --exclude pillion-proxy
  cargo build --release --locked "$@"
fi

packed=proxy/pgo/pillion-proxy.profdata.xz
# Named by its checksum: a new profile changes RUSTFLAGS, so cargo rebuilds with it.
sum=$(sha256sum "$packed" | cut -c1-16)
profile=$PWD/target/pgo/pillion-proxy-$sum.profdata
# Unpacks proxy/pgo's FILE.xz once to DEST (xz, or Python's lzma where xz is missing).
unpack() { # FILE.xz DEST
  [ ! -s "$2" ] || return 0
  mkdir -p "$(dirname "$2")"
  if command -v xz >/dev/null; then
    xz -dc "$1" >"$2.tmp"
  else
    python3 -c 'import lzma, sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())' "$1" >"$2.tmp"
  fi
  mv "$2.tmp" "$2"
}
unpack "$packed" "$profile"
# The link order (benches/pgo_order.sh): the functions the proxy runs, first and together. A
# name the binary no longer has is skipped (the linker would warn about each).
order_packed=proxy/pgo/pillion-proxy.order.xz
order=$PWD/target/pgo/pillion-proxy-order-$(sha256sum "$order_packed" | cut -c1-16).txt
unpack "$order_packed" "$order"
# lld's option: rustc links with lld by default on x86_64 Linux only (elsewhere, no order).
link_order=()
if rustc -vV | grep -q '^host: x86_64-unknown-linux-gnu'; then
  link_order=(-C link-arg=-Wl,--symbol-ordering-file="$order" -C link-arg=-Wl,--no-warn-symbol-ordering)
fi
# Functions changed since the profile was made get no profile; LLVM would warn about each.
#
# The proxy is linked statically with glibc (a static PIE, so its addresses are still
# randomized): a process that maps libc.so, libm.so and the dynamic loader has each of them
# resident, about 2 MB of its RSS (the kernel maps in 64 KB around every page of code touched),
# while a static link carries only the libc functions the proxy calls. One hop: 7.2-8.0 MB idle
# -> 6.0 MB, 9.6 MB after h2c saturation -> 7.6 MB (docs/benchmarks.md). glibc 2.34 and later
# resolve names through /etc/hosts and DNS without loading NSS modules, so the control plane's
# address may still be a name. The flag goes to the binary's own link only (`cargo rustc`): given
# in RUSTFLAGS it would reach build scripts and proc macros, which cannot be static.
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$profile -Cllvm-args=-no-pgo-warn-mismatch" CARGO_TARGET_DIR=target/pgo-use \
  cargo rustc --release --locked -p pillion-proxy --bin pillion-proxy -- -C target-feature=+crt-static \
  "${link_order[@]}"
if readelf -lW target/pgo-use/release/pillion-proxy | grep -q INTERP; then
  echo "target/pgo-use/release/pillion-proxy was linked dynamically; the release proxy is static" >&2
  exit 1
fi
mkdir -p target/release
cp --remove-destination target/pgo-use/release/pillion-proxy target/release/pillion-proxy
