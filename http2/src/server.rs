//! Serving HTTP/2 on one connection: the task that reads and writes the socket, a task per
//! request running the handler, request bodies as `http_body::Body`s, responses streamed from
//! any `http_body::Body` as the peer's windows allow.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::conn::{Accepted, Config, Conn, ConnError};
use crate::frame::Reason;
use crate::io::{Driver, Shared, lock};
pub use crate::stream::RecvBody;
use crate::stream::{StreamRef, send_body};

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
    let mut driver = Driver::new(io, Conn::server(config), true, keep_alive);
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
            // Boxed: tokio copies a task's whole future into its cell when it is spawned, and
            // its whole cell again when the task finishes and when its output is taken; this
            // one (~750 bytes: the request's head until the handler has it) would be copied
            // three times a request.
            tokio::spawn(Box::pin(stream(driver.shared.clone(), a, handler.clone())));
        }
        result
    })
    .await
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
    let head_request = head.method == http::Method::HEAD;
    // Two handles, as `pop_accepted` counted: the response side and the request body.
    let responder = StreamRef {
        shared: shared.clone(),
        id,
    };
    let body = RecvBody::new(
        StreamRef { shared, id },
        end_stream,
        wants_continue && !end_stream,
    );
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
    let (mut parts, body) = response.into_parts();
    let end = without_content(head_request, &mut parts) || body.is_end_stream();
    if lock(&responder.shared)
        .send_headers(id, &parts, end)
        .is_err()
        || end
    {
        return;
    }
    drop(parts);
    send_body(&responder, body, Reason::INTERNAL_ERROR).await;
}

/// Whether a response has no content whatever body it was given: a response to HEAD, a 204
/// or a 304 (RFC 9110 §6.4.1). Its HEADERS then ends the stream, as clients require (nghttp2,
/// so curl, resets a HEAD response followed by even an empty DATA frame); a 204 loses its
/// Content-Length, which it must not carry (§8.6). For a proxied response whose body has not
/// ended yet, or an application's mistake.
pub fn without_content(head_request: bool, parts: &mut http::response::Parts) -> bool {
    match parts.status {
        StatusCode::NO_CONTENT => {
            parts.headers.remove(http::header::CONTENT_LENGTH);
            true
        }
        StatusCode::NOT_MODIFIED => true,
        _ => head_request,
    }
}
