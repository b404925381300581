#!/usr/bin/env bash
# Makes the sidecar's optimization profile, proxy/pgo/pillion-proxy.profdata.xz, which
# scripts/build-release.sh builds with. An instrumented proxy (-Cprofile-generate) carries the
# benchmark harness's Pillion paths: h2c, HTTP/1.1 and gRPC clients, 1,000 streams in flight,
# HTTP/1.1 to the application (pillion-h1) and the two-proxy mTLS path (benches/compare.py, one
# round), with 1 % of requests traced; its counts, merged, are the profile.
#   bash benches/pgo.sh          # about 25 minutes: two builds of the proxy and the load
# Then measure (benches/callgrind.sh, compare.py) and commit the profile and the link order.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup component add llvm-tools >/dev/null 2>&1 || true
profdata=$(find "$(rustc --print sysroot)/lib/rustlib" -name llvm-profdata -type f | head -1)
[ -n "$profdata" ] || { echo "needs llvm-profdata of this toolchain: rustup component add llvm-tools" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/bins"
raw=$PWD/target/pgo-gen/profraw # a fixed path: it is part of RUSTFLAGS, which cargo's cache keys on

# The backends, control plane and load client, and the instrumented proxy beside them (built
# alone, as scripts/build-release.sh builds it: the symbols' hashes must match).
cargo build --release --locked --workspace --bins --exclude pillion-proxy
RUSTFLAGS="-Cprofile-generate=$raw" CARGO_TARGET_DIR=target/pgo-gen \
  cargo build --release --locked -p pillion-proxy --bin pillion-proxy
rm -rf "$raw" # build scripts compiled with the flag write profiles too
for b in pillion pillion-control-plane pillion-grpc-load; do ln -s "$PWD/target/release/$b" "$work/bins/$b"; done
ln -s "$PWD/target/pgo-gen/release/pillion-proxy" "$work/bins/pillion-proxy"

# Tracing on at its default sampling (1 %), spans sent to a collector that answers 202, as a
# mesh with tracing set up runs: without it the traced path trained as never taken (cold code)
# and 100 % sampling cost +57 % instructions per request with the profile, +35 % without.
python3 benches/benchlib.py collector >"$work/collector" &
collector=$!
trap 'kill $collector 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do [ -s "$work/collector" ] && break; sleep 0.1; done
[ -s "$work/collector" ] || { echo "the Zipkin collector did not start" >&2; exit 1; }
export PILLION_ZIPKIN_URL="http://$(cat "$work/collector")/api/v2/spans"

# The proxies write their counts when they exit on SIGTERM (compare.py ends them so).
python3 benches/compare.py --bins "$work/bins" --paths pillion,pillion-h1,pillion-mtls --modes h2,h1,grpc,streams \
  --rounds 1 --seconds 3
ls "$raw"/*.profraw >/dev/null 2>&1 || { echo "the instrumented proxies wrote no profile" >&2; exit 1; }
"$profdata" merge -o "$work/merged.profdata" "$raw"/*.profraw
xz -9 -c "$work/merged.profdata" >proxy/pgo/pillion-proxy.profdata.xz
echo "wrote proxy/pgo/pillion-proxy.profdata.xz ($(stat -c %s proxy/pgo/pillion-proxy.profdata.xz) bytes); building with it"
# The link order follows the profile (it builds the proxy, then links it again in that order).
bash benches/pgo_order.sh
