//! `pillion-grpc-load`: unary gRPC calls (`pillion.demo.v1.Echo/Hello`) against a proxy or a
//! backend, for `benches/compare.py`.
//!
//! Closed loop (`--rate 0`, the default): `--connections` HTTP/2 connections, each with
//! `--streams` calls in flight at all times, for `--duration`: the saturation figure.
//! Open loop (`--rate N`): N calls per second in all, spread evenly over time and connections
//! (a slow answer does not delay the next call), each timed from when it was sent, as
//! `h2load --rps` times its requests.
//!
//! Prints one JSON object: calls that succeeded and failed, calls per second, latency
//! percentiles in milliseconds, the answering versions (`v1`, `v2`) and the errors seen.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use pillion_proto::demo::v1::HelloRequest;
use pillion_proto::demo::v1::echo_client::EchoClient;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
#[command(name = "pillion-grpc-load", version, about)]
struct Args {
    /// Where to connect (host:port).
    #[arg(long)]
    addr: SocketAddr,
    /// The `:authority` the calls carry: the mesh routes on it.
    #[arg(long, default_value = "web")]
    authority: String,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 10)]
    connections: usize,
    /// Calls in flight per connection (closed loop only).
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// How long to send calls.
    #[arg(long, value_parser = pillion_core::duration::parse, default_value = "5s")]
    duration: Duration,
    /// Calls per second in all, spread evenly (open loop); 0 for a closed loop.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Bytes of payload in each request.
    #[arg(long, default_value_t = 0)]
    payload: usize,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// What every call reports.
#[derive(Default)]
struct Tally {
    /// Latency of each successful call, microseconds.
    latencies: Vec<u32>,
    versions: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn record(
        &mut self,
        result: Result<tonic::Response<pillion_proto::demo::v1::HelloReply>, tonic::Status>,
        took: Duration,
    ) {
        match result {
            Ok(reply) => {
                self.latencies
                    .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                *self.versions.entry(reply.into_inner().version).or_default() += 1;
            }
            Err(status) => {
                *self
                    .errors
                    .entry(format!("{:?}: {}", status.code(), status.message()))
                    .or_default() += 1;
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        for (k, v) in other.versions {
            *self.versions.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let endpoint = Endpoint::from_shared(format!("http://{}", args.addr))?
        .origin(format!("http://{}", args.authority).parse()?)
        .tcp_nodelay(true);
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections.max(1) {
        // One `connect` per client: each is its own HTTP/2 connection.
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", args.addr))?;
        clients.push(EchoClient::new(channel));
    }
    let request = HelloRequest {
        name: "bench".into(),
        payload: vec![b'x'; args.payload],
        ..Default::default()
    };
    let started = Instant::now();
    let tally = if args.rate == 0 {
        closed_loop(
            &clients,
            args.streams.max(1),
            &request,
            started + args.duration,
        )
        .await
    } else {
        open_loop(&clients, args.rate, &request, args.duration).await
    };
    let seconds = started.elapsed().as_secs_f64();
    print_summary(tally, seconds, args.rate);
    Ok(())
}

/// `streams` calls in flight on every connection until `until`.
async fn closed_loop(
    clients: &[EchoClient<Channel>],
    streams: usize,
    request: &HelloRequest,
    until: Instant,
) -> Tally {
    let mut tasks = Vec::new();
    for client in clients {
        for _ in 0..streams {
            let mut client = client.clone();
            let request = request.clone();
            tasks.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                while Instant::now() < until {
                    let t0 = Instant::now();
                    let result = client.hello(request.clone()).await;
                    tally.record(result, t0.elapsed());
                }
                tally
            }));
        }
    }
    let mut total = Tally::default();
    for task in tasks {
        if let Ok(t) = task.await {
            total.merge(t);
        }
    }
    total
}

/// `rate` calls per second for `duration`.
async fn open_loop(
    clients: &[EchoClient<Channel>],
    rate: u64,
    request: &HelloRequest,
    duration: Duration,
) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0u64;
    let mut calls = Vec::new();
    while sent < total {
        tick.tick().await;
        // Every call due by now (the timer's resolution is a millisecond; 2,000/s is 2 per tick).
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            let mut client = clients[(sent as usize) % clients.len()].clone();
            let request = request.clone();
            let tally = tally.clone();
            let at = Instant::now();
            calls.push(tokio::spawn(async move {
                let result = client.hello(request).await;
                let took = at.elapsed();
                tally
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record(result, took);
            }));
            sent += 1;
        }
    }
    for call in calls {
        let _ = call.await;
    }
    let mut tally = tally.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::take(&mut *tally)
}

fn print_summary(mut tally: Tally, seconds: f64, rate: u64) {
    tally.latencies.sort_unstable();
    let pick = |q: f64| -> Option<f64> {
        let n = tally.latencies.len();
        (n > 0).then(|| f64::from(tally.latencies[((q * n as f64) as usize).min(n - 1)]) / 1000.0)
    };
    let ok = tally.latencies.len() as u64;
    let failed: u64 = tally.errors.values().sum();
    let summary = serde_json::json!({
        "mode": if rate == 0 { "closed" } else { "open" },
        "ok": ok,
        "failed": failed,
        "seconds": seconds,
        "rps": ok as f64 / seconds,
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "p999_ms": pick(0.999),
        "versions": tally.versions,
        "errors": tally.errors,
    });
    println!("{summary}");
}
