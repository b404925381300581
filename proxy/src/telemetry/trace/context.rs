//! Trace context on the wire: W3C `traceparent` (with `tracestate` passed along untouched), B3
//! multiple headers (`X-B3-*`) and B3 single (`b3`). A request keeps the format it came with;
//! a trace the proxy starts uses `traceparent`.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::digits;

/// Which headers carried the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    W3c,
    B3Multi,
    B3Single,
}

/// The caller's sampling decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    /// None given: the receiver decides.
    Defer,
    Deny,
    Accept,
    /// Accept, and mark every span `debug` (B3's `X-B3-Flags: 1`, `b3: …-d`).
    Debug,
}

/// The context a request arrived with (or the proxy started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// Lowercase hex, 16 or 32 digits (B3 allows 64-bit trace IDs; W3C is always 128-bit).
    pub trace_id: String,
    /// The caller's span: the parent of the proxy's span.
    pub span_id: Option<u64>,
    pub sampling: Sampling,
    pub format: Format,
    /// W3C `trace-flags` other than `sampled` (kept as they came, as the spec asks).
    pub w3c_flags: u8,
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

fn is_hex(s: &str, lens: &[usize]) -> bool {
    lens.contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn not_zero(s: &str) -> bool {
    s.bytes().any(|b| b != b'0')
}

/// Every header a format reads or writes (all removed before the context goes on), indexed by
/// the constants below.
pub const NAMES: [&str; 7] = [
    "traceparent",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];
const I_TRACEPARENT: usize = 0;
const I_B3: usize = 1;
const I_TRACE_ID: usize = 2;
const I_SPAN_ID: usize = 3;
const I_SAMPLED: usize = 5;
const I_FLAGS: usize = 6;

/// The first value of each of `NAMES` a request carries, found in one pass over its headers:
/// a lookup per name hashed each of the seven names, ~1,200 instructions a request that
/// carries none of them.
struct Found<'a> {
    values: [Option<&'a HeaderValue>; NAMES.len()],
    /// Bit i: `NAMES[i]` is present.
    present: u8,
}

fn find(headers: &HeaderMap) -> Found<'_> {
    let mut f = Found {
        values: [None; NAMES.len()],
        present: 0,
    };
    for (name, value) in headers {
        if let Some(i) = NAMES.iter().position(|n| *n == name.as_str()) {
            f.values[i].get_or_insert(value);
            f.present |= 1 << i;
        }
    }
    f
}

impl<'a> Found<'a> {
    fn text(&self, i: usize) -> Option<&'a str> {
        self.values[i].and_then(|v| v.to_str().ok()).map(str::trim)
    }
}

/// Reads the context, trying `traceparent`, then `b3`, then `X-B3-*` (B3 says the single
/// header wins over the multiple ones). Invalid headers are ignored, as the specs ask.
pub fn extract(headers: &HeaderMap) -> Option<Context> {
    let found = find(headers);
    if found.present == 0 {
        return None;
    }
    found
        .text(I_TRACEPARENT)
        .and_then(parse_traceparent)
        .or_else(|| found.text(I_B3).and_then(parse_b3_single))
        .or_else(|| parse_b3_multi(&found))
}

/// `version-trace_id-parent_id-flags`; a higher version is read by its first four fields.
fn parse_traceparent(v: &str) -> Option<Context> {
    let mut parts = v.split('-');
    let version = parts.next()?;
    let (trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?);
    let rest = parts.next();
    if !is_hex(version, &[2]) || version == "ff" || (version == "00" && rest.is_some()) {
        return None;
    }
    if !is_hex(trace_id, &[32]) || !not_zero(trace_id) || !is_hex(span_id, &[16]) {
        return None;
    }
    let span_id = u64::from_str_radix(span_id, 16).ok().filter(|s| *s != 0)?;
    if !is_hex(flags, &[2]) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Context {
        trace_id: trace_id.to_string(),
        span_id: Some(span_id),
        sampling: if flags & 1 == 1 {
            Sampling::Accept
        } else {
            Sampling::Deny
        },
        format: Format::W3c,
        w3c_flags: flags & !1,
    })
}

fn b3_sampling(v: &str) -> Option<Sampling> {
    match v {
        "0" | "false" => Some(Sampling::Deny),
        "1" | "true" => Some(Sampling::Accept),
        "d" => Some(Sampling::Debug),
        _ => None,
    }
}

/// `trace_id-span_id[-sampling[-parent_id]]`, or a lone sampling state (`0`, `1`, `d`).
fn parse_b3_single(v: &str) -> Option<Context> {
    let parts: Vec<&str> = v.split('-').collect();
    if let [state] = parts.as_slice() {
        // A decision without identifiers: only a deny or debug can be honoured without a trace
        // to continue; an accept or debug starts a trace here.
        let sampling = b3_sampling(state)?;
        return Some(Context {
            trace_id: String::new(),
            span_id: None,
            sampling,
            format: Format::B3Single,
            w3c_flags: 0,
        });
    }
    let (trace_id, span_id) = (*parts.first()?, *parts.get(1)?);
    if !is_hex(trace_id, &[16, 32]) || !not_zero(trace_id) || !is_hex(span_id, &[16]) {
        return None;
    }
    let sampling = match parts.get(2) {
        None => Sampling::Defer,
        Some(s) => b3_sampling(s)?,
    };
    if parts.len() > 4 || parts.get(3).is_some_and(|p| !is_hex(p, &[16])) {
        return None;
    }
    Some(Context {
        trace_id: trace_id.to_string(),
        span_id: Some(u64::from_str_radix(span_id, 16).ok()?),
        sampling,
        format: Format::B3Single,
        w3c_flags: 0,
    })
}

fn parse_b3_multi(found: &Found<'_>) -> Option<Context> {
    let debug = found.text(I_FLAGS) == Some("1");
    let sampled = found.text(I_SAMPLED).and_then(b3_sampling);
    let sampling = match (debug, sampled) {
        (true, _) => Sampling::Debug,
        (false, Some(s)) => s,
        (false, None) => Sampling::Defer,
    };
    let ids = found.text(I_TRACE_ID).zip(found.text(I_SPAN_ID));
    match ids {
        Some((trace_id, span_id)) => {
            let trace_id = trace_id.to_ascii_lowercase();
            let span_id = span_id.to_ascii_lowercase();
            if !is_hex(&trace_id, &[16, 32]) || !not_zero(&trace_id) || !is_hex(&span_id, &[16]) {
                return None;
            }
            Some(Context {
                trace_id,
                span_id: Some(u64::from_str_radix(&span_id, 16).ok()?),
                sampling,
                format: Format::B3Multi,
                w3c_flags: 0,
            })
        }
        // A decision alone (`X-B3-Sampled: 0`).
        None if sampling != Sampling::Defer => Some(Context {
            trace_id: String::new(),
            span_id: None,
            sampling,
            format: Format::B3Multi,
            w3c_flags: 0,
        }),
        None => None,
    }
}

/// Writes the context for the next hop: the same trace, `span_id` as the caller's span (and,
/// for B3, `parent_id` as its parent), the decision made here. Other formats' headers are
/// removed so the next hop reads one consistent context; `tracestate` is left as it came.
pub fn inject(
    headers: &mut HeaderMap,
    ctx: &Context,
    span_id: u64,
    parent_id: Option<u64>,
    sampled: bool,
) {
    // Only those present: each removal by name hashes it.
    let present = find(headers).present;
    for (i, name) in NAMES.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
    let debug = ctx.sampling == Sampling::Debug;
    // Each value is built in a buffer of its own, which becomes the header value uncopied.
    let mut put = |name: &HeaderName, parts: &[&[u8]]| {
        let mut value = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
        for p in parts {
            value.extend_from_slice(p);
        }
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
            headers.insert(name.clone(), v);
        }
    };
    let trace_id = ctx.trace_id.as_bytes();
    let span = digits::hex16(span_id);
    match ctx.format {
        Format::W3c => {
            let flags = digits::hex2(ctx.w3c_flags | u8::from(sampled));
            put(&TRACEPARENT, &[b"00-", trace_id, b"-", &span, b"-", &flags]);
        }
        Format::B3Single => {
            let state: &[u8] = if debug {
                b"d"
            } else if sampled {
                b"1"
            } else {
                b"0"
            };
            match parent_id.map(digits::hex16) {
                Some(parent) => put(&B3, &[trace_id, b"-", &span, b"-", state, b"-", &parent]),
                None => put(&B3, &[trace_id, b"-", &span, b"-", state]),
            }
        }
        Format::B3Multi => {
            put(&B3_TRACE_ID, &[trace_id]);
            put(&B3_SPAN_ID, &[&span]);
            if let Some(p) = parent_id {
                put(&B3_PARENT_ID, &[&digits::hex16(p)]);
            }
            if debug {
                put(&B3_FLAGS, &[b"1"]);
            } else {
                put(&B3_SAMPLED, &[if sampled { b"1" } else { b"0" }]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn w3c_traceparent_round_trips_and_invalid_ones_are_ignored() {
        let h = headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        let ctx = extract(&h).unwrap();
        assert_eq!(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.span_id, Some(0x00f067aa0ba902b7));
        assert_eq!(ctx.sampling, Sampling::Accept);
        let mut out = h.clone();
        inject(&mut out, &ctx, 0xabc, ctx.span_id, true);
        assert_eq!(
            out["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01"
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            assert!(
                extract(&headers(&[("traceparent", bad)])).is_none(),
                "{bad}"
            );
        }
        // A higher version is read by its first four fields.
        let ctx = extract(&headers(&[(
            "traceparent",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-future",
        )]))
        .unwrap();
        assert_eq!(ctx.sampling, Sampling::Deny);
    }

    #[test]
    fn b3_single_and_multi_keep_their_format() {
        let ctx = extract(&headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]))
        .unwrap();
        assert_eq!(ctx.format, Format::B3Single);
        assert_eq!(ctx.sampling, Sampling::Accept);
        let mut out = HeaderMap::new();
        inject(&mut out, &ctx, 1, ctx.span_id, true);
        assert_eq!(
            out["b3"],
            "80f198ee56343ba864fe8b2a57d3eff7-0000000000000001-1-e457b5a2e4d86bd1"
        );
        let debug = extract(&headers(&[("b3", "463ac35c9f6413ad-a2fb4a1d1a96d312-d")])).unwrap();
        assert_eq!(debug.sampling, Sampling::Debug);
        assert_eq!(
            debug.trace_id, "463ac35c9f6413ad",
            "64-bit trace IDs stay 64-bit"
        );
        assert_eq!(
            extract(&headers(&[("b3", "0")])).unwrap().sampling,
            Sampling::Deny
        );

        let multi = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-parentspanid", "0020000000000001"),
            ("x-b3-flags", "1"),
        ]);
        let ctx = extract(&multi).unwrap();
        assert_eq!(ctx.format, Format::B3Multi);
        assert_eq!(ctx.sampling, Sampling::Debug);
        let mut out = multi.clone();
        inject(&mut out, &ctx, 2, ctx.span_id, true);
        assert_eq!(out["x-b3-traceid"], "463ac35c9f6413ad48485a3953bb6124");
        assert_eq!(out["x-b3-spanid"], "0000000000000002");
        assert_eq!(out["x-b3-parentspanid"], "a2fb4a1d1a96d312");
        assert_eq!(out["x-b3-flags"], "1");
        assert!(!out.contains_key("x-b3-sampled"), "debug implies accept");
        // The single header wins over the multiple ones.
        let both = headers(&[
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"),
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ]);
        assert_eq!(extract(&both).unwrap().format, Format::B3Single);
    }

    #[test]
    fn the_names_read_are_the_names_written() {
        for (i, name) in [
            (I_TRACEPARENT, TRACEPARENT),
            (I_B3, B3),
            (I_TRACE_ID, B3_TRACE_ID),
            (I_SPAN_ID, B3_SPAN_ID),
            (4, B3_PARENT_ID),
            (I_SAMPLED, B3_SAMPLED),
            (I_FLAGS, B3_FLAGS),
        ] {
            assert_eq!(NAMES[i], name.as_str());
        }
    }

    #[test]
    fn one_context_goes_on_and_other_headers_stay() {
        let mut h = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("accept", "*/*"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-parentspanid", "0020000000000001"),
            ("x-b3-sampled", "1"),
            ("x-custom", "kept"),
        ]);
        let ctx = extract(&h).unwrap();
        inject(&mut h, &ctx, 3, ctx.span_id, true);
        let mut names: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "b3", "x-custom"]);
        assert_eq!(
            h["b3"],
            "80f198ee56343ba864fe8b2a57d3eff7-0000000000000003-1-e457b5a2e4d86bd1"
        );

        // Two traceparents: the first is read (as a lookup by name would), one goes on.
        let mut h = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            ),
            (
                "traceparent",
                "00-11111111111111111111111111111111-1111111111111111-01",
            ),
        ]);
        let ctx = extract(&h).unwrap();
        assert_eq!(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.sampling, Sampling::Deny);
        inject(&mut h, &ctx, 0xabc, ctx.span_id, false);
        assert_eq!(h.get_all("traceparent").iter().count(), 1);
        assert_eq!(
            h["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-00"
        );
        // No context at all: nothing read, a new one written.
        let mut h = headers(&[("accept", "*/*")]);
        assert!(extract(&h).is_none());
        let new = Context {
            trace_id: super::digits::trace_id(1, 2),
            span_id: None,
            sampling: Sampling::Defer,
            format: Format::W3c,
            w3c_flags: 0,
        };
        inject(&mut h, &new, 5, None, true);
        assert_eq!(
            h["traceparent"],
            "00-00000000000000010000000000000002-0000000000000005-01"
        );
    }
}
