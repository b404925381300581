//! The Helm chart: `helm lint --strict` passes; `helm template` renders manifests that pass
//! `kubernetes-validate --strict`; the webhook is registered as the API server needs it (v1
//! reviews, no side effects, Ignore on failure, system namespaces excluded, the caBundle of the
//! certificate the injector serves); every flag the chart gives the binaries is one they take;
//! bad values are refused by values.schema.json with the value named.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The helm `scripts/test.sh` installs (`PILLION_TEST_HELM` overrides).
fn helm() -> PathBuf {
    if let Some(p) = std::env::var_os("PILLION_TEST_HELM") {
        return PathBuf::from(p);
    }
    let h = root().join(".tools/helm/bin/helm");
    assert!(
        h.exists(),
        "{} is missing: run scripts/test.sh, which installs helm",
        h.display()
    );
    h
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn render(extra: &[&str]) -> Output {
    let chart = root().join("charts/pillion");
    run(Command::new(helm())
        .args([
            "template",
            "pillion",
            chart.to_str().unwrap(),
            "--namespace",
            "pillion",
        ])
        .args(["--kube-version", "1.31.0", "--include-crds"])
        .args(extra))
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} rendered"))
}

fn args_of(deployment: &Value) -> Vec<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_chart_lints_renders_and_validates() {
    let lint = run(Command::new(helm())
        .args(["lint", "--strict"])
        .arg(root().join("charts/pillion")));
    assert!(
        lint.status.success(),
        "helm lint: {}",
        String::from_utf8_lossy(&lint.stdout)
    );

    let out = render(&["--set", "podMonitor.enabled=true"]);
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    let docs = yaml_documents(&yaml);

    // Everything Kubernetes itself defines passes strict validation (the PodMonitor is the
    // Prometheus Operator's kind: checked by hand below).
    let core: Vec<&Value> = docs.iter().filter(|d| d["kind"] != "PodMonitor").collect();
    let mut stream = String::new();
    for d in &core {
        stream.push_str("---\n");
        stream.push_str(&serde_json::to_string(d).unwrap());
        stream.push('\n');
    }
    let report = kubernetes_validate(&stream, "1.31.0");
    assert_eq!(report.matches("passed").count(), core.len(), "{report}");

    let monitor = find(&docs, "PodMonitor", "pillion-proxies");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        monitor["spec"]["podMetricsEndpoints"][0]["port"],
        "pillion-admin"
    );

    // The webhook as the API server needs it.
    let hook = &find(
        &docs,
        "MutatingWebhookConfiguration",
        "pillion-injector-pillion",
    )["webhooks"][0];
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["admissionReviewVersions"], serde_json::json!(["v1"]));
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert!(
        hook["timeoutSeconds"]
            .as_u64()
            .is_some_and(|t| (1..=30).contains(&t))
    );
    assert_eq!(hook["clientConfig"]["service"]["path"], "/inject");
    let excluded = &hook["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(excluded["operator"], "NotIn");
    let excluded: Vec<&str> = excluded["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        excluded.contains(&"kube-system") && excluded.contains(&"pillion"),
        "{excluded:?}"
    );
    let tls = find(&docs, "Secret", "pillion-injector-tls");
    assert_eq!(hook["clientConfig"]["caBundle"], tls["data"]["ca.crt"]);

    // The trust anchors the injector hands to proxies are the control plane's.
    let issuer = find(&docs, "Secret", "pillion-identity-issuer");
    let anchors = find(&docs, "ConfigMap", "pillion-trust-anchors");
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(issuer["data"]["trust-anchors.pem"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        anchors["data"]["trust-anchors.pem"]
            .as_str()
            .unwrap()
            .as_bytes(),
        decoded
    );

    // Least privilege: read-only on configuration, TokenReviews created, namespaces read,
    // and the one write: a Canary's status, by the canary controller.
    for role in ["pillion-control-plane-pillion", "pillion-injector-pillion"] {
        for rule in find(&docs, "ClusterRole", role)["rules"]
            .as_array()
            .unwrap()
        {
            for verb in rule["verbs"].as_array().unwrap() {
                let ok = ["get", "list", "watch"].contains(&verb.as_str().unwrap())
                    || (verb == "create"
                        && rule["resources"] == serde_json::json!(["tokenreviews"]))
                    || (verb == "patch"
                        && rule["resources"] == serde_json::json!(["canaries/status"]));
                assert!(ok, "{role}: {rule}");
            }
        }
    }
    // Workloads run restricted.
    for name in ["pillion-control-plane", "pillion-injector"] {
        let d = find(&docs, "Deployment", name);
        let sc = &d["spec"]["template"]["spec"]["containers"][0]["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{name}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{name}"
        );
    }
    // Each of Pillion's kinds has its CRD, and the control plane may read it.
    let rules = find(&docs, "ClusterRole", "pillion-control-plane-pillion")["rules"].clone();
    for plural in [
        "authorizationpolicies",
        "retrypolicies",
        "faultinjections",
        "canaries",
        "canaries/status",
    ] {
        let crd_name = plural.trim_end_matches("/status");
        let crd = find(
            &docs,
            "CustomResourceDefinition",
            &format!("{crd_name}.pillion.dev"),
        );
        assert_eq!(crd["spec"]["versions"][0]["name"], "v1alpha1");
        let readable = rules.as_array().unwrap().iter().any(|r| {
            r["apiGroups"] == serde_json::json!(["pillion.dev"])
                && r["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x == plural)
        });
        assert!(readable, "the control plane may not read {plural}");
    }
}

/// Every flag the chart passes is one the binary takes: started with the rendered arguments
/// (and no cluster), each stops on what is missing here, never on usage (exit 2).
#[test]
fn the_binaries_take_the_flags_the_chart_gives() {
    let out = render(&[
        "--set",
        "proxy.zipkinUrl=http://zipkin.tracing:9411/api/v2/spans",
        "--set",
        "proxy.resources.cpuLimit=1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = yaml_documents(&String::from_utf8(out.stdout).unwrap());
    for (deployment, binary) in [
        ("pillion-injector", "pillion-injector"),
        ("pillion-control-plane", "pillion-control-plane"),
    ] {
        let args = args_of(find(&docs, "Deployment", deployment));
        let out = run(Command::new(bin(binary))
            .args(&args)
            .env("PILLION_LOG_FORMAT", "json")
            .env("KUBECONFIG", "/nonexistent"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(
            out.status.code(),
            Some(2),
            "{binary} refused the chart's flags {args:?}:\n{stderr}"
        );
        // It stops on what this machine lacks (the mounted files, the API server), not on usage.
        assert!(!out.status.success(), "{binary} should stop: {stderr}");
        assert!(!stderr.contains("Usage:"), "{binary}: {stderr}");
    }
}

#[test]
fn bad_values_are_refused_by_name() {
    for (set, named) in [
        ("proxy.traceSampleRate=2", "proxy.traceSampleRate"),
        ("injector.failurePolicy=Sometimes", "injector.failurePolicy"),
        (
            "proxy.resources.memoryLimit=lots",
            "proxy.resources.memoryLimit",
        ),
        ("controlPlane.replicass=2", "replicass"),
    ] {
        let out = render(&["--set", set]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{set} was accepted");
        assert!(stderr.contains(named), "{set}: {stderr}");
    }
    let out = render(&[
        "--set",
        "identity.trustAnchorsPEM=-----BEGIN CERTIFICATE-----x",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("identity.issuer.crtPEM"));
}

/// The CA the chart generates at install is one the control plane loads and issues from, and
/// two proxies holding its certificates speak mTLS.
#[tokio::test(flavor = "multi_thread")]
async fn the_generated_ca_secures_a_real_hop() {
    let out = render(&[]);
    assert!(out.status.success());
    let docs = yaml_documents(&String::from_utf8(out.stdout).unwrap());
    let secret = find(&docs, "Secret", "pillion-identity-issuer");
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    std::fs::create_dir(&ca).unwrap();
    use base64::Engine as _;
    for (name, value) in secret["data"].as_object().unwrap() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap())
            .unwrap();
        std::fs::write(ca.join(name), bytes).unwrap();
    }
    let app = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(pillion::demo_app::serve(listener, "chart-ca".into()));
        addr
    };
    std::fs::write(dir.path().join("tokens"), TOKENS).unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    let cp = start_control_plane_with(
        &config,
        "127.0.0.1:0",
        &[
            "--ca-dir",
            ca.to_str().unwrap(),
            "--identity-tokens",
            dir.path().join("tokens").to_str().unwrap(),
        ],
    );
    let env = |sa: &str| {
        let token = dir.path().join(format!("token-{sa}"));
        std::fs::write(&token, format!("token-{sa}")).unwrap();
        identity_env(dir.path(), sa, &token)
    };
    let server = start_proxy("server", cp.addr, "default/web", Some(app), &env("web"));
    let client = start_proxy("client", cp.addr, "default/client", None, &env("client"));
    write_config(
        &config.join("mesh.yaml"),
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  ports: [{{name: http, port: 80}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  labels: {{kubernetes.io/service-name: web}}\n\
             \x20 annotations: {{pillion.dev/identity: \"{WEB_ID}\", pillion.dev/proxy-port: \"{}\"}}\n\
             addressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n",
            server.inbound.port(),
            app.port()
        ),
    );
    let http = http1_client();
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let a = get(&http, client.outbound, "web", "/").await;
        if a.as_ref()
            .is_ok_and(|a| a.status == 200 && a.version == "chart-ca")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no answer over the chart's CA: {:?}\n{}",
            a.map(|a| (a.status, a.error)),
            client.proc.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, metrics) = admin_get(server.admin, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pillion_responses_total{")
                && l.contains("tls=\"true\"")
                && l.contains(CLIENT_ID)),
        "{metrics}"
    );
}
