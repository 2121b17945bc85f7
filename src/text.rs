//! Text read from bytes that came over the wire (bus log entries, notices):
//! checked as UTF-8, with ASCII, what nearly all of it is, recognised first
//! eight bytes at a time. `str::from_utf8` costs ~100 instructions on a
//! ten-byte name and ~160 on a 100-byte payload here (and `<[u8]>::is_ascii`
//! about as much on the payload); this check ~40 on the payload.

/// `bytes` as text, if they are UTF-8.
pub fn utf8(bytes: &[u8]) -> Option<&str> {
    if ascii(bytes) {
        // SAFETY: ASCII is UTF-8.
        return Some(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes).ok()
}

/// True when every byte is ASCII: the words' high bits or-ed together (no
/// branch per word, which the compiler can widen), the last eight bytes as
/// one more word overlapping the one before.
fn ascii(bytes: &[u8]) -> bool {
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let word = |chunk: &[u8]| u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
    match bytes.len() {
        len @ 8.. => {
            (bytes.chunks_exact(8).fold(0, |seen, chunk| seen | word(chunk)) | word(&bytes[len - 8..])) & HIGHS == 0
        }
        _ => bytes.iter().all(u8::is_ascii),
    }
}

/// A decimal number of 1 to 20 digits that fits a `u64` (no sign, no
/// spaces), without a UTF-8 check and `str::parse`.
pub fn decimal(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 20 {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| match b {
        b'0'..=b'9' => n.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_agrees_with_the_standard_check() {
        let long = "ü".repeat(40);
        let samples: [&[u8]; 7] =
            [b"", b"alice", "naïve".as_bytes(), b"\xff", b"ab\xc3", long.as_bytes(), &[b'x'; 100]];
        for bytes in samples {
            assert_eq!(utf8(bytes), std::str::from_utf8(bytes).ok(), "{bytes:?}");
        }
    }

    #[test]
    fn a_byte_above_127_anywhere_is_seen() {
        for len in 0..=40 {
            assert!(ascii(&vec![b'a'; len]), "{len} ASCII bytes");
            for at in 0..len {
                let mut bytes = vec![b'a'; len];
                bytes[at] = 0x80;
                assert!(!ascii(&bytes), "0x80 at {at} of {len}");
            }
        }
    }

    #[test]
    fn decimals_read_as_str_parse_reads_them() {
        for text in [
            "0",
            "7",
            "42",
            "18446744073709551615",
            "18446744073709551616",
            "",
            "-1",
            "+1",
            "1 ",
            "0x1",
            "99999999999999999999",
        ] {
            assert_eq!(
                decimal(text.as_bytes()),
                text.parse::<u64>().ok().filter(|_| !text.starts_with('+')),
                "{text:?}"
            );
        }
    }
}
