# Pillion's images, one target each (no Docker engine runs where this is developed; the file is
# kept simple so that it stays right):
#   docker build --target control-plane -t ghcr.io/pillion-mesh/pillion-control-plane:v0.1.0 .
#   docker build --target injector      -t ghcr.io/pillion-mesh/pillion-injector:v0.1.0 .
#   docker build --target proxy         -t ghcr.io/pillion-mesh/pillion-proxy:v0.1.0 .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Optimized with the proxy's profile (proxy/pgo/, scripts/build-release.sh).
RUN bash scripts/build-release.sh --bin pillion-control-plane --bin pillion-injector --bin pillion-init

# The control plane and the injector need nothing but libc: distroless, as the nonroot user.
FROM gcr.io/distroless/cc-debian12:nonroot AS control-plane
COPY --from=build /src/target/release/pillion-control-plane /usr/local/bin/pillion-control-plane
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/pillion-control-plane"]

FROM gcr.io/distroless/cc-debian12:nonroot AS injector
COPY --from=build /src/target/release/pillion-injector /usr/local/bin/pillion-injector
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/pillion-injector"]

# The sidecar image carries pillion-init too, which needs iptables (nft and legacy); the injected
# init container runs it as root with NET_ADMIN and NET_RAW only. The proxy runs as 2102, the
# user pillion-init exempts from the redirect.
FROM debian:bookworm-slim AS proxy
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/pillion-proxy /src/target/release/pillion-init /usr/local/bin/
USER 2102:2102
ENTRYPOINT ["/usr/local/bin/pillion-proxy"]
