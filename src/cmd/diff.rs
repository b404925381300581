//! `pillion diff`: drift between what a directory declares (a git checkout), what the control
//! plane serves, and what each proxy runs. For GitOps alerting from CI or cron: exit status 1
//! when anything differs.
//!
//! A destination's state has a version (the hash of its content, as the control plane sends
//! it). The directory is read exactly as the control plane reads one, so the same objects give
//! the same version; each proxy's versions come from its admin `/config` (or, when its admin
//! port does not answer, from its last report to the control plane).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use pillion_control_plane::api::discovery;
use pillion_control_plane::model::{Model, parse_authority};
use pillion_control_plane::source::files::Store;
use serde::Serialize;
use serde_json::Value;

use super::http_json::get;
use super::{Output, OutputArg};

const REFUSED: i32 = 1;
const USAGE: i32 = 2;
const UNREACHABLE: i32 = 3;
/// A proxy's admin port that does not answer in this long is read from its report instead.
const PROXY_TIMEOUT: Duration = Duration::from_secs(2);
/// Drift seen once is looked at again after this long: an update may have been on its way.
const SETTLE: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  pillion diff --config-dir ./mesh\n  pillion diff --config-dir . --admin pillion-cp:8087 --output json\n\nExit status: 0 everything in step, 1 drift (or a file the control plane would refuse),\n2 usage, 3 the control plane's admin port did not answer."
)]
pub struct DiffArgs {
    /// The directory of mesh configuration (YAML), as the control plane would read it.
    #[arg(long, env = "PILLION_CONFIG_DIR")]
    config_dir: PathBuf,
    /// The control plane's admin address (`host:port`).
    #[arg(
        long,
        env = "PILLION_CONTROL_PLANE_ADMIN",
        default_value = "127.0.0.1:8087"
    )]
    admin: String,
    #[command(flatten)]
    output: OutputArg,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Finding {
    /// `directory` (declared ≠ served), `proxy` (runs ≠ served), `file` (refused),
    /// `canary` (a release drives it: not drift).
    kind: &'static str,
    authority: Option<String>,
    proxy: Option<String>,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    declared: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    served: Option<Value>,
}

pub async fn run(args: DiffArgs) -> i32 {
    let mut store = Store::new(&args.config_dir);
    if let Err(e) = store.scan() {
        eprintln!(
            "pillion diff: cannot read {}: {e}",
            args.config_dir.display()
        );
        return USAGE;
    }
    let declared = Model::new(store.objects(), 0);
    let mut findings: Vec<Finding> = store
        .errors()
        .into_iter()
        .map(|e| Finding {
            kind: "file",
            authority: None,
            proxy: None,
            message: format!("{e} (the control plane keeps the last good version)"),
            declared: None,
            served: None,
        })
        .collect();
    let cp = match Served::fetch(&args.admin).await {
        Ok(cp) => cp,
        Err(e) => {
            eprintln!(
                "pillion diff: the control plane's admin port at {} did not answer: {e}\n\
                 (set --admin or PILLION_CONTROL_PLANE_ADMIN)",
                args.admin
            );
            return UNREACHABLE;
        }
    };
    let mut first = compare(&declared, &cp, &args.admin).await;
    if first.iter().any(|f| f.kind == "proxy") {
        // An update may have been on its way: only what is still behind counts.
        tokio::time::sleep(SETTLE).await;
        let again = compare(&declared, &cp, &args.admin).await;
        first.retain(|f| {
            f.kind != "proxy"
                || again
                    .iter()
                    .any(|g| g.kind == "proxy" && g.proxy == f.proxy && g.authority == f.authority)
        });
    }
    findings.extend(first);
    let drift = findings.iter().any(|f| f.kind != "canary");
    match args.output.output {
        Output::Json => crate::outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "drift": drift,
                "destinations": cp.authorities.len(),
                "proxies": cp.proxies.len(),
                "findings": findings,
            }))
            .unwrap_or_default()
        ),
        Output::Table => {
            for f in &findings {
                crate::outln!("{:<9}  {}", f.kind.to_uppercase(), f.message);
            }
            if !drift {
                crate::outln!(
                    "in step: {} destinations, {} proxies",
                    cp.authorities.len(),
                    cp.proxies.len()
                );
            }
        }
    }
    if drift { REFUSED } else { 0 }
}

/// What the control plane says: its Service authorities and its proxies.
struct Served {
    authorities: BTreeSet<String>,
    proxies: Vec<Value>,
}

impl Served {
    async fn fetch(admin: &str) -> Result<Served, String> {
        let timeout = Duration::from_secs(10);
        let authorities = get(admin, "/authorities", timeout).await?;
        let proxies = get(admin, "/proxies", timeout).await?;
        Ok(Served {
            authorities: strings(&authorities).into_iter().collect(),
            proxies: proxies.as_array().cloned().unwrap_or_default(),
        })
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// Every difference between the directory and the control plane (each Service port, from its
/// own namespace), and between the control plane and each proxy (each destination it runs,
/// from the proxy's namespace).
async fn compare(declared: &Model, cp: &Served, admin: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut served_cache: BTreeMap<(String, String), Option<Value>> = BTreeMap::new();
    let authorities: BTreeSet<String> = declared
        .service_authorities()
        .into_iter()
        .chain(cp.authorities.iter().cloned())
        .collect();
    for authority in &authorities {
        let ns = parse_authority(authority, "default")
            .map(|t| t.namespace)
            .unwrap_or_else(|| "default".into());
        let mine = discovery::describe(&discovery::versioned(declared, authority, &ns));
        let Some(theirs) = served(admin, authority, &ns, &mut served_cache).await else {
            continue;
        };
        if mine["version"] == theirs["version"] {
            continue;
        }
        let source = theirs["source"].as_str().unwrap_or_default();
        let (kind, message) = if let Some(canary) = source.strip_prefix("Canary ") {
            (
                "canary",
                format!(
                    "{authority}: Canary {canary} drives it ({})",
                    summary(&theirs)
                ),
            )
        } else {
            (
                "directory",
                format!(
                    "{authority}: the directory declares {}; the control plane serves {}",
                    summary(&mine),
                    summary(&theirs)
                ),
            )
        };
        out.push(Finding {
            kind,
            authority: Some(authority.clone()),
            proxy: None,
            message,
            declared: Some(mine),
            served: Some(theirs),
        });
    }
    for proxy in &cp.proxies {
        let id = proxy["id"].as_str().unwrap_or_default().to_string();
        let ns = proxy["namespace"].as_str().unwrap_or("default").to_string();
        let admin_addr = proxy["adminAddress"].as_str().unwrap_or_default();
        let (runs, how) = match get(admin_addr, "/config", PROXY_TIMEOUT).await {
            Ok(config) => (
                config["destinations"]
                    .as_object()
                    .map(|d| {
                        d.iter()
                            .filter_map(|(k, v)| {
                                Some((k.clone(), v["version"].as_str()?.to_string()))
                            })
                            .collect::<BTreeMap<_, _>>()
                    })
                    .unwrap_or_default(),
                "runs".to_string(),
            ),
            Err(e) => (
                proxy["destinations"]
                    .as_object()
                    .map(|d| {
                        d.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                            .collect()
                    })
                    .unwrap_or_default(),
                format!(
                    "reported {} ms ago (its admin port at {admin_addr} did not answer: {e})",
                    proxy["lastReportMsAgo"]
                ),
            ),
        };
        for (authority, version) in runs {
            let Some(theirs) = served(admin, &authority, &ns, &mut served_cache).await else {
                continue;
            };
            if theirs["version"].as_str() == Some(version.as_str()) {
                continue;
            }
            out.push(Finding {
                kind: "proxy",
                authority: Some(authority.clone()),
                proxy: Some(id.clone()),
                message: format!(
                    "proxy {id} ({admin_addr}) {how} {authority} at version {version}; the control plane serves {} ({})",
                    theirs["version"].as_str().unwrap_or_default(),
                    summary(&theirs)
                ),
                declared: None,
                served: Some(theirs),
            });
        }
    }
    out
}

/// What the control plane serves for (authority, namespace), asked once per comparison.
async fn served(
    admin: &str,
    authority: &str,
    ns: &str,
    cache: &mut BTreeMap<(String, String), Option<Value>>,
) -> Option<Value> {
    let key = (authority.to_string(), ns.to_string());
    if let Some(v) = cache.get(&key) {
        return v.clone();
    }
    let path = format!(
        "/resolve?authority={}&namespace={}",
        encode(authority),
        encode(ns)
    );
    let v = match get(admin, &path, Duration::from_secs(10)).await {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("pillion diff: {authority}: the control plane did not say: {e}");
            None
        }
    };
    cache.insert(key, v.clone());
    v
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `web-v1 90 (2 endpoints), web-v2 10 (1 endpoint)` per rule; or why it is not in the mesh.
fn summary(d: &Value) -> String {
    if d["inMesh"] == false {
        return format!("not in mesh ({})", d["reason"].as_str().unwrap_or_default());
    }
    let rules: Vec<String> = d["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let backends: Vec<String> = r["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| match b["service"].as_str() {
                    Some(s) => {
                        let name = s.split('.').next().unwrap_or(s);
                        let n = b["endpoints"].as_array().map_or(0, Vec::len);
                        let plural = if n == 1 { "" } else { "s" };
                        format!("{name} {} ({n} endpoint{plural})", b["weight"])
                    }
                    None => format!("failure {} {}", b["failure"], b["weight"]),
                })
                .collect();
            format!(
                "{}: {}",
                r["name"].as_str().unwrap_or_default(),
                backends.join(", ")
            )
        })
        .collect();
    format!(
        "[{}] from {}",
        rules.join("; "),
        d["source"].as_str().unwrap_or_default()
    )
}
