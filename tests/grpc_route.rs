//! Gateway API GRPCRoute end to end: the real control plane and proxies, tonic clients calling
//! the demo app's `pillion.demo.v1.Echo` through the client proxy.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pillion_proto::demo::v1::HelloRequest;
use pillion_proto::demo::v1::echo_client::EchoClient;
use tonic::transport::Channel;

/// Service `web` routed by its gRPC methods: `Hello` from gold callers to v2 (marked by a
/// response header), every other `Echo` call to v1, and a method-only rule for `Chat` to v2 that
/// the service rule outranks (GRPCRoute precedence: characters of the service first); lost
/// callers to a Service that does not exist.
const ROUTE: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo-methods, namespace: default}
spec:
  parentRefs: [{group: '', kind: Service, name: web, port: 80}]
  rules:
  - matches:
    - method: {type: RegularExpression, method: 'Ch.*'}
    backendRefs: [{name: web-v2, port: 80}]
  - matches:
    - method: {service: pillion.demo.v1.Echo}
    backendRefs: [{name: web-v1, port: 80}]
  - matches:
    - method: {service: pillion.demo.v1.Echo, method: Hello}
      headers: [{name: x-tier, value: gold}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-routed-by, value: grpcroute}]}
    backendRefs: [{name: web-v2, port: 80}]
  - matches:
    - method: {service: pillion.demo.v1.Echo, method: Hello}
      headers: [{name: x-tier, value: lost}]
    backendRefs: [{name: web-v9, port: 80}]
";

async fn hello(client: &mut EchoClient<Channel>, gold: bool) -> (String, Option<String>) {
    let mut req = tonic::Request::new(HelloRequest {
        name: "route".into(),
        ..Default::default()
    });
    if gold {
        req.metadata_mut().insert("x-tier", "gold".parse().unwrap());
    }
    let reply = client.hello(req).await.unwrap();
    let header = |name: &str| {
        reply
            .metadata()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    (
        header("x-version").unwrap_or_default(),
        header("x-routed-by"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_follow_a_grpcroute_by_service_method_and_header() {
    let mesh = Mesh::start(1, 1).await;
    let mut client = grpc_client(&mesh).await;
    write_config(&mesh.path("route.yaml"), ROUTE);

    // The route is in force once a gold Hello comes back marked.
    let deadline = Instant::now() + DEADLINE;
    while hello(&mut client, true).await.1.is_none() {
        assert!(Instant::now() < deadline, "the GRPCRoute never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..10 {
        assert_eq!(
            hello(&mut client, true).await,
            ("v2".into(), Some("grpcroute".into()))
        );
        assert_eq!(hello(&mut client, false).await, ("v1".into(), None));
    }

    // Chat matches both the method-only expression and the service rule: the service wins.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(HelloRequest::default()).await.unwrap();
    drop(tx);
    let mut replies = client
        .chat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    assert_eq!(reply.version, "v1");

    // A backend that does not exist: UNAVAILABLE, as GRPCRoute says (HTTPRoute's 500 would be
    // INTERNAL).
    let mut req = tonic::Request::new(HelloRequest::default());
    req.metadata_mut().insert("x-tier", "lost".parse().unwrap());
    let status = client.hello(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    // A call of a service no rule names matches nothing: UNIMPLEMENTED, from the proxy.
    let mut grpc = tonic::client::Grpc::new(client_channel(&mesh).await);
    grpc.ready().await.unwrap();
    let status = grpc
        .unary::<HelloRequest, pillion_proto::demo::v1::HelloReply, _>(
            tonic::Request::new(HelloRequest::default()),
            "/other.v1.Thing/Hello".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");

    // A broken edit is refused, naming the GRPCRoute's own field, and the route stays.
    write_config(
        &mesh.path("route.yaml"),
        &ROUTE.replace("service: pillion.demo.v1.Echo}", "service: pillion/demo}"),
    );
    let refused = mesh.cp.proc.wait_log("the broken GRPCRoute refused", |v| {
        v.to_string()
            .contains("spec.rules[1].matches[0].method.service")
    });
    assert!(
        refused
            .to_string()
            .contains("route.yaml:11: GRPCRoute/echo-methods: "),
        "{refused}"
    );
    for _ in 0..5 {
        assert_eq!(hello(&mut client, false).await, ("v1".into(), None));
    }
}

async fn client_channel(mesh: &Mesh) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.client.outbound))
        .unwrap()
        .origin("http://web.default.svc.cluster.local:80".parse().unwrap())
        .connect()
        .await
        .unwrap()
}
