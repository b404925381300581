//! Our frames against the `h2` crate's, on loopback: a request with a body and a response with
//! a body and trailers, each side once ours (frames and HPACK by hand) and once h2's.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use pillion_http2::frame::{self, Frame, Settings, StreamId};
use pillion_http2::hpack::{Decoder, Encoder, Field, Header, Pseudo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DEADLINE: Duration = Duration::from_secs(30);

/// Reads frames until one arrives, filling `buf` from the socket as needed.
async fn next(io: &mut TcpStream, buf: &mut BytesMut) -> Option<Frame> {
    loop {
        if let Some(f) = frame::read(buf, frame::DEFAULT_MAX_FRAME_SIZE).unwrap() {
            return Some(f);
        }
        if io.read_buf(buf).await.unwrap() == 0 {
            return None;
        }
    }
}

fn decode(d: &mut Decoder, block: Bytes) -> (Vec<(Pseudo, Bytes)>, HeaderMap) {
    let (mut pseudo, mut map) = (Vec::new(), HeaderMap::new());
    d.decode(&block, |h| match h {
        Header::Pseudo(p, v) => pseudo.push((p, v)),
        Header::Field(n, v) => {
            map.append(n, v);
        }
        Header::Malformed { why, .. } => panic!("{why}"),
    })
    .unwrap();
    (pseudo, map)
}

#[tokio::test]
async fn our_frames_talk_to_the_h2_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (io, _) = listener.accept().await.unwrap();
        let mut conn = h2::server::handshake(io).await.unwrap();
        let (req, mut respond) = conn.accept().await.unwrap().unwrap();
        let mut body = req.into_body();
        let mut got = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            body.flow_control().release_capacity(chunk.len()).unwrap();
            got.extend_from_slice(&chunk);
        }
        let mut send = respond.send_response(Response::new(()), false).unwrap();
        send.send_data(Bytes::from_static(b"pong"), false).unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        send.send_trailers(trailers).unwrap();
        // Drive the connection until the client goes.
        while conn.accept().await.is_some() {}
        got
    });

    let mut io = TcpStream::connect(addr).await.unwrap();
    let mut out = BytesMut::new();
    out.extend_from_slice(frame::PREFACE);
    frame::write_settings(
        &mut out,
        &Settings {
            enable_push: Some(false),
            ..Settings::default()
        },
    );
    let mut block = Vec::new();
    Encoder::new().encode(
        [
            Field::Pseudo(Pseudo::Method, b"POST"),
            Field::Pseudo(Pseudo::Scheme, b"http"),
            Field::Pseudo(Pseudo::Authority, b"example.test"),
            Field::Pseudo(Pseudo::Path, b"/ping"),
        ],
        &mut block,
    );
    frame::write_headers(
        &mut out,
        StreamId(1),
        &block,
        false,
        frame::DEFAULT_MAX_FRAME_SIZE,
    );
    frame::write_data(&mut out, StreamId(1), b"pi", false);
    frame::write_data(&mut out, StreamId(1), b"ng", true);
    io.write_all(&out).await.unwrap();

    let mut buf = BytesMut::new();
    let mut decoder = Decoder::new(4096);
    let (mut settings, mut acked, mut status, mut body, mut trailers) =
        (false, false, None, Vec::new(), None);
    tokio::time::timeout(DEADLINE, async {
        while trailers.is_none() {
            match next(&mut io, &mut buf)
                .await
                .expect("the server closed early")
            {
                Frame::Settings(_) => {
                    settings = true;
                    let mut ack = BytesMut::new();
                    frame::write_settings_ack(&mut ack);
                    io.write_all(&ack).await.unwrap();
                }
                Frame::SettingsAck => acked = true,
                Frame::Headers {
                    stream,
                    block,
                    end_stream,
                    ..
                } => {
                    assert_eq!(stream, StreamId(1));
                    let (pseudo, map) = decode(&mut decoder, block);
                    if end_stream {
                        trailers = Some(map);
                    } else {
                        status = pseudo.into_iter().find(|(p, _)| *p == Pseudo::Status);
                    }
                }
                Frame::Data { data, .. } => body.extend_from_slice(&data),
                Frame::WindowUpdate { .. } | Frame::Ping { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("the response in time");
    assert!(settings && acked);
    assert_eq!(status, Some((Pseudo::Status, Bytes::from_static(b"200"))));
    assert_eq!(body, b"pong");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    // Going away: the server's GOAWAY is read as one.
    let mut bye = BytesMut::new();
    frame::write_goaway(&mut bye, StreamId(0), frame::Reason::NO_ERROR, b"done");
    io.write_all(&bye).await.unwrap();
    drop(io);
    let got = tokio::time::timeout(DEADLINE, server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"ping");
}

#[tokio::test]
async fn the_h2_client_talks_to_our_frames() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let io = TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = h2::client::handshake(io).await.unwrap();
        let conn = tokio::spawn(conn);
        let req = Request::post("http://example.test/echo").body(()).unwrap();
        let (response, mut body) = send.send_request(req, false).unwrap();
        body.send_data(Bytes::from_static(b"hello"), true).unwrap();
        let response = response.await.unwrap();
        let status = response.status();
        let mut recv = response.into_body();
        let mut got = Vec::new();
        while let Some(chunk) = recv.data().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        let trailers = recv.trailers().await.unwrap();
        // Done with the connection: h2 closes it once every handle is gone.
        drop((send, body, recv));
        let _ = conn.await;
        (status, got, trailers)
    });

    let (mut io, _) = listener.accept().await.unwrap();
    let mut buf = BytesMut::new();
    while buf.len() < frame::PREFACE.len() {
        io.read_buf(&mut buf).await.unwrap();
    }
    assert_eq!(&buf[..24], frame::PREFACE);
    let _ = buf.split_to(24);
    let mut out = BytesMut::new();
    frame::write_settings(&mut out, &Settings::default());
    io.write_all(&out).await.unwrap();

    let mut decoder = Decoder::new(4096);
    let mut request_body = Vec::new();
    let mut request = None;
    let mut went_away = false;
    tokio::time::timeout(DEADLINE, async {
        while !went_away {
            let Some(f) = next(&mut io, &mut buf).await else {
                break;
            };
            match f {
                Frame::Settings(_) => {
                    let mut ack = BytesMut::new();
                    frame::write_settings_ack(&mut ack);
                    io.write_all(&ack).await.unwrap();
                }
                Frame::Headers { stream, block, .. } => {
                    request = Some((stream, decode(&mut decoder, block)))
                }
                Frame::Data {
                    stream,
                    data,
                    end_stream,
                    ..
                } => {
                    request_body.extend_from_slice(&data);
                    if end_stream {
                        let mut out = BytesMut::new();
                        let mut enc = Encoder::new();
                        let mut block = Vec::new();
                        enc.encode([Field::Pseudo(Pseudo::Status, b"201")], &mut block);
                        frame::write_headers(
                            &mut out,
                            stream,
                            &block,
                            false,
                            frame::DEFAULT_MAX_FRAME_SIZE,
                        );
                        frame::write_data(&mut out, stream, &request_body, false);
                        let status = HeaderValue::from_static("0");
                        let name = http::HeaderName::from_static("grpc-status");
                        block.clear();
                        enc.encode([Field::Header(&name, &status)], &mut block);
                        frame::write_headers(
                            &mut out,
                            stream,
                            &block,
                            true,
                            frame::DEFAULT_MAX_FRAME_SIZE,
                        );
                        io.write_all(&out).await.unwrap();
                    }
                }
                Frame::GoAway { .. } => went_away = true,
                Frame::SettingsAck | Frame::WindowUpdate { .. } | Frame::Ping { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("the client finished in time");
    let (stream, (pseudo, _)) = request.unwrap();
    assert_eq!(stream, StreamId(1));
    assert!(pseudo.contains(&(Pseudo::Path, Bytes::from_static(b"/echo"))));
    assert_eq!(request_body, b"hello");
    assert!(went_away);
    drop(io);
    let (status, got, trailers) = client.await.unwrap();
    assert_eq!(status, 201);
    assert_eq!(got, b"hello");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
}
