//! Per-pod settings from `config.pillion.dev/*` annotations. Every value is checked; a bad one
//! is reported with the annotation, the value and the reason (never silently ignored), and the
//! default stays in force for it.

use serde_json::{Map, Value};

pub const PREFIX: &str = "config.pillion.dev/";

/// The proxy container's resources; `None`: not set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
}

/// What a pod's annotations change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub skip_inbound_ports: Vec<PortRange>,
    pub skip_outbound_ports: Vec<PortRange>,
    pub resources: Resources,
    pub log_level: Option<String>,
    pub trace_sample_rate: Option<f64>,
    /// Proxy variables set by [`PROXY_SETTINGS`] annotations, in annotation order.
    pub proxy_env: Vec<(&'static str, String)>,
}

/// How a proxy setting's value is checked.
#[derive(Clone, Copy)]
enum Check {
    Duration,
    /// A positive whole number.
    Count,
    /// A positive whole number, or `off`.
    CountOrOff,
    /// `off`, `system`, or name servers `ip[:port],...`.
    Dns,
    /// A duration up to the proxy's limit (`pillion_core::duration::BUSY_POLL_MAX`).
    BusyPoll,
}

/// Proxy settings a pod may choose (`config.pillion.dev/<name>`), the variable each sets and
/// how it is checked (docs/configuration.md describes the variables).
const PROXY_SETTINGS: &[(&str, &str, Check)] = &[
    (
        "request-timeout",
        "PILLION_REQUEST_TIMEOUT",
        Check::Duration,
    ),
    ("idle-timeout", "PILLION_IDLE_TIMEOUT", Check::Duration),
    (
        "outlier-consecutive-failures",
        "PILLION_OUTLIER_CONSECUTIVE_FAILURES",
        Check::CountOrOff,
    ),
    (
        "outlier-base-ejection",
        "PILLION_OUTLIER_BASE_EJECTION",
        Check::Duration,
    ),
    (
        "outlier-max-ejection",
        "PILLION_OUTLIER_MAX_EJECTION",
        Check::Duration,
    ),
    ("max-header-bytes", "PILLION_MAX_HEADER_BYTES", Check::Count),
    (
        "max-concurrent-streams",
        "PILLION_MAX_CONCURRENT_STREAMS",
        Check::Count,
    ),
    (
        "max-requests-per-endpoint",
        "PILLION_MAX_REQUESTS_PER_ENDPOINT",
        Check::Count,
    ),
    ("dns", "PILLION_DNS", Check::Dns),
    ("busy-poll", "PILLION_BUSY_POLL", Check::BusyPoll),
    (
        "rapid-reset-floor",
        "PILLION_RAPID_RESET_FLOOR",
        Check::CountOrOff,
    ),
];

fn check(kind: Check, text: &str) -> Result<(), String> {
    let count = |t: &str| match t.parse::<u32>() {
        Ok(n) if n > 0 => Ok(()),
        _ => Err("expected a positive whole number".to_string()),
    };
    match kind {
        Check::Duration => pillion_core::duration::parse(text).map(|_| ()),
        Check::BusyPoll => pillion_core::duration::parse_busy_poll(text).map(|_| ()),
        Check::Count => count(text),
        Check::CountOrOff if text == "off" => Ok(()),
        Check::CountOrOff => count(text).map_err(|e| format!("{e}, or off")),
        Check::Dns if matches!(text, "off" | "system") => Ok(()),
        Check::Dns => text.split(',').map(str::trim).try_for_each(|part| {
            let ok = part.parse::<std::net::SocketAddr>().is_ok()
                || part.parse::<std::net::IpAddr>().is_ok();
            ok.then_some(())
                .ok_or_else(|| format!("{part:?} is not off, system or a name server ip[:port]"))
        }),
    }
}

/// One port, or an inclusive range `lo-hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}:{}", self.lo, self.hi)
        }
    }
}

/// A list of ports and ranges, as flags take it (`4191,9000-9010`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortList(pub Vec<PortRange>);

impl std::str::FromStr for PortList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        port_list(s).map(PortList)
    }
}

/// A refused annotation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("annotation {annotation}: {value:?}: {reason}")]
pub struct OverrideError {
    pub annotation: String,
    pub value: String,
    pub reason: String,
}

/// The annotations this version understands, for the "unknown annotation" message.
const KNOWN: &[&str] = &[
    "skip-inbound-ports",
    "skip-outbound-ports",
    "proxy-cpu-request",
    "proxy-cpu-limit",
    "proxy-memory-request",
    "proxy-memory-limit",
    "proxy-log-level",
    "trace-sample-rate",
];

/// Reads every `config.pillion.dev/*` annotation; the errors list each refused one.
pub fn parse(annotations: Option<&Map<String, Value>>) -> (Overrides, Vec<OverrideError>) {
    let mut out = Overrides::default();
    let mut errors = Vec::new();
    let Some(annotations) = annotations else {
        return (out, errors);
    };
    for (key, value) in annotations {
        let Some(name) = key.strip_prefix(PREFIX) else {
            continue;
        };
        let error = |value: String, reason: String| OverrideError {
            annotation: key.clone(),
            value,
            reason,
        };
        let Some(text) = value.as_str() else {
            errors.push(error(
                value.to_string(),
                "annotation values are strings".into(),
            ));
            continue;
        };
        let text = text.trim();
        let result: Result<(), String> = match name {
            "skip-inbound-ports" => port_list(text).map(|p| out.skip_inbound_ports = p),
            "skip-outbound-ports" => port_list(text).map(|p| out.skip_outbound_ports = p),
            "proxy-cpu-request" => {
                check_quantity(text).map(|_| out.resources.cpu_request = Some(text.into()))
            }
            "proxy-cpu-limit" => {
                check_quantity(text).map(|_| out.resources.cpu_limit = Some(text.into()))
            }
            "proxy-memory-request" => {
                check_quantity(text).map(|_| out.resources.memory_request = Some(text.into()))
            }
            "proxy-memory-limit" => {
                check_quantity(text).map(|_| out.resources.memory_limit = Some(text.into()))
            }
            "proxy-log-level" => check_log_filter(text).map(|_| out.log_level = Some(text.into())),
            "trace-sample-rate" => match text.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => {
                    out.trace_sample_rate = Some(r);
                    Ok(())
                }
                _ => Err("expected a probability from 0 to 1, such as 0.01".into()),
            },
            _ => match PROXY_SETTINGS.iter().find(|(n, _, _)| *n == name) {
                Some((_, var, kind)) => {
                    check(*kind, text).map(|_| out.proxy_env.push((var, text.to_string())))
                }
                None => Err(format!(
                    "unknown annotation; known: {}, {}",
                    KNOWN.join(", "),
                    PROXY_SETTINGS
                        .iter()
                        .map(|(n, _, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            },
        };
        if let Err(reason) = result {
            errors.push(error(text.to_string(), reason));
        }
    }
    // A request above its limit is a pod the API server refuses: report it here instead.
    for (what, request, limit) in [
        ("cpu", &out.resources.cpu_request, &out.resources.cpu_limit),
        (
            "memory",
            &out.resources.memory_request,
            &out.resources.memory_limit,
        ),
    ] {
        if let (Some(r), Some(l)) = (request, limit)
            && let (Some(rv), Some(lv)) = (quantity_value(r), quantity_value(l))
            && rv > lv
        {
            errors.push(OverrideError {
                annotation: format!("{PREFIX}proxy-{what}-request"),
                value: r.clone(),
                reason: format!("above the limit {l}"),
            });
        }
    }
    (out, errors)
}

/// `25,443,8000-8010`: ports and inclusive ranges, 1 to 65535.
pub fn port_list(text: &str) -> Result<Vec<PortRange>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let port = |s: &str| match s.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{s:?} is not a port (1 to 65535)")),
            Ok(p) => Ok(p),
        };
        let (lo, hi) = (port(lo)?, port(hi)?);
        if lo > hi {
            return Err(format!("range {part}: the first port is above the last"));
        }
        out.push(PortRange { lo, hi });
    }
    Ok(out)
}

/// A Kubernetes resource quantity (`500m`, `1`, `1.5`, `128Mi`, `1e3`), not negative.
pub fn check_quantity(text: &str) -> Result<(), String> {
    quantity_value(text)
        .map(|_| ())
        .ok_or_else(|| "not a Kubernetes quantity (such as 100m, 1, 128Mi or 1Gi)".into())
}

/// The value of a quantity, for comparing a request with its limit.
fn quantity_value(text: &str) -> Option<f64> {
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    let number = number.strip_prefix('+').unwrap_or(number);
    if !number.chars().all(|c| c.is_ascii_digit() || c == '.') || number.is_empty() {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().ok()?;
            10f64.powi(e)
        }
        _ => return None,
    };
    Some(value * factor)
}

/// A `PILLION_LOG` filter the proxy will accept.
fn check_log_filter(text: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(text)
        .map(|_| ())
        .map_err(|e| {
            format!("not a log filter ({e}); for example info or warn,pillion_proxy=debug")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_json(v: Value) -> (Overrides, Vec<OverrideError>) {
        parse(v.as_object())
    }

    #[test]
    fn good_values_apply() {
        let (o, errors) = parse_json(json!({
            "config.pillion.dev/skip-inbound-ports": "25, 8000-8010",
            "config.pillion.dev/skip-outbound-ports": "3306",
            "config.pillion.dev/proxy-cpu-request": "50m",
            "config.pillion.dev/proxy-cpu-limit": "1",
            "config.pillion.dev/proxy-memory-limit": "128Mi",
            "config.pillion.dev/proxy-log-level": "warn,pillion_proxy=debug",
            "config.pillion.dev/trace-sample-rate": "0.5",
            "unrelated.example.com/x": "anything",
        }));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            o.skip_inbound_ports,
            vec![
                PortRange { lo: 25, hi: 25 },
                PortRange { lo: 8000, hi: 8010 }
            ]
        );
        assert_eq!(
            o.skip_outbound_ports,
            vec![PortRange { lo: 3306, hi: 3306 }]
        );
        assert_eq!(o.resources.cpu_request.as_deref(), Some("50m"));
        assert_eq!(o.resources.memory_limit.as_deref(), Some("128Mi"));
        assert_eq!(o.log_level.as_deref(), Some("warn,pillion_proxy=debug"));
        assert_eq!(o.trace_sample_rate, Some(0.5));
    }

    #[test]
    fn proxy_settings_become_its_variables() {
        let (o, errors) = parse_json(json!({
            "config.pillion.dev/outlier-consecutive-failures": "off",
            "config.pillion.dev/request-timeout": "5s",
            "config.pillion.dev/dns": "10.96.0.10:53",
            "config.pillion.dev/max-header-bytes": "32768",
            "config.pillion.dev/busy-poll": "50us",
            "config.pillion.dev/rapid-reset-floor": "5000",
        }));
        assert!(errors.is_empty(), "{errors:?}");
        let mut env = o.proxy_env.clone();
        env.sort();
        assert_eq!(
            env,
            vec![
                ("PILLION_BUSY_POLL", "50us".to_string()),
                ("PILLION_DNS", "10.96.0.10:53".to_string()),
                ("PILLION_MAX_HEADER_BYTES", "32768".to_string()),
                ("PILLION_OUTLIER_CONSECUTIVE_FAILURES", "off".to_string()),
                ("PILLION_RAPID_RESET_FLOOR", "5000".to_string()),
                ("PILLION_REQUEST_TIMEOUT", "5s".to_string()),
            ]
        );
        let (o, errors) = parse_json(json!({
            "config.pillion.dev/outlier-base-ejection": "a while",
            "config.pillion.dev/max-requests-per-endpoint": "0",
            "config.pillion.dev/dns": "dns.example",
            "config.pillion.dev/busy-poll": "1s",
            "config.pillion.dev/rapid-reset-floor": "many",
        }));
        assert_eq!(errors.len(), 5, "{errors:#?}");
        assert!(o.proxy_env.is_empty());
    }

    #[test]
    fn every_bad_value_is_reported_and_not_applied() {
        let (o, errors) = parse_json(json!({
            "config.pillion.dev/skip-inbound-ports": "25,http",
            "config.pillion.dev/skip-outbound-ports": "90-80",
            "config.pillion.dev/proxy-cpu-limit": "2 cores",
            "config.pillion.dev/proxy-memory-request": "-1Gi",
            "config.pillion.dev/proxy-log-level": "pillion_proxy=loud",
            "config.pillion.dev/trace-sample-rate": "1.5",
            "config.pillion.dev/proxy-cpu": "1",
            "config.pillion.dev/proxy-memory-limit": 5,
        }));
        let names: Vec<&str> = errors.iter().map(|e| e.annotation.as_str()).collect();
        assert_eq!(errors.len(), 8, "{errors:#?}");
        for n in [
            "config.pillion.dev/skip-inbound-ports",
            "config.pillion.dev/skip-outbound-ports",
            "config.pillion.dev/proxy-cpu-limit",
            "config.pillion.dev/proxy-memory-request",
            "config.pillion.dev/proxy-log-level",
            "config.pillion.dev/trace-sample-rate",
            "config.pillion.dev/proxy-cpu",
            "config.pillion.dev/proxy-memory-limit",
        ] {
            assert!(names.contains(&n), "{n} not reported: {errors:#?}");
        }
        assert_eq!(o, Overrides::default());
        let text = errors[0].to_string();
        assert!(text.starts_with("annotation config.pillion.dev/"), "{text}");
    }

    #[test]
    fn a_request_above_its_limit_is_refused() {
        let (_, errors) = parse_json(json!({
            "config.pillion.dev/proxy-memory-request": "1Gi",
            "config.pillion.dev/proxy-memory-limit": "512Mi",
        }));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].reason.contains("above the limit 512Mi"));
    }

    #[test]
    fn quantities() {
        for good in ["1", "0.5", "100m", "128Mi", "1Gi", "1e3", "2k", "+1"] {
            assert!(check_quantity(good).is_ok(), "{good}");
        }
        for bad in ["", "m", "1.2.3", "-1", "1 Gi", "1gb", "abc", "1e"] {
            assert!(check_quantity(bad).is_err(), "{bad}");
        }
        assert_eq!(quantity_value("250m"), Some(0.25));
    }
}
