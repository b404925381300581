//! What the fuzz targets (`fuzz/`) run, shared with `tests/fuzz_inputs.rs`, which replays the
//! inputs the fuzzers kept (seeds, and every input that once failed) on each test run.
//!
//! Each harness drives the real connection code over an in-memory pipe on a runtime whose
//! clock is paused (it jumps ahead whenever every task waits), so keep-alive PINGs, their
//! timeouts and the handlers' pauses all happen, at no real cost in time. A panic anywhere,
//! or a connection that never ends, is a failure.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use pillion_http2::hpack::{Decoder, Encoder, Field, Header};
use pillion_http2::{Config, client, server};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: a server's first frame, so that client inputs start past it.
const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
/// Longer than any connection of a harness may live, in the paused clock's time.
const LIFETIME: Duration = Duration::from_secs(24 * 3600);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

/// The first byte of an input says how the rest is delivered: its low 4 bits the size of
/// each write (1 to 16 times 64 bytes, so frames arrive split), bit 4 whether the peer
/// closes its end after the last write (or stays, silent, until keep-alive gives up), bit 5
/// whether it never reads what it is sent (a peer that opens windows and reads nothing).
struct Delivery<'a> {
    chunk: usize,
    close: bool,
    deaf: bool,
    bytes: &'a [u8],
}

fn delivery(data: &[u8]) -> Delivery<'_> {
    let (first, bytes) = match data.split_first() {
        Some((f, rest)) => (*f, rest),
        None => (0, data),
    };
    Delivery {
        chunk: 64 * (usize::from(first & 0x0f) + 1),
        close: first & 0x10 != 0,
        deaf: first & 0x20 != 0,
        bytes,
    }
}

/// Writes `head` then the input, chunk by chunk, while reading (and dropping) all the other
/// side writes, until that side closes.
async fn play(peer: DuplexStream, head: &[u8], d: Delivery<'_>) {
    let (mut rd, mut wr) = tokio::io::split(peer);
    let writer = async {
        if wr.write_all(head).await.is_err() {
            return;
        }
        for chunk in d.bytes.chunks(d.chunk) {
            if wr.write_all(chunk).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        if d.close {
            let _ = wr.shutdown().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let reader = async {
        if d.deaf {
            std::future::pending::<()>().await;
        }
        let mut sink = vec![0u8; 16 << 10];
        while let Ok(n) = rd.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::pin!(reader);
    tokio::select! {
        _ = writer => reader.await,
        _ = &mut reader => {}
    }
}

type Reply = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// Counts what a connection's requests hold (handlers, the bodies they answer with): all of
/// it must be let go once the connection has ended.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(count: &Arc<AtomicUsize>) -> Live {
        count.fetch_add(1, Ordering::Relaxed);
        Live(count.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers by the order requests arrive, so that a fuzzer reaches every kind without having
/// to spell paths in HPACK: echo the body whole; a 256 KiB answer (past the peer's windows);
/// the body's size with trailers; an answer that waits a minute first.
async fn answer(
    req: Request<server::RecvBody>,
    n: usize,
    live: Arc<AtomicUsize>,
) -> Response<Reply> {
    let _handler = Live::new(&live);
    let whole = |body: Bytes| Full::new(body).boxed();
    match n % 4 {
        0 => match req.into_body().collect().await {
            Ok(c) => Response::new(whole(c.to_bytes())),
            Err(_) => Response::new(whole(Bytes::new())),
        },
        1 => {
            let body = Live::new(&live);
            let chunks = (0..16).map(move |_| {
                let _held = &body;
                Ok(http_body::Frame::data(Bytes::from(vec![7u8; 16 << 10])))
            });
            Response::new(StreamBody::new(futures_util::stream::iter(chunks)).boxed())
        }
        2 => {
            let len = match req.into_body().collect().await {
                Ok(c) => c.to_bytes().len(),
                Err(_) => 0,
            };
            let mut trailers = HeaderMap::new();
            trailers.insert("x-len", HeaderValue::from(len));
            let body = Full::new(Bytes::from_static(b"done"))
                .with_trailers(async move { Some(Ok(trailers)) })
                .boxed();
            Response::new(body)
        }
        _ => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Response::new(whole(Bytes::from_static(b"late")))
        }
    }
}

/// The input as a client's bytes after its preface, to our server.
pub fn server(data: &[u8]) {
    runtime().block_on(async {
        let (peer, ours) = tokio::io::duplex(64 << 10);
        let count = Arc::new(AtomicUsize::new(0));
        let live = Arc::new(AtomicUsize::new(0));
        let held = live.clone();
        let handler = move |req| {
            let n = count.fetch_add(1, Ordering::Relaxed);
            answer(req, n, held.clone())
        };
        let mut serving = tokio::spawn(server::serve(
            ours,
            Config::default(),
            Some(Duration::from_secs(10)),
            handler,
            std::future::pending(),
        ));
        // Over when the connection is: a peer that never reads never sees its end.
        let ended = tokio::time::timeout(LIFETIME, async {
            let play = play(peer, PREFACE, delivery(data));
            tokio::pin!(play);
            tokio::select! {
                r = &mut serving => r,
                _ = &mut play => serving.await,
            }
        })
        .await;
        match ended {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
            Err(_) => panic!("the server's connection did not end"),
        }
        // The connection is over: every request's task must end too, not wait forever on
        // a stream that is gone.
        let freed = tokio::time::timeout(LIFETIME, async {
            while live.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(
            freed.is_ok(),
            "{} handlers or bodies outlived their connection",
            live.load(Ordering::Relaxed)
        );
    });
}

fn request<B>(method: &str, body: B) -> Request<B> {
    Request::builder()
        .method(method)
        .uri("http://fuzz.test/")
        .body(body)
        .expect("a request")
}

/// The input as a server's bytes after its first SETTINGS, to our client sending four
/// requests at once (bodiless; 100 KiB, past the default window; with trailers; one it gives
/// up on) and reading every answer to its end.
pub fn client(data: &[u8]) {
    runtime().block_on(async {
        let (peer, ours) = tokio::io::duplex(64 << 10);
        let (send, conn) =
            client::handshake(ours, Config::default(), Some(Duration::from_secs(10)));
        let driving = tokio::spawn(conn);
        let read_all = |response: Result<client::ResponseFuture, _>| async move {
            let Ok(response) = response else { return };
            if let Ok(r) = response.await {
                let _ = r.into_body().collect().await;
            }
        };
        let mut senders = [send.clone(), send.clone(), send.clone(), send];
        let get = senders[0].send_request(request("GET", Full::new(Bytes::new())));
        let post = senders[1].send_request(request(
            "POST",
            Full::new(Bytes::from(vec![1u8; 100 << 10])),
        ));
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("1"));
        let with_trailers = Full::new(Bytes::from_static(b"abc"))
            .with_trailers(async move { Some(Ok::<_, std::convert::Infallible>(trailers)) });
        let trailed = senders[2].send_request(request("PUT", with_trailers));
        let abandoned = senders[3].send_request(request("GET", Full::new(Bytes::new())));
        drop(senders);
        let requests = async {
            drop(abandoned);
            tokio::join!(read_all(get), read_all(post), read_all(trailed));
        };
        let mut head = BytesMut::from(EMPTY_SETTINGS);
        head.truncate(EMPTY_SETTINGS.len());
        let ended = tokio::time::timeout(LIFETIME, async {
            let play = play(peer, &head, delivery(data));
            let both = async { tokio::join!(requests, driving).1 };
            tokio::pin!(play, both);
            tokio::select! {
                r = &mut both => r,
                _ = &mut play => both.await,
            }
        })
        .await;
        match ended {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
            Err(_) => panic!("the client's connection did not end"),
        }
    });
}

/// The input as header blocks (split at each 0xff 0x00 pair) to one decoder; each block that
/// decodes is encoded again and must decode, in a second pair, to the same fields.
pub fn hpack(data: &[u8]) {
    let mut decoder = Decoder::new(4096);
    let mut encoder = Encoder::new();
    let mut again = Decoder::new(4096);
    let mut rest = data;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == [0xff, 0x00])
            .unwrap_or(rest.len());
        let block = Bytes::copy_from_slice(&rest[..end]);
        rest = rest.get(end + 2..).unwrap_or(&[]);
        let mut fields = Vec::new();
        if decoder.decode(&block, |h| fields.push(h)).is_err() {
            // A peer that sends this gets COMPRESSION_ERROR and the connection ends.
            return;
        }
        // Malformed fields are the message's business (the stream is reset); the others go
        // out again as a proxy would send them.
        let kept: Vec<&Header> = fields
            .iter()
            .filter(|h| !matches!(h, Header::Malformed { .. }))
            .collect();
        let mut encoded = BytesMut::new();
        encoder.encode(
            kept.iter().filter_map(|h| match h {
                Header::Pseudo(p, v) => Some(Field::Pseudo(*p, v)),
                Header::Field(n, v) => Some(Field::Header(n, v)),
                Header::Malformed { .. } => None,
            }),
            &mut encoded,
        );
        let mut round = Vec::new();
        again
            .decode(&encoded.freeze(), |h| round.push(h))
            .expect("what the encoder wrote decodes");
        let expected: Vec<Header> = kept.into_iter().cloned().collect();
        let got = round;
        assert_eq!(expected, got, "the fields round-trip");
    }
}
