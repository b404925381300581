//! `pillion inject` on YAML kept in git: the webhook's patch applied to every pod template in
//! a multi-document file (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet,
//! ReplicationController, Job, CronJob, and `List`s of them). Documents it does not change
//! come out byte for byte as they went in; a changed one is written anew.

use serde_json::{Map, Value, json};

use crate::config::Sidecar;
use crate::patch::{self, Pod, Skip};

/// What happened to one workload, for the report on stderr.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `file: document N: Kind/name` (with `items[i]` inside a List).
    pub what: String,
    /// `None`: injected.
    pub skipped: Option<Skip>,
    pub warnings: Vec<String>,
}

/// A refused document or annotation, naming where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct InjectError(pub String);

/// Where a kind keeps its pod template.
fn template_pointer(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Pod" => "",
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => "/spec/template",
        "CronJob" => "/spec/jobTemplate/spec/template",
        _ => return None,
    })
}

/// A `---` line (possibly followed by a comment or content) starts a document.
fn is_separator(line: &str) -> bool {
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t")
}

/// Splits a YAML stream into its documents, separators kept with the document they open, so
/// that joining the pieces gives the input back exactly.
fn split_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if is_separator(bare) && offset > start {
            docs.push(&text[start..offset]);
            start = offset;
        }
        offset += line.len();
    }
    if start < text.len() {
        docs.push(&text[start..]);
    }
    docs
}

/// The separator line a document starts with, if it has one.
fn leading_separator(doc: &str) -> &str {
    let first = doc.split_inclusive('\n').next().unwrap_or_default();
    let bare = first.trim_end_matches(['\n', '\r']);
    if is_separator(bare) { first } else { "" }
}

struct Ctx<'a> {
    sidecar: &'a Sidecar,
    reports: Vec<Report>,
    errors: Vec<InjectError>,
}

/// Injects every pod template in `text` (from `source`, for messages). Returns the new text
/// and a report per workload, or every error found (nothing is written then).
pub fn inject_yaml(
    text: &str,
    source: &str,
    sidecar: &Sidecar,
) -> Result<(String, Vec<Report>), Vec<InjectError>> {
    let mut ctx = Ctx {
        sidecar,
        reports: Vec::new(),
        errors: Vec::new(),
    };
    let mut out = String::with_capacity(text.len() * 2);
    for (i, doc) in split_documents(text).into_iter().enumerate() {
        let where_ = format!("{source}: document {}", i + 1);
        let body = &doc[leading_separator(doc).len()..];
        let meaningful = body
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#') && l.trim() != "...");
        if !meaningful {
            out.push_str(doc);
            continue;
        }
        let mut value: Value =
            match serde_saphyr::from_str_with_options(body, pillion_core::yaml::options()) {
                Ok(v) => v,
                Err(e) => {
                    ctx.errors
                        .push(InjectError(format!("{where_}: not valid YAML: {e}")));
                    out.push_str(doc);
                    continue;
                }
            };
        if visit(&mut value, &where_, &mut ctx) {
            out.push_str(leading_separator(doc));
            // The comments heading the document stay with it; those inside are lost with
            // the rewrite (the YAML writer has no place for them).
            for line in body.split_inclusive('\n') {
                let t = line.trim();
                if !(t.is_empty() || t.starts_with('#')) {
                    break;
                }
                out.push_str(line);
            }
            match serde_saphyr::to_string(&value) {
                Ok(yaml) => out.push_str(&yaml),
                Err(e) => ctx
                    .errors
                    .push(InjectError(format!("{where_}: writing YAML: {e}"))),
            }
            if !out.ends_with('\n') {
                out.push('\n');
            }
        } else {
            out.push_str(doc);
        }
    }
    if ctx.errors.is_empty() {
        Ok((out, ctx.reports))
    } else {
        Err(ctx.errors)
    }
}

/// Injects the object (or the items of a List); true when it changed.
fn visit(object: &mut Value, where_: &str, ctx: &mut Ctx<'_>) -> bool {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)")
        .to_string();
    if kind == "List"
        || (kind.ends_with("List") && object.get("items").is_some_and(Value::is_array))
    {
        let mut changed = false;
        if let Some(items) = object.get_mut("items").and_then(Value::as_array_mut) {
            for (i, item) in items.iter_mut().enumerate() {
                changed |= visit(item, &format!("{where_}: items[{i}]"), ctx);
            }
        }
        return changed;
    }
    let Some(pointer) = template_pointer(&kind) else {
        return false;
    };
    let what = format!("{where_}: {kind}/{name}");
    let Some(template) = object.pointer_mut(pointer).filter(|t| t.is_object()) else {
        ctx.errors.push(InjectError(format!(
            "{what}: {}: missing",
            pointer_field(pointer)
        )));
        return false;
    };
    // Asking for injection on the command line is the opt-in; `disabled` on the template
    // still wins, as it does in a namespace with injection on.
    let mut enabled = Map::new();
    enabled.insert(patch::INJECT.to_string(), json!("enabled"));
    let workload = (kind != "Pod").then_some(name.as_str());
    let outcome = patch::inject(
        &Pod {
            object: template,
            namespace_annotations: Some(&enabled),
            workload,
        },
        ctx.sidecar,
    );
    for e in &outcome.errors {
        ctx.errors.push(InjectError(format!("{what}: {e}")));
    }
    ctx.reports.push(Report {
        what: what.clone(),
        skipped: outcome.skipped.clone(),
        warnings: outcome.warnings.clone(),
    });
    if outcome.skipped.is_some() || outcome.patch.is_empty() {
        return false;
    }
    let patch: json_patch::Patch = match serde_json::from_value(Value::Array(outcome.patch)) {
        Ok(p) => p,
        Err(e) => {
            ctx.errors.push(InjectError(format!(
                "{what}: internal error building the patch: {e}"
            )));
            return false;
        }
    };
    if let Err(e) = json_patch::patch(template, &patch) {
        ctx.errors.push(InjectError(format!(
            "{what}: the patch does not apply: {e}"
        )));
        return false;
    }
    true
}

/// `/spec/template` → `spec.template`, for messages.
fn pointer_field(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar() -> Sidecar {
        crate::patch::tests::sidecar()
    }

    #[test]
    fn documents_split_and_join_exactly() {
        let text = "# head\na: 1\n---\nb: 2\n--- # c\nc: 3\n...\n---\n";
        let docs = split_documents(text);
        assert_eq!(docs.concat(), text);
        assert_eq!(docs.len(), 4);
    }

    #[test]
    fn untouched_documents_keep_their_bytes() {
        let text = "# a comment that stays\napiVersion: v1\nkind: Service\nmetadata: {name: web}   # odd spacing\nspec: {ports: [{port: 80}]}\n---\n# the web app\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: web\n        image: web:1\n---\n# only a comment\n";
        let (out, reports) = inject_yaml(text, "web.yaml", &sidecar()).unwrap();
        let docs = split_documents(&out);
        assert_eq!(docs[0], split_documents(text)[0]);
        assert_eq!(docs[2], "---\n# only a comment\n");
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].skipped, None);
        assert_eq!(reports[0].what, "web.yaml: document 2: Deployment/web");
        assert!(
            docs[1].starts_with("---\n# the web app\napiVersion: apps/v1\n"),
            "{}",
            docs[1]
        );
        let deployment: Value = serde_saphyr::from_str(&docs[1][4..]).unwrap();
        let init = &deployment["spec"]["template"]["spec"]["initContainers"];
        assert_eq!(init[1]["name"], "pillion-proxy");
        assert_eq!(
            deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"],
            "true"
        );
        // Injecting the output again changes nothing.
        let (again, reports) = inject_yaml(&out, "web.yaml", &sidecar()).unwrap();
        assert_eq!(again, out);
        assert_eq!(reports[0].skipped, Some(Skip::AlreadyInjected));
    }

    #[test]
    fn every_kind_with_a_template_is_injected() {
        let spec = "containers: [{name: app, image: app:1}]";
        let text = format!(
            "kind: Pod\napiVersion: v1\nmetadata: {{name: p}}\nspec: {{{spec}}}\n---\n\
             kind: StatefulSet\napiVersion: apps/v1\nmetadata: {{name: s}}\nspec: {{template: {{spec: {{{spec}}}}}}}\n---\n\
             kind: CronJob\napiVersion: batch/v1\nmetadata: {{name: c}}\nspec: {{jobTemplate: {{spec: {{template: {{spec: {{{spec}}}}}}}}}}}\n---\n\
             kind: List\napiVersion: v1\nitems:\n- kind: DaemonSet\n  apiVersion: apps/v1\n  metadata: {{name: d}}\n  spec: {{template: {{spec: {{{spec}}}}}}}\n"
        );
        let (_, reports) = inject_yaml(&text, "-", &sidecar()).unwrap();
        let injected: Vec<&str> = reports
            .iter()
            .filter(|r| r.skipped.is_none())
            .map(|r| r.what.as_str())
            .collect();
        assert_eq!(injected.len(), 4, "{reports:#?}");
        assert!(
            injected[3].ends_with("items[0]: DaemonSet/d"),
            "{injected:?}"
        );
    }

    #[test]
    fn bad_input_names_the_document_and_writes_nothing() {
        let text = "kind: Deployment\nmetadata: {name: w}\nspec: {template: {metadata: {annotations: {config.pillion.dev/proxy-cpu-limit: lots}}, spec: {containers: [{name: a}]}}}\n---\nkind: Pod\nmetadata: [oops\n---\nkind: Deployment\nmetadata: {name: nospec}\n";
        let errors = inject_yaml(text, "apps.yaml", &sidecar()).unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 3, "{text:#?}");
        assert!(
            text[0].starts_with(
                "apps.yaml: document 1: Deployment/w: annotation config.pillion.dev/proxy-cpu-limit"
            ),
            "{}",
            text[0]
        );
        assert!(
            text[1].starts_with("apps.yaml: document 2: not valid YAML"),
            "{}",
            text[1]
        );
        assert_eq!(
            text[2],
            "apps.yaml: document 3: Deployment/nospec: spec.template: missing"
        );
    }

    #[test]
    fn disabled_templates_stay_as_they_are() {
        let text = "kind: Deployment\nmetadata: {name: w}\nspec: {template: {metadata: {annotations: {pillion.dev/inject: disabled}}, spec: {containers: [{name: a}]}}}\n";
        let (out, reports) = inject_yaml(text, "-", &sidecar()).unwrap();
        assert_eq!(out, text);
        assert_eq!(reports[0].skipped, Some(Skip::OptedOut));
    }
}
