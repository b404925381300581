//! The per-request header work: hop-by-hop headers stripped, the gRPC deadline read, and trace
//! context read and written for the next hop (W3C and B3). `cargo bench -p pillion-proxy
//! --bench headers`.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use pillion_proxy::http::forward;
use pillion_proxy::telemetry::trace::context;

/// What a browser-ish or gRPC client sends, with a connection-listed header to remove.
fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("host", "web.default.svc.cluster.local"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
        ),
        ("accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("cookie", "session=2f1e0c9a7b; theme=dark"),
        ("connection", "keep-alive, x-hop"),
        ("x-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("grpc-timeout", "250m"),
        ("content-type", "application/grpc"),
    ] {
        h.append(name, HeaderValue::from_static(value));
    }
    h
}

fn headers(c: &mut Criterion) {
    let base = request_headers();
    // And what an HTTP/2 or gRPC client sends: nothing to strip but `te: trailers`, which stays.
    let mut clean = base.clone();
    for name in ["connection", "x-hop", "keep-alive"] {
        clean.remove(name);
    }
    for (label, headers) in [
        ("strip hop-by-hop", &base),
        ("strip hop-by-hop (none to strip)", &clean),
    ] {
        c.bench_function(label, |b| {
            b.iter_batched(
                || headers.clone(),
                |mut h| {
                    forward::strip_hop_by_hop(&mut h, false);
                    h
                },
                BatchSize::SmallInput,
            )
        });
    }
    c.bench_function("grpc-timeout parse", |b| {
        b.iter(|| forward::grpc_timeout(black_box(&base)))
    });

    for (format, name, value) in [
        (
            "w3c",
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        (
            "b3 single",
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        ),
    ] {
        let mut with_context = base.clone();
        with_context.insert(name, HeaderValue::from_static(value));
        c.bench_function(&format!("trace context read + write ({format})"), |b| {
            b.iter_batched(
                || with_context.clone(),
                |mut h| {
                    let ctx = context::extract(&h).expect("valid context");
                    context::inject(&mut h, &ctx, 0x1234_5678_9abc_def0, ctx.span_id, true);
                    h
                },
                BatchSize::SmallInput,
            )
        });
    }
}

criterion_group!(benches, headers);
criterion_main!(benches);
