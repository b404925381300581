//! The static Huffman code of HPACK (RFC 7541 §5.2, Appendix B).
//!
//! The code is canonical: codes are handed out in order of (length, symbol), so the table
//! below holds only each symbol's length and the codes are derived from them (checked against
//! the appendix's values in the tests). Decoding walks the code tree four bits at a time
//! through a transition table built at compile time: 256 states (the tree's inner nodes) x 16
//! nibbles, each saying where to go, which byte (if any) completes, and whether the string may
//! end there.

/// Code length in bits of each symbol 0..=255 and of EOS (256), from RFC 7541 Appendix B.
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0-15
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 16-31
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // ' ' .. '/'
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // '0' .. '?'
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // '@' .. 'O'
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 'P' .. '_'
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // '`' .. 'o'
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 'p' .. 127
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 128-143
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 144-159
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 160-175
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 176-191
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 192-207
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 208-223
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 224-239
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 240-255
    30, // EOS
];

const EOS: usize = 256;

/// Each symbol's code (in the low bits) and length, derived from `LENGTHS`.
pub(crate) const CODES: [(u32, u8); 257] = canonical_codes();

const fn canonical_codes() -> [(u32, u8); 257] {
    let mut codes = [(0u32, 0u8); 257];
    let mut code: u32 = 0;
    let mut len: u8 = 1;
    while len <= 30 {
        let mut sym = 0;
        while sym < 257 {
            if LENGTHS[sym] == len {
                codes[sym] = (code, len);
                code += 1;
            }
            sym += 1;
        }
        code <<= 1;
        len += 1;
    }
    codes
}

/// The length of `src` Huffman-coded, in bytes (the last one padded with ones).
pub fn encoded_len(src: &[u8]) -> usize {
    let bits: usize = src.iter().map(|&b| CODES[b as usize].1 as usize).sum();
    bits.div_ceil(8)
}

/// Appends `src` Huffman-coded to `dst`.
pub fn encode(src: &[u8], dst: &mut impl bytes::BufMut) {
    // Bits waiting to be written, at the low end of `acc`: fewer than 32 between symbols, so
    // at most 31 + 30 with one added; written four bytes at a time (a byte at a time, the
    // buffer's bookkeeping cost more than the coding).
    let mut acc: u64 = 0;
    let mut pending: u32 = 0;
    for &b in src {
        let (code, len) = CODES[b as usize];
        acc = (acc << len) | code as u64;
        pending += len as u32;
        if pending >= 32 {
            pending -= 32;
            dst.put_u32((acc >> pending) as u32);
        }
    }
    while pending >= 8 {
        pending -= 8;
        dst.put_u8((acc >> pending) as u8);
    }
    if pending > 0 {
        // Padding: the most significant bits of EOS, i.e. ones (§5.2).
        let pad = 8 - pending;
        dst.put_u8(((acc << pad) | ((1 << pad) - 1)) as u8);
    }
}

/// A malformed Huffman-coded string (RFC 7541 §5.2: a decoding error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidHuffman;

/// Decodes `src`, appending the bytes to `dst`.
pub fn decode(src: &[u8], dst: &mut Vec<u8>) -> Result<(), InvalidHuffman> {
    let mut state = 0usize;
    let mut may_end = true;
    for &b in src {
        for nibble in [b >> 4, b & 0x0f] {
            let t = DECODE[state][nibble as usize];
            if t.flags & FAIL != 0 {
                return Err(InvalidHuffman);
            }
            if t.flags & SYMBOL != 0 {
                dst.push(t.symbol);
            }
            state = t.state as usize;
            may_end = t.flags & MAY_END != 0;
        }
    }
    // What is left must be padding: fewer than 8 bits, all ones (§5.2).
    if may_end { Ok(()) } else { Err(InvalidHuffman) }
}

/// One transition of the decoder.
#[derive(Clone, Copy)]
struct Transition {
    /// The state after the nibble.
    state: u8,
    /// The byte completed by the nibble, if `flags` has `SYMBOL`.
    symbol: u8,
    flags: u8,
}

/// A byte was completed.
const SYMBOL: u8 = 1;
/// The bits since the last byte are a valid padding (at most 7 ones).
const MAY_END: u8 = 2;
/// Not a valid code: EOS inside a string, or bits that lead nowhere.
const FAIL: u8 = 4;

/// The code tree: node 0 is the root; `children[n][bit]` is a node (if < 256 after the
/// offset) or a leaf. Stored as i16: >= 0 inner node, < 0 leaf `-(symbol + 1)`.
const TREE: [[i16; 2]; 256] = build_tree();

const fn build_tree() -> [[i16; 2]; 256] {
    // Inner nodes get numbered in the order they are created; a full binary tree with 257
    // leaves has 256 inner nodes. 0 marks "no child yet" (the root is never a child).
    let mut tree = [[0i16; 2]; 256];
    let mut nodes = 1;
    let mut sym = 0;
    while sym < 257 {
        let (code, len) = CODES[sym];
        let mut node = 0usize;
        let mut i = len;
        while i > 1 {
            i -= 1;
            let bit = ((code >> i) & 1) as usize;
            if tree[node][bit] == 0 {
                tree[node][bit] = nodes as i16;
                nodes += 1;
            }
            node = tree[node][bit] as usize;
        }
        tree[node][(code & 1) as usize] = -(sym as i16) - 1;
        sym += 1;
    }
    tree
}

const DECODE: [[Transition; 16]; 256] = build_decoder();

const fn build_decoder() -> [[Transition; 16]; 256] {
    // Which inner nodes are reached from the root by ones only, 0 to 7 of them: ending a string
    // there is valid padding.
    let mut padding = [false; 256];
    let mut node = 0usize;
    let mut depth = 0;
    while depth < 8 {
        padding[node] = true;
        let next = TREE[node][1];
        if next < 0 {
            break;
        }
        node = next as usize;
        depth += 1;
    }
    let mut table = [[Transition {
        state: 0,
        symbol: 0,
        flags: 0,
    }; 16]; 256];
    let mut state = 0;
    while state < 256 {
        let mut nibble = 0;
        while nibble < 16 {
            let mut node = state;
            let mut flags = 0u8;
            let mut symbol = 0u8;
            let mut bit = 4;
            while bit > 0 {
                bit -= 1;
                let next = TREE[node][(nibble >> bit) & 1];
                if next < 0 {
                    let sym = (-next - 1) as usize;
                    if sym == EOS {
                        flags |= FAIL;
                        break;
                    }
                    // Codes are at least 5 bits long: at most one byte completes per nibble.
                    symbol = sym as u8;
                    flags |= SYMBOL;
                    node = 0;
                } else {
                    node = next as usize;
                }
            }
            if padding[node] {
                flags |= MAY_END;
            }
            table[state][nibble] = Transition {
                state: node as u8,
                symbol,
                flags,
            };
            nibble += 1;
        }
        state += 1;
    }
    table
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn the_code_is_complete_and_ends_with_eos_all_ones() {
        // Kraft's sum of a complete prefix code is exactly 1: a mistyped length breaks it.
        let sum: u64 = LENGTHS.iter().map(|&l| 1u64 << (30 - l)).sum();
        assert_eq!(sum, 1 << 30);
        assert_eq!(CODES[EOS], (0x3fff_ffff, 30));
    }

    #[test]
    fn codes_match_rfc_7541_appendix_b() {
        // (symbol, code as hex, length) rows from the appendix, across every length.
        for (sym, code, len) in [
            (0, 0x1ff8, 13),
            (1, 0x7fffd8, 23),
            (9, 0xffffea, 24),
            (10, 0x3ffffffc, 30),
            (22, 0x3ffffffe, 30),
            (31, 0xffffffb, 28),
            (b' ' as usize, 0x14, 6),
            (b'!' as usize, 0x3f8, 10),
            (b'&' as usize, 0xf8, 8),
            (b'/' as usize, 0x18, 6),
            (b'0' as usize, 0x0, 5),
            (b':' as usize, 0x5c, 7),
            (b'<' as usize, 0x7ffc, 15),
            (b'\\' as usize, 0x7fff0, 19),
            (b'^' as usize, 0x3ffc, 14),
            (b'a' as usize, 0x3, 5),
            (b'm' as usize, 0x29, 6),
            (b't' as usize, 0x9, 5),
            (b'z' as usize, 0x7b, 7),
            (b'|' as usize, 0x7fc, 11),
            (127, 0xffffffc, 28),
            (128, 0xfffe6, 20),
            (153, 0x1fffdc, 21),
            (192, 0x3ffffe0, 26),
            (199, 0x1ffffec, 25),
            (203, 0x7ffffde, 27),
            (220, 0xffffffd, 28),
            (249, 0xffffffe, 28),
            (254, 0x7fffff0, 27),
            (255, 0x3ffffee, 26),
        ] {
            assert_eq!(CODES[sym], (code, len), "symbol {sym}");
        }
    }

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        let mut coded = Vec::new();
        encode(&all, &mut coded);
        assert_eq!(coded.len(), encoded_len(&all));
        let mut back = Vec::new();
        decode(&coded, &mut back).unwrap();
        assert_eq!(back, all);
        for b in 0..=255u8 {
            let mut coded = Vec::new();
            encode(&[b, b'a', b], &mut coded);
            let mut back = Vec::new();
            decode(&coded, &mut back).unwrap();
            assert_eq!(back, [b, b'a', b]);
        }
    }

    #[test]
    fn rfc_7541_c4_strings() {
        // C.4.1: "www.example.com"; C.4.2: "no-cache"; C.4.3: "custom-value".
        for (hex, text) in [
            ("f1e3c2e5f23a6ba0ab90f4ff", "www.example.com"),
            ("a8eb10649cbf", "no-cache"),
            ("25a849e95bb8e8b4bf", "custom-value"),
        ] {
            let coded = unhex(hex);
            let mut out = Vec::new();
            decode(&coded, &mut out).unwrap();
            assert_eq!(out, text.as_bytes());
            let mut again = Vec::new();
            encode(text.as_bytes(), &mut again);
            assert_eq!(again, coded);
        }
    }

    #[test]
    fn bad_padding_and_eos_are_errors() {
        // "a" is 00011 + padding 111: 0x1f. Padding of zeros, or of 8 ones, is invalid.
        let mut out = Vec::new();
        assert_eq!(decode(&[0x1f], &mut out), Ok(()));
        assert_eq!(out, b"a");
        assert_eq!(decode(&[0x18], &mut Vec::new()), Err(InvalidHuffman));
        assert_eq!(decode(&[0x1f, 0xff], &mut Vec::new()), Err(InvalidHuffman));
        // EOS itself (30 ones) inside the string.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], &mut Vec::new()),
            Err(InvalidHuffman)
        );
        // An empty string is valid.
        assert_eq!(decode(&[], &mut Vec::new()), Ok(()));
    }

    pub(crate) fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
