//! Weighted splits end to end: accuracy, live changes under load, refused configuration.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio::sync::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_90_10_split_lands_within_one_percent_over_1000_requests() {
    let mesh = Mesh::start(90, 10).await;
    let client = http1_client();
    let mut versions = Vec::new();
    for _ in 0..1000 {
        let a = get(&client, mesh.client.outbound, "web", "/")
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{:?}", a.error);
        versions.push(a.version);
    }
    let v1 = count(&versions, "v1");
    let v2 = count(&versions, "v2");
    eprintln!("90/10 split over 1000 requests: v1={v1} v2={v2}");
    assert_eq!(v1 + v2, 1000);
    assert!((890..=910).contains(&v1), "v1 got {v1} of 1000");
    // Connections between the proxies are pooled: a handful, not one per request.
    for p in &mesh.server_proxies {
        let (_, m) = admin_get(p.admin, "/metrics").await;
        let conns: u64 = m
            .lines()
            .filter(|l| l.starts_with("pillion_connections_total{direction=\"inbound\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert!(conns <= 10, "{conns} inbound connections for ~500 requests");
    }
}

/// Several workers keep requests flowing while the split goes from 90/10 to 50/50.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_split_under_load_shifts_traffic_with_no_failed_request() {
    let mesh = Arc::new(Mesh::start(90, 10).await);
    let log: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let failures = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (mesh, log, failures, stop) =
            (mesh.clone(), log.clone(), failures.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let client = http1_client();
            while !stop.load(Ordering::Relaxed) {
                match get(&client, mesh.client.outbound, "web", "/").await {
                    Ok(a) if a.status == 200 => log.lock().await.push((Instant::now(), a.version)),
                    other => {
                        eprintln!("failed request: {:?}", other.map(|a| (a.status, a.error)));
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // Some traffic at 90/10 first.
    let deadline = Instant::now() + DEADLINE;
    while log.lock().await.len() < 200 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let changed_at = Instant::now();
    write_config(&mesh.path("split.yaml"), &split_yaml(50, 50));
    // Propagated when 100 consecutive answers after the change show the new split.
    let propagated = loop {
        assert!(
            Instant::now() < changed_at + DEADLINE,
            "the split never moved to 50/50"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        let log = log.lock().await;
        let after: Vec<&(Instant, String)> = log.iter().filter(|(t, _)| *t > changed_at).collect();
        // The first answer from which a window of 100 is balanced within ±10.
        let found = after.windows(100).find(|w| {
            let v2 = w.iter().filter(|(_, v)| v == "v2").count();
            (40..=60).contains(&v2)
        });
        if let Some(w) = found {
            break w[0].0 - changed_at;
        }
    };
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    eprintln!(
        "split change propagated in {propagated:?} (file write to first answer of a balanced window)"
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during the change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_configuration_is_reported_and_the_previous_split_stays() {
    let mesh = Mesh::start(90, 10).await;
    let split = mesh.path("split.yaml");

    // A field error: the control plane names file, document, object and field.
    write_config(
        &split,
        &split_yaml(90, 10).replace("weight: 10", "weight: -10"),
    );
    let line = mesh
        .cp
        .proc
        .wait_log("refusal of the negative weight", |v| {
            v["fields"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("split.yaml") && e.contains("spec.backends[1].weight"))
        });
    let error = line["fields"]["error"].as_str().unwrap();
    assert!(
        error.contains("split.yaml:12: TrafficSplit/web-canary: spec.backends[1].weight: "),
        "{error}"
    );

    // Not YAML at all.
    write_config(&split, "spec: [unclosed\n  backends: {");
    mesh.cp.proc.wait_log("refusal of the broken YAML", |v| {
        v["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("split.yaml") && e.contains("not valid YAML"))
    });

    let client = http1_client();
    let mut versions = Vec::new();
    for _ in 0..200 {
        let a = get(&client, mesh.client.outbound, "web", "/")
            .await
            .unwrap();
        assert_eq!(a.status, 200);
        versions.push(a.version);
    }
    let v1 = count(&versions, "v1");
    assert!(
        (178..=182).contains(&v1),
        "the previous 90/10 split should hold: v1={v1}/200"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_does_not_block_changes_in_other_files() {
    let mesh = Mesh::start(90, 10).await;
    write_config(&mesh.path("broken.yaml"), "kind: [");
    mesh.cp.proc.wait_log("refusal of broken.yaml", |v| {
        v["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("broken.yaml"))
    });
    write_config(&mesh.path("split.yaml"), &split_yaml(0, 1));
    let client = http1_client();
    let deadline = Instant::now() + DEADLINE;
    let mut consecutive_v2 = 0;
    while consecutive_v2 < 20 {
        assert!(Instant::now() < deadline, "the 0/1 split never applied");
        let a = get(&client, mesh.client.outbound, "web", "/")
            .await
            .unwrap();
        consecutive_v2 = if a.version == "v2" {
            consecutive_v2 + 1
        } else {
            0
        };
    }
    for _ in 0..50 {
        let a = get(&client, mesh.client.outbound, "web", "/")
            .await
            .unwrap();
        assert_eq!(a.version, "v2");
    }
}

/// A proxy that talks to many destinations holds one watch stream for each on its one
/// connection to the control plane: far more than HTTP/2's usual stream limit of 100-200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_proxy_watches_hundreds_of_destinations() {
    let (app, _) = pillion::demo_app::spawn("127.0.0.1:0".parse().unwrap(), "many")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::new();
    const N: usize = 400;
    for i in 0..N {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}}}\nspec:\n  ports: [{{port: 80}}]\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{i}-1\n  labels: {{kubernetes.io/service-name: svc-{i}}}\n\
             addressType: IPv4\nports: [{{port: {}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n",
            app.port()
        ));
    }
    write_config(&dir.path().join("many.yaml"), &yaml);
    let cp = start_control_plane(dir.path(), "127.0.0.1:0");
    let proxy = start_proxy("proxy-many", cp.addr, "default/client", None, &[]);
    let client = http1_client();
    for i in 0..N {
        let a = get(&client, proxy.outbound, &format!("svc-{i}"), "/")
            .await
            .unwrap();
        assert_eq!(a.status, 200, "svc-{i}: {:?}", a.error);
    }
    let (_, m) = admin_get(proxy.admin, "/metrics").await;
    assert!(m.contains(&format!("pillion_destinations {N}")), "{m}");
}

/// A split with a sticky key: 1,000 users with distinct keys, 10 requests each, each user always
/// sees one version, the share of users per version follows the weights, and a weight change
/// moves about the expected fraction of users, all in the one direction it must.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_users_keep_their_version_and_a_weight_change_moves_few() {
    let sticky_split = |v1: u32, v2: u32| {
        split_yaml(v1, v2).replace(
            "  namespace: default\n",
            "  namespace: default\n  annotations: {pillion.dev/sticky-key: \"header:x-user-id\"}\n",
        )
    };
    let mesh = Mesh::start(90, 10).await;
    write_config(&mesh.path("split.yaml"), &sticky_split(90, 10));
    let client = http1_client();
    let out = mesh.client.outbound;
    let wait_config = |want: &'static str| {
        let admin = mesh.client.admin;
        async move {
            let deadline = Instant::now() + DEADLINE;
            loop {
                let (_, config) = admin_get(admin, "/config").await;
                if config.contains(want) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{want} never in /config:\n{config}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_config("header:x-user-id").await;
    let users = 1000;
    let versions = |rounds: usize| {
        let client = client.clone();
        async move {
            let mut seen: Vec<Vec<String>> = vec![Vec::new(); users];
            let mut tasks = tokio::task::JoinSet::new();
            for chunk in 0..8 {
                let client = client.clone();
                tasks.spawn(async move {
                    let mut got = Vec::new();
                    for user in (chunk..users).step_by(8) {
                        for _ in 0..rounds {
                            let a = request(
                                &client,
                                out,
                                http::Request::get("/").header("x-user-id", format!("user-{user}")),
                                "web",
                                "/",
                                Default::default(),
                            )
                            .await
                            .unwrap();
                            assert_eq!(a.status, 200, "{:?}", a.error);
                            got.push((user, a.version));
                        }
                    }
                    got
                });
            }
            while let Some(got) = tasks.join_next().await {
                for (user, version) in got.unwrap() {
                    seen[user].push(version);
                }
            }
            seen
        }
    };
    let before = versions(10).await;
    for (user, seen) in before.iter().enumerate() {
        assert!(
            seen.iter().all(|v| *v == seen[0]),
            "user {user} saw {seen:?}"
        );
    }
    let on_v2 = before.iter().filter(|s| s[0] == "v2").count();
    eprintln!("sticky 90/10: {on_v2} of {users} users on v2");
    assert!((60..=140).contains(&on_v2), "{on_v2} users on v2");

    write_config(&mesh.path("split.yaml"), &sticky_split(50, 50));
    wait_config("\"weight\": 50").await;
    let after = versions(1).await;
    let moved: Vec<(&String, &String)> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (&b[0], &a[0]))
        .filter(|(b, a)| b != a)
        .collect();
    eprintln!("90/10 -> 50/50: {} of {users} users moved", moved.len());
    assert!(
        moved.iter().all(|(b, a)| *b == "v1" && *a == "v2"),
        "{moved:?}"
    );
    assert!((350..=450).contains(&moved.len()), "{} moved", moved.len());
}
