//! Serving HTTP/2 on one connection: the task that reads and writes the socket, a task per
//! request running the handler, request bodies as `http_body::Body`s, responses streamed from
//! any `http_body::Body` as the peer's windows allow.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame as BodyFrame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn::{Accepted, Config, Conn, ConnError, StreamError};
use crate::frame::{self, Reason, StreamId};

pub use crate::conn::Config as ServerConfig;

/// Stop reading while this much is waiting to be written: a peer that sends PINGs or SETTINGS
/// without reading the answers cannot make us buffer without end.
const WRITE_HIGH_WATER: usize = 1 << 20;
/// What one read asks of the socket.
const READ_SIZE: usize = 16 << 10;

type Shared = Arc<Mutex<Conn>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Conn> {
    // A panic while holding the lock leaves the connection state as it was at the panic;
    // carrying on with it is no worse than failing every stream of the connection.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves one connection until it ends, or until `shutdown` resolves (then gracefully: a
/// GOAWAY, the streams open finish). `keep_alive`: ping the peer this often; one that does not
/// answer within the same time is dropped. `handler` answers one request.
pub async fn serve<I, H, F, B>(
    io: I,
    config: Config,
    keep_alive: Option<Duration>,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ConnError>
where
    I: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Request<RecvBody>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    let shared: Shared = Arc::new(Mutex::new(Conn::server(config)));
    let mut driver = Driver {
        io,
        shared,
        read: BytesMut::with_capacity(READ_SIZE),
        writing: BytesMut::new(),
        preface_seen: false,
        read_closed: false,
        ping: keep_alive.map(|every| (every, Box::pin(tokio::time::sleep(every)), false)),
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let mut shutting_down = false;
    std::future::poll_fn(|cx| {
        if !shutting_down && shutdown.as_mut().poll(cx).is_ready() {
            shutting_down = true;
            lock(&driver.shared).shutdown();
        }
        let result = driver.poll(cx);
        // Requests the frames just read opened.
        loop {
            let Some(a) = lock(&driver.shared).pop_accepted() else {
                break;
            };
            tokio::spawn(stream(driver.shared.clone(), a, handler.clone()));
        }
        result
    })
    .await
}

struct Driver<I> {
    io: I,
    shared: Shared,
    read: BytesMut,
    /// Bytes taken from the connection's buffer, being written.
    writing: BytesMut,
    preface_seen: bool,
    read_closed: bool,
    /// Every so often a PING; `true` while one is unanswered.
    ping: Option<(Duration, Pin<Box<tokio::time::Sleep>>, bool)>,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Driver<I> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        loop {
            let mut progress = false;
            // Read while there is room to answer.
            let backlog = self.writing.len() + lock(&self.shared).out.len();
            if !self.read_closed && backlog < WRITE_HIGH_WATER {
                match self.poll_read(cx) {
                    Poll::Ready(Ok(true)) => progress = true,
                    Poll::Ready(Ok(false)) => self.read_closed = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            self.poll_keep_alive(cx);
            match self.poll_write(cx) {
                Poll::Ready(Ok(wrote)) => progress |= wrote,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            let (done, error) = {
                let mut conn = lock(&self.shared);
                conn.io_waker = Some(cx.waker().clone());
                let pending = !self.writing.is_empty() || !conn.out.is_empty();
                let error = conn.error.clone();
                let over = conn.is_done() || error.is_some() || self.read_closed;
                (over && !pending, error)
            };
            if done {
                // Whatever is left of the streams ends with the connection.
                lock(&self.shared).close(ConnError::Closed);
                let _ = Pin::new(&mut self.io).poll_shutdown(cx);
                return Poll::Ready(match error {
                    Some(ConnError::Local { reason, .. }) if reason == Reason::NO_ERROR => Ok(()),
                    Some(ConnError::Remote(Reason::NO_ERROR)) | None => Ok(()),
                    Some(e) => Err(e),
                });
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// Reads what the socket has and applies the frames in it: `Ok(false)` at its end.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, ConnError>> {
        if self.read.capacity() - self.read.len() < READ_SIZE / 2 {
            self.read.reserve(READ_SIZE);
        }
        let n = {
            let spare = self.read.spare_capacity_mut();
            let mut buf = ReadBuf::uninit(spare);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => buf.filled().len(),
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(false)),
                Poll::Pending => return Poll::Pending,
            }
        };
        if n == 0 {
            return Poll::Ready(Ok(false));
        }
        // SAFETY: `poll_read` initialized the first `n` bytes of the spare capacity.
        unsafe { self.read.set_len(self.read.len() + n) };
        if !self.preface_seen {
            let have = self.read.len().min(frame::PREFACE.len());
            if self.read[..have] != frame::PREFACE[..have] {
                let mut conn = lock(&self.shared);
                return Poll::Ready(Err(
                    conn.fail(Reason::PROTOCOL_ERROR, "not the HTTP/2 preface")
                ));
            }
            if have < frame::PREFACE.len() {
                return Poll::Ready(Ok(true));
            }
            let _ = self.read.split_to(frame::PREFACE.len());
            self.preface_seen = true;
        }
        let mut conn = lock(&self.shared);
        loop {
            match frame::read(&mut self.read, frame::DEFAULT_MAX_FRAME_SIZE) {
                Ok(Some(f)) => conn.recv(f)?,
                Ok(None) => break,
                Err(e) => conn.frame_error(e)?,
            }
        }
        Poll::Ready(Ok(true))
    }

    /// Writes what the connection has queued: `Ok(true)` if anything went.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, ConnError>> {
        let mut wrote = false;
        loop {
            if self.writing.is_empty() {
                let mut conn = lock(&self.shared);
                if conn.out.is_empty() {
                    break;
                }
                // Swap buffers: the connection keeps encoding into the emptied one.
                std::mem::swap(&mut self.writing, &mut conn.out);
            }
            match Pin::new(&mut self.io).poll_write(cx, &self.writing) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.read_closed = true;
                    self.writing.clear();
                    lock(&self.shared).out.clear();
                    return Poll::Ready(Ok(wrote));
                }
                Poll::Ready(Ok(n)) => {
                    let _ = self.writing.split_to(n);
                    if self.writing.is_empty() {
                        self.writing.clear();
                    }
                    wrote = true;
                }
                Poll::Pending => {
                    return match wrote {
                        true => Poll::Ready(Ok(true)),
                        false => Poll::Pending,
                    };
                }
            }
        }
        if wrote {
            let _ = Pin::new(&mut self.io).poll_flush(cx);
        }
        Poll::Ready(Ok(wrote))
    }

    fn poll_keep_alive(&mut self, cx: &mut Context<'_>) {
        let Some((every, sleep, waiting)) = &mut self.ping else {
            return;
        };
        if sleep.as_mut().poll(cx).is_pending() {
            return;
        }
        let mut conn = lock(&self.shared);
        if *waiting && !conn.pong {
            conn.fail(Reason::NO_ERROR, "peer stopped answering pings");
            return;
        }
        conn.pong = false;
        frame::write_ping(&mut conn.out, false, *b"pillion!");
        *waiting = true;
        let deadline = tokio::time::Instant::now() + *every;
        sleep.as_mut().reset(deadline);
        // Registered with the timer again.
        let _ = sleep.as_mut().poll(cx);
    }
}

impl<I> Drop for Driver<I> {
    fn drop(&mut self) {
        // Handlers still waiting on this connection learn that it is gone.
        lock(&self.shared).close(ConnError::Closed);
    }
}

/// One request: its handler, then its response, streamed.
async fn stream<H, F, B>(shared: Shared, accepted: Accepted, handler: H)
where
    H: Fn(Request<RecvBody>) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let Accepted {
        id,
        mut head,
        end_stream,
    } = accepted;
    let wants_continue = head
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if wants_continue {
        // Answered here, when the body is first read; the handler need not know.
        head.headers.remove(http::header::EXPECT);
    }
    let responder = Responder {
        shared: shared.clone(),
        id,
    };
    let body = RecvBody {
        shared,
        id,
        data_done: end_stream,
        wants_continue: wants_continue && !end_stream,
    };
    let response = {
        let mut handled = std::pin::pin!(handler(Request::from_parts(head, body)));
        let answered = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = handled.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            // The client gave up on the request: the handler is dropped (and with it whatever
            // it started upstream).
            match lock(&responder.shared).poll_reset(id, cx) {
                Poll::Ready(_) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match answered {
            Some(r) => r,
            None => return,
        }
    };
    let (parts, body) = response.into_parts();
    let end = body.is_end_stream();
    if lock(&responder.shared)
        .send_headers(id, &parts, end)
        .is_err()
        || end
    {
        return;
    }
    drop(parts);
    send_body(&responder, body).await;
}

/// Streams a response body as the windows allow; a body that fails resets the stream.
async fn send_body<B>(responder: &Responder, body: B)
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let id = responder.id;
    let mut body = std::pin::pin!(body);
    loop {
        let ready =
            std::future::poll_fn(|cx| lock(&responder.shared).poll_send_ready(id, cx)).await;
        if ready.is_err() {
            return;
        }
        let frame = std::future::poll_fn(|cx| {
            if let Poll::Ready(f) = body.as_mut().poll_frame(cx) {
                return Poll::Ready(Some(f));
            }
            match lock(&responder.shared).poll_reset(id, cx) {
                Poll::Ready(_) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        // The body is asked nothing while the lock is held: it may be this very connection's
        // (a handler echoing the request body).
        let end = body.is_end_stream();
        let mut conn = lock(&responder.shared);
        match frame {
            None => return,
            Some(None) => {
                let _ = conn.send_data(id, Bytes::new(), true);
                return;
            }
            Some(Some(Err(_))) => {
                conn.reset_stream(id, Reason::INTERNAL_ERROR);
                return;
            }
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    if conn.send_data(id, data, end).is_err() || end {
                        return;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = conn.send_trailers(id, trailers);
                        return;
                    }
                }
            },
        }
    }
}

/// The response side of a stream: holds it open until dropped.
struct Responder {
    shared: Shared,
    id: StreamId,
}

impl Drop for Responder {
    fn drop(&mut self) {
        lock(&self.shared).drop_ref(self.id);
    }
}

/// A request's body: its data as it arrives (flow-control credit given back as it is read),
/// then its trailers. Asks the client for the body with `100 Continue` when first read, if the
/// client is waiting for one.
pub struct RecvBody {
    shared: Shared,
    id: StreamId,
    data_done: bool,
    wants_continue: bool,
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, StreamError>>> {
        let this = self.get_mut();
        let id = this.id;
        let mut conn = lock(&this.shared);
        if this.wants_continue {
            this.wants_continue = false;
            let mut interim = Response::new(()).into_parts().0;
            interim.status = StatusCode::CONTINUE;
            let _ = conn.send_headers(id, &interim, false);
        }
        if !this.data_done {
            match conn.poll_data(id, cx) {
                Poll::Ready(Some(Ok(data))) => {
                    conn.release(id, data.len() as i64);
                    return Poll::Ready(Some(Ok(BodyFrame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => this.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match conn.poll_trailers(id, cx) {
            Poll::Ready(Ok(Some(t))) => Poll::Ready(Some(Ok(BodyFrame::trailers(t)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.data_done && lock(&self.shared).is_recv_end(self.id)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        lock(&self.shared).drop_ref(self.id);
    }
}

impl std::fmt::Debug for RecvBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBody")
            .field("stream", &self.id)
            .finish()
    }
}
