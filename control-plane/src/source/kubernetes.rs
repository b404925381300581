//! `--source kubernetes`: the same kinds as the files source, watched from the API server with
//! `kube` runtime watchers, turned into the same YAML-shaped documents and read by the same
//! `config::parse_document`, so both sources build one model the same way.
//!
//! What Kubernetes does not say in the objects themselves, the source adds: an endpoint whose
//! Pod was injected (`pillion.dev/injected`) is meshed, with the identity of the Pod's service
//! account. The files source reads that from EndpointSlice annotations; here the slices are
//! split by identity and given the same annotations.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use crate::config::{self, ObjectId, Parsed, Resource};
use crate::model::Model;

/// The kinds read: `(group, version, kind, plural)`.
const KINDS: &[(&str, &str, &str, &str)] = &[
    ("", "v1", "Service", "services"),
    ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
    ("", "v1", "Pod", "pods"),
    (
        "split.smi-spec.io",
        "v1alpha4",
        "TrafficSplit",
        "trafficsplits",
    ),
    (
        "specs.smi-spec.io",
        "v1alpha4",
        "HTTPRouteGroup",
        "httproutegroups",
    ),
    ("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
    ("gateway.networking.k8s.io", "v1", "GRPCRoute", "grpcroutes"),
    (
        "pillion.dev",
        "v1alpha1",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    ("pillion.dev", "v1alpha1", "RetryPolicy", "retrypolicies"),
    (
        "pillion.dev",
        "v1alpha1",
        "FaultInjection",
        "faultinjections",
    ),
    ("pillion.dev", "v1alpha1", "Canary", "canaries"),
];

/// Changes arriving together are published as one generation.
const SETTLE: Duration = Duration::from_millis(50);
/// The first model waits for every kind's first list, at most this long (a kind whose CRD is
/// not installed never lists).
const FIRST_SYNC: Duration = Duration::from_secs(30);

type Key = (String, String);

/// What a Pod contributes: its service account when it carries the sidecar.
#[derive(Clone, PartialEq)]
struct PodInfo {
    meshed_as: Option<String>,
}

#[derive(Default)]
struct State {
    objects: HashMap<&'static str, BTreeMap<Key, Value>>,
    pods: HashMap<Key, PodInfo>,
    /// A relist in progress: what it has listed so far (it replaces the kind at its end).
    pending: HashMap<&'static str, BTreeMap<Key, Value>>,
    pending_pods: Option<HashMap<Key, PodInfo>>,
    /// Kinds whose first list has arrived.
    synced: HashSet<&'static str>,
    /// Objects as last accepted: a refused update keeps these in force.
    last_good: HashMap<ObjectId, Resource>,
}

pub struct Cluster {
    state: Mutex<State>,
    changed: Notify,
    trust_domain: String,
}

fn key(obj: &DynamicObject) -> Key {
    (
        obj.metadata.namespace.clone().unwrap_or_default(),
        obj.metadata.name.clone().unwrap_or_default(),
    )
}

/// The object as a document `parse_document` reads: typed, without the server's bookkeeping.
fn document(api_version: &str, kind: &str, obj: &DynamicObject) -> Value {
    let mut v = serde_json::to_value(obj).unwrap_or(Value::Null);
    if let Some(map) = v.as_object_mut() {
        map.insert("apiVersion".into(), json!(api_version));
        map.insert("kind".into(), json!(kind));
        // A Canary's status is the controller's own record: a restarted control plane
        // resumes a release from it instead of starting it again.
        if kind != "Canary" {
            map.remove("status");
        }
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
    }
    v
}

fn pod_info(obj: &DynamicObject) -> PodInfo {
    let injected = obj
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("pillion.dev/injected"));
    let sa = obj
        .data
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or("default");
    PodInfo {
        meshed_as: injected.then(|| sa.to_string()),
    }
}

impl Cluster {
    pub fn new(trust_domain: &str) -> Arc<Cluster> {
        Arc::new(Cluster {
            state: Mutex::default(),
            changed: Notify::new(),
            trust_domain: trust_domain.to_string(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One watch event of `kind`.
    fn apply(&self, kind: &'static str, api_version: &str, event: watcher::Event<DynamicObject>) {
        let mut state = self.lock();
        let pods = kind == "Pod";
        match event {
            // A (re)list: it replaces what was known of the kind when it is done.
            watcher::Event::Init => {
                if pods {
                    state.pending_pods = Some(HashMap::new());
                } else {
                    state.pending.insert(kind, BTreeMap::new());
                }
                return;
            }
            watcher::Event::InitApply(obj) => {
                if pods {
                    state
                        .pending_pods
                        .get_or_insert_default()
                        .insert(key(&obj), pod_info(&obj));
                } else {
                    let doc = document(api_version, kind, &obj);
                    state
                        .pending
                        .entry(kind)
                        .or_default()
                        .insert(key(&obj), doc);
                }
                return;
            }
            watcher::Event::InitDone => {
                if pods {
                    state.pods = state.pending_pods.take().unwrap_or_default();
                } else {
                    let listed = state.pending.remove(kind).unwrap_or_default();
                    state.objects.insert(kind, listed);
                }
                state.synced.insert(kind);
            }
            watcher::Event::Apply(obj) => {
                if pods {
                    state.pods.insert(key(&obj), pod_info(&obj));
                } else {
                    let doc = document(api_version, kind, &obj);
                    state
                        .objects
                        .entry(kind)
                        .or_default()
                        .insert(key(&obj), doc);
                }
            }
            watcher::Event::Delete(obj) => {
                if pods {
                    state.pods.remove(&key(&obj));
                } else if let Some(m) = state.objects.get_mut(kind) {
                    m.remove(&key(&obj));
                }
            }
        }
        drop(state);
        self.changed.notify_one();
    }

    /// A kind the API server does not serve: counted as listed, and empty.
    fn missing(&self, kind: &'static str) {
        let mut state = self.lock();
        if state.synced.insert(kind) {
            drop(state);
            self.changed.notify_one();
        }
    }

    /// Every document the model is built from, EndpointSlices split by identity.
    fn documents(&self, state: &State) -> Vec<Value> {
        let mut out = Vec::new();
        for (kind, objects) in &state.objects {
            for doc in objects.values() {
                if *kind == "EndpointSlice" {
                    out.extend(self.split_slice(doc, &state.pods));
                } else {
                    out.push(doc.clone());
                }
            }
        }
        out
    }

    /// A slice as the files source would have it: one slice per identity behind it, annotated
    /// with that identity, and one for the endpoints without the sidecar.
    fn split_slice(&self, slice: &Value, pods: &HashMap<Key, PodInfo>) -> Vec<Value> {
        let namespace = slice
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let name = slice
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut groups: BTreeMap<Option<String>, Vec<Value>> = BTreeMap::new();
        for endpoint in slice
            .get("endpoints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let pod = endpoint
                .get("targetRef")
                .filter(|r| r.get("kind").and_then(Value::as_str) == Some("Pod"))
                .and_then(|r| {
                    let ns = r
                        .get("namespace")
                        .and_then(Value::as_str)
                        .unwrap_or(namespace);
                    Some((ns.to_string(), r.get("name")?.as_str()?.to_string()))
                });
            let meshed_as = pod
                .and_then(|p| pods.get(&p))
                .and_then(|p| p.meshed_as.clone());
            groups.entry(meshed_as).or_default().push(endpoint.clone());
        }
        if groups.is_empty() {
            return vec![slice.clone()];
        }
        groups
            .into_iter()
            .map(|(sa, endpoints)| {
                let mut s = slice.clone();
                s["endpoints"] = Value::Array(endpoints);
                if let Some(sa) = sa {
                    s["metadata"]["name"] = json!(format!("{name}.pillion-{sa}"));
                    let id = format!("spiffe://{}/ns/{namespace}/sa/{sa}", self.trust_domain);
                    if !s["metadata"]["annotations"].is_object() {
                        s["metadata"]["annotations"] = json!({});
                    }
                    s["metadata"]["annotations"][config::IDENTITY_ANNOTATION] = json!(id);
                }
                s
            })
            .collect()
    }

    /// The objects of a new model; refused ones keep their last accepted version. Returns
    /// how many were refused.
    fn build(&self) -> (Vec<(ObjectId, Resource)>, usize) {
        let mut state = self.lock();
        let docs = self.documents(&state);
        let mut objects = Vec::with_capacity(docs.len());
        let mut refused = 0;
        let mut good = HashMap::new();
        for doc in docs {
            let describe = format!(
                "{} {}/{}",
                doc["kind"].as_str().unwrap_or_default(),
                doc.pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
                doc.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            );
            match config::parse_document(doc) {
                Ok(Parsed::Resource(id, resource)) => {
                    good.insert(id.clone(), (*resource).clone());
                    objects.push((id, *resource));
                }
                Ok(_) => {}
                Err(rejected) => {
                    refused += 1;
                    let kept = rejected
                        .id
                        .as_ref()
                        .and_then(|id| state.last_good.get(id).map(|r| (id.clone(), r.clone())));
                    let error = format!("{}: {}", rejected.error.field, rejected.error.reason);
                    tracing::warn!(object = %describe, %error, kept_previous = kept.is_some(), "object refused");
                    if let Some((id, r)) = kept {
                        good.insert(id.clone(), r.clone());
                        objects.push((id, r));
                    }
                }
            }
        }
        state.last_good = good;
        (objects, refused)
    }
}

/// Watches one kind for as long as the process runs (the watcher relists and backs off by
/// itself; a kind whose CRD is missing is retried and said once).
async fn watch_kind(cluster: Arc<Cluster>, client: kube::Client, index: usize) {
    let (group, version, kind, plural) = KINDS[index];
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
    let api_version = resource.api_version.clone();
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut said = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(e) => {
                said = false;
                cluster.apply(kind, &api_version, e);
            }
            Err(e) => {
                // The kind does not exist in this cluster (its CRD is not installed): nothing
                // of it to wait for. The watcher keeps trying, so installing it later works.
                if let watcher::Error::InitialListFailed(kube::Error::Api(status)) = &e
                    && status.is_not_found()
                {
                    cluster.missing(kind);
                }
                if !said {
                    tracing::warn!(kind, api_version, error = %e, "cannot watch; retrying (is the CRD installed and the role bound?)");
                    said = true;
                }
            }
        }
    }
}

/// Starts the watchers and publishes a model at each change, the first once every kind has
/// listed (or FIRST_SYNC passed). `generation` continues from the model in `tx`.
pub fn start(
    client: kube::Client,
    cluster: Arc<Cluster>,
    tx: watch::Sender<Arc<Model>>,
    metrics: Arc<crate::admin::Metrics>,
) -> tokio::task::JoinHandle<()> {
    for i in 0..KINDS.len() {
        tokio::spawn(watch_kind(cluster.clone(), client.clone(), i));
    }
    tokio::spawn(async move {
        let started = Instant::now();
        let mut generation = tx.borrow().generation;
        let mut first = true;
        loop {
            tokio::select! {
                _ = cluster.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)), if first => {}
            }
            if first {
                let synced = cluster.lock().synced.len();
                if synced < KINDS.len() && started.elapsed() < FIRST_SYNC {
                    continue;
                }
                if synced < KINDS.len() {
                    let missing: Vec<&str> = KINDS
                        .iter()
                        .map(|k| k.2)
                        .filter(|k| !cluster.lock().synced.contains(k))
                        .collect();
                    tracing::warn!(
                        ?missing,
                        "publishing without these kinds: their first list has not arrived"
                    );
                }
                first = false;
            }
            tokio::time::sleep(SETTLE).await;
            let (objects, refused) = cluster.build();
            generation += 1;
            let model = Model::new(objects, generation);
            for warning in model.warnings() {
                tracing::warn!(%warning, "configuration accepted with a warning");
            }
            metrics.config_generation.set(generation as i64);
            metrics.config_errors.set(refused as i64);
            tx.send_replace(Arc::new(model));
            tracing::info!(generation, refused, "configuration change published");
        }
    })
}
