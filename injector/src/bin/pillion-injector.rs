//! The admission webhook that injects the Pillion sidecar into pods.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use pillion_injector::{config::SidecarArgs, namespaces::Namespaces, tls, webhook};

#[derive(Parser)]
#[command(
    name = "pillion-injector",
    version,
    about = "Pillion's sidecar-injecting admission webhook (AdmissionReview v1 on POST /inject, over HTTPS)"
)]
struct Args {
    /// Address to serve HTTPS on.
    #[arg(long, env = "PILLION_INJECTOR_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// PEM certificate chain the API server sees; re-read when it changes.
    #[arg(
        long,
        env = "PILLION_INJECTOR_TLS_CERT",
        default_value = "/var/run/pillion/tls/tls.crt"
    )]
    tls_cert: PathBuf,
    /// PEM private key of that certificate; re-read when it changes.
    #[arg(
        long,
        env = "PILLION_INJECTOR_TLS_KEY",
        default_value = "/var/run/pillion/tls/tls.key"
    )]
    tls_key: PathBuf,
    #[command(flatten)]
    sidecar: SidecarArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Err(e) = pillion_core::logging::init_from_env("info") {
        eprintln!("pillion-injector: {e}");
        std::process::exit(2);
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let sidecar = args.sidecar.resolve().map_err(|e| anyhow::anyhow!("{e}"))?;
    let cert = tls::Reloading::start(args.tls_cert, args.tls_key)
        .map_err(|e| anyhow::anyhow!("serving certificate: {e}"))?;
    let tls = cert
        .server_config()
        .map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    let injector = Arc::new(webhook::Injector::new(sidecar, Namespaces::connect().await));
    tracing::info!(%addr, "injector listening");
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    webhook::serve(listener, tls, injector, shutdown).await;
    tracing::info!("injector stopped");
    Ok(())
}
