//! A request body that can be sent more than once, for retries. The client's body is streamed
//! to the first attempt as it arrives (nothing waits for the whole body), and what was read is
//! kept, up to a limit, so that a later attempt sends it again and then goes on reading the
//! client's body where the earlier attempt left off. Past the limit nothing is kept and the
//! request can no longer be retried.
//!
//! What every replay keeps counts against one budget per process ([`Budget`]): a body that
//! would go over it is not kept (its request can then not be sent again), so that many large
//! bodies in flight at once cannot exhaust the proxy.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::http::body::{Body, BoxError};

/// Bytes kept by the replays of one process, and the most they may be.
pub struct Budget {
    used: AtomicUsize,
    max: usize,
}

/// The proxy's: 16 MiB, as many 1 MiB bodies as a sidecar should hold for resending at once
/// (the proxy's own memory is ~5 MB idle).
pub static BUDGET: Budget = Budget::new(16 << 20);

impl Budget {
    pub const fn new(max: usize) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes `n` bytes, if they are there.
    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&total| total <= self.max)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }

    /// Bytes kept now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// `pillion_request_body_kept_bytes`, read from [`BUDGET`] when scraped (nothing is added to
/// the request path to count it).
#[derive(Debug)]
pub struct KeptCollector;

impl prometheus_client::collector::Collector for KeptCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let m = prometheus_client::metrics::gauge::ConstGauge::new(BUDGET.used() as i64);
        m.encode(encoder.encode_descriptor(
            "request_body_kept_bytes",
            "Request body bytes kept to send them again (refused or retried requests whose response has not started), at most 16 MiB a proxy",
            None,
            m.metric_type(),
        )?)
    }
}

/// The client's body and what has been read from it, shared by the attempts.
pub struct Replay {
    shared: Arc<Mutex<Shared>>,
}

struct Shared {
    /// The client's body, until it has ended.
    source: Option<Body>,
    /// What was read, in order (empty once `capped`).
    chunks: Vec<Bytes>,
    kept: usize,
    trailers: Option<HeaderMap>,
    /// More than `max` bytes were read: nothing is kept, no new attempt can start.
    capped: bool,
    /// Reading the client's body failed: no new attempt either.
    failed: bool,
    max: usize,
    /// Where `kept` is counted while chunks are kept.
    budget: &'static Budget,
    /// The attempt whose body may read from the client; older ones stop.
    current: u32,
    hint: SizeHint,
}

impl Shared {
    /// Keeps `data` if it stays within this body's limit and the process's budget; else stops
    /// keeping for good.
    fn keep(&mut self, data: &Bytes) -> bool {
        if self.capped {
            return false;
        }
        let total = self.kept + data.len();
        if total > self.max || !self.budget.take(data.len()) {
            self.let_go();
            return false;
        }
        self.kept = total;
        self.chunks.push(data.clone());
        true
    }

    /// Nothing is kept from now on; what was is freed and given back to the budget.
    fn let_go(&mut self) {
        self.capped = true;
        self.chunks = Vec::new();
        self.budget.give(std::mem::take(&mut self.kept));
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.budget.give(self.kept);
    }
}

impl Replay {
    /// Wraps the client's body, keeping at most `max` bytes (and what the budget allows).
    pub fn new(source: Body, max: usize) -> Replay {
        Replay::budgeted(source, max, &BUDGET)
    }

    fn budgeted(source: Body, max: usize, budget: &'static Budget) -> Replay {
        let hint = source.size_hint();
        let ended = source.is_end_stream();
        Replay {
            shared: Arc::new(Mutex::new(Shared {
                source: (!ended).then_some(source),
                chunks: Vec::new(),
                kept: 0,
                trailers: None,
                capped: false,
                failed: false,
                max,
                budget,
                current: 0,
                hint,
            })),
        }
    }

    /// `Replay::new` for a body whose `first` frame was already read from it. That frame is
    /// sent by the first attempt even when it alone is over `max`.
    pub fn started(first: Frame<Bytes>, source: Body, max: usize) -> Replay {
        Replay::started_budgeted(first, source, max, &BUDGET)
    }

    fn started_budgeted(
        first: Frame<Bytes>,
        source: Body,
        max: usize,
        budget: &'static Budget,
    ) -> Replay {
        let replay = Replay::budgeted(source, max, budget);
        {
            let mut s = replay.lock();
            match first.into_data() {
                Ok(data) => {
                    if !s.keep(&data) {
                        // Held (uncounted: it goes once the first attempt sent it) all the
                        // same, for the first attempt to send.
                        s.chunks.push(data);
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        s.trailers = Some(trailers);
                        s.source = None;
                    }
                }
            }
        }
        replay
    }

    /// A body whose reading failed with `error`: an attempt sends that failure, and no other
    /// attempt can start.
    pub fn failed(error: BoxError) -> Replay {
        let failing =
            http_body_util::StreamBody::new(futures_util::stream::iter([Err::<
                Frame<Bytes>,
                BoxError,
            >(error)]));
        Replay::new(crate::http::body::boxed(failing), 0)
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        lock(&self.shared)
    }

    /// Whether another attempt can still send the whole body.
    pub fn can_replay(&self) -> bool {
        let s = self.lock();
        !s.capped && !s.failed
    }

    /// No more attempts will start (the response has begun): what was kept is let go once the
    /// current attempt has sent it, and nothing more is kept.
    pub fn stop_keeping(&self) {
        self.lock().capped = true;
    }

    /// The body for a new attempt; earlier attempts' bodies stop reading from the client.
    pub fn attempt(&self) -> ReplayBody {
        let mut s = self.lock();
        s.current = s.current.wrapping_add(1);
        ReplayBody {
            shared: self.shared.clone(),
            attempt: s.current,
            pos: 0,
            trailers_sent: false,
        }
    }
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// One attempt's view of the body.
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    attempt: u32,
    /// The next kept chunk to send.
    pos: usize,
    trailers_sent: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("request body superseded by a retry")]
struct Superseded;

impl HttpBody for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut s = lock(&this.shared);
        if s.current != this.attempt {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        if let Some(chunk) = s.chunks.get(this.pos) {
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        if s.capped && !s.chunks.is_empty() {
            // Every kept chunk is sent and no attempt will follow.
            s.let_go();
        }
        let Some(source) = s.source.as_mut() else {
            // The client's body has ended: its trailers, if any, then the end.
            if !this.trailers_sent
                && let Some(t) = &s.trailers
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
            }
            return Poll::Ready(None);
        };
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.source = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                s.failed = true;
                s.source = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        if s.keep(&data) {
                            this.pos = s.chunks.len();
                        }
                        if s.source.as_ref().is_some_and(|b| b.is_end_stream()) {
                            // Said now, so that this frame goes out as the body's last (a
                            // DATA frame with END_STREAM, not another, empty one).
                            s.source = None;
                        }
                        Frame::data(data)
                    }
                    Err(frame) => {
                        if let Some(t) = frame.trailers_ref() {
                            s.trailers = Some(t.clone());
                            s.source = None;
                            this.trailers_sent = true;
                        }
                        frame
                    }
                };
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = lock(&self.shared);
        if self.pos < s.chunks.len() {
            return false;
        }
        match &s.source {
            Some(source) => source.is_end_stream(),
            None => s.trailers.is_none() || self.trailers_sent,
        }
    }

    fn size_hint(&self) -> SizeHint {
        lock(&self.shared).hint
    }
}

/// Where each attempt's request comes from: the request itself, once (no retry policy), or a
/// copy of its head with a replay of its body (boxed: the enum is in every request's future,
/// and most requests have no retry policy).
pub enum Attempts {
    Once(Option<super::BoxRequest>),
    Replay(Box<Replayable>),
}

/// A request's head, copied for each attempt, and its body's replay.
pub struct Replayable {
    head: http::request::Parts,
    body: Replay,
}

impl Attempts {
    pub fn replay(req: http::Request<Body>, max_body: usize) -> Attempts {
        let (head, body) = req.into_parts();
        Attempts::Replay(Box::new(Replayable {
            head,
            body: Replay::new(body, max_body),
        }))
    }

    /// The request for the next attempt; `None` once a request sent once is gone.
    pub fn next_request(&mut self) -> Option<super::BoxRequest> {
        match self {
            Attempts::Once(req) => req.take(),
            Attempts::Replay(r) => {
                let mut req = http::Request::new(http_body_util::combinators::UnsyncBoxBody::new(
                    r.body.attempt(),
                ));
                *req.method_mut() = r.head.method.clone();
                *req.uri_mut() = r.head.uri.clone();
                *req.version_mut() = r.head.version;
                *req.headers_mut() = r.head.headers.clone();
                Some(Box::new(req))
            }
        }
    }

    /// A request that reached no endpoint, for the next attempt.
    pub fn give_back(&mut self, req: super::BoxRequest) {
        if let Attempts::Once(slot) = self {
            *slot = Some(req);
        }
    }

    pub fn can_replay(&self) -> bool {
        match self {
            Attempts::Once(_) => false,
            Attempts::Replay(r) => r.body.can_replay(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A client body that sends `parts` one frame at a time, then trailers.
    fn client(parts: &[&'static str], trailers: bool) -> Body {
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from(*p))))
            .collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_static("0"));
            frames.push(Ok(Frame::trailers(t)));
        }
        crate::http::body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    }

    async fn read(body: ReplayBody) -> (Vec<u8>, Option<HeaderMap>) {
        let collected = body.collect().await.expect("body");
        let trailers = collected.trailers().cloned();
        (collected.to_bytes().to_vec(), trailers)
    }

    #[tokio::test]
    async fn a_retry_sends_the_same_bytes_and_trailers() {
        let replay = Replay::new(client(&["he", "llo"], true), 1024);
        let first = read(replay.attempt()).await;
        assert_eq!(first.0, b"hello");
        assert!(replay.can_replay());
        let second = read(replay.attempt()).await;
        assert_eq!(second, first);
        assert!(second.1.is_some());
    }

    #[tokio::test]
    async fn a_retry_after_a_partial_read_goes_on_from_the_client() {
        let replay = Replay::new(client(&["a", "b", "c"], false), 1024);
        let mut first = replay.attempt();
        let frame = first.frame().await.expect("frame").expect("ok");
        assert_eq!(frame.into_data().ok().as_deref(), Some(&b"a"[..]));
        let second = replay.attempt();
        // The superseded attempt stops; the new one gets everything.
        assert!(first.frame().await.expect("frame").is_err());
        assert_eq!(read(second).await.0, b"abc");
    }

    #[tokio::test]
    async fn past_the_limit_nothing_is_kept_but_the_body_still_streams() {
        let replay = Replay::new(client(&["0123", "4567"], false), 6);
        assert_eq!(read(replay.attempt()).await.0, b"01234567");
        assert!(!replay.can_replay());
    }

    #[tokio::test]
    async fn an_attempt_replaying_when_keeping_stops_still_sends_everything() {
        let replay = Replay::new(client(&["a", "b", "c"], false), 1024);
        let mut first = replay.attempt();
        first.frame().await.expect("frame").expect("ok");
        first.frame().await.expect("frame").expect("ok");
        drop(first);
        let mut second = replay.attempt();
        let frame = second.frame().await.expect("frame").expect("ok");
        assert_eq!(frame.into_data().ok().as_deref(), Some(&b"a"[..]));
        // The response began: no attempt follows, but this one still has "b" to send again.
        replay.stop_keeping();
        assert!(!replay.can_replay());
        let (rest, _) = read(second).await;
        assert_eq!(rest, b"bc");
        assert!(replay.lock().chunks.is_empty(), "kept chunks let go");
    }

    /// Bodies kept at once count against one budget: one that would go over it is not kept
    /// (but still streams), and what was kept is given back when it is let go.
    #[tokio::test]
    async fn the_process_budget_bounds_what_every_replay_keeps() {
        let budget: &'static Budget = Box::leak(Box::new(Budget::new(10)));
        let first = Replay::budgeted(client(&["0123", "4567"], false), 1024, budget);
        assert_eq!(read(first.attempt()).await.0, b"01234567");
        assert!(first.can_replay());
        assert_eq!(budget.used(), 8);
        // Only 2 bytes left: this one stops keeping at its first frame.
        let second = Replay::budgeted(client(&["abc", "def"], false), 1024, budget);
        assert_eq!(read(second.attempt()).await.0, b"abcdef");
        assert!(!second.can_replay());
        assert_eq!(budget.used(), 8);
        // The response began: the first one's chunks go once sent, and so does their count.
        first.stop_keeping();
        assert_eq!(read(first.attempt()).await.0, b"01234567");
        assert_eq!(budget.used(), 0);
        // A body started elsewhere whose first frame is over the budget: sent once, uncounted.
        let third = Replay::started_budgeted(
            Frame::data(Bytes::from_static(b"0123456789ab")),
            client(&["!"], false),
            1024,
            budget,
        );
        assert!(!third.can_replay());
        assert_eq!(read(third.attempt()).await.0, b"0123456789ab!");
        assert_eq!(budget.used(), 0);
        // Dropped while kept: given back.
        let fourth = Replay::budgeted(client(&["xyz"], false), 1024, budget);
        assert_eq!(read(fourth.attempt()).await.0, b"xyz");
        assert_eq!(budget.used(), 3);
        drop(fourth);
        assert_eq!(budget.used(), 0);
    }

    /// A body that knows its end says so with its last frame, and so does each replay of it:
    /// otherwise the frame would go out without END_STREAM and an empty DATA frame after it.
    #[tokio::test]
    async fn the_last_frame_is_known_as_the_last() {
        let replay = Replay::new(crate::http::body::full("abc"), 1024);
        for _ in 0..2 {
            let mut attempt = replay.attempt();
            assert!(!attempt.is_end_stream());
            let frame = attempt.frame().await.expect("frame").expect("ok");
            assert_eq!(frame.into_data().ok().as_deref(), Some(&b"abc"[..]));
            assert!(attempt.is_end_stream());
        }
    }

    #[tokio::test]
    async fn a_body_started_elsewhere_is_sent_whole_each_time() {
        let replay = Replay::started(
            Frame::data(Bytes::from_static(b"a")),
            client(&["b", "c"], true),
            1024,
        );
        let first = read(replay.attempt()).await;
        assert_eq!(first.0, b"abc");
        assert!(first.1.is_some());
        assert_eq!(read(replay.attempt()).await, first);
    }

    #[tokio::test]
    async fn a_first_frame_over_the_limit_is_sent_once() {
        let replay = Replay::started(
            Frame::data(Bytes::from_static(b"0123456789")),
            client(&["x"], false),
            4,
        );
        assert!(!replay.can_replay());
        assert_eq!(read(replay.attempt()).await.0, b"0123456789x");
    }

    #[tokio::test]
    async fn a_failed_body_fails_its_attempt() {
        let replay = Replay::failed("client went away".into());
        let mut attempt = replay.attempt();
        assert!(attempt.frame().await.expect("frame").is_err());
        assert!(!replay.can_replay());
    }

    #[tokio::test]
    async fn an_empty_body_ends_at_once() {
        let replay = Replay::new(crate::http::body::empty(), 0);
        let body = replay.attempt();
        assert!(body.is_end_stream());
        assert_eq!(read(body).await.0, b"");
        assert!(replay.can_replay());
    }
}
