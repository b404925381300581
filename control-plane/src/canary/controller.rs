//! The canary controller: one task between the configuration source and the proxies. It reads
//! each new model for `Canary` objects, checks every progressing release at its interval, and
//! publishes the model the proxies are served: the source's objects with each release's routing
//! laid over its apex Service. It never writes the user's files; the live weights are its own
//! state, shown at the admin port's `/canaries` and by `pillion canary status`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::metrics::{Source, Window};
use super::{Command, Phase, Status};
use crate::admin::{CanaryCheckLabels, CanaryLabel, CanaryPhaseLabels};
use crate::config;
use crate::config::canary::{Plan, Strategy};
use crate::fleet::Fleet;
use crate::model::{CanaryRoute, Model};

/// Reports are asked for this many times per check interval while a release progresses, so a
/// check sees the traffic of (nearly) its whole window.
const REPORTS_PER_INTERVAL: u32 = 4;

/// A release as `/canaries` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct View {
    pub namespace: String,
    pub name: String,
    pub service: String,
    pub stable: String,
    pub candidate: String,
    pub strategy: &'static str,
    pub interval_ms: u64,
    /// The release's id (written into the Kubernetes status, to resume it after a restart).
    pub release: String,
    pub status: Status,
}

/// An operator's command for the release `namespace/name`; the answer is its view after.
pub struct Request {
    pub namespace: String,
    pub name: String,
    pub command: Command,
    pub reply: oneshot::Sender<Result<View, String>>,
}

/// Handles to a running controller.
#[derive(Clone)]
pub struct Handle {
    pub views: watch::Receiver<Arc<Vec<View>>>,
    pub commands: mpsc::Sender<Request>,
}

struct Release {
    plan: Plan,
    key: String,
    sticky: Option<pillion_proto::discovery::v1::StickyKey>,
    status: Status,
    window: Window,
    next_check: Instant,
}

pub struct Controller {
    source: Source,
    metrics: Arc<crate::admin::Metrics>,
    fleet: Arc<Fleet>,
    releases: HashMap<(String, String), Release>,
    views: watch::Sender<Arc<Vec<View>>>,
    served: watch::Sender<Arc<Model>>,
    /// The routes last published, to publish only what changes.
    published: HashMap<(String, String), CanaryRoute>,
    /// The releases whose series `/metrics` shows (`namespace/name`).
    exported: Vec<String>,
    state_file: Option<PathBuf>,
    /// Statuses from the state file (`namespace/name` → status), read at start.
    saved: HashMap<String, serde_json::Value>,
}

/// What the controller works with.
pub struct Setup {
    pub source: Source,
    pub fleet: Arc<Fleet>,
    pub metrics: Arc<crate::admin::Metrics>,
    /// Files mode: where the releases' status is kept across restarts (`--state-dir`).
    pub state_file: Option<PathBuf>,
}

/// Starts the controller. `base`: the source's models; returns the served models' receiver
/// (what Discovery answers from) and the handle for the admin API.
pub fn start(
    mut base: watch::Receiver<Arc<Model>>,
    setup: Setup,
) -> (
    watch::Receiver<Arc<Model>>,
    Handle,
    tokio::task::JoinHandle<()>,
) {
    let first = base.borrow_and_update().clone();
    let (served, served_rx) = watch::channel(first.clone());
    let (views, views_rx) = watch::channel(Arc::new(Vec::new()));
    let (commands_tx, commands) = mpsc::channel(16);
    let saved = setup
        .state_file
        .as_deref()
        .map(state::load)
        .unwrap_or_default();
    let mut controller = Controller {
        source: setup.source,
        metrics: setup.metrics,
        fleet: setup.fleet,
        state_file: setup.state_file,
        saved,
        releases: HashMap::new(),
        views,
        served,
        published: HashMap::new(),
        exported: Vec::new(),
    };
    controller.reconcile(&first);
    controller.publish(&first, true);
    let task = tokio::spawn(controller.run(base, commands));
    (
        served_rx,
        Handle {
            views: views_rx,
            commands: commands_tx,
        },
        task,
    )
}

impl Controller {
    async fn run(
        mut self,
        mut base: watch::Receiver<Arc<Model>>,
        mut commands: mpsc::Receiver<Request>,
    ) {
        loop {
            let model = base.borrow().clone();
            let next = self
                .releases
                .values()
                .filter(|r| r.status.phase == Phase::Progressing)
                .map(|r| r.next_check)
                .min();
            tokio::select! {
                changed = base.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let model = base.borrow_and_update().clone();
                    self.reconcile(&model);
                    self.publish(&model, true);
                }
                Some(req) = commands.recv() => {
                    let answer = self.command(&req);
                    self.publish(&model, false);
                    let _ = req.reply.send(answer);
                }
                _ = sleep_until(next) => {
                    self.check_due().await;
                    self.publish(&model, false);
                }
            }
        }
    }

    /// Starts releases that appeared or changed, forgets those that are gone, and fails those
    /// whose Services do not exist.
    fn reconcile(&mut self, model: &Model) {
        let now = now();
        let mut seen = Vec::new();
        for canary in model.canaries() {
            // The source accepted it, so it is valid; a plan error here would be a bug.
            let Ok(plan) = canary.plan() else { continue };
            let id = (plan.namespace.clone(), plan.name.clone());
            // Of two Canaries for one apex, the oldest runs (as with TrafficSplits).
            if seen.iter().any(|(_, p): &(_, Plan)| {
                p.namespace == plan.namespace && p.service == plan.service
            }) {
                tracing::warn!(canary = %format!("{}/{}", id.0, id.1), service = %plan.service, "another Canary already drives this service; ignored");
                continue;
            }
            let key = plan.release_key();
            let sticky = config::sticky_key(&canary.metadata).ok().flatten();
            let missing = [&plan.service, &plan.stable, &plan.candidate]
                .into_iter()
                .find(|s| !model.has_service(&plan.namespace, s))
                .cloned();
            match self.releases.get_mut(&id) {
                Some(r) if r.key == key => {
                    r.status.realign(&plan);
                    r.plan = plan.clone();
                    r.sticky = sticky;
                }
                _ => {
                    let written = canary
                        .status
                        .as_ref()
                        .or_else(|| self.saved.get(&format!("{}/{}", id.0, id.1)));
                    let status = match Status::restore(&plan, written) {
                        Some(s) => {
                            tracing::info!(canary = %format!("{}/{}", id.0, id.1), phase = ?s.phase, weight = s.weight, "release resumed from its status");
                            s
                        }
                        None => Status::start(&plan, &now),
                    };
                    let window = self.source.open(&plan);
                    self.releases.insert(
                        id.clone(),
                        Release {
                            next_check: Instant::now() + plan.interval,
                            plan: plan.clone(),
                            key,
                            sticky,
                            status,
                            window,
                        },
                    );
                }
            }
            if let Some(r) = self.releases.get_mut(&id) {
                match missing {
                    Some(svc) => r.status.fail(
                        &now,
                        format!(
                            "no Service {}/{svc}: routing stays as declared",
                            plan.namespace
                        ),
                    ),
                    None if r.status.phase == Phase::Failed => {
                        r.status = Status::start(&r.plan, &now);
                        r.window = self.source.open(&r.plan);
                        r.next_check = Instant::now() + r.plan.interval;
                    }
                    None => {}
                }
            }
            seen.push((id, plan));
        }
        self.releases
            .retain(|id, _| seen.iter().any(|(s, _)| s == id));
    }

    fn command(&mut self, req: &Request) -> Result<View, String> {
        let id = (req.namespace.clone(), req.name.clone());
        let Some(r) = self.releases.get_mut(&id) else {
            return Err(format!("no Canary {}/{}", req.namespace, req.name));
        };
        r.status.command(&r.plan, req.command, &now())?;
        if r.status.phase == Phase::Progressing {
            // A resumed or restarted release measures from now.
            r.window = self.source.open(&r.plan);
            r.next_check = Instant::now() + r.plan.interval;
        }
        Ok(view(r))
    }

    async fn check_due(&mut self) {
        let now_instant = Instant::now();
        let due: Vec<(String, String)> = self
            .releases
            .iter()
            .filter(|(_, r)| r.status.phase == Phase::Progressing && r.next_check <= now_instant)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let Some(r) = self.releases.get(&id) else {
                continue;
            };
            let measured = self.source.measure(&r.plan, &r.window).await;
            let window = self.source.open(&r.plan);
            let Some(r) = self.releases.get_mut(&id) else {
                continue;
            };
            let now = now();
            let result = match measured {
                Ok(analysis) => r.status.check(&r.plan, analysis, &now),
                // An unmeasurable candidate is not a healthy one: the check fails.
                Err(e) => r.status.unmeasured(&r.plan, e, &now),
            };
            if let Some(result) = result {
                self.metrics
                    .canary_checks
                    .get_or_create(&CanaryCheckLabels {
                        canary: format!("{}/{}", id.0, id.1),
                        result: result.into(),
                    })
                    .inc();
            }
            r.window = window;
            r.next_check = Instant::now() + r.plan.interval;
        }
    }

    /// Sends the proxies the routes in force when they changed (or the source's model did),
    /// and the views to the admin API.
    fn publish(&mut self, model: &Arc<Model>, model_changed: bool) {
        let routes: HashMap<(String, String), CanaryRoute> = self
            .releases
            .values()
            .filter_map(|r| {
                Some((
                    (r.plan.namespace.clone(), r.plan.service.clone()),
                    route(r)?,
                ))
            })
            .collect();
        if model_changed || routes != self.published {
            let served = if routes.is_empty() {
                model.clone()
            } else {
                Arc::new(model.with_canary_routes(routes.clone()))
            };
            self.served.send_replace(served);
            self.published = routes;
        }
        let wanted = self
            .releases
            .values()
            .filter(|r| r.status.phase == Phase::Progressing)
            .map(|r| r.plan.interval / REPORTS_PER_INTERVAL)
            .min()
            .map(|i| i.clamp(Duration::from_millis(100), Duration::from_secs(5)));
        self.fleet.want_interval(wanted);
        self.export_metrics();
        let mut views: Vec<View> = self.releases.values().map(view).collect();
        views.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        if let Some(file) = &self.state_file {
            state::save(file, &views);
        }
        self.views.send_replace(Arc::new(views));
    }
}

impl Controller {
    /// Each release's weight and phase as gauges; the series of releases gone are dropped.
    fn export_metrics(&mut self) {
        const PHASES: [Phase; 5] = [
            Phase::Progressing,
            Phase::Paused,
            Phase::Promoted,
            Phase::RolledBack,
            Phase::Failed,
        ];
        let names: Vec<String> = self
            .releases
            .keys()
            .map(|(ns, name)| format!("{ns}/{name}"))
            .collect();
        for gone in self.exported.iter().filter(|c| !names.contains(c)) {
            self.metrics.canary_weight.remove(&CanaryLabel {
                canary: gone.clone(),
            });
            for phase in PHASES {
                self.metrics.canary_phase.remove(&CanaryPhaseLabels {
                    canary: gone.clone(),
                    phase: format!("{phase:?}"),
                });
            }
        }
        for r in self.releases.values() {
            let canary = format!("{}/{}", r.plan.namespace, r.plan.name);
            self.metrics
                .canary_weight
                .get_or_create(&CanaryLabel {
                    canary: canary.clone(),
                })
                .set(i64::from(r.status.weight));
            for phase in PHASES {
                self.metrics
                    .canary_phase
                    .get_or_create(&CanaryPhaseLabels {
                        canary: canary.clone(),
                        phase: format!("{phase:?}"),
                    })
                    .set(i64::from(phase == r.status.phase));
            }
        }
        self.exported = names;
    }
}

/// Where the release sends the apex's traffic; `None` leaves the declared routing.
fn route(r: &Release) -> Option<CanaryRoute> {
    if r.status.phase == Phase::Failed {
        return None;
    }
    let ab = match (&r.plan.strategy, r.status.ab_active) {
        (Strategy::AbTest { headers, .. }, true) => Some(headers.clone()),
        _ => None,
    };
    Some(CanaryRoute {
        canary: format!("{}/{}", r.plan.namespace, r.plan.name),
        stable: r.plan.stable.clone(),
        candidate: r.plan.candidate.clone(),
        weight: r.status.weight,
        ab,
        sticky: r.sticky.clone(),
    })
}

fn view(r: &Release) -> View {
    View {
        namespace: r.plan.namespace.clone(),
        name: r.plan.name.clone(),
        service: r.plan.service.clone(),
        stable: r.plan.stable.clone(),
        candidate: r.plan.candidate.clone(),
        strategy: match r.plan.strategy {
            Strategy::Canary { .. } => "canary",
            Strategy::BlueGreen { .. } => "blueGreen",
            Strategy::AbTest { .. } => "abTest",
        },
        interval_ms: r.plan.interval.as_millis() as u64,
        release: super::release_id(&r.plan),
        status: r.status.clone(),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Now, RFC 3339 in UTC.
fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Files mode's memory across restarts: every release's status in one JSON file, rewritten
/// whole (through a temporary file and a rename, so a crash leaves the old one or the new).
mod state {
    use std::collections::HashMap;
    use std::path::Path;

    use super::View;
    use crate::canary::status_writer::status_object;

    pub fn load(file: &Path) -> HashMap<String, serde_json::Value> {
        match std::fs::read(file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %file.display(), error = %e, "canary state unreadable; releases start over");
                HashMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "canary state unreadable; releases start over");
                HashMap::new()
            }
        }
    }

    pub fn save(file: &Path, views: &[View]) {
        let all: serde_json::Map<String, serde_json::Value> = views
            .iter()
            .map(|v| (format!("{}/{}", v.namespace, v.name), status_object(v)))
            .collect();
        let Ok(bytes) = serde_json::to_vec_pretty(&all) else {
            return;
        };
        if std::fs::read(file).is_ok_and(|old| old == bytes) {
            return;
        }
        let tmp = file.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, file)) {
            tracing::warn!(file = %file.display(), error = %e, "cannot keep the canary state");
        }
    }
}
