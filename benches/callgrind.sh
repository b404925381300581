#!/usr/bin/env bash
# Instructions per request of one proxy, one h2c hop, counted by valgrind's callgrind: unlike
# CPU time on this shared machine, the count repeats to ~0.2 %, so it is what a change to the
# request path is measured by (docs/benchmarks.md). User-space instructions only: the kernel's
# share (TCP, epoll) is not counted.
#
#   bash benches/callgrind.sh                 # Pillion (target/release/pillion-proxy)
#   PROXY=/tmp/old-pillion-proxy bash benches/callgrind.sh    # another build, to A/B
#   bash benches/callgrind.sh haproxy         # HAProxy with the same hop, for comparison
#   bash benches/callgrind.sh pillion-traced  # the same hop, 100 % sampled, spans to a collector
#   bash benches/callgrind.sh pillion-mtls    # the mesh path: client proxy -> mTLS -> server
#                                             # proxy, both counted (per request, summed)
#   N=50000 TOP=30 bash benches/callgrind.sh  # more requests, more functions listed
#   KEEP=/tmp/cg.out bash benches/callgrind.sh  # keep the profile (callgrind_annotate, kcachegrind)
#   FUNCTIONS=/tmp/f.txt bash benches/callgrind.sh pillion-mtls  # instead, every function the
#                                             # proxies ran from start to exit (h2c and HTTP/1.1
#                                             # requests), by symbol: benches/pgo_order.sh's input
#   DATA=/tmp/1k bash benches/callgrind.sh    # POSTs with that file as the body
#   H1=1 bash benches/callgrind.sh            # HTTP/1.1 clients (10 connections, one request
#                                             # at a time each); the upstream stays h2c
#   ATOMICS=1 bash benches/callgrind.sh       # also the atomic operations per request (lock-
#                                             # prefixed instructions, found with objdump), by
#                                             # function: each costs ~20 cycles even uncontended
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
# Per-instruction counts when atomics are counted: the instruction addresses are matched
# against objdump's.
cg_extra=()
[ -z "${ATOMICS:-}" ] || cg_extra=(--dump-instr=yes)
# Symbols as the linker knows them, for a link order.
[ -z "${FUNCTIONS:-}" ] || cg_extra=(--demangle=no)
callgrind=(valgrind --tool=callgrind --compress-strings=no --compress-pos=no "${cg_extra[@]}" "--callgrind-out-file=$dir/cg.out")

start_app

# A proxy under callgrind (env: extra PILLION_* settings): sets PROXY_PID and its log's path.
start_proxy() { # name [VAR=value...]
  local name=$1; shift
  env "$@" PILLION_CORES=1 PILLION_LOG_FORMAT=json PILLION_LOG=warn,pillion_proxy=info \
    PILLION_CONTROL_PLANE_ADDR=$CP \
    PILLION_OUTBOUND_LISTEN=127.0.0.1:0 PILLION_INBOUND_LISTEN=127.0.0.1:0 PILLION_ADMIN_LISTEN=127.0.0.1:0 \
    valgrind --tool=callgrind --compress-strings=no --compress-pos=no "${cg_extra[@]}" "--callgrind-out-file=$dir/cg-$name.out" \
    "${PROXY:-$T/pillion-proxy}" 2>"$dir/$name.log" &
  PROXY_PID=$!
  pids+=($PROXY_PID)
  wait_for "$dir/$name.log" "proxy listening"
}
host=web-v1

case $which in
pillion)
  start_control_plane
  start_proxy proxy
  ADDR=$(json_field "$dir/proxy.log" outbound_addr)
  ;;
pillion-traced)
  # The same hop, every request sampled, its spans sent to a collector (answers 202).
  python3 benches/benchlib.py collector >"$dir/collector.out" &
  pids+=($!)
  wait_for "$dir/collector.out" "127.0.0.1:"
  start_control_plane
  start_proxy proxy PILLION_TRACE_SAMPLE_RATE=1 \
    "PILLION_ZIPKIN_URL=http://$(cat "$dir/collector.out")/api/v2/spans"
  ADDR=$(json_field "$dir/proxy.log" outbound_addr)
  ;;
pillion-mtls)
  # The control plane as a CA; the server proxy (identity default/web) in front of the app,
  # the client proxy (default/client) sending to Service `web-tls`, whose endpoint names it.
  printf 'tok-web default/web\ntok-client default/client\n' >"$dir/tokens"
  echo -n tok-web >"$dir/token-web"
  echo -n tok-client >"$dir/token-client"
  CP_ARGS=(--ca-dir "$dir/ca" --identity-tokens "$dir/tokens")
  start_control_plane
  anchors=PILLION_TRUST_ANCHORS=$dir/ca/trust-anchors.pem
  start_proxy server "$anchors" PILLION_WORKLOAD=default/web PILLION_SERVICE_ACCOUNT=web \
    PILLION_IDENTITY_TOKEN_FILE="$dir/token-web" PILLION_INBOUND_FORWARD="$APP"
  SERVER_PID=$PROXY_PID
  SERVER_IN=$(json_field "$dir/server.log" inbound_addr)
  start_proxy client "$anchors" PILLION_WORKLOAD=default/client PILLION_SERVICE_ACCOUNT=client \
    PILLION_IDENTITY_TOKEN_FILE="$dir/token-client"
  ADDR=$(json_field "$dir/client.log" outbound_addr)
  cat >"$dir/tls.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: web-tls}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-tls-bench
  labels: {kubernetes.io/service-name: web-tls}
  annotations: {pillion.dev/identity: "spiffe://cluster.local/ns/default/sa/web", pillion.dev/proxy-port: "${SERVER_IN##*:}"}
addressType: IPv4
ports: [{name: http, port: ${APP##*:}, appProtocol: kubernetes.io/h2c}]
endpoints: [{addresses: ["127.0.0.1"]}]
YAML
  host=web-tls
  # Until the route and both certificates are in place, requests fail: wait for a 200.
  for _ in $(seq 1 600); do
    h2load -n 1 -H ":authority: $host" "http://$ADDR/" 2>&1 | grep -q "1 succeeded" && break
    sleep 0.2
  done
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
*) echo "usage: $0 [pillion|pillion-traced|pillion-mtls|haproxy]" >&2; exit 2 ;;
esac
counted=$(pgrep -f "callgrind-out-file=$dir/" || true)

post=()
[ -n "${DATA:-}" ] && post=(-d "$DATA")
streams=(-m 10)
[ -n "${H1:-}" ] && streams=(--h1)
load() { h2load "${post[@]}" "${streams[@]}" -n "$1" -c 10 -H ":authority: $host" "http://$ADDR/" 2>&1 | grep -E "^requests:"; }
if [ -n "${FUNCTIONS:-}" ]; then
  load 2000
  h2load --h1 -n 2000 -c 10 -H ":authority: $host" "http://$ADDR/" 2>&1 | grep -E "^requests:"
  # Shut down as in production (SIGTERM, drain), which callgrind records as it exits.
  for p in $counted; do kill -TERM "$p"; done
  for p in $counted; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
  # "fn=name" for each function with instructions of its own; addresses without a symbol and
  # callgrind's own entries ("(below main)") left out; recursion marks ('2) dropped.
  sed -n 's/^fn=//p' "$dir"/cg-*.out* | grep -v '^0x\|^(' |
    sed "s/'[0-9]*$//" | sort -u >"$FUNCTIONS"
  echo "$(wc -l <"$FUNCTIONS") functions ran: $FUNCTIONS"
  exit 0
fi
load 5000 >/dev/null
for p in $counted; do callgrind_control -z "$p" >/dev/null 2>&1; done
load "$N"
profiles=()
for p in $counted; do
  before=$(ls "$dir" | grep -c "\.out\.") || true
  callgrind_control -d "$p" >/dev/null 2>&1
  for _ in $(seq 1 100); do [ "$(ls "$dir" | grep -c "\.out\.")" -gt "$before" ] && break; sleep 0.1; done
  sleep 0.5
  profiles+=("$(ls -t "$dir"/*.out.* | head -1)")
done
[ -z "${KEEP:-}" ] || cat "${profiles[@]}" >"$KEEP"
binary=${PROXY:-$T/pillion-proxy}
[ "$which" != haproxy ] || binary=$(command -v haproxy)
python3 - "$N" "${TOP:-15}" "${ATOMICS:+$binary}" "${profiles[@]}" <<'PY'
import collections, re, subprocess, sys
n, top, binary, paths = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
# Addresses of atomic instructions: lock-prefixed, or xchg with memory (locked implicitly).
# Position-independent binaries load at their link addresses under valgrind here, so the
# profile's instruction addresses match objdump's (a miss shows as 0 atomics).
atomic = set()
if binary:
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", binary], capture_output=True, text=True, check=True)
    for line in dis.stdout.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s+(\S+)(.*)", line)
        if m and (m.group(2) == "lock" or (m.group(2).startswith("xchg") and "(" in m.group(3))):
            atomic.add(int(m.group(1), 16))
own, atomics = collections.Counter(), collections.Counter()
for path in paths:  # the mTLS pair's two proxies are summed
    fn, in_call, positions = None, False, 1
    for line in open(path):
        if line.startswith("positions:"):
            positions = len(line.split()) - 1  # "instr line" with --dump-instr=yes
        elif line.startswith("fn="):
            fn = line[3:].strip()
        elif line.startswith("calls="):
            in_call = True  # the next cost line is the callee's, not this function's own
        elif line[:1].isdigit() or line[:1] in "+-*":
            parts = line.split()
            if len(parts) > positions and not in_call:
                cost = int(parts[positions])
                own[fn] += cost
                if atomic and int(parts[0], 0) in atomic:
                    atomics[fn] += cost
            in_call = False
total = sum(own.values())
print(f"instructions per request: {total / n:,.0f}")
for f, c in own.most_common(top):
    print(f"{c / n:8,.0f}  {100 * c / total:5.1f} %  {f[:120]}")
if binary:
    print(f"atomic operations per request: {sum(atomics.values()) / n:,.1f}")
    for f, c in atomics.most_common(top):
        print(f"{c / n:8,.1f}  {f[:120]}")
PY
