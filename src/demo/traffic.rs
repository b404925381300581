//! The demo's steady traffic: one loop of HTTP requests to `web` and one of gRPC calls to
//! `echo`, both through the client's proxy, each at its own pace so a slow answer on one does
//! not hold up the other.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pillion_proto::demo::v1::HelloRequest;
use pillion_proto::demo::v1::echo_client::EchoClient;
use serde::Serialize;

/// What one loop's caller saw.
#[derive(Default)]
pub struct Tally {
    sent: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Seen {
    pub sent: u64,
    pub failed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Tally {
    fn record(&self, result: Result<(), String>) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            *self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(e);
        }
    }

    pub fn seen(&self) -> Seen {
        Seen {
            sent: self.sent.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

/// The two loops' tallies; the loops stop when this is dropped.
pub struct Traffic {
    pub http: Arc<Tally>,
    pub grpc: Arc<Tally>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Traffic {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts both loops against the client proxy's outbound port, one request per `interval`
/// each.
pub fn start(outbound: SocketAddr, interval: Duration) -> anyhow::Result<Traffic> {
    let http = Arc::new(Tally::default());
    let grpc = Arc::new(Tally::default());
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{outbound}"))?
        .origin("http://echo.default:80".parse()?)
        .connect_lazy();
    let mut echo = EchoClient::new(channel);
    let tally = http.clone();
    let http_loop = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            tally.record(http_call(&client, outbound).await);
        }
    });
    let tally = grpc.clone();
    let grpc_loop = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            let reply = echo
                .hello(HelloRequest {
                    name: "demo".into(),
                    ..Default::default()
                })
                .await
                .map(drop)
                .map_err(|s| format!("gRPC {:?}: {}", s.code(), s.message()));
            tally.record(reply);
        }
    });
    Ok(Traffic {
        http,
        grpc,
        tasks: vec![http_loop, grpc_loop],
    })
}

async fn http_call(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    outbound: SocketAddr,
) -> Result<(), String> {
    let req = http::Request::get(format!("http://{outbound}/"))
        .header(http::header::HOST, "web")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body.to_bytes()).trim()
        ))
    }
}
