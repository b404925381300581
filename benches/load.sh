#!/usr/bin/env bash
# Load run: h2load against the demo app directly, and through one proxy hop, over h2c and
# HTTP/1.1. Everything on loopback, on ports the OS picks; bounded request counts.
#   bash benches/load.sh            (N=100000 requests per run by default)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
C=${C:-10}

command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client; }
bash scripts/build-release.sh --workspace --bins --exclude pillion-proxy -q
T=target/release
dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
[ -n "${KEEP:-}" ] && trap - EXIT

. benches/lib.sh
start_app
start_control_plane

PILLION_LOG_FORMAT=json PILLION_LOG=warn,pillion_proxy=info PILLION_CONTROL_PLANE_ADDR=$CP \
  PILLION_OUTBOUND_LISTEN=127.0.0.1:0 PILLION_INBOUND_LISTEN=127.0.0.1:0 PILLION_ADMIN_LISTEN=127.0.0.1:0 \
  $T/pillion-proxy 2>"$dir/proxy.log" &
PROXY_PID=$!
pids+=($PROXY_PID)
wait_for "$dir/proxy.log" "proxy listening"
OUT=$(json_field "$dir/proxy.log" outbound_addr)

run() { # label, h2load args...
  local label=$1; shift
  local out
  out=$(h2load "$@" 2>&1)
  local rps fail lat
  rps=$(echo "$out" | sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p')
  fail=$(echo "$out" | sed -n 's/^requests: .* \([0-9]*\) failed.*/\1/p')
  lat=$(echo "$out" | awk '/^time for request:/ {print "min " $4 " mean " $6 " max " $5}')
  printf '%-28s %10s req/s  failed %s  latency %s\n' "$label" "$rps" "$fail" "$lat"
}

echo "h2load -n $N -c $C (h2c: -m 10 streams per connection)"
run "h2c direct"          -n "$N" -c "$C" -m 10 "http://$APP/"
run "h2c one proxy hop"   -n "$N" -c "$C" -m 10 -H ':authority: web-v1' "http://$OUT/"
run "http/1.1 direct"     --h1 -n "$N" -c "$C" "http://$APP/"
run "http/1.1 one proxy hop" --h1 -n "$N" -c "$C" -H ':authority: web-v1' "http://$OUT/"
echo "proxy RSS after the runs: $(awk '/VmRSS/ {print $2 " " $3}' /proc/$PROXY_PID/status)"
if [ -n "${KEEP:-}" ]; then echo "OUT=$OUT APP=$APP"; sleep 30; fi
