//! The proxy's configuration: `PILLION_*` environment variables only, parsed once at start.
//!
//! Read through [`Env`] so that tests hand the parser a map instead of the process environment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Where configuration values come from.
pub trait Env {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl Env for HashMap<&str, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

/// A variable that is set but wrong.
#[derive(Debug, thiserror::Error)]
#[error("{var}={value:?}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `host:port` of the control plane's gRPC API.
    pub control_plane_addr: String,
    pub outbound_listen: SocketAddr,
    pub inbound_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The local application; `None`: 127.0.0.1 at the connection's original destination port.
    pub inbound_forward: Option<SocketAddr>,
    pub namespace: String,
    /// `namespace/name`.
    pub workload: String,
    pub shutdown_grace: Duration,
    pub connect_timeout: Duration,
    /// How long protocol detection waits for the client's first bytes before treating the
    /// connection as opaque TCP.
    pub detect_timeout: Duration,
    /// Ports whose protocols speak first from the server (SMTP, MySQL, ...): no detection.
    pub opaque_ports: Vec<u16>,
    /// How long a request waits for the first answer about a destination it has never seen.
    pub discovery_timeout: Duration,
    /// mTLS: set when `PILLION_TRUST_ANCHORS` is.
    pub identity: Option<crate::identity::IdentitySettings>,
    /// The control plane's SPIFFE ID: when set, the control-plane connection is TLS and the
    /// control plane must prove this identity.
    pub control_plane_identity: Option<pillion_proto::names::Identity>,
    pub inbound_policy: InboundPolicy,
    /// Destinations watched at once (least recently used forgotten past it).
    pub max_destinations: usize,
    /// Where spans go (`PILLION_ZIPKIN_URL`, `http://…/api/v2/spans`); `None`: no tracing.
    pub zipkin_url: Option<http::Uri>,
    /// Probability that a request arriving with no sampling decision is traced.
    pub trace_sample_rate: f64,
    /// `localEndpoint.serviceName` of this proxy's spans (`PILLION_SERVICE_NAME`, default
    /// `name.namespace` of the workload).
    pub service_name: String,
    /// One log line per request (`PILLION_ACCESS_LOG=on`; off by default).
    pub access_log: bool,
    /// How long a request waits for response headers when its route sets no timeout
    /// (`PILLION_REQUEST_TIMEOUT`, 30 s; `None`: no limit).
    pub request_timeout: Option<Duration>,
    /// Connections each listener holds at once (`PILLION_MAX_CONNECTIONS`); past it, accepting
    /// waits for one to close.
    pub max_connections: usize,
    /// An HTTP connection with no request in flight for this long is closed
    /// (`PILLION_IDLE_TIMEOUT`, 5 minutes).
    pub idle_timeout: Duration,
    /// Outlier ejection (`PILLION_OUTLIER_CONSECUTIVE_FAILURES`, 5, `off` or 0 to turn it off;
    /// `PILLION_OUTLIER_BASE_EJECTION`, 2 s, doubling per ejection in a row up to
    /// `PILLION_OUTLIER_MAX_EJECTION`, 60 s).
    pub outlier: crate::balance::outlier::Settings,
    /// Header size (`PILLION_MAX_HEADER_BYTES`, 64 KiB), HTTP/2 streams per connection
    /// (`PILLION_MAX_CONCURRENT_STREAMS`, 2,048) and the HTTP/1.1 header read timeout
    /// (`PILLION_HEADER_READ_TIMEOUT`, 30 s) of client connections.
    pub limits: crate::http::h2_server::Limits,
    /// Requests in flight per endpoint before the outbound side sheds load
    /// (`PILLION_MAX_REQUESTS_PER_ENDPOINT`, 10,000).
    pub max_requests_per_endpoint: u32,
    /// DNS for destinations outside the mesh in explicit mode (`PILLION_DNS`: `off`, the
    /// default; `system`; or name servers `ip[:port],...`).
    pub dns: Option<crate::control::dns::Servers>,
    /// How often the proxy reports to the control plane (`PILLION_REPORT_INTERVAL`, 5 s; `0`
    /// turns reports off). The control plane may ask for another interval while a canary runs.
    pub report_interval: Option<Duration>,
    /// The admin address reported (`PILLION_ADMIN_ADVERTISE`; by default the admin listener's,
    /// whose unspecified IP the control plane fills in with the proxy's).
    pub admin_advertise: Option<SocketAddr>,
}

/// Who may call the local application when no authorization says more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundPolicy {
    /// Anyone, meshed or not (the default, so unmeshed callers keep working).
    AllUnauthenticated,
    /// Only callers with a mesh identity (mTLS).
    AllAuthenticated,
    Deny,
}

impl Config {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let control_plane_addr = match env.get("PILLION_CONTROL_PLANE_ADDR") {
            Some(v) if valid_host_port(&v) => v,
            Some(v) => {
                return Err(ConfigError {
                    var: "PILLION_CONTROL_PLANE_ADDR",
                    value: v,
                    reason: "expected host:port".into(),
                });
            }
            None => {
                return Err(ConfigError {
                    var: "PILLION_CONTROL_PLANE_ADDR",
                    value: String::new(),
                    reason: "required (host:port of the control plane)".into(),
                });
            }
        };
        let workload = env
            .get("PILLION_WORKLOAD")
            .unwrap_or_else(|| "default/unknown".into());
        let namespace = match workload.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                ns.to_string()
            }
            _ => {
                return Err(ConfigError {
                    var: "PILLION_WORKLOAD",
                    value: workload,
                    reason: "expected namespace/name".into(),
                });
            }
        };
        let namespace_for_identity = namespace.clone();
        let workload_for_name = workload.clone();
        Ok(Config {
            control_plane_addr,
            outbound_listen: addr(env, "PILLION_OUTBOUND_LISTEN", "127.0.0.1:4140")?,
            inbound_listen: addr(env, "PILLION_INBOUND_LISTEN", "0.0.0.0:4143")?,
            admin_listen: addr(env, "PILLION_ADMIN_LISTEN", "0.0.0.0:4191")?,
            inbound_forward: match env.get("PILLION_INBOUND_FORWARD") {
                Some(v) => Some(parse_addr("PILLION_INBOUND_FORWARD", &v)?),
                None => None,
            },
            namespace,
            workload,
            shutdown_grace: duration(env, "PILLION_SHUTDOWN_GRACE", "30s")?,
            connect_timeout: duration(env, "PILLION_CONNECT_TIMEOUT", "1s")?,
            detect_timeout: duration(env, "PILLION_DETECT_TIMEOUT", "10s")?,
            opaque_ports: ports(
                env,
                "PILLION_OPAQUE_PORTS",
                "25,587,3306,4444,5432,6379,9300,11211",
            )?,
            discovery_timeout: duration(env, "PILLION_DISCOVERY_TIMEOUT", "10s")?,
            identity: identity(env, &namespace_for_identity)?,
            control_plane_identity: match env.get("PILLION_CONTROL_PLANE_IDENTITY") {
                None => None,
                Some(id) => {
                    if env.get("PILLION_TRUST_ANCHORS").is_none() {
                        return Err(ConfigError {
                            var: "PILLION_CONTROL_PLANE_IDENTITY",
                            value: id,
                            reason: "needs PILLION_TRUST_ANCHORS to verify the control plane"
                                .into(),
                        });
                    }
                    Some(pillion_proto::names::Identity::from_spiffe_id(&id).ok_or(
                        ConfigError {
                            var: "PILLION_CONTROL_PLANE_IDENTITY",
                            value: id,
                            reason: "not a SPIFFE ID like spiffe://cluster.local/ns/pillion/sa/control-plane".into(),
                        },
                    )?)
                }
            },
            request_timeout: optional_duration(env, "PILLION_REQUEST_TIMEOUT", "30s")?,
            max_connections: match count(env, "PILLION_MAX_CONNECTIONS", 20_000)? {
                // tokio's semaphore holds at most usize::MAX >> 3 permits; far above any limit.
                n if n > 10_000_000 => {
                    return Err(ConfigError {
                        var: "PILLION_MAX_CONNECTIONS",
                        value: n.to_string(),
                        reason: "at most 10000000".into(),
                    });
                }
                n => n,
            },
            idle_timeout: duration(env, "PILLION_IDLE_TIMEOUT", "5m")?,
            report_interval: optional_duration(env, "PILLION_REPORT_INTERVAL", "5s")?,
            admin_advertise: match env.get("PILLION_ADMIN_ADVERTISE") {
                Some(v) => Some(parse_addr("PILLION_ADMIN_ADVERTISE", &v)?),
                None => None,
            },
            dns: match env.get("PILLION_DNS") {
                None => None,
                Some(v) => dns_servers(&v)?,
            },
            max_requests_per_endpoint: bounded(
                env,
                "PILLION_MAX_REQUESTS_PER_ENDPOINT",
                10_000,
                1,
                u32::MAX,
            )?,
            limits: crate::http::h2_server::Limits {
                max_header_bytes: bounded(
                    env,
                    "PILLION_MAX_HEADER_BYTES",
                    64 * 1024,
                    1024,
                    16 << 20,
                )?,
                max_streams: bounded(env, "PILLION_MAX_CONCURRENT_STREAMS", 2048, 1, 1 << 20)?,
                header_read_timeout: duration(env, "PILLION_HEADER_READ_TIMEOUT", "30s")?,
                server: match env.get("PILLION_HTTP2").as_deref().map(str::trim) {
                    None | Some("pillion") => crate::http::h2_server::Implementation::Pillion,
                    Some("h2") => crate::http::h2_server::Implementation::H2,
                    Some(other) => {
                        return Err(ConfigError {
                            var: "PILLION_HTTP2",
                            value: other.to_string(),
                            reason: "expected pillion or h2".into(),
                        });
                    }
                },
                // `off` (or 0): no connection is closed for resetting its requests.
                early_reset_floor: match env.get("PILLION_RAPID_RESET_FLOOR") {
                    Some(v) if v.trim() == "off" || v.trim() == "0" => u64::MAX,
                    _ => count(
                        env,
                        "PILLION_RAPID_RESET_FLOOR",
                        crate::http::h2_server::EARLY_RESET_FLOOR as usize,
                    )? as u64,
                },
            },
            outlier: crate::balance::outlier::Settings {
                consecutive_failures: match env.get("PILLION_OUTLIER_CONSECUTIVE_FAILURES") {
                    Some(v) if v.trim() == "off" || v.trim() == "0" => 0,
                    _ => u32::try_from(count(env, "PILLION_OUTLIER_CONSECUTIVE_FAILURES", 5)?)
                        .unwrap_or(u32::MAX),
                },
                base_ejection: duration(env, "PILLION_OUTLIER_BASE_EJECTION", "2s")?,
                max_ejection: duration(env, "PILLION_OUTLIER_MAX_EJECTION", "60s")?,
            },
            max_destinations: count(
                env,
                "PILLION_MAX_DESTINATIONS",
                crate::control::discovery::MAX_WATCHES,
            )?,
            zipkin_url: match env.get("PILLION_ZIPKIN_URL") {
                None => None,
                Some(v) => Some(zipkin_url(&v)?),
            },
            trace_sample_rate: match env.get("PILLION_TRACE_SAMPLE_RATE") {
                None => DEFAULT_SAMPLE_RATE,
                Some(v) => match v.trim().parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => r,
                    _ => {
                        return Err(ConfigError {
                            var: "PILLION_TRACE_SAMPLE_RATE",
                            value: v,
                            reason: "expected a probability from 0 to 1, such as 0.01".into(),
                        });
                    }
                },
            },
            access_log: match env.get("PILLION_ACCESS_LOG").as_deref() {
                None | Some("off" | "false" | "0" | "") => false,
                Some("on" | "true" | "1") => true,
                Some(other) => {
                    return Err(ConfigError {
                        var: "PILLION_ACCESS_LOG",
                        value: other.to_string(),
                        reason: "expected on or off".into(),
                    });
                }
            },
            service_name: env.get("PILLION_SERVICE_NAME").unwrap_or_else(|| {
                let (ns, name) = workload_for_name.split_once('/').unwrap_or(("", ""));
                format!("{name}.{ns}")
            }),
            inbound_policy: match env.get("PILLION_INBOUND_DEFAULT_POLICY").as_deref() {
                None | Some("all-unauthenticated") => InboundPolicy::AllUnauthenticated,
                Some("all-authenticated") => InboundPolicy::AllAuthenticated,
                Some("deny") => InboundPolicy::Deny,
                Some(other) => {
                    return Err(ConfigError {
                        var: "PILLION_INBOUND_DEFAULT_POLICY",
                        value: other.to_string(),
                        reason: "expected all-unauthenticated, all-authenticated or deny".into(),
                    });
                }
            },
        })
    }
}

/// `PILLION_TRUST_ANCHORS` (PEM inline, or a file), `PILLION_IDENTITY_TOKEN_FILE`,
/// `PILLION_SERVICE_ACCOUNT` (default `default`), `PILLION_TRUST_DOMAIN` (default
/// `cluster.local`). No anchors: no mTLS.
fn identity(
    env: &dyn Env,
    namespace: &str,
) -> Result<Option<crate::identity::IdentitySettings>, ConfigError> {
    let Some(anchors) = env.get("PILLION_TRUST_ANCHORS") else {
        return Ok(None);
    };
    let trust_anchors_pem = if anchors.trim_start().starts_with("-----BEGIN") {
        anchors
    } else {
        std::fs::read_to_string(&anchors).map_err(|e| ConfigError {
            var: "PILLION_TRUST_ANCHORS",
            value: anchors.clone(),
            reason: format!("neither PEM nor a readable file: {e}"),
        })?
    };
    if let Err(e) = crate::identity::roots(&trust_anchors_pem) {
        return Err(ConfigError {
            var: "PILLION_TRUST_ANCHORS",
            value: trust_anchors_pem
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
            reason: e.to_string(),
        });
    }
    let token_file = env.get("PILLION_IDENTITY_TOKEN_FILE").ok_or(ConfigError {
        var: "PILLION_IDENTITY_TOKEN_FILE",
        value: String::new(),
        reason:
            "required with PILLION_TRUST_ANCHORS (the token that proves this workload's identity)"
                .into(),
    })?;
    let sa = env
        .get("PILLION_SERVICE_ACCOUNT")
        .unwrap_or_else(|| "default".into());
    let td = env
        .get("PILLION_TRUST_DOMAIN")
        .unwrap_or_else(|| "cluster.local".into());
    let id = format!("spiffe://{td}/ns/{namespace}/sa/{sa}");
    let identity = pillion_proto::names::Identity::from_spiffe_id(&id).ok_or(ConfigError {
        var: "PILLION_SERVICE_ACCOUNT",
        value: sa,
        reason: format!("`{id}` is not a valid identity (lowercase names, digits, `-`, `.`)"),
    })?;
    Ok(Some(crate::identity::IdentitySettings {
        identity,
        token_file: token_file.into(),
        trust_anchors_pem,
    }))
}

fn valid_host_port(v: &str) -> bool {
    match v.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

fn parse_addr(var: &'static str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| ConfigError {
        var,
        value: v.to_string(),
        reason: "expected ip:port (IPv6 as [::1]:port)".into(),
    })
}

fn addr(env: &dyn Env, var: &'static str, default: &str) -> Result<SocketAddr, ConfigError> {
    parse_addr(var, &env.get(var).unwrap_or_else(|| default.to_string()))
}

fn duration(env: &dyn Env, var: &'static str, default: &str) -> Result<Duration, ConfigError> {
    let v = env.get(var).unwrap_or_else(|| default.to_string());
    pillion_core::duration::parse(&v).map_err(|reason| ConfigError {
        var,
        value: v,
        reason,
    })
}

/// How many threads serve traffic: `PILLION_CORES`, by default the CPUs this process may use
/// (its affinity mask and cgroup CPU quota, as `available_parallelism` reads them), at most 64.
/// One core runs a single-threaded runtime: a sidecar is usually given one CPU or less, and the
/// work-stealing scheduler's cross-thread queues and wake-ups cost it CPU for no parallelism.
pub fn runtime_cores(env: &dyn Env) -> Result<usize, ConfigError> {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(count(env, "PILLION_CORES", available)?.min(64))
}

/// `PILLION_BUSY_POLL`: how long a runtime thread watches for events before it sleeps
/// (`crate::runtime`); `None` (the default, `0`) sleeps at once.
pub fn busy_poll(env: &dyn Env) -> Result<Option<Duration>, ConfigError> {
    let v = env.get("PILLION_BUSY_POLL").unwrap_or_else(|| "0".into());
    pillion_core::duration::parse_busy_poll(&v).map_err(|reason| ConfigError {
        var: "PILLION_BUSY_POLL",
        value: v,
        reason,
    })
}

/// Requests arriving with no sampling decision traced by default: 1 %.
pub const DEFAULT_SAMPLE_RATE: f64 = 0.01;

/// An `http://` URL of a Zipkin collector's span endpoint.
fn zipkin_url(v: &str) -> Result<http::Uri, ConfigError> {
    let bad = |reason: &str| ConfigError {
        var: "PILLION_ZIPKIN_URL",
        value: v.to_string(),
        reason: reason.into(),
    };
    let uri: http::Uri = v
        .trim()
        .parse()
        .map_err(|_| bad("not a URL such as http://zipkin.tracing:9411/api/v2/spans"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(bad("expected http://host:port/api/v2/spans"));
    }
    Ok(uri)
}

/// A positive number.
fn count(env: &dyn Env, var: &'static str, default: usize) -> Result<usize, ConfigError> {
    match env.get(var) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ConfigError {
                var,
                value: v,
                reason: "expected a positive number".into(),
            }),
        },
    }
}

/// `PILLION_DNS`: `off`, `system`, or name servers as `ip[:port]` (port 53 by default).
fn dns_servers(v: &str) -> Result<Option<crate::control::dns::Servers>, ConfigError> {
    use crate::control::dns::Servers;
    match v.trim() {
        "" | "off" => return Ok(None),
        "system" => return Ok(Some(Servers::System)),
        _ => {}
    }
    let mut servers = Vec::new();
    for part in v.split(',').map(str::trim) {
        let addr = part
            .parse::<std::net::SocketAddr>()
            .or_else(|_| {
                part.parse::<std::net::IpAddr>()
                    .map(|ip| std::net::SocketAddr::new(ip, 53))
            })
            .map_err(|_| ConfigError {
                var: "PILLION_DNS",
                value: v.to_string(),
                reason: format!(
                    "`{part}` is not a name server address (ip or ip:port); use off, system, or a comma-separated list"
                ),
            })?;
        servers.push(addr);
    }
    Ok(Some(Servers::Given(servers)))
}

/// A number within `min..=max`.
fn bounded(
    env: &dyn Env,
    var: &'static str,
    default: u32,
    min: u32,
    max: u32,
) -> Result<u32, ConfigError> {
    let n = count(env, var, default as usize)?;
    match u32::try_from(n) {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError {
            var,
            value: n.to_string(),
            reason: format!("expected a number from {min} to {max}"),
        }),
    }
}

/// A duration where zero means "none" (no limit).
fn optional_duration(
    env: &dyn Env,
    var: &'static str,
    default: &str,
) -> Result<Option<Duration>, ConfigError> {
    Ok(Some(duration(env, var, default)?).filter(|d| !d.is_zero()))
}

fn ports(env: &dyn Env, var: &'static str, default: &str) -> Result<Vec<u16>, ConfigError> {
    let v = env.get(var).unwrap_or_else(|| default.to_string());
    v.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u16>().map_err(|_| ConfigError {
                var,
                value: v.clone(),
                reason: format!("`{p}` is not a port number"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&'static str, &str)]) -> HashMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn defaults_apply() {
        let c = Config::from_env(&env(&[("PILLION_CONTROL_PLANE_ADDR", "cp:8086")])).unwrap();
        assert_eq!(c.outbound_listen.to_string(), "127.0.0.1:4140");
        assert_eq!(c.inbound_listen.to_string(), "0.0.0.0:4143");
        assert_eq!(c.admin_listen.to_string(), "0.0.0.0:4191");
        assert_eq!(c.namespace, "default");
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.request_timeout, Some(Duration::from_secs(30)));
        let c = Config::from_env(&env(&[
            ("PILLION_CONTROL_PLANE_ADDR", "cp:8086"),
            ("PILLION_CONNECT_TIMEOUT", "1m30s"),
            ("PILLION_REQUEST_TIMEOUT", "0"),
        ]))
        .unwrap();
        assert_eq!(c.connect_timeout, Duration::from_secs(90));
        assert_eq!(c.request_timeout, None);
        assert!(c.opaque_ports.contains(&3306));
    }

    #[test]
    fn cores_default_to_the_cpus_available_and_refuse_zero() {
        let available = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(runtime_cores(&env(&[])).unwrap(), available.min(64));
        assert_eq!(runtime_cores(&env(&[("PILLION_CORES", "1")])).unwrap(), 1);
        assert_eq!(
            runtime_cores(&env(&[("PILLION_CORES", "1000")])).unwrap(),
            64
        );
        for bad in ["0", "two", "-1"] {
            let err = runtime_cores(&env(&[("PILLION_CORES", bad)])).unwrap_err();
            assert!(err.to_string().starts_with("PILLION_CORES"), "{err}");
        }
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = Config::from_env(&env(&[])).unwrap_err();
        assert_eq!(err.var, "PILLION_CONTROL_PLANE_ADDR");
        for (var, value) in [
            ("PILLION_OUTBOUND_LISTEN", "localhost"),
            ("PILLION_WORKLOAD", "no-namespace"),
            ("PILLION_SHUTDOWN_GRACE", "soon"),
            ("PILLION_REQUEST_TIMEOUT", "10 parsecs"),
            ("PILLION_MAX_DESTINATIONS", "0"),
            ("PILLION_MAX_CONNECTIONS", "9999999999999999999"),
            ("PILLION_ZIPKIN_URL", "zipkin:9411"),
            ("PILLION_TRACE_SAMPLE_RATE", "2"),
            ("PILLION_DNS", "ns1.example"),
            ("PILLION_MAX_HEADER_BYTES", "10"),
            ("PILLION_MAX_CONCURRENT_STREAMS", "0"),
            ("PILLION_HTTP2", "nghttp2"),
            ("PILLION_MAX_REQUESTS_PER_ENDPOINT", "-1"),
            ("PILLION_OUTLIER_CONSECUTIVE_FAILURES", "many"),
            ("PILLION_OUTLIER_BASE_EJECTION", "a while"),
            ("PILLION_HEADER_READ_TIMEOUT", "later"),
            ("PILLION_OPAQUE_PORTS", "25,smtp"),
            ("PILLION_RAPID_RESET_FLOOR", "lots"),
        ] {
            let err = Config::from_env(&env(&[
                ("PILLION_CONTROL_PLANE_ADDR", "cp:8086"),
                (var, value),
            ]))
            .unwrap_err();
            assert_eq!(err.var, var);
            assert!(err.to_string().starts_with(var), "{err}");
        }
    }

    #[test]
    fn ipv6_listeners_parse() {
        let c = Config::from_env(&env(&[
            ("PILLION_CONTROL_PLANE_ADDR", "[::1]:8086"),
            ("PILLION_INBOUND_LISTEN", "[::]:4143"),
            ("PILLION_WORKLOAD", "shop/cart"),
        ]))
        .unwrap();
        assert!(c.inbound_listen.is_ipv6());
        assert_eq!(c.namespace, "shop");
    }

    #[test]
    fn resilience_settings_parse() {
        let base = ("PILLION_CONTROL_PLANE_ADDR", "cp:8086");
        let c = Config::from_env(&env(&[base])).unwrap();
        assert_eq!(c.dns, None);
        assert_eq!(c.outlier, crate::balance::outlier::Settings::default());
        assert_eq!(c.limits, crate::http::h2_server::Limits::default());
        assert_eq!(c.max_requests_per_endpoint, 10_000);
        let c = Config::from_env(&env(&[
            base,
            ("PILLION_DNS", "10.0.0.10, 127.0.0.1:5353"),
            ("PILLION_OUTLIER_CONSECUTIVE_FAILURES", "off"),
            ("PILLION_MAX_HEADER_BYTES", "8192"),
        ]))
        .unwrap();
        assert_eq!(
            c.dns,
            Some(crate::control::dns::Servers::Given(vec![
                "10.0.0.10:53".parse().unwrap(),
                "127.0.0.1:5353".parse().unwrap()
            ]))
        );
        assert_eq!(c.outlier.consecutive_failures, 0);
        assert_eq!(c.limits.max_header_bytes, 8192);
        let c = Config::from_env(&env(&[base, ("PILLION_DNS", "system")])).unwrap();
        assert_eq!(c.dns, Some(crate::control::dns::Servers::System));
        for (value, floor) in [("2000", 2000), ("off", u64::MAX), ("0", u64::MAX)] {
            let c = Config::from_env(&env(&[base, ("PILLION_RAPID_RESET_FLOOR", value)])).unwrap();
            assert_eq!(c.limits.early_reset_floor, floor);
        }
    }
}
