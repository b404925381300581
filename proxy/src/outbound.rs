//! Outbound: requests from the local application to the mesh. Route by authority, split by
//! weight, balance over endpoints. Destinations outside the mesh go to their original
//! destination unchanged in transparent mode (the mesh never breaks egress), and get 503 "not in
//! mesh" in explicit mode (where there is no original destination to go to).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};

use crate::balance::{self, EndpointCache};
use crate::control::discovery::Destinations;
use crate::http::BoxRequest;
use crate::http::body::Body;
use crate::http::errors::{ProxyError, is_grpc};
use crate::http::forward::{self, ForwardError, Observation, authority_of};
use crate::http::mirror;
use crate::http::pool::Io;
use crate::http::replay::Attempts;
use crate::listener::{ConnMeta, Handler};
use crate::route::filters::Filters;
use crate::route::retry::RetryPolicy;
use crate::route::snapshot::{BackendTarget, RequestInfo, Routes, Rule};
use crate::telemetry::metrics::{Direction, FaultLabels, Label, Metrics, RetryLabels};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Endpoints a request may try when connecting fails (connect errors are quick; a connect
/// timeout costs `PILLION_CONNECT_TIMEOUT` each).
const MAX_CONNECT_ATTEMPTS: usize = 4;

/// How long a mirrored copy may take when `PILLION_REQUEST_TIMEOUT` is `0` (no limit): a copy
/// nobody waits for must still end.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Outbound {
    pub dests: Arc<Destinations>,
    pub metrics: Arc<Metrics>,
    pub namespace: String,
    pub passthrough: EndpointCache,
    pub connect_timeout: Duration,
    /// The wait for response headers when the route sets no timeout.
    pub request_timeout: Option<Duration>,
    /// One log line per request (`PILLION_ACCESS_LOG`).
    pub access_log: bool,
    /// Records a CLIENT span per sampled request, when tracing is on.
    pub tracer: Option<Arc<crate::telemetry::trace::Tracer>>,
    /// The proxy's own listeners: a redirected connection to one of them would loop.
    pub own_ports: Vec<u16>,
    /// This proxy's identity, when it has one: requests to meshed endpoints wait (bounded)
    /// for its first certificate rather than fail the handshake without one.
    pub identity: Option<Arc<crate::identity::LocalIdentity>>,
    pub discovery_timeout: Duration,
    /// Requests in flight per endpoint (`PILLION_MAX_REQUESTS_PER_ENDPOINT`): past it on every
    /// endpoint of a backend, requests fail at once instead of piling up.
    pub max_requests_per_endpoint: u32,
    /// Resolves destinations outside the mesh in explicit mode (`PILLION_DNS`); `None`: they
    /// get 503 `not in mesh`.
    pub dns: Option<Arc<crate::control::dns::Dns>>,
    /// Client configuration for opaque TCP over mTLS (ALPN `pillion.tcp/1`).
    pub tcp_tls: Option<Arc<rustls::ClientConfig>>,
    /// Where the inside of an accepted CONNECT tunnel goes to be served (see `lib.rs`: a
    /// channel, so that serving a tunnel is not a future inside this handler's own future).
    pub tunnels: tokio::sync::mpsc::UnboundedSender<(Box<dyn Io>, ConnMeta)>,
}

impl Outbound {
    fn loops(&self, conn: &ConnMeta) -> bool {
        conn.orig_dst
            .is_some_and(|d| self.own_ports.contains(&d.port()) && is_local(d))
    }

    #[allow(clippy::manual_async_fn)]
    fn route(
        &self,
        req: BoxRequest,
        conn: &ConnMeta,
        obs: &mut Observation,
    ) -> impl std::future::Future<Output = Result<Response<Body>, ProxyError>> {
        // Not an `async fn`: its state would hold each by-value argument twice (see `forward::forward`).
        async move {
            if self.loops(conn) {
                return Err(ProxyError::Loop);
            }
            // The rare paths are boxed: an async fn's future is as large as its largest branch,
            // and this one is held for every request in flight.
            if req.method() == http::Method::CONNECT {
                return Box::pin(self.connect(*req, conn.clone(), obs)).await;
            }
            forward::check_host(&req)?;
            let authority = authority_of(&req);
            let fqdn = authority
                .as_deref()
                .and_then(|a| pillion_proto::names::fqdn_of(a, &self.namespace));
            // By name first; in transparent mode also by the original destination's address (a
            // Service's cluster IP, or a meshed endpoint), which is all an app calling by IP gives.
            let mut snapshot = match fqdn {
                Some(fqdn) => Some(self.dests.get_at(&fqdn, obs.started).await?),
                None => None,
            };
            if snapshot.as_ref().is_none_or(|s| !s.in_mesh())
                && let Some(dst) = conn.orig_dst
            {
                snapshot = Some(self.dests.get_at(&dst.to_string(), obs.started).await?);
            }
            let Some(snapshot) = snapshot.filter(|s| s.in_mesh()) else {
                return Box::pin(self.passthrough(req, conn.clone(), authority, obs)).await;
            };
            obs.authority = Label(snapshot.fqdn.clone());
            let grpc_timeout = forward::grpc_timeout(req.headers());
            let info = RequestInfo {
                method: req.method(),
                path: req.uri().path(),
                query: req.uri().query(),
                headers: req.headers(),
            };
            let rule = snapshot.route(&info)?;
            obs.route = Label(rule.name.clone());
            let mut req = req;
            let mut authority = authority.unwrap_or_default();
            if let Some(filters) = &rule.filters
                && let Some(resp) = self.filter(filters, &mut req, &mut authority)
            {
                return Ok(resp);
            }
            // The whole request's deadline (the route's, or the caller's, else the default) covers
            // every attempt and the waits between them; the backend request timeout and the retry
            // policy's per-try timeout bound each attempt.
            let overall =
                forward::shortest([rule.request_timeout, grpc_timeout]).or(self.request_timeout);
            let per_try = forward::shortest([
                rule.backend_timeout,
                rule.retry.as_ref().and_then(|r| r.per_try_timeout),
            ]);
            forward::within(overall, self.send(rule, req, obs, &authority, per_try)).await
        }
    }

    /// Injects the rule's faults, picks a backend, and sends the request to it (with retries
    /// when the rule has a policy).
    #[allow(clippy::manual_async_fn)]
    fn send(
        &self,
        rule: &Rule,
        req: BoxRequest,
        obs: &mut Observation,
        authority: &str,
        per_try: Option<Duration>,
    ) -> impl std::future::Future<Output = Result<Response<Body>, ProxyError>> {
        // Not an `async fn`: its state would hold each by-value argument twice (see `forward::forward`).
        async move {
            if let Some(fault) = &rule.fault {
                let decision = fault.decide();
                if let Some(delay) = decision.delay {
                    self.count_fault(obs, "delay");
                    tokio::time::sleep(delay).await;
                }
                if decision.abort {
                    self.count_fault(obs, "abort");
                    return Err(ProxyError::FaultInjected {
                        status: fault.abort_status,
                        grpc: fault.abort_grpc,
                        source_name: fault.source.clone(),
                    });
                }
            }
            let sticky = rule.sticky.as_ref().and_then(|k| k.of(req.headers()));
            let backend = match sticky {
                Some(key) => rule.split.pick_sticky(key),
                None => rule.split.pick(),
            }
            .ok_or(ProxyError::NoEndpoints)?;
            let (name, endpoints) = match &backend.target {
                BackendTarget::Failure { status, reason } => {
                    return Err(ProxyError::BackendFailure {
                        status: *status,
                        reason: reason.clone(),
                    });
                }
                BackendTarget::Service { name, endpoints } => (name, endpoints),
            };
            obs.backend = Label(name.clone());
            let mut req = req;
            // Only a rule with filters can have CORS: the common request reads no header here.
            let origin = match &rule.filters {
                Some(f) => f.cors_origin(req.headers()),
                None => None,
            };
            let authority = match &backend.filters {
                Some(f) => {
                    f.edit_request(&mut req).map_err(ProxyError::BadRequest)?;
                    f.rewritten_authority().unwrap_or(authority)
                }
                None => authority,
            };
            let mut result = self
                .attempts(
                    name,
                    endpoints,
                    rule.retry.as_ref(),
                    req,
                    obs,
                    authority,
                    per_try,
                )
                .await;
            if let Ok(resp) = &mut result {
                for f in [&backend.filters, &rule.filters].into_iter().flatten() {
                    f.edit_response(resp, origin.as_ref());
                }
            }
            result
        }
    }

    /// A rule's filters on its way in: a redirect is the answer (returned); otherwise the
    /// request's headers and path are edited, `authority` replaced by a rewrite's, and copies
    /// sent to the mirrors.
    fn filter(
        &self,
        filters: &Filters,
        req: &mut crate::http::BoxRequest,
        authority: &mut String,
    ) -> Option<Response<Body>> {
        if let Some(resp) = filters.cors.as_ref().and_then(|c| c.preflight(req)) {
            return Some(resp);
        }
        if let Some(redirect) = &filters.redirect {
            return Some(redirect.response(req, authority));
        }
        if let Err(e) = filters.edit_request(req) {
            return Some(ProxyError::BadRequest(e).into_response(is_grpc(req.headers())));
        }
        if let Some(host) = filters.rewritten_authority() {
            *authority = host.to_string();
        }
        for m in &filters.mirrors {
            let chosen = m.ppm >= 1_000_000 || rand::random_range(0..1_000_000) < m.ppm;
            if let (true, BackendTarget::Service { endpoints, .. }) = (chosen, &m.backend.target) {
                let timeout = self.request_timeout.unwrap_or(MIRROR_TIMEOUT);
                mirror::send(
                    endpoints,
                    req,
                    authority,
                    timeout,
                    self.max_requests_per_endpoint,
                );
            }
        }
        None
    }

    /// Sends the request to one of `endpoints`, and again to another when it reached none, or
    /// when `policy` says its failure is worth a retry.
    #[allow(clippy::too_many_arguments)]
    #[allow(clippy::manual_async_fn)]
    fn attempts(
        &self,
        name: &Arc<str>,
        endpoints: &[Arc<balance::Endpoint>],
        policy: Option<&RetryPolicy>,
        req: BoxRequest,
        obs: &mut Observation,
        authority: &str,
        per_try: Option<Duration>,
    ) -> impl std::future::Future<Output = Result<Response<Body>, ProxyError>> {
        // Not an `async fn`: its state would hold each by-value argument twice (see `forward::forward`).
        async move {
            if endpoints.is_empty() {
                return Err(ProxyError::NoEndpoints);
            }
            let policy = policy.filter(|p| p.max_retries > 0 && !forward::wants_upgrade(&req));
            let idempotent = matches!(
                *req.method(),
                http::Method::GET
                    | http::Method::HEAD
                    | http::Method::OPTIONS
                    | http::Method::PUT
                    | http::Method::DELETE
                    | http::Method::TRACE
            );
            let mut attempts = match policy {
                Some(p) => {
                    p.budget.deposit();
                    Attempts::replay(*req, p.max_body_bytes)
                }
                None => Attempts::Once(Some(req)),
            };
            let opts = || forward::ForwardOpts {
                authority,
                timeout: per_try,
                protocol: None,
            };
            // The endpoints already tried, borrowed from the snapshot; filled only when a request
            // goes round again, so a request sent once allocates and clones nothing for it.
            let mut tried: Vec<&Arc<balance::Endpoint>> = Vec::new();
            let (mut retries, mut unreachable) = (0u32, 0usize);
            loop {
                let mut endpoint =
                    balance::pick_untried(endpoints, &tried).ok_or(ProxyError::NoEndpoints)?;
                if endpoint.pending() >= self.max_requests_per_endpoint {
                    endpoint = balance::below_limit(endpoints, self.max_requests_per_endpoint)
                        .ok_or(ProxyError::Unavailable("endpoints at their request limit"))?;
                }
                self.prepare(endpoint, name, obs).await?;
                let req = attempts.next_request().ok_or(ProxyError::NoEndpoints)?;
                let result = forward::forward(endpoint, req, opts()).await;
                let reason = match &result {
                    Ok(resp) => policy.and_then(|p| p.retryable_response(resp)),
                    // Nothing reached an endpoint that failed to connect: the request goes to
                    // another endpoint, up to MAX_CONNECT_ATTEMPTS in all, policy or not.
                    Err(ForwardError::NotSent(e, _)) => {
                        unreachable += 1;
                        tried.push(endpoint);
                        if unreachable >= MAX_CONNECT_ATTEMPTS || tried.len() >= endpoints.len() {
                            return result.map_err(ForwardError::into_error);
                        }
                        tracing::debug!(failed = %endpoint.addr, error = %e, "endpoint unreachable; trying another");
                        if let Err(ForwardError::NotSent(_, back)) = result {
                            attempts.give_back(back);
                        }
                        continue;
                    }
                    // A request that reached the endpoint and got no answer may have been acted on:
                    // sent again only when its method is idempotent.
                    Err(ForwardError::Failed(e)) => policy
                        .filter(|_| idempotent)
                        .and_then(|p| p.retryable_error(e)),
                };
                let (Some(policy), Some(reason)) = (policy, reason) else {
                    return result.map_err(ForwardError::into_error);
                };
                if retries >= policy.max_retries {
                    return result.map_err(ForwardError::into_error);
                }
                let skipped = if !attempts.can_replay() {
                    Some("body too large")
                } else if !policy.budget.withdraw() {
                    Some("budget")
                } else {
                    None
                };
                let count = |family: &Family<RetryLabels, Counter>, reason: String| {
                    family
                        .get_or_create(&RetryLabels {
                            authority: self.metrics.authority_label(&obs.authority),
                            route: obs.route.clone(),
                            reason: Label::from(reason.as_str()),
                        })
                        .inc();
                };
                if let Some(why) = skipped {
                    count(&self.metrics.retries_skipped, why.to_string());
                    return result.map_err(ForwardError::into_error);
                }
                count(&self.metrics.retries, reason.label());
                tried.push(endpoint);
                retries += 1;
                obs.tag("pillion.retries", retries.to_string());
                tracing::debug!(endpoint = %endpoint.addr, reason = %reason.label(), retries, "retrying");
                drop(result);
                tokio::time::sleep(policy.backoff(retries)).await;
            }
        }
    }

    /// Before an attempt at `endpoint`: what the metrics and span say of it, and for a meshed
    /// endpoint this proxy's first certificate (a handshake without one would fail).
    async fn prepare(
        &self,
        endpoint: &balance::Endpoint,
        backend: &Arc<str>,
        obs: &mut Observation,
    ) -> Result<(), ProxyError> {
        obs.tls = endpoint.conns.is_tls();
        let remote = endpoint
            .meshed
            .as_ref()
            .map_or(endpoint.addr, |m| m.proxy_addr);
        obs.remote(remote, Some(backend));
        if let Some(m) = &endpoint.meshed {
            obs.peer_identity = Label(m.identity.clone());
        }
        if endpoint.meshed.is_some()
            && let Some(id) = &self.identity
            && !id.is_ready()
            && tokio::time::timeout(self.discovery_timeout, id.ready())
                .await
                .is_err()
        {
            return Err(ProxyError::Unavailable("no certificate yet"));
        }
        Ok(())
    }

    fn count_fault(&self, obs: &mut Observation, fault: &'static str) {
        self.metrics
            .faults
            .get_or_create(&FaultLabels {
                authority: self.metrics.authority_label(&obs.authority),
                route: obs.route.clone(),
                fault: Label::from(fault),
            })
            .inc();
        obs.tag("pillion.fault", fault);
    }

    /// `CONNECT host:port` to a mesh destination (an `http_proxy` client such as grpc-js, or
    /// `curl -p`): answered 200, then the tunnel is served like a connection of its own.
    /// Destinations outside the mesh are refused (the proxy is no open forward proxy).
    async fn connect(
        &self,
        mut req: Request<Body>,
        conn: ConnMeta,
        obs: &mut Observation,
    ) -> Result<Response<Body>, ProxyError> {
        // Tunnels are HTTP/1.1's (what http_proxy clients send); HTTP/2 CONNECT is refused.
        if req.version() == http::Version::HTTP_2 {
            return Err(ProxyError::MethodNotAllowed("CONNECT over HTTP/2"));
        }
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .ok_or(ProxyError::BadRequest("CONNECT needs host:port"))?;
        let target = pillion_proto::names::parse_authority(&authority, &self.namespace)
            .ok_or(ProxyError::NotInMesh)?;
        let snapshot = self.dests.get(&target.fqdn()).await?;
        if !snapshot.in_mesh() {
            return Err(ProxyError::NotInMesh);
        }
        obs.authority = Label(snapshot.fqdn.clone());
        let upgrade = hyper::upgrade::on(&mut req);
        let tunnels = self.tunnels.clone();
        let inside = ConnMeta {
            orig_dst: None,
            tunnel: Some(snapshot.fqdn.clone()),
            ..conn
        };
        tokio::spawn(async move {
            match upgrade.await {
                Ok(upgraded) => {
                    let io: Box<dyn Io> = Box::new(hyper_util::rt::TokioIo::new(upgraded));
                    let _ = tunnels.send((io, inside));
                }
                Err(e) => tracing::debug!(error = %e, "CONNECT tunnel not established"),
            }
        });
        Ok(Response::new(crate::http::body::empty()))
    }

    /// Outside the mesh: to the original destination if there is one, else (explicit mode)
    /// to what DNS says the authority is, when `PILLION_DNS` is set.
    async fn passthrough(
        &self,
        req: BoxRequest,
        conn: ConnMeta,
        authority: Option<String>,
        obs: &mut Observation,
    ) -> Result<Response<Body>, ProxyError> {
        let Some(dst) = conn.orig_dst else {
            return self.by_dns(req, obs, authority).await;
        };
        let endpoint = self.passthrough.get(dst);
        let timeout = forward::grpc_timeout(req.headers()).or(self.request_timeout);
        let authority = authority.unwrap_or_else(|| dst.to_string());
        let opts = forward::ForwardOpts {
            authority: &authority,
            timeout,
            protocol: None,
        };
        forward::forward(&endpoint, req, opts)
            .await
            .map_err(ForwardError::into_error)
    }
}

impl Outbound {
    /// A destination outside the mesh, in explicit mode: its authority's addresses by DNS (an
    /// IP address as it is), balanced, with another address tried when one refuses.
    async fn by_dns(
        &self,
        req: BoxRequest,
        obs: &mut Observation,
        authority: Option<String>,
    ) -> Result<Response<Body>, ProxyError> {
        let (Some(dns), Some(authority)) = (&self.dns, authority) else {
            return Err(ProxyError::NotInMesh);
        };
        let parsed: http::uri::Authority = authority
            .parse()
            .map_err(|_| ProxyError::BadRequest("invalid authority"))?;
        let port = parsed.port_u16().unwrap_or(80);
        let host = parsed.host();
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>();
        let endpoints: Arc<[Arc<balance::Endpoint>]> = match literal {
            Ok(ip) => Arc::from([self.passthrough.get(SocketAddr::new(ip, port))]),
            Err(_) => dns.endpoints(host, port).await?,
        };
        let timeout = forward::grpc_timeout(req.headers()).or(self.request_timeout);
        let name: Arc<str> = Arc::from(host);
        let work = self.attempts(&name, &endpoints, None, req, obs, &authority, None);
        forward::within(timeout, work).await
    }

    /// The mesh endpoint for an opaque connection to `dst`: split and balance as for HTTP,
    /// over the most general rule. `None`: not in the mesh.
    async fn tcp_endpoint(&self, dst: &str) -> Option<Arc<crate::balance::Endpoint>> {
        let snapshot = self.dests.get(dst).await.ok()?;
        let Routes::InMesh { matches, rules } = &snapshot.routes else {
            return None;
        };
        let rule = rules.get(matches.last()?.rule)?;
        match &rule.split.pick()?.target {
            BackendTarget::Service { endpoints, .. } => balance::pick(endpoints).cloned(),
            BackendTarget::Failure { .. } => None,
        }
    }

    /// Opaque bytes to a mesh endpoint: over mTLS (ALPN `pillion.tcp/1`, then the application
    /// port in two bytes) when it is meshed and this proxy has an identity; as they are otherwise.
    async fn tcp_to_endpoint(&self, mut io: Box<dyn Io>, endpoint: &crate::balance::Endpoint) {
        let (Some(meshed), Some(config)) = (&endpoint.meshed, &self.tcp_tls) else {
            return forward::tcp(io, endpoint.addr, self.connect_timeout).await;
        };
        let server_name = pillion_proto::names::Identity::from_spiffe_id(&meshed.identity)
            .and_then(|id| rustls_pki_types::ServerName::try_from(id.dns_name()).ok());
        let Some(server_name) = server_name else {
            return;
        };
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(meshed.proxy_addr).await?;
            let _ = tcp.set_nodelay(true);
            let mut tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(server_name, tcp)
                .await?;
            tokio::io::AsyncWriteExt::write_all(&mut tls, &endpoint.addr.port().to_be_bytes())
                .await?;
            Ok::<_, std::io::Error>(tls)
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(mut upstream)) => {
                if let Err(e) = tokio::io::copy_bidirectional(&mut io, &mut upstream).await {
                    tracing::debug!(addr = %meshed.proxy_addr, error = %e, "opaque mTLS connection ended");
                }
            }
            Ok(Err(e)) => {
                tracing::info!(addr = %meshed.proxy_addr, error = %e, "opaque mTLS connect failed")
            }
            Err(_) => tracing::info!(addr = %meshed.proxy_addr, "opaque mTLS connect timed out"),
        }
    }
}

fn is_local(addr: SocketAddr) -> bool {
    addr.ip().is_loopback() || addr.ip().is_unspecified()
}

impl Handler for Outbound {
    fn direction(&self) -> Direction {
        Direction::outbound
    }

    #[allow(clippy::manual_async_fn)]
    fn http(
        self: Arc<Self>,
        mut req: BoxRequest,
        conn: Arc<ConnMeta>,
    ) -> impl std::future::Future<Output = Response<Body>> + Send {
        // Not an `async fn`: its state would hold each by-value argument twice (see `forward::forward`).
        async move {
            let grpc = is_grpc(req.headers());
            // Counted under the destination's name once routing finds it in the mesh; anything
            // else (made-up hosts, egress) under one `unknown` authority.
            let mut obs = Observation::new(Direction::outbound, Label::default());
            if self.access_log {
                obs.access = Some(forward::Access::of(&req, conn.peer));
            }
            if let Some(tracer) = &self.tracer
                && req.method() != http::Method::CONNECT
            {
                obs.span = tracer
                    .start(crate::telemetry::trace::Kind::Client, &mut req)
                    .map(|span| Box::new((tracer.clone(), span)));
            }
            let result = self.route(req, &conn, &mut obs).await;
            obs.finish(&self.metrics, result, grpc)
        }
    }

    async fn opaque(self: Arc<Self>, io: Box<dyn Io>, conn: ConnMeta) {
        if let Some(fqdn) = &conn.tunnel {
            match self.tcp_endpoint(fqdn).await {
                Some(endpoint) => self.tcp_to_endpoint(io, &endpoint).await,
                None => tracing::info!(%fqdn, "tunnel destination has no endpoint; closed"),
            }
            return;
        }
        let Some(dst) = conn.orig_dst else {
            tracing::info!(peer = %conn.peer, "opaque connection in explicit mode has no destination; closed");
            return;
        };
        if self.loops(&conn) {
            tracing::warn!(peer = %conn.peer, "opaque connection to the proxy itself refused");
            return;
        }
        match self.tcp_endpoint(&dst.to_string()).await {
            Some(endpoint) => self.tcp_to_endpoint(io, &endpoint).await,
            None => forward::tcp(io, dst, self.connect_timeout).await,
        }
    }
}
