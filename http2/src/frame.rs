//! Frames (RFC 9113 §4, §6): taken whole off the front of a read buffer, with every check the
//! RFC asks of a frame on its own, and written into a write buffer.
//!
//! What a frame means for the connection or a stream (states, flow control, header blocks
//! split over CONTINUATION) is the connection's business, not this module's.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// What a client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A frame's header: length (24 bits), type, flags, stream (31 bits).
pub const HEAD_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE's initial value and its bounds (§6.5.2).
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 1 << 14;
pub const MAX_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// The largest flow-control window (§6.9.1) and the initial one (§6.5.2).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;
pub const DEFAULT_WINDOW: u32 = 65_535;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

/// A stream identifier (31 bits; 0 is the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u32);

impl StreamId {
    pub const CONNECTION: StreamId = StreamId(0);

    pub fn is_client_initiated(self) -> bool {
        self.0 % 2 == 1
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An error code (§7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reason(pub u32);

impl Reason {
    pub const NO_ERROR: Reason = Reason(0x0);
    pub const PROTOCOL_ERROR: Reason = Reason(0x1);
    pub const INTERNAL_ERROR: Reason = Reason(0x2);
    pub const FLOW_CONTROL_ERROR: Reason = Reason(0x3);
    pub const SETTINGS_TIMEOUT: Reason = Reason(0x4);
    pub const STREAM_CLOSED: Reason = Reason(0x5);
    pub const FRAME_SIZE_ERROR: Reason = Reason(0x6);
    pub const REFUSED_STREAM: Reason = Reason(0x7);
    pub const CANCEL: Reason = Reason(0x8);
    pub const COMPRESSION_ERROR: Reason = Reason(0x9);
    pub const CONNECT_ERROR: Reason = Reason(0xa);
    pub const ENHANCE_YOUR_CALM: Reason = Reason(0xb);
    pub const INADEQUATE_SECURITY: Reason = Reason(0xc);
    pub const HTTP_1_1_REQUIRED: Reason = Reason(0xd);
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            0x0 => "NO_ERROR",
            0x1 => "PROTOCOL_ERROR",
            0x2 => "INTERNAL_ERROR",
            0x3 => "FLOW_CONTROL_ERROR",
            0x4 => "SETTINGS_TIMEOUT",
            0x5 => "STREAM_CLOSED",
            0x6 => "FRAME_SIZE_ERROR",
            0x7 => "REFUSED_STREAM",
            0x8 => "CANCEL",
            0x9 => "COMPRESSION_ERROR",
            0xa => "CONNECT_ERROR",
            0xb => "ENHANCE_YOUR_CALM",
            0xc => "INADEQUATE_SECURITY",
            0xd => "HTTP_1_1_REQUIRED",
            other => return write!(f, "error code {other:#x}"),
        };
        f.write_str(name)
    }
}

/// A frame that breaks the protocol on its own: the connection must end (GOAWAY with
/// `reason`), or only the stream (RST_STREAM).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("connection error {reason}: {why}")]
    Connection { reason: Reason, why: &'static str },
    #[error("stream {stream} error {reason}: {why}")]
    Stream {
        stream: StreamId,
        reason: Reason,
        why: &'static str,
    },
}

fn connection(reason: Reason, why: &'static str) -> FrameError {
    FrameError::Connection { reason, why }
}

/// A stream's priority as HEADERS or PRIORITY state it (§5.3.2; deprecated, read and ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priority {
    pub dependency: StreamId,
    pub exclusive: bool,
    pub weight: u8,
}

/// The parameters a SETTINGS frame sets (§6.5.2; ENABLE_CONNECT_PROTOCOL from RFC 8441); each
/// is `None` unless the frame carried it. Unknown parameters are ignored, as §6.5.2 requires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    pub header_table_size: Option<u32>,
    pub enable_push: Option<bool>,
    pub max_concurrent_streams: Option<u32>,
    pub initial_window_size: Option<u32>,
    pub max_frame_size: Option<u32>,
    pub max_header_list_size: Option<u32>,
    pub enable_connect_protocol: Option<bool>,
}

/// One frame, checked on its own. Padding is removed, but counted in `flow_len` where flow
/// control counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: StreamId,
        data: Bytes,
        end_stream: bool,
        /// The frame's whole payload, padding included: what it takes from the windows.
        flow_len: u32,
    },
    Headers {
        stream: StreamId,
        block: Bytes,
        end_stream: bool,
        end_headers: bool,
        priority: Option<Priority>,
    },
    Priority {
        stream: StreamId,
        priority: Priority,
    },
    RstStream {
        stream: StreamId,
        reason: Reason,
    },
    Settings(Settings),
    SettingsAck,
    PushPromise {
        stream: StreamId,
        promised: StreamId,
        block: Bytes,
        end_headers: bool,
    },
    Ping {
        ack: bool,
        payload: [u8; 8],
    },
    GoAway {
        last_stream: StreamId,
        reason: Reason,
        debug: Bytes,
    },
    WindowUpdate {
        stream: StreamId,
        increment: u32,
    },
    Continuation {
        stream: StreamId,
        block: Bytes,
        end_headers: bool,
    },
    /// A frame of a type this implementation does not know: ignored (§4.1, §5.5).
    Unknown {
        kind: u8,
        stream: StreamId,
    },
}

/// Takes the first frame off `buf` if all of it has arrived (`Ok(None)`: read more). Frames
/// longer than `max_frame_size` (our SETTINGS_MAX_FRAME_SIZE) are refused before they are
/// waited for.
pub fn read(buf: &mut BytesMut, max_frame_size: u32) -> Result<Option<Frame>, FrameError> {
    if buf.len() < HEAD_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]);
    if len > max_frame_size {
        // Any frame: treated as the connection's error, which §5.4 allows for all.
        return Err(connection(
            Reason::FRAME_SIZE_ERROR,
            "frame longer than SETTINGS_MAX_FRAME_SIZE",
        ));
    }
    if buf.len() < HEAD_LEN + len as usize {
        buf.reserve(HEAD_LEN + len as usize - buf.len());
        return Ok(None);
    }
    let (kind, flags) = (buf[3], buf[4]);
    let stream = StreamId(u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & MAX_WINDOW);
    buf.advance(HEAD_LEN);
    let payload = buf.split_to(len as usize).freeze();
    parse(kind, flags, stream, payload).map(Some)
}

fn parse(kind: u8, flags: u8, stream: StreamId, mut payload: Bytes) -> Result<Frame, FrameError> {
    let len = payload.len();
    let on_stream = |what: &'static str| match stream.0 {
        0 => Err(connection(Reason::PROTOCOL_ERROR, what)),
        _ => Ok(()),
    };
    let on_connection = |what: &'static str| match stream.0 {
        0 => Ok(()),
        _ => Err(connection(Reason::PROTOCOL_ERROR, what)),
    };
    Ok(match kind {
        DATA => {
            on_stream("DATA on stream 0")?;
            let data = unpad(flags, &mut payload)?;
            Frame::Data {
                stream,
                data,
                end_stream: flags & END_STREAM != 0,
                flow_len: len as u32,
            }
        }
        HEADERS => {
            on_stream("HEADERS on stream 0")?;
            let mut rest = unpad(flags, &mut payload)?;
            let priority = if flags & PRIORITY_FLAG != 0 {
                if rest.len() < 5 {
                    return Err(connection(
                        Reason::FRAME_SIZE_ERROR,
                        "HEADERS too short for its priority",
                    ));
                }
                Some(priority(stream, &mut rest)?)
            } else {
                None
            };
            Frame::Headers {
                stream,
                block: rest,
                end_stream: flags & END_STREAM != 0,
                end_headers: flags & END_HEADERS != 0,
                priority,
            }
        }
        PRIORITY => {
            on_stream("PRIORITY on stream 0")?;
            if len != 5 {
                return Err(FrameError::Stream {
                    stream,
                    reason: Reason::FRAME_SIZE_ERROR,
                    why: "PRIORITY not 5 octets",
                });
            }
            Frame::Priority {
                stream,
                priority: priority(stream, &mut payload)?,
            }
        }
        RST_STREAM => {
            on_stream("RST_STREAM on stream 0")?;
            if len != 4 {
                return Err(connection(
                    Reason::FRAME_SIZE_ERROR,
                    "RST_STREAM not 4 octets",
                ));
            }
            Frame::RstStream {
                stream,
                reason: Reason(payload.get_u32()),
            }
        }
        SETTINGS => {
            on_connection("SETTINGS on a stream")?;
            if flags & ACK != 0 {
                if len != 0 {
                    return Err(connection(
                        Reason::FRAME_SIZE_ERROR,
                        "SETTINGS acknowledgement with a payload",
                    ));
                }
                return Ok(Frame::SettingsAck);
            }
            if !len.is_multiple_of(6) {
                return Err(connection(
                    Reason::FRAME_SIZE_ERROR,
                    "SETTINGS not a multiple of 6 octets",
                ));
            }
            Frame::Settings(settings(&mut payload)?)
        }
        PUSH_PROMISE => {
            on_stream("PUSH_PROMISE on stream 0")?;
            let mut rest = unpad(flags, &mut payload)?;
            if rest.len() < 4 {
                return Err(connection(
                    Reason::FRAME_SIZE_ERROR,
                    "PUSH_PROMISE too short",
                ));
            }
            let promised = StreamId(rest.get_u32() & MAX_WINDOW);
            Frame::PushPromise {
                stream,
                promised,
                block: rest,
                end_headers: flags & END_HEADERS != 0,
            }
        }
        PING => {
            on_connection("PING on a stream")?;
            let Ok(payload) = <[u8; 8]>::try_from(&payload[..]) else {
                return Err(connection(Reason::FRAME_SIZE_ERROR, "PING not 8 octets"));
            };
            Frame::Ping {
                ack: flags & ACK != 0,
                payload,
            }
        }
        GOAWAY => {
            on_connection("GOAWAY on a stream")?;
            if len < 8 {
                return Err(connection(Reason::FRAME_SIZE_ERROR, "GOAWAY too short"));
            }
            let last_stream = StreamId(payload.get_u32() & MAX_WINDOW);
            let reason = Reason(payload.get_u32());
            Frame::GoAway {
                last_stream,
                reason,
                debug: payload,
            }
        }
        WINDOW_UPDATE => {
            if len != 4 {
                return Err(connection(
                    Reason::FRAME_SIZE_ERROR,
                    "WINDOW_UPDATE not 4 octets",
                ));
            }
            let increment = payload.get_u32() & MAX_WINDOW;
            if increment == 0 {
                let why = "WINDOW_UPDATE of 0";
                return Err(match stream.0 {
                    0 => connection(Reason::PROTOCOL_ERROR, why),
                    _ => FrameError::Stream {
                        stream,
                        reason: Reason::PROTOCOL_ERROR,
                        why,
                    },
                });
            }
            Frame::WindowUpdate { stream, increment }
        }
        CONTINUATION => {
            on_stream("CONTINUATION on stream 0")?;
            Frame::Continuation {
                stream,
                block: payload,
                end_headers: flags & END_HEADERS != 0,
            }
        }
        kind => Frame::Unknown { kind, stream },
    })
}

/// The payload of a padded frame without its padding (§6.1).
fn unpad(flags: u8, payload: &mut Bytes) -> Result<Bytes, FrameError> {
    if flags & PADDED == 0 {
        return Ok(std::mem::take(payload));
    }
    let Some(&pad) = payload.first() else {
        return Err(connection(
            Reason::FRAME_SIZE_ERROR,
            "padded frame without its pad length",
        ));
    };
    if pad as usize >= payload.len() {
        return Err(connection(
            Reason::PROTOCOL_ERROR,
            "padding as long as the frame",
        ));
    }
    Ok(payload.slice(1..payload.len() - pad as usize))
}

fn priority(stream: StreamId, rest: &mut Bytes) -> Result<Priority, FrameError> {
    let word = rest.get_u32();
    let priority = Priority {
        dependency: StreamId(word & MAX_WINDOW),
        exclusive: word & !MAX_WINDOW != 0,
        weight: rest.get_u8(),
    };
    if priority.dependency == stream {
        return Err(FrameError::Stream {
            stream,
            reason: Reason::PROTOCOL_ERROR,
            why: "stream depends on itself",
        });
    }
    Ok(priority)
}

fn settings(payload: &mut Bytes) -> Result<Settings, FrameError> {
    let mut s = Settings::default();
    let flag = |v: u32, what| match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(connection(Reason::PROTOCOL_ERROR, what)),
    };
    while payload.has_remaining() {
        let (id, value) = (payload.get_u16(), payload.get_u32());
        match id {
            0x1 => s.header_table_size = Some(value),
            0x2 => s.enable_push = Some(flag(value, "SETTINGS_ENABLE_PUSH not 0 or 1")?),
            0x3 => s.max_concurrent_streams = Some(value),
            0x4 if value > MAX_WINDOW => {
                return Err(connection(
                    Reason::FLOW_CONTROL_ERROR,
                    "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
                ));
            }
            0x4 => s.initial_window_size = Some(value),
            0x5 if !(DEFAULT_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).contains(&value) => {
                return Err(connection(
                    Reason::PROTOCOL_ERROR,
                    "SETTINGS_MAX_FRAME_SIZE outside 2^14..2^24-1",
                ));
            }
            0x5 => s.max_frame_size = Some(value),
            0x6 => s.max_header_list_size = Some(value),
            0x8 => {
                s.enable_connect_protocol =
                    Some(flag(value, "SETTINGS_ENABLE_CONNECT_PROTOCOL not 0 or 1")?)
            }
            _ => {}
        }
    }
    Ok(s)
}

// ---------------------------------------------------------------- writing

/// A frame header.
pub fn head(len: usize, kind: u8, flags: u8, stream: StreamId) -> [u8; HEAD_LEN] {
    let l = (len as u32).to_be_bytes();
    let s = stream.0.to_be_bytes();
    [l[1], l[2], l[3], kind, flags, s[0], s[1], s[2], s[3]]
}

/// The header of a DATA frame carrying `len` octets (the caller writes or chains them; they
/// must fit the peer's SETTINGS_MAX_FRAME_SIZE).
pub fn data_head(stream: StreamId, len: usize, end_stream: bool) -> [u8; HEAD_LEN] {
    head(len, DATA, if end_stream { END_STREAM } else { 0 }, stream)
}

/// The header of a HEADERS frame carrying a whole header block of `len` octets.
pub fn headers_head(stream: StreamId, len: usize, end_stream: bool) -> [u8; HEAD_LEN] {
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    head(len, HEADERS, flags, stream)
}

pub fn write_data(dst: &mut impl BufMut, stream: StreamId, data: &[u8], end_stream: bool) {
    dst.put_slice(&data_head(stream, data.len(), end_stream));
    dst.put_slice(data);
}

/// A header block as HEADERS plus as many CONTINUATIONs as `max_frame_size` (the peer's)
/// requires.
pub fn write_headers(
    dst: &mut impl BufMut,
    stream: StreamId,
    block: &[u8],
    end_stream: bool,
    max_frame_size: u32,
) {
    let mut chunks = block.chunks(max_frame_size.max(1) as usize);
    let first = chunks.next().unwrap_or(&[]);
    let mut flags = if end_stream { END_STREAM } else { 0 };
    if first.len() == block.len() {
        flags |= END_HEADERS;
    }
    dst.put_slice(&head(first.len(), HEADERS, flags, stream));
    dst.put_slice(first);
    let mut written = first.len();
    for chunk in chunks {
        written += chunk.len();
        let flags = if written == block.len() {
            END_HEADERS
        } else {
            0
        };
        dst.put_slice(&head(chunk.len(), CONTINUATION, flags, stream));
        dst.put_slice(chunk);
    }
}

pub fn write_settings(dst: &mut impl BufMut, s: &Settings) {
    let params = [
        (0x1, s.header_table_size),
        (0x2, s.enable_push.map(u32::from)),
        (0x3, s.max_concurrent_streams),
        (0x4, s.initial_window_size),
        (0x5, s.max_frame_size),
        (0x6, s.max_header_list_size),
        (0x8, s.enable_connect_protocol.map(u32::from)),
    ];
    let count = params.iter().filter(|(_, v)| v.is_some()).count();
    dst.put_slice(&head(count * 6, SETTINGS, 0, StreamId::CONNECTION));
    for (id, value) in params {
        if let Some(value) = value {
            dst.put_u16(id);
            dst.put_u32(value);
        }
    }
}

pub fn write_settings_ack(dst: &mut impl BufMut) {
    dst.put_slice(&head(0, SETTINGS, ACK, StreamId::CONNECTION));
}

pub fn write_ping(dst: &mut impl BufMut, ack: bool, payload: [u8; 8]) {
    dst.put_slice(&head(
        8,
        PING,
        if ack { ACK } else { 0 },
        StreamId::CONNECTION,
    ));
    dst.put_slice(&payload);
}

pub fn write_goaway(dst: &mut impl BufMut, last_stream: StreamId, reason: Reason, debug: &[u8]) {
    dst.put_slice(&head(8 + debug.len(), GOAWAY, 0, StreamId::CONNECTION));
    dst.put_u32(last_stream.0);
    dst.put_u32(reason.0);
    dst.put_slice(debug);
}

pub fn write_rst_stream(dst: &mut impl BufMut, stream: StreamId, reason: Reason) {
    dst.put_slice(&head(4, RST_STREAM, 0, stream));
    dst.put_u32(reason.0);
}

pub fn write_window_update(dst: &mut impl BufMut, stream: StreamId, increment: u32) {
    dst.put_slice(&head(4, WINDOW_UPDATE, 0, stream));
    dst.put_u32(increment);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Result<Option<Frame>, FrameError> {
        read(&mut BytesMut::from(bytes), DEFAULT_MAX_FRAME_SIZE)
    }

    fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = head(payload.len(), kind, flags, StreamId(stream)).to_vec();
        out.extend(payload);
        out
    }

    fn conn_err(reason: Reason) -> impl Fn(Result<Option<Frame>, FrameError>) -> bool {
        move |r| matches!(r, Err(FrameError::Connection { reason: got, .. }) if got == reason)
    }

    #[test]
    fn written_frames_read_back() {
        let mut buf = BytesMut::new();
        let settings = Settings {
            header_table_size: Some(0),
            enable_push: Some(false),
            max_concurrent_streams: Some(100),
            initial_window_size: Some(1 << 20),
            max_frame_size: Some(1 << 20),
            max_header_list_size: Some(64 << 10),
            enable_connect_protocol: Some(true),
        };
        write_settings(&mut buf, &settings);
        write_settings_ack(&mut buf);
        write_headers(
            &mut buf,
            StreamId(1),
            b"block",
            false,
            DEFAULT_MAX_FRAME_SIZE,
        );
        write_data(&mut buf, StreamId(1), b"hello", true);
        write_ping(&mut buf, true, *b"12345678");
        write_goaway(&mut buf, StreamId(7), Reason::ENHANCE_YOUR_CALM, b"bye");
        write_rst_stream(&mut buf, StreamId(3), Reason::CANCEL);
        write_window_update(&mut buf, StreamId::CONNECTION, 1000);
        let mut frames = Vec::new();
        while let Some(f) = read(&mut buf, DEFAULT_MAX_FRAME_SIZE).unwrap() {
            frames.push(f);
        }
        assert!(buf.is_empty());
        assert_eq!(
            frames,
            [
                Frame::Settings(settings),
                Frame::SettingsAck,
                Frame::Headers {
                    stream: StreamId(1),
                    block: Bytes::from_static(b"block"),
                    end_stream: false,
                    end_headers: true,
                    priority: None
                },
                Frame::Data {
                    stream: StreamId(1),
                    data: Bytes::from_static(b"hello"),
                    end_stream: true,
                    flow_len: 5
                },
                Frame::Ping {
                    ack: true,
                    payload: *b"12345678"
                },
                Frame::GoAway {
                    last_stream: StreamId(7),
                    reason: Reason::ENHANCE_YOUR_CALM,
                    debug: Bytes::from_static(b"bye")
                },
                Frame::RstStream {
                    stream: StreamId(3),
                    reason: Reason::CANCEL
                },
                Frame::WindowUpdate {
                    stream: StreamId::CONNECTION,
                    increment: 1000
                },
            ]
        );
    }

    #[test]
    fn a_large_block_is_split_over_continuations() {
        let block: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let mut buf = BytesMut::new();
        write_headers(&mut buf, StreamId(5), &block, true, DEFAULT_MAX_FRAME_SIZE);
        let mut got = Vec::new();
        let mut kinds = Vec::new();
        while let Some(f) = read(&mut buf, DEFAULT_MAX_FRAME_SIZE).unwrap() {
            match f {
                Frame::Headers {
                    block,
                    end_stream,
                    end_headers,
                    ..
                } => {
                    kinds.push(("HEADERS", end_stream, end_headers));
                    got.extend(block);
                }
                Frame::Continuation {
                    block, end_headers, ..
                } => {
                    kinds.push(("CONTINUATION", false, end_headers));
                    got.extend(block);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, block);
        assert_eq!(
            kinds,
            [
                ("HEADERS", true, false),
                ("CONTINUATION", false, false),
                ("CONTINUATION", false, true)
            ]
        );
    }

    #[test]
    fn partial_frames_wait_and_oversized_ones_are_refused_early() {
        let whole = raw(DATA, 0, 1, b"0123456789");
        let mut buf = BytesMut::from(&whole[..12]);
        assert_eq!(read(&mut buf, DEFAULT_MAX_FRAME_SIZE), Ok(None));
        assert_eq!(buf.len(), 12);
        buf.extend_from_slice(&whole[12..]);
        assert!(matches!(
            read(&mut buf, DEFAULT_MAX_FRAME_SIZE),
            Ok(Some(Frame::Data { .. }))
        ));
        // Only the header of a frame above the limit has arrived: refused already.
        let big = head(DEFAULT_MAX_FRAME_SIZE as usize + 1, DATA, 0, StreamId(1));
        assert!(conn_err(Reason::FRAME_SIZE_ERROR)(one(&big)));
    }

    #[test]
    fn padding_and_priority_are_removed_and_checked() {
        // DATA: pad length 3, "ab", three octets of padding; all five count for flow control.
        let f = one(&raw(DATA, PADDED | END_STREAM, 1, b"\x03ab\0\0\0")).unwrap();
        assert_eq!(
            f,
            Some(Frame::Data {
                stream: StreamId(1),
                data: Bytes::from_static(b"ab"),
                end_stream: true,
                flow_len: 6
            })
        );
        let f = one(&raw(
            HEADERS,
            PADDED | PRIORITY_FLAG | END_HEADERS,
            3,
            b"\x01\x80\0\0\x01\x0fXY\0",
        ))
        .unwrap();
        assert_eq!(
            f,
            Some(Frame::Headers {
                stream: StreamId(3),
                block: Bytes::from_static(b"XY"),
                end_stream: false,
                end_headers: true,
                priority: Some(Priority {
                    dependency: StreamId(1),
                    exclusive: true,
                    weight: 15
                })
            })
        );
        assert!(conn_err(Reason::PROTOCOL_ERROR)(one(&raw(
            DATA, PADDED, 1, b"\x03ab"
        ))));
        assert!(conn_err(Reason::FRAME_SIZE_ERROR)(one(&raw(
            DATA, PADDED, 1, b""
        ))));
        assert!(conn_err(Reason::FRAME_SIZE_ERROR)(one(&raw(
            HEADERS,
            PRIORITY_FLAG,
            1,
            b"\0\0"
        ))));
        // A stream that depends on itself: that stream's error only.
        assert!(matches!(
            one(&raw(PRIORITY, 0, 5, b"\0\0\0\x05\x10")),
            Err(FrameError::Stream {
                stream: StreamId(5),
                reason: Reason::PROTOCOL_ERROR,
                ..
            })
        ));
        assert!(matches!(
            one(&raw(PRIORITY, 0, 5, b"\0\0\0\x01")),
            Err(FrameError::Stream {
                reason: Reason::FRAME_SIZE_ERROR,
                ..
            })
        ));
    }

    #[test]
    fn frames_on_the_wrong_stream_or_of_the_wrong_size_are_errors() {
        let protocol = conn_err(Reason::PROTOCOL_ERROR);
        let size = conn_err(Reason::FRAME_SIZE_ERROR);
        for (frame, is) in [
            (raw(DATA, 0, 0, b"x"), &protocol as &dyn Fn(_) -> bool),
            (raw(HEADERS, 0, 0, b""), &protocol),
            (raw(PRIORITY, 0, 0, b"\0\0\0\x01\x10"), &protocol),
            (raw(RST_STREAM, 0, 0, b"\0\0\0\x08"), &protocol),
            (raw(RST_STREAM, 0, 1, b"\0\0\x08"), &size),
            (raw(SETTINGS, 0, 1, b""), &protocol),
            (raw(SETTINGS, ACK, 0, b"\0\x01\0\0\0\0"), &size),
            (raw(SETTINGS, 0, 0, b"\0\x01\0\0\0"), &size),
            (raw(PUSH_PROMISE, 0, 0, b"\0\0\0\x02"), &protocol),
            (raw(PUSH_PROMISE, 0, 1, b"\0\0\0"), &size),
            (raw(PING, 0, 1, b"12345678"), &protocol),
            (raw(PING, 0, 0, b"1234567"), &size),
            (raw(GOAWAY, 0, 1, b"\0\0\0\0\0\0\0\0"), &protocol),
            (raw(GOAWAY, 0, 0, b"\0\0\0\0"), &size),
            (raw(WINDOW_UPDATE, 0, 0, b"\0\0\0\0"), &protocol),
            (raw(WINDOW_UPDATE, 0, 1, b"\0\0\x01"), &size),
            (raw(CONTINUATION, END_HEADERS, 0, b""), &protocol),
        ] {
            assert!(is(one(&frame)), "{:?}: {:?}", &frame[..9], one(&frame));
        }
        // A zero increment on a stream is that stream's error.
        assert!(matches!(
            one(&raw(WINDOW_UPDATE, 0, 3, b"\0\0\0\0")),
            Err(FrameError::Stream {
                stream: StreamId(3),
                ..
            })
        ));
    }

    #[test]
    fn settings_are_checked_and_unknown_ones_ignored() {
        let param = |id: u16, v: u32| {
            let mut p = id.to_be_bytes().to_vec();
            p.extend(v.to_be_bytes());
            raw(SETTINGS, 0, 0, &p)
        };
        assert!(conn_err(Reason::PROTOCOL_ERROR)(one(&param(2, 2))));
        assert!(conn_err(Reason::FLOW_CONTROL_ERROR)(one(&param(
            4,
            1 << 31
        ))));
        assert!(conn_err(Reason::PROTOCOL_ERROR)(one(&param(5, 16_383))));
        assert!(conn_err(Reason::PROTOCOL_ERROR)(one(&param(5, 1 << 24))));
        assert!(conn_err(Reason::PROTOCOL_ERROR)(one(&param(8, 7))));
        assert_eq!(
            one(&param(0x99, 7)),
            Ok(Some(Frame::Settings(Settings::default())))
        );
        // The same parameter twice: the last one counts.
        let mut p = param(3, 10)[9..].to_vec();
        p.extend(&param(3, 20)[9..]);
        assert_eq!(
            one(&raw(SETTINGS, 0, 0, &p)),
            Ok(Some(Frame::Settings(Settings {
                max_concurrent_streams: Some(20),
                ..Settings::default()
            })))
        );
    }

    #[test]
    fn unknown_frames_and_the_reserved_bit() {
        assert_eq!(
            one(&raw(0xfa, 0xff, 9, b"whatever")),
            Ok(Some(Frame::Unknown {
                kind: 0xfa,
                stream: StreamId(9)
            }))
        );
        // The stream identifier's reserved bit is ignored (§4.1).
        let mut f = raw(WINDOW_UPDATE, 0, 1, &[0x80, 0, 0, 1]);
        f[5] |= 0x80;
        assert_eq!(
            one(&f),
            Ok(Some(Frame::WindowUpdate {
                stream: StreamId(1),
                increment: 1
            }))
        );
        assert_eq!(Reason::ENHANCE_YOUR_CALM.to_string(), "ENHANCE_YOUR_CALM");
        assert_eq!(Reason(0x42).to_string(), "error code 0x42");
    }
}
