//! Header blocks to header lists (RFC 7541 §3, §5, §6).

use bytes::Bytes;

use super::huffman;
use super::table::{DynamicTable, Header};

/// A header block that cannot be decoded: the connection's compression state is lost
/// (RFC 9113 §4.3: a connection error of type COMPRESSION_ERROR).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("header block ends inside a field")]
    Truncated,
    #[error("integer in a header block too large")]
    IntegerOverflow,
    #[error("header index {0} is in neither table")]
    InvalidIndex(usize),
    #[error("malformed Huffman-coded string")]
    InvalidHuffman,
    #[error("dynamic table size update to {0} octets, above the {1} allowed")]
    SizeUpdateTooLarge(usize, usize),
    #[error("dynamic table size update after a field")]
    SizeUpdateAfterField,
    #[error("no dynamic table size update after the allowed size was lowered")]
    SizeUpdateMissing,
}

impl From<huffman::InvalidHuffman> for DecodeError {
    fn from(_: huffman::InvalidHuffman) -> Self {
        DecodeError::InvalidHuffman
    }
}

/// One side's decoding context: the dynamic table the peer's encoder fills.
#[derive(Debug)]
pub struct Decoder {
    table: DynamicTable,
    /// The most the peer may make the table: our SETTINGS_HEADER_TABLE_SIZE.
    max_allowed: usize,
    /// The allowed size was lowered below the table's: the next block must start by
    /// bringing the table within it (§4.2).
    update_required: bool,
}

impl Decoder {
    /// A decoder whose peer may use `max_allowed` octets of table (4,096 unless our SETTINGS
    /// said otherwise).
    pub fn new(max_allowed: usize) -> Self {
        Decoder {
            table: DynamicTable::new(max_allowed),
            max_allowed,
            update_required: false,
        }
    }

    /// Our SETTINGS_HEADER_TABLE_SIZE changed (once the peer acknowledged it).
    pub fn set_max_allowed(&mut self, max_allowed: usize) {
        if max_allowed < self.table.max_size() {
            self.update_required = true;
        }
        self.max_allowed = max_allowed;
    }

    /// Decodes one whole header block, handing each field to `emit` in order. Every field is
    /// decoded, even after the caller has seen enough to refuse the message: the table must
    /// stay as the peer's encoder believes it is.
    pub fn decode(
        &mut self,
        block: &Bytes,
        mut emit: impl FnMut(Header),
    ) -> Result<(), DecodeError> {
        let mut pos = 0;
        let mut fields_seen = false;
        while let Some(&first) = block.get(pos) {
            if first & 0x80 != 0 {
                // Indexed field (§6.1).
                let index = decode_int(block, &mut pos, 7)?;
                let header = self
                    .table
                    .get(index)
                    .ok_or(DecodeError::InvalidIndex(index))?;
                fields_seen = true;
                self.check_update()?;
                emit(header.clone());
            } else if first & 0x40 != 0 {
                // Literal with incremental indexing (§6.2.1).
                let header = self.literal(block, &mut pos, 6, false)?;
                fields_seen = true;
                self.check_update()?;
                self.table.insert(header.clone());
                emit(header);
            } else if first & 0x20 != 0 {
                // Dynamic table size update (§6.3): only before the block's first field.
                if fields_seen {
                    return Err(DecodeError::SizeUpdateAfterField);
                }
                let size = decode_int(block, &mut pos, 5)?;
                if size > self.max_allowed {
                    return Err(DecodeError::SizeUpdateTooLarge(size, self.max_allowed));
                }
                self.table.set_max_size(size);
                self.update_required = false;
            } else {
                // Literal without indexing (0000) or never indexed (0001) (§6.2.2, §6.2.3).
                let never = first & 0x10 != 0;
                let header = self.literal(block, &mut pos, 4, never)?;
                fields_seen = true;
                self.check_update()?;
                emit(header);
            }
        }
        Ok(())
    }

    fn check_update(&self) -> Result<(), DecodeError> {
        match self.update_required {
            true => Err(DecodeError::SizeUpdateMissing),
            false => Ok(()),
        }
    }

    /// A literal field whose representation starts at `pos` with a `prefix`-bit name index.
    /// A never-indexed value is marked sensitive, so that an intermediary re-encoding it
    /// keeps it out of its own tables (§6.2.3).
    fn literal(
        &self,
        block: &Bytes,
        pos: &mut usize,
        prefix: u8,
        never: bool,
    ) -> Result<Header, DecodeError> {
        let index = decode_int(block, pos, prefix)?;
        let mut header = if index == 0 {
            let name = string(block, pos)?;
            let value = string(block, pos)?;
            Header::from_literal(&name, value)
        } else {
            let named = self
                .table
                .get(index)
                .ok_or(DecodeError::InvalidIndex(index))?;
            named.with_value(string(block, pos)?)
        };
        if never && let Header::Field(_, value) = &mut header {
            value.set_sensitive(true);
        }
        Ok(header)
    }

    #[cfg(test)]
    pub(crate) fn table(&self) -> &DynamicTable {
        &self.table
    }
}

/// An integer with an N-bit prefix (§5.1), the prefix's other bits ignored.
pub(crate) fn decode_int(block: &[u8], pos: &mut usize, prefix: u8) -> Result<usize, DecodeError> {
    let max = (1usize << prefix) - 1;
    let first = *block.get(*pos).ok_or(DecodeError::Truncated)? as usize & max;
    *pos += 1;
    if first < max {
        return Ok(first);
    }
    let mut value = max;
    let mut shift = 0;
    loop {
        let byte = *block.get(*pos).ok_or(DecodeError::Truncated)?;
        *pos += 1;
        value += ((byte & 0x7f) as usize) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        // Five continuation bytes already say more than any table or string here can be.
        if shift > 28 {
            return Err(DecodeError::IntegerOverflow);
        }
    }
}

/// A string literal (§5.2): raw octets share the block's buffer; Huffman-coded ones are
/// decoded into a buffer of their own.
fn string(block: &Bytes, pos: &mut usize) -> Result<Bytes, DecodeError> {
    let huffman = *block.get(*pos).ok_or(DecodeError::Truncated)? & 0x80 != 0;
    let len = decode_int(block, pos, 7)?;
    let start = *pos;
    let end = start
        .checked_add(len)
        .filter(|&end| end <= block.len())
        .ok_or(DecodeError::Truncated)?;
    *pos = end;
    if !huffman {
        return Ok(block.slice(start..end));
    }
    // The shortest code is 5 bits: at most 8/5 bytes out per byte in.
    let mut out = Vec::with_capacity(len + len / 2 + len / 8 + 1);
    huffman::decode(&block[start..end], &mut out)?;
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hpack::Pseudo;
    use crate::hpack::huffman::tests::unhex;

    fn decode(d: &mut Decoder, hex: &str) -> Result<Vec<(String, String)>, DecodeError> {
        let mut out = Vec::new();
        d.decode(&Bytes::from(unhex(hex)), |h| {
            out.push(match h {
                Header::Pseudo(p, v) => (p.as_str().to_string(), utf8(&v)),
                Header::Field(n, v) => (n.to_string(), utf8(v.as_bytes())),
                Header::Malformed { why, .. } => ("malformed".into(), why.into()),
            })
        })?;
        Ok(out)
    }

    fn utf8(b: &[u8]) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    fn list(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn rfc_7541_c2_representations() {
        let mut d = Decoder::new(4096);
        let got = decode(
            &mut d,
            "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
        );
        assert_eq!(got.unwrap(), list(&[("custom-key", "custom-header")]));
        assert_eq!((d.table().len(), d.table().size()), (1, 55));

        let mut d = Decoder::new(4096);
        let got = decode(&mut d, "040c 2f73 616d 706c 652f 7061 7468");
        assert_eq!(got.unwrap(), list(&[(":path", "/sample/path")]));
        assert_eq!(d.table().len(), 0);

        let mut d = Decoder::new(4096);
        let mut sensitive = None;
        d.decode(
            &Bytes::from(unhex("1008 7061 7373 776f 7264 0673 6563 7265 74")),
            |h| {
                if let Header::Field(n, v) = h {
                    sensitive = Some((n.to_string(), v.is_sensitive()));
                }
            },
        )
        .unwrap();
        assert_eq!(sensitive, Some(("password".into(), true)));
        assert_eq!(d.table().len(), 0);

        let mut d = Decoder::new(4096);
        assert_eq!(decode(&mut d, "82").unwrap(), list(&[(":method", "GET")]));
    }

    /// C.3 (raw strings) and C.4 (Huffman-coded): three requests on one connection.
    #[test]
    fn rfc_7541_c3_c4_requests() {
        for blocks in [
            [
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ],
            [
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ],
        ] {
            let mut d = Decoder::new(4096);
            let first = [
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ];
            assert_eq!(decode(&mut d, blocks[0]).unwrap(), list(&first));
            assert_eq!(d.table().size(), 57);
            let mut second = first.to_vec();
            second.push(("cache-control", "no-cache"));
            assert_eq!(decode(&mut d, blocks[1]).unwrap(), list(&second));
            assert_eq!(d.table().size(), 110);
            let third = [
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ];
            assert_eq!(decode(&mut d, blocks[2]).unwrap(), list(&third));
            assert_eq!((d.table().len(), d.table().size()), (3, 164));
        }
    }

    /// C.5: responses with a 256-octet table, so that entries are evicted.
    #[test]
    fn rfc_7541_c5_responses_evict() {
        let mut d = Decoder::new(256);
        let first = decode(
            &mut d,
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
             6c65 2e63 6f6d",
        );
        let date = ("date", "Mon, 21 Oct 2013 20:13:21 GMT");
        let location = ("location", "https://www.example.com");
        assert_eq!(
            first.unwrap(),
            list(&[
                (":status", "302"),
                ("cache-control", "private"),
                date,
                location
            ])
        );
        assert_eq!((d.table().len(), d.table().size()), (4, 222));
        // ":status: 307" evicts ":status: 302"; the rest are indexed from the table.
        let second = decode(&mut d, "4803 3330 37c1 c0bf");
        assert_eq!(
            second.unwrap(),
            list(&[
                (":status", "307"),
                ("cache-control", "private"),
                date,
                location
            ])
        );
        assert_eq!((d.table().len(), d.table().size()), (4, 222));
    }

    #[test]
    fn integers_of_rfc_7541_c1() {
        let mut pos = 0;
        assert_eq!(decode_int(&[0b1110_1010], &mut pos, 5), Ok(10));
        let mut pos = 0;
        assert_eq!(decode_int(&[0x1f, 0x9a, 0x0a], &mut pos, 5), Ok(1337));
        assert_eq!(pos, 3);
        let mut pos = 0;
        assert_eq!(
            decode_int(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], &mut pos, 5),
            Err(DecodeError::IntegerOverflow)
        );
        let mut pos = 0;
        assert_eq!(
            decode_int(&[0x1f, 0x9a], &mut pos, 5),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn broken_blocks_are_compression_errors() {
        for (hex, err) in [
            ("80", DecodeError::InvalidIndex(0)),
            ("be", DecodeError::InvalidIndex(62)),
            ("7f00", DecodeError::InvalidIndex(63)),
            ("410f 7777", DecodeError::Truncated),
            ("4185 ffff ffff ff", DecodeError::InvalidHuffman),
            ("3fe2 1f", DecodeError::SizeUpdateTooLarge(4097, 4096)),
            ("8220", DecodeError::SizeUpdateAfterField),
            ("4000", DecodeError::Truncated),
        ] {
            let mut d = Decoder::new(4096);
            assert_eq!(decode(&mut d, hex), Err(err.clone()), "{hex}");
        }
    }

    #[test]
    fn fields_http2_forbids_are_malformed_and_still_indexed() {
        let mut d = Decoder::new(4096);
        // "X-Up: 1" (an uppercase name), with incremental indexing, then indexed again as 62.
        let got = decode(&mut d, "4004 582d 5570 0131 be").unwrap();
        assert_eq!(
            got,
            list(&[
                ("malformed", "field name not lowercase token characters"),
                ("malformed", "field name not lowercase token characters"),
            ])
        );
        assert_eq!(d.table().size(), 4 + 1 + 32);
        // A value with a NUL, one with a trailing space, an unknown pseudo-header.
        let got = decode(&mut d, "0003 6b65 7902 6100").unwrap();
        assert_eq!(got[0].0, "malformed");
        let got = decode(&mut d, "0003 6b65 7902 6120").unwrap();
        assert_eq!(got[0].0, "malformed");
        let got = decode(&mut d, "0003 3a78 7901 61").unwrap();
        assert_eq!(got, list(&[("malformed", "unknown pseudo-header")]));
        // The known pseudo-headers come back as such.
        let mut seen = Vec::new();
        d.decode(
            &Bytes::from(unhex(
                "0009 3a70 726f 746f 636f 6c09 7765 6273 6f63 6b65 74",
            )),
            |h| seen.push(h),
        )
        .unwrap();
        assert_eq!(
            seen,
            [Header::Pseudo(
                Pseudo::Protocol,
                Bytes::from_static(b"websocket")
            )]
        );
    }

    #[test]
    fn size_updates_shrink_and_lowering_the_setting_requires_one() {
        let mut d = Decoder::new(4096);
        decode(&mut d, "4003 6b65 7901 61").unwrap();
        assert_eq!(d.table().len(), 1);
        // An update to 0 empties the table; back to 4096 for the next field.
        decode(&mut d, "203f e11f 8240 036b 6579 0162").unwrap();
        assert_eq!(d.table().len(), 1);
        d.set_max_allowed(100);
        assert_eq!(decode(&mut d, "82"), Err(DecodeError::SizeUpdateMissing));
        let mut d2 = Decoder::new(4096);
        decode(&mut d2, "4003 6b65 7901 61").unwrap();
        d2.set_max_allowed(100);
        assert_eq!(
            decode(&mut d2, "3f45 82").unwrap(),
            list(&[(":method", "GET")])
        );
        assert_eq!(d2.table().len(), 1);
    }
}
