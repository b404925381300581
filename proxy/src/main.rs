use pillion_proxy::{Config, Proxy, config::ProcessEnv};

/// jemalloc, with its background thread returning freed memory to the system (see
/// `pillion_core::memory`; `python3 benches/idle_connections.py` measures it).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const USAGE: &str = "\
pillion-proxy: Pillion's sidecar proxy.

Usage: pillion-proxy [--help | --version]

It takes no other arguments: as a sidecar it is configured by PILLION_* environment
variables only (docs/configuration.md lists them all). The one required is
PILLION_CONTROL_PLANE_ADDR (host:port of the control plane). Often set too:
  PILLION_WORKLOAD                namespace/name of this workload (default default/unknown)
  PILLION_OUTBOUND_LISTEN         where the application's requests arrive (127.0.0.1:4140)
  PILLION_INBOUND_LISTEN          where the mesh's requests arrive (0.0.0.0:4143)
  PILLION_ADMIN_LISTEN            /metrics, /live, /ready, /config (0.0.0.0:4191)
  PILLION_INBOUND_FORWARD         the local application (default 127.0.0.1:<original port>)
  PILLION_REQUEST_TIMEOUT         wait for response headers at most this long (30s; 0: none)
  PILLION_TRUST_ANCHORS, PILLION_IDENTITY_TOKEN_FILE   mTLS identity
  PILLION_ZIPKIN_URL              send spans to this Zipkin collector (http://.../api/v2/spans)
  PILLION_LOG, PILLION_LOG_FORMAT log filter (info) and format (text or json)
";

fn main() {
    let mut args = std::env::args().skip(1);
    if let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return;
            }
            "-V" | "--version" => {
                println!("pillion-proxy {}", env!("CARGO_PKG_VERSION"));
                return;
            }
            other => {
                eprintln!("pillion-proxy: unexpected argument `{other}`\n\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    let cores = match pillion_proxy::config::runtime_cores(&ProcessEnv) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("pillion-proxy: bad configuration: {e}");
            std::process::exit(2);
        }
    };
    let busy_poll = match pillion_proxy::config::busy_poll(&ProcessEnv) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("pillion-proxy: bad configuration: {e}");
            std::process::exit(2);
        }
    };
    let runtime = pillion_proxy::runtime::build(cores, busy_poll);
    match runtime {
        Ok(rt) => rt.block_on(run(cores)),
        Err(e) => {
            eprintln!("pillion-proxy: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    }
}

async fn run(cores: usize) {
    if let Err(e) = pillion_core::logging::init_from_env("info") {
        eprintln!("pillion-proxy: bad configuration: {e}");
        std::process::exit(2);
    }
    let runtime = if cores == 1 {
        "single-threaded"
    } else {
        "multi-threaded"
    };
    tracing::info!(cores, runtime, "runtime started");
    pillion_core::memory::return_freed_memory_in_background();
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
