#!/usr/bin/env bash
# mTLS costs, measured on loopback with release binaries:
#  1. full mTLS handshakes per second against a server proxy's inbound port (openssl s_time,
#     one client process, new session per connection, client certificate from the mesh's CA);
#  2. the two-proxy path (client proxy -> server proxy -> app) with h2load, plaintext vs mTLS:
#     requests/s and CPU time of the two proxies per request (from /proc, utime+stime).
#   bash benches/mtls.sh          (N=50000 requests per h2load run, T=10 seconds of s_time)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-50000}
T=${T:-10}
command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client; }
bash scripts/build-release.sh --workspace --bins --exclude pillion-proxy -q
B=target/release
dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
wait_for() { for _ in $(seq 1 500); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.02; done; echo "timeout: $2 in $1" >&2; cat "$1" >&2; exit 1; }
json_field() { grep -o "\"$2\":\"[^\"]*\"" "$1" | head -1 | cut -d'"' -f4; }
cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat))); done; echo $t; }

$B/pillion demo-app --listen 127.0.0.1:0 --app-version v1 >"$dir/app.out" 2>/dev/null & pids+=($!)
wait_for "$dir/app.out" "listening on"
APP=$(sed -n 's/.*listening on //p' "$dir/app.out")

mkdir "$dir/config"
printf 'tok-web default/web\ntok-client default/client\n' >"$dir/tokens"
echo -n tok-web >"$dir/token-web"; echo -n tok-client >"$dir/token-client"
PILLION_LOG_FORMAT=json PILLION_LOG=warn,pillion_control_plane=info \
  $B/pillion-control-plane --config-dir "$dir/config" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --ca-dir "$dir/ca" --identity-tokens "$dir/tokens" 2>"$dir/cp.log" & pids+=($!)
wait_for "$dir/cp.log" "control plane listening"
CP=$(json_field "$dir/cp.log" addr)

start_proxy() { # name, extra env...
  local name=$1; shift
  env PILLION_LOG_FORMAT=json PILLION_LOG=warn,pillion_proxy=info PILLION_CONTROL_PLANE_ADDR=$CP \
    PILLION_OUTBOUND_LISTEN=127.0.0.1:0 PILLION_INBOUND_LISTEN=127.0.0.1:0 PILLION_ADMIN_LISTEN=127.0.0.1:0 \
    "$@" $B/pillion-proxy 2>"$dir/$name.log" &
  pids+=($!)
  eval "${name}_PID=$!"
  wait_for "$dir/$name.log" "proxy listening"
}
ID=(PILLION_TRUST_ANCHORS=$dir/ca/trust-anchors.pem)
start_proxy server_tls "${ID[@]}" PILLION_SERVICE_ACCOUNT=web PILLION_IDENTITY_TOKEN_FILE=$dir/token-web PILLION_INBOUND_FORWARD=$APP PILLION_WORKLOAD=default/web
start_proxy server_plain PILLION_INBOUND_FORWARD=$APP PILLION_WORKLOAD=default/web-plain
start_proxy client "${ID[@]}" PILLION_SERVICE_ACCOUNT=client PILLION_IDENTITY_TOKEN_FILE=$dir/token-client PILLION_WORKLOAD=default/client
IN_TLS=$(json_field "$dir/server_tls.log" inbound_addr)
IN_PLAIN=$(json_field "$dir/server_plain.log" inbound_addr)
OUT=$(json_field "$dir/client.log" outbound_addr)

cat >"$dir/config/mesh.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: web-tls}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-plain}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-tls-1
  labels: {kubernetes.io/service-name: web-tls}
  annotations: {pillion.dev/identity: "spiffe://cluster.local/ns/default/sa/web", pillion.dev/proxy-port: "${IN_TLS##*:}"}
addressType: IPv4
ports: [{name: http, port: ${APP##*:}}]
endpoints: [{addresses: ["127.0.0.1"]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-plain-1, labels: {kubernetes.io/service-name: web-plain}}
addressType: IPv4
ports: [{name: http, port: ${IN_PLAIN##*:}}]
endpoints: [{addresses: ["127.0.0.1"]}]
YAML
# Until both routes answer.
for host in web-tls web-plain; do
  for _ in $(seq 1 250); do curl -sf -H "Host: $host" "http://$OUT/" >/dev/null && break; sleep 0.04; done
done

# 1. Full handshakes per second (openssl s_time) with a client certificate from the mesh CA.
openssl ecparam -name prime256v1 -genkey -noout -out "$dir/bench.key" 2>/dev/null
openssl req -new -key "$dir/bench.key" -subj /CN=bench -out "$dir/bench.csr" 2>/dev/null
printf 'subjectAltName=URI:spiffe://cluster.local/ns/default/sa/bench\nextendedKeyUsage=clientAuth\n' >"$dir/ext"
openssl x509 -req -in "$dir/bench.csr" -CA "$dir/ca/issuer.crt" -CAkey "$dir/ca/issuer.key" \
  -CAcreateserial -days 1 -extfile "$dir/ext" -out "$dir/bench.crt" 2>/dev/null
cat "$dir/bench.crt" "$dir/ca/issuer.crt" >"$dir/chain.pem"
before=$(cpu_ticks $server_tls_PID)
hs=$(openssl s_time -connect "$IN_TLS" -new -time "$T" -cert "$dir/chain.pem" -key "$dir/bench.key" \
  -CAfile "$dir/ca/trust-anchors.pem" 2>&1 | grep -m1 'connections in' || true)
after=$(cpu_ticks $server_tls_PID)
conns=$(echo "$hs" | awk '{print $1}')
hz=$(getconf CLK_TCK)
echo "openssl s_time -new -time $T against the server proxy: $hs"
awk -v c="$conns" -v t=$((after - before)) -v hz="$hz" 'BEGIN {
  if (t > 0) printf "  server proxy CPU: %.2f s for %d handshakes = %.0f handshakes per CPU-second\n", t/hz, c, c/(t/hz) }'

# 2. The two-proxy path, plaintext vs mTLS.
run() { # label host proxies...
  local label=$1 host=$2; shift 2
  local before after out rps
  before=$(cpu_ticks "$@")
  out=$(h2load --h1 -n "$N" -c 10 -H ":authority: $host" "http://$OUT/" 2>&1)
  after=$(cpu_ticks "$@")
  rps=$(echo "$out" | sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p')
  fail=$(echo "$out" | sed -n 's/^requests: .* \([0-9]*\) failed.*/\1/p')
  awk -v l="$label" -v r="$rps" -v f="$fail" -v t=$((after - before)) -v n="$N" -v hz="$hz" 'BEGIN {
    printf "%-22s %9.0f req/s  failed %s  proxies CPU %.1f us/request\n", l, r, f, (t/hz)*1e6/n }'
}
echo "h2load --h1 -n $N -c 10 through client proxy -> server proxy -> app"
run "plaintext two hops" web-plain $client_PID $server_plain_PID
run "mTLS two hops" web-tls $client_PID $server_tls_PID
