//! The mesh through failures and shutdowns: the control plane killed and restarted under
//! load, SIGTERM while requests are in flight, and a watching proxy going away.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_control_plane_fails_no_request_and_a_restart_resumes_changes() {
    let mut mesh = Mesh::start(1, 1).await;
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let out = mesh.client.outbound;
    let load = {
        let (ok, failures, stop) = (ok.clone(), failures.clone(), stop.clone());
        tokio::spawn(async move {
            let client = http1_client();
            while !stop.load(Ordering::Relaxed) {
                match get(&client, out, "web", "/").await {
                    Ok(a) if a.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed: {:?}", other.map(|a| (a.status, a.error)));
                        failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };
    let cp_addr = mesh.cp.addr;
    mesh.cp.proc.signal(Signal::SIGKILL);
    mesh.cp.proc.wait_exit();
    // Keep the load going without a control plane for a while.
    let before = ok.load(Ordering::Relaxed);
    let deadline = Instant::now() + DEADLINE;
    while ok.load(Ordering::Relaxed) < before + 300 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A change made while the control plane is down arrives once it is back.
    write_config(&mesh.path("split.yaml"), &split_yaml(0, 1));
    mesh.cp = start_control_plane(mesh.dir.path(), &cp_addr.to_string());
    let client = http1_client();
    let deadline = Instant::now() + DEADLINE;
    let mut consecutive_v2 = 0;
    while consecutive_v2 < 20 {
        assert!(
            Instant::now() < deadline,
            "the change never arrived after the restart"
        );
        let a = get(&client, out, "web", "/").await.unwrap();
        consecutive_v2 = if a.version == "v2" {
            consecutive_v2 + 1
        } else {
            0
        };
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    eprintln!(
        "{} requests succeeded across the control-plane restart",
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(failures.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_every_in_flight_request_finish() {
    let mut mesh = Mesh::start(1, 1).await;
    let out = mesh.client.outbound;
    let mut requests = Vec::new();
    for _ in 0..6 {
        requests.push(tokio::spawn(async move {
            let client = http1_client();
            get(&client, out, "web", "/slow?ms=1500").await
        }));
    }
    // Wait until the server applications hold all six requests.
    let deadline = Instant::now() + DEADLINE;
    while pillion::demo_app::slow_in_flight() < 6 {
        assert!(
            Instant::now() < deadline,
            "the slow requests never reached the apps"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    mesh.client.proc.signal(Signal::SIGTERM);
    // No new connection is accepted once the proxy is draining.
    let deadline = Instant::now() + DEADLINE;
    while tokio::net::TcpStream::connect(out).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the proxy kept accepting after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for r in requests {
        let a = r.await.unwrap().expect("in-flight request failed");
        assert_eq!(a.status, 200);
        assert!(String::from_utf8_lossy(&a.body).starts_with("slow hello"));
    }
    assert_eq!(mesh.client.proc.wait_exit(), Some(0));
}

/// The value of one unlabelled or fully labelled series in a metrics text, if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls the control plane's metrics until `series` reads `want`.
async fn wait_metric(admin: std::net::SocketAddr, series: &str, want: f64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, text) = admin_get(admin, "/metrics").await;
        if metric(&text, series) == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until the control plane counts `n` discovery watches on `n` proxy connections.
async fn wait_watching(admin: std::net::SocketAddr, n: f64) {
    wait_metric(
        admin,
        "pillion_control_plane_watches{kind=\"discovery\"}",
        n,
    )
    .await;
    wait_metric(admin, "pillion_control_plane_proxies", n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_gets_each_change_and_is_forgotten_when_its_proxy_goes() {
    use pillion_proto::discovery::v1::WatchRequest;
    use pillion_proto::discovery::v1::discovery_client::DiscoveryClient;

    let mesh = Mesh::start(50, 50).await;
    // The mesh's own client proxy holds one discovery watch (`web`).
    wait_metric(
        mesh.cp.admin,
        "pillion_control_plane_watches{kind=\"discovery\"}",
        1.0,
    )
    .await;
    let mut client = DiscoveryClient::connect(format!("http://{}", mesh.cp.addr))
        .await
        .unwrap();
    let mut updates = client
        .watch(WatchRequest {
            authority: "web".into(),
            source_namespace: "default".into(),
            source_workload: "default/test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = updates.message().await.unwrap().unwrap();
    wait_watching(mesh.cp.admin, 2.0).await;

    // A change the watch's answer depends on: sent, with a new version.
    write_config(&mesh.path("split.yaml"), &split_yaml(90, 10));
    let second = tokio::time::timeout(DEADLINE, updates.message())
        .await
        .expect("no update after the split changed")
        .unwrap()
        .unwrap();
    assert_ne!(first.version, second.version);

    // The caller goes away: its watch and its connection are no longer counted.
    drop(updates);
    drop(client);
    wait_watching(mesh.cp.admin, 1.0).await;
}

/// Watches share answers computed once per model, keyed by everything the answer depends on:
/// the same authority asked from another namespace is another answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_name_watched_from_two_namespaces_gets_each_its_own_answer() {
    use pillion_proto::discovery::v1::WatchRequest;
    use pillion_proto::discovery::v1::destination_update::State;
    use pillion_proto::discovery::v1::discovery_client::DiscoveryClient;

    let mesh = Mesh::start(50, 50).await;
    let client = DiscoveryClient::connect(format!("http://{}", mesh.cp.addr))
        .await
        .unwrap();
    let first = |ns: &'static str| {
        let mut client = client.clone();
        async move {
            let mut updates = client
                .watch(WatchRequest {
                    authority: "web".into(),
                    source_namespace: ns.into(),
                    source_workload: format!("{ns}/test"),
                })
                .await
                .unwrap()
                .into_inner();
            updates.message().await.unwrap().unwrap()
        }
    };
    let default = first("default").await;
    let other = first("other").await;
    assert!(
        matches!(default.state, Some(State::Destination(_))),
        "{default:?}"
    );
    // `web` from namespace `other` is web.other, which does not exist.
    assert!(
        matches!(other.state, Some(State::NotInMesh(_))),
        "{other:?}"
    );
    // And again in the other order, on a model both have asked about.
    let again = first("default").await;
    assert_eq!(again.version, default.version);
}
