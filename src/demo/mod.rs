//! `pillion demo`: a whole mesh in this one process, on loopback ports the OS picks.
//!
//! A control plane reads `examples/demo` (copied into a work directory the user can edit); two
//! versions of an HTTP service (`web`, split by a TrafficSplit) and of a gRPC service (`echo`,
//! released by a Canary) run behind their own proxies, with mTLS between all proxies; a client
//! proxy carries a steady loop of requests; spans go to a collector of the demo's own. A live
//! view shows what the mesh does while the user edits its configuration.

mod collector;
mod mesh;
mod traffic;
mod view;

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

pub use mesh::{DemoEndpoint, endpoints_yaml};

use crate::cmd::{Output, OutputArg};

const FILES: [(&str, &str); 3] = [
    (
        "services.yaml",
        include_str!("../../examples/demo/services.yaml"),
    ),
    (
        "traffic-split.yaml",
        include_str!("../../examples/demo/traffic-split.yaml"),
    ),
    (
        "canary.yaml",
        include_str!("../../examples/demo/canary.yaml"),
    ),
];
/// How often the live view redraws (plain lines: every other time).
const REDRAW: Duration = Duration::from_secs(1);

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  pillion demo                          # live view until Ctrl-C\n  pillion demo --dir ./mesh             # keep the configuration (and the release) in ./mesh\n  pillion demo --duration 10s --no-tui --output json   # headless: a JSON summary at the end\n\nExit status: 0 stopped (Ctrl-C, SIGTERM or --duration), 1 the mesh could not start, 2 usage."
)]
pub struct DemoArgs {
    /// Work directory for the demo's configuration (default: a new temporary directory,
    /// removed at the end).
    #[arg(long, env = "PILLION_DEMO_DIR")]
    pub dir: Option<PathBuf>,
    /// Stop after this long (for example `30s`); runs until Ctrl-C when absent.
    #[arg(long, env = "PILLION_DEMO_DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Pause between requests of each traffic loop (HTTP and gRPC).
    #[arg(long, env = "PILLION_DEMO_INTERVAL", default_value = "50ms", value_parser = positive_duration)]
    pub interval: Duration,
    /// Run the proxies without identities: plaintext between them.
    #[arg(long, env = "PILLION_DEMO_NO_MTLS")]
    pub no_mtls: bool,
    /// Also send every span to this Zipkin collector (`http://localhost:9411/api/v2/spans`).
    #[arg(long, env = "PILLION_ZIPKIN_URL")]
    pub zipkin_url: Option<String>,
    /// Plain lines every few seconds instead of a redrawn screen (the default when stdout is
    /// not a terminal).
    #[arg(long, env = "PILLION_DEMO_NO_TUI")]
    pub no_tui: bool,
    #[command(flatten)]
    pub output: OutputArg,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    pillion_core::duration::parse(s)
}

/// A duration that must be more than zero (a zero interval would spin, or panic a timer).
fn positive_duration(s: &str) -> Result<Duration, String> {
    match pillion_core::duration::parse(s)? {
        d if d.is_zero() => Err(format!("`{s}` must be more than zero")),
        d => Ok(d),
    }
}

fn prepare_dir(dir: Option<PathBuf>) -> anyhow::Result<(PathBuf, bool)> {
    let (dir, temporary) = match dir {
        Some(d) => (d, false),
        None => (
            std::env::temp_dir().join(format!("pillion-demo-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text) in FILES {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok((dir, temporary))
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    // Ctrl-C, SIGTERM and SIGHUP (a closed terminal) all stop the demo the same way, so that
    // its temporary directory, CA keys included, is always removed. Installed first: a signal
    // that comes while the mesh starts waits for the loop below instead of killing the process.
    let mut stop = StopSignals::install()?;
    let (dir, temporary) = prepare_dir(args.dir.clone())?;
    let result = run_in(&dir, &args, &mut stop).await;
    if temporary {
        remove_dir(&dir);
    }
    result
}

async fn run_in(dir: &Path, args: &DemoArgs, stop: &mut StopSignals) -> anyhow::Result<()> {
    let (duration, interval, mtls) = (args.duration, args.interval, !args.no_mtls);
    let zipkin_url = args.zipkin_url.clone();
    let json = args.output.output == Output::Json;
    // Progress and the live view go to stdout, or to stderr when stdout carries the JSON.
    let say = |text: &str| {
        if json {
            eprint!("{text}");
        } else {
            crate::out!("{text}");
        }
    };
    let tty = if json {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    let live = tty && !args.no_tui;
    say("Starting the demo mesh (control plane, 5 proxies, 4 apps, span collector)...\n");
    let collector = collector::Collector::start(zipkin_url.clone()).await?;
    let mut mesh = mesh::Mesh::start(dir, mtls, &collector.url).await?;
    let outbound = mesh.client.outbound_addr;
    let mut banner = format!(
        "Pillion demo: control plane {} (admin http://{}), client proxy outbound {outbound} (admin http://{}/metrics)\n",
        mesh.cp_addr, mesh.cp_admin, mesh.client.admin_addr
    );
    for (service, version, p) in &mesh.servers {
        banner.push_str(&format!(
            "  {service}-{version} proxy: inbound {}, admin http://{}\n",
            p.inbound_addr, p.admin_addr
        ));
    }
    banner.push_str(&format!(
        "Try it:  curl -H 'Host: web' http://{outbound}/    pillion stat --admin {}\n",
        mesh.cp_admin
    ));
    if let Some(url) = &zipkin_url {
        banner.push_str(&format!("Spans also go to {url}\n"));
    }
    if !live {
        say(&banner);
        say(&format!(
            "To shift traffic, edit the weights in:\n  {}\nCtrl-C stops everything.\n",
            dir.join("traffic-split.yaml").display()
        ));
    }
    let traffic = traffic::start(outbound, interval)?;
    let mut sampler = view::Sampler::new(
        mesh.cp_admin.to_string(),
        mesh.client.admin_addr.to_string(),
        dir.display().to_string(),
        mtls,
    );
    let started = Instant::now();
    let mut ticker = tokio::time::interval(REDRAW);
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = stop.recv() => break,
            _ = ticker.tick() => {}
        }
        if duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        ticks += 1;
        if live {
            let snapshot = sampler.sample(&traffic, &collector).await;
            // Home and clear, then the whole screen: one redraw per second.
            say(&format!(
                "\x1b[H\x1b[2J{}",
                view::screen(&snapshot, banner.trim_end())
            ));
        } else if ticks.is_multiple_of(2) {
            let snapshot = sampler.sample(&traffic, &collector).await;
            say(&view::lines(&snapshot));
        }
    }
    // The summary covers the whole run; taken before anything stops.
    let summary = sampler.sample(&traffic, &collector).await;
    drop(traffic);
    let sent: u64 = summary.services.iter().map(|s| s.client.sent).sum();
    let failed: u64 = summary.services.iter().map(|s| s.client.failed).sum();
    if json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    } else {
        if live {
            say(&view::screen(&summary, banner.trim_end()));
        }
        say(&format!("\nStopping: {sent} requests, {failed} errors.\n"));
    }
    mesh.shutdown();
    Ok(())
}

/// Ctrl-C, SIGTERM and SIGHUP, listened for from the moment they are installed.
struct StopSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        eprintln!("could not remove {}: {e}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With no TrafficSplit (`traffic-split.yaml` deleted), `web` is served by both versions;
    /// the demo's configuration has no refusal and no warning once endpoints are written.
    #[test]
    fn the_demo_configuration_is_clean_and_web_has_endpoints_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in FILES {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let mut yaml = String::new();
        for (service, port, _) in mesh::SERVICES {
            let id = mesh::identity_of(service);
            let endpoints = [
                DemoEndpoint {
                    version: "v1",
                    addr: "127.0.0.1:1001".parse().unwrap(),
                    meshed: Some((&id, 2001)),
                },
                DemoEndpoint {
                    version: "v2",
                    addr: "127.0.0.1:1002".parse().unwrap(),
                    meshed: Some((&id, 2002)),
                },
            ];
            yaml.push_str(&mesh::slices_yaml(service, port, &endpoints, true));
        }
        std::fs::write(dir.path().join("endpoints.yaml"), yaml).unwrap();
        std::fs::remove_file(dir.path().join("traffic-split.yaml")).unwrap();
        let mut store = pillion_control_plane::source::files::Store::new(dir.path());
        store.scan().unwrap();
        assert!(store.errors().is_empty(), "{:?}", store.errors());
        let model = pillion_control_plane::model::Model::new(store.objects(), 1);
        assert!(model.warnings().is_empty(), "{:?}", model.warnings());
        let state = model.resolve("web", "default");
        let text = format!("{state:?}");
        assert!(
            text.contains("127.0.0.1:1001") && text.contains("127.0.0.1:1002"),
            "{text}"
        );
    }
}
