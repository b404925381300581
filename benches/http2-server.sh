#!/usr/bin/env bash
# Instructions per request of a trivial HTTP/2 server (http2/examples/hello.rs: one thread,
# "hello" and two headers) on Pillion's HTTP/2 and on the h2 crate's, counted by callgrind
# under h2load -c 10 -m 10: what the HTTP/2 layer itself costs, apart from the proxy.
#   bash benches/http2-server.sh            # both
#   N=50000 bash benches/http2-server.sh h2 # one, more requests
set -euo pipefail
cd "$(dirname "$0")/.."
for cmd in valgrind h2load; do
  command -v $cmd >/dev/null || { echo "needs $cmd (Debian: apt install valgrind nghttp2-client)" >&2; exit 1; }
done
cargo build --release --locked -p pillion-http2 --example hello
N=${N:-20000}
dir=$(mktemp -d)
pid=
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
for which in ${1:-pillion h2}; do
  arg=$which; [ "$which" = pillion ] && arg=ours
  valgrind --tool=callgrind --compress-strings=no --compress-pos=no "--callgrind-out-file=$dir/cg-$which.out" \
    target/release/examples/hello "$arg" >"$dir/$which.log" 2>"$dir/$which.err" &
  pid=$!
  for _ in $(seq 1 600); do grep -q "listening on" "$dir/$which.log" && break; sleep 0.1; done
  addr=$(sed -n 's/listening on //p' "$dir/$which.log")
  h2load -n 5000 -c 10 -m 10 "http://$addr/" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  h2load -n "$N" -c 10 -m 10 "http://$addr/" | grep -E "^requests:"
  callgrind_control -d "$pid" >/dev/null 2>&1
  for _ in $(seq 1 100); do ls "$dir"/cg-"$which".out.* >/dev/null 2>&1 && break; sleep 0.1; done
  sleep 0.5
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  python3 - "$(ls -t "$dir"/cg-"$which".out.* | head -1)" "$N" "$which" <<'PY'
import sys
path, n, which = sys.argv[1], int(sys.argv[2]), sys.argv[3]
total, in_call = 0, False
for line in open(path):
    if line.startswith("calls="):
        in_call = True
    elif line[:1].isdigit() or line[:1] in "+-*":
        parts = line.split()
        if len(parts) >= 2 and not in_call:
            total += int(parts[1])
        in_call = False
print(f"{which}: {total / n:,.0f} instructions per request")
PY
done
