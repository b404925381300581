//! Whether a pod gets the sidecar, and the RFC 6902 JSON Patch that adds it. The patch is
//! built against the pod as it is (no `initContainers`, no `annotations`, existing volumes,
//! keys that need `~1`), so the API server can apply it to exactly that object; `pillion
//! inject` applies the same patch to pod templates in YAML.

use serde_json::{Map, Value, json};

use crate::config::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT, PROXY_UID, Sidecar, TOKEN_DIR};
use crate::overrides::{self, OverrideError, Resources};

pub const INJECT: &str = "pillion.dev/inject";
/// Set on injected pods: the Pillion version that injected them.
pub const INJECTED: &str = "pillion.dev/injected";
/// Set on pods that asked for the sidecar and did not get it: why.
pub const SKIPPED: &str = "pillion.dev/inject-skipped";
pub const PROXY_CONTAINER: &str = "pillion-proxy";
pub const INIT_CONTAINER: &str = "pillion-init";
const TOKEN_VOLUME: &str = "pillion-identity-token";
const XTABLES_VOLUME: &str = "pillion-xtables-lock";

/// Why a pod did not get the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Neither the pod nor its namespace asked for it.
    NotEnabled,
    /// `pillion.dev/inject: disabled` on the pod, or on the namespace with nothing on the pod.
    OptedOut,
    AlreadyInjected,
    HostNetwork,
    /// The pod cannot take the sidecar as it is (the string says why).
    Unsupported(String),
}

impl Skip {
    /// A bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Skip::NotEnabled => "not_enabled",
            Skip::OptedOut => "opted_out",
            Skip::AlreadyInjected => "already_injected",
            Skip::HostNetwork => "host_network",
            Skip::Unsupported(_) => "unsupported",
        }
    }

    /// Whether the pod asked for the sidecar (its users want to hear why it has none).
    fn was_wanted(&self) -> bool {
        matches!(self, Skip::HostNetwork | Skip::Unsupported(_))
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::NotEnabled => write!(f, "{INJECT} is not enabled on the pod or its namespace"),
            Skip::OptedOut => write!(f, "{INJECT}: disabled"),
            Skip::AlreadyInjected => write!(f, "already injected"),
            Skip::HostNetwork => write!(
                f,
                "hostNetwork: true (the sidecar would capture the node's traffic)"
            ),
            Skip::Unsupported(why) => write!(f, "unsupported: {why}"),
        }
    }
}

/// What to do with one pod.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The operations to apply (empty: leave the pod as it is).
    pub patch: Vec<Value>,
    /// `None`: injected.
    pub skipped: Option<Skip>,
    /// Refused `config.pillion.dev/*` values (their defaults were used), and other notes the
    /// pod's owner should see.
    pub warnings: Vec<String>,
    /// The refused annotations themselves, for callers that fail on them (`pillion inject`).
    pub errors: Vec<OverrideError>,
}

/// The pod's (or pod template's) `metadata` and `spec`, and what is known around it.
pub struct Pod<'a> {
    pub object: &'a Value,
    /// The namespace's annotations, when they could be read.
    pub namespace_annotations: Option<&'a Map<String, Value>>,
    /// The owning workload's name when the caller knows it (`pillion inject` on a Deployment).
    pub workload: Option<&'a str>,
}

/// Decides and builds the patch. Never fails: anything it cannot handle is a skip.
pub fn inject(pod: &Pod<'_>, sidecar: &Sidecar) -> Outcome {
    let annotations = pod
        .object
        .pointer("/metadata/annotations")
        .and_then(Value::as_object);
    if let Err(skip) =
        wanted(annotations, pod.namespace_annotations).and_then(|()| injectable(pod.object))
    {
        let mut outcome = Outcome {
            skipped: Some(skip.clone()),
            ..Outcome::default()
        };
        if skip.was_wanted() {
            outcome
                .warnings
                .push(format!("Pillion sidecar not injected: {skip}"));
            let mut ops = Ops::default();
            ops.annotate(pod.object, &[(SKIPPED, skip.to_string())]);
            outcome.patch = ops.0;
        }
        return outcome;
    }
    let (overrides, errors) = overrides::parse(annotations);
    let warnings = errors
        .iter()
        .map(|e| format!("Pillion: {e}; the default is used"))
        .collect();
    let mut ops = Ops::default();
    let mut notes = Vec::new();
    let mut new_annotations = vec![(INJECTED, sidecar.version.to_string())];
    // Scrape annotations point at the proxy's admin port, unless the pod already has its
    // own (then its owner decides what is scraped, and hears about it).
    for (key, value) in [
        ("prometheus.io/scrape", "true".to_string()),
        ("prometheus.io/port", ADMIN_PORT.to_string()),
        ("prometheus.io/path", "/metrics".to_string()),
    ] {
        match annotations.and_then(|a| a.get(key)) {
            None => new_annotations.push((key, value)),
            Some(v) if v.as_str() == Some(value.as_str()) => {}
            Some(v) => notes.push(format!(
                "Pillion: the pod's {key}: {v} is kept, so the proxy's metrics ({key} {value}) are not scraped by annotation"
            )),
        }
    }
    ops.annotate(pod.object, &new_annotations);

    ops.ensure_array(pod.object, "/spec/volumes");
    ops.push(
        "/spec/volumes/-",
        json!({"name": XTABLES_VOLUME, "emptyDir": {}}),
    );
    if sidecar.trust_anchors_pem.is_some() {
        ops.push(
            "/spec/volumes/-",
            json!({
                "name": TOKEN_VOLUME,
                "projected": {"sources": [{"serviceAccountToken": {
                    "audience": sidecar.token_audience,
                    "expirationSeconds": 86400,
                    "path": "token",
                }}]},
            }),
        );
    }
    // pillion-init first, then the proxy as a native sidecar, then the pod's own init
    // containers: those start with the redirect in place and the proxy running.
    ops.ensure_array(pod.object, "/spec/initContainers");
    ops.push(
        "/spec/initContainers/0",
        init_container(sidecar, &overrides),
    );
    let workload = workload_name(pod.object, pod.workload);
    ops.push(
        "/spec/initContainers/1",
        proxy_container(sidecar, &overrides, &workload),
    );
    let mut warnings: Vec<String> = warnings;
    warnings.extend(notes);
    Outcome {
        patch: ops.0,
        skipped: None,
        warnings,
        errors,
    }
}

/// Does the pod, or failing that its namespace, ask for the sidecar?
fn wanted(
    pod: Option<&Map<String, Value>>,
    namespace: Option<&Map<String, Value>>,
) -> Result<(), Skip> {
    fn setting(m: Option<&Map<String, Value>>) -> Option<&str> {
        m.and_then(|m| m.get(INJECT)).and_then(Value::as_str)
    }
    match setting(pod).or(setting(namespace)) {
        Some("enabled") => Ok(()),
        Some("disabled") => Err(Skip::OptedOut),
        Some(other) => Err(Skip::Unsupported(format!(
            "{INJECT}: {other:?} is neither enabled nor disabled"
        ))),
        None => Err(Skip::NotEnabled),
    }
}

/// Can this pod take the sidecar?
fn injectable(pod: &Value) -> Result<(), Skip> {
    let annotations = pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object);
    let containers = |which: &str| {
        pod.pointer(&format!("/spec/{which}"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
    };
    let named = |c: &Value, n: &str| c.get("name").and_then(Value::as_str) == Some(n);
    let all = || {
        containers("containers")
            .iter()
            .chain(containers("initContainers"))
    };
    if annotations.is_some_and(|a| a.contains_key(INJECTED))
        || all().any(|c| named(c, PROXY_CONTAINER) || named(c, INIT_CONTAINER))
    {
        return Err(Skip::AlreadyInjected);
    }
    if pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Err(Skip::HostNetwork);
    }
    if containers("containers").is_empty() {
        return Err(Skip::Unsupported("the pod has no containers".into()));
    }
    for which in ["containers", "initContainers", "volumes"] {
        if let Some(v) = pod.pointer(&format!("/spec/{which}"))
            && !v.is_array()
            && !v.is_null()
        {
            return Err(Skip::Unsupported(format!("spec.{which} is not a list")));
        }
    }
    if let Some(meta) = pod.get("metadata")
        && !meta.is_object()
    {
        return Err(Skip::Unsupported("metadata is not an object".into()));
    }
    if let Some(a) = pod.pointer("/metadata/annotations")
        && !a.is_object()
        && !a.is_null()
    {
        return Err(Skip::Unsupported(
            "metadata.annotations is not an object".into(),
        ));
    }
    let os = pod
        .pointer("/spec/nodeSelector/kubernetes.io~1os")
        .and_then(Value::as_str);
    if os.is_some_and(|os| os != "linux") {
        return Err(Skip::Unsupported(format!(
            "nodeSelector kubernetes.io/os: {} (the proxy runs on Linux only)",
            os.unwrap_or_default()
        )));
    }
    // The proxy's ports must be free in the pod's network namespace.
    for c in all() {
        for p in c
            .get("ports")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let port = p.get("containerPort").and_then(Value::as_u64);
            if let Some(port) = port.filter(|p| {
                [INBOUND_PORT, OUTBOUND_PORT, ADMIN_PORT]
                    .map(u64::from)
                    .contains(p)
            }) {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
                return Err(Skip::Unsupported(format!(
                    "container {name} uses port {port}, which the proxy needs"
                )));
            }
        }
    }
    for v in containers("volumes") {
        if named(v, TOKEN_VOLUME) || named(v, XTABLES_VOLUME) {
            return Err(Skip::Unsupported(format!(
                "a volume is already named {}",
                v.get("name").and_then(Value::as_str).unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// The name the proxy reports its workload by: the `app.kubernetes.io/name` or `app` label,
/// the owner's name, or what the pod's generated name says of its owner.
pub fn workload_name(pod: &Value, owner: Option<&str>) -> String {
    let labels = pod.pointer("/metadata/labels").and_then(Value::as_object);
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    if let Some(name) = label("app.kubernetes.io/name").or(label("app")).or(owner)
        && !name.is_empty()
    {
        return name.to_string();
    }
    // A Deployment's pods are `<deployment>-<template hash>-<random>`: generateName ends in
    // `-<hash>-`. Other owners leave `<owner>-`.
    if let Some(generated) = pod
        .pointer("/metadata/generateName")
        .and_then(Value::as_str)
    {
        let base = generated.trim_end_matches('-');
        let base = label("pod-template-hash")
            .and_then(|h| base.strip_suffix(h))
            .map(|b| b.trim_end_matches('-'))
            .unwrap_or(base);
        if !base.is_empty() {
            return base.to_string();
        }
    }
    pod.pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

fn ports_arg(extra: &[overrides::PortRange], fixed: &[u16]) -> String {
    let mut parts: Vec<String> = fixed.iter().map(u16::to_string).collect();
    parts.extend(extra.iter().map(|p| {
        if p.lo == p.hi {
            p.lo.to_string()
        } else {
            format!("{}-{}", p.lo, p.hi)
        }
    }));
    parts.join(",")
}

fn init_container(sidecar: &Sidecar, o: &overrides::Overrides) -> Value {
    let mut args = vec![
        "--inbound-port".to_string(),
        INBOUND_PORT.to_string(),
        "--outbound-port".into(),
        OUTBOUND_PORT.to_string(),
        "--proxy-uid".into(),
        PROXY_UID.to_string(),
        // The admin port answers kubelet's probes and Prometheus directly.
        "--skip-inbound-ports".into(),
        ports_arg(&o.skip_inbound_ports, &[ADMIN_PORT]),
    ];
    if !o.skip_outbound_ports.is_empty() {
        args.push("--skip-outbound-ports".into());
        args.push(ports_arg(&o.skip_outbound_ports, &[]));
    }
    json!({
        "name": INIT_CONTAINER,
        "image": sidecar.init_image,
        "imagePullPolicy": sidecar.image_pull_policy,
        "command": ["pillion-init"],
        "args": args,
        "resources": {
            "requests": {"cpu": "10m", "memory": "10Mi"},
            "limits": {"cpu": "100m", "memory": "32Mi"},
        },
        // iptables needs root and these two capabilities; nothing else.
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        // iptables takes its lock file under /run.
        "volumeMounts": [{"name": XTABLES_VOLUME, "mountPath": "/run"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}

fn resources(defaults: &Resources, o: &Resources) -> Value {
    let pick = |a: &Option<String>, b: &Option<String>| a.clone().or_else(|| b.clone());
    let section = |cpu: Option<String>, memory: Option<String>| {
        let mut map = Map::new();
        for (key, value) in [("cpu", cpu), ("memory", memory)] {
            if let Some(v) = value {
                map.insert(key.into(), Value::String(v));
            }
        }
        map
    };
    let requests = section(
        pick(&o.cpu_request, &defaults.cpu_request),
        pick(&o.memory_request, &defaults.memory_request),
    );
    let limits = section(
        pick(&o.cpu_limit, &defaults.cpu_limit),
        pick(&o.memory_limit, &defaults.memory_limit),
    );
    let mut out = Map::new();
    if !requests.is_empty() {
        out.insert("requests".into(), Value::Object(requests));
    }
    if !limits.is_empty() {
        out.insert("limits".into(), Value::Object(limits));
    }
    Value::Object(out)
}

fn proxy_container(sidecar: &Sidecar, o: &overrides::Overrides, workload: &str) -> Value {
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    let mut env = vec![
        json!({"name": "POD_NAME", "valueFrom": field("metadata.name")}),
        json!({"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")}),
        json!({"name": "PILLION_SERVICE_ACCOUNT", "valueFrom": field("spec.serviceAccountName")}),
        // Kubernetes expands $(VAR) from the variables listed before it.
        json!({"name": "PILLION_WORKLOAD", "value": format!("$(POD_NAMESPACE)/{workload}")}),
        json!({"name": "PILLION_CONTROL_PLANE_ADDR", "value": sidecar.control_plane_addr}),
        json!({"name": "PILLION_INBOUND_LISTEN", "value": format!("0.0.0.0:{INBOUND_PORT}")}),
        json!({"name": "PILLION_OUTBOUND_LISTEN", "value": format!("127.0.0.1:{OUTBOUND_PORT}")}),
        json!({"name": "PILLION_ADMIN_LISTEN", "value": format!("0.0.0.0:{ADMIN_PORT}")}),
        json!({"name": "PILLION_LOG", "value": o.log_level.as_deref().unwrap_or(&sidecar.proxy_log)}),
        json!({"name": "PILLION_LOG_FORMAT", "value": "json"}),
    ];
    if let Some(anchors) = &sidecar.trust_anchors_pem {
        env.push(json!({"name": "PILLION_TRUST_ANCHORS", "value": anchors}));
        env.push(json!({"name": "PILLION_TRUST_DOMAIN", "value": sidecar.trust_domain}));
        env.push(
            json!({"name": "PILLION_IDENTITY_TOKEN_FILE", "value": format!("{TOKEN_DIR}/token")}),
        );
        if let Some(id) = &sidecar.control_plane_identity {
            env.push(json!({"name": "PILLION_CONTROL_PLANE_IDENTITY", "value": id}));
        }
    }
    if let Some(url) = &sidecar.zipkin_url {
        env.push(json!({"name": "PILLION_ZIPKIN_URL", "value": url}));
    }
    if let Some(rate) = o.trace_sample_rate.or(sidecar.trace_sample_rate) {
        env.push(json!({"name": "PILLION_TRACE_SAMPLE_RATE", "value": rate.to_string()}));
    }
    for (name, value) in &o.proxy_env {
        env.push(json!({"name": name, "value": value}));
    }
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": {"path": path, "port": ADMIN_PORT},
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": 1,
        })
    };
    let mut mounts = Vec::new();
    if sidecar.trust_anchors_pem.is_some() {
        mounts.push(json!({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}));
    }
    let mut container = json!({
        "name": PROXY_CONTAINER,
        "image": sidecar.proxy_image,
        "imagePullPolicy": sidecar.image_pull_policy,
        // A native sidecar: an init container that keeps running, started before the app's
        // containers and stopped after them.
        "restartPolicy": "Always",
        "command": ["pillion-proxy"],
        "env": env,
        "ports": [
            {"name": "pillion-inbound", "containerPort": INBOUND_PORT, "protocol": "TCP"},
            {"name": "pillion-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        // Started once its listeners answer; ready once it has its configuration and
        // certificate; restarted if it stops answering.
        "startupProbe": probe("/live", 1, 120),
        "readinessProbe": probe("/ready", 2, 3),
        "livenessProbe": probe("/live", 10, 3),
        "resources": resources(&sidecar.resources, &o.resources),
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    if !mounts.is_empty() {
        container["volumeMounts"] = Value::Array(mounts);
    }
    container
}

/// JSON Pointer escaping of one reference token (RFC 6901: `~` then `/`).
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Patch operations under construction.
#[derive(Default)]
struct Ops(Vec<Value>);

impl Ops {
    fn push(&mut self, path: &str, value: Value) {
        self.0
            .push(json!({"op": "add", "path": path, "value": value}));
    }

    /// `path` (under `/spec` or `/metadata`) as an empty list first when the pod has none:
    /// an `add` to `.../-` needs the list to exist.
    fn ensure_array(&mut self, pod: &Value, path: &str) {
        if pod.pointer(path).is_none_or(Value::is_null) {
            self.push(path, json!([]));
        }
    }

    /// Adds annotations, creating `metadata` and `metadata.annotations` where missing.
    fn annotate(&mut self, pod: &Value, entries: &[(&str, String)]) {
        if pod.get("metadata").is_none_or(Value::is_null) {
            self.push("/metadata", json!({}));
        }
        if pod
            .pointer("/metadata/annotations")
            .is_none_or(Value::is_null)
        {
            self.push("/metadata/annotations", json!({}));
        }
        for (k, v) in entries {
            self.push(&format!("/metadata/annotations/{}", escape(k)), json!(v));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
