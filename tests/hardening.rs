//! Defects found with real clients and hostile input: the application's protocol over mTLS,
//! Host handling, malformed bodies, CONNECT, cancelled HTTP/2 streams, rapid reset, timeouts,
//! the CLI.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An application that speaks only one protocol and says what it saw: `x-seen-version`,
/// `x-seen-host` (the Host header, or the HTTP/2 `:authority`). `/hang` never answers.
async fn one_protocol_app(h2_only: bool, version: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| async move {
                if req.uri().path() == "/hang" {
                    std::future::pending::<()>().await;
                }
                let host = req
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
                    .or_else(|| req.uri().authority().map(|a| a.to_string()))
                    .unwrap_or_default();
                let seen = format!("{:?}", req.version());
                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                let resp = http::Response::builder()
                    .header("x-version", version)
                    .header("x-seen-version", seen)
                    .header("x-seen-host", host)
                    .body(Full::new(body.unwrap_or_default()))
                    .unwrap();
                Ok::<_, Infallible>(resp)
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            tokio::spawn(async move {
                if h2_only {
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(io, svc)
                    .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    addr
}

fn header(a: &Answer, name: &str) -> String {
    a.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// web-v1 is an h2c-only app with `appProtocol: kubernetes.io/h2c`; web-v2 an HTTP/1.1-only
/// app with no hint. Callers of either protocol reach both, over mTLS, unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_proxy_speaks_the_applications_protocol_over_mtls() {
    let apps = vec![
        one_protocol_app(true, "v1").await,
        one_protocol_app(false, "v2").await,
    ];
    let mesh = Mesh::start_mtls_apps(apps, [Some("kubernetes.io/h2c"), None]).await;
    for (host, app_version) in [("web-v1", "HTTP/2.0"), ("web-v2", "HTTP/1.1")] {
        let a = get(&http1_client(), mesh.client.outbound, host, "/x")
            .await
            .unwrap();
        assert_eq!(a.status, 200, "HTTP/1.1 caller of {host}: {:?}", a.error);
        assert_eq!(
            header(&a, "x-seen-version"),
            app_version,
            "HTTP/1.1 → {host}"
        );

        // An h2c caller: `:authority` names the Service.
        let io = hyper_util::rt::TokioIo::new(
            tokio::net::TcpStream::connect(mesh.client.outbound)
                .await
                .unwrap(),
        );
        let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            io,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = http::Request::post(format!("http://{host}/x"))
            .body(Full::new(Bytes::from_static(b"hello")))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "h2c caller of {host}: {resp:?}");
        assert_eq!(
            resp.headers()["x-seen-version"],
            app_version,
            "h2c → {host}"
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
    }
}

/// RFC 9112 §3.2.2: an absolute-form target's authority replaces the Host header. The inbound
/// side refuses what outbound refuses: several Host headers, an invalid one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_replaced_and_checked_on_both_sides() {
    let apps = vec![
        one_protocol_app(false, "v1").await,
        one_protocol_app(false, "v2").await,
    ];
    let mesh = Mesh::start_mtls_apps(apps, [None, None]).await;
    let raw = |addr: SocketAddr, text: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(text.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).to_lowercase()
    };
    let resp = raw(
        mesh.client.outbound,
        "GET http://web-v2/x HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("http/1.1 200"), "{resp}");
    assert!(resp.contains("x-seen-host: web-v2\r\n"), "{resp}");
    assert!(resp.contains("x-version: v2\r\n"), "{resp}");

    // The inbound listener, called directly (plaintext is allowed by the default policy).
    let inbound = mesh.server_proxies[0].inbound;
    for bad in [
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    ] {
        let resp = raw(inbound, bad).await;
        assert!(resp.starts_with("http/1.1 400"), "{bad:?}: {resp}");
    }
}

/// A client's malformed chunked body is its own fault: 400, and the endpoint's latency
/// estimate is untouched (it was raised to a 1 s penalty before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_body_is_a_400_and_spares_the_endpoint() {
    let mesh = Mesh::start(1, 1).await;
    let mut s = tokio::net::TcpStream::connect(mesh.client.outbound)
        .await
        .unwrap();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ-not-hex\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await;
    let resp = String::from_utf8_lossy(&out).to_lowercase();
    assert!(resp.starts_with("http/1.1 400"), "{resp}");
    let (_, config) = admin_get(mesh.client.admin, "/config").await;
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let ewma: Vec<f64> = config
        .pointer("/destinations/web.default.svc.cluster.local:80/rules/0/backends")
        .and_then(|b| b.as_array())
        .into_iter()
        .flatten()
        .flat_map(|b| b["endpoints"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["ewmaMs"].as_f64())
        .collect();
    assert!(!ewma.is_empty(), "{config}");
    assert!(
        ewma.iter().all(|ms| *ms < 500.0),
        "endpoint penalized: {ewma:?}"
    );
}

/// `curl -p -x` (CONNECT) through the outbound proxy to a mesh Service, and plain
/// `curl -x` (absolute-form); CONNECT to a host outside the mesh is refused clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_uses_the_proxy_as_an_http_proxy() {
    let mesh = Mesh::start(1, 1).await;
    let proxy = format!("http://{}", mesh.client.outbound);
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "30", "-D", "-", "-o", "/dev/null"])
            .args(args)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_lowercase()
    };
    let tunnelled = curl(&["-p", "-x", &proxy, "http://web:80/"]);
    assert!(
        tunnelled.contains("200 connection established") || tunnelled.contains("http/1.1 200"),
        "{tunnelled}"
    );
    assert!(tunnelled.contains("x-version: v"), "{tunnelled}");
    let plain = curl(&["-x", &proxy, "http://web/"]);
    assert!(plain.starts_with("http/1.1 200"), "{plain}");
    assert!(plain.contains("x-version: v"), "{plain}");
    let outside = curl(&["-p", "-x", &proxy, "http://example.invalid:80/"]);
    assert!(outside.starts_with("http/1.1 503"), "{outside}");
    assert!(
        outside.contains("pillion-proxy-error: not in mesh"),
        "{outside}"
    );
}

/// A burst of HTTP/2 streams reset by the caller before the proxy took them (what a peer
/// proxy sends when its callers cancel) leaves the connection serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_http2_streams_do_not_close_the_connection() {
    let mesh = Mesh::start(1, 1).await;
    let tcp = tokio::net::TcpStream::connect(mesh.client.outbound)
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    for _ in 0..200 {
        let req = http::Request::get("http://web/").body(()).unwrap();
        let (_resp, mut stream) = client.send_request(req, false).unwrap();
        stream.send_reset(h2::Reason::CANCEL);
        client = client.ready().await.unwrap();
    }
    let req = http::Request::get("http://web/").body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(DEADLINE, resp)
        .await
        .expect("answer")
        .expect("the connection survived the resets");
    assert_eq!(resp.status(), 200);
}

/// A hung application does not hold a request forever: the default request timeout
/// (`PILLION_REQUEST_TIMEOUT`, here 1 s) answers 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_application_gets_the_default_timeout() {
    let apps = vec![
        one_protocol_app(false, "v1").await,
        one_protocol_app(false, "v2").await,
    ];
    let mesh = Mesh::start_with_apps(1, 1, apps, &[("PILLION_REQUEST_TIMEOUT", "1s".into())]).await;
    mesh.wait_for_versions(&["v1", "v2"]).await;
    let started = Instant::now();
    let a = get(&http1_client(), mesh.client.outbound, "web", "/hang")
        .await
        .unwrap();
    assert_eq!(a.status, 504, "{:?}", a.error);
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn the_proxy_answers_help_and_version_and_refuses_bad_log_settings() {
    let proxy = bin("pillion-proxy");
    let out = std::process::Command::new(&proxy)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("PILLION_CONTROL_PLANE_ADDR"));
    let out = std::process::Command::new(&proxy)
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("pillion-proxy "));
    for (var, value) in [
        ("PILLION_LOG", "pillion=loud"),
        ("PILLION_LOG_FORMAT", "xml"),
    ] {
        let out = std::process::Command::new(&proxy)
            .env("PILLION_CONTROL_PLANE_ADDR", "127.0.0.1:1")
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var), "{err}");
    }
}

/// `Expect: 100-continue` over HTTP/2 (curl's uploads over 1 MiB): the proxy answers
/// `100 Continue` when it starts reading the body, and the upload arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_uploads_get_100_continue() {
    let mesh = Mesh::start(1, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upload");
    std::fs::write(&file, vec![b'x'; 2 << 20]).unwrap();
    let out = tokio::process::Command::new("curl")
        .args(["-sv", "--http2-prior-knowledge", "--max-time", "30"])
        .args(["-H", "Host: web", "-H", "Expect: 100-continue"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .args(["-o", "/dev/null", "-w", "%{http_code} %{size_upload}"])
        .arg(format!("http://{}/upload", mesh.client.outbound))
        .output()
        .await
        .expect("curl");
    let verbose = String::from_utf8_lossy(&out.stderr);
    let summary = String::from_utf8_lossy(&out.stdout);
    assert_eq!(summary, format!("200 {}", 2 << 20), "{verbose}");
    assert!(
        verbose.contains("< HTTP/2 100"),
        "no 100 Continue: {verbose}"
    );
}

/// `PILLION_ACCESS_LOG=on`: one log line per request, with what an operator looks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_a_line_per_request() {
    let mesh = Mesh::start_with(1, 1, &[("PILLION_ACCESS_LOG", "on".to_string())]).await;
    let a = get(
        &http1_client(),
        mesh.client.outbound,
        "web",
        "/logged?secret=1",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    let line = mesh.client.proc.wait_log("an access-log line", |v| {
        v["target"] == "pillion_access" && v["fields"]["path"] == "/logged"
    });
    let f = &line["fields"];
    assert_eq!(f["method"], "GET");
    assert_eq!(f["status"], 200);
    assert_eq!(f["authority"], "web.default.svc.cluster.local:80");
    assert!(
        f["backend"].as_str().unwrap().starts_with("web-v"),
        "{line}"
    );
    assert!(f["duration_us"].as_u64().is_some(), "{line}");
    // Without the variable there is none.
    assert!(
        !mesh.server_proxies[0]
            .proc
            .log_text()
            .contains("pillion_access"),
        "the server proxies log no access lines"
    );
}

/// An application that counts the requests it got; `/hang` is never answered.
async fn counting_app() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted = counted.clone();
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let counted = counted.clone();
                async move {
                    if req.uri().path() == "/hang" {
                        counted.fetch_add(1, Ordering::SeqCst);
                        std::future::pending::<()>().await;
                    }
                    let resp = http::Response::builder()
                        .header("x-version", "v1")
                        .body(Full::new(Bytes::from_static(b"ok")))
                        .unwrap();
                    Ok::<_, Infallible>(resp)
                }
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    (addr, seen)
}

/// Rapid reset (CVE-2023-44487) through the mesh: a client that opens requests 100 at a time
/// and resets each batch once the application has it is disconnected by its proxy (GOAWAY
/// ENHANCE_YOUR_CALM) after 250 resets, so the application sees 300 of the 2,000 requests it
/// would have (all of them before; also with `PILLION_RAPID_RESET_FLOOR=off`). The peer
/// proxy, which got the same resets on its shared connection, judges that over ten times as
/// many requests and keeps it: another client is answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resetting_its_requests_at_once_is_disconnected() {
    use std::sync::atomic::Ordering;
    let (app, seen) = counting_app().await;
    let (other, _) = counting_app().await;
    let mesh = Mesh::start_with_apps(1, 0, vec![app, other], &[]).await;
    mesh.wait_for_versions(&["v1"]).await;
    let tcp = tokio::net::TcpStream::connect(mesh.client.outbound)
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let mut ended = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let mut sent = 0;
    'attack: while sent < 2000 {
        let mut batch = Vec::new();
        for _ in 0..100 {
            let req = http::Request::get("http://web/hang").body(()).unwrap();
            match client.send_request(req, false) {
                Ok(stream) => batch.push(stream),
                Err(_) => break 'attack,
            }
            sent += 1;
            client = match client.ready().await {
                Ok(c) => c,
                Err(_) => break 'attack,
            };
        }
        // The whole batch at the application (or the connection gone), then reset.
        let deadline = Instant::now() + DEADLINE;
        while seen.load(Ordering::SeqCst) < sent {
            if ended.is_finished() {
                break 'attack;
            }
            assert!(
                Instant::now() < deadline,
                "the application got {} of {sent}",
                seen.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for (_, mut stream) in batch {
            stream.send_reset(h2::Reason::CANCEL);
        }
    }
    // The proxy sent GOAWAY (ENHANCE_YOUR_CALM, which the h2 client does not report) and
    // closed the connection; its log says why.
    tokio::time::timeout(DEADLINE, &mut ended)
        .await
        .expect("the attacking connection is closed")
        .unwrap()
        .ok();
    let reached = seen.load(Ordering::SeqCst);
    assert!(
        reached <= 400,
        "the application got {reached} requests of {sent}"
    );
    // Others are still served, promptly.
    let answer = get(&http1_client(), mesh.client.outbound, "web", "/")
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    let log = mesh.client.proc.log_text();
    assert!(
        log.contains("it abused the protocol") && log.contains("too many requests reset early"),
        "{log}"
    );
}
