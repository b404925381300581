//! One request followed across the mesh: client proxy → web-v1's proxy → the v1 app, which
//! calls web-v2 with the headers it received → web-v1's proxy again → web-v2's proxy → the v2
//! app. Every hop's span reaches an in-test Zipkin collector, the spans form one tree, they
//! validate against the Zipkin v2 API's schema, and each request keeps its context's format.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use serde_json::Value;

const TRACE_HEADERS: [&str; 7] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
];

/// A Zipkin collector: keeps every span POSTed to it.
async fn collector() -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let spans: Arc<Mutex<Vec<Value>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let kept = spans.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let kept = kept.clone();
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let kept = kept.clone();
                async move {
                    assert_eq!(req.uri().path(), "/api/v2/spans");
                    assert_eq!(req.headers()["content-type"], "application/json");
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let batch: Value = serde_json::from_slice(&body).unwrap();
                    kept.lock()
                        .unwrap()
                        .extend(batch.as_array().unwrap().iter().cloned());
                    let mut resp = http::Response::new(Full::new(Bytes::new()));
                    *resp.status_mut() = http::StatusCode::ACCEPTED;
                    Ok::<_, Infallible>(resp)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
            );
        }
    });
    (addr, spans)
}

/// An application answering with `x-version`. With `next` set (to its own proxy's outbound
/// address), `/chain` first calls web-v2 there, passing the trace headers on as an
/// instrumented application does. Every request's trace headers are recorded.
async fn app(
    version: &'static str,
    next: Arc<OnceLock<SocketAddr>>,
    seen: Arc<Mutex<Vec<http::HeaderMap>>>,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (next, seen) = (next.clone(), seen.clone());
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let (next, seen) = (next.clone(), seen.clone());
                async move {
                    let mut trace = http::HeaderMap::new();
                    for name in TRACE_HEADERS {
                        if let Some(v) = req.headers().get(name) {
                            trace.insert(name, v.clone());
                        }
                    }
                    seen.lock().unwrap().push(trace.clone());
                    let mut status = 200;
                    if req.uri().path() == "/chain"
                        && let Some(outbound) = next.get()
                    {
                        let mut call = http::Request::get(format!("http://{outbound}/"))
                            .header("host", "web-v2")
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        call.headers_mut().extend(trace);
                        let resp = http1_client().request(call).await.unwrap();
                        status = resp.status().as_u16();
                    }
                    let resp = http::Response::builder()
                        .status(status)
                        .header("x-version", version)
                        .body(Full::new(Bytes::from(version)))
                        .unwrap();
                    Ok::<_, Infallible>(resp)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
            );
        }
    });
    addr
}

/// `/chain` on web-v1 through the client proxy, with the caller's trace headers.
async fn chain(client: &H1Client, outbound: SocketAddr, req: http::request::Builder) {
    let a = request(client, outbound, req, "web-v1", "/chain", Bytes::new())
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.error);
}

fn spans_of(spans: &Arc<Mutex<Vec<Value>>>, trace_id: &str, want: usize) -> Vec<Value> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let found: Vec<Value> = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s["traceId"] == trace_id)
            .cloned()
            .collect();
        if found.len() >= want {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {want} spans of {trace_id}: {found:#?}",
            found.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn by<'a>(spans: &'a [Value], service: &str, kind: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["localEndpoint"]["serviceName"] == service && s["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} span of {service}: {spans:#?}"))
}

fn validate(spans: &[Value]) {
    let spec = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/specs/zipkin/zipkin2-api.yaml"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spans.json");
    std::fs::write(&file, serde_json::to_vec(spans).unwrap()).unwrap();
    let out = std::process::Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/zipkin_check.py"
        ))
        .arg(spec)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "spans do not match the Zipkin v2 schema: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_one_trace_across_three_proxies() {
    let (zipkin, spans) = collector().await;
    let next = Arc::new(OnceLock::new());
    let seen_v1: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
    let seen_v2: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
    let apps = vec![
        app("v1", next.clone(), seen_v1.clone()).await,
        app("v2", Arc::new(OnceLock::new()), seen_v2.clone()).await,
    ];
    let env = [
        (
            "PILLION_ZIPKIN_URL",
            format!("http://{zipkin}/api/v2/spans"),
        ),
        ("PILLION_TRACE_SAMPLE_RATE", "1".to_string()),
    ];
    let mesh = Mesh::start_mtls_apps_env(apps, [None, None], &env, &env).await;
    next.set(mesh.server_proxies[0].outbound).unwrap();
    let client = http1_client();

    // No context from the caller: the client proxy starts a W3C trace.
    let a = get(&client, mesh.client.outbound, "web-v1", "/chain")
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.error);
    let traceparent = seen_v2.lock().unwrap().last().unwrap()["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    let trace_id = traceparent.split('-').nth(1).unwrap().to_string();
    let trace = spans_of(&spans, &trace_id, 4);
    assert_eq!(trace.len(), 4, "{trace:#?}");
    validate(&trace);
    let root = by(&trace, "client.default", "CLIENT");
    let v1_server = by(&trace, "web-v1.default", "SERVER");
    let v1_client = by(&trace, "web-v1.default", "CLIENT");
    let v2_server = by(&trace, "web-v2.default", "SERVER");
    assert!(root.get("parentId").is_none(), "{root}");
    assert_eq!(v1_server["parentId"], root["id"]);
    assert_eq!(v1_client["parentId"], v1_server["id"]);
    assert_eq!(v2_server["parentId"], v1_client["id"]);
    // What the v2 app received names the last proxy's span as its parent.
    assert!(traceparent.ends_with(&format!("{}-01", v2_server["id"].as_str().unwrap())));
    for s in [root, v1_client] {
        assert_eq!(s["tags"]["http.method"], "GET");
        assert_eq!(s["tags"]["http.status_code"], "200");
        assert_eq!(
            s["tags"]["pillion.peer_identity"],
            "spiffe://cluster.local/ns/default/sa/web"
        );
        assert!(s["remoteEndpoint"]["port"].as_u64().is_some(), "{s}");
    }
    assert_eq!(
        root["tags"]["pillion.backend"],
        "web-v1.default.svc.cluster.local:80"
    );
    assert_eq!(root["remoteEndpoint"]["serviceName"], "web-v1.default");
    assert_eq!(
        v2_server["tags"]["pillion.peer_identity"],
        "spiffe://cluster.local/ns/default/sa/web"
    );
    assert_eq!(v1_server["tags"]["http.path"], "/chain");

    // A B3 caller that sampled: the trace continues in B3 multi-header form at every hop.
    let req = http::Request::builder()
        .header("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124")
        .header("x-b3-spanid", "a2fb4a1d1a96d312")
        .header("x-b3-sampled", "1");
    chain(&client, mesh.client.outbound, req).await;
    let got = seen_v2.lock().unwrap().last().unwrap().clone();
    assert_eq!(got["x-b3-traceid"], "463ac35c9f6413ad48485a3953bb6124");
    assert!(!got.contains_key("traceparent"), "{got:?}");
    let trace = spans_of(&spans, "463ac35c9f6413ad48485a3953bb6124", 4);
    validate(&trace);
    assert_eq!(
        by(&trace, "client.default", "CLIENT")["parentId"],
        "a2fb4a1d1a96d312"
    );

    // A caller that decided not to sample: the decision travels on, and no hop records a
    // span (checked once a later sampled request's spans have arrived from the same proxies).
    let req = http::Request::builder().header(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
    );
    chain(&client, mesh.client.outbound, req).await;
    let got = seen_v2.lock().unwrap().last().unwrap().clone();
    assert!(got["traceparent"].to_str().unwrap().ends_with("-00"));
    let a = get(&client, mesh.client.outbound, "web-v1", "/chain")
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    let last = seen_v2.lock().unwrap().last().unwrap()["traceparent"]
        .to_str()
        .unwrap()
        .split('-')
        .nth(1)
        .unwrap()
        .to_string();
    spans_of(&spans, &last, 4);
    let unsampled = spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s["traceId"] == "0af7651916cd43dd8448eb211c80319c")
        .count();
    assert_eq!(unsampled, 0);
    let (_, metrics) = admin_get(mesh.client.admin, "/metrics").await;
    assert!(
        metrics.contains("pillion_spans_dropped_total 0"),
        "{metrics}"
    );
    // The certificate held expires in the future (the mesh's leaves live 24 h).
    let expiry: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pillion_certificate_expiry_timestamp_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no expiry in {metrics}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(expiry > now + 3600, "{expiry} vs now {now}");
    // The CA issued one certificate to each of the three proxies, each watching its policy.
    let (_, cp) = admin_get(mesh.cp.admin, "/metrics").await;
    let issued: u64 = cp
        .lines()
        .find_map(|l| l.strip_prefix("pillion_control_plane_certificates_issued_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_default();
    assert!(issued >= 3, "{cp}");
    assert!(
        cp.contains("pillion_control_plane_watches{kind=\"policy\"} 3"),
        "{cp}"
    );
}

/// The two-version mesh, every request sampled, its spans kept by a collector.
async fn traced_mesh() -> (Mesh, Arc<Mutex<Vec<Value>>>) {
    let (zipkin, spans) = collector().await;
    let env = [
        (
            "PILLION_ZIPKIN_URL",
            format!("http://{zipkin}/api/v2/spans"),
        ),
        ("PILLION_TRACE_SAMPLE_RATE", "1".to_string()),
    ];
    (Mesh::start_with(1, 1, &env).await, spans)
}

/// A gRPC call's span ends with the stream and carries the status from its trailers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_spans_carry_the_status_from_trailers() {
    use pillion_proto::demo::v1::HelloRequest;
    let (mesh, spans) = traced_mesh().await;
    let mut client = grpc_client(&mesh).await;
    let mut req = tonic::Request::new(HelloRequest {
        name: "traced".into(),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "traceparent",
        "00-11111111111111111111111111111111-2222222222222222-01"
            .parse()
            .unwrap(),
    );
    client.hello(req).await.unwrap();
    let trace = spans_of(&spans, "11111111111111111111111111111111", 1);
    let span = by(&trace, "client.default", "CLIENT");
    assert_eq!(span["tags"]["grpc.status_code"], "0", "{span}");
    assert_eq!(span["name"], "post");
    validate(&trace);
}

/// An injected fault is visible in the caller's span: the `pillion.fault` tag, the status it
/// answered and the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_abort_is_tagged_in_the_span() {
    let (mesh, spans) = traced_mesh().await;
    write_config(
        &mesh.path("fault.yaml"),
        "apiVersion: pillion.dev/v1alpha1\nkind: FaultInjection\nmetadata: {name: chaos}\nspec:\n  targetRef: {kind: Service, name: web}\n  abort: {percent: 100, httpStatus: 503}\n",
    );
    let client = http1_client();
    let deadline = Instant::now() + DEADLINE;
    let mut n = 0u32;
    let trace_id = loop {
        n += 1;
        let trace_id = format!("{n:032x}");
        let a = request(
            &client,
            mesh.client.outbound,
            http::Request::get("/")
                .header("traceparent", format!("00-{trace_id}-2222222222222222-01")),
            "web",
            "/",
            Bytes::new(),
        )
        .await
        .unwrap();
        if a.error.as_deref() == Some("fault injected") {
            break trace_id;
        }
        assert!(Instant::now() < deadline, "the fault never took effect");
    };
    let trace = spans_of(&spans, &trace_id, 1);
    let span = by(&trace, "client.default", "CLIENT");
    assert_eq!(span["tags"]["pillion.fault"], "abort", "{span}");
    assert_eq!(span["tags"]["http.status_code"], "503", "{span}");
    assert_eq!(span["tags"]["error"], "fault injected", "{span}");
    validate(&trace);
}
