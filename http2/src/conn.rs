//! One server connection's state (RFC 9113 §5, §6.9, §8), shared by the task that reads and
//! writes its socket and by the handles of its streams. It sits behind one lock, held
//! briefly: frames read are applied to it, and what a stream sends is encoded straight into
//! the write buffer (no queue of frame values between the two).

use std::collections::{HashMap, VecDeque};
use std::task::{Context, Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};
#[cfg(test)]
use http::HeaderValue;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Uri, request};

use crate::frame::{self, Frame, FrameError, Reason, Settings, StreamId};
use crate::hpack::{self, Header, Pseudo};
use crate::queue::Chunks;

/// What a connection lets its peer do, and how it sizes what it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Streams open at once. A stream the peer reset still counts until its handler lets go
    /// of it: a client resetting streams as fast as it opens them (CVE-2023-44487) gets no
    /// more handlers running than this.
    pub max_concurrent_streams: u32,
    /// What a stream may receive before its reader catches up.
    pub stream_window: u32,
    /// What the whole connection may receive before its readers catch up.
    pub connection_window: u32,
    /// A request's header section, in octets (RFC 9113 §6.5.2's count); larger ones are
    /// answered 431.
    pub max_header_list_size: u32,
    /// Server: requests a connection is judged over before its early resets can close it
    /// (`EARLY_RESET_MS`): it closes once they are half of at least this many.
    pub early_reset_floor: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_concurrent_streams: 2048,
            stream_window: 2 << 20,
            connection_window: 8 << 20,
            max_header_list_size: 64 << 10,
            early_reset_floor: 500,
        }
    }
}

/// Unsent data a stream may hold before its sender is told to wait.
const SEND_BUFFER: usize = 64 << 10;
/// What the connection may have encoded and not yet handed to the socket. Past it, streams
/// keep their data (and their senders wait) until the socket has taken some: a peer that opens
/// its windows wide and reads nothing would otherwise have every answer buffered whole. The
/// socket task also stops reading past it (what a peer's PINGs and SETTINGS make us write).
pub(crate) const OUT_HIGH_WATER: usize = 1 << 20;
/// The largest DATA frame we send, whatever the peer allows.
const MAX_SEND_FRAME: u32 = 64 << 10;
/// A header block may be this many times the header list limit before its CONTINUATIONs are
/// refused unread (a compressed block is smaller than its list, so this only stops floods).
const BLOCK_SLACK: usize = 2;

/// Rapid reset (CVE-2023-44487) and its variants: a client that opens streams and resets
/// them at once (or makes us reset them with a malformed frame) costs itself a few bytes a
/// request and the application behind the proxy a whole request each, as fast as it can send.
/// A request reset within `EARLY_RESET_MS` of opening, before its response was complete, is
/// an early reset; once they reach half the requests a connection made, counted over at least
/// `Config::early_reset_floor` requests, the connection is closed with ENHANCE_YOUR_CALM.
/// Envoy's rule, with its defaults: a client cancelling now and then never comes near it.
const EARLY_RESET_MS: u64 = 1000;

/// Milliseconds on a coarse monotonic clock: a stream's age only has to be told from a
/// second, and the coarse clock is read without the time stamp counter (a clock read costs
/// tens of ns in a VM, this one a few).
fn coarse_ms() -> u64 {
    #[cfg(target_os = "linux")]
    if let Ok(t) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE) {
        return (t.tv_sec() as u64).saturating_mul(1000) + t.tv_nsec() as u64 / 1_000_000;
    }
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// Stream ids are distinct small integers: a multiplication spreads them over the table
/// (SipHash, the default, was 17 % of a request's instructions).
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = ((self.0 << 8) | b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        let h = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 29);
    }
}

/// Streams boxed: a stream's state is ~570 bytes, which the map's insert and remove each
/// copied (twice a request on each side of a hop); a box moves as a pointer.
type StreamMap = HashMap<u32, Box<Stream>, std::hash::BuildHasherDefault<IdHasher>>;

/// Client: the server's limit on concurrent streams presumed until its SETTINGS arrive.
/// RFC 9113 §6.5.2 makes it unlimited until then, but a burst sent before the server's SETTINGS
/// would see what exceeds its real limit refused; 100 is the smallest limit §6.5.2 recommends
/// a server allow (and what the `h2` crate presumes).
pub const PRESUMED_PEER_MAX_STREAMS: usize = 100;

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnError {
    #[error("we ended the connection: {reason}: {why}")]
    Local { reason: Reason, why: &'static str },
    #[error("the peer ended the connection: {0}")]
    Remote(Reason),
    #[error("connection closed")]
    Closed,
}

/// Why a stream ended before its time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("stream reset by the peer: {0}")]
    Reset(Reason),
    #[error("stream reset: {0}")]
    LocalReset(Reason),
    #[error(transparent)]
    Connection(#[from] ConnError),
}

impl StreamError {
    /// The server refused the stream, or went away without processing it (a stream above its
    /// GOAWAY's last one): it did nothing with the request, which may be sent again
    /// (RFC 9113 §8.7).
    pub fn is_refused(&self) -> bool {
        matches!(self, StreamError::Reset(Reason::REFUSED_STREAM))
    }
}

/// A request ready for its handler.
pub(crate) struct Accepted {
    pub id: StreamId,
    pub head: request::Parts,
    /// The request has no body (END_STREAM on its HEADERS).
    pub end_stream: bool,
}

pub(crate) struct Conn {
    /// The client side of the connection (else the server's).
    client: bool,
    config: Config,
    encoder: hpack::Encoder,
    decoder: hpack::Decoder,
    /// What we send next, frames encoded in order.
    pub out: BytesMut,
    /// The socket task's waker, woken when `out` gains bytes or a stream needs it.
    pub io_waker: Option<Waker>,
    streams: StreamMap,
    /// The highest stream the peer opened; lower unknown ones are closed ones.
    last_peer_stream: u32,
    accept: VecDeque<Accepted>,
    /// Streams with data queued that a window keeps back.
    blocked: VecDeque<u32>,
    /// A header block still arriving in CONTINUATIONs: its stream, bytes, END_STREAM.
    continuing: Option<(StreamId, BytesMut, bool)>,
    peer_initial_window: i64,
    peer_max_frame: u32,
    send_window: i64,
    recv_window: i64,
    recv_released: i64,
    /// The peer answered our last PING.
    pub pong: bool,
    /// Set once a GOAWAY went out (no new streams) or the connection failed.
    pub going_away: Option<StreamId>,
    pub error: Option<ConnError>,
    /// The peer sent GOAWAY.
    pub peer_gone: bool,
    /// Client: the next stream we open, and how many we may have open (the peer's
    /// SETTINGS_MAX_CONCURRENT_STREAMS) against how many are.
    next_stream: u32,
    peer_max_streams: usize,
    /// Client: the peer's first SETTINGS arrived (until then its stream limit is presumed).
    peer_settings_seen: bool,
    open: usize,
    /// Client: tasks waiting for room under the peer's stream limit.
    ready_wakers: Vec<Waker>,
    /// Client: request senders alive; with none left and no stream open, the connection ends.
    pub senders: usize,
    /// Server: requests the peer opened, and how many of them were reset early.
    requests: u64,
    early_resets: u64,
    /// Streams wait in `blocked` because `out` and `unwritten` reached `OUT_HIGH_WATER`.
    out_full: bool,
    /// Bytes handed to the socket that it has not taken yet (set by the socket task).
    pub unwritten: usize,
}

#[derive(Default)]
struct Stream {
    /// Handles held by the application (request body, responder); 0 before it is accepted.
    refs: u8,
    /// The peer's side: END_STREAM received (or reset).
    recv_closed: bool,
    recv: Chunks,
    trailers: Option<HeaderMap>,
    recv_window: i64,
    recv_released: i64,
    /// content-length of the request, and what has come of it.
    expected_len: Option<u64>,
    received_len: u64,
    recv_waker: Option<Waker>,
    /// Our side: response headers sent, END_STREAM queued, END_STREAM sent.
    headers_sent: bool,
    send_end_queued: bool,
    send_closed: bool,
    send: Chunks,
    send_trailers: Option<HeaderMap>,
    queued: usize,
    send_window: i64,
    send_waker: Option<Waker>,
    /// Reset by either side: no more frames for it, either way.
    reset: Option<StreamError>,
    /// Reset by the peer after it had ended its side, or the connection lost then: only our
    /// sending stopped.
    send_stopped: Option<StreamError>,
    in_blocked: bool,
    /// Client: the response's head once it came; the request was a HEAD (its response has
    /// no body whatever its content-length says); counted among the open streams.
    response: Option<http::response::Parts>,
    headers_seen: bool,
    head_request: bool,
    counted: bool,
    /// Server: when the request arrived (`coarse_ms`).
    opened_ms: u64,
}

impl Conn {
    /// A server connection: our SETTINGS and the connection window's first update are the
    /// first frames out.
    pub fn server(config: Config) -> Conn {
        Conn::new(config, false)
    }

    /// A client connection: the preface, our SETTINGS (no server push) and the connection
    /// window's first update.
    pub fn client(config: Config) -> Conn {
        Conn::new(config, true)
    }

    fn new(config: Config, client: bool) -> Conn {
        let mut out = BytesMut::with_capacity(16 << 10);
        if client {
            out.put_slice(frame::PREFACE);
        }
        frame::write_settings(
            &mut out,
            &Settings {
                enable_push: client.then_some(false),
                max_concurrent_streams: Some(config.max_concurrent_streams),
                initial_window_size: Some(config.stream_window),
                max_header_list_size: Some(config.max_header_list_size),
                ..Settings::default()
            },
        );
        let initial = frame::DEFAULT_WINDOW as i64;
        let extra = config.connection_window as i64 - initial;
        if extra > 0 {
            frame::write_window_update(&mut out, StreamId::CONNECTION, extra as u32);
        }
        Conn {
            client,
            config,
            encoder: hpack::Encoder::new(),
            decoder: hpack::Decoder::new(4096),
            out,
            io_waker: None,
            streams: StreamMap::default(),
            last_peer_stream: 0,
            accept: VecDeque::new(),
            blocked: VecDeque::new(),
            continuing: None,
            peer_initial_window: initial,
            peer_max_frame: frame::DEFAULT_MAX_FRAME_SIZE,
            send_window: initial,
            recv_window: initial.max(config.connection_window as i64),
            recv_released: 0,
            pong: false,
            going_away: None,
            error: None,
            peer_gone: false,
            next_stream: 1,
            peer_max_streams: if client {
                PRESUMED_PEER_MAX_STREAMS
            } else {
                usize::MAX
            },
            peer_settings_seen: false,
            open: 0,
            ready_wakers: Vec::new(),
            senders: 0,
            requests: 0,
            early_resets: 0,
            out_full: false,
            unwritten: 0,
        }
    }

    /// Applies one frame from the peer. An error ends the connection (the caller sends the
    /// GOAWAY `fail` wrote).
    pub fn recv(&mut self, f: Frame) -> Result<(), ConnError> {
        if let Some((id, _, _)) = &self.continuing {
            match &f {
                Frame::Continuation { stream, .. } if stream == id => {}
                _ => return Err(self.fail(Reason::PROTOCOL_ERROR, "header block interrupted")),
            }
        }
        match f {
            Frame::Data {
                stream,
                data,
                end_stream,
                flow_len,
            } => self.recv_data(stream, data, end_stream, flow_len),
            Frame::Headers {
                stream,
                block,
                end_stream,
                end_headers,
                ..
            } => {
                if end_headers {
                    self.recv_headers(stream, block, end_stream)
                } else {
                    self.check_block_size(block.len())?;
                    self.continuing = Some((stream, BytesMut::from(&block[..]), end_stream));
                    Ok(())
                }
            }
            Frame::Continuation {
                block, end_headers, ..
            } => {
                let Some((stream, mut acc, end_stream)) = self.continuing.take() else {
                    return Err(self.fail(Reason::PROTOCOL_ERROR, "CONTINUATION without HEADERS"));
                };
                self.check_block_size(acc.len() + block.len())?;
                acc.extend_from_slice(&block);
                if end_headers {
                    self.recv_headers(stream, acc.freeze(), end_stream)
                } else {
                    self.continuing = Some((stream, acc, end_stream));
                    Ok(())
                }
            }
            Frame::Priority { .. } | Frame::Unknown { .. } => Ok(()),
            Frame::RstStream { stream, reason } => {
                self.check_not_idle(stream)?;
                self.note_early_reset(stream)?;
                if let Some(s) = self.streams.get_mut(&stream.0) {
                    if s.recv_closed && s.reset.is_none() {
                        // The peer had sent all it had (a whole response, or a whole request):
                        // its reset only stops what we send (§8.1: a server that answered early
                        // resets with NO_ERROR). What was received stays readable to its end.
                        s.send_stopped = Some(StreamError::Reset(reason));
                        s.send.clear();
                        s.queued = 0;
                        s.send_trailers = None;
                        s.send_closed = true;
                        wake_both(s);
                    } else {
                        s.reset = Some(StreamError::Reset(reason));
                        s.recv_closed = true;
                        s.send_closed = true;
                        wake_both(s);
                        // Nobody reads the rest: its credit goes back to the connection.
                        self.release_stream_window(stream);
                    }
                    self.accept.retain(|a| a.id != stream);
                    self.settle(stream);
                }
                Ok(())
            }
            Frame::Settings(s) => self.recv_settings(s),
            // Our SETTINGS change nothing that must wait for the ACK.
            Frame::SettingsAck => Ok(()),
            // A client never asks for pushes (SETTINGS_ENABLE_PUSH 0).
            Frame::PushPromise { .. } => Err(self.fail(Reason::PROTOCOL_ERROR, "PUSH_PROMISE")),
            Frame::Ping {
                ack: false,
                payload,
            } => {
                frame::write_ping(&mut self.out, true, payload);
                Ok(())
            }
            Frame::Ping { ack: true, .. } => {
                self.pong = true;
                Ok(())
            }
            Frame::GoAway {
                last_stream,
                reason,
                ..
            } => {
                self.peer_gone = true;
                if reason != Reason::NO_ERROR {
                    self.error = Some(ConnError::Remote(reason));
                }
                if self.client {
                    // Streams above the last one the server took were never processed: they
                    // fail as refused, which callers may safely send again (§6.8).
                    let unprocessed: Vec<u32> = self
                        .streams
                        .keys()
                        .copied()
                        .filter(|&id| id > last_stream.0)
                        .collect();
                    for id in unprocessed {
                        if let Some(s) = self.streams.get_mut(&id) {
                            s.reset
                                .get_or_insert(StreamError::Reset(Reason::REFUSED_STREAM));
                            s.recv_closed = true;
                            s.send_closed = true;
                            wake_both(s);
                        }
                        self.settle(StreamId(id));
                    }
                    for w in self.ready_wakers.drain(..) {
                        w.wake();
                    }
                }
                Ok(())
            }
            Frame::WindowUpdate { stream, increment } => self.recv_window_update(stream, increment),
        }
    }

    /// Turns a frame error into what it means: a connection error ends everything; a stream
    /// error resets that stream.
    pub fn frame_error(&mut self, e: FrameError) -> Result<(), ConnError> {
        match e {
            FrameError::Connection { reason, why } => Err(self.fail(reason, why)),
            FrameError::Stream { stream, reason, .. } => {
                self.refuse(stream, reason);
                Ok(())
            }
        }
    }

    /// Writes a GOAWAY for a connection error and marks the connection failed.
    pub fn fail(&mut self, reason: Reason, why: &'static str) -> ConnError {
        let e = ConnError::Local { reason, why };
        if self.error.is_none() {
            frame::write_goaway(
                &mut self.out,
                StreamId(self.last_peer_stream),
                reason,
                why.as_bytes(),
            );
            self.going_away = Some(StreamId(self.last_peer_stream));
            self.close(e.clone());
        }
        e
    }

    /// The connection is over: every stream still open fails with `e`.
    pub fn close(&mut self, e: ConnError) {
        self.error.get_or_insert(e.clone());
        self.accept.clear();
        for s in self.streams.values_mut() {
            if s.recv_closed && s.reset.is_none() {
                // The peer had sent all of it (a server answers and closes at once): what
                // was received stays readable to its end; only sending stops.
                if !s.send_closed {
                    s.send_stopped = Some(StreamError::Connection(e.clone()));
                    s.send_closed = true;
                }
            } else {
                s.reset.get_or_insert(StreamError::Connection(e.clone()));
                s.recv_closed = true;
                s.send_closed = true;
            }
            wake_both(s);
        }
        self.streams.retain(|_, s| s.refs > 0);
    }

    /// Nothing more can be written to the peer: no new streams (those open end with what is
    /// still to be read).
    pub fn peer_lost(&mut self) {
        self.peer_gone = true;
        for w in self.ready_wakers.drain(..) {
            w.wake();
        }
    }

    /// Starts a graceful shutdown: no new streams, those open finish (RFC 9113 §6.8).
    pub fn shutdown(&mut self) {
        if self.going_away.is_none() {
            frame::write_goaway(
                &mut self.out,
                StreamId(self.last_peer_stream),
                Reason::NO_ERROR,
                b"",
            );
            self.going_away = Some(StreamId(self.last_peer_stream));
        }
    }

    /// Nothing left to do: shut down (or the peer left, or, for a client, nobody can send on
    /// it any more) and no stream open.
    pub fn is_done(&self) -> bool {
        let over =
            self.going_away.is_some() || self.peer_gone || (self.client && self.senders == 0);
        over && self.streams.is_empty()
    }

    pub fn pop_accepted(&mut self) -> Option<Accepted> {
        let a = self.accept.pop_front()?;
        if let Some(s) = self.streams.get_mut(&a.id.0) {
            s.refs = 2;
        }
        Some(a)
    }

    fn check_block_size(&mut self, len: usize) -> Result<(), ConnError> {
        let limit = (self.config.max_header_list_size as usize).max(16 << 10) * BLOCK_SLACK;
        if len > limit {
            return Err(self.fail(Reason::ENHANCE_YOUR_CALM, "header block too large"));
        }
        Ok(())
    }

    /// A frame on a stream never opened is a connection error (§5.1: idle).
    fn check_not_idle(&mut self, stream: StreamId) -> Result<(), ConnError> {
        let idle = match self.client {
            true => stream.0 >= self.next_stream || !stream.is_client_initiated(),
            false => stream.0 > self.last_peer_stream || !stream.is_client_initiated(),
        };
        if idle {
            return Err(self.fail(Reason::PROTOCOL_ERROR, "frame on an idle stream"));
        }
        Ok(())
    }

    fn recv_headers(
        &mut self,
        id: StreamId,
        block: Bytes,
        end_stream: bool,
    ) -> Result<(), ConnError> {
        // The block is decoded whatever becomes of the stream: the table must stay in step.
        let mut head = HeadBuilder::default();
        if self.decoder.decode(&block, |h| head.push(h)).is_err() {
            return Err(self.fail(Reason::COMPRESSION_ERROR, "header block not decodable"));
        }
        if self.client {
            return self.recv_response_headers(id, head, end_stream);
        }
        if let Some(s) = self.streams.get_mut(&id.0) {
            // Trailers: the last HEADERS of a request, after its data. On a stream we reset,
            // frames still in flight are ignored (§5.1).
            if s.reset.is_some() {
                return Ok(());
            }
            if s.recv_closed {
                self.refuse(id, Reason::STREAM_CLOSED);
                return Ok(());
            }
            if !end_stream || head.pseudo_seen || head.error.is_some() {
                self.refuse(id, Reason::PROTOCOL_ERROR);
                return Ok(());
            }
            s.trailers = Some(head.headers);
            return self.end_recv(id);
        }
        if !id.is_client_initiated() {
            return Err(self.fail(
                Reason::PROTOCOL_ERROR,
                "client opened an even-numbered stream",
            ));
        }
        if id.0 <= self.last_peer_stream {
            // A stream that is over (and forgotten): a late frame of it, ignored.
            return Ok(());
        }
        self.last_peer_stream = id.0;
        if self.going_away.is_some() {
            // After our GOAWAY, streams above its last id are ignored (§6.8).
            return Ok(());
        }
        if self.streams.len() >= self.config.max_concurrent_streams as usize {
            frame::write_rst_stream(&mut self.out, id, Reason::REFUSED_STREAM);
            return Ok(());
        }
        if head.size > self.config.max_header_list_size as usize {
            // Answered here, without the handler: 431 Request Header Fields Too Large.
            let status = [hpack::Field::Pseudo(Pseudo::Status, b"431")];
            write_block(
                &mut self.out,
                &mut self.encoder,
                id,
                status,
                true,
                self.peer_max_frame,
            );
            if !end_stream {
                frame::write_rst_stream(&mut self.out, id, Reason::NO_ERROR);
            }
            return Ok(());
        }
        let head = match head.request() {
            Ok(head) => head,
            Err(_why) => {
                frame::write_rst_stream(&mut self.out, id, Reason::PROTOCOL_ERROR);
                return Ok(());
            }
        };
        let expected_len = content_length(&head.headers);
        if end_stream && expected_len.is_some_and(|n| n != 0) {
            frame::write_rst_stream(&mut self.out, id, Reason::PROTOCOL_ERROR);
            return Ok(());
        }
        self.requests += 1;
        self.streams.insert(
            id.0,
            Box::new(Stream {
                recv_closed: end_stream,
                recv_window: self.config.stream_window as i64,
                send_window: self.peer_initial_window,
                expected_len,
                opened_ms: coarse_ms(),
                ..Stream::default()
            }),
        );
        self.accept.push_back(Accepted {
            id,
            head,
            end_stream,
        });
        Ok(())
    }

    /// A response's head (after any 1xx), or its trailers.
    fn recv_response_headers(
        &mut self,
        id: StreamId,
        head: HeadBuilder,
        end_stream: bool,
    ) -> Result<(), ConnError> {
        self.check_not_idle(id)?;
        let Some(s) = self.streams.get_mut(&id.0) else {
            // A stream that is over: a late frame of it, ignored.
            return Ok(());
        };
        if s.reset.is_some() {
            return Ok(());
        }
        if s.recv_closed {
            self.refuse(id, Reason::STREAM_CLOSED);
            return Ok(());
        }
        if s.headers_seen {
            // Trailers.
            if !end_stream || head.pseudo_seen || head.error.is_some() {
                self.refuse(id, Reason::PROTOCOL_ERROR);
                return Ok(());
            }
            s.trailers = Some(head.headers);
            return self.end_recv(id);
        }
        let head_request = s.head_request;
        if head.size > self.config.max_header_list_size as usize {
            // More than we said we would take (SETTINGS_MAX_HEADER_LIST_SIZE).
            self.refuse(id, Reason::PROTOCOL_ERROR);
            return Ok(());
        }
        match head.response() {
            Ok(resp) if resp.status.is_informational() => {
                // 1xx: interim, the final response is still to come (101 has no place here).
                if resp.status == http::StatusCode::SWITCHING_PROTOCOLS || end_stream {
                    self.refuse(id, Reason::PROTOCOL_ERROR);
                }
                Ok(())
            }
            Ok(resp) => {
                let no_body = head_request
                    || resp.status == http::StatusCode::NO_CONTENT
                    || resp.status == http::StatusCode::NOT_MODIFIED;
                let expected = if no_body {
                    None
                } else {
                    content_length(&resp.headers)
                };
                if end_stream && expected.is_some_and(|n| n != 0) {
                    self.refuse(id, Reason::PROTOCOL_ERROR);
                    return Ok(());
                }
                if let Some(s) = self.streams.get_mut(&id.0) {
                    s.expected_len = expected;
                    s.response = Some(resp);
                    s.headers_seen = true;
                    if let Some(w) = s.recv_waker.take() {
                        w.wake();
                    }
                }
                if end_stream {
                    self.end_recv(id)?;
                }
                Ok(())
            }
            Err(_) => {
                self.refuse(id, Reason::PROTOCOL_ERROR);
                Ok(())
            }
        }
    }

    /// Client: whether a new stream may be opened now (`Ok(false)`: not until one closes),
    /// or never again on this connection.
    pub fn can_open(&self) -> Result<bool, ConnError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.peer_gone || self.going_away.is_some() || self.next_stream > frame::MAX_WINDOW {
            return Err(ConnError::Closed);
        }
        Ok(self.open < self.peer_max_streams)
    }

    /// Client: the peer's limit on concurrent streams (presumed until its SETTINGS say).
    pub fn peer_max_streams(&self) -> usize {
        self.peer_max_streams
    }

    /// Client: streams open now (counted against the peer's limit).
    pub fn open_streams(&self) -> usize {
        self.open
    }

    /// Client: the limit to presume until the peer's first SETTINGS arrives. A client that
    /// opens this connection because another to the same server is at that server's limit
    /// knows the limit already; presuming none would send streams the server then refuses.
    pub fn presume_peer_max_streams(&mut self, n: usize) {
        if !self.peer_settings_seen {
            self.peer_max_streams = n;
        }
    }

    /// Client: waits for room under the peer's stream limit. Fails once the connection can
    /// take no new stream (the caller opens another connection).
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        match self.can_open() {
            Ok(true) => Poll::Ready(Ok(())),
            Ok(false) => {
                self.ready_wakers.push(cx.waker().clone());
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Client: opens a stream with the request's head (HEADERS goes out at once). The request
    /// body, if any, follows by `send_data` and `send_trailers`.
    pub fn open(
        &mut self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        end_stream: bool,
        refs: u8,
    ) -> Result<StreamId, ConnError> {
        // Past the server's limit (a caller that did not wait for `poll_ready`), the server
        // refuses the stream, which the caller sees as REFUSED_STREAM.
        self.can_open()?;
        let id = StreamId(self.next_stream);
        self.next_stream += 2;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let authority = uri.authority().map(|a| a.as_str().as_bytes());
        let scheme = uri.scheme_str().unwrap_or("http");
        let connect = method == Method::CONNECT;
        let pseudo = [
            Some(hpack::Field::Pseudo(
                Pseudo::Method,
                method.as_str().as_bytes(),
            )),
            (!connect).then_some(hpack::Field::Pseudo(Pseudo::Scheme, scheme.as_bytes())),
            authority.map(|a| hpack::Field::Pseudo(Pseudo::Authority, a)),
            (!connect).then_some(hpack::Field::Pseudo(Pseudo::Path, path.as_bytes())),
        ];
        let fields = pseudo.into_iter().flatten().chain(sendable(headers));
        write_block(
            &mut self.out,
            &mut self.encoder,
            id,
            fields,
            end_stream,
            self.peer_max_frame,
        );
        self.streams.insert(
            id.0,
            Box::new(Stream {
                refs,
                recv_window: self.config.stream_window as i64,
                send_window: self.peer_initial_window,
                headers_sent: true,
                send_end_queued: end_stream,
                send_closed: end_stream,
                head_request: method == Method::HEAD,
                counted: true,
                ..Stream::default()
            }),
        );
        self.open += 1;
        self.wake_io();
        Ok(id)
    }

    /// Client: the response's head, once it has come.
    pub fn poll_response(
        &mut self,
        id: StreamId,
        cx: &mut Context<'_>,
    ) -> Poll<Result<http::response::Parts, StreamError>> {
        let Some(s) = self.streams.get_mut(&id.0) else {
            return Poll::Ready(Err(StreamError::Connection(ConnError::Closed)));
        };
        if let Some(resp) = s.response.take() {
            return Poll::Ready(Ok(resp));
        }
        if let Some(e) = &s.reset {
            return Poll::Ready(Err(e.clone()));
        }
        s.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn recv_data(
        &mut self,
        id: StreamId,
        data: Bytes,
        end_stream: bool,
        flow_len: u32,
    ) -> Result<(), ConnError> {
        let flow = flow_len as i64;
        self.recv_window -= flow;
        if self.recv_window < 0 {
            return Err(self.fail(
                Reason::FLOW_CONTROL_ERROR,
                "peer overran the connection window",
            ));
        }
        self.check_not_idle(id)?;
        let padding = flow - data.len() as i64;
        let Some(s) = self.streams.get_mut(&id.0) else {
            // A stream that is over (we reset it, or it closed): its data still counts against
            // the connection's window, which is given back at once.
            self.release_connection(flow);
            return Ok(());
        };
        if s.recv_closed || s.reset.is_some() {
            let closed = s.reset.is_none();
            self.release_connection(flow);
            if closed {
                self.refuse(id, Reason::STREAM_CLOSED);
            }
            return Ok(());
        }
        if self.client && s.response.is_none() && !s.recv_closed && s.trailers.is_none() {
            // DATA before the response's head. (A head already taken by the caller is
            // `response: None` too: `headers_seen` tells them apart.)
            if !s.headers_seen {
                self.release_connection(flow);
                self.refuse(id, Reason::PROTOCOL_ERROR);
                return Ok(());
            }
        }
        s.recv_window -= flow;
        if s.recv_window < 0 {
            self.release_connection(flow);
            self.refuse(id, Reason::FLOW_CONTROL_ERROR);
            return Ok(());
        }
        s.received_len += data.len() as u64;
        if s.expected_len
            .is_some_and(|n| s.received_len > n || (end_stream && s.received_len != n))
        {
            self.release_connection(flow);
            self.refuse(id, Reason::PROTOCOL_ERROR);
            return Ok(());
        }
        if !data.is_empty() {
            s.recv.push_back(data);
        }
        if let Some(w) = s.recv_waker.take() {
            w.wake();
        }
        // Padding is nobody's to read: its credit comes back now.
        if padding > 0 {
            self.release(id, padding);
        }
        if end_stream {
            self.end_recv(id)?;
        }
        Ok(())
    }

    fn end_recv(&mut self, id: StreamId) -> Result<(), ConnError> {
        if let Some(s) = self.streams.get_mut(&id.0) {
            s.recv_closed = true;
            if let Some(w) = s.recv_waker.take() {
                w.wake();
            }
        }
        self.settle(id);
        Ok(())
    }

    fn recv_settings(&mut self, s: Settings) -> Result<(), ConnError> {
        if let Some(size) = s.header_table_size {
            self.encoder.set_peer_max(size as usize);
        }
        if let Some(size) = s.max_frame_size {
            self.peer_max_frame = size;
        }
        // The first SETTINGS replaces the presumed limit, with none if it names none.
        let limit = s
            .max_concurrent_streams
            .map(|n| n as usize)
            .or((!self.peer_settings_seen).then_some(usize::MAX));
        self.peer_settings_seen = true;
        if let Some(n) = limit {
            self.peer_max_streams = n;
            for w in self.ready_wakers.drain(..) {
                w.wake();
            }
        }
        if let Some(window) = s.initial_window_size {
            let delta = window as i64 - self.peer_initial_window;
            self.peer_initial_window = window as i64;
            let mut overflow = false;
            for st in self.streams.values_mut() {
                st.send_window += delta;
                overflow |= st.send_window > frame::MAX_WINDOW as i64;
            }
            if overflow {
                return Err(self.fail(
                    Reason::FLOW_CONTROL_ERROR,
                    "SETTINGS_INITIAL_WINDOW_SIZE overflows a window",
                ));
            }
            if delta > 0 {
                self.unblock_all();
            }
        }
        frame::write_settings_ack(&mut self.out);
        Ok(())
    }

    fn recv_window_update(&mut self, id: StreamId, increment: u32) -> Result<(), ConnError> {
        if id == StreamId::CONNECTION {
            self.send_window += increment as i64;
            if self.send_window > frame::MAX_WINDOW as i64 {
                return Err(self.fail(Reason::FLOW_CONTROL_ERROR, "connection window above 2^31-1"));
            }
            self.unblock_all();
            return Ok(());
        }
        self.check_not_idle(id)?;
        let Some(s) = self.streams.get_mut(&id.0) else {
            return Ok(());
        };
        s.send_window += increment as i64;
        if s.send_window > frame::MAX_WINDOW as i64 {
            self.refuse(id, Reason::FLOW_CONTROL_ERROR);
            return Ok(());
        }
        self.flush_stream(id);
        Ok(())
    }

    /// The socket took half of what was queued: streams held back by a full write buffer
    /// send again, while it still has the rest to write. True if that queued anything.
    pub fn resume_sending(&mut self) -> bool {
        if !self.out_full || self.out.len() + self.unwritten >= OUT_HIGH_WATER / 2 {
            return false;
        }
        self.out_full = false;
        let before = self.out.len();
        self.unblock_all();
        self.out.len() > before
    }

    fn unblock_all(&mut self) {
        for _ in 0..self.blocked.len() {
            let Some(id) = self.blocked.pop_front() else {
                break;
            };
            if let Some(s) = self.streams.get_mut(&id) {
                s.in_blocked = false;
            }
            self.flush_stream(StreamId(id));
        }
    }

    // ------------------------------------------------------------ the stream handles' side

    /// The next piece of the request body; `None` at its end.
    pub fn poll_data(
        &mut self,
        id: StreamId,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, StreamError>>> {
        let Some(s) = self.streams.get_mut(&id.0) else {
            return Poll::Ready(None);
        };
        if let Some(data) = s.recv.pop_front() {
            return Poll::Ready(Some(Ok(data)));
        }
        if let Some(e) = &s.reset {
            return Poll::Ready(Some(Err(e.clone())));
        }
        if s.recv_closed {
            return Poll::Ready(None);
        }
        s.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The request's trailers, once its data has all been read.
    pub fn poll_trailers(
        &mut self,
        id: StreamId,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<HeaderMap>, StreamError>> {
        let Some(s) = self.streams.get_mut(&id.0) else {
            return Poll::Ready(Ok(None));
        };
        if let Some(e) = &s.reset {
            return Poll::Ready(Err(e.clone()));
        }
        if s.recv_closed {
            return Poll::Ready(Ok(s.trailers.take()));
        }
        s.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    pub fn is_recv_end(&self, id: StreamId) -> bool {
        self.streams
            .get(&id.0)
            .is_none_or(|s| s.recv_closed && s.recv.is_empty() && s.trailers.is_none())
    }

    /// `n` octets of the stream's data were read: the peer may send them again, announced
    /// once half a window's worth has gathered (one WINDOW_UPDATE per half window, not one
    /// per frame).
    pub fn release(&mut self, id: StreamId, n: i64) {
        let half = self.config.stream_window as i64 / 2;
        if let Some(s) = self.streams.get_mut(&id.0) {
            s.recv_released += n;
            if !s.recv_closed && s.reset.is_none() && s.recv_released >= half {
                frame::write_window_update(&mut self.out, id, s.recv_released as u32);
                s.recv_window += s.recv_released;
                s.recv_released = 0;
                // Called by a stream's reader, not the socket's task: wake it to send this.
                self.wake_io();
            }
        }
        self.release_connection(n);
    }

    fn release_connection(&mut self, n: i64) {
        self.recv_released += n;
        if self.recv_released >= self.config.connection_window as i64 / 2 {
            frame::write_window_update(
                &mut self.out,
                StreamId::CONNECTION,
                self.recv_released as u32,
            );
            self.recv_window += self.recv_released;
            self.recv_released = 0;
            self.wake_io();
        }
    }

    /// What the stream holds unread goes back to the connection's window (its reader left).
    fn release_stream_window(&mut self, id: StreamId) {
        let Some(s) = self.streams.get_mut(&id.0) else {
            return;
        };
        let unread = s.recv.clear() as i64;
        // Octets already released were given back to the connection as they were read.
        s.recv_released = 0;
        if unread > 0 {
            self.release_connection(unread);
        }
    }

    /// The stream, if it may still send.
    fn sending(&mut self, id: StreamId) -> Result<&mut Stream, StreamError> {
        let s = self
            .streams
            .get_mut(&id.0)
            .ok_or(StreamError::Connection(ConnError::Closed))?;
        match send_error(s) {
            Some(e) => Err(e),
            None => Ok(s),
        }
    }

    /// Sends the response head (or an interim 1xx one: `end_stream` false, more to come).
    pub fn send_headers(
        &mut self,
        id: StreamId,
        head: &http::response::Parts,
        end_stream: bool,
    ) -> Result<(), StreamError> {
        let s = self.sending(id)?;
        let informational = head.status.is_informational();
        if informational && s.headers_sent {
            // Too late for an interim response: the final one is out.
            return Ok(());
        }
        let end = end_stream && !informational;
        let status = head.status.as_str().as_bytes();
        let fields = std::iter::once(hpack::Field::Pseudo(Pseudo::Status, status))
            .chain(sendable(&head.headers));
        write_block(
            &mut self.out,
            &mut self.encoder,
            id,
            fields,
            end,
            self.peer_max_frame,
        );
        if let Some(s) = self.streams.get_mut(&id.0) {
            s.headers_sent |= !informational;
            if end {
                s.send_end_queued = true;
                s.send_closed = true;
            }
        }
        self.wake_io();
        self.settle(id);
        Ok(())
    }

    /// Ready when the stream holds little enough unsent data to take more.
    pub fn poll_send_ready(
        &mut self,
        id: StreamId,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), StreamError>> {
        let Some(s) = self.streams.get_mut(&id.0) else {
            return Poll::Ready(Err(StreamError::Connection(ConnError::Closed)));
        };
        if let Some(e) = send_error(s) {
            return Poll::Ready(Err(e.clone()));
        }
        if s.queued < SEND_BUFFER {
            return Poll::Ready(Ok(()));
        }
        s.send_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Queues body data (and the end of the stream), sending what the windows allow now.
    pub fn send_data(
        &mut self,
        id: StreamId,
        data: Bytes,
        end_stream: bool,
    ) -> Result<(), StreamError> {
        let s = self.sending(id)?;
        s.queued += data.len();
        if !data.is_empty() {
            s.send.push_back(data);
        }
        s.send_end_queued |= end_stream;
        self.flush_stream(id);
        Ok(())
    }

    /// Queues the trailers, which end the stream once the data before them is out.
    pub fn send_trailers(&mut self, id: StreamId, trailers: HeaderMap) -> Result<(), StreamError> {
        let s = self.sending(id)?;
        s.send_trailers = Some(trailers);
        s.send_end_queued = true;
        self.flush_stream(id);
        Ok(())
    }

    /// Writes what the stream has queued as far as both windows allow.
    fn flush_stream(&mut self, id: StreamId) {
        let max_frame = self.peer_max_frame.min(MAX_SEND_FRAME) as usize;
        let Some(s) = self.streams.get_mut(&id.0) else {
            return;
        };
        if s.reset.is_some() || s.send_closed {
            return;
        }
        while let Some(front) = s.send.front_mut() {
            if self.out.len() + self.unwritten >= OUT_HIGH_WATER {
                if !s.in_blocked {
                    s.in_blocked = true;
                    self.blocked.push_back(id.0);
                }
                self.out_full = true;
                break;
            }
            let window = s.send_window.min(self.send_window);
            if window <= 0 {
                if self.send_window <= 0 && !s.in_blocked {
                    s.in_blocked = true;
                    self.blocked.push_back(id.0);
                }
                break;
            }
            let n = front.len().min(window as usize).min(max_frame);
            let piece = front.split_to(n);
            if front.is_empty() {
                s.send.pop_front();
            }
            s.send_window -= n as i64;
            self.send_window -= n as i64;
            s.queued -= n;
            let end = s.send.is_empty() && s.send_end_queued && s.send_trailers.is_none();
            frame::write_data(&mut self.out, id, &piece, end);
            if end {
                s.send_closed = true;
            }
        }
        if s.send.is_empty() && s.send_end_queued && !s.send_closed {
            match s.send_trailers.take() {
                Some(trailers) => {
                    let fields = sendable(&trailers);
                    write_block(
                        &mut self.out,
                        &mut self.encoder,
                        id,
                        fields,
                        true,
                        self.peer_max_frame,
                    );
                }
                None => frame::write_data(&mut self.out, id, &[], true),
            }
            s.send_closed = true;
        }
        if s.queued < SEND_BUFFER
            && let Some(w) = s.send_waker.take()
        {
            w.wake();
        }
        let closed = s.send_closed;
        self.wake_io();
        if closed {
            self.settle(id);
        }
    }

    /// Resolves when the peer reset the stream (or the connection failed).
    pub fn poll_reset(&mut self, id: StreamId, cx: &mut Context<'_>) -> Poll<StreamError> {
        let Some(s) = self.streams.get_mut(&id.0) else {
            return Poll::Ready(StreamError::Connection(ConnError::Closed));
        };
        if let Some(e) = send_error(s) {
            return Poll::Ready(e.clone());
        }
        s.send_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Counts a request the peer reset, or made us reset, early (`EARLY_RESET_MS`); fails
    /// the connection once those are too many.
    fn note_early_reset(&mut self, id: StreamId) -> Result<(), ConnError> {
        let Some(s) = self.streams.get(&id.0) else {
            return Ok(());
        };
        let young = coarse_ms().saturating_sub(s.opened_ms) < EARLY_RESET_MS;
        if self.client || s.send_closed || s.reset.is_some() || !young {
            return Ok(());
        }
        self.early_resets += 1;
        if self.early_resets * 2 >= self.requests.max(self.config.early_reset_floor) {
            return Err(self.fail(Reason::ENHANCE_YOUR_CALM, "too many requests reset early"));
        }
        Ok(())
    }

    /// Resets a stream because of what the peer sent on it (a frame it must not send there).
    fn refuse(&mut self, id: StreamId, reason: Reason) {
        if self.note_early_reset(id).is_err() {
            return;
        }
        self.reset_stream(id, reason);
    }

    /// Resets the stream from our side.
    pub fn reset_stream(&mut self, id: StreamId, reason: Reason) {
        frame::write_rst_stream(&mut self.out, id, reason);
        self.wake_io();
        if let Some(s) = self.streams.get_mut(&id.0) {
            s.reset.get_or_insert(StreamError::LocalReset(reason));
            s.recv_closed = true;
            s.send_closed = true;
            wake_both(s);
        }
        self.accept.retain(|a| a.id != id);
        self.release_stream_window(id);
        self.settle(id);
    }

    /// A handle let go of the stream.
    pub fn drop_ref(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id.0) {
            s.refs = s.refs.saturating_sub(1);
        }
        self.settle(id);
    }

    /// Forgets a stream nobody holds once it is over. Still open with its handles gone, it is
    /// reset: CANCEL if the response is unfinished, NO_ERROR if only the request body is left
    /// (§8.1); a response whose end waits behind flow control is let finish first.
    fn settle(&mut self, id: StreamId) {
        // One lookup for the common case (called several times a stream, mostly while the
        // application still holds it).
        let Some(s) = self.streams.get_mut(&id.0) else {
            return;
        };
        let over = s.reset.is_some() || (s.recv_closed && s.send_closed);
        if over && s.counted {
            s.counted = false;
            self.open -= 1;
            for w in self.ready_wakers.drain(..) {
                w.wake();
            }
        }
        if s.refs > 0 || self.accept.iter().any(|a| a.id == id) {
            return;
        }
        if !over {
            if s.send_end_queued && !s.send_closed {
                return;
            }
            // A server whose response is whole needs no more of the request: NO_ERROR. A
            // client that stops reading its response, or a server its request: CANCEL.
            let reason = if s.send_closed && !self.client {
                Reason::NO_ERROR
            } else {
                Reason::CANCEL
            };
            frame::write_rst_stream(&mut self.out, id, reason);
            self.wake_io();
        }
        self.uncount(id);
        self.release_stream_window(id);
        self.streams.remove(&id.0);
    }

    /// Client: the stream no longer counts against the server's limit (it is over, or is
    /// about to be forgotten): room for another.
    fn uncount(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id.0)
            && s.counted
        {
            s.counted = false;
            self.open -= 1;
            for w in self.ready_wakers.drain(..) {
                w.wake();
            }
        }
    }

    pub fn wake_io(&mut self) {
        if let Some(w) = self.io_waker.take() {
            w.wake();
        }
    }

    #[cfg(test)]
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }
}

/// Why nothing more may be sent on a stream, if so.
fn send_error(s: &Stream) -> Option<StreamError> {
    s.reset.as_ref().or(s.send_stopped.as_ref()).cloned()
}

fn wake_both(s: &mut Stream) {
    if let Some(w) = s.recv_waker.take() {
        w.wake();
    }
    if let Some(w) = s.send_waker.take() {
        w.wake();
    }
}

/// The fields of `headers` HTTP/2 may carry: connection-specific ones (§8.2.2), Host (the
/// URI's authority is `:authority`) and a `te` other than "trailers" are left out, whatever
/// the application put in.
fn sendable(headers: &HeaderMap) -> impl Iterator<Item = hpack::Field<'_>> {
    headers
        .iter()
        .filter(|(n, v)| {
            !is_connection_specific(n)
                && *n != http::header::HOST
                && !(*n == http::header::TE && v.as_bytes() != b"trailers")
        })
        .map(|(n, v)| hpack::Field::Header(n, v))
}

/// Headers HTTP/2 forbids (§8.2.2).
fn is_connection_specific(name: &http::HeaderName) -> bool {
    use http::header::*;
    // Compared as names: a standard name is a number, and spelling one out (`as_str`) to
    // compare it with these two cost more than the rest of the check, for every field.
    const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    *name == CONNECTION
        || *name == TRANSFER_ENCODING
        || *name == UPGRADE
        || *name == KEEP_ALIVE
        || *name == PROXY_CONNECTION
}

/// A header section as it is decoded: a request's head (checked as §8.3.1 and §8.2
/// require) or trailers, and its size as SETTINGS_MAX_HEADER_LIST_SIZE counts it.
#[derive(Default)]
struct HeadBuilder {
    method: Option<Bytes>,
    scheme: Option<Bytes>,
    authority: Option<Bytes>,
    path: Option<Bytes>,
    status: Option<Bytes>,
    headers: HeaderMap,
    pseudo_seen: bool,
    fields_seen: bool,
    /// What makes the section malformed, if anything.
    error: Option<&'static str>,
    size: usize,
}

impl HeadBuilder {
    fn push(&mut self, h: Header) {
        self.size += h.size() + 32;
        match h {
            Header::Pseudo(p, v) => {
                self.pseudo_seen = true;
                if self.fields_seen {
                    self.error.get_or_insert("pseudo-header after a field");
                    return;
                }
                let slot = match p {
                    Pseudo::Method => &mut self.method,
                    Pseudo::Scheme => &mut self.scheme,
                    Pseudo::Authority => &mut self.authority,
                    Pseudo::Path => &mut self.path,
                    Pseudo::Status => &mut self.status,
                    Pseudo::Protocol => {
                        self.error
                            .get_or_insert(":protocol without extended CONNECT");
                        return;
                    }
                };
                if slot.replace(v).is_some() {
                    self.error.get_or_insert("pseudo-header twice");
                }
            }
            Header::Field(n, v) => {
                self.fields_seen = true;
                if is_connection_specific(&n) {
                    self.error.get_or_insert("connection-specific header");
                } else if n == http::header::TE && v.as_bytes() != b"trailers" {
                    self.error.get_or_insert("te other than trailers");
                } else if self.size <= MAX_KEPT_LIST {
                    self.headers.append(n, v);
                }
            }
            Header::Malformed { why, .. } => {
                self.error.get_or_insert(why);
            }
        }
    }

    fn response(self) -> Result<http::response::Parts, &'static str> {
        if let Some(why) = self.error {
            return Err(why);
        }
        if self.method.is_some()
            || self.scheme.is_some()
            || self.authority.is_some()
            || self.path.is_some()
        {
            return Err("request pseudo-header in a response");
        }
        let status = self.status.ok_or("no :status")?;
        let status = http::StatusCode::from_bytes(&status).map_err(|_| "bad :status")?;
        let (mut head, ()) = http::Response::new(()).into_parts();
        head.status = status;
        head.version = http::Version::HTTP_2;
        head.headers = self.headers;
        Ok(head)
    }

    fn request(self) -> Result<request::Parts, &'static str> {
        if self.status.is_some() {
            return Err("pseudo-header not for requests");
        }
        if let Some(why) = self.error {
            return Err(why);
        }
        let method =
            Method::from_bytes(&self.method.ok_or("no :method")?).map_err(|_| "bad :method")?;
        let mut uri = http::uri::Parts::default();
        if let Some(a) = self.authority {
            uri.authority = Some(Authority::from_maybe_shared(a).map_err(|_| "bad :authority")?);
        }
        if method == Method::CONNECT {
            if self.scheme.is_some() || self.path.is_some() {
                return Err(":scheme or :path on CONNECT");
            }
            if uri.authority.is_none() {
                return Err("CONNECT without :authority");
            }
        } else {
            let (Some(scheme), Some(path)) = (self.scheme, self.path) else {
                return Err("no :scheme or :path");
            };
            if path.is_empty() {
                return Err("empty :path");
            }
            let scheme = Scheme::try_from(&scheme[..]).map_err(|_| "bad :scheme")?;
            // A URI cannot have a scheme without an authority: without :authority (the Host
            // header may say it), the scheme was checked and is left out.
            if uri.authority.is_some() {
                uri.scheme = Some(scheme);
            }
            uri.path_and_query =
                Some(PathAndQuery::from_maybe_shared(path).map_err(|_| "bad :path")?);
        }
        let uri = Uri::from_parts(uri).map_err(|_| "bad request target")?;
        let (mut head, ()) = http::Request::new(()).into_parts();
        head.method = method;
        head.uri = uri;
        head.version = http::Version::HTTP_2;
        head.headers = self.headers;
        Ok(head)
    }
}

/// Fields past this size are not kept (such a section is answered 431 anyway): a peer
/// cannot make us hold more than this of one.
const MAX_KEPT_LIST: usize = 1 << 20;

/// Encodes `fields` as a HEADERS frame (with CONTINUATIONs if the block outgrows the peer's
/// frame size) straight into `out`: the frame header is filled in once the block is written.
fn write_block<'a>(
    out: &mut BytesMut,
    encoder: &mut hpack::Encoder,
    id: StreamId,
    fields: impl IntoIterator<Item = hpack::Field<'a>>,
    end_stream: bool,
    max_frame: u32,
) {
    let start = out.len();
    out.put_slice(&[0; frame::HEAD_LEN]);
    encoder.encode(fields, out);
    let len = out.len() - start - frame::HEAD_LEN;
    if len <= max_frame as usize {
        out[start..start + frame::HEAD_LEN]
            .copy_from_slice(&frame::headers_head(id, len, end_stream));
        return;
    }
    let block = out.split_off(start + frame::HEAD_LEN);
    out.truncate(start);
    frame::write_headers(out, id, &block, end_stream, max_frame);
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hpack::{Encoder, Field};

    /// A server connection past its first frames, with a small header limit.
    fn conn() -> Conn {
        let mut c = Conn::server(Config {
            max_concurrent_streams: 2,
            max_header_list_size: 1024,
            ..Config::default()
        });
        c.out.clear();
        c
    }

    fn block(fields: &[(&str, &str)]) -> Bytes {
        let mut out = Vec::new();
        let names: Vec<(Option<Pseudo>, http::HeaderName, HeaderValue)> = fields
            .iter()
            .map(|(n, v)| {
                let pseudo = match *n {
                    ":method" => Some(Pseudo::Method),
                    ":scheme" => Some(Pseudo::Scheme),
                    ":path" => Some(Pseudo::Path),
                    ":authority" => Some(Pseudo::Authority),
                    ":status" => Some(Pseudo::Status),
                    _ => None,
                };
                let name = match pseudo {
                    Some(_) => http::HeaderName::from_static("x-unused"),
                    None => http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                };
                (pseudo, name, HeaderValue::from_str(v).unwrap())
            })
            .collect();
        Encoder::new().encode(
            names.iter().map(|(p, n, v)| match p {
                Some(p) => Field::Pseudo(*p, v.as_bytes()),
                None => Field::Header(n, v),
            }),
            &mut out,
        );
        out.into()
    }

    const GET: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "a"),
    ];

    fn headers(stream: u32, block: Bytes, end_stream: bool) -> Frame {
        Frame::Headers {
            stream: StreamId(stream),
            block,
            end_stream,
            end_headers: true,
            priority: None,
        }
    }

    fn data(stream: u32, len: usize, end_stream: bool) -> Frame {
        Frame::Data {
            stream: StreamId(stream),
            data: Bytes::from(vec![b'x'; len]),
            end_stream,
            flow_len: len as u32,
        }
    }

    /// The frames the connection wrote.
    fn written(c: &mut Conn) -> Vec<Frame> {
        let mut out = std::mem::take(&mut c.out);
        let mut frames = Vec::new();
        while let Some(f) = frame::read(&mut out, frame::MAX_MAX_FRAME_SIZE).unwrap() {
            frames.push(f);
        }
        frames
    }

    fn reset_with(c: &mut Conn, stream: u32) -> Option<Reason> {
        written(c).into_iter().find_map(|f| match f {
            Frame::RstStream { stream: s, reason } if s == StreamId(stream) => Some(reason),
            _ => None,
        })
    }

    fn goaway_with(c: &mut Conn) -> Option<Reason> {
        written(c).into_iter().find_map(|f| match f {
            Frame::GoAway { reason, .. } => Some(reason),
            _ => None,
        })
    }

    #[test]
    fn a_request_is_accepted_with_its_head() {
        let mut c = conn();
        let mut fields = GET.to_vec();
        fields.push(("x-a", "1"));
        c.recv(headers(1, block(&fields), true)).unwrap();
        let a = c.pop_accepted().unwrap();
        assert_eq!((a.id, a.end_stream), (StreamId(1), true));
        assert_eq!(a.head.uri, "http://a/");
        assert_eq!(a.head.headers["x-a"], "1");
        assert!(written(&mut c).is_empty());
    }

    #[test]
    fn connection_specific_fields_are_not_sent() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("host", "a"),
            ("te", "trailers"),
            ("x-keep-alive", "1"),
        ] {
            h.append(
                http::HeaderName::from_static(n),
                HeaderValue::from_static(v),
            );
        }
        let sent: Vec<String> = sendable(&h)
            .map(|f| match f {
                hpack::Field::Header(n, _) => n.to_string(),
                hpack::Field::Pseudo(..) => String::new(),
            })
            .collect();
        assert_eq!(sent, ["te", "x-keep-alive"]);
    }

    #[test]
    fn malformed_requests_are_reset_and_never_handed_on() {
        for fields in [
            vec![(":method", "GET"), (":scheme", "http"), (":authority", "a")],
            vec![
                (":method", "GET"),
                (":scheme", "http"),
                (":path", ""),
                (":authority", "a"),
            ],
            vec![
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("connection", "close"),
            ],
            vec![
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("keep-alive", "timeout=5"),
            ],
            vec![
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("proxy-connection", "keep-alive"),
            ],
            vec![
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("transfer-encoding", "chunked"),
            ],
            vec![
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("upgrade", "h2c"),
            ],
            vec![
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("te", "gzip"),
            ],
            vec![
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":status", "200"),
            ],
            vec![
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":method", "GET"),
            ],
            vec![
                (":method", "CONNECT"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "a"),
            ],
        ] {
            let mut c = conn();
            c.recv(headers(1, block(&fields), true)).unwrap();
            assert!(c.pop_accepted().is_none(), "{fields:?}");
            assert_eq!(
                reset_with(&mut c, 1),
                Some(Reason::PROTOCOL_ERROR),
                "{fields:?}"
            );
        }
        // A pseudo-header after a field, an uppercase name: raw blocks (our encoder would not).
        let mut c = conn();
        let mut raw = block(GET).to_vec();
        raw.extend([0x00, 0x03, b'X', b'-', b'A', 0x01, b'1']);
        c.recv(headers(1, raw.into(), true)).unwrap();
        assert!(c.pop_accepted().is_none());
        assert_eq!(reset_with(&mut c, 1), Some(Reason::PROTOCOL_ERROR));
    }

    #[test]
    fn content_length_must_match_the_data() {
        let mut c = conn();
        let mut fields = GET.to_vec();
        fields.push(("content-length", "3"));
        c.recv(headers(1, block(&fields), false)).unwrap();
        assert!(c.pop_accepted().is_some());
        c.recv(data(1, 2, true)).unwrap();
        assert_eq!(reset_with(&mut c, 1), Some(Reason::PROTOCOL_ERROR));
        // And a length with no body at all.
        c.recv(headers(3, block(&fields), true)).unwrap();
        assert!(c.pop_accepted().is_none());
        assert_eq!(reset_with(&mut c, 3), Some(Reason::PROTOCOL_ERROR));
    }

    #[test]
    fn protocol_violations_end_the_connection() {
        let cases: Vec<(Vec<Frame>, Reason)> = vec![
            // A header block interrupted by another frame.
            (
                vec![
                    Frame::Headers {
                        stream: StreamId(1),
                        block: block(GET),
                        end_stream: true,
                        end_headers: false,
                        priority: None,
                    },
                    Frame::Ping {
                        ack: false,
                        payload: [0; 8],
                    },
                ],
                Reason::PROTOCOL_ERROR,
            ),
            (
                vec![Frame::Continuation {
                    stream: StreamId(1),
                    block: Bytes::new(),
                    end_headers: true,
                }],
                Reason::PROTOCOL_ERROR,
            ),
            // A stream the client never opened; a server-numbered one.
            (
                vec![Frame::WindowUpdate {
                    stream: StreamId(9),
                    increment: 1,
                }],
                Reason::PROTOCOL_ERROR,
            ),
            (vec![headers(2, block(GET), true)], Reason::PROTOCOL_ERROR),
            (vec![data(7, 1, false)], Reason::PROTOCOL_ERROR),
            // Not decodable.
            (
                vec![headers(1, Bytes::from_static(&[0xbe]), true)],
                Reason::COMPRESSION_ERROR,
            ),
            // A window pushed past 2^31-1.
            (
                vec![Frame::WindowUpdate {
                    stream: StreamId(0),
                    increment: frame::MAX_WINDOW,
                }],
                Reason::FLOW_CONTROL_ERROR,
            ),
            (
                vec![
                    headers(1, block(GET), false),
                    Frame::WindowUpdate {
                        stream: StreamId(1),
                        increment: 1,
                    },
                    Frame::Settings(Settings {
                        initial_window_size: Some(frame::MAX_WINDOW),
                        ..Settings::default()
                    }),
                ],
                Reason::FLOW_CONTROL_ERROR,
            ),
            (
                vec![Frame::PushPromise {
                    stream: StreamId(1),
                    promised: StreamId(2),
                    block: Bytes::new(),
                    end_headers: true,
                }],
                Reason::PROTOCOL_ERROR,
            ),
        ];
        for (frames, want) in cases {
            let mut c = conn();
            let mut result = Ok(());
            for f in frames.clone() {
                result = c.recv(f);
                if result.is_err() {
                    break;
                }
            }
            assert!(result.is_err(), "{frames:?}");
            assert_eq!(goaway_with(&mut c), Some(want), "{frames:?}");
        }
    }

    #[test]
    fn flow_control_is_enforced_and_given_back_as_data_is_read() {
        // The connection's window: 65,535 to start with (it can only grow); a stream's larger.
        let mut c = Conn::server(Config {
            stream_window: 70_000,
            connection_window: 65_535,
            ..Config::default()
        });
        c.out.clear();
        c.recv(headers(1, block(GET), false)).unwrap();
        c.recv(data(1, 65_535, false)).unwrap();
        c.recv(data(1, 1, false)).unwrap_err();
        assert_eq!(goaway_with(&mut c), Some(Reason::FLOW_CONTROL_ERROR));
        // A stream's window: that stream is reset, the connection goes on.
        let mut c = Conn::server(Config {
            stream_window: 100,
            ..Config::default()
        });
        c.out.clear();
        c.recv(headers(1, block(GET), false)).unwrap();
        c.pop_accepted().unwrap();
        c.recv(data(1, 100, false)).unwrap();
        c.recv(data(1, 1, false)).unwrap();
        assert_eq!(reset_with(&mut c, 1), Some(Reason::FLOW_CONTROL_ERROR));
        // Reading data gives credit back: a WINDOW_UPDATE once half a window is read.
        c.recv(headers(3, block(GET), false)).unwrap();
        c.pop_accepted().unwrap();
        c.recv(data(3, 60, false)).unwrap();
        assert!(written(&mut c).is_empty());
        c.release(StreamId(3), 60);
        let updates: Vec<_> = written(&mut c)
            .into_iter()
            .filter_map(|f| match f {
                Frame::WindowUpdate { stream, increment } => Some((stream.0, increment)),
                _ => None,
            })
            .collect();
        assert_eq!(updates, [(3, 60)]);
    }

    #[test]
    fn pings_are_answered_and_oversized_blocks_refused() {
        let mut c = conn();
        c.recv(Frame::Ping {
            ack: false,
            payload: *b"abcdefgh",
        })
        .unwrap();
        assert_eq!(
            written(&mut c),
            [Frame::Ping {
                ack: true,
                payload: *b"abcdefgh"
            }]
        );
        // CONTINUATIONs without end: refused once past twice the larger of the header limit and
        // 16 KiB.
        c.recv(Frame::Headers {
            stream: StreamId(1),
            block: Bytes::from(vec![0u8; 16 << 10]),
            end_stream: true,
            end_headers: false,
            priority: None,
        })
        .unwrap();
        c.recv(Frame::Continuation {
            stream: StreamId(1),
            block: Bytes::from(vec![0u8; 16 << 10]),
            end_headers: false,
        })
        .unwrap();
        c.recv(Frame::Continuation {
            stream: StreamId(1),
            block: Bytes::from(vec![0u8; 1]),
            end_headers: false,
        })
        .unwrap_err();
        assert_eq!(goaway_with(&mut c), Some(Reason::ENHANCE_YOUR_CALM));
    }

    /// Opens a request and lets the handler take it.
    fn open(c: &mut Conn, id: u32) {
        c.recv(headers(id, block(GET), true)).unwrap();
        c.pop_accepted().unwrap();
    }

    fn reset(c: &mut Conn, id: u32) -> Result<(), ConnError> {
        c.recv(Frame::RstStream {
            stream: StreamId(id),
            reason: Reason::CANCEL,
        })
    }

    /// The handler let go of the stream (both of its handles).
    fn let_go(c: &mut Conn, id: u32) {
        c.drop_ref(StreamId(id));
        c.drop_ref(StreamId(id));
    }

    /// Rapid reset (CVE-2023-44487): a client resetting every request as soon as it opened it
    /// is cut off at the 250th (half of the floor of 500), with ENHANCE_YOUR_CALM.
    #[test]
    fn a_client_resetting_its_requests_at_once_is_disconnected() {
        let mut c = Conn::server(Config::default());
        c.out.clear();
        let mut closed_at = None;
        for n in 1..=1000u32 {
            let id = 2 * n - 1;
            open(&mut c, id);
            if reset(&mut c, id).is_err() {
                closed_at = Some(n);
                break;
            }
            let_go(&mut c, id);
        }
        assert_eq!(closed_at, Some(250));
        assert_eq!(goaway_with(&mut c), Some(Reason::ENHANCE_YOUR_CALM));
    }

    /// Not cut off: a client resetting a third of its requests at once; one resetting requests
    /// whose answers were complete; one resetting requests older than a second.
    #[test]
    fn cancelling_some_requests_or_late_ones_is_not_rapid_reset() {
        let answered = http::Response::new(()).into_parts().0;
        let mut c = Conn::server(Config::default());
        for n in 1..=3000u32 {
            let id = 2 * n - 1;
            open(&mut c, id);
            match n % 3 {
                0 => reset(&mut c, id).unwrap(),
                1 => {
                    c.send_headers(StreamId(id), &answered, true).unwrap();
                    reset(&mut c, id).unwrap();
                }
                _ => {
                    // An hour old, as far as its age goes.
                    if let Some(s) = c.streams.get_mut(&id) {
                        s.opened_ms = s.opened_ms.saturating_sub(3_600_000);
                    }
                    reset(&mut c, id).unwrap();
                }
            }
            let_go(&mut c, id);
        }
        assert!(c.error.is_none());
        assert_eq!(c.early_resets, 1000);
    }

    /// "MadeYouReset": frames that make the server reset the request count the same.
    #[test]
    fn requests_the_client_makes_us_reset_count_as_its_resets() {
        let mut c = Conn::server(Config::default());
        c.out.clear();
        for n in 1..=250u32 {
            let id = 2 * n - 1;
            open(&mut c, id);
            // DATA after the request's END_STREAM: the stream is reset STREAM_CLOSED.
            c.recv(data(id, 1, false)).unwrap();
            let_go(&mut c, id);
        }
        assert!(c.error.is_some());
        assert_eq!(goaway_with(&mut c), Some(Reason::ENHANCE_YOUR_CALM));
    }

    #[test]
    fn reset_streams_count_against_the_limit_until_their_handlers_let_go() {
        let mut c = conn(); // at most 2 streams
        for id in [1, 3] {
            c.recv(headers(id, block(GET), false)).unwrap();
            c.pop_accepted().unwrap();
            c.recv(Frame::RstStream {
                stream: StreamId(id),
                reason: Reason::CANCEL,
            })
            .unwrap();
        }
        // Both handlers still hold their streams: a third is refused.
        c.recv(headers(5, block(GET), false)).unwrap();
        assert!(c.pop_accepted().is_none());
        assert_eq!(reset_with(&mut c, 5), Some(Reason::REFUSED_STREAM));
        // The handlers let go (two handles each): room again.
        for id in [1, 3] {
            c.drop_ref(StreamId(id));
            c.drop_ref(StreamId(id));
        }
        assert_eq!(c.stream_count(), 0);
        c.recv(headers(7, block(GET), true)).unwrap();
        assert!(c.pop_accepted().is_some());
    }

    #[test]
    fn a_response_sent_in_full_before_the_request_ends_resets_with_no_error() {
        let mut c = conn();
        c.recv(headers(1, block(GET), false)).unwrap();
        c.pop_accepted().unwrap();
        let (mut head, ()) = http::Response::new(()).into_parts();
        head.status = http::StatusCode::OK;
        c.send_headers(StreamId(1), &head, true).unwrap();
        c.drop_ref(StreamId(1));
        c.drop_ref(StreamId(1));
        assert_eq!(reset_with(&mut c, 1), Some(Reason::NO_ERROR));
        assert_eq!(c.stream_count(), 0);
        // Its data still in flight is ignored, and the connection's credit comes back.
        c.recv(data(1, 10, true)).unwrap();
    }

    /// A client presumes a stream limit only until the server's SETTINGS say what it is.
    #[test]
    fn a_presumed_stream_limit_holds_until_the_servers_settings() {
        let mut c = Conn::client(Config::default());
        let uri = http::Uri::from_static("http://a/");
        assert_eq!(c.peer_max_streams(), PRESUMED_PEER_MAX_STREAMS);
        c.presume_peer_max_streams(2);
        for _ in 0..2 {
            c.open(&Method::GET, &uri, &HeaderMap::new(), true, 1)
                .unwrap();
        }
        assert_eq!(c.can_open(), Ok(false));
        c.recv(Frame::Settings(Settings {
            max_concurrent_streams: Some(3),
            ..Settings::default()
        }))
        .unwrap();
        assert_eq!(c.can_open(), Ok(true));
        // Once the server has spoken, a presumption changes nothing.
        c.presume_peer_max_streams(1);
        assert_eq!(c.peer_max_streams(), 3);
        // A server whose SETTINGS name no limit has none.
        let mut c = Conn::client(Config::default());
        c.recv(Frame::Settings(Settings::default())).unwrap();
        assert_eq!(c.peer_max_streams(), usize::MAX);
    }
}
