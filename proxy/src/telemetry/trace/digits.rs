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

/// Appends `v` in decimal.
pub fn push_decimal(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // Byte by byte: most numbers here are a few digits, for which a `memcpy` call costs more.
    out.reserve(buf.len() - i);
    for &d in &buf[i..] {
        out.push(d);
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
        for v in [0u8, 1, 0x0f, 0x10, 0xff] {
            assert_eq!(std::str::from_utf8(&hex2(v)).unwrap(), format!("{v:02x}"));
        }
        assert_eq!(
            trace_id(1, u64::MAX),
            format!("{:016x}{:016x}", 1, u64::MAX)
        );
    }
}
