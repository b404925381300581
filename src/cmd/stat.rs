//! `pillion stat` and `pillion top`: live golden signals (request rate, success rate, latency
//! percentiles) per service and backend, read from the proxies' admin `/metrics`, like `linkerd
//! viz stat` without a metrics server. The proxies are the ones named, or every proxy the
//! control plane lists.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use pillion_core::golden::{self, LegKey, Totals};
use serde::Serialize;

use super::http_json::{get, get_text};
use super::{Output, OutputArg};

const UNREACHABLE: i32 = 3;
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  pillion stat                                  # every proxy the control plane lists\n  pillion stat --proxy 127.0.0.1:4191 web       # one proxy, rows about `web`\n  pillion stat --direction outbound -o json\n\nRates and percentiles are over the window (--window); `total` counts every response since each\nproxy started. Exit status: 0 figures printed, 2 usage, 3 no proxy answered."
)]
pub struct StatArgs {
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  pillion top\n  pillion top --proxy 127.0.0.1:4191 --window 5s\n  pillion top --iterations 3 -o json            # three JSON documents, one per window\n\nRedraws every window until Ctrl-C; when stdout is not a terminal, each window's table follows\nthe last one instead.\nExit status: 0 stopped, 2 usage, 3 no proxy answered."
)]
pub struct TopArgs {
    #[command(flatten)]
    common: Common,
    /// Stop after this many windows (0: until Ctrl-C).
    #[arg(long, env = "PILLION_TOP_ITERATIONS", default_value_t = 0)]
    iterations: u64,
}

#[derive(clap::Args)]
struct Common {
    /// Only rows whose authority or backend contains this text (`web`, `web.shop`).
    filter: Option<String>,
    /// A proxy's admin address (`host:port`); repeat for several. Without any, every proxy the
    /// control plane lists (--admin).
    #[arg(long = "proxy", env = "PILLION_PROXIES", value_delimiter = ',')]
    proxies: Vec<String>,
    /// The control plane's admin address, asked for its proxies when no --proxy is given.
    #[arg(
        long,
        env = "PILLION_CONTROL_PLANE_ADMIN",
        default_value = "127.0.0.1:8087"
    )]
    admin: String,
    /// How long rates and percentiles are measured over.
    #[arg(long, env = "PILLION_STAT_WINDOW", default_value = "2s", value_parser = window)]
    window: Duration,
    /// Which traffic: what the workloads called (outbound), what they served (inbound), or
    /// both.
    #[arg(
        long,
        env = "PILLION_STAT_DIRECTION",
        value_enum,
        default_value = "all"
    )]
    direction: Direction,
    #[command(flatten)]
    output: OutputArg,
}

fn window(s: &str) -> Result<Duration, String> {
    match pillion_core::duration::parse(s)? {
        d if d < Duration::from_millis(100) => Err(format!("`{s}` is shorter than 100ms")),
        d => Ok(d),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Direction {
    Outbound,
    Inbound,
    All,
}

/// One row: a leg added up over every proxy that has it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    direction: String,
    authority: String,
    backend: String,
    routes: Vec<String>,
    /// Proxies that report this leg.
    proxies: usize,
    /// Responses in the window, and per second.
    requests: u64,
    rps: f64,
    /// Share of the window's responses that did not fail (`None`: no responses).
    success_rate: Option<f64>,
    latency_ms_p50: Option<f64>,
    latency_ms_p95: Option<f64>,
    latency_ms_p99: Option<f64>,
    /// Responses since each proxy started, and failures among them.
    total: u64,
    total_failures: u64,
}

/// One proxy's legs at one moment.
struct Scrape {
    proxy: String,
    legs: BTreeMap<LegKey, golden::Leg>,
}

pub async fn stat(args: StatArgs) -> i32 {
    run(args.common, 1).await
}

pub async fn top(args: TopArgs) -> i32 {
    run(args.common, args.iterations).await
}

async fn run(args: Common, iterations: u64) -> i32 {
    let targets = match targets(&args).await {
        Ok(t) if t.is_empty() => {
            eprintln!(
                "pillion: the control plane at {} lists no proxies (none has reported yet?); \
                 name one with --proxy",
                args.admin
            );
            return UNREACHABLE;
        }
        Ok(t) => t,
        Err(e) => {
            eprintln!("pillion: {e}");
            return UNREACHABLE;
        }
    };
    let live = iterations != 1 && std::io::stdout().is_terminal();
    let mut before = scrape_all(&targets).await;
    if before.is_empty() {
        eprintln!(
            "pillion: no proxy answered on its admin port ({})",
            targets.join(", ")
        );
        return UNREACHABLE;
    }
    let mut at = Instant::now();
    let mut done = 0;
    loop {
        if std::io::stderr().is_terminal() && !live && done == 0 {
            eprintln!("measuring for {}...", humantime(args.window));
        }
        tokio::select! {
            _ = tokio::time::sleep(args.window) => {}
            _ = tokio::signal::ctrl_c() => return 0,
        }
        let after = scrape_all(&targets).await;
        let elapsed = at.elapsed();
        at = Instant::now();
        let rows = rows(&before, &after, elapsed, &args);
        if live {
            // Home and clear: one screen, redrawn.
            crate::out!("\x1b[H\x1b[2J");
        }
        match args.output.output {
            Output::Json => crate::outln!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "windowSeconds": elapsed.as_secs_f64(),
                    "proxies": after.len(),
                    "rows": rows,
                }))
                .unwrap_or_default()
            ),
            Output::Table => crate::out!("{}", table(&rows, after.len(), elapsed)),
        }
        before = after;
        done += 1;
        if iterations != 0 && done >= iterations {
            return 0;
        }
    }
}

/// The admin addresses to read: the ones named, or the control plane's list.
async fn targets(args: &Common) -> Result<Vec<String>, String> {
    if !args.proxies.is_empty() {
        return Ok(args.proxies.clone());
    }
    let proxies = get(&args.admin, "/proxies", Duration::from_secs(10))
        .await
        .map_err(|e| {
            format!(
                "the control plane's admin port at {} did not answer: {e}\n(name proxies with \
                 --proxy, or set --admin / PILLION_CONTROL_PLANE_ADMIN)",
                args.admin
            )
        })?;
    Ok(proxies
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["adminAddress"].as_str())
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect())
}

/// Every target's legs, read at once; a proxy that does not answer is named on stderr and
/// left out.
async fn scrape_all(targets: &[String]) -> Vec<Scrape> {
    let reads = targets.iter().map(|proxy| async move {
        match get_text(proxy, "/metrics", SCRAPE_TIMEOUT).await {
            Ok(text) => Some(Scrape {
                proxy: proxy.clone(),
                legs: golden::legs(&text),
            }),
            Err(e) => {
                eprintln!("pillion: proxy {proxy}: /metrics did not answer: {e}");
                None
            }
        }
    });
    futures_util::future::join_all(reads)
        .await
        .into_iter()
        .flatten()
        .collect()
}

fn rows(before: &[Scrape], after: &[Scrape], elapsed: Duration, args: &Common) -> Vec<Row> {
    struct Sum {
        window: Totals,
        total: Totals,
        routes: BTreeSet<String>,
        proxies: usize,
    }
    let mut sums: BTreeMap<LegKey, Sum> = BTreeMap::new();
    for scrape in after {
        let earlier = before.iter().find(|b| b.proxy == scrape.proxy);
        for (key, leg) in &scrape.legs {
            let wanted = match args.direction {
                Direction::All => true,
                Direction::Outbound => key.direction == "outbound",
                Direction::Inbound => key.direction == "inbound",
            };
            let matches = args
                .filter
                .as_deref()
                .is_none_or(|f| key.authority.contains(f) || key.backend.contains(f));
            if !wanted || !matches {
                continue;
            }
            // A proxy new since the last read (or restarted) counts from zero.
            let window = match earlier.and_then(|e| e.legs.get(key)) {
                Some(old) => leg.totals.since(&old.totals),
                None => leg.totals.clone(),
            };
            let sum = sums.entry(key.clone()).or_insert_with(|| Sum {
                window: Totals::default(),
                total: Totals::default(),
                routes: BTreeSet::new(),
                proxies: 0,
            });
            let t = &leg.totals;
            sum.total.add(t.responses, t.failures, &t.bounds, &t.counts);
            sum.window.add(
                window.responses,
                window.failures,
                &window.bounds,
                &window.counts,
            );
            sum.routes.extend(leg.routes.iter().cloned());
            sum.proxies += 1;
        }
    }
    let secs = elapsed.as_secs_f64().max(1e-3);
    let ms = |q: f64, t: &Totals| t.latency_quantile(q).map(|s| s * 1000.0);
    sums.into_iter()
        .map(|(key, s)| Row {
            direction: key.direction,
            authority: key.authority,
            backend: key.backend,
            routes: s.routes.into_iter().collect(),
            proxies: s.proxies,
            requests: s.window.responses,
            rps: s.window.responses as f64 / secs,
            success_rate: s.window.success_rate(),
            latency_ms_p50: ms(0.5, &s.window),
            latency_ms_p95: ms(0.95, &s.window),
            latency_ms_p99: ms(0.99, &s.window),
            total: s.total.responses,
            total_failures: s.total.failures,
        })
        .collect()
}

/// `web.default.svc.cluster.local:80` → `web.default:80`: the cluster domain says nothing here.
fn short(name: &str) -> String {
    name.replace(
        &format!(".svc.{}", pillion_proto::names::CLUSTER_DOMAIN),
        "",
    )
}

fn table(rows: &[Row], proxies: usize, elapsed: Duration) -> String {
    let mut lines = vec![[
        "DIRECTION".to_string(),
        "AUTHORITY".into(),
        "ROUTE".into(),
        "BACKEND".into(),
        "RPS".into(),
        "SUCCESS".into(),
        "P50".into(),
        "P95".into(),
        "P99".into(),
        "TOTAL".into(),
    ]];
    let latency = |v: Option<f64>| v.map_or("-".to_string(), |ms| format!("{ms:.1}ms"));
    for r in rows {
        lines.push([
            r.direction.clone(),
            short(&r.authority),
            if r.routes.is_empty() {
                "-".into()
            } else {
                r.routes.join(",")
            },
            if r.backend.is_empty() {
                "-".into()
            } else {
                short(&r.backend)
            },
            format!("{:.1}", r.rps),
            r.success_rate
                .map_or("-".to_string(), |s| format!("{:.2}%", s * 100.0)),
            latency(r.latency_ms_p50),
            latency(r.latency_ms_p95),
            latency(r.latency_ms_p99),
            r.total.to_string(),
        ]);
    }
    let mut out = super::columns(&lines, 4);
    if rows.is_empty() {
        out.push_str("(no requests through these proxies yet)\n");
    }
    out.push_str(&format!(
        "{proxies} prox{} over {}\n",
        if proxies == 1 { "y" } else { "ies" },
        humantime(elapsed)
    ));
    out
}

fn humantime(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
