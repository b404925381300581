//! What recording one request costs in metrics, as the proxy does it: the leg's handles (one
//! lookup), its request counter and latency histogram, and its response counter, for series that
//! already exist (every request but a leg's first). `cargo bench -p pillion-proxy --bench metrics`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use pillion_proxy::telemetry::metrics::{
    Classification, Direction, Label, Metrics, ResponseLabels,
};

fn metrics(c: &mut Criterion) {
    let metrics = Metrics::new();
    let authority = Label::from("web.default.svc.cluster.local:80");
    let route = Label::from("web-canary");
    let backend = Label::from("web-v1.default.svc.cluster.local:80");
    let record = || {
        let leg = metrics.leg(Direction::outbound, &authority, &route, &backend);
        leg.count_request(black_box(0.000_412));
        leg.count_response(
            &metrics,
            ResponseLabels {
                direction: Direction::outbound,
                authority: leg.authority.clone(),
                route: route.clone(),
                backend: backend.clone(),
                status_code: 200,
                grpc_status: None,
                error: None,
                tls: true,
                peer_identity: Label::from("spiffe://cluster.local/ns/default/sa/web"),
                classification: Classification::success,
            },
        );
    };
    record();
    c.bench_function("count request + latency + response", |b| b.iter(record));

    // A scrape of a proxy that has talked to 100 authorities.
    for i in 0..100 {
        let authority = Label::from(format!("svc-{i}.default:80").as_str());
        metrics
            .leg(Direction::outbound, &authority, &route, &backend)
            .count_request(0.001);
    }
    c.bench_function("encode /metrics (100 authorities)", |b| {
        b.iter(|| black_box(metrics.encode()))
    });
}

criterion_group!(benches, metrics);
criterion_main!(benches);
