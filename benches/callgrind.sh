#!/usr/bin/env bash
# Instructions per request of one proxy, one h2c hop, counted by valgrind's callgrind: unlike
# CPU time on this shared machine, the count repeats to ~0.2 %, so it is what a change to the
# request path is measured by (docs/benchmarks.md). User-space instructions only: the kernel's
# share (TCP, epoll) is not counted.
#
#   bash benches/callgrind.sh                 # Pillion (target/release/pillion-proxy)
#   PROXY=/tmp/old-pillion-proxy bash benches/callgrind.sh    # another build, to A/B
#   bash benches/callgrind.sh haproxy         # HAProxy with the same hop, for comparison
#   N=50000 TOP=30 bash benches/callgrind.sh  # more requests, more functions listed
#   KEEP=/tmp/cg.out bash benches/callgrind.sh  # keep the profile (callgrind_annotate, kcachegrind)
#
# The backend is the demo app; 5,000 requests warm up, the counters are zeroed, then N requests
# (default 20,000) are counted, h2load -c 10 -m 10. Prints the instructions per request and the
# functions that cost the most (their own instructions, per request).
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-pillion}
N=${N:-20000}
T=target/release
for cmd in valgrind h2load; do
  command -v $cmd >/dev/null || { echo "needs $cmd (Debian: apt install valgrind nghttp2-client)" >&2; exit 1; }
done
[ -x $T/pillion ] && [ -x $T/pillion-proxy ] && [ -x $T/pillion-control-plane ] ||
  { echo "build first: bash scripts/build-release.sh" >&2; exit 1; }

dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
. benches/lib.sh
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
callgrind=(valgrind --tool=callgrind --compress-strings=no --compress-pos=no "--callgrind-out-file=$dir/cg.out")

start_app

case $which in
pillion)
  start_control_plane
  PILLION_CORES=1 PILLION_LOG_FORMAT=json PILLION_LOG=warn,pillion_proxy=info \
    PILLION_CONTROL_PLANE_ADDR=$CP \
    PILLION_OUTBOUND_LISTEN=127.0.0.1:0 PILLION_INBOUND_LISTEN=127.0.0.1:0 PILLION_ADMIN_LISTEN=127.0.0.1:0 \
    "${callgrind[@]}" "${PROXY:-$T/pillion-proxy}" 2>"$dir/proxy.log" &
  PROXY_PID=$!
  pids+=($PROXY_PID)
  wait_for "$dir/proxy.log" "proxy listening"
  ADDR=$(json_field "$dir/proxy.log" outbound_addr)
  ;;
haproxy)
  command -v haproxy >/dev/null || { echo "needs haproxy (Debian: apt install haproxy)" >&2; exit 1; }
  PORT=$(free_port)
  cat >"$dir/haproxy.cfg" <<CFG
global
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend in
    bind 127.0.0.1:$PORT proto h2
    default_backend app
backend app
    server v1 $APP proto h2
CFG
  "${callgrind[@]}" haproxy -db -f "$dir/haproxy.cfg" >"$dir/proxy.log" 2>&1 &
  PROXY_PID=$!
  pids+=($PROXY_PID)
  for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
  ADDR=127.0.0.1:$PORT
  ;;
*) echo "usage: $0 [pillion|haproxy]" >&2; exit 2 ;;
esac

load() { h2load -n "$1" -c 10 -m 10 -H ":authority: web-v1" "http://$ADDR/" 2>&1 | grep -E "^requests:"; }
load 5000 >/dev/null
callgrind_control -z $PROXY_PID >/dev/null 2>&1
load "$N"
callgrind_control -d $PROXY_PID >/dev/null 2>&1
for _ in $(seq 1 100); do ls "$dir"/cg.out.* >/dev/null 2>&1 && break; sleep 0.1; done
sleep 0.5
profile=$(ls -t "$dir"/cg.out.* | head -1)
[ -z "${KEEP:-}" ] || cp "$profile" "$KEEP"
python3 - "$profile" "$N" "${TOP:-15}" <<'PY'
import collections, sys
path, n, top = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
own = collections.Counter()
fn, in_call = None, False
for line in open(path):
    if line.startswith("fn="):
        fn = line[3:].strip()
    elif line.startswith("calls="):
        in_call = True  # the next cost line is the callee's, not this function's own
    elif line[:1].isdigit() or line[:1] in "+-*":
        parts = line.split()
        if len(parts) >= 2 and not in_call:
            own[fn] += int(parts[1])
        in_call = False
total = sum(own.values())
print(f"instructions per request: {total / n:,.0f}")
for f, c in own.most_common(top):
    print(f"{c / n:8,.0f}  {100 * c / total:5.1f} %  {f[:120]}")
PY
