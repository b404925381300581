//! `pillion inject` on YAML as users keep it in git: the example shop (Namespace, Deployment,
//! ServiceAccount, Service, CronJob) comes out with the sidecar in the Deployment, everything
//! else byte for byte, and every document passes `kubernetes-validate --strict`. Bad input
//! names the file, document and field, and writes nothing.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn inject(args: &[&str], stdin: Option<&str>) -> Output {
    with_stdin(
        Command::new(bin("pillion")).arg("inject").args(args),
        stdin.unwrap_or_default(),
    )
}

#[test]
fn the_example_shop_is_injected_and_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes/shop.yaml");
    let original = std::fs::read_to_string(&example).unwrap();
    let out = inject(&["-f", example.to_str().unwrap()], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(
        stderr.contains("document 2: Deployment/web: injected"),
        "{stderr}"
    );
    assert!(
        stderr.contains("document 5: CronJob/report: skipped: pillion.dev/inject: disabled"),
        "{stderr}"
    );
    let report = kubernetes_validate(&yaml, "1.37.0");
    assert_eq!(report.matches("passed").count(), 5, "{report}");

    // The documents it did not change are the same bytes; the Deployment kept its comment.
    let docs = |t: &str| t.split("\n---\n").map(String::from).collect::<Vec<_>>();
    let (before, after) = (docs(&original), docs(&yaml));
    assert_eq!(before.len(), after.len());
    for i in [0, 2, 3, 4] {
        assert_eq!(before[i], after[i], "document {} changed", i + 1);
    }
    let deployment = yaml_documents(&after[1]).remove(0);
    let init: Vec<&str> = deployment["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(init, ["pillion-init", "pillion-proxy", "wait-for-config"]);
    let args = &deployment["spec"]["template"]["spec"]["initContainers"][0]["args"];
    assert!(
        args.as_array().unwrap().iter().any(|a| a == "5432"),
        "{args}"
    );

    // From standard input, and again on its own output: nothing more to do.
    let again = inject(&[], Some(&yaml));
    assert!(again.status.success());
    assert_eq!(String::from_utf8(again.stdout).unwrap(), yaml);
    assert!(String::from_utf8_lossy(&again.stderr).contains("skipped: already injected"));
}

#[test]
fn bad_input_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("apps.yaml");
    std::fs::write(
        &file,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api}\nspec:\n  template:\n    metadata:\n      annotations: {config.pillion.dev/proxy-memory-limit: 2 gigs}\n    spec: {containers: [{name: api, image: api}]}\n---\nkind: Pod\nmetadata: [\n",
    )
    .unwrap();
    let out = inject(&["-f", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "wrote output despite errors");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = file.display();
    assert!(
        stderr.contains(&format!("{name}: document 1: Deployment/api: annotation config.pillion.dev/proxy-memory-limit: \"2 gigs\": not a Kubernetes quantity")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{name}: document 2: not valid YAML")),
        "{stderr}"
    );

    let missing = inject(&["-f", "/nonexistent/x.yaml"], None);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/x.yaml"));
}
