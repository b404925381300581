//! Our HTTP/2 server against real clients on loopback: the h2 crate's client, curl and h2load.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use pillion_http2::server::{self, RecvBody};
use pillion_http2::{Config, StreamError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(60);

type Reply =
    Either<RecvBody, Either<Full<Bytes>, http_body_util::combinators::BoxBody<Bytes, StreamError>>>;

/// What the test server does, by path: /echo streams the request body back (with its
/// trailers), /hello answers "hello", /hang never answers (and counts its drops), /headers
/// answers with the request's headers as text.
async fn handler(req: Request<RecvBody>, dropped: Arc<AtomicUsize>) -> Response<Reply> {
    match req.uri().path() {
        "/echo" => Response::new(Either::Left(req.into_body())),
        "/hang" => {
            struct Guard(Arc<AtomicUsize>);
            impl Drop for Guard {
                fn drop(&mut self) {
                    self.0.fetch_add(1, Ordering::SeqCst);
                }
            }
            let _guard = Guard(dropped);
            std::future::pending::<()>().await;
            unreachable!()
        }
        "/headers" => {
            let text: String = req
                .headers()
                .iter()
                .map(|(n, v)| format!("{n}: {}\n", v.to_str().unwrap_or("?")))
                .collect();
            Response::new(Either::Right(Either::Left(Full::new(Bytes::from(text)))))
        }
        "/trailers" => {
            // Reads the whole request, answers with its size and a trailer.
            let collected = req.into_body().collect().await.unwrap();
            let got = collected.trailers().cloned().unwrap_or_default();
            let len = collected.to_bytes().len();
            let mut trailers = HeaderMap::new();
            trailers.insert("x-len", HeaderValue::from(len));
            if let Some(v) = got.get("x-client-trailer") {
                trailers.insert("x-echoed", v.clone());
            }
            let body = Full::new(Bytes::from_static(b"done"))
                .map_err(|never| match never {})
                .with_trailers(async move { Some(Ok(trailers)) })
                .boxed();
            Response::new(Either::Right(Either::Right(body)))
        }
        _ => {
            let mut resp = Response::new(Either::Right(Either::Left(Full::new(
                Bytes::from_static(b"hello"),
            ))));
            resp.headers_mut()
                .insert("x-server", HeaderValue::from_static("pillion"));
            resp
        }
    }
}

struct TestServer {
    addr: SocketAddr,
    dropped: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<Vec<Result<(), pillion_http2::ConnError>>>,
}

async fn start(config: Config) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dropped = Arc::new(AtomicUsize::new(0));
    let (stop, stopped) = watch::channel(false);
    let d = dropped.clone();
    let done = tokio::spawn(async move {
        let mut conns = Vec::new();
        loop {
            let mut s = stopped.clone();
            tokio::select! {
                accepted = listener.accept() => {
                    let (io, _) = accepted.unwrap();
                    io.set_nodelay(true).unwrap();
                    let d = d.clone();
                    let mut s2 = stopped.clone();
                    conns.push(tokio::spawn(server::serve(
                        io,
                        config,
                        Some(Duration::from_secs(10)),
                        move |req| handler(req, d.clone()),
                        async move { let _ = s2.wait_for(|v| *v).await; },
                    )));
                }
                _ = s.wait_for(|v| *v) => break,
            }
        }
        let mut results = Vec::new();
        for c in conns {
            results.push(c.await.unwrap());
        }
        results
    });
    TestServer {
        addr,
        dropped,
        stop,
        done,
    }
}

fn get(server: &TestServer, path: &str) -> Request<()> {
    Request::get(format!("http://{}{path}", server.addr))
        .body(())
        .unwrap()
}

async fn client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let io = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(conn);
    send
}

async fn read_all(
    resp: Response<h2::RecvStream>,
) -> (StatusCode, HeaderMap, Bytes, Option<HeaderMap>) {
    let (parts, mut body) = resp.into_parts();
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap();
    (parts.status, parts.headers, data.freeze(), trailers)
}

#[tokio::test]
async fn answers_requests_from_the_h2_client() {
    let server = start(Config::default()).await;
    let mut send = client(server.addr).await;
    for _ in 0..3 {
        let req = get(&server, "/");
        let (resp, _) = send.send_request(req, true).unwrap();
        let (status, headers, body, _) =
            read_all(tokio::time::timeout(DEADLINE, resp).await.unwrap().unwrap()).await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-server"], "pillion");
        assert_eq!(body, "hello");
        send = send.ready().await.unwrap();
    }
    // The request's headers arrive as sent.
    let req = Request::get(format!("http://{}/headers", server.addr))
        .header("x-custom", "one")
        .header("user-agent", "test/1")
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let (_, _, body, _) = read_all(resp.await.unwrap()).await;
    let text = std::str::from_utf8(&body).unwrap();
    assert!(
        text.contains("x-custom: one\n") && text.contains("user-agent: test/1\n"),
        "{text}"
    );
}

#[tokio::test]
async fn streams_large_bodies_both_ways_within_flow_control() {
    let server = start(Config::default()).await;
    let mut send = client(server.addr).await;
    // 12 MiB: more than the stream window (2 MiB), the connection window (8 MiB) and the
    // client's own 64 KiB windows for the echo coming back.
    let payload: Bytes = (0..12 * 1024 * 1024u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let req = Request::post(format!("http://{}/echo", server.addr))
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    let upload = {
        let payload = payload.clone();
        tokio::spawn(async move {
            let mut rest = payload;
            while !rest.is_empty() {
                body.reserve_capacity(rest.len().min(1 << 20));
                let n = std::future::poll_fn(|cx| body.poll_capacity(cx))
                    .await
                    .unwrap()
                    .unwrap();
                let piece = rest.split_to(n.min(rest.len()));
                body.send_data(piece, rest.is_empty()).unwrap();
            }
        })
    };
    let resp = tokio::time::timeout(DEADLINE, resp).await.unwrap().unwrap();
    let (status, _, echoed, _) = tokio::time::timeout(DEADLINE, read_all(resp))
        .await
        .unwrap();
    upload.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload);
}

/// An upload the handler reads whole before answering: only the window updates its reading
/// gives back keep it going (nothing else wakes the connection meanwhile).
#[tokio::test]
async fn a_large_upload_read_before_the_answer_is_not_stalled() {
    let server = start(Config::default()).await;
    let mut send = client(server.addr).await;
    let req = Request::post(format!("http://{}/trailers", server.addr))
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    let upload = tokio::spawn(async move {
        let mut rest = 12usize << 20;
        while rest > 0 {
            body.reserve_capacity(rest.min(1 << 20));
            let n = std::future::poll_fn(|cx| body.poll_capacity(cx))
                .await
                .unwrap()
                .unwrap();
            let n = n.min(rest);
            rest -= n;
            body.send_data(Bytes::from(vec![b'u'; n]), rest == 0)
                .unwrap();
        }
    });
    let resp = tokio::time::timeout(Duration::from_secs(20), resp)
        .await
        .expect("answered: the upload was not stalled")
        .unwrap();
    let (status, _, _, trailers) = read_all(resp).await;
    upload.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(trailers.unwrap()["x-len"], (12usize << 20).to_string());
}

#[tokio::test]
async fn trailers_both_ways() {
    let server = start(Config::default()).await;
    let mut send = client(server.addr).await;
    let req = Request::post(format!("http://{}/trailers", server.addr))
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    body.send_data(Bytes::from_static(b"12345"), false).unwrap();
    let mut t = HeaderMap::new();
    t.insert("x-client-trailer", HeaderValue::from_static("yes"));
    body.send_trailers(t).unwrap();
    let (status, _, data, trailers) =
        read_all(tokio::time::timeout(DEADLINE, resp).await.unwrap().unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(data, "done");
    let trailers = trailers.unwrap();
    assert_eq!(trailers["x-len"], "5");
    assert_eq!(trailers["x-echoed"], "yes");
}

#[tokio::test]
async fn many_concurrent_streams_and_a_limit_on_them() {
    let server = start(Config {
        max_concurrent_streams: 50,
        ..Config::default()
    })
    .await;
    let mut send = client(server.addr).await;
    // One request first: the client has the server's SETTINGS (its limit) before the rush.
    let req = get(&server, "/");
    let (resp, _) = send.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    let mut calls = Vec::new();
    for i in 0..200 {
        let mut send = send.clone();
        let addr = server.addr;
        calls.push(tokio::spawn(async move {
            send = send.ready().await.unwrap();
            let req = Request::post(format!("http://{addr}/echo"))
                .body(())
                .unwrap();
            let (resp, mut body) = send.send_request(req, false).unwrap();
            body.send_data(Bytes::from(format!("request {i}")), true)
                .unwrap();
            let (_, _, data, _) = read_all(resp.await.unwrap()).await;
            assert_eq!(data, format!("request {i}"));
        }));
    }
    for c in calls {
        tokio::time::timeout(DEADLINE, c).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_client_reset_drops_the_handler() {
    let server = start(Config::default()).await;
    let mut send = client(server.addr).await;
    for _ in 0..5 {
        let req = get(&server, "/hang");
        let (resp, _) = send.send_request(req, true).unwrap();
        // Give the server the request, then walk away (h2 sends RST_STREAM(CANCEL)).
        tokio::time::timeout(Duration::from_millis(50), resp)
            .await
            .unwrap_err();
        send = send.ready().await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while server.dropped.load(Ordering::SeqCst) < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "handlers not dropped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The connection still serves.
    let req = get(&server, "/");
    let (resp, _) = send.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
}

#[tokio::test]
async fn oversized_headers_are_answered_431_and_the_connection_lives() {
    let server = start(Config {
        max_header_list_size: 8 << 10,
        ..Config::default()
    })
    .await;
    let mut send = client(server.addr).await;
    let big = "x".repeat(10 << 10);
    for (value, want) in [("small", 200), (big.as_str(), 431), ("small", 200)] {
        let req = Request::get(format!("http://{}/", server.addr))
            .header("x-big", value)
            .body(())
            .unwrap();
        send = send.ready().await.unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        assert_eq!(
            tokio::time::timeout(DEADLINE, resp)
                .await
                .unwrap()
                .unwrap()
                .status(),
            want
        );
    }
}

#[tokio::test]
async fn graceful_shutdown_finishes_what_is_open() {
    let server = start(Config::default()).await;
    let mut send = client(server.addr).await;
    let req = Request::post(format!("http://{}/echo", server.addr))
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    body.send_data(Bytes::from_static(b"part one, "), false)
        .unwrap();
    // Wait until the server has the request (its echo starts), then shut down.
    let mut resp = tokio::time::timeout(DEADLINE, resp).await.unwrap().unwrap();
    server.stop.send(true).unwrap();
    body.send_data(Bytes::from_static(b"part two"), true)
        .unwrap();
    let mut got = BytesMut::new();
    while let Some(chunk) = resp.body_mut().data().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got, "part one, part two");
    let results = tokio::time::timeout(DEADLINE, server.done)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(results, [Ok(())]);
    // No new requests after the GOAWAY.
    drop(send);
}

#[tokio::test]
async fn curl_and_h2load_get_answers() {
    let server = start(Config::default()).await;
    let url = format!("http://{}/", server.addr);
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "-D", "-", &url])
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(text.ends_with("hello"), "{text}");
    // A POST that waits for 100 Continue (curl asks for it with -H Expect): the interim
    // response goes out when the handler first reads the body.
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            "payload",
            "-D",
            "-",
        ])
        .arg(format!("{url}trailers"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/2 100"), "{text}");
    assert!(
        text.contains("HTTP/2 200") && text.contains("donex-len: 7"),
        "{text}"
    );
    let out = tokio::process::Command::new("h2load")
        .args(["-n", "20000", "-c", "10", "-m", "10", &url])
        .output()
        .await
        .expect("h2load runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("20000 succeeded, 0 failed"), "{text}");
}

/// A client that opens its windows wide and then reads nothing (a slow or hostile reader)
/// costs the server a bounded buffer, not the whole answer: the body is pulled only as far as
/// the connection's write buffer and the stream's send buffer allow (everything the windows
/// allowed went into the write buffer: the 64 MiB answer here, whole). And once it has missed
/// a keep-alive PING the connection ends (it waited for its unwritable frames for ever).
#[tokio::test(start_paused = true)]
async fn a_client_that_reads_nothing_is_not_buffered_for() {
    use pillion_http2::frame::{self, Settings, StreamId};
    use pillion_http2::hpack::{Encoder, Field, Pseudo};
    use tokio::io::AsyncWriteExt;

    let pulled = Arc::new(AtomicUsize::new(0));
    let counted = pulled.clone();
    // 64 MiB, a chunk at a time, counting what the server took.
    let handler = move |_req: Request<RecvBody>| {
        let counted = counted.clone();
        async move {
            let chunks = (0..4096).map(move |_| {
                counted.fetch_add(16 << 10, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(vec![
                    0u8;
                    16 << 10
                ])))
            });
            Response::new(http_body_util::StreamBody::new(futures_util::stream::iter(
                chunks,
            )))
        }
    };
    let (mut peer, ours) = tokio::io::duplex(64 << 10);
    let serving = tokio::spawn(server::serve(
        ours,
        Config::default(),
        Some(Duration::from_secs(10)),
        handler,
        std::future::pending(),
    ));
    let mut out = BytesMut::new();
    out.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    frame::write_settings(
        &mut out,
        &Settings {
            initial_window_size: Some(i32::MAX as u32),
            ..Settings::default()
        },
    );
    frame::write_window_update(&mut out, StreamId(0), i32::MAX as u32 - 65_535);
    let mut block = BytesMut::new();
    Encoder::new().encode(
        [
            Field::Pseudo(Pseudo::Method, b"GET"),
            Field::Pseudo(Pseudo::Scheme, b"http"),
            Field::Pseudo(Pseudo::Path, b"/"),
            Field::Pseudo(Pseudo::Authority, b"a"),
        ],
        &mut block,
    );
    frame::write_headers(
        &mut out,
        StreamId(1),
        &block,
        true,
        frame::DEFAULT_MAX_FRAME_SIZE,
    );
    peer.write_all(&out).await.unwrap();
    // The clock moves only once every task waits: the server is stuck on the unread pipe.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let taken = pulled.load(Ordering::SeqCst);
    assert!(
        taken <= 2 << 20,
        "the server took {taken} bytes of the answer for a client that reads nothing"
    );
    // Its PINGs unanswered, the server gives the connection up, though what it has to write
    // can never go (it waited for that for ever).
    let ended = tokio::time::timeout(Duration::from_secs(60), serving).await;
    assert!(
        ended.is_ok(),
        "the connection to a peer that reads nothing never ended"
    );
    drop(peer);
}
