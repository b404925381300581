//! Progressive delivery: the state of one release and how checks and commands move it. Pure
//! (no clock, no I/O), so every transition is a unit test; [`controller`] runs it.
//!
//! - canary: the candidate takes each step's share; every passed check moves one step; after
//!   the last step it takes all traffic (promoted).
//! - blue/green: the candidate takes no traffic through the apex while its own (test) traffic
//!   is checked; after `checks` passes it takes all of it at once. The stable backend keeps its
//!   endpoints, so `abort` switches back at once.
//! - A/B: requests matching the rule go to the candidate while `checks` pass, then all.
//!
//! Failed checks accumulate; at `failureLimit` the release is rolled back (no traffic to the
//! candidate). A check with fewer than `minRequests` responses decides nothing.

pub mod controller;
pub mod metrics;
pub mod status_writer;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::config::canary::{Plan, Strategy, Thresholds};

/// Events kept per release (the oldest are dropped).
const MAX_EVENTS: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Progressing,
    Paused,
    Promoted,
    RolledBack,
    /// The release cannot run (a Service it names does not exist); routing is left as declared.
    Failed,
}

/// The candidate's figures over one check's window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    pub requests: u64,
    pub failures: u64,
    /// Percent; `None` without responses.
    pub success_rate: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass,
    Fail(String),
    /// Not enough responses to judge.
    Wait(String),
}

impl Analysis {
    pub fn new(requests: u64, failures: u64, p99: Option<std::time::Duration>) -> Self {
        Analysis {
            requests,
            failures,
            success_rate: (requests > 0)
                .then(|| 100.0 * (requests - failures.min(requests)) as f64 / requests as f64),
            p99_ms: p99.map(|d| d.as_secs_f64() * 1000.0),
        }
    }

    pub fn verdict(&self, t: &Thresholds) -> Verdict {
        if self.requests < t.min_requests {
            return Verdict::Wait(format!(
                "{} responses from the candidate, {} needed to judge",
                self.requests, t.min_requests
            ));
        }
        if let Some(rate) = self.success_rate
            && rate < t.success_rate
        {
            return Verdict::Fail(format!(
                "success rate {rate:.2}% is below {}% ({} of {} failed)",
                t.success_rate, self.failures, self.requests
            ));
        }
        if let (Some(max), Some(p99)) = (t.max_p99, self.p99_ms) {
            let max_ms = max.as_secs_f64() * 1000.0;
            if p99 > max_ms {
                return Verdict::Fail(format!("p99 latency {p99:.1} ms is above {max_ms:.1} ms"));
            }
        }
        Verdict::Pass
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// RFC 3339, UTC.
    pub at: String,
    pub message: String,
}

/// Requests the candidate answered during this release, and of those the failed ones: what
/// the release cost its callers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorBudget {
    pub requests: u64,
    pub failures: u64,
}

/// Where a release stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub phase: Phase,
    /// The candidate's share of the apex's traffic, percent.
    pub weight: u32,
    /// A/B: matching requests go to the candidate.
    pub ab_active: bool,
    /// Canary: the index of the step in force.
    pub step: usize,
    pub passed_checks: u32,
    pub failed_checks: u32,
    pub last_analysis: Option<Analysis>,
    pub error_budget: ErrorBudget,
    pub message: String,
    pub events: VecDeque<Event>,
}

/// What an operator may ask of a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// All traffic to the candidate now.
    Promote,
    /// Stop checking; the traffic stays where it is.
    Pause,
    /// Continue a paused release, or start a rolled-back one again from its first step.
    Resume,
    /// All traffic back to stable now.
    Abort,
}

impl std::str::FromStr for Command {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "promote" => Command::Promote,
            "pause" => Command::Pause,
            "resume" => Command::Resume,
            "abort" => Command::Abort,
            other => {
                return Err(format!(
                    "`{other}` is not one of promote, pause, resume, abort"
                ));
            }
        })
    }
}

impl Status {
    /// A release starting: the first step (canary), no traffic (blue/green), or the matching
    /// requests (A/B) to the candidate.
    pub fn start(plan: &Plan, now: &str) -> Status {
        let mut s = Status {
            phase: Phase::Progressing,
            weight: 0,
            ab_active: false,
            step: 0,
            passed_checks: 0,
            failed_checks: 0,
            last_analysis: None,
            error_budget: ErrorBudget::default(),
            message: String::new(),
            events: VecDeque::new(),
        };
        s.begin(plan, now);
        s
    }

    fn begin(&mut self, plan: &Plan, now: &str) {
        self.phase = Phase::Progressing;
        self.step = 0;
        self.passed_checks = 0;
        self.failed_checks = 0;
        self.error_budget = ErrorBudget::default();
        let (weight, ab, what) = match &plan.strategy {
            Strategy::Canary { steps } => (
                steps.first().copied().unwrap_or(100),
                false,
                format!("{}% of traffic", steps.first().copied().unwrap_or(100)),
            ),
            Strategy::BlueGreen { .. } => (0, false, "no traffic while it is checked".into()),
            Strategy::AbTest { .. } => (0, true, "the requests that match".into()),
        };
        self.weight = weight;
        self.ab_active = ab;
        self.note(
            now,
            format!("release of {} started: it takes {what}", plan.candidate),
        );
    }

    /// The status a control plane wrote for the same release (`release` is its id), so that
    /// a restart resumes it where it stood; `None` for another release or an unreadable one.
    pub fn restore(plan: &Plan, written: Option<&serde_json::Value>) -> Option<Status> {
        let written = written?;
        if written.get("release")?.as_str()? != release_id(plan) {
            return None;
        }
        let mut status: Status = serde_json::from_value(written.clone()).ok()?;
        if status.phase == Phase::Failed || status.weight > 100 {
            return None;
        }
        status.realign(plan);
        Some(status)
    }

    /// New steps for a release in progress: it goes on from the first step not below the
    /// weight it had.
    pub fn realign(&mut self, plan: &Plan) {
        if let Strategy::Canary { steps } = &plan.strategy
            && matches!(self.phase, Phase::Progressing | Phase::Paused)
        {
            self.step = steps
                .iter()
                .position(|s| *s >= self.weight)
                .unwrap_or(steps.len().saturating_sub(1));
            self.weight = steps.get(self.step).copied().unwrap_or(100);
        }
    }

    /// The release cannot run: routing is left as declared.
    pub fn fail(&mut self, now: &str, reason: String) {
        if self.phase != Phase::Failed || self.message != reason {
            self.phase = Phase::Failed;
            self.weight = 0;
            self.ab_active = false;
            self.note(now, reason);
        }
    }

    /// The outcome of one check (`passed`, `failed`, `waiting`; `None` when the release was
    /// not progressing). Only a progressing release moves.
    pub fn check(&mut self, plan: &Plan, analysis: Analysis, now: &str) -> Option<&'static str> {
        if self.phase != Phase::Progressing {
            return None;
        }
        self.error_budget.requests += analysis.requests;
        self.error_budget.failures += analysis.failures;
        let verdict = analysis.verdict(&plan.thresholds);
        self.last_analysis = Some(analysis);
        Some(self.judge(plan, verdict, now))
    }

    /// A check whose figures could not be had: an unmeasurable candidate is not a healthy one,
    /// so it counts as failed.
    pub fn unmeasured(&mut self, plan: &Plan, why: String, now: &str) -> Option<&'static str> {
        (self.phase == Phase::Progressing)
            .then(|| self.judge(plan, Verdict::Fail(format!("no figures: {why}")), now))
    }

    fn judge(&mut self, plan: &Plan, verdict: Verdict, now: &str) -> &'static str {
        let result = match &verdict {
            Verdict::Pass => "passed",
            Verdict::Fail(_) => "failed",
            Verdict::Wait(_) => "waiting",
        };
        match verdict {
            Verdict::Wait(why) => self.message = why,
            Verdict::Fail(why) => {
                self.failed_checks += 1;
                let limit = plan.thresholds.failure_limit;
                if self.failed_checks >= limit {
                    self.roll_back(
                        now,
                        format!(
                            "rolled back: {why}; {} failed checks of {limit} allowed",
                            self.failed_checks
                        ),
                    );
                } else {
                    self.note(
                        now,
                        format!("check failed ({} of {limit}): {why}", self.failed_checks),
                    );
                }
            }
            Verdict::Pass => {
                self.passed_checks += 1;
                match &plan.strategy {
                    Strategy::Canary { steps } if self.step + 1 < steps.len() => {
                        self.step += 1;
                        self.weight = steps[self.step];
                        self.note(now, format!("check passed: {}% of traffic", self.weight));
                    }
                    Strategy::BlueGreen { checks } | Strategy::AbTest { checks, .. }
                        if self.passed_checks < *checks =>
                    {
                        self.note(
                            now,
                            format!("check passed ({} of {checks})", self.passed_checks),
                        );
                    }
                    _ => self.promote(now, "promoted: every check passed".into()),
                }
            }
        }
        result
    }

    fn promote(&mut self, now: &str, why: String) {
        self.phase = Phase::Promoted;
        self.weight = 100;
        self.ab_active = false;
        self.note(now, why);
    }

    fn roll_back(&mut self, now: &str, why: String) {
        self.phase = Phase::RolledBack;
        self.weight = 0;
        self.ab_active = false;
        self.note(now, why);
    }

    /// An operator's command; an error says why it does not apply.
    pub fn command(&mut self, plan: &Plan, command: Command, now: &str) -> Result<(), String> {
        match (command, self.phase) {
            (_, Phase::Failed) => Err(format!("the release cannot run: {}", self.message)),
            (Command::Promote, Phase::Promoted) => Err("already promoted".into()),
            (Command::Promote, _) => {
                self.promote(now, "promoted by an operator".into());
                Ok(())
            }
            (Command::Abort, Phase::RolledBack) => Err("already rolled back".into()),
            (Command::Abort, _) => {
                self.roll_back(now, "rolled back by an operator".into());
                Ok(())
            }
            (Command::Pause, Phase::Progressing) => {
                self.phase = Phase::Paused;
                self.note(now, format!("paused at {}%", self.weight));
                Ok(())
            }
            (Command::Pause, phase) => {
                Err(format!("only a progressing release pauses ({phase:?})"))
            }
            (Command::Resume, Phase::Paused) => {
                self.phase = Phase::Progressing;
                self.note(now, "resumed".into());
                Ok(())
            }
            (Command::Resume, Phase::RolledBack) => {
                self.begin(plan, now);
                Ok(())
            }
            (Command::Resume, phase) => Err(format!(
                "only a paused or rolled-back release resumes ({phase:?})"
            )),
        }
    }

    fn note(&mut self, now: &str, message: String) {
        tracing::info!(%message, "canary");
        self.message = message.clone();
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            at: now.to_string(),
            message,
        });
    }
}

/// A short, stable id of a release (what makes it one: see [`Plan::release_key`]), written
/// into its status so that a restarted controller knows whether the status is this release's.
pub fn release_id(plan: &Plan) -> String {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in plan.release_key().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn plan(strategy: Strategy) -> Plan {
        Plan {
            namespace: "default".into(),
            name: "web".into(),
            service: "web".into(),
            stable: "web-v1".into(),
            candidate: "web-v2".into(),
            strategy,
            interval: Duration::from_secs(1),
            thresholds: Thresholds {
                success_rate: 95.0,
                max_p99: Some(Duration::from_millis(200)),
                min_requests: 10,
                failure_limit: 2,
            },
        }
    }

    fn good() -> Analysis {
        Analysis::new(100, 1, Some(Duration::from_millis(20)))
    }

    #[test]
    fn a_healthy_canary_climbs_each_step_then_is_promoted() {
        let p = plan(Strategy::Canary {
            steps: vec![10, 50, 90],
        });
        let mut s = Status::start(&p, "t0");
        let mut weights = vec![s.weight];
        while s.phase == Phase::Progressing {
            s.check(&p, good(), "t");
            weights.push(s.weight);
        }
        assert_eq!(weights, vec![10, 50, 90, 100]);
        assert_eq!(s.phase, Phase::Promoted);
        assert_eq!(
            s.error_budget,
            ErrorBudget {
                requests: 300,
                failures: 3
            }
        );
    }

    #[test]
    fn failures_roll_back_at_the_limit_and_little_traffic_decides_nothing() {
        let p = plan(Strategy::Canary {
            steps: vec![10, 50],
        });
        let mut s = Status::start(&p, "t0");
        s.check(&p, Analysis::new(3, 3, None), "t1");
        assert_eq!(
            (s.phase, s.weight, s.failed_checks),
            (Phase::Progressing, 10, 0)
        );
        assert!(s.message.contains("3 responses"), "{}", s.message);
        let errors = Analysis::new(100, 30, Some(Duration::from_millis(5)));
        s.check(&p, errors.clone(), "t2");
        assert_eq!(
            (s.phase, s.weight, s.failed_checks),
            (Phase::Progressing, 10, 1)
        );
        s.check(&p, errors, "t3");
        assert_eq!((s.phase, s.weight), (Phase::RolledBack, 0));
        assert!(s.message.contains("success rate 70.00%"), "{}", s.message);
        assert_eq!(
            s.error_budget.failures,
            3 + 60,
            "every failure counts, judged or not"
        );
        // Nothing moves a rolled-back release but a command.
        s.check(&p, good(), "t4");
        assert_eq!(s.phase, Phase::RolledBack);
        s.command(&p, Command::Resume, "t5").unwrap();
        assert_eq!(
            (s.phase, s.weight, s.failed_checks),
            (Phase::Progressing, 10, 0)
        );
    }

    #[test]
    fn slow_answers_fail_the_latency_rule() {
        let p = plan(Strategy::Canary { steps: vec![50] });
        let v = Analysis::new(100, 0, Some(Duration::from_millis(350))).verdict(&p.thresholds);
        assert!(
            matches!(&v, Verdict::Fail(why) if why.contains("p99 latency 350.0 ms")),
            "{v:?}"
        );
    }

    #[test]
    fn blue_green_switches_all_at_once_and_back_on_abort() {
        let p = plan(Strategy::BlueGreen { checks: 2 });
        let mut s = Status::start(&p, "t0");
        assert_eq!(s.weight, 0);
        s.check(&p, good(), "t1");
        assert_eq!((s.phase, s.weight), (Phase::Progressing, 0));
        s.check(&p, good(), "t2");
        assert_eq!((s.phase, s.weight), (Phase::Promoted, 100));
        s.command(&p, Command::Abort, "t3").unwrap();
        assert_eq!((s.phase, s.weight), (Phase::RolledBack, 0));
        assert!(s.command(&p, Command::Abort, "t4").is_err());
    }

    #[test]
    fn ab_sends_matches_then_everything() {
        let p = plan(Strategy::AbTest {
            checks: 1,
            headers: vec![],
        });
        let mut s = Status::start(&p, "t0");
        assert!(s.ab_active);
        s.check(&p, good(), "t1");
        assert_eq!(
            (s.phase, s.weight, s.ab_active),
            (Phase::Promoted, 100, false)
        );
    }

    #[test]
    fn pause_holds_the_weight_and_commands_say_when_they_do_not_apply() {
        let p = plan(Strategy::Canary {
            steps: vec![10, 50],
        });
        let mut s = Status::start(&p, "t0");
        s.command(&p, Command::Pause, "t1").unwrap();
        s.check(&p, good(), "t2");
        assert_eq!((s.phase, s.weight), (Phase::Paused, 10));
        assert!(s.command(&p, Command::Pause, "t3").is_err());
        s.command(&p, Command::Resume, "t4").unwrap();
        s.command(&p, Command::Promote, "t5").unwrap();
        assert_eq!((s.phase, s.weight), (Phase::Promoted, 100));
        assert!(s.command(&p, Command::Resume, "t6").is_err());
        assert_eq!(s.events.len(), 4);
        assert!("skip".parse::<Command>().is_err());
    }

    #[test]
    fn a_release_resumes_from_its_written_status_and_only_its_own() {
        let p = plan(Strategy::Canary {
            steps: vec![10, 50, 90],
        });
        let mut s = Status::start(&p, "t0");
        s.check(&p, good(), "t1");
        let mut written = serde_json::to_value(&s).unwrap();
        written["release"] = release_id(&p).into();
        let back = Status::restore(&p, Some(&written)).unwrap();
        assert_eq!(
            (back.phase, back.weight, back.step),
            (Phase::Progressing, 50, 1)
        );
        // New steps: on from the first one at or above the weight it had.
        let q = plan(Strategy::Canary {
            steps: vec![20, 60, 100],
        });
        assert_eq!(release_id(&p), release_id(&q), "new steps, same release");
        let back = Status::restore(&q, Some(&written)).unwrap();
        assert_eq!((back.weight, back.step), (60, 1));
        // Another candidate is another release.
        let mut other = p.clone();
        other.candidate = "web-v3".into();
        assert!(Status::restore(&other, Some(&written)).is_none());
        assert!(Status::restore(&p, None).is_none());
        assert!(
            Status::restore(
                &p,
                Some(&serde_json::json!({"release": release_id(&p), "phase": 7}))
            )
            .is_none()
        );
    }
}
