//! Numbers as text for trace headers and span JSON, written straight into a buffer: through
//! `core::fmt` (`format!("{:016x}")`, `write!`) they were a fifth of what tracing cost a
//! request (callgrind: ~3,400 instructions a request in `format_inner` alone).

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `v` as 16 lowercase hex digits, zero-padded.
pub fn hex16(v: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[(v >> (60 - 4 * i) & 0xf) as usize];
    }
    out
}

/// `v` as 2 lowercase hex digits.
pub fn hex2(v: u8) -> [u8; 2] {
    [HEX[usize::from(v >> 4)], HEX[usize::from(v & 0xf)]]
}

/// "00" to "99": two digits per division (timestamps in µs are 16 digits).
const PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Appends `v` in decimal, written in place: the buffer is grown once to the number's length
/// (pushing digit by digit checked the capacity for each: ~1,000 instructions of a traced
/// request's span).
pub fn push_decimal(out: &mut Vec<u8>, mut v: u64) {
    let len = v.checked_ilog10().map_or(1, |l| l as usize + 1);
    let start = out.len();
    out.resize(start + len, b'0');
    let digits = &mut out[start..];
    let mut end = digits.len();
    while v >= 100 {
        let pair = (v % 100) as usize * 2;
        v /= 100;
        end -= 2;
        digits[end..end + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if v >= 10 {
        let pair = v as usize * 2;
        digits[end - 2..end].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        digits[end - 1] = b'0' + v as u8;
    }
}

/// A new 128-bit trace ID as 32 lowercase hex digits.
pub fn trace_id(hi: u64, lo: u64) -> String {
    let mut s = String::with_capacity(32);
    for half in [hi, lo] {
        for b in hex16(half) {
            s.push(char::from(b));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_text_as_core_fmt() {
        for v in [
            0,
            1,
            9,
            10,
            99,
            100,
            101,
            999,
            0xab,
            0x0020000000000001,
            u64::MAX,
            1_000_000,
            12345678901234567890,
        ] {
            assert_eq!(std::str::from_utf8(&hex16(v)).unwrap(), format!("{v:016x}"));
            let mut s = b"x".to_vec();
            push_decimal(&mut s, v);
            assert_eq!(s, format!("x{v}").as_bytes());
        }
        // Every length, and both sides of each power of ten.
        let edges = (0..20).flat_map(|e| {
            let p = 10u64.pow(e);
            [p - 1, p, p + 1]
        });
        for v in (0..1_000).chain(edges) {
            let mut s = Vec::new();
            push_decimal(&mut s, v);
            assert_eq!(s, v.to_string().as_bytes());
        }
        for v in [0u8, 1, 0x0f, 0x10, 0xff] {
            assert_eq!(std::str::from_utf8(&hex2(v)).unwrap(), format!("{v:02x}"));
        }
        assert_eq!(
            trace_id(1, u64::MAX),
            format!("{:016x}{:016x}", 1, u64::MAX)
        );
    }
}
