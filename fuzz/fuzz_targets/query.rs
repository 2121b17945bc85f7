//! Paths and query strings come from the request target: `query::decode`,
//! `pairs` and `segments` must never panic, and what they accept survives a
//! round trip: a decoded component, percent-encoded again, decodes to the
//! same text; pairs joined back into a query string and segments joined
//! back into a path give the same pairs and segments. Input without escapes
//! (and without `+` where it means a space) decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssekify::http::query;

/// Percent-encodes every byte but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    for plus_is_space in [false, true] {
        let Ok(text) = query::decode(data, plus_is_space) else { continue };
        assert!(text.len() <= data.len(), "decoding never lengthens");
        if !data.iter().any(|&b| b == b'%' || (plus_is_space && b == b'+')) {
            assert_eq!(text.as_bytes(), data, "nothing to decode");
        }
        assert_eq!(query::decode(encode(&text).as_bytes(), plus_is_space).as_ref(), Ok(&text));
    }
    if !data.contains(&b'+') {
        assert_eq!(query::decode(data, false), query::decode(data, true), "`+` is the only difference");
    }

    if let Ok(pairs) = query::pairs(data) {
        assert_eq!(pairs.len(), data.split(|&b| b == b'&').filter(|part| !part.is_empty()).count());
        let again: Vec<String> =
            pairs.iter().map(|(key, value)| format!("{}={}", encode(key), encode(value))).collect();
        assert_eq!(query::pairs(again.join("&").as_bytes()).as_ref(), Ok(&pairs));
    }

    if let Ok(segments) = query::segments(data) {
        let path = data.strip_prefix(b"/").unwrap_or(data);
        assert_eq!(segments.len(), path.iter().filter(|&&b| b == b'/').count() + 1);
        let again: Vec<String> = segments.iter().map(|segment| encode(segment)).collect();
        let again = format!("/{}", again.join("/"));
        assert_eq!(query::segments(again.as_bytes()).as_deref(), Ok(&segments[..]));
    }
});
