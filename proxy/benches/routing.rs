//! The per-request routing work: match the request to a rule, pick a backend by weight, pick an
//! endpoint by power of two choices. `cargo bench -p pillion-proxy --bench routing`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use pillion_proto::discovery::v1 as pb;
use pillion_proxy::balance;
use pillion_proxy::route::snapshot::{BackendTarget, RequestInfo, Snapshot};

fn backend(name: &str, weight: u32, first_port: u16) -> pb::WeightedBackend {
    pb::WeightedBackend {
        weight,
        kind: Some(pb::weighted_backend::Kind::Service(pb::Backend {
            name: name.into(),
            endpoints: (0..10)
                .map(|i| pb::Endpoint {
                    address: format!("10.0.0.{}:{}", i + 1, first_port),
                    weight: 1,
                    ..Default::default()
                })
                .collect(),
        })),
        filters: None,
    }
}

/// Four header/path rules before the catch-all 90/10 split the benchmark's request takes.
fn snapshot() -> Snapshot {
    let mut rules = Vec::new();
    let mut matches = Vec::new();
    for i in 0..4 {
        rules.push(pb::Rule {
            name: format!("rule-{i}"),
            backends: vec![backend("other", 1, 9000)],
            ..Default::default()
        });
        matches.push(pb::RouteMatch {
            rule_index: i,
            path: Some(pb::PathMatch {
                kind: pb::path_match::Kind::Prefix as i32,
                value: format!("/api/v{i}"),
            }),
            headers: vec![pb::HeaderMatch {
                name: "x-canary".into(),
                value: Some(pb::header_match::Value::Exact("yes".into())),
            }],
            ..Default::default()
        });
    }
    rules.push(pb::Rule {
        name: "split".into(),
        backends: vec![backend("web-v1", 90, 8080), backend("web-v2", 10, 8081)],
        ..Default::default()
    });
    matches.push(pb::RouteMatch {
        rule_index: 4,
        path: Some(pb::PathMatch {
            kind: pb::path_match::Kind::Prefix as i32,
            value: "/".into(),
        }),
        ..Default::default()
    });
    let update = pb::DestinationUpdate {
        version: "1".into(),
        state: Some(pb::destination_update::State::Destination(
            pb::Destination {
                fqdn: "web.default.svc.cluster.local:80".into(),
                rules,
                matches,
                source: "bench".into(),
            },
        )),
    };
    Snapshot::compile(
        update,
        &mut Default::default(),
        Duration::from_secs(1),
        None,
    )
    .expect("compiles")
}

fn routing(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let snap = snapshot();
    let method = http::Method::GET;
    let mut headers = http::HeaderMap::new();
    headers.insert("user-agent", http::HeaderValue::from_static("bench"));
    headers.insert("accept", http::HeaderValue::from_static("*/*"));
    c.bench_function("route+split+balance", |b| {
        b.iter(|| {
            let info = RequestInfo {
                method: &method,
                path: black_box("/shop/cart"),
                query: None,
                headers: &headers,
            };
            let rule = snap.route(&info).expect("route");
            let backend = rule.split.pick().expect("backend");
            match &backend.target {
                BackendTarget::Service { endpoints, .. } => {
                    black_box(balance::pick(endpoints).expect("endpoint"));
                }
                BackendTarget::Failure { .. } => unreachable!(),
            }
        })
    });
    c.bench_function("authority parse", |b| {
        b.iter(|| pillion_proto::names::parse_authority(black_box("web.default:80"), "default"))
    });
}

/// What one sampled request costs the proxy in tracing: reading and writing the context,
/// recording the span, queueing it; and encoding it as Zipkin JSON in the exporter.
fn tracing(c: &mut Criterion) {
    use pillion_proxy::telemetry::trace::{Kind, Tracer, zipkin::Exporter};
    let (exporter, queue) = Exporter::detached();
    let tracer = Tracer::new(1.0, "web.default", exporter);
    c.bench_function("span start, tag, finish", |b| {
        b.iter(|| {
            let mut req = http::Request::get("http://web/x")
                .body(pillion_proxy::http::body::empty())
                .expect("request");
            let mut span = tracer.start(Kind::Client, &mut req).expect("sampled");
            span.tag("http.status_code", "200");
            span.tag("pillion.backend", "web-v1.default.svc.cluster.local:80");
            tracer.finish(span);
            drop(queue.take());
        })
    });
    let mut req = http::Request::get("http://web/x")
        .body(pillion_proxy::http::body::empty())
        .expect("request");
    let span = tracer.start(Kind::Client, &mut req).expect("sampled");
    tracer.finish(span);
    let span = queue.take().pop().expect("queued");
    c.bench_function("span as Zipkin JSON", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(1024);
            span.write_json(&mut out);
            black_box(out)
        })
    });
}

criterion_group!(benches, routing, tracing);
criterion_main!(benches);
