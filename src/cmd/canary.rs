//! `pillion canary`: the releases the control plane's canary controller runs, and the
//! operator's commands for them, over the control plane's admin port.

use std::time::Duration;

use serde_json::Value;

use super::Output;
use super::http_json::call;

/// Exit statuses.
const REFUSED: i32 = 1;
const USAGE: i32 = 2;
const UNREACHABLE: i32 = 3;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  pillion canary status\n  pillion canary status web -n shop --output json\n  pillion canary pause shop/web\n  pillion canary promote web\n  pillion canary abort web     # all traffic back to stable now\n\nExit status: 0 done, 1 the control plane refused (no such Canary, or the command does not\napply in its phase), 2 usage, 3 the control plane's admin port did not answer."
)]
pub struct CanaryArgs {
    #[command(subcommand)]
    action: Action,
    /// The control plane's admin address (`host:port`).
    #[arg(
        long,
        global = true,
        env = "PILLION_CONTROL_PLANE_ADMIN",
        default_value = "127.0.0.1:8087"
    )]
    admin: String,
    /// Namespace of a NAME given without one.
    #[arg(
        short = 'n',
        long,
        global = true,
        env = "PILLION_NAMESPACE",
        default_value = "default"
    )]
    namespace: String,
    /// Bearer token for commands, when the control plane requires one.
    #[arg(
        long,
        global = true,
        env = "PILLION_CONTROL_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// `table` for people, `json` for scripts.
    #[arg(
        long,
        short = 'o',
        global = true,
        env = "PILLION_OUTPUT",
        value_enum,
        default_value = "table"
    )]
    output: Output,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Every release (or one, with its events): phase, weight, last analysis.
    Status { name: Option<String> },
    /// All traffic to the candidate now.
    Promote { name: String },
    /// Stop the checks; traffic stays where it is.
    Pause { name: String },
    /// Continue a paused release, or start a rolled-back one again.
    Resume { name: String },
    /// All traffic back to stable now.
    Abort { name: String },
}

pub async fn run(args: CanaryArgs) -> i32 {
    let (method, name, command) = match &args.action {
        Action::Status { name } => (http::Method::GET, name.clone(), None),
        Action::Promote { name } => (http::Method::POST, Some(name.clone()), Some("promote")),
        Action::Pause { name } => (http::Method::POST, Some(name.clone()), Some("pause")),
        Action::Resume { name } => (http::Method::POST, Some(name.clone()), Some("resume")),
        Action::Abort { name } => (http::Method::POST, Some(name.clone()), Some("abort")),
    };
    let path = match &name {
        None => "/canaries".to_string(),
        Some(n) => {
            let (ns, name) = n.split_once('/').unwrap_or((&args.namespace, n));
            if ns.is_empty() || name.is_empty() || name.contains('/') {
                eprintln!("pillion canary: `{n}` is not NAME or NAMESPACE/NAME");
                return USAGE;
            }
            match command {
                Some(c) => format!("/canaries/{ns}/{name}/{c}"),
                None => format!("/canaries/{ns}/{name}"),
            }
        }
    };
    let timeout = Duration::from_secs(10);
    let (status, body) =
        match call(&args.admin, method, &path, args.token.as_deref(), timeout).await {
            Ok(answer) => answer,
            Err(e) => {
                eprintln!(
                    "pillion canary: the control plane's admin port at {} did not answer: {e}\n\
                 (set --admin or PILLION_CONTROL_PLANE_ADMIN; in Kubernetes, \
                 `kubectl -n pillion port-forward deploy/pillion-control-plane 8087`)",
                    args.admin
                );
                return UNREACHABLE;
            }
        };
    if !status.is_success() {
        let why = body["error"].as_str().unwrap_or("refused");
        eprintln!("pillion canary: {why}");
        return REFUSED;
    }
    if args.output == Output::Json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
        return 0;
    }
    match body.as_array() {
        Some(all) if all.is_empty() => crate::outln!("no Canary"),
        Some(all) => crate::out!("{}", table(all)),
        None => {
            crate::out!("{}", table(std::slice::from_ref(&body)));
            crate::outln!("\nevents:");
            for e in body["status"]["events"].as_array().into_iter().flatten() {
                crate::outln!(
                    "  {}  {}",
                    e["at"].as_str().unwrap_or_default(),
                    e["message"].as_str().unwrap_or_default()
                );
            }
        }
    }
    0
}

/// One line per release.
fn table(views: &[Value]) -> String {
    let mut rows = vec![[
        "CANARY".to_string(),
        "PHASE".into(),
        "WEIGHT".into(),
        "STRATEGY".into(),
        "CANDIDATE".into(),
        "SUCCESS".into(),
        "P99".into(),
        "REQUESTS".into(),
        "FAILED CHECKS".into(),
        "MESSAGE".into(),
    ]];
    for v in views {
        let s = &v["status"];
        let a = &s["lastAnalysis"];
        let weight = if s["abActive"].as_bool() == Some(true) {
            "A/B match".to_string()
        } else {
            format!("{}%", s["weight"].as_u64().unwrap_or(0))
        };
        rows.push([
            format!(
                "{}/{}",
                v["namespace"].as_str().unwrap_or_default(),
                v["name"].as_str().unwrap_or_default()
            ),
            s["phase"].as_str().unwrap_or_default().to_string(),
            weight,
            v["strategy"].as_str().unwrap_or_default().to_string(),
            v["candidate"].as_str().unwrap_or_default().to_string(),
            a["successRate"]
                .as_f64()
                .map_or("-".into(), |r| format!("{r:.2}%")),
            a["p99Ms"]
                .as_f64()
                .map_or("-".into(), |p| format!("{p:.1}ms")),
            a["requests"].as_u64().map_or("-".into(), |r| r.to_string()),
            s["failedChecks"].as_u64().unwrap_or(0).to_string(),
            s["message"].as_str().unwrap_or_default().to_string(),
        ]);
    }
    super::columns(&rows, usize::MAX)
}
