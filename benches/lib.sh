# Shared by the shell benchmarks (sourced): waiting for a process's log line, reading its JSON
# log, and the demo app plus a control plane that routes `web-v1` to it. The caller sets `T`
# (the binaries' directory) and `dir` (a temporary directory), and kills the `pids` it gets.

wait_for() { # file pattern
  for _ in $(seq 1 1500); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.02; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}

json_field() { grep -o "\"$2\":\"[^\"]*\"" "$1" | head -1 | cut -d'"' -f4; }

# The demo app (v1) on a port the OS picks: sets APP (127.0.0.1:port).
start_app() {
  $T/pillion demo-app --listen 127.0.0.1:0 --app-version v1 >"$dir/app.out" 2>/dev/null &
  pids+=($!)
  wait_for "$dir/app.out" "listening on"
  APP=$(sed -n 's/.*listening on //p' "$dir/app.out")
}

# A control plane on examples/demo's Services, with web-v1's endpoint the app: sets CP.
# CP_ARGS (an array, optional): more arguments, e.g. its CA.
start_control_plane() {
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
    $T/pillion-control-plane --config-dir "$dir" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    ${CP_ARGS[@]+"${CP_ARGS[@]}"} 2>"$dir/cp.log" &
  pids+=($!)
  wait_for "$dir/cp.log" "control plane listening"
  CP=$(json_field "$dir/cp.log" addr)
}
