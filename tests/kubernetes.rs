//! `--source kubernetes`, end to end: the real control plane and proxies against a stand-in for
//! the Kubernetes API server (none can run here). The stand-in serves what the real one would
//! to `kube`'s watchers: LIST with a resourceVersion, then WATCH streams of ADDED / MODIFIED /
//! DELETED events from that version on, 404 for a kind whose CRD is not installed, 401 without
//! the bearer token, and TokenReviews. Objects are shaped as the API server returns them.
//!
//! A TrafficSplit moves traffic from v1 (plain) to v2, whose Pod carries the sidecar: from the
//! Pod's annotation and service account the control plane makes its endpoint meshed, and the
//! proxies, holding certificates proven by TokenReview, speak mTLS to it. A refused update
//! leaves the last good object in force.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use serde_json::{Value, json};
use tokio::sync::broadcast;

const TOKEN: &str = "control-plane-token";

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

#[derive(Default)]
struct ApiState {
    rv: u64,
    /// Collection path (`/api/v1/services`) → objects by (namespace, name).
    collections: HashMap<String, BTreeMap<(String, String), Value>>,
    /// Every event so far: (resourceVersion, collection, event).
    log: Vec<(u64, String, Value)>,
}

#[derive(Clone)]
struct FakeApi {
    state: Arc<Mutex<ApiState>>,
    events: broadcast::Sender<(u64, String, Value)>,
}

const COLLECTIONS: &[&str] = &[
    "/api/v1/services",
    "/api/v1/pods",
    "/apis/discovery.k8s.io/v1/endpointslices",
    "/apis/split.smi-spec.io/v1alpha4/trafficsplits",
    "/apis/gateway.networking.k8s.io/v1/httproutes",
    "/apis/gateway.networking.k8s.io/v1/grpcroutes",
    "/apis/pillion.dev/v1alpha1/authorizationpolicies",
    "/apis/pillion.dev/v1alpha1/retrypolicies",
    "/apis/pillion.dev/v1alpha1/faultinjections",
    "/apis/pillion.dev/v1alpha1/canaries",
    // No HTTPRouteGroup: as in a cluster without that CRD (404).
];

impl FakeApi {
    fn new() -> FakeApi {
        let mut state = ApiState::default();
        for c in COLLECTIONS {
            state.collections.insert(c.to_string(), BTreeMap::new());
        }
        FakeApi {
            state: Arc::new(Mutex::new(state)),
            events: broadcast::channel(1024).0,
        }
    }

    /// Creates or replaces an object, as `kubectl apply` would.
    fn put(&self, collection: &str, mut obj: Value) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        obj["metadata"]["uid"] =
            json!(format!("uid-{}", obj["metadata"]["name"].as_str().unwrap()));
        let key = (
            obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            obj["metadata"]["name"].as_str().unwrap().to_string(),
        );
        let kind = if s.collections[collection].contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.collections
            .get_mut(collection)
            .unwrap()
            .insert(key, obj.clone());
        let event = json!({"type": kind, "object": obj});
        s.log.push((rv, collection.to_string(), event.clone()));
        let _ = self.events.send((rv, collection.to_string(), event));
    }

    /// `PATCH .../namespaces/NS/canaries/NAME/status` with a JSON merge patch: as the API
    /// server's status subresource, only `status` changes (a new resourceVersion, a MODIFIED
    /// event); anything else in the patch is ignored.
    async fn patch_status(
        &self,
        req: http::Request<hyper::body::Incoming>,
    ) -> http::Response<Body> {
        let reply = |code: u16, body: Value| {
            http::Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())).boxed())
                .unwrap()
        };
        let path = req.uri().path().to_string();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let [
            "apis",
            "pillion.dev",
            "v1alpha1",
            "namespaces",
            ns,
            "canaries",
            name,
            "status",
        ] = parts.as_slice()
        else {
            return reply(
                404,
                json!({"kind": "Status", "code": 404, "reason": "NotFound"}),
            );
        };
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if content_type != "application/merge-patch+json" {
            return reply(
                415,
                json!({"kind": "Status", "code": 415, "reason": "UnsupportedMediaType"}),
            );
        }
        let (ns, name) = (ns.to_string(), name.to_string());
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let patch: Value = serde_json::from_slice(&body).unwrap();
        let collection = "/apis/pillion.dev/v1alpha1/canaries";
        let current = self.state.lock().unwrap().collections[collection]
            .get(&(ns.clone(), name.clone()))
            .cloned();
        let Some(mut obj) = current else {
            return reply(
                404,
                json!({"kind": "Status", "code": 404, "reason": "NotFound"}),
            );
        };
        obj["status"] = patch["status"].clone();
        self.put(collection, obj.clone());
        let obj = self.state.lock().unwrap().collections[collection][&(ns, name)].clone();
        reply(200, obj)
    }

    fn get(&self, collection: &str, ns: &str, name: &str) -> Option<Value> {
        self.state.lock().unwrap().collections[collection]
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    async fn serve(self, listener: tokio::net::TcpListener) {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let api = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let api = api.clone();
                    async move { Ok::<_, Infallible>(api.handle(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn handle(&self, req: http::Request<hyper::body::Incoming>) -> http::Response<Body> {
        let json_response = |status: u16, body: Value| {
            http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())).boxed())
                .unwrap()
        };
        let status = |code: u16, reason: &str| json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": reason, "code": code});
        if req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            != Some(&format!("Bearer {TOKEN}"))
        {
            return json_response(401, status(401, "Unauthorized"));
        }
        let path = req.uri().path().to_string();
        let query: HashMap<String, String> = req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        if req.method() == http::Method::POST
            && path == "/apis/authentication.k8s.io/v1/tokenreviews"
        {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let review: Value = serde_json::from_slice(&body).unwrap();
            let token = review["spec"]["token"].as_str().unwrap_or_default();
            let audiences = review["spec"]["audiences"].clone();
            let user = match token {
                "sa-token-web" => Some("system:serviceaccount:default:web"),
                "sa-token-client" => Some("system:serviceaccount:default:client"),
                _ => None,
            };
            let mut out = review.clone();
            out["status"] = match user {
                Some(u) => {
                    json!({"authenticated": true, "user": {"username": u, "groups": ["system:serviceaccounts"]}, "audiences": audiences})
                }
                None => json!({"authenticated": false, "error": "invalid bearer token"}),
            };
            return json_response(201, out);
        }
        if req.method() == http::Method::PATCH {
            return self.patch_status(req).await;
        }
        if req.method() != http::Method::GET {
            return json_response(405, status(405, "MethodNotAllowed"));
        }
        let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
        if !watching {
            let s = self.state.lock().unwrap();
            let Some(objects) = s.collections.get(&path) else {
                return json_response(404, status(404, "NotFound"));
            };
            let items: Vec<Value> = objects.values().cloned().collect();
            return json_response(
                200,
                json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
            );
        }
        // A watch: the events after the given version, then new ones as they come.
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut live = self.events.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        let backlog: Vec<(u64, Value)> = {
            let s = self.state.lock().unwrap();
            if !s.collections.contains_key(&path) {
                return json_response(404, status(404, "NotFound"));
            }
            s.log
                .iter()
                .filter(|(rv, c, _)| *rv > from && *c == path)
                .map(|(rv, _, e)| (*rv, e.clone()))
                .collect()
        };
        tokio::spawn(async move {
            let mut sent = from;
            for (rv, e) in backlog {
                sent = rv;
                if tx.send(Bytes::from(format!("{e}\n"))).await.is_err() {
                    return;
                }
            }
            while let Ok((rv, c, e)) = live.recv().await {
                if c == path && rv > sent && tx.send(Bytes::from(format!("{e}\n"))).await.is_err() {
                    return;
                }
            }
        });
        let stream =
            futures_util::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |b| {
                Ok::<_, Infallible>(Frame::data(b))
            });
        http::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap()
    }
}

fn service(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": "2026-11-30T10:00:00Z"},
        "spec": {
            "type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
            "selector": {"app": name}, "sessionAffinity": "None", "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster",
        },
        "status": {"loadBalancer": {}},
    })
}

fn slice(service: &str, port: u16, pod: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-x7k2p"), "namespace": "default", "generateName": format!("{service}-"),
            "labels": {"kubernetes.io/service-name": service, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service, "uid": "u", "controller": true, "blockOwnerDeletion": true}],
        },
        "addressType": "IPv4",
        "endpoints": [{
            "addresses": ["127.0.0.1"],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "targetRef": {"kind": "Pod", "namespace": "default", "name": pod, "uid": "p"},
            "nodeName": "node-1",
        }],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    })
}

fn pod(name: &str, sa: &str, injected: bool) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {"serviceAccountName": sa, "containers": [{"name": "app", "image": "app:1"}]},
        "status": {"phase": "Running", "podIP": "127.0.0.1"},
    });
    if injected {
        p["metadata"]["annotations"] = json!({"pillion.dev/injected": "0.1.0"});
    }
    p
}

fn split(v1: u32, v2: u32) -> Value {
    json!({
        "apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
        "metadata": {"name": "web-split", "namespace": "default"},
        "spec": {"service": "web", "backends": [{"service": "web-v1", "weight": v1}, {"service": "web-v2", "weight": v2}]},
    })
}

async fn demo_app(version: &str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(pillion::demo_app::serve(listener, version.to_string()));
    addr
}

/// The API-server stand-in on a loopback port.
async fn start_api() -> (FakeApi, SocketAddr) {
    let api = FakeApi::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(api.clone().serve(listener));
    (api, addr)
}

/// `pillion-control-plane --source kubernetes` against the stand-in (a kubeconfig with its
/// address and token, in `dir`), with a CA in `dir/ca`; the process and its gRPC address.
fn start_cp(api: SocketAddr, dir: &std::path::Path) -> (Process, SocketAddr) {
    let (cp, addr, _) = start_cp_admin(api, dir);
    (cp, addr)
}

/// `start_cp`, with the admin address too.
fn start_cp_admin(api: SocketAddr, dir: &std::path::Path) -> (Process, SocketAddr, SocketAddr) {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster: {{server: \"http://{api}\"}}\n\
             users:\n- name: cp\n  user: {{token: {TOKEN}}}\ncontexts:\n- name: t\n  context: {{cluster: t, user: cp, namespace: default}}\ncurrent-context: t\n"
        ),
    )
    .unwrap();
    let ca = dir.join("ca").display().to_string();
    let cp = Process::spawn(
        "control-plane",
        &bin("pillion-control-plane"),
        &[
            "--source",
            "kubernetes",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--ca-dir",
            &ca,
        ],
        &[("KUBECONFIG", kubeconfig.display().to_string())],
    );
    let line = cp.wait_log("listening", |v| message_is(v, "control plane listening"));
    let addr = line["fields"]["addr"].as_str().unwrap().parse().unwrap();
    let admin = line["fields"]["admin_addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (cp, addr, admin)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_is_the_configuration() {
    let (api, api_addr) = start_api().await;
    let dir = tempfile::tempdir().unwrap();
    let v1 = demo_app("v1").await;
    let v2 = demo_app("v2").await;
    for s in ["web", "web-v1", "web-v2"] {
        api.put("/api/v1/services", service(s));
    }
    api.put("/api/v1/pods", pod("web-v1-1", "web", false));
    api.put(
        "/apis/discovery.k8s.io/v1/endpointslices",
        slice("web-v1", v1.port(), "web-v1-1"),
    );
    api.put(
        "/apis/split.smi-spec.io/v1alpha4/trafficsplits",
        split(100, 0),
    );

    let (cp, cp_addr) = start_cp(api_addr, dir.path());
    // The missing HTTPRouteGroup CRD does not hold the first model back for long.
    cp.wait_log("first model", |v| {
        message_is(v, "configuration change published")
    });

    let identity = |sa: &str| {
        let token = dir.path().join(format!("sa-token-{sa}"));
        std::fs::write(&token, format!("sa-token-{sa}")).unwrap();
        identity_env(dir.path(), sa, &token)
    };
    // The v2 pod: an injected proxy in front of the v2 app, proving `web` by TokenReview.
    let server = start_proxy(
        "server",
        cp_addr,
        "default/web-v2",
        Some(v2),
        &identity("web"),
    );
    let client = start_proxy(
        "client",
        cp_addr,
        "default/client",
        None,
        &identity("client"),
    );
    for p in [&server, &client] {
        let deadline = Instant::now() + DEADLINE;
        while admin_get(p.admin, "/ready").await.0 != 200 {
            assert!(
                Instant::now() < deadline,
                "proxy never ready (no certificate?):\n{}",
                p.proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let http = http1_client();
    let answer = get(&http, client.outbound, "web", "/").await.unwrap();
    assert_eq!((answer.status, answer.version.as_str()), (200, "v1"));

    // The v2 pod appears (with the sidecar), then the split moves to it: no restart, no file.
    api.put("/api/v1/pods", pod("web-v2-1", "web", true));
    api.put(
        "/apis/discovery.k8s.io/v1/endpointslices",
        slice("web-v2", server.inbound.port(), "web-v2-1"),
    );
    api.put(
        "/apis/split.smi-spec.io/v1alpha4/trafficsplits",
        split(0, 100),
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        let a = get(&http, client.outbound, "web", "/").await.unwrap();
        if a.status == 200 && a.version == "v2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "traffic never moved to v2: {} {} {:?}",
            a.status,
            a.version,
            a.error
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... over mTLS, the server proxy seeing the client's identity.
    let (_, metrics) = admin_get(server.admin, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pillion_responses_total{")
                && l.contains("direction=\"inbound\"")
                && l.contains("tls=\"true\"")
                && l.contains(CLIENT_ID)),
        "{metrics}"
    );

    // A broken update is refused by name; the split in force stays.
    let mut bad = split(100, 0);
    bad["spec"]["backends"][0]["weights"] = json!(5);
    api.put("/apis/split.smi-spec.io/v1alpha4/trafficsplits", bad);
    cp.wait_log("refused", |v| {
        message_is(v, "object refused")
            && v["fields"]["object"] == "TrafficSplit default/web-split"
            && v["fields"]["kept_previous"] == true
    });
    for _ in 0..20 {
        assert_eq!(
            get(&http, client.outbound, "web", "/")
                .await
                .unwrap()
                .version,
            "v2"
        );
    }

    // A GRPCRoute from the cluster: Echo calls to v1, over the TrafficSplit.
    api.put(
        "/apis/gateway.networking.k8s.io/v1/grpcroutes",
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GRPCRoute",
            "metadata": {"name": "echo", "namespace": "default"},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                // As the API server stores a match without a type: defaulted.
                "rules": [{
                    "matches": [{"method": {"type": "Exact", "service": "pillion.demo.v1.Echo"}}],
                    "backendRefs": [{"name": "web-v1", "port": 80}],
                }],
            },
        }),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", client.outbound))
        .unwrap()
        .origin("http://web.default.svc.cluster.local:80".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let mut echo = pillion_proto::demo::v1::echo_client::EchoClient::new(channel);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let reply = echo
            .hello(pillion_proto::demo::v1::HelloRequest::default())
            .await
            .unwrap()
            .into_inner();
        if reply.version == "v1" {
            break;
        }
        assert!(Instant::now() < deadline, "the GRPCRoute never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Plain HTTP matches none of its rules now.
    let a = get(&http, client.outbound, "web", "/").await.unwrap();
    assert_eq!((a.status, a.error.as_deref()), (404, Some("no route")));
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_the_api_server_does_not_vouch_for_get_no_certificate() {
    let (_api, api_addr) = start_api().await;
    let dir = tempfile::tempdir().unwrap();
    let (cp, cp_addr) = start_cp(api_addr, dir.path());
    // A token for `client` presented as `web`, and a token nobody issued.
    // Each is refused for its own reason: the token is another account's, or nobody's.
    for (sa, token, reason) in [
        (
            "web",
            "sa-token-client",
            "certificate refused: the token is for another identity",
        ),
        (
            "web",
            "forged",
            "certificate refused: unknown or missing token",
        ),
    ] {
        let file = dir.path().join(format!("{sa}-{token}"));
        std::fs::write(&file, token).unwrap();
        let p = start_proxy(
            sa,
            cp_addr,
            "default/web",
            None,
            &identity_env(dir.path(), sa, &file),
        );
        cp.wait_log(reason, |v| {
            message_is(v, reason) && v["fields"]["asked"] == WEB_ID
        });
        assert_ne!(admin_get(p.admin, "/ready").await.0, 200);
    }
}

/// The canary controller writes each release's status into its Canary (the status
/// subresource), and a restarted control plane resumes the release from it instead of
/// starting it over.
#[tokio::test(flavor = "multi_thread")]
async fn canary_status_is_written_and_resumed_after_a_restart() {
    let (api, api_addr) = start_api().await;
    let dir = tempfile::tempdir().unwrap();
    for s in ["web", "web-v1", "web-v2"] {
        api.put("/api/v1/services", service(s));
    }
    let canaries = "/apis/pillion.dev/v1alpha1/canaries";
    // No traffic needed: with minRequests 0 each check passes.
    api.put(
        canaries,
        json!({
            "apiVersion": "pillion.dev/v1alpha1", "kind": "Canary",
            "metadata": {"name": "web", "namespace": "default", "generation": 1},
            "spec": {"service": "web", "stable": "web-v1", "candidate": "web-v2",
                     "steps": [30, 100], "interval": "200ms", "analysis": {"minRequests": 0}},
        }),
    );
    let (mut cp, _, admin) = start_cp_admin(api_addr, dir.path());
    let deadline = Instant::now() + DEADLINE;
    let written = loop {
        let obj = api.get(canaries, "default", "web").unwrap();
        if obj["status"]["phase"] == "Promoted" {
            break obj["status"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no Promoted status written: {obj:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(written["weight"], 100);
    assert_eq!(
        written["release"].as_str().unwrap().len(),
        16,
        "{written:#}"
    );
    let (_, before) = admin_get(admin, "/canaries/default/web").await;
    let before: Value = serde_json::from_str(&before).unwrap();
    assert_eq!(before["status"]["events"], written["events"]);

    // A new control plane: the release stays promoted (100 %), with its history.
    cp.signal(nix::sys::signal::Signal::SIGTERM);
    cp.wait_exit();
    let (cp2, _, admin2) = start_cp_admin(api_addr, dir.path());
    cp2.wait_log("resumed", |v| {
        message_is(v, "release resumed from its status")
    });
    let (_, after) = admin_get(admin2, "/canaries/default/web").await;
    let after: Value = serde_json::from_str(&after).unwrap();
    assert_eq!(after["status"]["phase"], "Promoted", "{after:#}");
    assert_eq!(after["status"]["weight"], 100);
    assert_eq!(after["status"]["events"], written["events"]);
}
