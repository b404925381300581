use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "pillion", version, about = "Pillion service mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole mesh on this machine: control plane, proxies, two versions of a service,
    /// and a request loop that shows the live traffic split.
    Demo(pillion::demo::DemoArgs),
    /// Run the control plane in this process (the same as `pillion-control-plane`).
    ControlPlane(pillion_control_plane::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => {
            // The demo prints its own view; keep the mesh's logs to warnings unless asked.
            init_logging("warn");
            pillion::demo::run(args).await
        }
        Command::ControlPlane(args) => {
            init_logging("info");
            let (_cp, serve) = pillion_control_plane::ControlPlane::bind(args, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
            serve.await
        }
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PILLION_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
