//! What a header block holds, the static table (RFC 7541 Appendix A) and the decoder's dynamic
//! table (§2.3.2, §4).

use std::collections::VecDeque;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};

/// A pseudo-header field (RFC 9113 §8.3; `:protocol` from RFC 8441).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pseudo {
    Authority,
    Method,
    Path,
    Scheme,
    Status,
    Protocol,
}

impl Pseudo {
    pub fn as_str(self) -> &'static str {
        match self {
            Pseudo::Authority => ":authority",
            Pseudo::Method => ":method",
            Pseudo::Path => ":path",
            Pseudo::Scheme => ":scheme",
            Pseudo::Status => ":status",
            Pseudo::Protocol => ":protocol",
        }
    }

    fn from_bytes(name: &[u8]) -> Option<Pseudo> {
        Some(match name {
            b":authority" => Pseudo::Authority,
            b":method" => Pseudo::Method,
            b":path" => Pseudo::Path,
            b":scheme" => Pseudo::Scheme,
            b":status" => Pseudo::Status,
            b":protocol" => Pseudo::Protocol,
            _ => return None,
        })
    }
}

/// One field of a decoded header list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    /// A pseudo-header and its value, unchecked (what makes a valid `:path` or `:method` is
    /// the message's business, not the compression's).
    Pseudo(Pseudo, Bytes),
    Field(HeaderName, HeaderValue),
    /// A field HTTP/2 forbids (RFC 9113 §8.2.1, §8.3): a name with uppercase or non-token
    /// bytes, an unknown pseudo-header, a value with NUL, CR or LF or with whitespace at either
    /// end. The message carrying it is malformed (a stream error, not the connection's); it is
    /// kept, with its size, because the dynamic table may hold it like any other.
    Malformed {
        name_len: usize,
        value_len: usize,
        why: &'static str,
    },
}

impl Header {
    /// The name's and the value's lengths in octets, together (RFC 7541 §4.1 adds 32 for a
    /// table entry; RFC 9113 §6.5.2 the same for a header list's size).
    pub fn size(&self) -> usize {
        match self {
            Header::Pseudo(p, v) => p.as_str().len() + v.len(),
            Header::Field(n, v) => n.as_str().len() + v.len(),
            Header::Malformed {
                name_len,
                value_len,
                ..
            } => name_len + value_len,
        }
    }

    /// The field from a literal name and value, checked as HTTP/2 requires.
    pub(crate) fn from_literal(name: &[u8], value: Bytes) -> Header {
        let (name_len, value_len) = (name.len(), value.len());
        let malformed = |why| Header::Malformed {
            name_len,
            value_len,
            why,
        };
        if name.first() == Some(&b':') {
            return match Pseudo::from_bytes(name) {
                Some(p) => Header::Pseudo(p, value),
                None => malformed("unknown pseudo-header"),
            };
        }
        let Ok(name) = HeaderName::from_lowercase(name) else {
            return malformed("field name not lowercase token characters");
        };
        Header::field(name, value)
    }

    /// `name` with a literal value, checked as HTTP/2 requires.
    pub(crate) fn field(name: HeaderName, value: Bytes) -> Header {
        let (name_len, value_len) = (name.as_str().len(), value.len());
        let malformed = |why| Header::Malformed {
            name_len,
            value_len,
            why,
        };
        let (Some(first), Some(last)) = (value.first(), value.last()) else {
            return Header::Field(name, HeaderValue::from_static(""));
        };
        if matches!(first, b' ' | b'\t') || matches!(last, b' ' | b'\t') {
            return malformed("field value with whitespace at either end");
        }
        // HeaderValue refuses NUL, CR and LF (and the other controls but tab, as h2 does).
        match HeaderValue::from_maybe_shared(value) {
            Ok(v) => Header::Field(name, v),
            Err(_) => malformed("field value with control characters"),
        }
    }

    /// The same name with another value (a literal whose name is indexed).
    pub(crate) fn with_value(&self, value: Bytes) -> Header {
        match self {
            Header::Pseudo(p, _) => Header::Pseudo(*p, value),
            Header::Field(n, _) => Header::field(n.clone(), value),
            Header::Malformed { name_len, why, .. } => Header::Malformed {
                name_len: *name_len,
                value_len: value.len(),
                why,
            },
        }
    }
}

/// The static table, in index order from 1 (RFC 7541 Appendix A).
pub(crate) static STATIC: [Header; 61] = {
    use Pseudo::*;
    const fn p(p: Pseudo, v: &'static str) -> Header {
        Header::Pseudo(p, Bytes::from_static(v.as_bytes()))
    }
    const fn f(n: &'static str) -> Header {
        Header::Field(HeaderName::from_static(n), HeaderValue::from_static(""))
    }
    [
        p(Authority, ""),
        p(Method, "GET"),
        p(Method, "POST"),
        p(Path, "/"),
        p(Path, "/index.html"),
        p(Scheme, "http"),
        p(Scheme, "https"),
        p(Status, "200"),
        p(Status, "204"),
        p(Status, "206"),
        p(Status, "304"),
        p(Status, "400"),
        p(Status, "404"),
        p(Status, "500"),
        f("accept-charset"),
        Header::Field(
            HeaderName::from_static("accept-encoding"),
            HeaderValue::from_static("gzip, deflate"),
        ),
        f("accept-language"),
        f("accept-ranges"),
        f("accept"),
        f("access-control-allow-origin"),
        f("age"),
        f("allow"),
        f("authorization"),
        f("cache-control"),
        f("content-disposition"),
        f("content-encoding"),
        f("content-language"),
        f("content-length"),
        f("content-location"),
        f("content-range"),
        f("content-type"),
        f("cookie"),
        f("date"),
        f("etag"),
        f("expect"),
        f("expires"),
        f("from"),
        f("host"),
        f("if-match"),
        f("if-modified-since"),
        f("if-none-match"),
        f("if-range"),
        f("if-unmodified-since"),
        f("last-modified"),
        f("link"),
        f("location"),
        f("max-forwards"),
        f("proxy-authenticate"),
        f("proxy-authorization"),
        f("range"),
        f("referer"),
        f("refresh"),
        f("retry-after"),
        f("server"),
        f("set-cookie"),
        f("strict-transport-security"),
        f("transfer-encoding"),
        f("user-agent"),
        f("vary"),
        f("via"),
        f("www-authenticate"),
    ]
};

/// What a table entry costs beyond its name and value (RFC 7541 §4.1).
pub(crate) const ENTRY_OVERHEAD: usize = 32;

/// The decoder's dynamic table: newest first, evicted from the back as the size demands.
#[derive(Debug)]
pub(crate) struct DynamicTable {
    entries: VecDeque<(Header, usize)>,
    size: usize,
    max_size: usize,
}

impl DynamicTable {
    pub fn new(max_size: usize) -> Self {
        DynamicTable {
            entries: VecDeque::new(),
            size: 0,
            max_size,
        }
    }

    /// Entry `index` of the whole address space (1-based: the static table, then this one).
    pub fn get(&self, index: usize) -> Option<&Header> {
        match index {
            0 => None,
            1..=61 => STATIC.get(index - 1),
            _ => self.entries.get(index - 62).map(|(h, _)| h),
        }
    }

    /// Adds `header`, evicting what no longer fits; an entry larger than the whole table
    /// empties it and is not kept (§4.4).
    pub fn insert(&mut self, header: Header) {
        let size = header.size() + ENTRY_OVERHEAD;
        if size > self.max_size {
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size - size);
        self.size += size;
        self.entries.push_front((header, size));
    }

    pub fn max_size(&self) -> usize {
        self.max_size
    }

    pub fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.evict_to(max_size);
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            match self.entries.pop_back() {
                Some((_, size)) => self.size -= size,
                None => break,
            }
        }
    }

    #[cfg(test)]
    pub fn size(&self) -> usize {
        self.size
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}
