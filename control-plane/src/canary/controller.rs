//! The canary controller: one task between the configuration source and the proxies. It reads
//! each new model for `Canary` objects, checks every progressing release at its interval, and
//! publishes the model the proxies are served: the source's objects with each release's routing
//! laid over its apex Service. It never writes the user's files; the live weights are its own
//! state, shown at the admin port's `/canaries` and by `pillion canary status`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::metrics::{Source, Window};
use super::{Command, Phase, Status};
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
    fleet: Arc<Fleet>,
    releases: HashMap<(String, String), Release>,
    views: watch::Sender<Arc<Vec<View>>>,
    served: watch::Sender<Arc<Model>>,
    /// The routes last published, to publish only what changes.
    published: HashMap<(String, String), CanaryRoute>,
}

/// Starts the controller. `base`: the source's models; returns the served models' receiver
/// (what Discovery answers from) and the handle for the admin API.
pub fn start(
    mut base: watch::Receiver<Arc<Model>>,
    source: Source,
    fleet: Arc<Fleet>,
) -> (
    watch::Receiver<Arc<Model>>,
    Handle,
    tokio::task::JoinHandle<()>,
) {
    let first = base.borrow_and_update().clone();
    let (served, served_rx) = watch::channel(first.clone());
    let (views, views_rx) = watch::channel(Arc::new(Vec::new()));
    let (commands_tx, commands) = mpsc::channel(16);
    let mut controller = Controller {
        source,
        fleet,
        releases: HashMap::new(),
        views,
        served,
        published: HashMap::new(),
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
                    let status = match Status::restore(&plan, canary.status.as_ref()) {
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
            match measured {
                Ok(analysis) => r.status.check(&r.plan, analysis, &now),
                // An unmeasurable candidate is not a healthy one: the check fails.
                Err(e) => r.status.unmeasured(&r.plan, e, &now),
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
        let mut views: Vec<View> = self.releases.values().map(view).collect();
        views.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.views.send_replace(Arc::new(views));
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
