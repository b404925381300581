//! Kubernetes mode: each release's status written into its Canary's `status` subresource (what
//! `kubectl get canaries` shows, and what a restarted control plane resumes from).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::controller::View;

/// A write the API server refused is tried again after this long (or at the next change).
const RETRY: Duration = Duration::from_secs(5);

/// The status object of a release as written: the controller's status and the release's id.
pub fn status_object(view: &View) -> Value {
    let mut status = serde_json::to_value(&view.status).unwrap_or(Value::Null);
    if let Some(map) = status.as_object_mut() {
        map.insert("release".into(), json!(view.release));
    }
    status
}

/// Writes every changed status until the controller stops.
pub async fn run(client: kube::Client, mut views: watch::Receiver<Arc<Vec<View>>>) {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("pillion.dev", "v1alpha1", "Canary"),
        "canaries",
    );
    let mut written: HashMap<(String, String), Value> = HashMap::new();
    loop {
        let current = views.borrow_and_update().clone();
        let mut failed = false;
        for view in current.iter() {
            let id = (view.namespace.clone(), view.name.clone());
            let status = status_object(view);
            if written.get(&id) == Some(&status) {
                continue;
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &view.namespace, &resource);
            let patch = Patch::Merge(json!({ "status": status }));
            match api
                .patch_status(&view.name, &PatchParams::default(), &patch)
                .await
            {
                Ok(_) => {
                    written.insert(id, status);
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(canary = %format!("{}/{}", id.0, id.1), error = %e, "cannot write the Canary's status; trying again");
                }
            }
        }
        written.retain(|(ns, name), _| {
            current
                .iter()
                .any(|v| v.namespace == *ns && v.name == *name)
        });
        let retry = async {
            if failed {
                tokio::time::sleep(RETRY).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            changed = views.changed() => if changed.is_err() { return },
            _ = retry => {}
        }
    }
}
