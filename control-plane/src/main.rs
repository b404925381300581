use clap::Parser;

/// jemalloc, with its background thread returning freed memory to the system (see
/// `pillion_core::memory`; `cargo bench -p pillion-control-plane --bench scale` measures it).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "pillion-control-plane",
    version,
    about = "Pillion control plane"
)]
struct Cli {
    #[command(flatten)]
    args: pillion_control_plane::Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Err(e) = pillion_core::logging::init_from_env("info") {
        eprintln!("pillion-control-plane: bad configuration: {e}");
        std::process::exit(2);
    }
    pillion_core::memory::return_freed_memory_in_background();
    let shutdown = async {
        shutdown_signal().await;
        tracing::info!("shutting down");
    };
    let (_cp, serve) = pillion_control_plane::ControlPlane::bind(cli.args, shutdown).await?;
    serve.await
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
