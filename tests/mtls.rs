//! Mutual TLS between proxies, with identities from the control plane's CA.

mod common;

use common::*;
use hyper::body::Bytes;
use pillion_proto::demo::v1::HelloRequest;
use pillion_proto::demo::v1::echo_client::EchoClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_h2c_and_grpc_cross_mtls_and_the_app_sees_the_client_identity() {
    let mesh = Mesh::start_mtls("1h", &[]).await;
    let out = mesh.client.outbound;

    // HTTP/1.1 from the app travels as HTTP/2 over mTLS and reaches the server app as HTTP/1.1,
    // with the caller's identity and without the proxies' own headers.
    let h1 = http1_client();
    let a = request(
        &h1,
        out,
        http::Request::builder().header("pillion-client-id", "spiffe://forged/ns/x/sa/y"),
        "web",
        "/headers",
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.error);
    let seen = String::from_utf8_lossy(&a.body).to_string();
    assert!(
        seen.contains(&format!("pillion-client-id: {CLIENT_ID}")),
        "{seen}"
    );
    assert!(!seen.contains("forged"), "{seen}");
    assert!(!seen.contains("pillion-orig-proto"), "{seen}");
    assert!(!seen.contains("pillion-target-port"), "{seen}");

    // A chunked POST body streams through intact.
    assert_echoed(&h1, out, "web", 1024 * 1024).await;

    // gRPC, unary and bidi, and an error status.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{out}"))
        .unwrap()
        .origin("http://web.default:80".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let mut grpc = EchoClient::new(channel);
    let reply = grpc
        .hello(HelloRequest {
            name: "mtls".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reply.message.starts_with("hello mtls from v"));
    let status = grpc
        .hello(HelloRequest {
            name: "x".into(),
            fail_with: tonic::Code::PermissionDenied as u32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);

    // The hops were mTLS: the server proxies counted HTTP/2 over mTLS connections, and the
    // client proxy reports the identity it has and the endpoints' identities.
    let mut mtls_conns = 0;
    for p in &mesh.server_proxies {
        let (_, m) = admin_get(p.admin, "/metrics").await;
        mtls_conns += m.matches("protocol=\"h2+mtls\"").count();
    }
    assert!(mtls_conns >= 1, "no mTLS connection counted");
    let (_, m) = admin_get(mesh.server_proxies[0].admin, "/metrics").await;
    assert!(
        m.contains(&format!("tls=\"true\",peer_identity=\"{CLIENT_ID}\"")),
        "{m}"
    );
    let (_, m) = admin_get(mesh.client.admin, "/metrics").await;
    assert!(
        m.contains(&format!("tls=\"true\",peer_identity=\"{WEB_ID}\"")),
        "{m}"
    );
    let (_, config) = admin_get(mesh.client.admin, "/config").await;
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["identity"], CLIENT_ID);
    let ep = &config["destinations"]["web.default.svc.cluster.local:80"]["rules"][0]["backends"][0]
        ["endpoints"][0];
    assert_eq!(ep["identity"], WEB_ID, "{config}");
    assert_eq!(ep["tls"], true);
}

/// Certificates that live 10 seconds are renewed every ~7 under a steady load, and no request
/// fails across the renewals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_with_no_failed_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    let mesh = Arc::new(Mesh::start_mtls("10s", &[]).await);
    let issued = |mesh: &Mesh| {
        mesh.cp
            .proc
            .log_text()
            .lines()
            .filter(|l| l.contains("certificate issued") && l.contains(CLIENT_ID))
            .count()
    };
    let first = issued(&mesh);
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..3 {
        let (mesh, ok, failed, stop) = (mesh.clone(), ok.clone(), failed.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let client = http1_client();
            while !stop.load(Ordering::Relaxed) {
                match get(&client, mesh.client.outbound, "web", "/").await {
                    Ok(a) if a.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed: {:?}", other.map(|a| (a.status, a.error)));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    // Three renewals of the client's certificate while the load runs. Meanwhile fresh
    // handshakes with a server proxy see its certificate change, and always succeed.
    let anchors = ca_file(&mesh, "trust-anchors.pem");
    let (chain, key) = valid_client_cert(&mesh, CLIENT_ID);
    let config = client_config(&anchors, Some((chain, key)));
    let mut server_certs = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while issued(&mesh) < first + 3 {
        assert!(Instant::now() < deadline, "certificates were not renewed");
        let tcp = tokio::net::TcpStream::connect(mesh.server_proxies[0].inbound)
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from(WEB_DNS).unwrap();
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .expect("a fresh handshake with the server proxy failed");
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        server_certs.insert(leaf);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        server_certs.len() >= 2,
        "the server proxy kept presenting one certificate"
    );
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    eprintln!(
        "{} requests across {} renewals",
        ok.load(Ordering::Relaxed),
        issued(&mesh) - first
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
}

fn policy_yaml(target_kind: &str, target: &str, allowed: &str) -> String {
    format!(
        "apiVersion: pillion.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: web-callers, namespace: default}}\n\
         spec:\n  targetRef: {{kind: {target_kind}, name: {target}}}\n  allow:\n  - identities: [\"{allowed}\"]\n"
    )
}

/// An allowed identity passes; another is refused with 403 (HTTP) or PERMISSION_DENIED (gRPC);
/// plaintext is refused; each policy change applies without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_policies_allow_named_identities_and_change_live() {
    use std::time::{Duration, Instant};
    let mesh = Mesh::start_mtls("1h", &[]).await;
    let out = mesh.client.outbound;
    let client = http1_client();
    let status_until = |want: u16| {
        let client = client.clone();
        async move {
            let deadline = Instant::now() + DEADLINE;
            loop {
                let a = get(&client, out, "web", "/").await.unwrap();
                if a.status == want {
                    return a;
                }
                assert!(
                    Instant::now() < deadline,
                    "never got {want}, last {}",
                    a.status
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    write_config(
        &mesh.path("policy.yaml"),
        &policy_yaml(
            "ServiceAccount",
            "web",
            "spiffe://cluster.local/ns/default/sa/other",
        ),
    );
    let denied = status_until(403).await;
    assert_eq!(denied.error.as_deref(), Some("forbidden"));
    // Every version refuses now (each server proxy got the policy).
    for _ in 0..10 {
        assert_eq!(get(&client, out, "web", "/").await.unwrap().status, 403);
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{out}"))
        .unwrap()
        .origin("http://web:80".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let status = EchoClient::new(channel)
        .hello(HelloRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    // Plaintext straight to a server proxy has no identity: refused too.
    let a = get(&client, mesh.server_proxies[0].inbound, "web", "/")
        .await
        .unwrap();
    assert_eq!(a.status, 403);
    let (_, m) = admin_get(mesh.server_proxies[0].admin, "/metrics").await;
    assert!(
        m.contains("pillion_inbound_denials_total{authorization=\"default/web-callers\"}"),
        "{m}"
    );

    // Allow the client by a wildcard, on the Service this time.
    write_config(
        &mesh.path("policy.yaml"),
        &policy_yaml("Service", "web-v1", "spiffe://cluster.local/ns/default/*"),
    );
    status_until(200).await;
    for _ in 0..10 {
        assert_eq!(get(&client, out, "web", "/").await.unwrap().status, 200);
    }
}

/// The control-plane connection is TLS too: proxies verify the control plane's identity, and
/// the control plane knows each proxy by its certificate (a proxy may not ask for another
/// identity's policy). Plaintext and the wrong identity do not get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_connection_is_tls_and_authenticates_proxies() {
    use pillion_proto::policy::v1::InboundPolicyRequest;
    use pillion_proto::policy::v1::inbound_policy_client::InboundPolicyClient;

    // The whole mesh works with TLS to the control plane (Mesh waits for both versions).
    let mesh = Mesh::start_mtls_opts("1h", &[], &[], true).await;
    let cp = mesh.cp.addr.to_string();

    // Plaintext gRPC to the control plane fails.
    let plain = pillion_proxy::control::discovery::control_plane_channel(&cp, None).unwrap();
    let err = InboundPolicyClient::new(plain)
        .watch(InboundPolicyRequest {
            identity: CLIENT_ID.into(),
            workload: "default/x".into(),
        })
        .await
        .unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);

    // With the client's certificate: its own policy is fine, another identity's is refused.
    let anchors = ca_file(&mesh, "trust-anchors.pem");
    let (chain, key) = valid_client_cert(&mesh, CLIENT_ID);
    let cp_name = rustls_pki_types::ServerName::try_from(
        pillion_proto::names::Identity::from_spiffe_id(CP_ID)
            .unwrap()
            .dns_name(),
    )
    .unwrap();
    let tls = pillion_proxy::control::discovery::ControlPlaneTls {
        config: client_config(&anchors, Some((chain, key))),
        server_name: cp_name.clone(),
        wait_for: None,
    };
    let channel = pillion_proxy::control::discovery::control_plane_channel(&cp, Some(tls)).unwrap();
    let policy_channel = channel.clone();
    let mut policy = InboundPolicyClient::new(channel);
    let mut own = policy
        .watch(InboundPolicyRequest {
            identity: CLIENT_ID.into(),
            workload: "default/client".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(own.message().await.unwrap().is_some());
    let status = policy
        .watch(InboundPolicyRequest {
            identity: WEB_ID.into(),
            workload: "default/web".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    // Discovery on behalf of another namespace is refused too.
    let mut discovery =
        pillion_proto::discovery::v1::discovery_client::DiscoveryClient::new(policy_channel);
    let status = discovery
        .watch(pillion_proto::discovery::v1::WatchRequest {
            authority: "web.default:80".into(),
            source_namespace: "shop".into(),
            source_workload: "shop/x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // A proxy that expects another identity for the control plane never gets connected.
    let token_file = mesh.path("token-client");
    let wrong = start_proxy(
        "wrong-cp",
        mesh.cp.addr,
        "default/client",
        None,
        &[
            identity_env(mesh.dir.path(), "client", &token_file).as_slice(),
            &[(
                "PILLION_CONTROL_PLANE_IDENTITY",
                "spiffe://cluster.local/ns/pillion/sa/impostor".into(),
            )],
        ]
        .concat(),
    );
    wrong.proc.wait_log("the refused handshake", |v| {
        v["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("certificate") || e.contains("NotValidForName"))
    });
    let (status, _) = admin_get(wrong.admin, "/ready").await;
    assert_eq!(status, 503);
}

/// HTTP/1.1 upgrades (WebSocket-style) to meshed endpoints cross on their own HTTP/1.1
/// connection over mTLS, since HTTP/2 cannot carry them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_cross_mtls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mesh = Mesh::start_mtls("1h", &[]).await;
    let mut s = tokio::net::TcpStream::connect(mesh.client.outbound)
        .await
        .unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(
            s.read(&mut b).await.unwrap(),
            1,
            "closed before the 101: {head:?}"
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    s.write_all(b"through the mesh").await.unwrap();
    let mut buf = [0u8; 16];
    tokio::time::timeout(std::time::Duration::from_secs(30), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"through the mesh");
    let mut over_tls = 0;
    for p in &mesh.server_proxies {
        let (_, m) = admin_get(p.admin, "/metrics").await;
        over_tls += m.matches("protocol=\"http/1+mtls\"").count();
    }
    assert_eq!(
        over_tls, 1,
        "the upgrade went over an HTTP/1.1 mTLS connection"
    );
}

/// A sidecar given one CPU (`PILLION_CORES=1`) runs every proxy on a single-threaded runtime:
/// HTTP/1.1, a streamed upload, gRPC and many requests at once still cross mTLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_core_proxies_run_single_threaded_and_carry_every_protocol() {
    let one = [("PILLION_CORES", "1".to_string())];
    let mesh = Mesh::start_mtls_with("1h", &one, &one).await;
    for p in std::iter::once(&mesh.client).chain(&mesh.server_proxies) {
        let log = p
            .proc
            .wait_log("runtime", |v| message_is(v, "runtime started"));
        assert_eq!(log["fields"]["cores"], 1, "{log}");
        assert_eq!(log["fields"]["runtime"], "single-threaded", "{log}");
    }
    let out = mesh.client.outbound;
    let h1 = http1_client();
    assert_echoed(&h1, out, "web", 512 * 1024).await;

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let h1 = h1.clone();
        calls.spawn(async move { get(&h1, out, "web", "/").await.map(|a| a.status) });
    }
    while let Some(status) = calls.join_next().await {
        assert_eq!(status.unwrap().unwrap(), 200);
    }

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{out}"))
        .unwrap()
        .origin("http://web.default:80".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let reply = EchoClient::new(channel)
        .hello(HelloRequest {
            name: "one core".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(reply.get_ref().message.contains("one core"), "{reply:?}");
}
