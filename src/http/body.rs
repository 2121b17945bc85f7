//! Request bodies, sans-IO: feed the read buffer, get the body when complete.
//!
//! Both framings of RFC 9112 §6 are decoded incrementally; the limit is checked
//! as bytes arrive, so an oversized body is refused before it is buffered.

use bytes::{Buf, BytesMut};

use super::request::BodyFraming;
use super::Error;

/// Largest chunk-size line accepted (hex digits plus extensions).
const MAX_CHUNK_LINE: usize = 1024;

/// Largest trailer section accepted (its lines are read and discarded).
const MAX_TRAILER_BYTES: usize = 8 * 1024;

/// A chunk-size line or chunk end over its bound.
const LINE_TOO_LONG: Error = Error::BadRequest("chunk line too long");

/// Most hex digits in a chunk size: 15 keep any size well inside `u64`.
const MAX_CHUNK_SIZE_DIGITS: usize = 15;

/// Incremental decoder for one request body.
#[derive(Debug)]
pub struct BodyDecoder {
    state: State,
    limit: usize,
    body: BytesMut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    /// Trailer bytes read so far.
    Trailers(usize),
    Done,
}

impl BodyDecoder {
    /// A decoder for `framing` refusing bodies over `limit` bytes.
    pub fn new(framing: BodyFraming, limit: usize) -> Result<Self, Error> {
        let state = match framing {
            BodyFraming::Empty => State::Done,
            BodyFraming::Length(n) if n > limit as u64 => return Err(Error::BodyTooLarge),
            BodyFraming::Length(n) => State::Length(n),
            BodyFraming::Chunked => State::ChunkSize,
        };
        Ok(BodyDecoder { state, limit, body: BytesMut::new() })
    }

    /// Body bytes decoded so far.
    pub fn received(&self) -> usize {
        self.body.len()
    }

    /// Bytes `input` lacks before a Content-Length body can be taken from
    /// it whole; 0 for a chunked body, whose size is not known ahead. A
    /// reader that makes room for them at once reads the body in one read
    /// (a 12 KiB batch took three) and it is never copied.
    pub fn awaiting(&self, input: &BytesMut) -> usize {
        match self.state {
            State::Length(remaining) => (remaining as usize).saturating_sub(input.len()),
            _ => 0,
        }
    }

    /// Consumes what it can from `input`. Returns the body once complete; bytes
    /// after it (a pipelined request) stay in `input`.
    pub fn decode(&mut self, input: &mut BytesMut) -> Result<Option<BytesMut>, Error> {
        loop {
            match self.state {
                State::Done => return Ok(Some(std::mem::take(&mut self.body))),
                State::Length(0) => self.state = State::Done,
                State::Length(remaining) => {
                    // Taken whole, never copied: the caller reads until the
                    // input holds it ([`BodyDecoder::awaiting`]), a body the
                    // connection charged its budget for before reading.
                    let remaining = remaining as usize;
                    if input.len() < remaining {
                        return Ok(None);
                    }
                    self.body = input.split_to(remaining);
                    self.state = State::Done;
                }
                State::ChunkSize => {
                    let Some(line) = take_line(input, MAX_CHUNK_LINE, LINE_TOO_LONG)? else {
                        return Ok(None);
                    };
                    let size = chunk_size(&line).ok_or(Error::BadRequest("invalid chunk size"))?;
                    if self.body.len() as u64 + size > self.limit as u64 {
                        return Err(Error::BodyTooLarge);
                    }
                    self.state = if size == 0 { State::Trailers(0) } else { State::ChunkData(size) };
                }
                State::ChunkData(remaining) => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let take = (remaining as usize).min(input.len());
                    self.body.extend_from_slice(&input[..take]);
                    input.advance(take);
                    let left = remaining - take as u64;
                    self.state = if left == 0 { State::ChunkDataEnd } else { State::ChunkData(left) };
                }
                State::ChunkDataEnd => {
                    let Some(line) = take_line(input, 2, LINE_TOO_LONG)? else {
                        return Ok(None);
                    };
                    if !line.is_empty() {
                        return Err(Error::BadRequest("chunk data not followed by CRLF"));
                    }
                    self.state = State::ChunkSize;
                }
                State::Trailers(read) => {
                    let Some(line) = take_line(input, MAX_TRAILER_BYTES - read, Error::HeadTooLarge)? else {
                        return Ok(None);
                    };
                    let read = read + line.len() + 2;
                    if line.is_empty() {
                        self.state = State::Done;
                    } else if read >= MAX_TRAILER_BYTES {
                        return Err(Error::HeadTooLarge);
                    } else {
                        self.state = State::Trailers(read);
                    }
                }
            }
        }
    }
}

/// The size of a chunk-size line (RFC 9112 §7.1): hex digits only, then
/// nothing or extensions after optional whitespace and `;`. No sign, no
/// leading whitespace: a proxy that reads `+5` or ` 5` differently would
/// see another body than ours (request smuggling).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > MAX_CHUNK_SIZE_DIGITS {
        return None;
    }
    let rest = &line[digits..];
    let extension = rest.iter().position(|&b| b != b' ' && b != b'\t').map(|at| &rest[at..]);
    if extension.is_some_and(|ext| ext[0] != b';') {
        return None;
    }
    let text = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(text, 16).ok()
}

/// Splits one CRLF-terminated line (without the CRLF) of at most `max`
/// bytes off `input`; the bound holds however the line was split by reads.
fn take_line(input: &mut BytesMut, max: usize, too_long: Error) -> Result<Option<BytesMut>, Error> {
    match input.windows(2).position(|w| w == b"\r\n") {
        Some(at) if at > max => Err(too_long),
        Some(at) => {
            let line = input.split_to(at);
            input.advance(2);
            Ok(Some(line))
        }
        None if input.len() > max + 1 => Err(too_long),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(framing: BodyFraming, wire: &[u8], piece: usize) -> Vec<u8> {
        let mut decoder = BodyDecoder::new(framing, 1 << 20).unwrap();
        let mut input = BytesMut::new();
        for part in wire.chunks(piece) {
            input.extend_from_slice(part);
            if let Some(body) = decoder.decode(&mut input).unwrap() {
                assert!(input.is_empty(), "nothing after the body was consumed");
                return body.to_vec();
            }
        }
        panic!("body never completed");
    }

    #[test]
    fn a_content_length_body_is_taken_whole_from_the_input_never_copied() {
        let mut decoder = BodyDecoder::new(BodyFraming::Length(5), 1 << 20).unwrap();
        let mut input = BytesMut::with_capacity(64);
        input.extend_from_slice(b"he");
        assert_eq!(decoder.awaiting(&input), 3, "what the reader must make room for");
        assert!(decoder.decode(&mut input).unwrap().is_none());
        assert_eq!(&input[..], b"he", "nothing is taken before the whole body is there");
        input.extend_from_slice(b"lloNEXT");
        assert_eq!(decoder.awaiting(&input), 0);
        let start = input.as_ptr();
        let body = decoder.decode(&mut input).unwrap().expect("the whole body");
        assert_eq!((&body[..], &input[..]), (&b"hello"[..], &b"NEXT"[..]));
        assert_eq!(body.as_ptr(), start, "the body is the read buffer's own bytes");
        let chunked = BodyDecoder::new(BodyFraming::Chunked, 1 << 20).unwrap();
        assert_eq!(chunked.awaiting(&BytesMut::new()), 0, "a chunked body's size is not known ahead");
    }

    #[test]
    fn content_length_split_anywhere() {
        for piece in 1..8 {
            let body = decode_in_pieces(BodyFraming::Length(5), b"hello", piece);
            assert_eq!(body, b"hello");
        }
    }

    #[test]
    fn chunked_split_anywhere_keeps_pipelined_bytes() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: y\r\n\r\n";
        for piece in 1..wire.len() {
            let body = decode_in_pieces(BodyFraming::Chunked, wire, piece);
            assert_eq!(body, b"hello world", "piece {piece}");
        }
        let mut decoder = BodyDecoder::new(BodyFraming::Chunked, 100).unwrap();
        let mut input = BytesMut::from(&b"1\r\na\r\n0\r\n\r\nGET / HTTP/1.1"[..]);
        assert_eq!(&decoder.decode(&mut input).unwrap().unwrap()[..], b"a");
        assert_eq!(&input[..], b"GET / HTTP/1.1");
    }

    #[test]
    fn limits_and_errors() {
        assert_eq!(BodyDecoder::new(BodyFraming::Length(11), 10).unwrap_err(), Error::BodyTooLarge);
        let mut decoder = BodyDecoder::new(BodyFraming::Chunked, 10).unwrap();
        assert_eq!(decoder.decode(&mut BytesMut::from(&b"b\r\n"[..])).unwrap_err(), Error::BodyTooLarge);
        let mut decoder = BodyDecoder::new(BodyFraming::Chunked, 10).unwrap();
        assert!(matches!(decoder.decode(&mut BytesMut::from(&b"zz\r\n"[..])), Err(Error::BadRequest(_))));
        let mut decoder = BodyDecoder::new(BodyFraming::Chunked, 10).unwrap();
        assert!(matches!(decoder.decode(&mut BytesMut::from(&b"1\r\nab\r\n"[..])), Err(Error::BadRequest(_))));
    }

    #[test]
    fn chunk_sizes_are_strict_hex() {
        for bad in ["+5", " 5", "-5", "0x5", "5x", "", ";ext", "1234567890abcdef0"] {
            assert_eq!(chunk_size(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(chunk_size(b"5"), Some(5));
        assert_eq!(chunk_size(b"00A"), Some(10));
        assert_eq!(chunk_size(b"5;name=value"), Some(5));
        assert_eq!(chunk_size(b"5 \t; name"), Some(5), "whitespace before an extension");
        let mut decoder = BodyDecoder::new(BodyFraming::Chunked, 100).unwrap();
        assert!(matches!(decoder.decode(&mut BytesMut::from(&b"+5\r\nhello\r\n"[..])), Err(Error::BadRequest(_))));
    }

    /// Found by the `http_body` fuzzer: a chunk line over the bound was
    /// accepted when its CRLF came in the same read, refused otherwise.
    #[test]
    fn a_long_chunk_line_is_refused_however_it_arrives() {
        let wire = [&b"5;"[..], &[b'x'; 1100], b"\r\nhello\r\n0\r\n\r\n"].concat();
        let mut whole = BodyDecoder::new(BodyFraming::Chunked, 1024).unwrap();
        assert!(matches!(whole.decode(&mut BytesMut::from(&wire[..])), Err(Error::BadRequest(_))));
        let mut pieces = BodyDecoder::new(BodyFraming::Chunked, 1024).unwrap();
        let mut input = BytesMut::new();
        let refused = wire.iter().any(|&byte| {
            input.extend_from_slice(&[byte]);
            pieces.decode(&mut input).is_err()
        });
        assert!(refused);
    }

    #[test]
    fn trailers_are_bounded() {
        let mut decoder = BodyDecoder::new(BodyFraming::Chunked, 100).unwrap();
        let mut input = BytesMut::from(&b"0\r\n"[..]);
        let line = format!("X-Filler: {}\r\n", "a".repeat(100));
        for _ in 0..(MAX_TRAILER_BYTES / line.len() + 1) {
            input.extend_from_slice(line.as_bytes());
        }
        assert_eq!(decoder.decode(&mut input).unwrap_err(), Error::HeadTooLarge);
        let mut decoder = BodyDecoder::new(BodyFraming::Chunked, 100).unwrap();
        let mut input = BytesMut::from(&b"0\r\n"[..]);
        input.extend_from_slice("a".repeat(MAX_TRAILER_BYTES + 10).as_bytes());
        assert!(decoder.decode(&mut input).is_err(), "one endless trailer line");
    }
}
