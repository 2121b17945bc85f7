//! A request head is the first thing a peer sends: `request::parse` must
//! never panic, whatever the bytes and limits. When it returns a request,
//! it consumed a whole head of at most `max_head` bytes and left the rest
//! of the buffer alone, the path is absolute and holds no `?`, and a
//! Content-Length body is never empty; "not yet" leaves the buffer as it
//! was. Input split anywhere parses the same: a prefix of a head that parses
//! is "not yet", never an error or another request.
//!
//! Input: `max_head` byte, `max_headers` byte, cut byte, then the wire bytes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ssekify::http::request::{self, BodyFraming, HeadLimits, Known, Request};
use ssekify::http::Error;

/// What a parse returned, with the number of bytes it took off the buffer.
fn parse(wire: &[u8], limits: HeadLimits) -> (Result<Option<Request>, Error>, usize) {
    let mut buf = BytesMut::from(wire);
    let result = request::parse(&mut buf, limits);
    let consumed = wire.len() - buf.len();
    if let Ok(Some(_)) = result {
        assert_eq!(&buf[..], &wire[consumed..], "what follows the head stays in the buffer");
    }
    (result, consumed)
}

/// The fields a caller reads, for comparing two parses.
fn summary(request: &Request) -> impl PartialEq + std::fmt::Debug + '_ {
    let headers =
        ["host", "content-length", "transfer-encoding", "connection", "last-event-id"].map(|n| request.header(n));
    (request.method, &request.path[..], &request.query[..], request.keep_alive, request.body, headers)
}

fuzz_target!(|data: &[u8]| {
    let [max_head, max_headers, cut, ref wire @ ..] = *data else { return };
    let limits = HeadLimits { max_head: 64 + usize::from(max_head) * 32, max_headers: usize::from(max_headers) };
    let (whole, consumed) = parse(wire, limits);
    match &whole {
        Ok(Some(request)) => {
            assert!(consumed > 0 && consumed <= limits.max_head, "head of {consumed} bytes");
            let head = &wire[..consumed];
            assert!(head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"), "a head ends with a blank line");
            assert_eq!(request.path.first(), Some(&b'/'), "an absolute path");
            assert!(!request.path.contains(&b'?'), "the query is split off the path");
            assert_ne!(request.body, BodyFraming::Length(0), "an empty body is BodyFraming::Empty");
            for known in Known::ALL {
                assert_eq!(request.known(known), request.header(known.name()), "{known:?} found as a search finds it");
            }
        }
        Ok(None) => assert!(consumed == 0 && wire.len() <= limits.max_head, "not yet, within the limit"),
        Err(_) => {}
    }

    // The same bytes arriving in two reads.
    let cut = wire.len() * usize::from(cut) / 256;
    let (prefix, prefix_consumed) = parse(&wire[..cut], limits);
    match (&whole, &prefix) {
        (Ok(Some(_)), Ok(None)) if cut < consumed => {}
        (Ok(Some(_)), _) if cut < consumed => panic!("a prefix of a head gave {prefix:?}"),
        (Ok(Some(request)), Ok(Some(early))) => {
            assert_eq!(prefix_consumed, consumed);
            assert_eq!(summary(early), summary(request));
        }
        (Ok(Some(_)), _) => panic!("the whole head in the first read gave {prefix:?}"),
        (Ok(None), _) => assert!(matches!(prefix, Ok(None)), "a prefix of an incomplete head gave {prefix:?}"),
        (Err(_), _) => {}
    }
});
