//! Our HTTP/2 client against the h2 crate's server, and against our own server, on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use pillion_http2::client::{self, SendRequest};
use pillion_http2::{Config, StreamError};
use tokio::net::{TcpListener, TcpStream};

const DEADLINE: Duration = Duration::from_secs(60);

/// An h2 server: /echo streams the request body back with a trailer; /hang waits for the
/// client to reset and reports it; /continue sends 100 first; /goaway closes the connection
/// gracefully after the first request; anything else answers "hello".
async fn h2_server(
    max_streams: u32,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<h2::Reason>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (resets, reset_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (io, _) = listener.accept().await.unwrap();
            let resets = resets.clone();
            tokio::spawn(async move {
                let mut conn = h2::server::Builder::new()
                    .max_concurrent_streams(max_streams)
                    .handshake::<_, Bytes>(io)
                    .await
                    .unwrap();
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let resets = resets.clone();
                    let path = req.uri().path().to_string();
                    if path == "/goaway" {
                        conn.graceful_shutdown();
                    }
                    tokio::spawn(async move {
                        match path.as_str() {
                            "/echo" => {
                                let mut body = req.into_body();
                                let mut send =
                                    respond.send_response(Response::new(()), false).unwrap();
                                while let Some(chunk) = body.data().await {
                                    let chunk = chunk.unwrap();
                                    body.flow_control().release_capacity(chunk.len()).unwrap();
                                    let mut rest = chunk;
                                    while !rest.is_empty() {
                                        send.reserve_capacity(rest.len());
                                        let n = std::future::poll_fn(|cx| send.poll_capacity(cx))
                                            .await
                                            .unwrap()
                                            .unwrap();
                                        send.send_data(rest.split_to(n.min(rest.len())), false)
                                            .unwrap();
                                    }
                                }
                                let mut t = HeaderMap::new();
                                t.insert("x-done", HeaderValue::from_static("yes"));
                                send.send_trailers(t).unwrap();
                            }
                            "/hang" => {
                                let reason = std::future::poll_fn(|cx| respond.poll_reset(cx))
                                    .await
                                    .unwrap();
                                let _ = resets.send(reason);
                            }
                            "/early" => {
                                // Answers without reading the request body; dropping it
                                // makes h2 reset the stream with NO_ERROR (RFC 9113 §8.1).
                                drop(req);
                                let mut send =
                                    respond.send_response(Response::new(()), false).unwrap();
                                send.send_data(Bytes::from_static(b"early answer"), true)
                                    .unwrap();
                            }
                            "/trailers-only" => {
                                let mut resp = Response::new(());
                                resp.headers_mut()
                                    .insert("grpc-status", HeaderValue::from_static("5"));
                                respond.send_response(resp, true).unwrap();
                            }
                            "/continue" => {
                                let mut interim = Response::new(());
                                *interim.status_mut() = StatusCode::CONTINUE;
                                respond.send_informational(interim).unwrap();
                                let mut send =
                                    respond.send_response(Response::new(()), false).unwrap();
                                send.send_data(Bytes::from_static(b"after 100"), true)
                                    .unwrap();
                            }
                            _ => {
                                let mut resp = Response::new(());
                                resp.headers_mut()
                                    .insert("content-length", HeaderValue::from_static("5"));
                                let head = req.method() == Method::HEAD;
                                let mut send = respond.send_response(resp, head).unwrap();
                                if !head {
                                    send.send_data(Bytes::from_static(b"hello"), true).unwrap();
                                }
                            }
                        }
                    });
                }
            });
        }
    });
    (addr, reset_rx)
}

async fn connect(
    addr: SocketAddr,
) -> (
    SendRequest,
    tokio::task::JoinHandle<Result<(), pillion_http2::ConnError>>,
) {
    let io = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = client::handshake(io, Config::default(), Some(Duration::from_secs(10)));
    (send, tokio::spawn(conn))
}

fn get(addr: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap()
}

async fn read(resp: Response<client::RecvBody>) -> (StatusCode, Bytes, Option<HeaderMap>) {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (parts.status, collected.to_bytes(), trailers)
}

#[tokio::test]
async fn requests_to_the_h2_server() {
    let (addr, _) = h2_server(100).await;
    let (mut send, _conn) = connect(addr).await;
    for _ in 0..3 {
        send.ready().await.unwrap();
        let resp = send.send_request(get(addr, "/")).unwrap();
        let (status, body, _) =
            read(tokio::time::timeout(DEADLINE, resp).await.unwrap().unwrap()).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
    }
    // A HEAD: content-length 5, no body.
    let req = Request::head(format!("http://{addr}/"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).unwrap();
    let (status, body, _) = read(resp.await.unwrap()).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    // A response that is only a head (gRPC's trailers-only form) says at once that its body
    // is over: a proxy passes it on as one HEADERS with END_STREAM.
    let resp = send.send_request(get(addr, "/trailers-only")).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.headers()["grpc-status"], "5");
    assert!(http_body::Body::is_end_stream(resp.body()));
    // An interim 100 before the response is skipped.
    let resp = send.send_request(get(addr, "/continue")).unwrap();
    let (status, body, _) = read(resp.await.unwrap()).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"after 100"[..]));
}

#[tokio::test]
async fn a_large_body_both_ways_through_flow_control() {
    let (addr, _) = h2_server(100).await;
    let (mut send, _conn) = connect(addr).await;
    let payload: Bytes = (0..12 * 1024 * 1024u32)
        .map(|i| (i % 253) as u8)
        .collect::<Vec<_>>()
        .into();
    let req = Request::post(format!("http://{addr}/echo"))
        .body(Full::new(payload.clone()))
        .unwrap();
    let resp = send.send_request(req).unwrap();
    let resp = tokio::time::timeout(DEADLINE, resp).await.unwrap().unwrap();
    let (status, body, trailers) = tokio::time::timeout(DEADLINE, read(resp)).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        body == payload,
        "{} bytes back of {}",
        body.len(),
        payload.len()
    );
    assert_eq!(trailers.unwrap()["x-done"], "yes");
}

/// A request body that never runs out: 16 KiB chunks, forever.
struct Endless;

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(vec![
            b'e';
            16 << 10
        ])))))
    }
}

#[tokio::test]
async fn an_early_answer_is_read_whole_though_the_server_resets_the_upload() {
    let (addr, _) = h2_server(100).await;
    let (mut send, _conn) = connect(addr).await;
    for _ in 0..3 {
        let req = Request::post(format!("http://{addr}/early"))
            .body(Endless)
            .unwrap();
        let resp = send.send_request(req).unwrap();
        let resp = tokio::time::timeout(DEADLINE, resp).await.unwrap().unwrap();
        // Read after the reset has surely come: the answer is still whole.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (status, body, _) = read(resp).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"early answer"[..]));
        send.ready().await.unwrap();
    }
}

#[tokio::test]
async fn waits_for_room_under_the_servers_stream_limit() {
    let (addr, _) = h2_server(5).await;
    let (send, _conn) = connect(addr).await;
    // The server's SETTINGS arrives with the first answer.
    let mut first = send.clone();
    let resp = first.send_request(get(addr, "/")).unwrap();
    resp.await.unwrap();
    let mut calls = Vec::new();
    for i in 0..100 {
        let mut send = send.clone();
        calls.push(tokio::spawn(async move {
            send.ready().await.unwrap();
            let body = Full::new(Bytes::from(format!("call {i}")));
            let req = Request::post(format!("http://{addr}/echo"))
                .body(body)
                .unwrap();
            let (_, body, _) = read(send.send_request(req).unwrap().await.unwrap()).await;
            assert_eq!(body, format!("call {i}"));
        }));
    }
    for c in calls {
        tokio::time::timeout(DEADLINE, c).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn dropping_a_response_resets_the_stream() {
    let (addr, mut resets) = h2_server(100).await;
    let (mut send, _conn) = connect(addr).await;
    let resp = send.send_request(get(addr, "/hang")).unwrap();
    tokio::time::timeout(Duration::from_millis(100), resp)
        .await
        .unwrap_err();
    let reason = tokio::time::timeout(DEADLINE, resets.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reason, h2::Reason::CANCEL);
}

#[tokio::test]
async fn a_goaway_stops_new_requests_and_the_connection_ends_with_its_handles() {
    let (addr, _) = h2_server(100).await;
    let (mut send, conn) = connect(addr).await;
    let resp = send.send_request(get(addr, "/goaway")).unwrap();
    let (status, _, _) = read(resp.await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    // Once the GOAWAY is in, the connection takes nothing new.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !send.is_closed() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(send.ready().await.is_err());
    drop(send);
    tokio::time::timeout(DEADLINE, conn)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // And a connection whose senders all went ends by itself.
    let (send, conn) = connect(addr).await;
    drop(send);
    tokio::time::timeout(DEADLINE, conn)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_server_that_refuses_streams_is_seen_as_refused() {
    // Our own server with room for one stream: the second of two at once is refused (the
    // client has not seen the limit yet), which a caller may retry.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (io, _) = listener.accept().await.unwrap();
        let config = Config {
            max_concurrent_streams: 1,
            ..Config::default()
        };
        let _ = pillion_http2::server::serve(
            io,
            config,
            None,
            |_req| async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Response::new(Full::new(Bytes::from_static(b"slow")))
            },
            std::future::pending(),
        )
        .await;
    });
    let (mut send, _conn) = connect(addr).await;
    let a = send.send_request(get(addr, "/")).unwrap();
    let b = send.send_request(get(addr, "/")).unwrap();
    let (a, b) = tokio::join!(a, b);
    assert_eq!(a.unwrap().status(), StatusCode::OK);
    assert_eq!(
        b.unwrap_err(),
        StreamError::Reset(pillion_http2::frame::Reason::REFUSED_STREAM)
    );
}

/// Requests given up on (their responses dropped before they came) free their place under the
/// server's stream limit: with a limit of 2, the third request after two cancelled ones goes.
#[tokio::test]
async fn cancelled_requests_free_their_place_under_the_limit() {
    let (addr, mut resets) = h2_server(2).await;
    let (mut send, _conn) = connect(addr).await;
    // The server's SETTINGS (its limit) first.
    send.send_request(get(addr, "/")).unwrap().await.unwrap();
    for _ in 0..10 {
        tokio::time::timeout(Duration::from_secs(10), send.ready())
            .await
            .expect("room under the limit again")
            .unwrap();
        let resp = send.send_request(get(addr, "/hang")).unwrap();
        tokio::time::timeout(Duration::from_millis(20), resp)
            .await
            .unwrap_err();
        tokio::time::timeout(DEADLINE, resets.recv())
            .await
            .unwrap()
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), send.ready())
        .await
        .expect("room under the limit again")
        .unwrap();
    let resp = send.send_request(get(addr, "/")).unwrap();
    assert_eq!(resp.await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn our_client_and_our_server_together() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (io, _) = listener.accept().await.unwrap();
            tokio::spawn(pillion_http2::server::serve(
                io,
                Config::default(),
                None,
                |req: Request<pillion_http2::server::RecvBody>| async move {
                    Response::new(req.into_body())
                },
                std::future::pending(),
            ));
        }
    });
    let (send, _conn) = connect(addr).await;
    let mut calls = Vec::new();
    for i in 0..300usize {
        let mut send = send.clone();
        calls.push(tokio::spawn(async move {
            send.ready().await.unwrap();
            // Bodies from empty to 256 KiB, echoed.
            let body = Bytes::from(vec![(i % 256) as u8; (i * 877) % (256 << 10)]);
            let req = Request::post(format!("http://{addr}/"))
                .body(Full::new(body.clone()))
                .unwrap();
            let (status, got, _) = read(send.send_request(req).unwrap().await.unwrap()).await;
            assert_eq!(status, StatusCode::OK);
            assert!(got == body, "call {i}");
        }));
    }
    for c in calls {
        tokio::time::timeout(DEADLINE, c).await.unwrap().unwrap();
    }
}

/// A server that answers stream 1, says GOAWAY (last stream 1) and closes at once, before the
/// client's tasks have looked at either response: the answer is read whole, and stream 3 is
/// seen as refused (the server never processed it), not as a failure.
#[tokio::test]
async fn an_answer_then_goaway_and_close_is_read_whole_and_the_rest_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut io, _) = listener.accept().await.unwrap();
        // SETTINGS (empty), then the client's preface and frames until both requests' HEADERS.
        io.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
        let mut preface = [0u8; 24];
        io.read_exact(&mut preface).await.unwrap();
        let mut requests = 0;
        while requests < 2 {
            let mut head = [0u8; 9];
            io.read_exact(&mut head).await.unwrap();
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            io.read_exact(&mut payload).await.unwrap();
            requests += usize::from(head[3] == 1);
        }
        let mut out = Vec::new();
        // HEADERS stream 1, END_HEADERS: ":status: 200" (static table index 8).
        out.extend_from_slice(&[0, 0, 1, 1, 0x4, 0, 0, 0, 1, 0x88]);
        // DATA stream 1, END_STREAM: "whole".
        out.extend_from_slice(&[0, 0, 5, 0, 0x1, 0, 0, 0, 1]);
        out.extend_from_slice(b"whole");
        // GOAWAY: last stream 1, NO_ERROR.
        out.extend_from_slice(&[0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        io.write_all(&out).await.unwrap();
        // Closed with the client's later frames unread, as servers do.
    });
    let (mut send, conn) = connect(addr).await;
    let first = send.send_request(get(addr, "/first")).unwrap();
    let second = send.send_request(get(addr, "/second")).unwrap();
    // The connection is over before either response is looked at.
    tokio::time::timeout(DEADLINE, conn)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let (status, body, _) = read(first.await.unwrap()).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"whole"[..]));
    match second.await {
        Err(e) => assert!(e.is_refused(), "{e}"),
        Ok(resp) => panic!("an answer to a stream the server never processed: {resp:?}"),
    }
}
