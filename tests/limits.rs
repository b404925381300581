//! What a caller cycling through made-up names cannot do: grow the proxy's watches, the control
//! plane's streams or `/metrics` without bound, or starve the mesh's real destinations.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_hosts_open_no_watches_and_share_one_metric_series() {
    let mesh = Mesh::start_with(1, 1, &[("PILLION_MAX_DESTINATIONS", "2".to_string())]).await;
    let client = http1_client();
    for i in 0..300 {
        let a = get(&client, mesh.client.outbound, &format!("made-up-{i}"), "/")
            .await
            .unwrap();
        assert_eq!(a.status, 503, "{:?}", a.error);
        assert_eq!(a.error.as_deref(), Some("not in mesh"));
    }
    // A name too long to be a Service is not even asked about.
    let long = format!("{}.example", "x".repeat(400));
    let a = get(&client, mesh.client.outbound, &long, "/")
        .await
        .unwrap();
    assert_eq!(a.status, 503);
    // Three real Services with room for two watches: the least recently used is forgotten and
    // asked for again when needed; every request is answered.
    for round in 0..3 {
        for host in ["web", "web-v1", "web-v2"] {
            let a = get(&client, mesh.client.outbound, host, "/").await.unwrap();
            assert_eq!(a.status, 200, "{host} round {round}: {:?}", a.error);
        }
    }
    let (_, text) = admin_get(mesh.client.admin, "/metrics").await;
    let watched = metric_sum(&text, "pillion_destinations ", "");
    assert!(watched <= 2.0, "{watched} destinations watched");
    assert!(
        !text.contains("made-up-"),
        "unknown hosts became label values"
    );
    let unknown = metric_sum(
        &text,
        "pillion_requests_total{direction=\"outbound\",authority=\"unknown\"",
        "",
    );
    assert_eq!(unknown, 301.0);
    assert!(text.contains("authority=\"web.default.svc.cluster.local:80\""));
}

/// A keep-alive connection with no request for `PILLION_IDLE_TIMEOUT` is closed by the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mesh = Mesh::start_with(1, 1, &[("PILLION_IDLE_TIMEOUT", "1s".to_string())]).await;
    let mut s = tokio::net::TcpStream::connect(mesh.client.outbound)
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // Nothing more is sent: the proxy closes the connection (read returns 0), well within
    // the deadline.
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle connection stayed open");
}

/// With `PILLION_MAX_CONNECTIONS=2`, a third connection is accepted only once one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_holds_at_most_its_connection_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mesh = Mesh::start_with(1, 1, &[("PILLION_MAX_CONNECTIONS", "2".to_string())]).await;
    async fn request(s: &mut tokio::net::TcpStream) -> Vec<u8> {
        s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let n = s.read(&mut buf).await.unwrap();
        buf.truncate(n);
        buf
    }
    // (The connections the mesh's readiness checks used are closed; until the proxy has seen
    // that, the two below wait their turn, which is the behaviour under test too.)
    let mut first = tokio::net::TcpStream::connect(mesh.client.outbound)
        .await
        .unwrap();
    let mut second = tokio::net::TcpStream::connect(mesh.client.outbound)
        .await
        .unwrap();
    assert!(request(&mut first).await.starts_with(b"HTTP/1.1 200"));
    assert!(request(&mut second).await.starts_with(b"HTTP/1.1 200"));
    let mut third = tokio::net::TcpStream::connect(mesh.client.outbound)
        .await
        .unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let early =
        tokio::time::timeout(std::time::Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a third connection was served while two were open"
    );
    drop(first);
    let n = tokio::time::timeout(DEADLINE, third.read(&mut buf))
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}

/// A request whose headers outgrow `PILLION_MAX_HEADER_BYTES` is answered 431 over HTTP/1.1
/// and HTTP/2, and the connection's other requests are unaffected; a request under it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431_over_both_protocols() {
    let mesh = Mesh::start_with(1, 1, &[("PILLION_MAX_HEADER_BYTES", "16384".to_string())]).await;
    let big = "x".repeat(20_000);
    let small = "x".repeat(4_000);
    let client = http1_client();
    for (value, want) in [(&small, 200), (&big, 431), (&small, 200)] {
        let a = request(
            &client,
            mesh.client.outbound,
            http::Request::get("/").header("x-big", value.as_str()),
            "web",
            "/",
            Default::default(),
        )
        .await
        .unwrap();
        assert_eq!(a.status, want, "HTTP/1.1: {:?}", a.error);
    }
    // HTTP/2 on one connection: the refusal ends only its stream.
    let tcp = tokio::net::TcpStream::connect(mesh.client.outbound)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for (value, want) in [(&small, 200), (&big, 431), (&small, 200)] {
        let req = http::Request::get("http://web/")
            .header("x-big", value.as_str())
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), want, "HTTP/2");
    }
}

/// An HTTP/1.1 client that sends part of its headers and stalls is disconnected after
/// `PILLION_HEADER_READ_TIMEOUT`, holding nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_in_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mesh = Mesh::start_with(1, 1, &[("PILLION_HEADER_READ_TIMEOUT", "1s".to_string())]).await;
    let mut tcp = tokio::net::TcpStream::connect(mesh.client.outbound)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nx-slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // The proxy ends the connection (with or without a 408); reading returns at its end.
    let read = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the stalled connection was never closed");
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(900),
        "closed after {waited:?}, before the timeout"
    );
    // Far sooner than the 30 s default: the setting took effect.
    assert!(
        waited < std::time::Duration::from_secs(15),
        "closed only after {waited:?}"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

/// With every endpoint of a backend at `PILLION_MAX_REQUESTS_PER_ENDPOINT`, the next request
/// fails at once with 503 instead of queueing behind them; once they finish, requests pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_at_its_request_limit_sheds_load_at_once() {
    let mesh = Mesh::start_with(
        1,
        1,
        &[("PILLION_MAX_REQUESTS_PER_ENDPOINT", "2".to_string())],
    )
    .await;
    let client = http1_client();
    let before = pillion::demo_app::slow_in_flight();
    let mut slow = Vec::new();
    for _ in 0..2 {
        let (client, proxy) = (client.clone(), mesh.client.outbound);
        slow.push(tokio::spawn(async move {
            get(&client, proxy, "web-v1", "/slow?ms=4000").await
        }));
    }
    let deadline = std::time::Instant::now() + DEADLINE;
    while pillion::demo_app::slow_in_flight() < before + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "slow requests never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let started = std::time::Instant::now();
    let a = get(&client, mesh.client.outbound, "web-v1", "/")
        .await
        .unwrap();
    assert_eq!(a.status, 503);
    assert_eq!(a.error.as_deref(), Some("endpoints at their request limit"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "shed only after {:?}",
        started.elapsed()
    );
    for s in slow {
        assert_eq!(s.await.unwrap().unwrap().status, 200);
    }
    let a = get(&client, mesh.client.outbound, "web-v1", "/")
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.error);
}
