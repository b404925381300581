//! Header lists to header blocks (RFC 7541 §6), with a dynamic table of our own.
//!
//! Which fields are worth a table entry follows the usual practice (nghttp2's, which most
//! peers meet): values that change with every message (`:path`, `content-length`, `etag`,
//! `location`, trace contexts and request IDs, ...) are sent without indexing, credentials are
//! never indexed (§7.1.3), and a value marked sensitive stays never-indexed, as it arrived.
//! Everything else is indexed once and then sent as one or two bytes.

use std::collections::VecDeque;

use bytes::BufMut;
use http::header::{HeaderName, HeaderValue};

use super::huffman;
use super::table::{ENTRY_OVERHEAD, Header, Pseudo, STATIC};

/// A field to encode, borrowed from the message.
#[derive(Debug, Clone, Copy)]
pub enum Field<'a> {
    Pseudo(Pseudo, &'a [u8]),
    Header(&'a HeaderName, &'a HeaderValue),
}

impl Field<'_> {
    fn name(&self) -> &[u8] {
        match self {
            Field::Pseudo(p, _) => p.as_str().as_bytes(),
            Field::Header(n, _) => n.as_str().as_bytes(),
        }
    }

    fn value(&self) -> &[u8] {
        match self {
            Field::Pseudo(_, v) => v,
            Field::Header(_, v) => v.as_bytes(),
        }
    }
}

/// The largest table this encoder uses, whatever the peer allows: more rarely pays for the
/// memory on a proxy's many connections.
const MAX_TABLE: usize = 4096;

/// One side's encoding context.
#[derive(Debug)]
pub struct Encoder {
    /// Newest first: entry i is index 62 + i.
    entries: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    /// Size updates owed to the peer, to be sent at the start of the next block: the
    /// smallest the size went to since the last block, and where it ended (§4.2).
    update: Option<(usize, usize)>,
}

#[derive(Debug)]
struct Entry {
    name: Name,
    value: bytes::Bytes,
}

#[derive(Debug, PartialEq, Eq)]
enum Name {
    Pseudo(Pseudo),
    Field(HeaderName),
}

impl Entry {
    fn size(&self) -> usize {
        self.name_bytes().len() + self.value.len() + ENTRY_OVERHEAD
    }

    fn name_bytes(&self) -> &[u8] {
        match &self.name {
            Name::Pseudo(p) => p.as_str().as_bytes(),
            Name::Field(n) => n.as_str().as_bytes(),
        }
    }

    /// Whether the field has this entry's name. Names compared as names, not as bytes: a
    /// standard header's name is a number, and spelling it out for every entry a field is
    /// checked against cost a fifth of encoding.
    fn same_name(&self, field: &Field<'_>) -> bool {
        match (&self.name, field) {
            (Name::Pseudo(a), Field::Pseudo(b, _)) => a == b,
            (Name::Field(a), Field::Header(b, _)) => a == *b,
            _ => false,
        }
    }
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

impl Encoder {
    /// An encoder with the protocol's initial table size (4,096 octets).
    pub fn new() -> Self {
        Encoder {
            entries: VecDeque::new(),
            size: 0,
            max_size: MAX_TABLE,
            update: None,
        }
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE changed.
    pub fn set_peer_max(&mut self, peer_max: usize) {
        let size = peer_max.min(MAX_TABLE);
        if size == self.max_size && self.update.is_none() {
            return;
        }
        let low = self.update.map_or(size, |(low, _)| low.min(size));
        self.update = Some((low, size));
        self.max_size = size;
        self.evict_to(size);
    }

    /// Appends the header block of `fields` to `dst`.
    pub fn encode<'a>(
        &mut self,
        fields: impl IntoIterator<Item = Field<'a>>,
        dst: &mut impl BufMut,
    ) {
        if let Some((low, size)) = self.update.take() {
            if low < size {
                encode_int(low, 5, 0x20, dst);
            }
            encode_int(size, 5, 0x20, dst);
        }
        for field in fields {
            self.encode_field(field, dst);
        }
    }

    fn encode_field(&mut self, field: Field<'_>, dst: &mut impl BufMut) {
        let (name, value) = (field.name(), field.value());
        let (statik, static_name) = static_index(&field);
        if let Some(index) = statik {
            return encode_int(index, 7, 0x80, dst);
        }
        let sensitive = match field {
            Field::Header(n, v) => v.is_sensitive() || never_indexed(n, v),
            Field::Pseudo(..) => false,
        };
        let mut dynamic_name = None;
        if !sensitive {
            for (i, e) in self.entries.iter().enumerate() {
                if e.same_name(&field) {
                    if e.value == value {
                        return encode_int(62 + i, 7, 0x80, dst);
                    }
                    dynamic_name.get_or_insert(62 + i);
                }
            }
        } else if static_name.is_none() {
            dynamic_name = self
                .entries
                .iter()
                .position(|e| e.same_name(&field))
                .map(|i| 62 + i);
        }
        let name_index = static_name.or(dynamic_name);
        let entry_size = name.len() + value.len() + ENTRY_OVERHEAD;
        let (prefix, flags) = if sensitive {
            (4, 0x10)
        } else if not_indexed(&field) || entry_size * 4 > self.max_size * 3 {
            (4, 0x00)
        } else {
            (6, 0x40)
        };
        match name_index {
            Some(index) => encode_int(index, prefix, flags, dst),
            None => {
                dst.put_u8(flags);
                encode_str(name, dst);
            }
        }
        encode_str(value, dst);
        if flags == 0x40 {
            self.insert(field, entry_size);
        }
    }

    fn insert(&mut self, field: Field<'_>, size: usize) {
        self.evict_to(self.max_size.saturating_sub(size));
        let (name, value) = match field {
            Field::Pseudo(p, v) => (Name::Pseudo(p), bytes::Bytes::copy_from_slice(v)),
            // A HeaderValue's bytes cannot be taken out without a copy; names are cheap to
            // clone (a standard one is a number, a custom one shares its buffer).
            Field::Header(n, v) => (
                Name::Field(n.clone()),
                bytes::Bytes::copy_from_slice(v.as_bytes()),
            ),
        };
        self.entries.push_front(Entry { name, value });
        self.size += size;
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            match self.entries.pop_back() {
                Some(e) => self.size -= e.size(),
                None => break,
            }
        }
    }
}

/// The static table's index for the whole field, and for its name.
fn static_index(field: &Field<'_>) -> (Option<usize>, Option<usize>) {
    match field {
        Field::Pseudo(p, v) => {
            let full = |candidates: &[usize]| {
                candidates
                    .iter()
                    .copied()
                    .find(|&i| matches!(&STATIC[i - 1], Header::Pseudo(_, sv) if sv == v))
            };
            match p {
                Pseudo::Authority => (None, Some(1)),
                Pseudo::Method => (full(&[2, 3]), Some(2)),
                Pseudo::Path => (full(&[4, 5]), Some(4)),
                Pseudo::Scheme => (full(&[6, 7]), Some(6)),
                Pseudo::Status => (full(&[8, 9, 10, 11, 12, 13, 14]), Some(8)),
                Pseudo::Protocol => (None, None),
            }
        }
        Field::Header(n, v) => {
            let index = static_name_index(n.as_str());
            // Of the fields, only accept-encoding has a value in the table.
            let full = index.filter(|&i| i == 16 && v.as_bytes() == b"gzip, deflate");
            (full, index)
        }
    }
}

fn static_name_index(name: &str) -> Option<usize> {
    Some(match name {
        "accept-charset" => 15,
        "accept-encoding" => 16,
        "accept-language" => 17,
        "accept-ranges" => 18,
        "accept" => 19,
        "access-control-allow-origin" => 20,
        "age" => 21,
        "allow" => 22,
        "authorization" => 23,
        "cache-control" => 24,
        "content-disposition" => 25,
        "content-encoding" => 26,
        "content-language" => 27,
        "content-length" => 28,
        "content-location" => 29,
        "content-range" => 30,
        "content-type" => 31,
        "cookie" => 32,
        "date" => 33,
        "etag" => 34,
        "expect" => 35,
        "expires" => 36,
        "from" => 37,
        "host" => 38,
        "if-match" => 39,
        "if-modified-since" => 40,
        "if-none-match" => 41,
        "if-range" => 42,
        "if-unmodified-since" => 43,
        "last-modified" => 44,
        "link" => 45,
        "location" => 46,
        "max-forwards" => 47,
        "proxy-authenticate" => 48,
        "proxy-authorization" => 49,
        "range" => 50,
        "referer" => 51,
        "refresh" => 52,
        "retry-after" => 53,
        "server" => 54,
        "set-cookie" => 55,
        "strict-transport-security" => 56,
        "transfer-encoding" => 57,
        "user-agent" => 58,
        "vary" => 59,
        "via" => 60,
        "www-authenticate" => 61,
        _ => return None,
    })
}

/// Credentials, kept out of every table (§7.1.3): short cookies can be guessed a byte at a
/// time through the table (CRIME), longer ones are worth indexing.
fn never_indexed(name: &HeaderName, value: &HeaderValue) -> bool {
    *name == http::header::AUTHORIZATION
        || *name == http::header::PROXY_AUTHORIZATION
        || (*name == http::header::COOKIE && value.len() < 20)
}

/// Values that differ from one message to the next: a table entry would only evict others.
fn not_indexed(field: &Field<'_>) -> bool {
    use http::header::*;
    match field {
        Field::Pseudo(p, _) => *p == Pseudo::Path,
        Field::Header(n, _) => {
            **n == CONTENT_LENGTH
                || **n == ETAG
                || **n == LOCATION
                || **n == SET_COOKIE
                || **n == AGE
                || **n == IF_MODIFIED_SINCE
                || **n == IF_NONE_MATCH
                || per_request(n.as_str())
        }
    }
}

/// Headers that tracing and request IDs put on every request, each value new. Indexed, each
/// took a table entry and evicted one that repeats: with tracing on, the proxy's table filled
/// with old `traceparent`s, and every field's lookup scanned them (callgrind: +2,500
/// instructions a request).
fn per_request(name: &str) -> bool {
    matches!(
        name,
        "traceparent"
            | "tracestate"
            | "b3"
            | "x-b3-traceid"
            | "x-b3-spanid"
            | "x-b3-parentspanid"
            | "x-request-id"
            | "x-amzn-trace-id"
            | "x-cloud-trace-context"
            | "uber-trace-id"
            | "grpc-trace-bin"
    )
}

/// An integer with an N-bit prefix (§5.1), `flags` in the prefix's other bits.
pub(crate) fn encode_int(value: usize, prefix: u8, flags: u8, dst: &mut impl BufMut) {
    let max = (1usize << prefix) - 1;
    if value < max {
        dst.put_u8(flags | value as u8);
        return;
    }
    dst.put_u8(flags | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        dst.put_u8((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    dst.put_u8(rest as u8);
}

/// A string literal (§5.2), Huffman-coded when that is shorter.
fn encode_str(s: &[u8], dst: &mut impl BufMut) {
    let coded = huffman::encoded_len(s);
    if coded < s.len() {
        encode_int(coded, 7, 0x80, dst);
        huffman::encode(s, dst);
    } else {
        encode_int(s.len(), 7, 0x00, dst);
        dst.put_slice(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hpack::Decoder;
    use crate::hpack::huffman::tests::unhex;
    use bytes::Bytes;
    use http::HeaderMap;

    fn encode(e: &mut Encoder, pseudo: &[(Pseudo, &str)], map: &HeaderMap) -> Vec<u8> {
        let mut out = Vec::new();
        let fields = pseudo
            .iter()
            .map(|(p, v)| Field::Pseudo(*p, v.as_bytes()))
            .chain(map.iter().map(|(n, v)| Field::Header(n, v)));
        e.encode(fields, &mut out);
        out
    }

    fn decode(d: &mut Decoder, block: Vec<u8>) -> Vec<Header> {
        let mut out = Vec::new();
        d.decode(&Bytes::from(block), |h| out.push(h)).unwrap();
        out
    }

    #[test]
    fn integers_of_rfc_7541_c1() {
        let mut out = Vec::new();
        encode_int(10, 5, 0, &mut out);
        encode_int(1337, 5, 0, &mut out);
        encode_int(42, 7, 0x80, &mut out);
        assert_eq!(out, [10, 31, 154, 10, 0x80 | 42]);
    }

    /// The C.4 requests, encoded as the RFC's encoder did: byte for byte the same blocks.
    #[test]
    fn rfc_7541_c4_requests_byte_for_byte() {
        use Pseudo::*;
        let mut e = Encoder::new();
        let host = (Authority, "www.example.com");
        let first = encode(
            &mut e,
            &[(Method, "GET"), (Scheme, "http"), (Path, "/"), host],
            &HeaderMap::new(),
        );
        assert_eq!(first, unhex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"));
        let mut map = HeaderMap::new();
        map.insert("cache-control", HeaderValue::from_static("no-cache"));
        let second = encode(
            &mut e,
            &[(Method, "GET"), (Scheme, "http"), (Path, "/"), host],
            &map,
        );
        assert_eq!(second, unhex("8286 84be 5886 a8eb 1064 9cbf"));
        let mut map = HeaderMap::new();
        map.insert("custom-key", HeaderValue::from_static("custom-value"));
        let third = encode(
            &mut e,
            &[
                (Method, "GET"),
                (Scheme, "https"),
                (Path, "/index.html"),
                host,
            ],
            &map,
        );
        assert_eq!(
            third,
            unhex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf")
        );
        assert_eq!(e.size, 164);
    }

    #[test]
    fn repeated_fields_become_single_bytes_and_round_trip() {
        let mut e = Encoder::new();
        let mut d = Decoder::new(4096);
        let mut map = HeaderMap::new();
        map.insert("user-agent", HeaderValue::from_static("grpc-go/1.60.0"));
        map.insert("content-type", HeaderValue::from_static("application/grpc"));
        map.insert("te", HeaderValue::from_static("trailers"));
        map.append("x-many", HeaderValue::from_static("one"));
        map.append("x-many", HeaderValue::from_static("two"));
        map.insert("content-length", HeaderValue::from_static("5"));
        let pseudo = [(Pseudo::Method, "POST"), (Pseudo::Path, "/pkg.Svc/Call")];
        let mut sizes = Vec::new();
        for _ in 0..3 {
            let block = encode(&mut e, &pseudo, &map);
            sizes.push(block.len());
            let got = decode(&mut d, block);
            let mut want = vec![
                Header::Pseudo(Pseudo::Method, Bytes::from_static(b"POST")),
                Header::Pseudo(Pseudo::Path, Bytes::from_static(b"/pkg.Svc/Call")),
            ];
            want.extend(map.iter().map(|(n, v)| Header::Field(n.clone(), v.clone())));
            assert_eq!(got, want);
        }
        // The second time: POST (1), :path and content-length literal, the rest one byte each.
        assert!(sizes[1] < sizes[0] / 2, "{sizes:?}");
        assert_eq!(sizes[1], sizes[2]);
    }

    #[test]
    fn trace_contexts_stay_out_of_the_table() {
        let mut e = Encoder::new();
        let mut d = Decoder::new(4096);
        let mut map = HeaderMap::new();
        map.insert("user-agent", HeaderValue::from_static("curl/8.5.0"));
        for i in 0..100u64 {
            map.insert(
                "traceparent",
                HeaderValue::from_str(&format!("00-{i:032x}-{i:016x}-01")).unwrap(),
            );
            map.insert("x-request-id", HeaderValue::from(i));
            let got = decode(&mut d, encode(&mut e, &[], &map));
            let want: Vec<Header> = map
                .iter()
                .map(|(n, v)| Header::Field(n.clone(), v.clone()))
                .collect();
            assert_eq!(got, want);
        }
        // Only user-agent was worth an entry; it was never evicted.
        assert_eq!(e.entries.len(), 1);
        assert_eq!(e.entries[0].value, "curl/8.5.0");
    }

    #[test]
    fn credentials_are_never_indexed_and_stay_so_through_a_proxy() {
        let mut e = Encoder::new();
        let mut map = HeaderMap::new();
        map.insert("authorization", HeaderValue::from_static("Bearer abc"));
        let mut secret = HeaderValue::from_static("s3cr3t-value-long-enough-to-index");
        secret.set_sensitive(true);
        map.insert("x-api-key", secret);
        map.insert("cookie", HeaderValue::from_static("a=b"));
        let block = encode(&mut e, &[], &map);
        assert_eq!(e.entries.len(), 0);
        // Each is a "never indexed" literal (0001xxxx) that a decoder marks sensitive.
        assert_eq!(block[0] & 0xf0, 0x10);
        let mut d = Decoder::new(4096);
        for h in decode(&mut d, block) {
            let Header::Field(n, v) = h else {
                panic!("{h:?}")
            };
            assert!(v.is_sensitive(), "{n}");
        }
    }

    #[test]
    fn table_size_follows_the_peer_and_updates_are_signalled() {
        let mut e = Encoder::new();
        let mut d = Decoder::new(4096);
        let mut map = HeaderMap::new();
        map.insert("x-a", HeaderValue::from_static("1"));
        decode(&mut d, encode(&mut e, &[], &map));
        // The peer lowers its setting to 0 then raises it to 100: both sizes go out, and the
        // table starts again empty.
        e.set_peer_max(0);
        e.set_peer_max(100);
        let block = encode(&mut e, &[], &map);
        assert_eq!(&block[..3], &[0x20, 0x3f, 100 - 31]);
        d.set_max_allowed(100);
        decode(&mut d, block);
        assert_eq!(e.entries.len(), 1);
        // A peer that allows more than 4,096 gets at most that.
        e.set_peer_max(1 << 20);
        assert_eq!(e.max_size, 4096);
    }

    #[test]
    fn large_values_are_not_indexed_and_a_full_table_evicts_the_oldest() {
        let mut e = Encoder::new();
        let mut d = Decoder::new(4096);
        let big = "v".repeat(3500);
        let mut map = HeaderMap::new();
        map.insert("x-big", HeaderValue::from_str(&big).unwrap());
        decode(&mut d, encode(&mut e, &[], &map));
        assert_eq!(e.entries.len(), 0);
        for i in 0..200 {
            let mut map = HeaderMap::new();
            map.insert("x-n", HeaderValue::from(i));
            let got = decode(&mut d, encode(&mut e, &[], &map));
            assert_eq!(
                got,
                [Header::Field(
                    HeaderName::from_static("x-n"),
                    HeaderValue::from(i)
                )]
            );
            assert!(e.size <= 4096);
        }
        assert!(e.entries.len() < 200);
    }
}
