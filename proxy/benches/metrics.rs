//! What recording one request costs in metrics: the request counter and latency histogram, the
//! response counter, for a series that already exists (every request but an authority's first),
//! and the authority's label check. `cargo bench -p pillion-proxy --bench metrics`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use pillion_proxy::telemetry::metrics::{
    Classification, Direction, Label, LatencyLabels, Metrics, RequestLabels, ResponseLabels,
};

/// The request and latency label sets of one outbound request.
fn request_labels(
    authority: &Label,
    route: &Label,
    backend: &Label,
) -> (RequestLabels, LatencyLabels) {
    (
        RequestLabels {
            direction: Direction::outbound,
            authority: authority.clone(),
            route: route.clone(),
            backend: backend.clone(),
        },
        LatencyLabels {
            direction: Direction::outbound,
            authority: authority.clone(),
            backend: backend.clone(),
        },
    )
}

fn metrics(c: &mut Criterion) {
    let metrics = Metrics::new();
    let authority = Label::from("web.default.svc.cluster.local:80");
    let route = Label::from("web-canary");
    let backend = Label::from("web-v1.default.svc.cluster.local:80");
    let empty = Label::from("");
    let record = || {
        let authority = metrics.authority_label(&authority);
        let (req, latency) = request_labels(&authority, &route, &backend);
        metrics.count_request(req, latency, black_box(0.000_412));
        metrics.count_response(ResponseLabels {
            direction: Direction::outbound,
            authority,
            route: route.clone(),
            backend: backend.clone(),
            status_code: 200,
            grpc_status: empty.clone(),
            error: empty.clone(),
            tls: true,
            peer_identity: Label::from("spiffe://cluster.local/ns/default/sa/web"),
            classification: Classification::success,
        });
    };
    record();
    c.bench_function("count request + latency + response", |b| b.iter(record));

    // A scrape of a proxy that has talked to 100 authorities.
    for i in 0..100 {
        let authority =
            metrics.authority_label(&Label::from(format!("svc-{i}.default:80").as_str()));
        let (req, latency) = request_labels(&authority, &route, &backend);
        metrics.count_request(req, latency, 0.001);
    }
    c.bench_function("encode /metrics (100 authorities)", |b| {
        b.iter(|| black_box(metrics.encode()))
    });
}

criterion_group!(benches, metrics);
criterion_main!(benches);
