//! Request heads: bytes in, a typed [`Request`] out, without touching a socket.
//!
//! "Not enough bytes yet" is `Ok(None)`. The head is split off the read buffer
//! and frozen; headers are byte ranges into it (no copies, and no reference
//! count per header: a browser sends a dozen or more).

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use super::Error;

/// Upper bound of `--max-headers`: the parse array lives on the stack.
pub const MAX_HEADERS_LIMIT: usize = 128;

/// The methods the routes know; others are answered 405.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD: answered like GET without a body (RFC 9110 §9.3.2).
    Head,
    /// POST
    Post,
    /// DELETE
    Delete,
    /// PUT
    Put,
    /// OPTIONS: allowed methods, and CORS preflights.
    Options,
    /// Anything else.
    Other,
}

/// How the body is framed (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    Empty,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Limits applied while parsing a head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Bytes of request line plus headers.
    pub max_head: usize,
    /// Number of header fields.
    pub max_headers: usize,
}

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The request target's path, still percent-encoded.
    pub path: Bytes,
    /// The query string without `?`, still encoded (empty when absent).
    pub query: Bytes,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// Body framing.
    pub body: BodyFraming,
    /// HTTP/1.1 (rather than 1.0): interim answers like `100 Continue` allowed.
    pub http11: bool,
    head: Bytes,
    headers: SmallVec<[HeaderSpan; 16]>,
    /// Where each [`Known`] header first is: its place in `headers` plus
    /// one, 0 when absent.
    known: [u8; Known::ALL.len()],
}

/// The request headers the server itself reads, each found once as the
/// head is parsed: a publish consulted four of them, and a search by name
/// through every header each time was ~650 of its ~16,000 instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// `Accept`
    Accept,
    /// `Authorization`
    Authorization,
    /// `Content-Type`
    ContentType,
    /// `Cookie`
    Cookie,
    /// `Expect`
    Expect,
    /// `Idempotency-Key`
    IdempotencyKey,
    /// `Last-Event-ID`
    LastEventId,
    /// `X-Forwarded-For`
    XForwardedFor,
}

impl Known {
    /// Every known header, in the order of the index.
    pub const ALL: [Known; 8] = [
        Known::Accept,
        Known::Authorization,
        Known::ContentType,
        Known::Cookie,
        Known::Expect,
        Known::IdempotencyKey,
        Known::LastEventId,
        Known::XForwardedFor,
    ];

    /// The header's name, lowercase.
    pub fn name(self) -> &'static str {
        match self {
            Known::Accept => "accept",
            Known::Authorization => "authorization",
            Known::ContentType => "content-type",
            Known::Cookie => "cookie",
            Known::Expect => "expect",
            Known::IdempotencyKey => "idempotency-key",
            Known::LastEventId => "last-event-id",
            Known::XForwardedFor => "x-forwarded-for",
        }
    }

    /// The known header named `name` (any case): its length picks the few
    /// it could be, so most names are passed over without a comparison.
    fn of(name: &[u8]) -> Option<Known> {
        let candidates: &[Known] = match name.len() {
            6 => &[Known::Accept, Known::Cookie, Known::Expect],
            12 => &[Known::ContentType],
            13 => &[Known::Authorization, Known::LastEventId],
            15 => &[Known::IdempotencyKey, Known::XForwardedFor],
            _ => return None,
        };
        candidates.iter().copied().find(|known| same_token(name, known.name().as_bytes()))
    }
}

/// Whether the header name `name` is `lower` (lowercase, as long, 4 to 16
/// bytes) in any case, compared as two overlapping words. Setting bit 5 of
/// every byte lowercases a letter and leaves `-` and digits as they are;
/// among the other bytes a header name may hold (RFC 9110 tokens, as
/// httparse checks them) none becomes a letter or `-` that way.
fn same_token(name: &[u8], lower: &[u8]) -> bool {
    debug_assert!(name.len() == lower.len() && (4..=16).contains(&lower.len()));
    let len = lower.len();
    if len >= 8 {
        let word = |bytes: &[u8], at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let case = u64::from_le_bytes([0x20; 8]);
        (word(name, 0) | case) == word(lower, 0) && (word(name, len - 8) | case) == word(lower, len - 8)
    } else {
        let word = |bytes: &[u8], at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let case = u32::from_le_bytes([0x20; 4]);
        (word(name, 0) | case) == word(lower, 0) && (word(name, len - 4) | case) == word(lower, len - 4)
    }
}

/// Where one header's name and value lie in the head.
#[derive(Debug, Clone, Copy)]
struct HeaderSpan {
    name: (u32, u32),
    value: (u32, u32),
}

impl Request {
    /// The method as the client sent it (logs name one that [`Method::Other`]
    /// does not).
    pub fn method_name(&self) -> &str {
        let line = self.head.trim_ascii_start();
        let token = line.split(|&b| b == b' ').next().unwrap_or_default();
        std::str::from_utf8(token).unwrap_or("?")
    }

    /// The first value of a header the server reads, found when the head
    /// was parsed.
    pub fn known(&self, which: Known) -> Option<&[u8]> {
        let place = usize::from(self.known[which as usize]).checked_sub(1)?;
        let (start, end) = self.headers[place].value;
        Some(&self.head[start as usize..end as usize])
    }

    /// [`Request::known`] as UTF-8 text, when present and valid.
    pub fn known_str(&self, which: Known) -> Option<&str> {
        self.known(which).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of any header, by case-insensitive name, searched
    /// for through all of them.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.header_pairs().find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| v)
    }

    /// Bytes the head took on the wire: with the body's, how much a
    /// connection's next read likely needs room for.
    pub fn head_len(&self) -> usize {
        self.head.len()
    }

    /// Every header as (name, value), in order.
    fn header_pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let at = |(start, end): (u32, u32)| &self.head[start as usize..end as usize];
        self.headers.iter().map(move |span| (at(span.name), at(span.value)))
    }
}

/// Parses a head from the front of `buf`. On success the head's bytes are split
/// off `buf`, leaving any body or pipelined request behind.
pub fn parse(buf: &mut BytesMut, limits: HeadLimits) -> Result<Option<Request>, Error> {
    // Left uninitialised for httparse to fill: zeroing 128 slots (4 KiB)
    // was a sixth of a publish request's parsing.
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_LIMIT];
    let slots = &mut storage[..limits.max_headers.clamp(1, MAX_HEADERS_LIMIT)];
    let mut parsed = httparse::Request::new(&mut []);
    let head_len = match parsed.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.max_head { Err(Error::HeadTooLarge) } else { Ok(None) };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Error::HeadTooLarge),
        Err(httparse::Error::Version) => return Err(Error::BadRequest("unsupported HTTP version")),
        Err(_) => {
            return if buf.len() > limits.max_head {
                Err(Error::HeadTooLarge)
            } else {
                Err(Error::BadRequest("invalid request line or header"))
            };
        }
    };
    if head_len > limits.max_head {
        return Err(Error::HeadTooLarge);
    }
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    let span = |s: &[u8]| {
        let (at, len) = offset(s);
        (at as u32, (at + len) as u32)
    };
    let method = match parsed.method.unwrap_or_default() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "DELETE" => Method::Delete,
        "PUT" => Method::Put,
        "OPTIONS" => Method::Options,
        _ => Method::Other,
    };
    let http11 = parsed.version == Some(1);
    let target = offset(parsed.path.unwrap_or_default().as_bytes());
    let mut headers: SmallVec<[HeaderSpan; 16]> = SmallVec::with_capacity(parsed.headers.len());
    let mut known = [0u8; Known::ALL.len()];
    for header in parsed.headers.iter() {
        headers.push(HeaderSpan { name: span(header.name.as_bytes()), value: span(header.value) });
        if let Some(which) = Known::of(header.name.as_bytes()) {
            let first = &mut known[which as usize];
            if *first == 0 {
                // At most MAX_HEADERS_LIMIT (128) headers: a place plus one fits a byte.
                *first = headers.len() as u8;
            }
        }
    }
    let head = buf.split_to(head_len).freeze();
    let slice = |(at, len): (usize, usize)| head.slice(at..at + len);

    let target = slice(target);
    if target.first() != Some(&b'/') {
        return Err(Error::BadRequest("request target must be an absolute path"));
    }
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(at) => (target.slice(..at), target.slice(at + 1..)),
        None => (target.clone(), Bytes::new()),
    };
    let mut request =
        Request { method, path, query, keep_alive: http11, body: BodyFraming::Empty, http11, head, headers, known };
    request.keep_alive = keep_alive(&request, http11);
    request.body = framing(&request, http11)?;
    Ok(Some(request))
}

/// RFC 9112 §9.3: HTTP/1.1 persists unless `close`; HTTP/1.0 only with `keep-alive`.
fn keep_alive(request: &Request, http11: bool) -> bool {
    let mut keep = http11;
    for (name, value) in request.header_pairs() {
        if !name.eq_ignore_ascii_case(b"connection") {
            continue;
        }
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"close") {
                return false;
            }
            if token.eq_ignore_ascii_case(b"keep-alive") {
                keep = true;
            }
        }
    }
    keep
}

/// RFC 9112 §6.1–6.3: chunked must be the only and final coding; a message with
/// both Transfer-Encoding and Content-Length, or conflicting lengths, is refused
/// (request smuggling defence).
fn framing(request: &Request, http11: bool) -> Result<BodyFraming, Error> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for (name, value) in request.header_pairs() {
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if !http11 || chunked || !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(Error::BadRequest("only Transfer-Encoding: chunked is supported"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let value = value.trim_ascii();
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) || value.len() > 18 {
                return Err(Error::BadRequest("invalid Content-Length"));
            }
            let parsed = crate::text::decimal(value);
            match (length, parsed) {
                (_, None) => return Err(Error::BadRequest("invalid Content-Length")),
                (Some(previous), Some(n)) if previous != n => {
                    return Err(Error::BadRequest("conflicting Content-Length headers"))
                }
                (_, Some(n)) => length = Some(n),
            }
        }
    }
    match (chunked, length) {
        (true, Some(_)) => Err(Error::BadRequest("both Transfer-Encoding and Content-Length")),
        (true, None) => Ok(BodyFraming::Chunked),
        (false, Some(0)) | (false, None) => Ok(BodyFraming::Empty),
        (false, Some(n)) => Ok(BodyFraming::Length(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits { max_head: 8192, max_headers: 64 };

    fn parse_all(text: &[u8]) -> Result<Option<Request>, Error> {
        parse(&mut BytesMut::from(text), LIMITS)
    }

    #[test]
    fn parses_a_get_with_query() {
        let request =
            parse_all(b"GET /sse?userId=a&rooms=x,y HTTP/1.1\r\nHost: h\r\nLast-Event-ID: 5\r\n\r\n").unwrap().unwrap();
        assert_eq!(request.method, Method::Get);
        assert_eq!(request.method_name(), "GET");
        assert_eq!(&request.path[..], b"/sse");
        assert_eq!(&request.query[..], b"userId=a&rooms=x,y");
        assert_eq!(request.header("last-event-id"), Some(&b"5"[..]));
        assert!(request.keep_alive);
        assert_eq!(request.body, BodyFraming::Empty);
    }

    #[test]
    fn known_headers_are_found_in_any_case_first_one_first_and_not_by_length_alone() {
        let request = parse_all(
            b"POST /v1/publish HTTP/1.1\r\nHost: h\r\nCONTENT-TYPE: application/json\r\nX-Forwarded-Foo: no\r\n\
              idempotency-KEY: k1\r\nContent-Type: text/plain\r\nAccept: */*\r\nAuthorizatio: no\r\n\
              Last-Event-Id: 7\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(request.known_str(Known::ContentType), Some("application/json"), "the first of two");
        assert_eq!(request.known(Known::IdempotencyKey), Some(&b"k1"[..]));
        assert_eq!(request.known(Known::Accept), Some(&b"*/*"[..]));
        assert_eq!(request.known_str(Known::LastEventId), Some("7"));
        for absent in [Known::XForwardedFor, Known::Authorization, Known::Cookie, Known::Expect] {
            assert_eq!(request.known(absent), None, "{absent:?}: only a name of the same length is there");
        }
        for known in Known::ALL {
            assert_eq!(request.known(known), request.header(known.name()), "{known:?}");
        }
    }

    #[test]
    fn every_known_header_is_found_by_its_name_at_its_place_in_the_index() {
        for (place, known) in Known::ALL.into_iter().enumerate() {
            assert_eq!(known as usize, place, "{known:?}: ALL lists the variants in order");
            let name = known.name().as_bytes();
            assert_eq!(Known::of(name), Some(known), "{known:?}: its length is among the candidates");
            assert_eq!(Known::of(&name.to_ascii_uppercase()), Some(known));
        }
    }

    #[test]
    fn a_token_matches_a_known_name_only_when_it_is_that_name_in_some_case() {
        let tchars: Vec<u8> = (0x21..0x7f).filter(|b| !b"\"(),/:;<=>?@[\\]{}".contains(b)).collect();
        for known in Known::ALL {
            let lower = known.name().as_bytes();
            assert!(same_token(&lower.to_ascii_uppercase(), lower));
            for at in 0..lower.len() {
                for &b in &tchars {
                    let mut name = lower.to_vec();
                    name[at] = b;
                    assert_eq!(
                        same_token(&name, lower),
                        name.eq_ignore_ascii_case(lower),
                        "{known:?} with {b:#x} at {at}"
                    );
                }
            }
        }
    }

    #[test]
    fn other_methods_keep_their_name() {
        let request = parse_all(b"PATCH /v1/stats HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!((request.method, request.method_name()), (Method::Other, "PATCH"));
    }

    #[test]
    fn input_split_across_reads_completes_once_whole() {
        let whole = b"POST /v1/broadcast HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n";
        for cut in 1..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            let head_end = whole.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let first = parse(&mut buf, LIMITS).unwrap();
            if cut < head_end {
                assert!(first.is_none(), "cut {cut}");
                buf.extend_from_slice(&whole[cut..]);
                let request = parse(&mut buf, LIMITS).unwrap().unwrap();
                assert_eq!(request.body, BodyFraming::Length(5));
            } else {
                assert_eq!(first.unwrap().body, BodyFraming::Length(5));
                buf.extend_from_slice(&whole[cut..]);
            }
            assert!(buf.starts_with(b"hello"), "body and pipelined bytes stay in the buffer");
        }
    }

    #[test]
    fn connection_semantics() {
        let close = parse_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap().unwrap();
        assert!(!close.keep_alive);
        let old = parse_all(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!old.keep_alive);
        let old_keep = parse_all(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap().unwrap();
        assert!(old_keep.keep_alive);
    }

    #[test]
    fn framing_rules() {
        let chunked = parse_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap().unwrap();
        assert_eq!(chunked.body, BodyFraming::Chunked);
        for bad in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n",
        ] {
            assert!(matches!(parse_all(bad), Err(Error::BadRequest(_))), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn limits_answer_431_and_garbage_400() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 9000));
        assert_eq!(parse_all(&big).unwrap_err(), Error::HeadTooLarge);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..65 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_all(&many).unwrap_err(), Error::HeadTooLarge);
        assert!(matches!(parse_all(b"\x01\x02 garbage\r\n\r\n"), Err(Error::BadRequest(_))));
        assert!(matches!(parse_all(b"GET http://x/ HTTP/1.1\r\n\r\n"), Err(Error::BadRequest(_))));
    }
}
