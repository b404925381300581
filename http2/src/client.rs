//! Sending requests on one HTTP/2 connection: `handshake` gives a `SendRequest` (cloned by
//! every caller sharing the connection) and the `Connection` future that reads and writes the
//! socket (to be spawned). A request is sent from the caller's own task: its HEADERS is
//! encoded into the connection's write buffer at once, its body streams from any
//! `http_body::Body`, and the response's head and body are read the same way.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::conn::{Config, Conn, ConnError, StreamError};
use crate::frame::Reason;
use crate::io::{Driver, Shared, lock};
pub use crate::stream::RecvBody;
use crate::stream::{StreamRef, send_body};

/// Starts a client connection on `io` (the preface and SETTINGS are queued; nothing waits
/// for the server's). `keep_alive`: ping the server this often; one that does not answer
/// within the same time is dropped.
pub fn handshake<I>(
    io: I,
    config: Config,
    keep_alive: Option<Duration>,
) -> (SendRequest, Connection<I>)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let driver = Driver::new(io, Conn::client(config), false, keep_alive);
    let shared = driver.shared.clone();
    lock(&shared).senders += 1;
    (SendRequest { shared }, Connection { driver })
}

/// The connection's own work: to be spawned. Ends when the connection does: closed by the
/// server, failed, or with every `SendRequest` dropped and no stream left.
pub struct Connection<I> {
    driver: Driver<I>,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Future for Connection<I> {
    type Output = Result<(), ConnError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.driver.poll(cx)
    }
}

/// Sends requests on the connection; cloned for every caller sharing it.
pub struct SendRequest {
    shared: Shared,
}

impl Clone for SendRequest {
    fn clone(&self) -> Self {
        lock(&self.shared).senders += 1;
        SendRequest {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for SendRequest {
    fn drop(&mut self) {
        let mut conn = lock(&self.shared);
        conn.senders -= 1;
        if conn.senders == 0 {
            // The connection may be done: let its task look.
            conn.wake_io();
        }
    }
}

impl std::fmt::Debug for SendRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendRequest").finish_non_exhaustive()
    }
}

impl SendRequest {
    /// Waits for room under the server's limit on open streams. An error: the connection
    /// takes no new stream (closed, going away, or out of stream ids); a request not sent yet
    /// can go on another connection.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        lock(&self.shared).poll_ready(cx)
    }

    pub async fn ready(&mut self) -> Result<(), ConnError> {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await
    }

    /// True once the connection takes no new stream.
    pub fn is_closed(&self) -> bool {
        lock(&self.shared).can_open().is_err()
    }

    /// Whether a request sent now gets a stream at once (`Ok(false)`: only when one of the
    /// streams open ends; `Err`: never, the connection takes no new stream).
    pub fn has_room(&self) -> Result<bool, ConnError> {
        lock(&self.shared).can_open()
    }

    /// True while no stream is open on the connection.
    pub fn is_idle(&self) -> bool {
        lock(&self.shared).open_streams() == 0
    }

    /// The server's limit on concurrent streams (presumed until its SETTINGS arrive).
    pub fn max_streams(&self) -> usize {
        lock(&self.shared).peer_max_streams()
    }

    /// Presumes the server allows `n` concurrent streams until its SETTINGS say: for a
    /// connection opened because another to the same server is at that server's limit.
    pub fn presume_max_streams(&self, n: usize) {
        lock(&self.shared).presume_peer_max_streams(n);
    }

    /// Sends `req`: its HEADERS now (END_STREAM if its body is empty), its body as the
    /// server's windows allow, from the returned future until the response's head arrives and
    /// from a task of its own after that if there is more. A body that fails resets the
    /// stream with CANCEL.
    pub fn send_request<B>(&mut self, req: Request<B>) -> Result<ResponseFuture, ConnError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let (head, body) = req.into_parts();
        self.send(&head.method, &head.uri, &head.headers, body)
    }

    /// Sends a request made of a borrowed head and `body` (as `send_request`): a caller that
    /// keeps the head can send the request again when the server refuses it.
    pub fn send<B>(
        &mut self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: B,
    ) -> Result<ResponseFuture, ConnError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let end = body.is_end_stream();
        let id = lock(&self.shared).open(method, uri, headers, end, if end { 1 } else { 2 })?;
        let stream = StreamRef {
            shared: self.shared.clone(),
            id,
        };
        let pump = (!end).then(|| {
            let sender = StreamRef {
                shared: self.shared.clone(),
                id,
            };
            Box::pin(pump(sender, body)) as Pump
        });
        Ok(ResponseFuture {
            stream: Some(stream),
            pump,
        })
    }
}

/// Streams a request body, holding its own handle on the stream.
async fn pump<B>(sender: StreamRef, body: B)
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    send_body(&sender, body, Reason::CANCEL).await;
}

type Pump = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The response to a request: its head, then its body as a `RecvBody`.
pub struct ResponseFuture {
    stream: Option<StreamRef>,
    pump: Option<Pump>,
}

impl Future for ResponseFuture {
    type Output = Result<Response<RecvBody>, StreamError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The body goes up beside the wait for the response (a server may answer first).
        if let Some(pump) = self.pump.as_mut()
            && pump.as_mut().poll(cx).is_ready()
        {
            self.pump = None;
        }
        let Some(stream) = self.stream.as_ref() else {
            return Poll::Ready(Err(StreamError::Connection(ConnError::Closed)));
        };
        let head = match lock(&stream.shared).poll_response(stream.id, cx) {
            Poll::Ready(Ok(head)) => head,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        // The rest of the request body, if any, on a task of its own.
        if let Some(pump) = self.pump.take() {
            tokio::spawn(pump);
        }
        let Some(stream) = self.stream.take() else {
            return Poll::Ready(Err(StreamError::Connection(ConnError::Closed)));
        };
        Poll::Ready(Ok(Response::from_parts(
            head,
            RecvBody::new(stream, false, false),
        )))
    }
}
