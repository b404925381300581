use pillion_proxy::{Config, Proxy, config::ProcessEnv};

#[tokio::main]
async fn main() {
    pillion_proxy::init_logging();
    let config = match Config::from_env(&ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pillion-proxy: bad configuration: {e}");
            std::process::exit(2);
        }
    };
    let (proxy, run) = match Proxy::bind(config).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pillion-proxy: {e:#}");
            std::process::exit(1);
        }
    };
    let run = tokio::spawn(run);
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pillion-proxy: cannot watch SIGTERM: {e}");
            std::process::exit(1);
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down gracefully"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down gracefully"),
        _ = wait_for_admin_shutdown(&proxy) => {}
    }
    proxy.shutdown();
    if let Err(e) = run.await {
        eprintln!("pillion-proxy: {e}");
        std::process::exit(1);
    }
}

/// Returns when a shutdown was asked for on the admin port.
async fn wait_for_admin_shutdown(proxy: &Proxy) {
    proxy.shutdown_requested().await
}
