//! The annotations of a pod's namespace (`pillion.dev/inject: enabled` there injects every pod
//! in it). The admission request carries only the pod, so the injector asks the API server,
//! and keeps each answer for a few seconds: a rollout of 100 pods asks once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// How long an answer is reused; an annotation change reaches new pods within this.
const FRESH: Duration = Duration::from_secs(10);
/// How long a lookup may take: the API server waits on the webhook meanwhile.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_CACHED: usize = 10_000;

pub type Annotations = Arc<Map<String, Value>>;

pub struct Namespaces {
    client: Option<kube::Client>,
    cache: Mutex<HashMap<String, (Instant, Annotations)>>,
}

impl Namespaces {
    /// In-cluster configuration (or `KUBECONFIG`); without one, namespace annotations are
    /// unknown and only pod annotations count (said once, at start).
    pub async fn connect() -> Namespaces {
        let client = match kube::Client::try_default().await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "no Kubernetes API configuration: namespace annotations are not read, only pod annotations count");
                None
            }
        };
        Namespaces {
            client,
            cache: Mutex::default(),
        }
    }

    /// No API server: pod annotations only (tests, and `pillion inject`).
    pub fn none() -> Namespaces {
        Namespaces {
            client: None,
            cache: Mutex::default(),
        }
    }

    /// The namespace's annotations, or why they could not be read.
    pub async fn annotations(&self, namespace: &str) -> Result<Annotations, String> {
        let Some(client) = &self.client else {
            return Err("no Kubernetes API configured".into());
        };
        if let Some((at, a)) = self.lock().get(namespace)
            && at.elapsed() < FRESH
        {
            return Ok(a.clone());
        }
        let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
        let ns = match tokio::time::timeout(LOOKUP_TIMEOUT, api.get(namespace)).await {
            Ok(Ok(ns)) => ns,
            Ok(Err(e)) => return Err(format!("reading namespace {namespace}: {e}")),
            Err(_) => return Err(format!("reading namespace {namespace}: timed out")),
        };
        let annotations: Map<String, Value> = ns
            .metadata
            .annotations
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        let annotations = Arc::new(annotations);
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(namespace.to_string(), (Instant::now(), annotations.clone()));
        Ok(annotations)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Annotations)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}
