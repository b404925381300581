use super::*;
use crate::config::SidecarArgs;
use clap::Parser;

#[derive(Parser)]
struct Only {
    #[command(flatten)]
    sidecar: SidecarArgs,
}

pub(crate) fn sidecar() -> Sidecar {
    Only::parse_from(["test", "--proxy-image", "proxy:test"])
        .sidecar
        .resolve()
        .unwrap()
}

fn apply(pod: &Value, outcome: &Outcome) -> Value {
    let patch: json_patch::Patch =
        serde_json::from_value(Value::Array(outcome.patch.clone())).unwrap();
    let mut doc = pod.clone();
    json_patch::patch(&mut doc, &patch).unwrap();
    doc
}

fn run(pod: &Value, ns: Option<Value>) -> Outcome {
    let ns = ns.as_ref().and_then(Value::as_object);
    inject(
        &Pod {
            object: pod,
            namespace_annotations: ns,
            workload: None,
        },
        &sidecar(),
    )
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

#[test]
fn a_bare_pod_gets_everything() {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "web:1"}]},
    });
    let ns = json!({INJECT: "enabled"});
    let out = run(&pod, Some(ns));
    assert_eq!(out.skipped, None);
    let done = apply(&pod, &out);
    assert_eq!(
        names(&done["spec"]["initContainers"]),
        ["pillion-init", "pillion-proxy"]
    );
    assert_eq!(names(&done["spec"]["containers"]), ["app"]);
    let proxy = &done["spec"]["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["securityContext"]["runAsNonRoot"], true);
    assert_eq!(proxy["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], 4191);
    let a = &done["metadata"]["annotations"];
    assert_eq!(a["prometheus.io/scrape"], "true");
    assert_eq!(a["prometheus.io/port"], "4191");
    assert_eq!(a["prometheus.io/path"], "/metrics");
    assert_eq!(a[INJECTED], env!("CARGO_PKG_VERSION"));
    let init = &done["spec"]["initContainers"][0];
    assert_eq!(
        init["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    // Injected once: a second pass leaves it alone.
    assert_eq!(run(&done, None).skipped, Some(Skip::NotEnabled));
    let again = run(&done, Some(json!({INJECT: "enabled"})));
    assert_eq!(again.skipped, Some(Skip::AlreadyInjected));
    assert!(again.patch.is_empty());
}

#[test]
fn existing_lists_and_escaped_keys_are_kept() {
    let pod = json!({
        "metadata": {
            "generateName": "web-7d9f8c6b5-",
            "labels": {"pod-template-hash": "7d9f8c6b5"},
            "annotations": {INJECT: "enabled", "example.com/a~b": "x"},
        },
        "spec": {
            "initContainers": [{"name": "migrate", "image": "m"}],
            "containers": [{"name": "app", "image": "web:1"}],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    });
    let out = run(&pod, None);
    assert_eq!(out.skipped, None);
    let done = apply(&pod, &out);
    assert_eq!(
        names(&done["spec"]["initContainers"]),
        ["pillion-init", "pillion-proxy", "migrate"]
    );
    assert_eq!(names(&done["spec"]["volumes"])[0], "data");
    assert_eq!(done["metadata"]["annotations"]["example.com/a~b"], "x");
    let env = done["spec"]["initContainers"][1]["env"].as_array().unwrap();
    let workload = env
        .iter()
        .find(|e| e["name"] == "PILLION_WORKLOAD")
        .unwrap();
    assert_eq!(workload["value"], "$(POD_NAMESPACE)/web");
}

#[test]
fn opt_outs_and_unwanted_pods_are_untouched() {
    let pod = json!({"metadata": {"annotations": {INJECT: "disabled"}}, "spec": {"containers": [{"name": "a"}]}});
    let out = run(&pod, Some(json!({INJECT: "enabled"})));
    assert_eq!(out.skipped, Some(Skip::OptedOut));
    assert!(out.patch.is_empty());

    let pod = json!({"spec": {"containers": [{"name": "a"}]}});
    let out = run(&pod, None);
    assert_eq!(out.skipped, Some(Skip::NotEnabled));
    assert!(out.patch.is_empty() && out.warnings.is_empty());
    let out = run(&pod, Some(json!({INJECT: "disabled"})));
    assert_eq!(out.skipped, Some(Skip::OptedOut));
}

#[test]
fn wanted_but_impossible_is_said_on_the_pod() {
    for (pod, label) in [
        (
            json!({"spec": {"hostNetwork": true, "containers": [{"name": "a"}]}}),
            "host_network",
        ),
        (
            json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 4191}]}]}}),
            "unsupported",
        ),
        (
            json!({"spec": {"nodeSelector": {"kubernetes.io/os": "windows"}, "containers": [{"name": "a"}]}}),
            "unsupported",
        ),
        (
            json!({"metadata": {"annotations": {INJECT: "yes"}}, "spec": {"containers": [{"name": "a"}]}}),
            "unsupported",
        ),
    ] {
        let out = run(&pod, Some(json!({INJECT: "enabled"})));
        let skip = out.skipped.clone().unwrap();
        assert_eq!(skip.label(), label, "{pod}");
        assert_eq!(out.warnings.len(), 1, "{pod}");
        let done = apply(&pod, &out);
        assert_eq!(done["metadata"]["annotations"][SKIPPED], skip.to_string());
        assert!(done["spec"].get("initContainers").is_none());
    }
}

#[test]
fn overrides_reach_the_containers_and_bad_ones_are_warned() {
    let pod = json!({
        "metadata": {"annotations": {
            INJECT: "enabled",
            "config.pillion.dev/skip-outbound-ports": "3306,5432-5433",
            "config.pillion.dev/skip-inbound-ports": "8081",
            "config.pillion.dev/proxy-memory-limit": "64Mi",
            "config.pillion.dev/proxy-cpu-limit": "lots",
            "config.pillion.dev/trace-sample-rate": "1",
            "config.pillion.dev/outlier-base-ejection": "10s",
            "prometheus.io/port": "9090",
        }},
        "spec": {"containers": [{"name": "a"}]},
    });
    let out = run(&pod, None);
    assert_eq!(out.skipped, None);
    assert_eq!(out.errors.len(), 1);
    assert!(
        out.warnings
            .iter()
            .any(|w| w.contains("proxy-cpu-limit") && w.contains("lots"))
    );
    assert!(
        out.warnings
            .iter()
            .any(|w| w.contains("prometheus.io/port"))
    );
    let done = apply(&pod, &out);
    assert_eq!(
        done["metadata"]["annotations"]["prometheus.io/port"],
        "9090"
    );
    let init = &done["spec"]["initContainers"][0]["args"];
    let args: Vec<&str> = init
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--skip-outbound-ports", "3306,5432-5433"]),
        "{args:?}"
    );
    assert!(
        args.windows(2)
            .any(|w| w == ["--skip-inbound-ports", "4191,8081"]),
        "{args:?}"
    );
    let proxy = &done["spec"]["initContainers"][1];
    assert_eq!(proxy["resources"]["limits"]["memory"], "64Mi");
    assert!(proxy["resources"]["limits"].get("cpu").is_none());
    let env = proxy["env"].as_array().unwrap();
    assert!(
        env.iter()
            .any(|e| e["name"] == "PILLION_TRACE_SAMPLE_RATE" && e["value"] == "1")
    );
    assert!(
        env.iter()
            .any(|e| e["name"] == "PILLION_OUTLIER_BASE_EJECTION" && e["value"] == "10s")
    );
}

#[test]
fn workload_names() {
    let name = |v: Value| workload_name(&v, None);
    assert_eq!(
        name(json!({"metadata": {"labels": {"app": "cart"}, "name": "x"}})),
        "cart"
    );
    assert_eq!(
        name(json!({"metadata": {"labels": {"app.kubernetes.io/name": "cart", "app": "other"}}})),
        "cart"
    );
    assert_eq!(name(json!({"metadata": {"generateName": "db-"}})), "db");
    assert_eq!(name(json!({"metadata": {"name": "lonely"}})), "lonely");
    assert_eq!(name(json!({})), "unknown");
    assert_eq!(workload_name(&json!({}), Some("api")), "api");
}

#[test]
fn pointer_escaping() {
    assert_eq!(escape("prometheus.io/scrape"), "prometheus.io~1scrape");
    assert_eq!(escape("a~/b"), "a~0~1b");
}
