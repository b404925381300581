//! `pillion check` on good and broken configuration (tests/data/check): each problem at its
//! file and line, in the documented shape, with the documented exit status.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/check")
        .join(name)
}

fn check(args: &[&str]) -> Output {
    Command::new(bin("pillion"))
        .arg("check")
        .args(args)
        .current_dir(data(""))
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_clean_directory_prints_nothing_and_exits_0() {
    let out = check(&["good"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout(&out), "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("2 files, 6 objects: 0 errors, 0 warnings"),
        "{stderr}"
    );
    // The Kubernetes example is clean as well (the demo's is checked with its endpoints in
    // its unit test).
    let out = Command::new(bin("pillion"))
        .args(["check", "--strict", "examples/kubernetes"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn each_problem_is_printed_at_its_file_and_line() {
    let out = check(&["broken"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    let expected = [
        // Refusals, in file order: the control plane would keep the last good version.
        "broken/routes.yaml:42: HTTPRoute/typo: spec.rules[0].backendRef: unknown field `backendRef`",
        "broken/split.yaml:11: TrafficSplit/web-split: spec.backends[1].weight: weight -10 must be between 0 and 1000000",
        "broken/syntax.yaml:4: not valid YAML: line 4 column 5:",
        // Then what is accepted but almost surely a mistake.
        "broken/empty-backend.yaml:14: warning: TrafficSplit/web-v3-split: spec.backends[1].service: Service default/web-v3 has no ready endpoint",
        "broken/routes.yaml:21: warning: HTTPRoute/api-copy: spec.rules[0].matches[0]: the same match as HTTPRoute/api spec.rules[0] on Service default/web",
        "broken/routes.yaml:30: warning: HTTPRoute/orphan: spec.parentRefs[0].name: no Service default/shop",
        "broken/routes.yaml:54: warning: HTTPRoute/mirror: spec.rules[0].filters[0].requestMirror.backendRef.name: no Service default/web-shadow; no copies are sent",
        "broken/split.yaml:18: warning: TrafficSplit/web-split-2: spec.service: HTTPRoute default/api also routes Service default/web and takes precedence",
    ];
    assert_eq!(lines.len(), expected.len(), "{text}");
    for (line, want) in lines.iter().zip(expected) {
        assert!(line.starts_with(want), "expected `{want}...`, got `{line}`");
    }
}

#[test]
fn files_can_be_named_and_warnings_made_fatal() {
    // One file alone: its backends' Services are unknown to it.
    let out = check(&["good/routes.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout(&out).contains("good/routes.yaml:6: warning: HTTPRoute/web: spec.parentRefs[0].name: no Service default/web"));
    let out = check(&["--strict", "good/routes.yaml"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // The same file given twice, or inside a directory also given, is read once.
    let out = check(&["good", "good/mesh.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout(&out), "");
}

#[test]
fn json_output_carries_every_finding() {
    let out = check(&["-o", "json", "broken"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["errors"], 3);
    assert_eq!(v["warnings"], 5);
    let split = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "spec.backends[1].weight")
        .unwrap();
    assert_eq!(split["severity"], "error");
    assert_eq!(split["line"], 11);
    assert_eq!(split["object"]["kind"], "TrafficSplit");
    assert_eq!(split["object"]["name"], "web-split");
}

#[test]
fn usage_errors_exit_2() {
    let out = check(&["no-such-dir"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-dir"));
    let empty = tempfile::tempdir().unwrap();
    let out = check(&[empty.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no configuration files"));
}

#[test]
fn an_object_defined_twice_is_reported_where_it_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {ports: [{port: 80}]}\n";
    std::fs::write(dir.path().join("a.yaml"), service).unwrap();
    std::fs::write(dir.path().join("b.yaml"), format!("# copy\n---\n{service}")).unwrap();
    let out = check(&[dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "{}:2: warning: Service/web (namespace shop): also defined in {}",
            dir.path().join("b.yaml").display(),
            dir.path().join("a.yaml").display()
        )),
        "{text}"
    );
}

#[test]
fn a_second_split_for_one_service_is_reported_as_unused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(data("good/mesh.yaml"), dir.path().join("mesh.yaml")).unwrap();
    let split = |name: &str, created: &str| {
        format!(
            "---\napiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\n\
             metadata: {{name: {name}, creationTimestamp: \"{created}\"}}\n\
             spec:\n  service: web\n  backends:\n  - {{service: web-v1, weight: 1}}\n"
        )
    };
    let text = format!(
        "{}{}",
        split("newer", "2026-02-01T00:00:00Z"),
        split("older", "2026-01-01T00:00:00Z")
    );
    std::fs::write(dir.path().join("splits.yaml"), text).unwrap();
    let out = check(&[dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains(
            "splits.yaml:6: warning: TrafficSplit/newer: spec.service: TrafficSplit default/older (older) already splits Service default/web: this one is not used"
        ),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "{text}");
}

/// The routing examples (HTTPRoute filters, a GRPCRoute), beside the demo's Services: no
/// refusal, and no warning but the demo's endpoints (which `pillion demo` makes at run time).
#[test]
fn the_routing_examples_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    for (from, to) in [
        ("examples/demo/services.yaml", "services.yaml"),
        ("examples/routing/filters.yaml", "filters.yaml"),
        ("examples/routing/grpc-route.yaml", "grpc-route.yaml"),
    ] {
        std::fs::copy(format!("{root}/{from}"), dir.path().join(to)).unwrap();
    }
    let out = Command::new(bin("pillion"))
        .args(["check", "-o", "json"])
        .arg(dir.path())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["objects"], 8, "{v}");
    for f in v["findings"].as_array().unwrap() {
        let reason = f["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("no ready endpoint"), "{f}");
    }
}
