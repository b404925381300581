//! The Grafana dashboard (`docs/grafana/pillion-dashboard.json`) stays importable and in step
//! with the metrics: every query is valid PromQL (checked by `promtool check rules`) and every
//! family it reads is one `docs/metrics.md` lists (which tests keep in step with the code).

use std::collections::BTreeSet;

#[test]
fn every_panel_query_is_valid_promql_over_documented_families() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/docs/grafana/pillion-dashboard.json")).unwrap(),
    )
    .unwrap();
    let docs = std::fs::read_to_string(format!("{root}/docs/metrics.md")).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            // Grafana's variables, as Grafana would fill them in.
            exprs.push(
                expr.replace("$__rate_interval", "1m")
                    .replace("$authority", ".*"),
            );
        }
    }
    assert!(exprs.len() >= 20, "{} queries", exprs.len());

    let mut families = BTreeSet::new();
    for expr in &exprs {
        for (i, _) in expr.match_indices("pillion_") {
            let name: String = expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name)
                .to_string();
            families.insert(family);
        }
    }
    for f in &families {
        assert!(
            docs.contains(&format!("`{f}`")),
            "the dashboard reads {f}, which docs/metrics.md does not list"
        );
    }

    // Recording rules are the one place promtool parses PromQL offline.
    let rules = serde_json::json!({
        "groups": [{
            "name": "dashboard",
            "rules": exprs.iter().enumerate().map(|(i, e)| serde_json::json!({
                "record": format!("pillion_dashboard_query_{i}"),
                "expr": e,
            })).collect::<Vec<_>>(),
        }]
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yml");
    std::fs::write(&file, rules.to_string()).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
