//! What a caller cycling through made-up names cannot do: grow the proxy's watches, the control
//! plane's streams or `/metrics` without bound, or starve the mesh's real destinations.

mod common;

use common::*;

fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_hosts_open_no_watches_and_share_one_metric_series() {
    let mesh = Mesh::start_with(1, 1, &[("PILLION_MAX_DESTINATIONS", "2".to_string())]).await;
    let client = http1_client();
    for i in 0..300 {
        let a = get(&client, mesh.client.outbound, &format!("made-up-{i}"), "/")
            .await
            .unwrap();
        assert_eq!(a.status, 503, "{:?}", a.error);
        assert_eq!(a.error.as_deref(), Some("not in mesh"));
    }
    // A name too long to be a Service is not even asked about.
    let long = format!("{}.example", "x".repeat(400));
    let a = get(&client, mesh.client.outbound, &long, "/")
        .await
        .unwrap();
    assert_eq!(a.status, 503);
    // Three real Services with room for two watches: the least recently used is forgotten and
    // asked for again when needed; every request is answered.
    for round in 0..3 {
        for host in ["web", "web-v1", "web-v2"] {
            let a = get(&client, mesh.client.outbound, host, "/").await.unwrap();
            assert_eq!(a.status, 200, "{host} round {round}: {:?}", a.error);
        }
    }
    let (_, text) = admin_get(mesh.client.admin, "/metrics").await;
    let watched = metric_sum(&text, "pillion_destinations ");
    assert!(watched <= 2.0, "{watched} destinations watched");
    assert!(
        !text.contains("made-up-"),
        "unknown hosts became label values"
    );
    let unknown = metric_sum(
        &text,
        "pillion_requests_total{direction=\"outbound\",authority=\"unknown\"",
    );
    assert_eq!(unknown, 301.0);
    assert!(text.contains("authority=\"web.default.svc.cluster.local:80\""));
}
