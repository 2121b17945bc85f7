//! A request body comes from the peer in reads of any size: `BodyDecoder`
//! must never panic, and must not depend on where the reads split the
//! bytes: fed in pieces it ends with the same body and the same leftover
//! (a pipelined request), or the same kind of error, as fed at once. A body
//! is never longer than the limit, and a Content-Length body is that long.
//!
//! Input: framing byte (even: chunked, odd: Content-Length), the limit (u16
//! LE), the Content-Length (u16 LE), the size of the reads after the first
//! (0 and 1: a byte at a time), then the wire bytes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ssekify::http::body::BodyDecoder;
use ssekify::http::request::BodyFraming;
use ssekify::http::Error;

/// How decoding ended: the body and what was left after it, not yet, or an error.
#[derive(Debug)]
enum Outcome {
    Body(BytesMut, Vec<u8>),
    Incomplete,
    Failed(Error),
}

impl PartialEq for Outcome {
    fn eq(&self, other: &Outcome) -> bool {
        match (self, other) {
            (Outcome::Body(a, rest_a), Outcome::Body(b, rest_b)) => a == b && rest_a == rest_b,
            (Outcome::Incomplete, Outcome::Incomplete) => true,
            // The same kind; the reason may name what was seen first.
            (Outcome::Failed(a), Outcome::Failed(b)) => std::mem::discriminant(a) == std::mem::discriminant(b),
            _ => false,
        }
    }
}

/// Feeds `reads` one after the other, as a connection does.
fn decode<'a>(framing: BodyFraming, limit: usize, mut reads: impl Iterator<Item = &'a [u8]>) -> Outcome {
    let mut decoder = match BodyDecoder::new(framing, limit) {
        Ok(decoder) => decoder,
        Err(error) => return Outcome::Failed(error),
    };
    let mut input = BytesMut::new();
    while let Some(read) = reads.next() {
        input.extend_from_slice(read);
        match decoder.decode(&mut input) {
            Ok(Some(body)) => {
                let mut rest = input.to_vec();
                rest.extend(reads.flatten());
                return Outcome::Body(body, rest);
            }
            Ok(None) => {}
            Err(error) => return Outcome::Failed(error),
        }
    }
    Outcome::Incomplete
}

fuzz_target!(|data: &[u8]| {
    let [kind, l0, l1, n0, n1, split, ref wire @ ..] = *data else { return };
    let limit = usize::from(u16::from_le_bytes([l0, l1]));
    let framing =
        if kind % 2 == 0 { BodyFraming::Chunked } else { BodyFraming::Length(u16::from_le_bytes([n0, n1]).into()) };
    let read = usize::from(split).max(1);

    let whole = decode(framing, limit, std::iter::once(wire));
    // The first call comes right after the head, with nothing buffered yet.
    let pieces = decode(framing, limit, std::iter::once(&[][..]).chain(wire.chunks(read)));
    assert_eq!(whole, pieces, "read {read} bytes at a time");
    if let Outcome::Body(body, _) = &whole {
        assert!(body.len() <= limit, "a body of {} bytes over the limit {limit}", body.len());
        if let BodyFraming::Length(n) = framing {
            assert_eq!(body.len() as u64, n);
        }
    }
});
