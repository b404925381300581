//! Pillion's sidecar proxy.
//!
//! ```text
//! app ─▶ outbound listener ─▶ detect ─▶ route ─▶ split ─▶ balance ─▶ endpoint ─▶ peer proxy
//! peer ─▶ inbound listener ─▶ detect ─▶ local application
//! ```

//! Modules by layer (each depends only on those after it):
//! `inbound`, `outbound`, `listener` (wiring) → `control`, `route` (what the control plane says)
//! → `balance`, `http` (mechanisms) → `transport`, `identity`, `telemetry`.

pub mod admin;
pub mod balance;
pub mod config;
pub mod control;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod listener;
pub mod outbound;
pub mod route;
pub mod runtime;
pub mod telemetry;
pub mod transport;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::Config;

use control::{discovery, policy};
use http::{app_protocol, pool};

use telemetry::metrics;

/// A bound proxy: its addresses, and the switch that starts a graceful shutdown.
pub struct Proxy {
    pub outbound_addr: SocketAddr,
    pub inbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: Arc<watch::Sender<bool>>,
}

impl Proxy {
    /// Stops accepting; in-flight requests finish within the grace period.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Resolves once a shutdown has started (from `/shutdown` or [`Proxy::shutdown`]).
    pub async fn shutdown_requested(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Binds every listener (so that a bad address fails at start), then returns the future
    /// that runs the proxy until a shutdown completes.
    pub async fn bind(
        config: Config,
    ) -> anyhow::Result<(Proxy, impl std::future::Future<Output = ()> + Send)> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot bind the {what} listener on {addr}: {e}"))
        };
        let outbound = bind(config.outbound_listen, "outbound").await?;
        let inbound = bind(config.inbound_listen, "inbound").await?;
        let admin = bind(config.admin_listen, "admin").await?;
        let (outbound_addr, inbound_addr, admin_addr) = (
            outbound.local_addr()?,
            inbound.local_addr()?,
            admin.local_addr()?,
        );

        let metrics = Arc::new(metrics::Metrics::new());
        let tracer = config.zipkin_url.clone().map(|url| {
            let exporter = telemetry::trace::zipkin::Exporter::spawn(
                url,
                metrics.spans_sent.clone(),
                metrics.spans_dropped.clone(),
            );
            Arc::new(telemetry::trace::Tracer::new(
                config.trace_sample_rate,
                &config.service_name,
                exporter,
            ))
        });
        let identity = match config.identity.clone() {
            Some(settings) => Some(identity::LocalIdentity::new(settings)?),
            None => None,
        };
        let cp_tls = |wait: bool| -> anyhow::Result<Option<discovery::ControlPlaneTls>> {
            let (Some(cp_id), Some(local)) = (&config.control_plane_identity, &identity) else {
                return Ok(None);
            };
            Ok(Some(discovery::ControlPlaneTls {
                config: local.client_config.clone(),
                server_name: rustls_pki_types::ServerName::try_from(cp_id.dns_name())?,
                wait_for: wait.then(|| local.clone()),
            }))
        };
        // Discovery and policy wait for our certificate (so the control plane knows who asks);
        // the identity channel that obtains it cannot.
        let channel = discovery::control_plane_channel(&config.control_plane_addr, cp_tls(true)?)?;
        let bootstrap =
            discovery::control_plane_channel(&config.control_plane_addr, cp_tls(false)?)?;
        let dests = discovery::Destinations::new(
            channel.clone(),
            config.namespace.clone(),
            config.workload.clone(),
            config.connect_timeout,
            config.discovery_timeout,
            metrics.clone(),
            identity.as_ref().map(|i| pool::MeshTls {
                h2: i.client_config.clone(),
                h1: i.client_config_with_alpn(identity::ALPN_HTTP1),
            }),
        );
        dests.set_max_watches(config.max_destinations);
        balance::outlier::configure(config.outlier);
        let policies = match &identity {
            Some(i) => policy::Policies::watch(
                channel.clone(),
                i.spiffe_id.to_string(),
                config.workload.clone(),
                config.inbound_policy,
            ),
            None => policy::Policies::fixed(config.inbound_policy),
        };
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shutdown_tx = Arc::new(shutdown_tx);
        pool::use_h2_crate(config.limits.server == http::h2_server::Implementation::H2);
        let listener_cfg = Arc::new(listener::ListenerConfig {
            detect_timeout: config.detect_timeout,
            opaque_ports: config.opaque_ports.clone(),
            max_connections: config.max_connections,
            idle_timeout: config.idle_timeout,
            limits: config.limits,
        });
        let tracker = listener::Tracker::default();

        let dns = match &config.dns {
            None => None,
            Some(servers) => Some(Arc::new(
                control::dns::Dns::new(servers, config.connect_timeout, config.discovery_timeout)
                    .map_err(anyhow::Error::msg)?,
            )),
        };
        let (tunnel_tx, mut tunnel_rx) = tokio::sync::mpsc::unbounded_channel();
        let out_handler = Arc::new(outbound::Outbound {
            tunnels: tunnel_tx,
            dests: dests.clone(),
            metrics: metrics.clone(),
            namespace: config.namespace.clone(),
            passthrough: balance::EndpointCache::new(config.connect_timeout),
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            max_requests_per_endpoint: config.max_requests_per_endpoint,
            dns,
            access_log: config.access_log,
            tracer: tracer.clone(),
            own_ports: vec![outbound_addr.port(), inbound_addr.port(), admin_addr.port()],
            identity: identity.clone(),
            discovery_timeout: config.discovery_timeout,
            tcp_tls: identity
                .as_ref()
                .map(|i| i.client_config_with_alpn(identity::ALPN_TCP)),
        });
        let in_handler = Arc::new(inbound::Inbound {
            forward_to: config.inbound_forward,
            app: balance::EndpointCache::new(config.connect_timeout),
            app_protocols: app_protocol::AppProtocols::default(),
            metrics: metrics.clone(),
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            access_log: config.access_log,
            tracer,
            identity: identity.clone(),
            policies: policies.clone(),
        });
        let admin_srv = Arc::new(admin::Admin {
            metrics: metrics.clone(),
            dests: dests.clone(),
            shutdown: shutdown_tx.clone(),
            workload: config.workload.clone(),
            identity: identity.clone(),
            policies,
        });
        let identity_name = identity.as_ref().map(|i| i.spiffe_id.to_string());
        tracing::info!(%outbound_addr, %inbound_addr, %admin_addr, control_plane = %config.control_plane_addr, workload = %config.workload, identity = identity_name.as_deref().unwrap_or("none (no mTLS)"), "proxy listening");

        let grace = config.shutdown_grace;
        let mut done_rx = shutdown_rx.clone();
        let run = async move {
            let mut background = vec![
                tokio::spawn(dests.clone().probe()),
                tokio::spawn(dests.clone().sweep()),
                tokio::spawn(admin_srv.serve(admin)),
            ];
            if let Some(interval) = config.report_interval {
                let reporter = control::report::Reporter {
                    channel: channel.clone(),
                    metrics: metrics.clone(),
                    dests: dests.clone(),
                    workload: config.workload.clone(),
                    namespace: config.namespace.clone(),
                    admin: config.admin_advertise.unwrap_or(admin_addr),
                    interval,
                };
                background.push(tokio::spawn(reporter.run()));
            }
            if let Some(identity) = identity {
                let expiry = metrics.certificate_expiry.clone();
                background.push(tokio::spawn(identity.run(bootstrap, expiry)));
            }
            // CONNECT tunnels accepted by the outbound handler, each served as a connection.
            let (handler, cfg, stop) = (
                out_handler.clone(),
                listener_cfg.clone(),
                shutdown_rx.clone(),
            );
            background.push(tokio::spawn(async move {
                while let Some((io, conn)) = tunnel_rx.recv().await {
                    tokio::spawn(listener::serve_tunnel(
                        io,
                        handler.clone(),
                        conn,
                        cfg.clone(),
                        stop.clone(),
                    ));
                }
            }));
            let out = tokio::spawn(listener::serve(
                outbound,
                out_handler,
                listener_cfg.clone(),
                metrics.clone(),
                tracker.clone(),
                shutdown_rx.clone(),
            ));
            let inb = tokio::spawn(listener::serve(
                inbound,
                in_handler,
                listener_cfg,
                metrics,
                tracker.clone(),
                shutdown_rx,
            ));
            let _ = done_rx.wait_for(|s| *s).await;
            let _ = tokio::join!(out, inb);
            let open = tracker.count();
            tracing::info!(
                open,
                grace_secs = grace.as_secs(),
                "stopped accepting; waiting for open connections"
            );
            if tokio::time::timeout(grace, tracker.idle()).await.is_err() {
                tracing::warn!(
                    open = tracker.count(),
                    "grace period over; closing what is left"
                );
            }
            for task in background {
                task.abort();
            }
            tracing::info!("proxy stopped");
        };
        Ok((
            Proxy {
                outbound_addr,
                inbound_addr,
                admin_addr,
                shutdown: shutdown_tx,
            },
            run,
        ))
    }
}
