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
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 253) as u8).collect();
    let a = request(
        &h1,
        out,
        http::Request::builder().method("POST"),
        "web",
        "/echo",
        Bytes::from(payload.clone()),
    )
    .await
    .unwrap();
    assert!(a.body == payload);

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
    let (_, config) = admin_get(mesh.client.admin, "/config").await;
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["identity"], CLIENT_ID);
    let ep = &config["destinations"]["web.default.svc.cluster.local:80"]["rules"][0]["backends"][0]
        ["endpoints"][0];
    assert_eq!(ep["identity"], WEB_ID, "{config}");
    assert_eq!(ep["tls"], true);
}
