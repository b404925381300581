//! HTTPRoute filters end to end: the real control plane and client proxy, applications
//! in-process that record what reached them (method, target, Host, headers, body).

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What one application saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    target: String,
    host: String,
    headers: http::HeaderMap,
    body: Bytes,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// An application that records every request and answers 200 `ok` with headers a response
/// filter can work on (`set-cookie`, `x-internal`).
async fn recording_app(name: &'static str) -> (SocketAddr, Log) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Log = Arc::default();
    let seen = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = match body.collect().await {
                            Ok(b) => b.to_bytes(),
                            Err(e) => {
                                eprintln!("{name}: body failed: {e:?}");
                                Bytes::new()
                            }
                        };
                        let host = parts
                            .uri
                            .authority()
                            .map(|a| a.to_string())
                            .or_else(|| {
                                parts
                                    .headers
                                    .get(http::header::HOST)
                                    .map(|h| h.to_str().unwrap().to_string())
                            })
                            .unwrap_or_default();
                        seen.lock().unwrap().push(Seen {
                            target: parts
                                .uri
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default(),
                            host,
                            headers: parts.headers,
                            body,
                        });
                        let resp = http::Response::builder()
                            .header("x-app", name)
                            .header("set-cookie", "a=1")
                            .header("x-internal", "secret")
                            .body(Full::new(Bytes::from_static(b"ok")))
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, log)
}

fn service_yaml(name: &str, app: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  ports: [{{name: http, port: 80, targetPort: {port}}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata:\n  name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints: [{{addresses: ['127.0.0.1']}}]\n---\n",
        port = app.port()
    )
}

const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: default}
spec:
  parentRefs: [{group: '', kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /headers}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Set, value: new}]
        add: [{name: x-add, value: more}]
        remove: [x-remove]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: x-resp, value: 'yes'}]
        add: [{name: set-cookie, value: b=2}]
        remove: [x-internal]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        hostname: rewritten.example
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}
    backendRefs: [{name: api, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /full}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        path: {type: ReplaceFullPath, replaceFullPath: /replaced}
    backendRefs: [{name: api, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /redirect}}]
    filters:
    - type: RequestRedirect
      requestRedirect:
        scheme: https
        hostname: example.org
        statusCode: 301
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /moved}
  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters:
    - type: RequestMirror
      requestMirror:
        backendRef: {name: shadow, port: 80}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /mirror-dead}}]
    filters:
    - type: RequestMirror
      requestMirror:
        backendRef: {name: dead, port: 80}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /mirror-hang}}]
    filters:
    - type: RequestMirror
      requestMirror:
        backendRef: {name: hang, port: 80}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /cors}}]
    filters:
    - type: CORS
      cors:
        allowOrigins: ['https://*.example.com']
        allowMethods: [GET, PUT]
        allowHeaders: [x-token]
        exposeHeaders: [x-app]
        allowCredentials: true
        maxAge: 600
    backendRefs: [{name: api, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /per-backend}}]
    backendRefs:
    - name: api
      port: 80
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier:
          set: [{name: x-backend, value: api}]
";

struct Setup {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    cp: ControlPlaneProc,
    proxy: ProxyProc,
    web: Log,
    api: Log,
    shadow: Log,
    /// Accepts connections (the kernel does) and never reads from them.
    _hang: std::net::TcpListener,
}

async fn setup() -> Setup {
    setup_with(&[]).await
}

async fn setup_with(proxy_env: &[(&str, String)]) -> Setup {
    let (web_addr, web) = recording_app("web").await;
    let (api_addr, api) = recording_app("api").await;
    let (shadow_addr, shadow) = recording_app("shadow").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // Nothing listens there.
    let dead_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let services = [
        ("web", web_addr),
        ("api", api_addr),
        ("shadow", shadow_addr),
        ("dead", dead_addr),
        ("hang", hang.local_addr().unwrap()),
    ]
    .iter()
    .map(|(n, a)| service_yaml(n, *a))
    .collect::<String>();
    write_config(&path.join("services.yaml"), &services);
    write_config(&path.join("route.yaml"), ROUTE);
    let cp = start_control_plane(&path, "127.0.0.1:0");
    let proxy = start_proxy("proxy-client", cp.addr, "default/client", None, proxy_env);
    // Routed once the redirect answers (it needs the route, nothing else).
    let client = http1_client();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let a = get(&client, proxy.outbound, "web", "/redirect").await;
        if a.as_ref().is_ok_and(|a| a.status == 301) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the HTTPRoute never applied: {:?}",
            a.map(|a| a.status)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Setup {
        _dir: dir,
        dir: path,
        cp,
        proxy,
        web,
        api,
        shadow,
        _hang: hang,
    }
}

/// One request through the proxy at `proxy`, over HTTP/1.1 (`Host: host`) or h2c (`:authority`
/// host, on a connection of its own).
async fn send(
    h2: bool,
    proxy: SocketAddr,
    req: http::request::Builder,
    host: &str,
    path: &str,
    body: Bytes,
) -> Answer {
    if !h2 {
        return request(&http1_client(), proxy, req, host, path, body)
            .await
            .unwrap();
    }
    let io = TokioIo::new(tokio::net::TcpStream::connect(proxy).await.unwrap());
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = req
        .uri(format!("http://{host}{path}"))
        .body(Full::new(body))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let header = |n: &str| {
        parts
            .headers
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
    };
    Answer {
        status: parts.status.as_u16(),
        version: header("x-version").unwrap_or_default(),
        error: header("pillion-proxy-error"),
        body,
        headers: parts.headers,
    }
}

async fn send_get(h2: bool, proxy: SocketAddr, host: &str, path: &str) -> Answer {
    send(
        h2,
        proxy,
        http::Request::builder(),
        host,
        path,
        Bytes::new(),
    )
    .await
}

/// POSTs `payload` to `path` over HTTP/1.1 and then h2c; each gets the application's answer and
/// the application the whole body, whatever becomes of the mirror's copy.
async fn post_both_ways(s: &Setup, path: &str, payload: &Bytes) {
    for h2 in [false, true] {
        let req = http::Request::builder().method("POST");
        let a = send(h2, s.proxy.outbound, req, "web", path, payload.clone()).await;
        assert_eq!((a.status, a.body.as_ref()), (200, &b"ok"[..]));
        assert!(
            last(&s.web).body == *payload,
            "the request's body arrived whole"
        );
    }
}

/// Polls the proxy's metrics until `n` mirrored copies are counted as failed, within `within`.
async fn wait_for_failed_copies(s: &Setup, n: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (_, metrics) = admin_get(s.proxy.admin, "/metrics").await;
        if metric_sum(&metrics, "pillion_requests_mirrored_failed_total", "") == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} failed copies not counted within {within:?}: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn last(log: &Log) -> Seen {
    log.lock()
        .unwrap()
        .last()
        .cloned()
        .expect("a request reached the app")
}

fn values(h: &http::HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_modifiers_edit_the_request_and_the_response() {
    let s = setup().await;
    for h2 in [false, true] {
        let req = http::Request::builder()
            .header("x-set", "old")
            .header("x-add", "first")
            .header("x-remove", "1")
            .header("x-kept", "1");
        let a = send(h2, s.proxy.outbound, req, "web", "/headers/x", Bytes::new()).await;
        assert_eq!(a.status, 200, "{:?}", a.error);
        let seen = last(&s.web);
        assert_eq!(values(&seen.headers, "x-set"), ["new"]);
        assert_eq!(values(&seen.headers, "x-add"), ["first,more"]);
        assert!(seen.headers.get("x-remove").is_none());
        assert_eq!(values(&seen.headers, "x-kept"), ["1"]);
        assert_eq!(seen.target, "/headers/x");
        assert_eq!(values(&a.headers, "x-resp"), ["yes"]);
        assert_eq!(values(&a.headers, "set-cookie"), ["a=1", "b=2"]);
        assert!(a.headers.get("x-internal").is_none());
        assert_eq!(values(&a.headers, "x-app"), ["web"]);
    }
    // A rule without filters leaves the request and the response as they are.
    let client = http1_client();
    let a = get(&client, s.proxy.outbound, "web", "/mirror")
        .await
        .unwrap();
    assert_eq!(values(&a.headers, "x-internal"), ["secret"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_rewrites_change_the_path_and_host_the_backend_sees() {
    let s = setup().await;
    for h2 in [false, true] {
        let a = send_get(h2, s.proxy.outbound, "web", "/old/item?id=7").await;
        assert_eq!(a.status, 200, "{:?}", a.error);
        let seen = last(&s.api);
        assert_eq!(seen.target, "/new/item?id=7");
        assert_eq!(seen.host, "rewritten.example");
        let a = send_get(h2, s.proxy.outbound, "web", "/old").await;
        assert_eq!(a.status, 200);
        assert_eq!(last(&s.api).target, "/new");
        let a = send_get(h2, s.proxy.outbound, "web.default:80", "/full/a/b?x=1").await;
        assert_eq!(a.status, 200);
        let seen = last(&s.api);
        assert_eq!(seen.target, "/replaced?x=1");
        assert_eq!(
            seen.host, "web.default:80",
            "no hostname in the rewrite: unchanged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_answered_by_the_proxy() {
    let s = setup().await;
    for h2 in [false, true] {
        let a = send_get(h2, s.proxy.outbound, "web", "/redirect/x?y=1").await;
        assert_eq!(a.status, 301);
        assert_eq!(
            values(&a.headers, "location"),
            ["https://example.org/moved/x?y=1"]
        );
    }
    assert!(s.web.lock().unwrap().is_empty() && s.api.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_gets_a_copy_of_each_request_body_and_all() {
    let s = setup().await;
    let payload: Bytes = (0..300_000u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let req = http::Request::builder()
        .method("POST")
        .header("x-trace-me", "1");
    let a = send(
        true,
        s.proxy.outbound,
        req,
        "web",
        "/mirror/upload",
        payload.clone(),
    )
    .await;
    assert_eq!((a.status, a.body.as_ref()), (200, &b"ok"[..]));
    assert_eq!(
        values(&a.headers, "x-app"),
        ["web"],
        "the answer is the backend's, not the mirror's"
    );
    assert_eq!(last(&s.web).body, payload);
    let deadline = Instant::now() + DEADLINE;
    while s.shadow.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the mirror got no copy");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let copy = last(&s.shadow);
    assert_eq!(copy.target, "/mirror/upload");
    assert_eq!(values(&copy.headers, "x-trace-me"), ["1"]);
    assert_eq!(copy.body.len(), payload.len());
    assert!(copy.body == payload, "the copy's body differs");
    // A bodiless one too, and the proxy counts both.
    let a = get(&http1_client(), s.proxy.outbound, "web", "/mirror")
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    while s.shadow.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "the second copy never came");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Over HTTP/1.1 too.
    let req = http::Request::builder().method("POST");
    let a = send(
        false,
        s.proxy.outbound,
        req,
        "web",
        "/mirror/h1",
        payload.clone(),
    )
    .await;
    assert_eq!(a.status, 200);
    while s.shadow.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "the HTTP/1.1 copy never came");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(last(&s.shadow).body == payload);
    let (_, metrics) = admin_get(s.proxy.admin, "/metrics").await;
    assert_eq!(
        metric_sum(&metrics, "pillion_requests_mirrored_total", ""),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "pillion_requests_mirrored_failed_total", ""),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_cannot_be_reached_does_not_touch_the_request() {
    let s = setup().await;
    let payload = Bytes::from(vec![7u8; 100_000]);
    post_both_ways(&s, "/mirror-dead", &payload).await;
    wait_for_failed_copies(&s, 2.0, DEADLINE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backends_own_filters_apply_only_to_its_requests() {
    let s = setup().await;
    let client = http1_client();
    let a = get(&client, s.proxy.outbound, "web", "/per-backend")
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(values(&last(&s.api).headers, "x-backend"), ["api"]);
    let a = get(&client, s.proxy.outbound, "web", "/full")
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    assert!(last(&s.api).headers.get("x-backend").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_filter_is_refused_by_field_and_the_route_in_force_stays() {
    let s = setup().await;
    let broken = ROUTE.replace("statusCode: 301", "statusCode: 200");
    write_config(&s.dir.join("route.yaml"), &broken);
    let line = s.cp.proc.wait_log("refusal of the bad status code", |v| {
        v["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("route.yaml") && e.contains("statusCode"))
    });
    let error = line["fields"]["error"].as_str().unwrap();
    assert!(
        error.contains("HTTPRoute/web: spec.rules[3].filters[0].requestRedirect.statusCode: 200 is not one of 301, 302, 303, 307, 308"),
        "{error}"
    );
    let a = get(&http1_client(), s.proxy.outbound, "web", "/redirect")
        .await
        .unwrap();
    assert_eq!(a.status, 301, "the route in force before stays");
}

/// Across the mTLS mesh (client proxy -> server proxy -> demo app): the client proxy applies the
/// filters, and what it edited arrives at the application through the server proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_apply_across_the_mtls_mesh() {
    let mesh = Mesh::start_mtls("24h", &[]).await;
    write_config(
        &mesh.path("route.yaml"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web, namespace: default}\n\
         spec:\n  parentRefs: [{group: '', kind: Service, name: web, port: 80}]\n  rules:\n\
         \x20 - filters:\n\
         \x20   - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-filtered, value: 'yes'}]}}\n\
         \x20   - {type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /headers}}}\n\
         \x20   - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-resp, value: added}]}}\n\
         \x20   backendRefs: [{name: web-v2, port: 80}]\n",
    );
    let client = http1_client();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let a = get(&client, mesh.client.outbound, "web", "/anything")
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&a.body).to_string();
        if a.status == 200 && body.contains("x-filtered: yes") {
            assert_eq!(a.version, "v2");
            assert_eq!(values(&a.headers, "x-resp"), ["added"]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the filters never applied: {} {body}",
            a.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A mirror backend that takes connections and never reads: the copy falls behind, is given up
/// once 1 MiB behind, and ends then (its body freed), not when the request timeout would end it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_falls_behind_is_given_up_at_once() {
    let s = setup_with(&[("PILLION_REQUEST_TIMEOUT", "10m".to_string())]).await;
    let payload = Bytes::from(vec![1u8; 8 << 20]);
    post_both_ways(&s, "/mirror-hang", &payload).await;
    // Given up at once (well under a second here). Not given up, a copy stuck writing to the
    // backend ends only when something else ends it: after 25 s, or at the request timeout's
    // 10 minutes, in runs without the signal. 20 s leaves a busy machine room.
    wait_for_failed_copies(&s, 2.0, Duration::from_secs(20)).await;
}

/// One h2c connection to `proxy`, for many requests.
async fn h2_connection(proxy: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let io = TokioIo::new(tokio::net::TcpStream::connect(proxy).await.unwrap());
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// A request to `web` on `h2`; its status and body.
async fn on_h2(
    h2: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Bytes,
) -> (u16, Bytes) {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://web{path}"))
        .body(Full::new(body))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

/// Peak and current resident memory of a process, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    (kb("VmHWM:"), kb("VmRSS:"))
}

/// A mirror backend that never completes a connection (`hang` over HTTP/2: the proxy waits for
/// its SETTINGS) holds each copy, body and all, until the copy times out. The proxy keeps at
/// most 8 MiB of such bodies, not one per copy: 300 copies of 256 KiB would be 75 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_stuck_on_a_mirror_hold_bounded_memory() {
    let s = setup_with(&[("PILLION_REQUEST_TIMEOUT", "10m".to_string())]).await;
    let pid = s.proxy.proc.pid();
    let (_, before) = memory(pid);
    let mut h2 = h2_connection(s.proxy.outbound).await;
    let payload = Bytes::from(vec![7u8; 256 << 10]);
    const COPIES: usize = 300;
    for _ in 0..COPIES {
        let (status, body) = on_h2(&mut h2, "POST", "/mirror-hang", payload.clone()).await;
        assert_eq!((status, body.as_ref()), (200, &b"ok"[..]));
    }
    let (peak, _) = memory(pid);
    let grown = peak.saturating_sub(before) >> 20;
    assert!(grown < 60, "the proxy grew by {grown} MiB holding copies");
    // The copies past the budget were given up at once, not when the proxy gives up on the
    // mirror's connection (20 s on).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, metrics) = admin_get(s.proxy.admin, "/metrics").await;
        let failed = metric_sum(&metrics, "pillion_requests_mirrored_failed_total", "");
        if failed >= (COPIES - 64) as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "{failed} copies given up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Copies in flight are bounded too (1,024 in a proxy): past that, requests are not copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_in_flight_are_bounded() {
    let s = setup_with(&[("PILLION_REQUEST_TIMEOUT", "10m".to_string())]).await;
    let mut h2 = h2_connection(s.proxy.outbound).await;
    const REQUESTS: usize = 1100;
    for _ in 0..REQUESTS {
        let (status, _) = on_h2(&mut h2, "GET", "/mirror-hang", Bytes::new()).await;
        assert_eq!(status, 200);
    }
    // Each copy waits for the mirror's connection (until the proxy gives up on it, 20 s on):
    // the ones past the bound were refused as they came.
    let (_, metrics) = admin_get(s.proxy.admin, "/metrics").await;
    let failed = metric_sum(&metrics, "pillion_requests_mirrored_failed_total", "");
    assert_eq!(failed, (REQUESTS - 1024) as f64, "{metrics}");
}

/// CORS: a browser's preflight is answered by the proxy; an actual cross-origin answer carries
/// the headers that let the page read it, for allowed origins only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_and_allowed_origins_can_read_answers() {
    let s = setup().await;
    for h2 in [false, true] {
        let cors = |req| {
            send(
                h2,
                s.proxy.outbound,
                req,
                "web",
                "/cors/items",
                Bytes::new(),
            )
        };
        let before = s.api.lock().unwrap().len();
        let req = http::Request::builder()
            .method("OPTIONS")
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "x-token");
        let a = cors(req).await;
        assert_eq!(a.status, 204);
        let h = &a.headers;
        assert_eq!(
            values(h, "access-control-allow-origin"),
            ["https://app.example.com"]
        );
        assert_eq!(values(h, "access-control-allow-methods"), ["GET, PUT"]);
        assert_eq!(values(h, "access-control-allow-headers"), ["x-token"]);
        assert_eq!(values(h, "access-control-allow-credentials"), ["true"]);
        assert_eq!(values(h, "access-control-max-age"), ["600"]);
        assert_eq!(
            s.api.lock().unwrap().len(),
            before,
            "a preflight is not forwarded"
        );

        let req = http::Request::builder().header("origin", "https://app.example.com");
        let a = cors(req).await;
        assert_eq!(a.status, 200);
        assert_eq!(
            values(&a.headers, "access-control-allow-origin"),
            ["https://app.example.com"]
        );
        assert_eq!(
            values(&a.headers, "access-control-expose-headers"),
            ["x-app"]
        );
        assert_eq!(values(&a.headers, "vary"), ["Origin"]);

        // Another origin, or none: the answer as the application gave it.
        let req = http::Request::builder().header("origin", "https://evil.example.org");
        let a = cors(req).await;
        assert_eq!(a.status, 200);
        assert!(a.headers.get("access-control-allow-origin").is_none());
        let req = http::Request::builder()
            .method("OPTIONS")
            .header("origin", "https://evil.example.org")
            .header("access-control-request-method", "PUT");
        let a = cors(req).await;
        assert_eq!(a.status, 204);
        assert!(a.headers.get("access-control-allow-origin").is_none());
        let a = send_get(h2, s.proxy.outbound, "web", "/cors/items").await;
        assert!(a.headers.get("access-control-allow-origin").is_none());
    }
}
