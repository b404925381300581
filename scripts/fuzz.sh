#!/usr/bin/env bash
# Runs one fuzz target (or each in turn) for a while: docs/fuzzing.md.
#
#   bash scripts/fuzz.sh                      # every target, 5 minutes each
#   bash scripts/fuzz.sh http2_server 3600    # one target, an hour
#   JOBS=2 bash scripts/fuzz.sh config        # two processes sharing the corpus
#
# Installs cargo-fuzz (crates.io) when missing. The corpus grows in fuzz/corpus/<target>
# (not committed; it starts from fuzz/seeds and fuzz/regressions). An input that fails is
# written to fuzz/artifacts/<target>/: replay it with
#   cargo fuzz run -s none <target> fuzz/artifacts/<target>/<file>
# and, once fixed, copy it to fuzz/regressions/<target>/ so `cargo test` replays it for good.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=(http2_server http2_client hpack config proxy_headers)
[ $# -ge 1 ] && targets=("$1")
seconds=${2:-300}
jobs=${JOBS:-1}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# libFuzzer's instrumentation needs flags of the nightly compiler; the stable one accepts them
# with RUSTC_BOOTSTRAP. No sanitizer: the code is safe Rust but for a few audited lines, and
# without AddressSanitizer a target runs ~10x faster.
export RUSTC_BOOTSTRAP=1
declare -A max_len=([http2_server]=8192 [http2_client]=8192 [hpack]=4096 [config]=16384 [proxy_headers]=2048)
cd fuzz
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  cp -n seeds/"$t"/* regressions/"$t"/* "corpus/$t/" 2>/dev/null || true
  extra=()
  [ -f "$t.dict" ] && extra+=("-dict=$t.dict")
  [ "$jobs" -gt 1 ] && extra+=("-jobs=$jobs" "-workers=$jobs")
  echo "fuzzing $t for ${seconds}s" >&2
  cargo fuzz run -O --debug-assertions -s none "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -max_len="${max_len[$t]}" -timeout=20 -malloc_limit_mb=256 \
    "${extra[@]}"
done
