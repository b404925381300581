use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pillion",
    version,
    about = "Pillion service mesh",
    after_help = "Start here:\n  pillion demo                 a whole mesh on this machine, with a live view\n  pillion check ./mesh         validate configuration files (file:line for each problem)\n  pillion stat / pillion top   golden signals from the running proxies\n\nEvery flag can also be set by the PILLION_* variable its help names.\nExit status of data commands: 0 done, 1 problems found (refused, drift), 2 usage, 3 unreachable."
)]
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
    #[command(
        after_help = "Examples:\n  pillion control-plane --config-dir ./mesh\n  pillion control-plane --config-dir ./mesh --ca-dir ./ca --identity-tokens ./tokens\n  PILLION_SOURCE=kubernetes pillion control-plane     # inside a cluster\n\nSee docs/configuration.md for every setting."
    )]
    ControlPlane(pillion_control_plane::Args),
    /// Add the Pillion sidecar to workloads in YAML (as the admission webhook would).
    Inject(pillion::cmd::inject::InjectArgs),
    /// Releases run by the canary controller: status, promote, pause, resume, abort.
    Canary(pillion::cmd::canary::CanaryArgs),
    /// Validate mesh configuration files as the control plane would, with file:line for each
    /// problem.
    Check(pillion::cmd::check::CheckArgs),
    /// Drift between a directory of configuration, the control plane and every proxy.
    Diff(pillion::cmd::diff::DiffArgs),
    /// Golden signals per service and backend (rate, success, latency), read once from the
    /// proxies' admin ports.
    Stat(pillion::cmd::stat::StatArgs),
    /// The same as `stat`, redrawn every window until Ctrl-C.
    Top(pillion::cmd::stat::TopArgs),
    /// Run the demo's backend application alone (for benchmarks and manual tests).
    #[command(
        after_help = "Examples:\n  pillion demo-app --listen 127.0.0.1:9000 --app-version v2\n  curl http://127.0.0.1:9000/slow?ms=50\n\nOne port answers HTTP/1.1, h2c and gRPC (pillion.demo.v1.Echo); every answer says its version."
    )]
    DemoApp {
        /// Address to listen on.
        #[arg(
            long,
            env = "PILLION_DEMO_APP_LISTEN",
            default_value = "127.0.0.1:8080"
        )]
        listen: std::net::SocketAddr,
        /// The version it reports (`x-version` header, gRPC replies).
        #[arg(
            long = "app-version",
            env = "PILLION_DEMO_APP_VERSION",
            default_value = "v1"
        )]
        app_version: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => {
            // The demo shows the mesh's state itself; only errors (a refused file) are logged,
            // unless PILLION_LOG asks for more.
            init_logging("error");
            pillion::demo::run(args).await
        }
        Command::Inject(args) => std::process::exit(pillion::cmd::inject::run(args)),
        Command::Canary(args) => std::process::exit(pillion::cmd::canary::run(args).await),
        Command::Check(args) => std::process::exit(pillion::cmd::check::run(args)),
        Command::Stat(args) => std::process::exit(pillion::cmd::stat::stat(args).await),
        Command::Top(args) => std::process::exit(pillion::cmd::stat::top(args).await),
        Command::Diff(args) => std::process::exit(pillion::cmd::diff::run(args).await),
        Command::ControlPlane(args) => {
            init_logging("info");
            let (_cp, serve) = pillion_control_plane::ControlPlane::bind(args, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
            serve.await
        }
        Command::DemoApp {
            listen,
            app_version,
        } => {
            init_logging("info");
            let listener = tokio::net::TcpListener::bind(listen).await?;
            println!(
                "demo app {app_version} listening on {}",
                listener.local_addr()?
            );
            tokio::select! {
                _ = pillion::demo_app::serve(listener, app_version) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            Ok(())
        }
    }
}

/// Logs per `PILLION_LOG` / `PILLION_LOG_FORMAT`; a bad value stops the CLI, naming it.
fn init_logging(default: &str) {
    if let Err(e) = pillion_core::logging::init_from_env(default) {
        eprintln!("pillion: bad configuration: {e}");
        std::process::exit(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    /// Every option of every subcommand can be set from the environment (`PILLION_*`), for
    /// containers and CI, and every subcommand shows examples in its help.
    #[test]
    fn every_flag_has_an_environment_twin_and_every_command_examples() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.get_long().is_none() || id == "help" || id == "version" {
                    continue;
                }
                match arg.get_env().and_then(|e| e.to_str()) {
                    Some(env) if env.starts_with("PILLION_") => {}
                    _ => missing.push(format!("{path} --{}: no PILLION_* variable", id)),
                }
            }
            for sub in cmd.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                let examples = sub
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                if sub.get_subcommands().next().is_none()
                    && !examples.contains("Examples:")
                    && !path.starts_with("pillion canary ")
                {
                    missing.push(format!("{path}: no examples in --help"));
                }
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "pillion", &mut missing);
        assert!(missing.is_empty(), "{missing:#?}");
    }
}
