//! Percent-decoding of path segments and query strings (RFC 3986 §2.1; query
//! parameters also take `+` as a space, as HTML forms and most clients send them).

use std::borrow::Cow;

use smallvec::SmallVec;

/// Why a target component could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError;

/// Decodes `%XX` escapes (and `+` when `plus_is_space`) and checks UTF-8.
pub fn decode(raw: &[u8], plus_is_space: bool) -> Result<String, DecodeError> {
    decode_borrowed(raw, plus_is_space).map(Cow::into_owned)
}

/// [`decode`], borrowing `raw` when it holds nothing to decode (nearly
/// every path segment): no allocation then.
fn decode_borrowed(raw: &[u8], plus_is_space: bool) -> Result<Cow<'_, str>, DecodeError> {
    if !raw.iter().any(|&b| b == b'%' || (plus_is_space && b == b'+')) {
        return crate::text::utf8(raw).map(Cow::Borrowed).ok_or(DecodeError);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                // Exactly two hex digits: `from_str_radix` alone would take `%+5`.
                let (high, low) = match raw.get(i + 1..i + 3) {
                    Some(&[high, low]) => (hex_value(high).ok_or(DecodeError)?, hex_value(low).ok_or(DecodeError)?),
                    _ => return Err(DecodeError),
                };
                out.push(high << 4 | low);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map(Cow::Owned).map_err(|_| DecodeError)
}

/// The value of one ASCII hex digit.
fn hex_value(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|value| value as u8)
}

/// Decoded `key=value` pairs of a query string, in order.
pub fn pairs(query: &[u8]) -> Result<Vec<(String, String)>, DecodeError> {
    query
        .split(|&b| b == b'&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (key, value) = match part.iter().position(|&b| b == b'=') {
                Some(at) => (&part[..at], &part[at + 1..]),
                None => (part, &b""[..]),
            };
            Ok((decode(key, true)?, decode(value, true)?))
        })
        .collect()
}

/// A path's segments: held in place up to [`SEGMENTS_INLINE`], as every
/// route's are.
pub type Segments<'a> = SmallVec<[Cow<'a, str>; SEGMENTS_INLINE]>;

/// The most segments a route has (`/v1/t/{tenant}/users/{user}/rooms/{room}`).
pub const SEGMENTS_INLINE: usize = 7;

/// Decoded path segments after the leading `/` (`+` stays literal in paths),
/// borrowed from `path` unless escaped.
pub fn segments(path: &[u8]) -> Result<Segments<'_>, DecodeError> {
    let path = path.strip_prefix(b"/").unwrap_or(path);
    // Most paths hold no escape: checked whole once, then split as bytes.
    if memchr::memchr(b'%', path).is_none() {
        crate::text::utf8(path).ok_or(DecodeError)?;
        let piece = |piece| {
            // SAFETY: `path` is UTF-8 and `/` is ASCII, so what lies between
            // two slashes is UTF-8 too.
            Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(piece) })
        };
        return Ok(path.split(|&b| b == b'/').map(piece).collect());
    }
    path.split(|&b| b == b'/').map(|segment| decode_borrowed(segment, false)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes_and_plus() {
        assert_eq!(decode(b"a%20b+c", true).unwrap(), "a b c");
        assert_eq!(decode(b"a+b", false).unwrap(), "a+b");
        assert_eq!(decode(b"%E2%9C%93", true).unwrap(), "\u{2713}");
        assert!(decode(b"%zz", true).is_err());
        assert!(decode(b"%4", true).is_err());
        assert!(decode(b"%+5", true).is_err(), "a sign is not a hex digit");
        assert!(decode(b"%-1", false).is_err());
        assert!(decode(b"% 5", false).is_err());
        assert!(decode(b"%ff", true).is_err(), "invalid UTF-8");
    }

    #[test]
    fn query_pairs_and_segments() {
        let query = pairs(b"userId=al%69ce&rooms=a,b&flag&&x=").unwrap();
        assert_eq!(
            query,
            vec![
                ("userId".into(), "alice".into()),
                ("rooms".into(), "a,b".into()),
                ("flag".into(), "".into()),
                ("x".into(), "".into()),
            ]
        );
        assert_eq!(segments(b"/v1/users/a%2Fb/events").unwrap().as_slice(), ["v1", "users", "a/b", "events"]);
    }
}
