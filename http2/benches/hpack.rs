//! What HPACK costs per message on the proxy's hot path: the request and the response of the
//! harness's one hop (h2load to the demo app), encoded and decoded with warm tables.
//!
//!   cargo bench -p pillion-http2 --bench hpack -- --warm-up-time 1 --measurement-time 3

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use pillion_http2::hpack::{Decoder, Encoder, Field, Pseudo};

fn request() -> (Vec<(Pseudo, &'static [u8])>, HeaderMap) {
    let pseudo = vec![
        (Pseudo::Method, &b"GET"[..]),
        (Pseudo::Scheme, b"http"),
        (Pseudo::Authority, b"web-v1"),
        (Pseudo::Path, b"/"),
    ];
    let mut map = HeaderMap::new();
    map.insert("accept", HeaderValue::from_static("*/*"));
    map.insert("accept-encoding", HeaderValue::from_static("gzip, deflate"));
    map.insert(
        "user-agent",
        HeaderValue::from_static("h2load nghttp2/1.52.0"),
    );
    (pseudo, map)
}

fn response() -> (Vec<(Pseudo, &'static [u8])>, HeaderMap) {
    let mut map = HeaderMap::new();
    map.insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    map.insert("content-length", HeaderValue::from_static("29"));
    map.insert(
        "date",
        HeaderValue::from_static("Tue, 01 Dec 2026 22:00:00 GMT"),
    );
    (vec![(Pseudo::Status, &b"200"[..])], map)
}

fn encode(e: &mut Encoder, (pseudo, map): &(Vec<(Pseudo, &[u8])>, HeaderMap), out: &mut Vec<u8>) {
    out.clear();
    e.encode(
        pseudo
            .iter()
            .map(|(p, v)| Field::Pseudo(*p, v))
            .chain(map.iter().map(|(n, v)| Field::Header(n, v))),
        out,
    );
}

fn bench(c: &mut Criterion) {
    for (what, message) in [("request", request()), ("response", response())] {
        let mut e = Encoder::new();
        let mut d = Decoder::new(4096);
        let mut out = Vec::new();
        encode(&mut e, &message, &mut out);
        d.decode(&Bytes::from(out.clone()), |_| {}).unwrap();
        c.bench_function(&format!("hpack encode {what}"), |b| {
            b.iter(|| encode(&mut e, &message, &mut out))
        });
        let block = Bytes::from(out.clone());
        c.bench_function(&format!("hpack decode {what} into a HeaderMap"), |b| {
            b.iter(|| {
                let mut map = HeaderMap::with_capacity(8);
                d.decode(&block, |h| {
                    if let pillion_http2::hpack::Header::Field(n, v) = h {
                        map.append(n, v);
                    }
                })
                .unwrap();
                map
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
