//! Our HPACK against another implementation, the `h2` crate's, over real connections on
//! loopback: its client's header blocks decoded by our decoder, our encoder's blocks decoded by
//! its server. Frames are read and written by hand (a HEADERS frame and its CONTINUATIONs);
//! the connections carry several requests, so that both dynamic tables are exercised.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request};
use pillion_http2::hpack::{Decoder, Encoder, Field, Header, Pseudo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DEADLINE: Duration = Duration::from_secs(30);

/// Header fields with values using every byte a field value may hold (tab, printable ASCII,
/// and obs-text), different on every request so that some are indexed and some not.
fn fields(i: usize) -> HeaderMap {
    let mut map = HeaderMap::new();
    let printable: Vec<u8> = (0x21..0x7f).collect();
    let high: Vec<u8> = (0x80..=0xff).collect();
    map.insert("x-printable", HeaderValue::from_bytes(&printable).unwrap());
    map.insert("x-high", HeaderValue::from_bytes(&high).unwrap());
    map.insert("x-tab", HeaderValue::from_static("a\tb c"));
    map.insert("x-request", HeaderValue::from(i));
    map.insert("user-agent", HeaderValue::from_static("pillion-test/1"));
    map.append("x-twice", HeaderValue::from_static("first"));
    map.append("x-twice", HeaderValue::from_static("second"));
    map.insert("accept-encoding", HeaderValue::from_static("gzip, deflate"));
    // Larger than one frame's 16 KiB on the third request: a CONTINUATION follows.
    if i == 2 {
        map.insert(
            "x-large",
            HeaderValue::from_str(&"L".repeat(20_000)).unwrap(),
        );
    }
    map
}

async fn read_frame(io: &mut TcpStream) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    io.read_exact(&mut head).await.unwrap();
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await.unwrap();
    (head[3], head[4], stream, payload)
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

#[tokio::test]
async fn our_decoder_reads_what_the_h2_client_encodes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let io = TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = h2::client::handshake(io).await.unwrap();
        tokio::spawn(conn);
        for i in 0..4 {
            let mut req = Request::post(format!("http://example.test/path/{i}?q=1"))
                .body(())
                .unwrap();
            *req.headers_mut() = fields(i);
            let (_response, _stream) = send.send_request(req, true).unwrap();
            send = send.ready().await.unwrap();
        }
        // Keep the connection until the server has read everything.
        tokio::time::sleep(DEADLINE).await;
    });
    let (mut io, _) = listener.accept().await.unwrap();
    let mut preface = [0u8; 24];
    io.read_exact(&mut preface).await.unwrap();
    assert_eq!(preface, PREFACE);
    io.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let mut decoder = Decoder::new(4096);
    let mut seen = 0;
    tokio::time::timeout(DEADLINE, async {
        while seen < 4 {
            let (kind, flags, stream, mut block) = read_frame(&mut io).await;
            if kind != HEADERS {
                continue;
            }
            let mut end = flags & END_HEADERS != 0;
            while !end {
                let (kind, flags, cont_stream, more) = read_frame(&mut io).await;
                assert_eq!((kind, cont_stream), (CONTINUATION, stream));
                block.extend(more);
                end = flags & END_HEADERS != 0;
            }
            let mut pseudo = Vec::new();
            let mut map = HeaderMap::new();
            decoder
                .decode(&Bytes::from(block), |h| match h {
                    Header::Pseudo(p, v) => pseudo.push((p, v)),
                    Header::Field(n, v) => {
                        map.append(n, v);
                    }
                    Header::Malformed { why, .. } => panic!("malformed: {why}"),
                })
                .unwrap();
            assert_eq!(
                pseudo,
                [
                    (Pseudo::Method, Bytes::from_static(b"POST")),
                    (Pseudo::Scheme, Bytes::from_static(b"http")),
                    (Pseudo::Authority, Bytes::from_static(b"example.test")),
                    (Pseudo::Path, Bytes::from(format!("/path/{seen}?q=1"))),
                ]
            );
            assert_eq!(map, fields(seen));
            seen += 1;
        }
    })
    .await
    .expect("four requests decoded in time");
    client.abort();
}

#[tokio::test]
async fn the_h2_server_reads_what_our_encoder_encodes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (io, _) = listener.accept().await.unwrap();
        let mut conn = h2::server::handshake(io).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 4 {
            let (req, mut respond) = conn.accept().await.unwrap().unwrap();
            got.push(req.map(|_| ()));
            let _ = respond.send_response(http::Response::new(()), true);
        }
        got
    });
    let mut io = TcpStream::connect(addr).await.unwrap();
    io.write_all(PREFACE).await.unwrap();
    io.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let mut encoder = Encoder::new();
    for i in 0..4usize {
        let path = format!("/path/{i}?q=1");
        let map = fields(i);
        let pseudo = [
            (Pseudo::Method, &b"GET"[..]),
            (Pseudo::Scheme, b"http"),
            (Pseudo::Authority, b"example.test"),
            (Pseudo::Path, path.as_bytes()),
        ];
        let mut block = Vec::new();
        encoder.encode(
            pseudo
                .iter()
                .map(|(p, v)| Field::Pseudo(*p, v))
                .chain(map.iter().map(|(n, v)| Field::Header(n, v))),
            &mut block,
        );
        // Split at the default maximum frame size, 16 KiB.
        let stream = 1 + 2 * i as u32;
        let mut chunks = block.chunks(16_384).peekable();
        let mut kind = HEADERS;
        while let Some(chunk) = chunks.next() {
            let mut flags = if kind == HEADERS { END_STREAM } else { 0 };
            if chunks.peek().is_none() {
                flags |= END_HEADERS;
            }
            io.write_all(&frame(kind, flags, stream, chunk))
                .await
                .unwrap();
            kind = CONTINUATION;
        }
    }
    let got = tokio::time::timeout(DEADLINE, server)
        .await
        .expect("the h2 server took four requests in time")
        .unwrap();
    for (i, req) in got.iter().enumerate() {
        assert_eq!(req.method(), http::Method::GET);
        assert_eq!(req.uri(), &format!("http://example.test/path/{i}?q=1")[..]);
        assert_eq!(req.headers(), &fields(i), "request {i}");
    }
}
