//! Base64url without padding (RFC 4648 §5), the encoding of JWT segments
//! (RFC 7515 §2) and of signed-URL signatures.
//!
//! Hand-written because it is forty lines and the credentials need the strict
//! form only: padding, characters outside the url-safe alphabet, a length that
//! no encoding produces (remainder 1) and non-zero leftover bits are all
//! refused, so one byte string has exactly one accepted text.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Why a text is not strict unpadded base64url.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError;

/// Encodes `bytes` as base64url without padding.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        // A chunk of k bytes carries 8k bits: k + 1 characters.
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Decodes strict unpadded base64url.
pub fn decode(text: &[u8]) -> Result<Vec<u8>, DecodeError> {
    if text.len() % 4 == 1 {
        return Err(DecodeError);
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 2);
    for chunk in text.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= u32::from(value(c)?) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        // 2, 3 or 4 characters carry 1, 2 or 3 whole bytes.
        let whole = chunk.len() - 1;
        // The bits past the last whole byte must be zero (RFC 4648 §3.5), so
        // no second spelling of the same bytes is accepted.
        if bytes[1 + whole..].iter().any(|&b| b != 0) {
            return Err(DecodeError);
        }
        out.extend_from_slice(&bytes[1..1 + whole]);
    }
    Ok(out)
}

fn value(c: u8) -> Result<u8, DecodeError> {
    match c {
        b'A'..=b'Z' => Ok(c - b'A'),
        b'a'..=b'z' => Ok(c - b'a' + 26),
        b'0'..=b'9' => Ok(c - b'0' + 52),
        b'-' => Ok(62),
        b'_' => Ok(63),
        _ => Err(DecodeError),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors_without_padding() {
        let vectors: [(&str, &str); 7] = [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(encode(plain.as_bytes()), encoded);
            assert_eq!(decode(encoded.as_bytes()).unwrap(), plain.as_bytes(), "{encoded}");
        }
    }

    #[test]
    fn url_safe_alphabet() {
        assert_eq!(encode(&[0xfb, 0xff, 0xbf]), "-_-_");
        assert_eq!(decode(b"-_-_").unwrap(), [0xfb, 0xff, 0xbf]);
        // The standard alphabet's `+` and `/` are not base64url.
        assert_eq!(decode(b"+/+/"), Err(DecodeError));
    }

    #[test]
    fn round_trip_every_length() {
        let bytes: Vec<u8> = (0..=255).collect();
        for len in 0..bytes.len() {
            assert_eq!(decode(encode(&bytes[..len]).as_bytes()).unwrap(), &bytes[..len], "length {len}");
        }
    }

    #[test]
    fn padding_is_refused() {
        assert_eq!(decode(b"Zg=="), Err(DecodeError));
        assert_eq!(decode(b"Zm8="), Err(DecodeError));
        assert_eq!(decode(b"Zg="), Err(DecodeError));
    }

    #[test]
    fn invalid_characters_are_refused() {
        for text in [&b"Zm9v!"[..], b"Zm 9v", b"Zm9v\n", b"Zm9\xc3\xa9", b"Zm.v"] {
            assert_eq!(decode(text), Err(DecodeError), "{:?}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn impossible_lengths_and_leftover_bits_are_refused() {
        assert_eq!(decode(b"Z"), Err(DecodeError));
        assert_eq!(decode(b"Zm9vY"), Err(DecodeError));
        // "Zh" decodes to "f" with non-zero leftover bits: a second spelling of "Zg".
        assert_eq!(decode(b"Zh"), Err(DecodeError));
        assert_eq!(decode(b"Zm9"), Err(DecodeError));
    }
}
