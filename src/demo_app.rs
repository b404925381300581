//! The demo's backend application: one port answering HTTP/1.1, h2c and gRPC, each answer
//! saying which version served it. The tests use it as their server application too.
//!
//! HTTP paths: `/` says hello (a POST echoes its body back, streamed); `/slow?ms=N` answers after
//! N milliseconds; `/status/N` answers with status N; `/headers` lists the request headers;
//! an `Upgrade` request is accepted and then echoes bytes (a WebSocket-shaped tunnel).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pillion_proto::demo::v1::echo_server::{Echo, EchoServer};
use pillion_proto::demo::v1::{HelloReply, HelloRequest};
use tokio::net::TcpListener;
use tonic::codegen::Service;

/// Requests to `/slow` being answered right now, in this process (tests wait on it).
static SLOW_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

pub fn slow_in_flight() -> usize {
    SLOW_IN_FLIGHT.load(Ordering::SeqCst)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

#[derive(Clone)]
struct EchoImpl {
    version: String,
}

#[tonic::async_trait]
impl Echo for EchoImpl {
    async fn hello(
        &self,
        request: tonic::Request<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        let req = request.into_inner();
        if req.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(req.delay_ms))).await;
        }
        if req.fail_with != 0 {
            let code = tonic::Code::from(req.fail_with as i32);
            return Err(tonic::Status::new(
                code,
                format!("failed as asked by {}", req.name),
            ));
        }
        let mut resp = tonic::Response::new(HelloReply {
            message: format!("hello {} from {}", req.name, self.version),
            version: self.version.clone(),
            payload: req.payload,
        });
        resp.metadata_mut().insert(
            "x-version",
            self.version
                .parse()
                .unwrap_or_else(|_| "unknown".parse().expect("ascii")),
        );
        Ok(resp)
    }

    type ChatStream = Pin<Box<dyn Stream<Item = Result<HelloReply, tonic::Status>> + Send>>;

    async fn chat(
        &self,
        request: tonic::Request<tonic::Streaming<HelloRequest>>,
    ) -> Result<tonic::Response<Self::ChatStream>, tonic::Status> {
        let version = self.version.clone();
        // A message with `fail_with` ends the stream with that status (in the trailers).
        let stream = request.into_inner().map(move |msg| match msg {
            Ok(m) if m.fail_with != 0 => Err(tonic::Status::new(
                tonic::Code::from(m.fail_with as i32),
                format!("stream failed as asked by {}", m.name),
            )),
            Ok(m) => Ok(HelloReply {
                message: format!("hello {} from {}", m.name, version),
                version: version.clone(),
                payload: m.payload,
            }),
            Err(e) => Err(e),
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

fn text(status: StatusCode, version: &str, body: String) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    if let Ok(v) = version.parse() {
        resp.headers_mut().insert("x-version", v);
    }
    resp
}

async fn handle(
    mut req: Request<Incoming>,
    version: String,
    grpc: EchoServer<EchoImpl>,
) -> Response<Body> {
    if req.uri().path().starts_with("/pillion.demo.v1.Echo/") {
        let mut grpc = grpc;
        return match grpc.call(req).await {
            Ok(resp) => resp.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()),
            Err(never) => match never {},
        };
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    if req.headers().contains_key(http::header::UPGRADE) {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut resp = text(StatusCode::SWITCHING_PROTOCOLS, &version, String::new());
        resp.headers_mut().insert(
            http::header::UPGRADE,
            http::HeaderValue::from_static("echo"),
        );
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        return resp;
    }
    if path == "/slow" {
        let ms = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        SLOW_IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        SLOW_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        return text(
            StatusCode::OK,
            &version,
            format!("slow hello from {version}\n"),
        );
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        return text(
            status,
            &version,
            format!("status {status} from {version}\n"),
        );
    }
    if path == "/headers" {
        let mut lines: Vec<String> = req
            .headers()
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
            .collect();
        lines.sort();
        return text(StatusCode::OK, &version, lines.join("\n") + "\n");
    }
    if req.method() == http::Method::POST {
        let mut resp = Response::new(
            req.into_body()
                .map_err(|e| -> BoxError { Box::new(e) })
                .boxed_unsync(),
        );
        if let Ok(v) = version.parse() {
            resp.headers_mut().insert("x-version", v);
        }
        return resp;
    }
    text(StatusCode::OK, &version, format!("hello from {version}\n"))
}

/// Serves the demo application on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, version: String) {
    let grpc = EchoServer::new(EchoImpl {
        version: version.clone(),
    })
    .max_decoding_message_size(64 << 20)
    .max_encoding_message_size(64 << 20);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let version = version.clone();
        let grpc = grpc.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let version = version.clone();
                let grpc = grpc.clone();
                async move { Ok::<_, Infallible>(handle(req, version, grpc).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Binds `addr` and serves there in the background; returns the bound address.
pub async fn spawn(
    addr: SocketAddr,
    version: &str,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((bound, tokio::spawn(serve(listener, version.to_string()))))
}
