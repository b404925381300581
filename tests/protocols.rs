//! HTTP/1.1, h2c and gRPC through two proxies, and the errors the proxy itself answers.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use hyper::body::Bytes;
use pillion_proto::demo::v1::HelloRequest;
use pillion_proto::demo::v1::echo_client::EchoClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A bidirectional Chat stream: where to send, and the replies.
async fn chat(
    client: &mut EchoClient<tonic::transport::Channel>,
) -> (
    tokio::sync::mpsc::Sender<HelloRequest>,
    tonic::Streaming<pillion_proto::demo::v1::HelloReply>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let replies = client
        .chat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, replies)
}

async fn h2c_connect(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>> {
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

async fn h2c_get(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    uri: &str,
) -> (u16, String) {
    let req = http::Request::get(uri)
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let version = resp
        .headers()
        .get("x-version")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (resp.status().as_u16(), version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_h2c_pass_through_two_proxies() {
    let mesh = Mesh::start(1, 1).await;
    let out = mesh.client.outbound;

    let h1 = http1_client();
    let a = get(&h1, out, "web", "/").await.unwrap();
    assert_eq!(a.status, 200);
    assert!(String::from_utf8_lossy(&a.body).starts_with("hello from v"));

    // A streamed (chunked) POST body of 3 MiB comes back intact.
    assert_echoed(&h1, out, "web", 3 * 1024 * 1024).await;

    // Hop-by-hop headers stop at the proxy; end-to-end ones arrive.
    let a = request(
        &h1,
        out,
        http::Request::builder()
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .header("x-end", "2"),
        "web",
        "/headers",
        Bytes::new(),
    )
    .await
    .unwrap();
    let seen = String::from_utf8_lossy(&a.body).to_string();
    assert!(seen.contains("x-end: 2"), "{seen}");
    assert!(!seen.contains("x-hop"), "{seen}");

    // h2c with prior knowledge (`:authority` names the service), and the application's own
    // status codes.
    let mut h2 = h2c_connect(out).await;
    let (status, version) = h2c_get(&mut h2, "http://web.default/").await;
    assert_eq!(status, 200);
    assert!(version.starts_with('v'));
    let (status, _) = h2c_get(&mut h2, "http://web/status/418").await;
    assert_eq!(status, 418);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_streaming_errors_and_large_messages_arrive_intact() {
    let mesh = Mesh::start(1, 1).await;
    let mut client = grpc_client(&mesh).await;

    let reply = client
        .hello(HelloRequest {
            name: "unary".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(reply.metadata().get("x-version").is_some());
    assert!(reply.into_inner().message.starts_with("hello unary from v"));

    // A non-OK status and its message survive both hops.
    let status = client
        .hello(HelloRequest {
            name: "boom".into(),
            fail_with: tonic::Code::NotFound as u32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.message(), "failed as asked by boom");

    // 8 MiB each way.
    let big = vec![7u8; 8 << 20];
    let reply = client
        .hello(HelloRequest {
            name: "big".into(),
            payload: big.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.payload.len(), big.len());

    // Bidirectional streaming: each message answered in turn, on one stream.
    let (tx, mut replies) = chat(&mut client).await;
    let mut version = None;
    for i in 0..20 {
        tx.send(HelloRequest {
            name: format!("m{i}"),
            ..Default::default()
        })
        .await
        .unwrap();
        let r = replies.next().await.unwrap().unwrap();
        assert!(r.message.starts_with(&format!("hello m{i} from")));
        // One stream is one request: every message goes to the same version.
        assert_eq!(*version.get_or_insert(r.version.clone()), r.version);
    }
    drop(tx);
    assert!(
        replies.next().await.is_none(),
        "the stream ends with OK trailers"
    );

    // A stream that ends with ABORTED in its trailers is counted with that status.
    let (tx, mut replies) = chat(&mut client).await;
    tx.send(HelloRequest {
        name: "ok".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(replies.next().await.unwrap().is_ok());
    tx.send(HelloRequest {
        name: "abort".into(),
        fail_with: tonic::Code::Aborted as u32,
        ..Default::default()
    })
    .await
    .unwrap();
    let status = replies.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::Aborted);
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let (_, metrics) = admin_get(mesh.client.admin, "/metrics").await;
        let counted = metrics.lines().any(|l| {
            l.starts_with("pillion_responses_total{direction=\"outbound\"")
                && l.contains("grpc_status=\"10\"")
        });
        if counted {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_passed_through() {
    let mesh = Mesh::start(1, 1).await;
    let mut s = tokio::net::TcpStream::connect(mesh.client.outbound)
        .await
        .unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).await.unwrap(), 1, "closed before the 101");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    s.write_all(b"ping over the tunnel").await.unwrap();
    let mut buf = [0u8; 20];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping over the tunnel");
}

/// `curl --http2` on a plain URL asks for an h2c upgrade (Upgrade: h2c, HTTP2-Settings). That
/// upgrade is between the client and the proxy, which answers in HTTP/1.1 (RFC 9110 §7.8 lets a
/// server ignore Upgrade): it is not passed to the application, whose 101 would leave curl with
/// an empty reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_from_curl_is_answered_in_http1() {
    let mesh = Mesh::start(1, 1).await;
    let url = format!("http://{}/", mesh.client.outbound);
    let text = curl(&["--http2", "-w", "\n%{http_code} %{http_version}", &url]).await;
    assert!(text.ends_with("\n200 1.1"), "{text}");
    assert!(text.contains("v1") || text.contains("v2"), "{text}");
}

/// Real curl with `args` (and `Host: web`): what it printed; it must succeed.
async fn curl(args: &[&str]) -> String {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-H", "Host: web"])
        .args(args)
        .output()
        .await
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Responses without content over HTTP/2 (to HEAD, 204, 304) end with their HEADERS: curl (and
/// nghttp2 under it) resets a HEAD response followed by even an empty DATA frame, and a 204
/// with a Content-Length (the demo application sends one, with a body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_204_and_304_over_http2_end_with_their_headers() {
    // Pillion's own HTTP/2 server, and the h2 crate's (the fallback) in front of the client.
    for server in ["pillion", "h2"] {
        let mesh = Mesh::start_with(1, 1, &[("PILLION_HTTP2", server.into())]).await;
        for (head, path, want) in [
            (true, "/", "200"),
            (false, "/status/204", "204"),
            (false, "/status/304", "304"),
            (true, "/status/204", "204"),
        ] {
            let url = format!("http://{}{path}", mesh.client.outbound);
            let mut args = vec!["--http2-prior-knowledge", "-o", "/dev/null"];
            if head {
                args.push("-I");
            }
            args.extend(["-w", "%{http_code} %{http_version}", &url]);
            let text = curl(&args).await;
            assert_eq!(text, format!("{want} 2"), "{server}: head {head} {path}");
        }
    }
}

/// A client that shuts down its sending side once its request is out (`nc`, scripts, some
/// HTTP/1.0 clients) still gets its answer, as it would from the application without the mesh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    let mesh = Mesh::start(1, 1).await;
    for request in [
        "GET /slow?ms=200 HTTP/1.1\r\nHost: web\r\n\r\n",
        "GET /slow?ms=200 HTTP/1.0\r\nHost: web\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello",
    ] {
        let mut s = tokio::net::TcpStream::connect(mesh.client.outbound)
            .await
            .unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(DEADLINE, s.read_to_end(&mut answer))
            .await
            .expect("no answer")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1."), "{request:?}: {answer:?}");
        assert!(answer.contains(" 200 "), "{request:?}: {answer:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_errors_have_clear_statuses_for_http_and_grpc() {
    let mesh = Mesh::start(1, 1).await;
    let h1 = http1_client();
    let out = mesh.client.outbound;

    let mut s = tokio::net::TcpStream::connect(out).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nHost: other\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 400", "two Host headers are refused");

    let a = get(&h1, out, "nowhere", "/").await.unwrap();
    assert_eq!((a.status, a.error.as_deref()), (503, Some("not in mesh")));
    let a = get(&h1, out, "example.org", "/").await.unwrap();
    assert_eq!((a.status, a.error.as_deref()), (503, Some("not in mesh")));

    // A backend that is not a Service answers 500 for its share; a route that matches nothing 404.
    write_config(
        &mesh.path("route.yaml"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web, namespace: default}\n\
         spec:\n  parentRefs: [{group: '', kind: Service, name: web, port: 80}]\n  rules:\n\
         \x20 - matches: [{path: {type: PathPrefix, value: /v1}}]\n    backendRefs: [{name: web-v1, port: 80}]\n\
         \x20 - matches: [{path: {type: PathPrefix, value: /gone}}]\n    backendRefs: [{name: web-v9, port: 80}]\n\
         \x20 - matches: [{path: {type: PathPrefix, value: /slow}}]\n    backendRefs: [{name: web-v2, port: 80}]\n    timeouts: {request: 200ms}\n",
    );
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let a = get(&h1, out, "web", "/elsewhere").await.unwrap();
        if a.status == 404 {
            assert_eq!(a.error.as_deref(), Some("no route"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the HTTPRoute never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = get(&h1, out, "web", "/v1/x").await.unwrap();
    assert_eq!((a.status, a.version.as_str()), (200, "v1"));
    let a = get(&h1, out, "web", "/gone").await.unwrap();
    assert_eq!(
        (a.status, a.error.as_deref()),
        (500, Some("backend failure"))
    );
    let a = get(&h1, out, "web", "/slow?ms=5000").await.unwrap();
    assert_eq!((a.status, a.error.as_deref()), (504, Some("timeout")));

    // gRPC callers get gRPC statuses instead: no route is UNIMPLEMENTED.
    let mut client = grpc_client(&mesh).await;
    let status = client.hello(HelloRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_reports_readiness_metrics_and_config() {
    let mesh = Mesh::start(1, 1).await;
    assert_eq!(admin_get(mesh.client.admin, "/live").await.0, 200);
    assert_eq!(admin_get(mesh.client.admin, "/ready").await.0, 200);
    let (status, metrics) = admin_get(mesh.client.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("pillion_requests_total{direction=\"outbound\",authority=\"web.default.svc.cluster.local:80\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("pillion_response_latency_seconds_bucket"),
        "{metrics}"
    );
    for family in [
        "classification=\"success\"",
        "pillion_tcp_open_total{direction=\"outbound\"}",
        "pillion_tcp_read_bytes_total{direction=\"outbound\"}",
        "pillion_destination_version_info{authority=\"web.default.svc.cluster.local:80\",version=\"",
        "pillion_process_resident_memory_bytes ",
        "pillion_process_cpu_seconds_total ",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
    promtool_accepts(&metrics);
    // The control plane's own metrics: the client proxy watches `web` (the server proxies,
    // without identities, watch nothing), and was pushed its state.
    let (status, cp_metrics) = admin_get(mesh.cp.admin, "/metrics").await;
    assert_eq!(status, 200);
    for family in [
        "pillion_control_plane_proxies 1",
        "pillion_control_plane_watches{kind=\"discovery\"}",
        "pillion_control_plane_pushes_total{kind=\"discovery\"}",
        "pillion_control_plane_config_errors 0",
        "pillion_control_plane_process_resident_memory_bytes ",
    ] {
        assert!(
            cp_metrics.contains(family),
            "{family} missing:\n{cp_metrics}"
        );
    }
    promtool_accepts(&cp_metrics);
    let (_, server_metrics) = admin_get(mesh.server_proxies[0].admin, "/metrics").await;
    assert!(
        server_metrics.contains("direction=\"inbound\""),
        "{server_metrics}"
    );
    let (status, config) = admin_get(mesh.client.admin, "/config").await;
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let web = &config["destinations"]["web.default.svc.cluster.local:80"];
    assert_eq!(web["source"], "TrafficSplit default/web-canary");
    assert_eq!(web["rules"][0]["backends"][0]["weight"], 1);
}

/// Bytes that are not HTTP are forwarded as they are: here to a TCP echo server behind the
/// inbound listener (a redis-style greeting, then a payload larger than detection reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_is_forwarded_as_bytes() {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cp = start_control_plane(dir.path(), "127.0.0.1:0");
    let proxy = start_proxy("proxy-tcp", cp.addr, "default/tcp", Some(echo_addr), &[]);
    let mut s = tokio::net::TcpStream::connect(proxy.inbound).await.unwrap();
    let mut payload = b"*1\r\n$4\r\nPING\r\n".to_vec();
    payload.extend((0..100_000).map(|i| (i % 256) as u8));
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(&payload).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let recv = r.read_to_end(&mut back);
    let (_, n) = tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(send, recv) })
        .await
        .unwrap();
    n.unwrap();
    assert!(
        back == payload,
        "{} bytes came back of {}",
        back.len(),
        payload.len()
    );
}

/// `promtool check metrics` (what Prometheus' own linter says) finds nothing to report.
fn promtool_accepts(metrics: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (scripts/test.sh installs it: apt-get install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{metrics}"
    );
}

/// A server that speaks first (SMTP, MySQL): the client waits for its greeting, so detection
/// must give up after its bounded wait and forward the connection as opaque bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_speaks_first_protocols_work_after_the_detection_timeout() {
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = server.accept().await {
            tokio::spawn(async move {
                s.write_all(b"220 ready\r\n").await.unwrap();
                let mut line = [0u8; 6];
                if s.read_exact(&mut line).await.is_ok() {
                    let _ = s.write_all(b"250 ok\r\n").await;
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cp = start_control_plane(dir.path(), "127.0.0.1:0");
    let proxy = start_proxy(
        "proxy-smtp",
        cp.addr,
        "default/smtp",
        Some(server_addr),
        &[("PILLION_DETECT_TIMEOUT", "300ms".to_string())],
    );
    let mut s = tokio::net::TcpStream::connect(proxy.inbound).await.unwrap();
    let mut greeting = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut greeting))
        .await
        .expect("the greeting never came through")
        .unwrap();
    assert_eq!(&greeting, b"220 ready\r\n");
    s.write_all(b"HELO\r\n").await.unwrap();
    let mut reply = [0u8; 8];
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"250 ok\r\n");
}

/// The same mesh path on IPv6 loopback: listeners, control plane and an IPv6 EndpointSlice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_end_to_end() {
    let (app, _) = pillion::demo_app::spawn("[::1]:0".parse().unwrap(), "v6")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(
        &dir.path().join("web.yaml"),
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web6}}\nspec:\n  ports: [{{port: 80}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web6-1\n  labels: {{kubernetes.io/service-name: web6}}\n\
             addressType: IPv6\nports: [{{port: {}}}]\nendpoints: [{{addresses: [\"::1\"]}}]\n",
            app.port()
        ),
    );
    let cp = start_control_plane(dir.path(), "[::1]:0");
    assert!(cp.addr.is_ipv6());
    let v6 = "[::1]:0".to_string();
    let proxy = start_proxy(
        "proxy-v6",
        cp.addr,
        "default/client",
        None,
        &[
            ("PILLION_OUTBOUND_LISTEN", v6.clone()),
            ("PILLION_INBOUND_LISTEN", v6.clone()),
            ("PILLION_ADMIN_LISTEN", v6),
        ],
    );
    assert!(proxy.outbound.is_ipv6());
    let a = get(&http1_client(), proxy.outbound, "web6", "/")
        .await
        .unwrap();
    assert_eq!((a.status, a.version.as_str()), (200, "v6"), "{:?}", a.error);
}

/// The caller's deadline (`grpc-timeout`) is honoured by the proxy: a trailers-only
/// DEADLINE_EXCEEDED from the proxy, long before the server would answer. Sent with hyper by
/// hand because tonic enforces the deadline itself on the client side too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_is_enforced_by_the_proxy() {
    use prost::Message;
    let mesh = Mesh::start(1, 1).await;
    let io = hyper_util::rt::TokioIo::new(
        tokio::net::TcpStream::connect(mesh.client.outbound)
            .await
            .unwrap(),
    );
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<
        _,
        _,
        http_body_util::Full<Bytes>,
    >(hyper_util::rt::TokioExecutor::new(), io)
    .await
    .unwrap();
    tokio::spawn(conn);
    let msg = HelloRequest {
        name: "slow".into(),
        delay_ms: 10_000,
        ..Default::default()
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend((msg.len() as u32).to_be_bytes());
    frame.extend(msg);
    let req = http::Request::post("http://web.default/pillion.demo.v1.Echo/Hello")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .body(http_body_util::Full::new(Bytes::from(frame)))
        .unwrap();
    let started = std::time::Instant::now();
    let resp = sender.send_request(req).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(9));
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["grpc-status"],
        "4",
        "DEADLINE_EXCEEDED: {resp:?}"
    );
    assert_eq!(resp.headers()["pillion-proxy-error"], "timeout");
}

/// An endpoint nobody listens on (a pod gone before discovery knows): requests that failed to
/// connect go to another endpoint of the same backend, so none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoints_do_not_fail_requests() {
    let (app, _) = pillion::demo_app::spawn("127.0.0.1:0".parse().unwrap(), "alive")
        .await
        .unwrap();
    // Three ports nobody listens on, and the live app: without trying other endpoints, most
    // first requests would pick a dead one.
    let dead: Vec<u16> = (0..3)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut yaml =
        "apiVersion: v1\nkind: Service\nmetadata: {name: pool}\nspec:\n  ports: [{port: 80}]\n"
            .to_string();
    for (i, port) in std::iter::once(app.port()).chain(dead).enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: pool-{i}\n  labels: {{kubernetes.io/service-name: pool}}\n\
             addressType: IPv4\nports: [{{port: {port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n"
        ));
    }
    write_config(&dir.path().join("pool.yaml"), &yaml);
    let cp = start_control_plane(dir.path(), "127.0.0.1:0");
    let proxy = start_proxy("proxy-pool", cp.addr, "default/client", None, &[]);
    let client = http1_client();
    for i in 0..100 {
        let a = get(&client, proxy.outbound, "pool", "/").await.unwrap();
        assert_eq!(
            (a.status, a.version.as_str()),
            (200, "alive"),
            "request {i}: {:?}",
            a.error
        );
    }
}

/// A test application's address and what it counts.
type CountingApp = (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
);

/// An h2c-only application that allows `limit` streams per connection and answers a request
/// only once `together` requests are in it at once; counts its connections.
async fn gathering_app(limit: u32, together: usize) -> CountingApp {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(together));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let barrier = barrier.clone();
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let barrier = barrier.clone();
                    async move {
                        // The warm-up request passes alone.
                        if req.uri().path() == "/together" {
                            barrier.wait().await;
                        }
                        let resp = http::Response::builder()
                            .header("x-version", "v1")
                            .body(http_body_util::Full::new(Bytes::from_static(b"ok")))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
            tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .max_concurrent_streams(limit)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
            });
        }
    });
    (addr, connections)
}

/// A server that allows 2 streams per connection gets 6 requests in flight at once through
/// the proxy, on more connections, as a client talking to it directly would send them. (The
/// proxy kept one connection per endpoint: 4 of the 6 waited for streams that were waiting for
/// them, and every request at a server's limit waited behind the ones before it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_stream_limit_opens_more_connections_not_a_queue() {
    const TOGETHER: usize = 6;
    let (app, connections) = gathering_app(2, TOGETHER).await;
    let (other, _) = gathering_app(2, TOGETHER).await;
    let mesh = Mesh::start_with_apps(1, 0, vec![app, other], &[]).await;
    // One h2c connection to the proxy (HTTP/2 to the application too), six streams on it.
    let mut sender = h2c_connect(mesh.client.outbound).await;
    // Discovery in place, and the proxy's first connection has the server's SETTINGS.
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let (status, _) = h2c_get(&mut sender, "http://web/").await;
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no answer: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut calls = Vec::new();
    for _ in 0..TOGETHER {
        let mut sender = sender.clone();
        calls.push(tokio::spawn(async move {
            h2c_get(&mut sender, "http://web/together").await
        }));
    }
    for call in calls {
        let (status, _) = tokio::time::timeout(DEADLINE, call)
            .await
            .expect("all six in the application at once")
            .unwrap();
        assert_eq!(status, 200);
    }
    let n = connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(n >= TOGETHER / 2, "{n} connections");
}

/// A server that takes no stream at all for now (SETTINGS_MAX_CONCURRENT_STREAMS 0) is not sent
/// a new connection for every waiting request: they wait on the one there is (and time out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_taking_no_streams_is_not_flooded_with_connections() {
    let (app, connections) = gathering_app(0, 1).await;
    let (other, _) = gathering_app(0, 1).await;
    let mesh = Mesh::start_with_apps(
        1,
        0,
        vec![app, other],
        &[("PILLION_REQUEST_TIMEOUT", "1s".into())],
    )
    .await;
    let mut sender = h2c_connect(mesh.client.outbound).await;
    // Discovery first (503 "not in mesh" until then); then every request waits and times out.
    let deadline = std::time::Instant::now() + DEADLINE;
    while h2c_get(&mut sender, "http://web/").await.0 != 504 {
        assert!(
            std::time::Instant::now() < deadline,
            "never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut sender = sender.clone();
        calls.push(tokio::spawn(async move {
            h2c_get(&mut sender, "http://web/").await
        }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap().0, 504);
    }
    let n = connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(n <= 2, "{n} connections");
}

/// Real nginx (Debian's, which `scripts/test.sh` installs) as an h2c application that closes
/// each connection after `requests` requests (`keepalive_requests`: a GOAWAY naming the last
/// stream it takes; the streams sent above that one are never processed). On a port picked
/// free just before: nginx cannot bind port 0.
struct Nginx {
    addr: std::net::SocketAddr,
    _proc: Process,
    _dir: tempfile::TempDir,
}

fn start_nginx(requests: u32) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = dir.path().display();
    let config = dir.path().join("nginx.conf");
    std::fs::write(
        &config,
        format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log stderr warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             server {{\n    listen 127.0.0.1:{port} http2;\n    keepalive_requests {requests};\n\
             location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let proc = Process::spawn(
        "nginx",
        std::path::Path::new("nginx"),
        &["-c", &config, "-p", &d.to_string(), "-e", "stderr"],
        &[],
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nginx did not listen: {}",
            proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Nginx {
        addr,
        _proc: proc,
        _dir: dir,
    }
}

/// A server that closes its connections every few requests (nginx's `keepalive_requests`, a
/// server shutting down gracefully) leaves the requests it never processed to be sent again:
/// none of them is answered 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_a_closing_server_never_processed_are_sent_again() {
    let nginx = start_nginx(7);
    let mesh = Mesh::start_with_apps(1, 0, vec![nginx.addr, nginx.addr], &[]).await;
    let mut sender = h2c_connect(mesh.client.outbound).await;
    let deadline = std::time::Instant::now() + DEADLINE;
    while h2c_get(&mut sender, "http://web/").await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never reached nginx");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Twenty at once, ten times, half of them with a body: each connection closes after 7,
    // with others in flight on it.
    let outbound = mesh.client.outbound;
    for _ in 0..10 {
        let calls: Vec<_> = (0..20)
            .map(|i| {
                let mut sender = sender.clone();
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        h2c_get(&mut sender, &format!("http://web/{i}")).await.0
                    } else {
                        let body = Bytes::from(vec![b'x'; 1000]);
                        h2_post(outbound, body, async {}, Bytes::from_static(b"end"))
                            .await
                            .0
                    }
                })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap(), 200);
        }
    }
}

/// An application that refuses (RST_STREAM REFUSED_STREAM) the first `refuse` requests other
/// than `/ready`, counting them, after reading their bodies if `read_first`; later ones get
/// their body echoed.
async fn refusing_app(refuse: usize, read_first: bool) -> CountingApp {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let streams = Arc::new(AtomicUsize::new(0));
    let counted = streams.clone();
    let addr = h2_app(move |req, mut respond| {
        let ready = req.uri().path() == "/ready";
        let refused = !ready && counted.fetch_add(1, Ordering::SeqCst) < refuse;
        async move {
            if refused && !read_first {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
                return;
            }
            let body = h2_read(req.into_body()).await;
            if refused {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
                return;
            }
            let mut send = respond
                .send_response(http::Response::new(()), body.is_empty())
                .unwrap();
            if !body.is_empty() {
                let _ = send.send_data(body.into(), true);
            }
        }
    })
    .await;
    (addr, streams)
}

/// An h2c application on loopback: `handle` gets each request with its responder, and runs on
/// a task of its own.
async fn h2_app<F, Fut>(handle: F) -> std::net::SocketAddr
where
    F: Fn(http::Request<h2::RecvStream>, h2::server::SendResponse<Bytes>) -> Fut
        + Clone
        + Send
        + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handle = handle.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((req, respond))) = conn.accept().await {
                    tokio::spawn(handle(req, respond));
                }
            });
        }
    });
    addr
}

/// All of an `h2` body, its flow-control window given back as it is read.
async fn h2_read(mut body: h2::RecvStream) -> Vec<u8> {
    let mut all = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        all.extend_from_slice(&chunk);
    }
    all
}

/// A mesh in front of `app`, once the client proxy routes to it (`/ready` answered).
async fn mesh_before(app: std::net::SocketAddr) -> Mesh {
    let mesh = Mesh::start_with_apps(1, 0, vec![app, app], &[]).await;
    let mut sender = h2c_connect(mesh.client.outbound).await;
    let deadline = std::time::Instant::now() + DEADLINE;
    while h2c_get(&mut sender, "http://web/ready").await.0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    mesh
}

/// A server that refuses a request every time gets it a few times, not endlessly, and the
/// client gets a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_every_time_is_sent_five_times_then_fails() {
    let (app, streams) = refusing_app(usize::MAX, false).await;
    let mesh = mesh_before(app).await;
    let mut sender = h2c_connect(mesh.client.outbound).await;
    assert_eq!(h2c_get(&mut sender, "http://web/").await.0, 502);
    assert_eq!(streams.load(std::sync::atomic::Ordering::SeqCst), 5);
    // Each send after the first is counted for the operator, by the proxy beside the server.
    let metrics = admin_get(mesh.server_proxies[0].admin, "/metrics").await.1;
    assert_eq!(
        metric_sum(&metrics, "pillion_requests_resent_total", ""),
        4.0
    );
}

/// A POST on an `h2` client connection to `addr`: its head and `first` now, then `rest` (the
/// end of the body) once `more` returns; the response's status and body.
async fn h2_post(
    addr: std::net::SocketAddr,
    first: Bytes,
    more: impl std::future::Future<Output = ()>,
    rest: Bytes,
) -> (u16, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::post("http://web/echo").body(()).unwrap();
    let (response, mut body) = client.send_request(req, false).unwrap();
    body.send_data(first, false).unwrap();
    more.await;
    body.send_data(rest, true).unwrap();
    let resp = response.await.unwrap();
    let status = resp.status().as_u16();
    (status, h2_read(resp.into_body()).await)
}

/// A refused request with a body goes out again whole: what the proxy had read of the body,
/// then the rest as the client sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_with_a_body_is_sent_again_whole() {
    use std::sync::atomic::Ordering;
    let (app, streams) = refusing_app(2, false).await;
    let mesh = mesh_before(app).await;
    let seen = streams.clone();
    // The rest of the body only once the server has refused twice and taken the third send.
    let third = async move {
        let deadline = std::time::Instant::now() + DEADLINE;
        while seen.load(Ordering::SeqCst) < 3 {
            assert!(std::time::Instant::now() < deadline, "not sent again");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let (status, body) = h2_post(
        mesh.client.outbound,
        Bytes::from_static(b"first part, "),
        third,
        Bytes::from_static(b"second part"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, b"first part, second part");
    assert_eq!(streams.load(Ordering::SeqCst), 3);
}

/// A body that arrived whole with its headers (a unary gRPC call's, a small POST's) is sent
/// again whole too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_whose_body_came_whole_is_sent_again() {
    let (app, streams) = refusing_app(2, false).await;
    let mesh = mesh_before(app).await;
    let (status, body) = h2_post(
        mesh.client.outbound,
        Bytes::from_static(b"all of it"),
        async {},
        Bytes::new(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, b"all of it");
    assert_eq!(streams.load(std::sync::atomic::Ordering::SeqCst), 3);
}

/// A body of hundreds of KiB (an upload, a large gRPC message), refused after the server read
/// all of it, goes out again whole: the proxy keeps up to 1 MiB of a body until the response
/// starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_with_a_large_body_is_sent_again_whole() {
    let (app, streams) = refusing_app(1, true).await;
    let mesh = mesh_before(app).await;
    let first = Bytes::from(vec![b'a'; 300 * 1024]);
    let (status, body) = h2_post(
        mesh.client.outbound,
        first.clone(),
        async {},
        Bytes::from_static(b"end"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), first.len() + 3);
    assert!(body.ends_with(b"aend"));
    assert_eq!(streams.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// A body longer than the proxy keeps, refused after the server read it all, is not sent
/// again (it could not be whole): the client gets a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_with_a_body_too_long_to_keep_is_not_sent_again() {
    let (app, streams) = refusing_app(1, true).await;
    let mesh = mesh_before(app).await;
    let (status, _) = h2_post(
        mesh.client.outbound,
        Bytes::from(vec![b'a'; 1100 * 1024]),
        async {},
        Bytes::from_static(b"end"),
    )
    .await;
    assert_eq!(status, 502);
    assert_eq!(streams.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// An h2c application that answers `/ready` and reads every other request's body to the end,
/// counting the bytes, but never answers it.
async fn silent_app() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let read = Arc::new(AtomicUsize::new(0));
    let counted = read.clone();
    let addr = h2_app(move |req, mut respond| {
        let counted = counted.clone();
        async move {
            if req.uri().path() == "/ready" {
                let _ = respond.send_response(http::Response::new(()), true);
                return;
            }
            let body = h2_read(req.into_body()).await;
            counted.fetch_add(body.len(), Ordering::SeqCst);
            // Held, never answered.
            std::future::pending::<()>().await;
            drop(respond);
        }
    })
    .await;
    (addr, read)
}

/// What a proxy keeps of bodies for sending them again is bounded per proxy (16 MiB), not per
/// request: 48 uploads of 1 MiB whose answers never start would otherwise hold 48 MiB in each
/// proxy on the way (`pillion_request_body_kept_bytes` says what is kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_kept_for_resending_are_bounded_per_proxy() {
    use std::sync::atomic::Ordering;
    let (app, read) = silent_app().await;
    let mesh = mesh_before(app).await;
    const UPLOADS: usize = 48;
    const SIZE: usize = 1 << 20;
    let tcp = tokio::net::TcpStream::connect(mesh.client.outbound)
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut pending = Vec::new();
    for _ in 0..UPLOADS {
        let mut client = client.clone().ready().await.unwrap();
        let req = http::Request::post("http://web/upload").body(()).unwrap();
        let (response, mut body) = client.send_request(req, false).unwrap();
        // Sent as flow control allows (the h2 crate queues it).
        body.send_data(Bytes::from(vec![b'u'; SIZE]), true).unwrap();
        pending.push((response, body));
    }
    let deadline = std::time::Instant::now() + DEADLINE;
    while read.load(Ordering::SeqCst) < UPLOADS * SIZE {
        assert!(
            std::time::Instant::now() < deadline,
            "the application read {} of {} bytes",
            read.load(Ordering::SeqCst),
            UPLOADS * SIZE
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every body went through both proxies and no answer started: each proxy keeps what its
    // budget holds, and no more.
    for admin in [mesh.client.admin, mesh.server_proxies[0].admin] {
        let metrics = admin_get(admin, "/metrics").await.1;
        let kept = metric_sum(&metrics, "pillion_request_body_kept_bytes", "");
        assert!(
            kept > (12 << 20) as f64 && kept <= (16 << 20) as f64,
            "{kept} bytes kept"
        );
    }
    drop(pending);
}
