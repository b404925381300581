//! Which protocol the local application speaks, when neither discovery (an `appProtocol`
//! hint) nor the request decides it: an HTTP/2 caller (not gRPC) of an application that may
//! speak only HTTP/1.1. One probe per application port says it, remembered for a while.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http::pool::Protocol;

/// A probe's answer holds this long (an application may be redeployed with another server).
const REMEMBER: Duration = Duration::from_secs(60);
/// How long the application gets to answer the probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The HTTP/2 connection preface and an empty SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[derive(Default)]
pub struct AppProtocols {
    known: Mutex<HashMap<SocketAddr, (Protocol, Instant)>>,
}

impl AppProtocols {
    /// The protocol the application at `addr` speaks: HTTP/2 when it answers the HTTP/2
    /// preface with a SETTINGS frame (h2c with prior knowledge), HTTP/1.1 otherwise.
    pub async fn of(&self, addr: SocketAddr, connect_timeout: Duration) -> Protocol {
        if let Some((p, at)) = lock(&self.known).get(&addr)
            && at.elapsed() < REMEMBER
        {
            return *p;
        }
        let Some(protocol) = probe(addr, connect_timeout).await else {
            // Unreachable: the request fails on its own; nothing to remember.
            return Protocol::Http1;
        };
        tracing::debug!(%addr, ?protocol, "application protocol detected");
        let mut known = lock(&self.known);
        if known.len() > 1024 {
            known.clear();
        }
        known.insert(addr, (protocol, Instant::now()));
        protocol
    }
}

async fn probe(addr: SocketAddr, connect_timeout: Duration) -> Option<Protocol> {
    let mut stream = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let answer = async {
        stream.write_all(PREFACE).await?;
        let mut head = [0u8; 9];
        let mut read = 0;
        while read < head.len() {
            let n = stream.read(&mut head[read..]).await?;
            if n == 0 {
                break;
            }
            read += n;
        }
        Ok::<_, std::io::Error>((head, read))
    };
    Some(match tokio::time::timeout(PROBE_TIMEOUT, answer).await {
        // A frame header whose type is SETTINGS (4) on stream 0.
        Ok(Ok((head, 9))) if head[3] == 4 && head[5..9] == [0, 0, 0, 0] => Protocol::Http2,
        _ => Protocol::Http1,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
