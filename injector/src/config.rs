//! What every injected sidecar gets, the same for the webhook and for `pillion inject`: images,
//! where the control plane is, the identity settings, ports and default resources. Flags, each
//! with a `PILLION_*` twin; the Helm chart sets them on the injector's Deployment.

use std::path::PathBuf;

/// The ports the proxy listens on in an injected pod, and the user its traffic leaves as.
pub const INBOUND_PORT: u16 = 4143;
pub const OUTBOUND_PORT: u16 = 4140;
pub const ADMIN_PORT: u16 = 4191;
/// The proxy runs as this user; `pillion-init` lets its outbound connections through
/// untouched, which is what stops the proxy's own traffic looping back into it.
pub const PROXY_UID: i64 = 2102;

/// Where the projected identity token is mounted in the proxy container.
pub const TOKEN_DIR: &str = "/var/run/secrets/pillion.dev/serviceaccount";

#[derive(clap::Args, Debug, Clone)]
pub struct SidecarArgs {
    /// Image of the proxy container (it also holds `pillion-init`).
    #[arg(long, env = "PILLION_PROXY_IMAGE", default_value = concat!("ghcr.io/pillion-mesh/pillion-proxy:v", env!("CARGO_PKG_VERSION")))]
    pub proxy_image: String,
    /// Image of the `pillion-init` init container (default: the proxy image).
    #[arg(long, env = "PILLION_INIT_IMAGE")]
    pub init_image: Option<String>,
    /// `imagePullPolicy` of both containers.
    #[arg(long, env = "PILLION_IMAGE_PULL_POLICY", default_value = "IfNotPresent", value_parser = ["Always", "IfNotPresent", "Never"])]
    pub image_pull_policy: String,
    /// `host:port` of the control plane's gRPC API, as proxies reach it.
    #[arg(
        long,
        env = "PILLION_CONTROL_PLANE_ADDR",
        default_value = "pillion-control-plane.pillion.svc.cluster.local:8086"
    )]
    pub control_plane_addr: String,
    /// The control plane's SPIFFE ID (proxies then insist on TLS to it).
    #[arg(long, env = "PILLION_CONTROL_PLANE_IDENTITY")]
    pub control_plane_identity: Option<String>,
    /// PEM file of the mesh's trust anchors; without it injected proxies run without mTLS.
    #[arg(long, env = "PILLION_TRUST_ANCHORS_FILE")]
    pub trust_anchors_file: Option<PathBuf>,
    /// Trust domain of the workload identities.
    #[arg(long, env = "PILLION_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Audience of the projected service-account token the proxy proves its identity with.
    #[arg(
        long,
        env = "PILLION_TOKEN_AUDIENCE",
        default_value = "identity.pillion.dev"
    )]
    pub token_audience: String,
    /// Default `PILLION_LOG` of injected proxies.
    #[arg(
        long,
        env = "PILLION_PROXY_LOG",
        default_value = "warn,pillion_proxy=info"
    )]
    pub proxy_log: String,
    /// Zipkin span endpoint for injected proxies (none: no tracing).
    #[arg(long, env = "PILLION_ZIPKIN_URL")]
    pub zipkin_url: Option<String>,
    /// Default trace sample rate of injected proxies.
    #[arg(long, env = "PILLION_TRACE_SAMPLE_RATE")]
    pub trace_sample_rate: Option<f64>,
    /// Default CPU request of the proxy container.
    #[arg(long, env = "PILLION_PROXY_CPU_REQUEST", default_value = "100m")]
    pub proxy_cpu_request: String,
    /// Default CPU limit of the proxy container (none: no limit).
    #[arg(long, env = "PILLION_PROXY_CPU_LIMIT")]
    pub proxy_cpu_limit: Option<String>,
    /// Default memory request of the proxy container.
    #[arg(long, env = "PILLION_PROXY_MEMORY_REQUEST", default_value = "32Mi")]
    pub proxy_memory_request: String,
    /// Default memory limit of the proxy container.
    #[arg(long, env = "PILLION_PROXY_MEMORY_LIMIT", default_value = "256Mi")]
    pub proxy_memory_limit: Option<String>,
}

/// The settings resolved once: the trust anchors read, defaults checked.
#[derive(Debug, Clone)]
pub struct Sidecar {
    pub proxy_image: String,
    pub init_image: String,
    pub image_pull_policy: String,
    pub control_plane_addr: String,
    pub control_plane_identity: Option<String>,
    pub trust_anchors_pem: Option<String>,
    pub trust_domain: String,
    pub token_audience: String,
    pub proxy_log: String,
    pub zipkin_url: Option<String>,
    pub trace_sample_rate: Option<f64>,
    pub resources: crate::overrides::Resources,
    pub version: &'static str,
}

#[derive(Debug, thiserror::Error)]
#[error("{flag}: {reason}")]
pub struct SidecarError {
    pub flag: &'static str,
    pub reason: String,
}

impl SidecarArgs {
    pub fn resolve(self) -> Result<Sidecar, SidecarError> {
        let trust_anchors_pem = match &self.trust_anchors_file {
            None => None,
            Some(path) => {
                let pem = std::fs::read_to_string(path).map_err(|e| SidecarError {
                    flag: "--trust-anchors-file",
                    reason: format!("{}: {e}", path.display()),
                })?;
                if !pem.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(SidecarError {
                        flag: "--trust-anchors-file",
                        reason: format!("{}: no PEM certificate in it", path.display()),
                    });
                }
                Some(pem)
            }
        };
        if let Some(rate) = self.trace_sample_rate
            && !(0.0..=1.0).contains(&rate)
        {
            return Err(SidecarError {
                flag: "--trace-sample-rate",
                reason: format!("{rate}: expected a probability from 0 to 1"),
            });
        }
        let quantity = |flag: &'static str, v: &str| {
            crate::overrides::check_quantity(v).map_err(|reason| SidecarError {
                flag,
                reason: format!("{v:?}: {reason}"),
            })
        };
        quantity("--proxy-cpu-request", &self.proxy_cpu_request)?;
        quantity("--proxy-memory-request", &self.proxy_memory_request)?;
        if let Some(v) = &self.proxy_cpu_limit {
            quantity("--proxy-cpu-limit", v)?;
        }
        if let Some(v) = &self.proxy_memory_limit {
            quantity("--proxy-memory-limit", v)?;
        }
        Ok(Sidecar {
            init_image: self
                .init_image
                .clone()
                .unwrap_or_else(|| self.proxy_image.clone()),
            proxy_image: self.proxy_image,
            image_pull_policy: self.image_pull_policy,
            control_plane_addr: self.control_plane_addr,
            control_plane_identity: self.control_plane_identity,
            trust_anchors_pem,
            trust_domain: self.trust_domain,
            token_audience: self.token_audience,
            proxy_log: self.proxy_log,
            zipkin_url: self.zipkin_url,
            trace_sample_rate: self.trace_sample_rate,
            resources: crate::overrides::Resources {
                cpu_request: Some(self.proxy_cpu_request),
                cpu_limit: self.proxy_cpu_limit,
                memory_request: Some(self.proxy_memory_request),
                memory_limit: self.proxy_memory_limit,
            },
            version: env!("CARGO_PKG_VERSION"),
        })
    }
}
