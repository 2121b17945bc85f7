//! Text read from bytes that came over the wire (bus log entries, notices,
//! ids and event names): checked as UTF-8, with ASCII, what nearly all of it
//! is, recognised first eight bytes at a time. `str::from_utf8` costs ~100
//! instructions on a ten-byte name and ~160 on a 100-byte payload here (and
//! `<[u8]>::is_ascii` about as much on the payload); this check ~60 on the
//! payload.

/// The high bit of every byte of a word.
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The low bit of every byte of a word.
const ONES: u64 = 0x0101_0101_0101_0101;

/// Eight bytes as one word.
fn word(chunk: &[u8]) -> u64 {
    u64::from_le_bytes(chunk.try_into().expect("8 bytes"))
}

/// The high bit set of each byte of `word` below `bound`, the first of them
/// exactly (a borrow can mark more bytes, but only above one that is).
fn bytes_below(word: u64, bound: u8) -> u64 {
    word.wrapping_sub(ONES * u64::from(bound)) & !word & HIGHS
}

/// The high bit set of each byte of `word` equal to `byte`, the first exactly.
fn bytes_equal(word: u64, byte: u8) -> u64 {
    bytes_below(word ^ (ONES * u64::from(byte)), 1)
}

/// The high bit set of each byte of `word` that stops a JSON string's plain
/// run (`"`, `\\` or below 0x20), the first of them exactly.
pub fn json_stops(word: u64) -> u64 {
    bytes_equal(word, b'"') | bytes_equal(word, b'\\') | bytes_below(word, 0x20)
}

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
    match bytes.len() {
        len @ 8.. => {
            (bytes.chunks_exact(8).fold(0, |seen, chunk| seen | word(chunk)) | word(&bytes[len - 8..])) & HIGHS == 0
        }
        _ => bytes.iter().all(u8::is_ascii),
    }
}

/// True when `bytes` are ASCII without CR, LF or NUL: what an id or event
/// name almost always is, so a bus entry's fields are checked (and known to
/// be UTF-8) by this one pass, eight bytes at a time, instead of a UTF-8
/// check and a byte-by-byte scan each. False says nothing: check the slow way.
pub fn plain_field(bytes: &[u8]) -> bool {
    every_word(bytes, |word| {
        (word & HIGHS) | bytes_below(word, 1) | bytes_equal(word, b'\r') | bytes_equal(word, b'\n') == 0
    })
}

/// True when `bytes` are printable ASCII without `,` or `/`: what a user id
/// or room name almost always is, so a published message's target is
/// checked eight bytes at a time (a byte at a time cost ~10 instructions a
/// byte). False says nothing: check the slow way.
pub fn plain_name(bytes: &[u8]) -> bool {
    every_word(bytes, |word| {
        (word & HIGHS)
            | bytes_below(word, 0x20)
            | bytes_equal(word, 0x7f)
            | bytes_equal(word, b',')
            | bytes_equal(word, b'/')
            == 0
    })
}

/// True when `plain` holds for `bytes` read as words: eight bytes at a
/// time, the last eight as one more word overlapping the one before; fewer
/// than eight as one word of two overlapping halves, or of the first,
/// middle and last byte and [`PAD`]. Every byte is in some word, so a test
/// of each byte of a word is a test of each byte of `bytes`.
fn every_word(bytes: &[u8], plain: impl Fn(u64) -> bool) -> bool {
    let len = bytes.len();
    match len {
        8.. => bytes.chunks_exact(8).all(|chunk| plain(word(chunk))) && plain(word(&bytes[len - 8..])),
        4..=7 => {
            let half = |at: usize| u64::from(u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")));
            plain(half(0) | half(len - 4) << 32)
        }
        1..=3 => {
            let some = u64::from(bytes[0]) | u64::from(bytes[len / 2]) << 8 | u64::from(bytes[len - 1]) << 16;
            plain((ONES * u64::from(PAD)) & !0xff_ffff | some)
        }
        0 => true,
    }
}

/// What fills a short run's word: a letter, which every test here takes.
const PAD: u8 = b'a';

/// Where a JSON string's plain run ends: the index of the first `"`, `\\`
/// or control character (below 0x20) in `bytes`, else their length.
/// Sixteen bytes at a time with SSE2 (every x86-64 has it), the last
/// sixteen of `bytes` as one more block overlapping the one before, so a
/// short string inside a longer body costs one block; eight at a time
/// elsewhere. Callers pass the rest of a body, so a short string nearly
/// always has sixteen bytes after it.
#[cfg(target_arch = "x86_64")]
pub fn json_string_stop(bytes: &[u8]) -> usize {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    const BLOCK: usize = 16;
    let len = bytes.len();
    if len < BLOCK {
        return bytes.iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\').unwrap_or(len);
    }
    // The stops in the sixteen bytes from `from` (at most `len - 16`), one
    // bit each, lowest first.
    let stops = |from: usize| {
        // SAFETY: SSE2 is part of the x86-64 baseline, and the load reads
        // bytes[from..from + 16], inside `bytes` as `from <= len - 16`.
        unsafe {
            let block = _mm_loadu_si128(bytes.as_ptr().add(from).cast::<__m128i>());
            let control = _mm_cmpeq_epi8(_mm_min_epu8(block, _mm_set1_epi8(0x1f)), block);
            let quote = _mm_cmpeq_epi8(block, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(block, _mm_set1_epi8(b'\\' as i8));
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
        }
    };
    let mut at = 0;
    while at + BLOCK <= len {
        let found = stops(at);
        if found != 0 {
            return at + found.trailing_zeros() as usize;
        }
        at += BLOCK;
    }
    if at == len {
        return len;
    }
    let last = len - BLOCK;
    let found = stops(last) >> (at - last);
    if found != 0 {
        at + found.trailing_zeros() as usize
    } else {
        len
    }
}

/// Where a JSON string's plain run ends (see the x86-64 version): eight
/// bytes at a time, as serde_json skips a string's plain run.
#[cfg(not(target_arch = "x86_64"))]
pub fn json_string_stop(bytes: &[u8]) -> usize {
    let mut at = 0;
    for chunk in bytes.chunks_exact(8) {
        let word = word(chunk);
        let stopped = json_stops(word);
        if stopped != 0 {
            return at + stopped.trailing_zeros() as usize / 8;
        }
        at += 8;
    }
    at + bytes[at..].iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\').unwrap_or(bytes.len() - at)
}

/// True when `bytes` holds a CR or an LF (a payload's line break). Sixteen
/// bytes at a time with SSE2, the last sixteen as one more block
/// overlapping the one before, in place: `memchr2` (its dispatch and its
/// search) cost a 100-byte payload ~90 instructions, this ~65. Its own
/// loop, not [`json_string_stop`]'s made generic over the bytes it stops
/// at: that one finds a position, and built on it this check cost ~20
/// instructions a batch message more (`benches/callgrind.py`).
#[cfg(target_arch = "x86_64")]
pub fn has_line_break(bytes: &[u8]) -> bool {
    use std::arch::x86_64::{__m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8};
    const BLOCK: usize = 16;
    let len = bytes.len();
    if len < BLOCK {
        return bytes.iter().any(|&b| b == b'\n' || b == b'\r');
    }
    // Whether the sixteen bytes from `from` (at most `len - 16`) hold one.
    let breaks = |from: usize| {
        // SAFETY: SSE2 is part of the x86-64 baseline, and the load reads
        // bytes[from..from + 16], inside `bytes` as `from <= len - 16`.
        unsafe {
            let block = _mm_loadu_si128(bytes.as_ptr().add(from).cast::<__m128i>());
            let lf = _mm_cmpeq_epi8(block, _mm_set1_epi8(b'\n' as i8));
            let cr = _mm_cmpeq_epi8(block, _mm_set1_epi8(b'\r' as i8));
            _mm_movemask_epi8(_mm_or_si128(lf, cr)) != 0
        }
    };
    let mut at = 0;
    while at + BLOCK <= len {
        if breaks(at) {
            return true;
        }
        at += BLOCK;
    }
    at < len && breaks(len - BLOCK)
}

/// True when `bytes` holds a CR or an LF (see the x86-64 version).
#[cfg(not(target_arch = "x86_64"))]
pub fn has_line_break(bytes: &[u8]) -> bool {
    memchr::memchr2(b'\n', b'\r', bytes).is_some()
}

/// Where the first LF in `bytes` is, for one a few tens of bytes in (the
/// end of a frame's `id:` line): sixteen bytes at a time with SSE2, ~12
/// instructions at 31 bytes where `memchr`'s dispatch and set-up cost ~40.
#[cfg(target_arch = "x86_64")]
pub fn lf_position(bytes: &[u8]) -> Option<usize> {
    use std::arch::x86_64::{__m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
    const BLOCK: usize = 16;
    let mut at = 0;
    while at + BLOCK <= bytes.len() {
        // SAFETY: SSE2 is part of the x86-64 baseline, and the load reads
        // bytes[at..at + 16], inside `bytes` as the loop's bound says.
        let found = unsafe {
            let block = _mm_loadu_si128(bytes.as_ptr().add(at).cast::<__m128i>());
            _mm_movemask_epi8(_mm_cmpeq_epi8(block, _mm_set1_epi8(b'\n' as i8)))
        };
        if found != 0 {
            return Some(at + found.trailing_zeros() as usize);
        }
        at += BLOCK;
    }
    bytes[at..].iter().position(|&b| b == b'\n').map(|found| at + found)
}

/// Where the first LF in `bytes` is (see the x86-64 version).
#[cfg(not(target_arch = "x86_64"))]
pub fn lf_position(bytes: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', bytes)
}

/// How many ASCII digits `bytes` starts with, eight at a time: a JSON
/// number's digits (a timestamp in a payload is ~19) cost ~5 instructions
/// each read one by one.
pub fn digit_run(bytes: &[u8]) -> usize {
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = word(chunk);
        // A digit xor '0' is 0 to 9: plus 0x76 it stays below 0x80. Any
        // other byte has its high bit set either way; a carry out of it
        // can only mark bytes above it, so the lowest mark is exact.
        let value = word ^ (ONES * u64::from(b'0'));
        let not_digit = (value.wrapping_add(ONES * 0x76) | value) & HIGHS;
        if not_digit != 0 {
            return at + not_digit.trailing_zeros() as usize / 8;
        }
        at += 8;
    }
    at + bytes[at..].iter().take_while(|b| b.is_ascii_digit()).count()
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
    fn a_line_break_anywhere_is_seen_and_nothing_else_is() {
        for len in 0..=70 {
            let plain: Vec<u8> = (0..len).map(|i| if i % 7 == 0 { b'\t' } else { b'a' + (i % 26) as u8 }).collect();
            assert!(!has_line_break(&plain), "{len} bytes without a break");
            for at in 0..len {
                for byte in [b'\n', b'\r'] {
                    let mut broken = plain.clone();
                    broken[at] = byte;
                    assert!(has_line_break(&broken), "{byte} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn the_first_lf_is_found_wherever_it_is() {
        for len in 0..=70 {
            let plain: Vec<u8> = (0..len).map(|i| if i % 7 == 0 { b'\r' } else { b'a' + (i % 26) as u8 }).collect();
            assert_eq!(lf_position(&plain), None, "{len} bytes without an LF");
            for at in 0..len {
                let mut broken = plain.clone();
                broken[at] = b'\n';
                broken[(at + 5).min(len - 1)] = b'\n';
                assert_eq!(lf_position(&broken), Some(at), "the first LF at {at} of {len}");
            }
        }
    }

    #[test]
    fn a_digit_run_ends_at_the_first_byte_that_is_not_a_digit() {
        for len in 0..=20 {
            let digits: Vec<u8> = (0..len).map(|i| b'0' + (i % 10) as u8).collect();
            assert_eq!(digit_run(&digits), len, "{len} digits");
            for stop in 0..=255u8 {
                let mut text = digits.clone();
                text.push(stop);
                text.extend_from_slice(b"123456789");
                let expected = if stop.is_ascii_digit() { len + 10 } else { len };
                assert_eq!(digit_run(&text), expected, "{len} digits, then {stop}");
            }
        }
    }

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

    /// Calls `check` with every run of 1 to 40 `x`s with one byte changed
    /// to every value at every position, and the same with a `"` last; and
    /// how it was made, for the failure's words.
    fn each_byte_at_each_position(check: impl Fn(&[u8], &str)) {
        for len in 1..=40 {
            for at in 0..len {
                for byte in 0..=255u8 {
                    let mut run = vec![b'x'; len];
                    run[at] = byte;
                    check(&run, &format!("byte {byte:#x} at {at} of {len}"));
                    run[len - 1] = b'"';
                    check(&run, &format!("byte {byte:#x} at {at} of {len}, a quote last"));
                }
            }
        }
    }

    #[test]
    fn plain_fields_are_told_from_the_rest_at_every_position() {
        let plain = |bytes: &[u8]| bytes.iter().all(|&b| b.is_ascii() && !matches!(b, b'\r' | b'\n' | 0));
        each_byte_at_each_position(|field, how| assert_eq!(plain_field(field), plain(field), "{how}"));
        assert!(plain_field(b"1733112345678-0-00012"));
        assert!(!plain_field("é1234567".as_bytes()));
    }

    #[test]
    fn plain_names_are_told_from_the_rest_at_every_position() {
        let plain = |bytes: &[u8]| bytes.iter().all(|&b| (0x20..0x7f).contains(&b) && b != b',' && b != b'/');
        each_byte_at_each_position(|name, how| assert_eq!(plain_name(name), plain(name), "{how}"));
        assert!(plain_name(b""));
    }

    #[test]
    fn a_json_string_stops_at_its_first_quote_backslash_or_control_character() {
        let stop =
            |bytes: &[u8]| bytes.iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\').unwrap_or(bytes.len());
        each_byte_at_each_position(|run, how| assert_eq!(json_string_stop(run), stop(run), "{how}"));
        assert_eq!(json_string_stop(b""), 0);
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
