#!/usr/bin/env bash
# Load run: h2load against the demo app directly, and through one proxy hop, over h2c and
# HTTP/1.1. Everything on loopback, on ports the OS picks; bounded request counts.
#   bash benches/load.sh            (N=100000 requests per run by default)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
C=${C:-10}

command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client; }
cargo build --release --locked --workspace --bins -q
T=target/release
dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
[ -n "${KEEP:-}" ] && trap - EXIT

wait_for() { # file pattern
  for _ in $(seq 1 500); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.02; done
  echo "timed out waiting for $2 in $1" >&2; cat "$1" >&2; exit 1
}
json_field() { grep -o "\"$2\":\"[^\"]*\"" "$1" | head -1 | cut -d'"' -f4; }

$T/pillion demo-app --listen 127.0.0.1:0 --app-version v1 >"$dir/app.out" 2>/dev/null &
pids+=($!)
wait_for "$dir/app.out" "listening on"
APP=$(sed -n 's/.*listening on //p' "$dir/app.out")

cp examples/demo/services.yaml "$dir/services.yaml"
cat >"$dir/endpoints.yaml" <<YAML
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v1-bench, labels: {kubernetes.io/service-name: web-v1}}
addressType: IPv4
ports: [{name: http, port: ${APP##*:}}]
endpoints: [{addresses: ["127.0.0.1"]}]
YAML
PILLION_LOG_FORMAT=json PILLION_LOG=warn,pillion_control_plane=info \
  $T/pillion-control-plane --config-dir "$dir" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 2>"$dir/cp.log" &
pids+=($!)
wait_for "$dir/cp.log" "control plane listening"
CP=$(json_field "$dir/cp.log" addr)

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
