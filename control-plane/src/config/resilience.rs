//! `pillion.dev/v1alpha1` `RetryPolicy` and `FaultInjection`: how a route's failed attempts are
//! sent again, and the faults a chaos experiment injects. Each attaches to a `Service` (every
//! route to it) or to an `HTTPRoute` or `GRPCRoute` (its rules), in the policy's namespace.
//!
//! Validating a spec and turning it into what the proxies receive is one step ([`RetryPolicy::to_pb`],
//! [`FaultInjection::to_pb`]), so that nothing the control plane accepted can fail later.

use pillion_proto::discovery::v1 as pb;
use serde::Deserialize;
use serde_json::Value;

use super::{FieldError, Metadata, RouteKind, namespace_of, parse_duration};

/// The most retries one policy may ask for: more multiplies an outage, whatever the budget.
pub const MAX_RETRIES: i64 = 10;
/// What `retryOn` means when it is not given.
const DEFAULT_RETRY_ON: [&str; 3] = ["reset", "gateway-error", "unavailable"];

#[derive(Debug, Clone, Deserialize)]
pub struct RetryPolicy {
    pub metadata: Metadata,
    pub spec: RetryPolicySpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryPolicySpec {
    pub target_ref: TargetRef,
    /// Attempts after the first (default 2).
    #[serde(default)]
    pub max_retries: Option<i64>,
    /// What is retried: `reset`, `5xx`, `gateway-error` (502, 503, 504), a status code, or a
    /// gRPC status in kebab case (`unavailable`, `resource-exhausted`, ...).
    #[serde(default)]
    pub retry_on: Option<Vec<Value>>,
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    #[serde(default)]
    pub backoff: Option<Backoff>,
    #[serde(default)]
    pub budget: Option<Budget>,
    /// Longest request body kept for a replay (default 64 KiB; at most 16 MiB).
    #[serde(default)]
    pub max_body_bytes: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    #[serde(default)]
    pub base: Option<String>,
    #[serde(default)]
    pub max: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Budget {
    /// Retries as a share of requests (default 0.2).
    #[serde(default)]
    pub ratio: Option<f64>,
    /// Retries per second allowed whatever the traffic (default 10).
    #[serde(default)]
    pub min_retries_per_second: Option<i64>,
}

/// What a policy attaches to: a `Service` or an `HTTPRoute` in the policy's namespace.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRef {
    #[serde(default)]
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
}

/// Which object a policy attaches to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Service {
        namespace: String,
        name: String,
    },
    Route {
        kind: RouteKind,
        namespace: String,
        name: String,
    },
}

impl TargetRef {
    fn check(&self) -> Result<(), FieldError> {
        let group = self.group.as_deref().unwrap_or_default();
        let ok = match self.kind.as_str() {
            "Service" => group.is_empty() || group == "core",
            "HTTPRoute" | "GRPCRoute" => group.is_empty() || group == "gateway.networking.k8s.io",
            _ => false,
        };
        if !ok {
            return Err(FieldError::new(
                "spec.targetRef",
                format!(
                    "`{}` of group `{group}` is not one of Service, HTTPRoute, GRPCRoute \
                     (gateway.networking.k8s.io)",
                    self.kind
                ),
            ));
        }
        if self.name.is_empty() {
            return Err(FieldError::new("spec.targetRef.name", "must not be empty"));
        }
        Ok(())
    }

    fn target(&self, meta: &Metadata) -> Target {
        let namespace = namespace_of(meta).to_string();
        let name = self.name.clone();
        let route = |kind| Target::Route {
            kind,
            namespace: namespace.clone(),
            name: name.clone(),
        };
        match self.kind.as_str() {
            "HTTPRoute" => route(RouteKind::Http),
            "GRPCRoute" => route(RouteKind::Grpc),
            _ => Target::Service { namespace, name },
        }
    }
}

/// gRPC status codes by the names `retryOn` and `grpcStatus` accept.
const GRPC_CODES: [(&str, u32); 16] = [
    ("cancelled", 1),
    ("unknown", 2),
    ("invalid-argument", 3),
    ("deadline-exceeded", 4),
    ("not-found", 5),
    ("already-exists", 6),
    ("permission-denied", 7),
    ("resource-exhausted", 8),
    ("failed-precondition", 9),
    ("aborted", 10),
    ("out-of-range", 11),
    ("unimplemented", 12),
    ("internal", 13),
    ("unavailable", 14),
    ("data-loss", 15),
    ("unauthenticated", 16),
];

fn grpc_code(name: &str) -> Option<u32> {
    let name = name.to_ascii_lowercase().replace('_', "-");
    GRPC_CODES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, code)| *code)
}

fn duration_ms(field: &str, text: Option<&str>, default: u64) -> Result<u64, FieldError> {
    match text {
        None => Ok(default),
        Some(t) => parse_duration(t).map_err(|e| FieldError::new(field, e)),
    }
}

impl RetryPolicy {
    pub fn target(&self) -> Target {
        self.spec.target_ref.target(&self.metadata)
    }

    /// The policy as the proxies receive it, or the field that is wrong.
    pub fn to_pb(&self) -> Result<pb::RetryPolicy, FieldError> {
        let spec = &self.spec;
        spec.target_ref.check()?;
        let max_retries = spec.max_retries.unwrap_or(2);
        if !(0..=MAX_RETRIES).contains(&max_retries) {
            return Err(FieldError::new(
                "spec.maxRetries",
                format!("{max_retries} is not between 0 and {MAX_RETRIES}"),
            ));
        }
        let mut out = pb::RetryPolicy {
            max_retries: max_retries as u32,
            source: format!(
                "RetryPolicy {}/{}",
                namespace_of(&self.metadata),
                self.metadata.name
            ),
            ..Default::default()
        };
        let defaults: Vec<Value> = DEFAULT_RETRY_ON.iter().map(|s| Value::from(*s)).collect();
        for (i, item) in spec
            .retry_on
            .as_ref()
            .unwrap_or(&defaults)
            .iter()
            .enumerate()
        {
            let field = format!("spec.retryOn[{i}]");
            let text = match item {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(FieldError::new(field, "must be a string or a status code")),
            };
            match text.as_str() {
                "reset" => out.on_reset = true,
                // Sending again a request that never reached an endpoint is always done.
                "connect-failure" => {}
                "5xx" => out.http_statuses.extend(500..=599),
                "gateway-error" => out.http_statuses.extend([502, 503, 504]),
                _ => match (text.parse::<u32>(), grpc_code(&text)) {
                    (Ok(code), _) if (100..=599).contains(&code) => out.http_statuses.push(code),
                    (_, Some(code)) => out.grpc_statuses.push(code),
                    _ => {
                        return Err(FieldError::new(
                            field,
                            format!(
                                "`{text}` is not reset, connect-failure, 5xx, gateway-error, an \
                                 HTTP status (100-599) or a gRPC status such as unavailable"
                            ),
                        ));
                    }
                },
            }
        }
        out.http_statuses.sort_unstable();
        out.http_statuses.dedup();
        out.grpc_statuses.sort_unstable();
        out.grpc_statuses.dedup();
        out.per_try_timeout_ms =
            duration_ms("spec.perTryTimeout", spec.per_try_timeout.as_deref(), 0)?;
        let backoff = spec.backoff.as_ref();
        out.backoff_base_ms = duration_ms(
            "spec.backoff.base",
            backoff.and_then(|b| b.base.as_deref()),
            25,
        )?;
        out.backoff_max_ms = duration_ms(
            "spec.backoff.max",
            backoff.and_then(|b| b.max.as_deref()),
            250,
        )?;
        if out.backoff_max_ms < out.backoff_base_ms {
            return Err(FieldError::new(
                "spec.backoff.max",
                "must not be shorter than spec.backoff.base",
            ));
        }
        let budget = spec.budget.as_ref();
        let ratio = budget.and_then(|b| b.ratio).unwrap_or(0.2);
        if !(0.0..=1.0).contains(&ratio) {
            return Err(FieldError::new(
                "spec.budget.ratio",
                format!("{ratio} is not between 0 and 1 (0.2: retries add at most 20 % load)"),
            ));
        }
        out.budget_ratio = ratio;
        let floor = budget.and_then(|b| b.min_retries_per_second).unwrap_or(10);
        if !(0..=100_000).contains(&floor) {
            return Err(FieldError::new(
                "spec.budget.minRetriesPerSecond",
                format!("{floor} is not between 0 and 100000"),
            ));
        }
        out.budget_min_per_second = floor as u32;
        let body = spec.max_body_bytes.unwrap_or(64 * 1024);
        if !(0..=16 * 1024 * 1024).contains(&body) {
            return Err(FieldError::new(
                "spec.maxBodyBytes",
                format!("{body} is not between 0 and 16777216"),
            ));
        }
        out.max_body_bytes = body as u64;
        Ok(out)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct FaultInjection {
    pub metadata: Metadata,
    pub spec: FaultInjectionSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultInjectionSpec {
    pub target_ref: TargetRef,
    #[serde(default)]
    pub abort: Option<Abort>,
    #[serde(default)]
    pub delay: Option<Delay>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Abort {
    /// Share of requests, 0 to 100 (fractions allowed).
    pub percent: f64,
    #[serde(default)]
    pub http_status: Option<i64>,
    /// A gRPC status name (`unavailable`, `UNAVAILABLE`) or number, for gRPC calls.
    #[serde(default)]
    pub grpc_status: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Delay {
    pub percent: f64,
    pub fixed_delay: String,
}

fn ppm(field: &str, percent: f64) -> Result<u32, FieldError> {
    if !(0.0..=100.0).contains(&percent) {
        return Err(FieldError::new(
            field,
            format!("{percent} is not a percentage between 0 and 100"),
        ));
    }
    Ok((percent * 10_000.0).round() as u32)
}

impl FaultInjection {
    pub fn target(&self) -> Target {
        self.spec.target_ref.target(&self.metadata)
    }

    pub fn to_pb(&self) -> Result<pb::Fault, FieldError> {
        let spec = &self.spec;
        spec.target_ref.check()?;
        if spec.abort.is_none() && spec.delay.is_none() {
            return Err(FieldError::new(
                "spec",
                "needs abort, delay or both (to stop an experiment, delete the object)",
            ));
        }
        let mut out = pb::Fault {
            source: format!(
                "FaultInjection {}/{}",
                namespace_of(&self.metadata),
                self.metadata.name
            ),
            ..Default::default()
        };
        if let Some(abort) = &spec.abort {
            out.abort_ppm = ppm("spec.abort.percent", abort.percent)?;
            let status = abort.http_status.unwrap_or(503);
            if !(200..=599).contains(&status) {
                return Err(FieldError::new(
                    "spec.abort.httpStatus",
                    format!("{status} is not an HTTP status between 200 and 599"),
                ));
            }
            out.abort_http_status = status as u32;
            out.abort_grpc_status = match &abort.grpc_status {
                None => 0,
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(code @ 1..=16) => code as u32,
                    _ => {
                        return Err(FieldError::new(
                            "spec.abort.grpcStatus",
                            format!("{n} is not a gRPC status between 1 and 16"),
                        ));
                    }
                },
                Some(Value::String(s)) => grpc_code(s).ok_or_else(|| {
                    FieldError::new(
                        "spec.abort.grpcStatus",
                        format!("`{s}` is not a gRPC status name such as UNAVAILABLE"),
                    )
                })?,
                Some(_) => {
                    return Err(FieldError::new(
                        "spec.abort.grpcStatus",
                        "must be a gRPC status name or number",
                    ));
                }
            };
        }
        if let Some(delay) = &spec.delay {
            out.delay_ppm = ppm("spec.delay.percent", delay.percent)?;
            out.delay_ms = parse_duration(&delay.fixed_delay)
                .map_err(|e| FieldError::new("spec.delay.fixedDelay", e))?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(spec: &str) -> Result<pb::RetryPolicy, FieldError> {
        let yaml = format!(
            "metadata: {{name: r}}\nspec:\n  targetRef: {{kind: Service, name: web}}\n{spec}"
        );
        let doc: Value = serde_saphyr::from_str(&yaml).expect("yaml");
        let p: RetryPolicy = serde_json::from_value(doc).expect("shape");
        p.to_pb()
    }

    #[test]
    fn retry_on_reads_classes_codes_and_grpc_names() {
        let p = retry(
            "  retryOn: [reset, gateway-error, 429, \"409\", UNAVAILABLE, resource-exhausted]\n",
        )
        .expect("valid");
        assert!(p.on_reset);
        assert_eq!(p.http_statuses, [409, 429, 502, 503, 504]);
        assert_eq!(p.grpc_statuses, [8, 14]);
        assert_eq!(p.max_retries, 2);
        assert_eq!((p.backoff_base_ms, p.backoff_max_ms), (25, 250));
        assert_eq!(p.source, "RetryPolicy default/r");
    }

    #[test]
    fn defaults_retry_resets_gateway_errors_and_unavailable() {
        let p = retry("").expect("valid");
        assert!(p.on_reset);
        assert_eq!(p.http_statuses, [502, 503, 504]);
        assert_eq!(p.grpc_statuses, [14]);
        assert_eq!(p.budget_ratio, 0.2);
        assert_eq!(p.budget_min_per_second, 10);
        assert_eq!(p.max_body_bytes, 65536);
    }

    #[test]
    fn bad_retry_fields_are_named() {
        let e = retry("  retryOn: [sometimes]\n").unwrap_err();
        assert_eq!(e.field, "spec.retryOn[0]");
        let e = retry("  maxRetries: 50\n").unwrap_err();
        assert_eq!(e.field, "spec.maxRetries");
        let e = retry("  budget: {ratio: 3}\n").unwrap_err();
        assert_eq!(e.field, "spec.budget.ratio");
        let e = retry("  backoff: {base: 1s, max: 10ms}\n").unwrap_err();
        assert_eq!(e.field, "spec.backoff.max");
        let e = retry("  perTryTimeout: soon\n").unwrap_err();
        assert_eq!(e.field, "spec.perTryTimeout");
    }

    fn fault(spec: &str) -> Result<pb::Fault, FieldError> {
        let yaml = format!(
            "metadata: {{name: f, namespace: shop}}\nspec:\n  targetRef: {{kind: HTTPRoute, name: web}}\n{spec}"
        );
        let doc: Value = serde_saphyr::from_str(&yaml).expect("yaml");
        let f: FaultInjection = serde_json::from_value(doc).expect("shape");
        assert_eq!(
            f.target(),
            Target::Route {
                kind: RouteKind::Http,
                namespace: "shop".into(),
                name: "web".into()
            }
        );
        f.to_pb()
    }

    #[test]
    fn faults_are_read_in_parts_per_million() {
        let f = fault("  abort: {percent: 10, httpStatus: 500, grpcStatus: UNAVAILABLE}\n  delay: {percent: 0.5, fixedDelay: 200ms}\n")
            .expect("valid");
        assert_eq!(f.abort_ppm, 100_000);
        assert_eq!((f.abort_http_status, f.abort_grpc_status), (500, 14));
        assert_eq!((f.delay_ppm, f.delay_ms), (5_000, 200));
        assert_eq!(f.source, "FaultInjection shop/f");
        assert_eq!(
            fault("  abort: {percent: 101}\n").unwrap_err().field,
            "spec.abort.percent"
        );
        assert_eq!(
            fault("  abort: {percent: 1, grpcStatus: NOPE}\n")
                .unwrap_err()
                .field,
            "spec.abort.grpcStatus"
        );
        assert_eq!(fault("").unwrap_err().field, "spec");
    }

    #[test]
    fn the_examples_are_valid() {
        for yaml in [
            include_str!("../../../examples/resilience/retry-policy.yaml"),
            include_str!("../../../examples/resilience/fault-injection.yaml"),
        ] {
            let doc: Value = serde_saphyr::from_str(yaml).expect("yaml");
            match super::super::parse_document(doc) {
                Ok(super::super::Parsed::Resource(..)) => {}
                other => panic!("{other:?}"),
            }
        }
    }
}
