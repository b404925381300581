//! `pillion.dev/v1alpha1` `Canary`: a release of a candidate backend behind an apex Service,
//! driven by the control plane's canary controller. Validating the spec and turning it into the
//! controller's [`Plan`] is one step, so nothing accepted can fail later.

use std::time::Duration;

use pillion_proto::discovery::v1 as pb;
use serde::Deserialize;

use super::{FieldError, Metadata, namespace_of, parse_duration};

#[derive(Debug, Clone, Deserialize)]
pub struct Canary {
    pub metadata: Metadata,
    pub spec: CanarySpec,
    /// What the controller last wrote (Kubernetes): a restarted control plane resumes from it.
    #[serde(default)]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CanarySpec {
    /// The apex Service callers address (same namespace).
    pub service: String,
    /// The Service of the version in production.
    pub stable: String,
    /// The Service of the version being released.
    pub candidate: String,
    /// `canary` (the default), `blueGreen` or `abTest`.
    #[serde(default)]
    pub strategy: Option<String>,
    /// Canary: the candidate's share at each step, in percent, increasing.
    #[serde(default)]
    pub steps: Option<Vec<i64>>,
    /// Time between checks (default 30s).
    #[serde(default)]
    pub interval: Option<String>,
    /// Blue/green and A/B: checks that must pass before all traffic moves (default 3).
    #[serde(default)]
    pub checks: Option<i64>,
    /// A/B: which requests go to the candidate while it is tested.
    #[serde(default, rename = "match")]
    pub ab_match: Option<AbMatch>,
    #[serde(default)]
    pub analysis: Option<AnalysisSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbMatch {
    #[serde(default)]
    pub headers: Vec<HeaderRule>,
    #[serde(default)]
    pub cookies: Vec<CookieRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRule {
    pub name: String,
    pub value: String,
    /// `Exact` (the default) or `RegularExpression`, as in the Gateway API.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookieRule {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// Lowest share of successful responses, in percent (default 99).
    #[serde(default)]
    pub success_rate: Option<f64>,
    /// Highest p99 latency of the candidate's responses (no limit by default).
    #[serde(default)]
    pub max_p99_latency: Option<String>,
    /// Responses a check needs before it can pass or fail (default 20).
    #[serde(default)]
    pub min_requests: Option<i64>,
    /// Failed checks that roll the release back (default 2).
    #[serde(default)]
    pub failure_limit: Option<i64>,
}

/// How the candidate is given traffic.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    /// Weight steps, one per passed check, then all traffic.
    Canary { steps: Vec<u32> },
    /// No traffic through the apex while `checks` pass, then all of it at once.
    BlueGreen { checks: u32 },
    /// Matching requests while `checks` pass, then all of it.
    AbTest {
        checks: u32,
        headers: Vec<pb::HeaderMatch>,
    },
}

/// What a check requires of the candidate's leg.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// Percent.
    pub success_rate: f64,
    pub max_p99: Option<Duration>,
    pub min_requests: u64,
    pub failure_limit: u32,
}

/// A valid Canary, as the controller runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub namespace: String,
    pub name: String,
    pub service: String,
    pub stable: String,
    pub candidate: String,
    pub strategy: Strategy,
    pub interval: Duration,
    pub thresholds: Thresholds,
}

impl Plan {
    /// What makes a release a new one: another candidate, stable, service, strategy or A/B
    /// match restarts the analysis; new steps, checks, thresholds or interval apply to the
    /// release in progress.
    pub fn release_key(&self) -> String {
        let strategy = match &self.strategy {
            Strategy::Canary { .. } => "canary".to_string(),
            Strategy::BlueGreen { .. } => "blueGreen".to_string(),
            Strategy::AbTest { headers, .. } => format!("abTest {headers:?}"),
        };
        format!(
            "{}|{}|{}|{strategy}",
            self.service, self.stable, self.candidate
        )
    }
}

/// Shorter intervals measure noise; tests use them, production should not.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const DEFAULT_STEPS: [u32; 4] = [10, 25, 50, 100];

impl Canary {
    pub fn plan(&self) -> Result<Plan, FieldError> {
        let spec = &self.spec;
        for (field, value) in [
            ("spec.service", &spec.service),
            ("spec.stable", &spec.stable),
            ("spec.candidate", &spec.candidate),
        ] {
            if value.is_empty() {
                return Err(FieldError::new(field, "must not be empty"));
            }
            if value.contains('.') || value.contains(':') {
                return Err(FieldError::new(
                    field,
                    format!("`{value}` must be a Service name in the Canary's namespace"),
                ));
            }
        }
        if spec.stable == spec.candidate {
            return Err(FieldError::new(
                "spec.candidate",
                "must differ from spec.stable",
            ));
        }
        if spec.service == spec.candidate {
            return Err(FieldError::new(
                "spec.candidate",
                "must differ from spec.service (the apex callers address)",
            ));
        }
        let checks = match spec.checks {
            None => 3,
            Some(n @ 1..=1000) => n as u32,
            Some(n) => {
                return Err(FieldError::new(
                    "spec.checks",
                    format!("{n} is not from 1 to 1000"),
                ));
            }
        };
        let strategy = match spec.strategy.as_deref().unwrap_or("canary") {
            "canary" => {
                if spec.ab_match.is_some() {
                    return Err(FieldError::new(
                        "spec.match",
                        "only the abTest strategy takes a match",
                    ));
                }
                Strategy::Canary {
                    steps: steps(spec.steps.as_deref())?,
                }
            }
            other @ ("blueGreen" | "abTest") => {
                if spec.steps.is_some() {
                    return Err(FieldError::new(
                        "spec.steps",
                        format!("the {other} strategy moves all traffic at once; use checks"),
                    ));
                }
                if other == "blueGreen" {
                    if spec.ab_match.is_some() {
                        return Err(FieldError::new(
                            "spec.match",
                            "only the abTest strategy takes a match",
                        ));
                    }
                    Strategy::BlueGreen { checks }
                } else {
                    let Some(m) = &spec.ab_match else {
                        return Err(FieldError::new(
                            "spec.match",
                            "the abTest strategy needs headers or cookies to match",
                        ));
                    };
                    Strategy::AbTest {
                        checks,
                        headers: ab_headers(m)?,
                    }
                }
            }
            other => {
                return Err(FieldError::new(
                    "spec.strategy",
                    format!("`{other}` is not one of canary, blueGreen, abTest"),
                ));
            }
        };
        let interval = match &spec.interval {
            None => Duration::from_secs(30),
            Some(s) => {
                let ms = parse_duration(s).map_err(|e| FieldError::new("spec.interval", e))?;
                Duration::from_millis(ms)
            }
        };
        if interval < MIN_INTERVAL {
            return Err(FieldError::new(
                "spec.interval",
                "must be at least 100ms (30s or more measures real traffic)",
            ));
        }
        Ok(Plan {
            namespace: namespace_of(&self.metadata).to_string(),
            name: self.metadata.name.clone(),
            service: spec.service.clone(),
            stable: spec.stable.clone(),
            candidate: spec.candidate.clone(),
            strategy,
            interval,
            thresholds: thresholds(spec.analysis.as_ref())?,
        })
    }
}

fn steps(given: Option<&[i64]>) -> Result<Vec<u32>, FieldError> {
    let Some(given) = given else {
        return Ok(DEFAULT_STEPS.to_vec());
    };
    if given.is_empty() {
        return Err(FieldError::new("spec.steps", "needs at least one step"));
    }
    let mut out = Vec::with_capacity(given.len());
    for (i, step) in given.iter().enumerate() {
        let field = format!("spec.steps[{i}]");
        if !(1..=100).contains(step) {
            return Err(FieldError::new(
                field,
                format!("{step} is not a percentage from 1 to 100"),
            ));
        }
        if out.last().is_some_and(|last| *step <= i64::from(*last)) {
            return Err(FieldError::new(
                field,
                format!("{step} does not grow from the step before"),
            ));
        }
        out.push(*step as u32);
    }
    Ok(out)
}

/// The A/B match as the proxies' header matches; a cookie is matched in the `cookie` header.
fn ab_headers(m: &AbMatch) -> Result<Vec<pb::HeaderMatch>, FieldError> {
    if m.headers.is_empty() && m.cookies.is_empty() {
        return Err(FieldError::new(
            "spec.match",
            "needs at least one of headers, cookies",
        ));
    }
    let mut out = Vec::new();
    for (i, h) in m.headers.iter().enumerate() {
        let field = format!("spec.match.headers[{i}]");
        if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            return Err(FieldError::new(
                format!("{field}.name"),
                format!("`{}` is not a header name", h.name),
            ));
        }
        let value = match h.kind.as_deref().unwrap_or("Exact") {
            "Exact" => pb::header_match::Value::Exact(h.value.clone()),
            "RegularExpression" => {
                regex::Regex::new(&h.value).map_err(|e| {
                    FieldError::new(format!("{field}.value"), format!("bad regex: {e}"))
                })?;
                pb::header_match::Value::Regex(h.value.clone())
            }
            other => {
                return Err(FieldError::new(
                    format!("{field}.type"),
                    format!("`{other}` is not one of Exact, RegularExpression"),
                ));
            }
        };
        out.push(pb::HeaderMatch {
            name: h.name.to_ascii_lowercase(),
            value: Some(value),
        });
    }
    for (i, c) in m.cookies.iter().enumerate() {
        let field = format!("spec.match.cookies[{i}].name");
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
        };
        if !token(&c.name) {
            return Err(FieldError::new(
                field,
                format!("`{}` is not a cookie name", c.name),
            ));
        }
        // The pair anywhere in one `cookie` field: `a=1; name=value; b=2`.
        out.push(pb::HeaderMatch {
            name: "cookie".into(),
            value: Some(pb::header_match::Value::Regex(format!(
                "(?:.*;\\s*)?{}={}(?:\\s*;.*)?",
                regex::escape(&c.name),
                regex::escape(&c.value)
            ))),
        });
    }
    Ok(out)
}

fn thresholds(a: Option<&AnalysisSpec>) -> Result<Thresholds, FieldError> {
    let success_rate = match a.and_then(|a| a.success_rate) {
        None => 99.0,
        Some(r) if (0.0..=100.0).contains(&r) => r,
        Some(r) => {
            return Err(FieldError::new(
                "spec.analysis.successRate",
                format!("{r} is not a percentage from 0 to 100"),
            ));
        }
    };
    let max_p99 = match a.and_then(|a| a.max_p99_latency.as_deref()) {
        None => None,
        Some(s) => {
            Some(Duration::from_millis(parse_duration(s).map_err(|e| {
                FieldError::new("spec.analysis.maxP99Latency", e)
            })?))
        }
    };
    let min_requests = match a.and_then(|a| a.min_requests) {
        None => 20,
        Some(n) if n >= 0 => n as u64,
        Some(n) => {
            return Err(FieldError::new(
                "spec.analysis.minRequests",
                format!("{n} is negative"),
            ));
        }
    };
    let failure_limit = match a.and_then(|a| a.failure_limit) {
        None => 2,
        Some(n @ 1..=1000) => n as u32,
        Some(n) => {
            return Err(FieldError::new(
                "spec.analysis.failureLimit",
                format!("{n} is not from 1 to 1000"),
            ));
        }
    };
    Ok(Thresholds {
        success_rate,
        max_p99,
        min_requests,
        failure_limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(spec: serde_json::Value) -> Result<Plan, FieldError> {
        let c: Canary = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": spec,
        }))
        .map_err(|e| FieldError::new("", e.to_string()))?;
        c.plan()
    }

    #[test]
    fn defaults() {
        let plan = canary(serde_json::json!({"service": "web", "stable": "v1", "candidate": "v2"}))
            .unwrap();
        assert_eq!(
            plan.strategy,
            Strategy::Canary {
                steps: vec![10, 25, 50, 100]
            }
        );
        assert_eq!(plan.interval, Duration::from_secs(30));
        assert_eq!(plan.thresholds.success_rate, 99.0);
        assert_eq!(plan.thresholds.min_requests, 20);
        assert_eq!(plan.thresholds.failure_limit, 2);
        assert_eq!(plan.namespace, "shop");
    }

    #[test]
    fn each_mistake_names_its_field() {
        let base = serde_json::json!({"service": "web", "stable": "v1", "candidate": "v2"});
        let with = |k: &str, v: serde_json::Value| {
            let mut s = base.clone();
            s[k] = v;
            canary(s).unwrap_err().field
        };
        assert_eq!(with("steps", serde_json::json!([10, 5])), "spec.steps[1]");
        assert_eq!(with("steps", serde_json::json!([0])), "spec.steps[0]");
        assert_eq!(with("steps", serde_json::json!([])), "spec.steps");
        assert_eq!(with("interval", serde_json::json!("10ms")), "spec.interval");
        assert_eq!(with("interval", serde_json::json!("soon")), "spec.interval");
        assert_eq!(
            with("strategy", serde_json::json!("redBlack")),
            "spec.strategy"
        );
        assert_eq!(with("candidate", serde_json::json!("v1")), "spec.candidate");
        assert_eq!(with("stable", serde_json::json!("v1.other")), "spec.stable");
        assert_eq!(with("strategy", serde_json::json!("abTest")), "spec.match");
        assert_eq!(
            with("analysis", serde_json::json!({"successRate": 120})),
            "spec.analysis.successRate"
        );
        assert_eq!(
            with("analysis", serde_json::json!({"failureLimit": 0})),
            "spec.analysis.failureLimit"
        );
        let mut ab = base.clone();
        ab["strategy"] = "abTest".into();
        ab["match"] = serde_json::json!({"headers": [{"name": "x-group", "value": "(", "type": "RegularExpression"}]});
        assert_eq!(canary(ab).unwrap_err().field, "spec.match.headers[0].value");
    }

    #[test]
    fn ab_cookie_matches_the_pair_anywhere_in_the_header() {
        let plan = canary(serde_json::json!({
            "service": "web", "stable": "v1", "candidate": "v2", "strategy": "abTest",
            "match": {"cookies": [{"name": "group", "value": "beta.1"}]},
        }))
        .unwrap();
        let Strategy::AbTest { headers, checks } = plan.strategy else {
            panic!("not A/B");
        };
        assert_eq!(checks, 3);
        let Some(pb::header_match::Value::Regex(re)) = &headers[0].value else {
            panic!("not a regex");
        };
        let re = regex::Regex::new(&format!("^(?:{re})$")).unwrap();
        for yes in [
            "group=beta.1",
            "a=1; group=beta.1",
            "group=beta.1; b=2",
            "a=1;group=beta.1 ;b",
        ] {
            assert!(re.is_match(yes), "{yes}");
        }
        for no in [
            "group=beta.10",
            "xgroup=beta.1",
            "group=betax1",
            "a=group=beta.1",
        ] {
            assert!(!re.is_match(no), "{no}");
        }
    }

    #[test]
    fn the_examples_are_valid() {
        for yaml in [
            include_str!("../../../examples/canary/canary.yaml"),
            include_str!("../../../examples/canary/blue-green.yaml"),
            include_str!("../../../examples/canary/ab-test.yaml"),
        ] {
            let doc: serde_json::Value = serde_saphyr::from_str(yaml).expect("yaml");
            match super::super::parse_document(doc) {
                Ok(super::super::Parsed::Resource(_, r)) => {
                    assert!(matches!(*r, super::super::Resource::Canary(_)))
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_bad_sticky_annotation_is_refused_by_name() {
        let doc = serde_json::json!({
            "apiVersion": "pillion.dev/v1alpha1", "kind": "Canary",
            "metadata": {"name": "web", "annotations": {"pillion.dev/sticky-key": "ip"}},
            "spec": {"service": "web", "stable": "v1", "candidate": "v2"},
        });
        let err = super::super::parse_document(doc).unwrap_err();
        assert!(err.error.field.contains("sticky-key"), "{:?}", err.error);
    }
}
