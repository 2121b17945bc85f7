//! RESP framing through `redis-protocol`: commands out, replies in, as one
//! [`Reply`] type whichever protocol version (RESP2 or RESP3) the connection speaks.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::RangeFrame;
use redis_protocol::resp3::types::BytesFrame as Resp3;

use crate::units::decimal;

/// A reply or pushed message, protocol-neutral.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Simple or bulk string.
    Text(Bytes),
    /// Integer.
    Int(i64),
    /// Error reply.
    Error(String),
    /// Array (RESP3 pushes, maps and sets are flattened into arrays too).
    Array(Vec<Reply>),
    /// Null.
    Null,
}

impl Reply {
    /// The reply as UTF-8 text, when it is a string.
    pub fn text(&self) -> Option<&str> {
        match self {
            Reply::Text(bytes) => std::str::from_utf8(bytes).ok(),
            _ => None,
        }
    }
}

/// Why a reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// Appends a command (an array of bulk strings) to `out`, written straight
/// into the buffer: a log append carries thousands of arguments, and going
/// through `redis-protocol`'s frame type would copy each into a `Bytes` first.
pub fn command(out: &mut BytesMut, args: &[&[u8]]) {
    let size: usize = args.iter().map(|a| a.len() + 16).sum::<usize>() + 16;
    out.reserve(size);
    put_length(out, b'*', args.len());
    for arg in args {
        put_length(out, b'$', arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// `<kind><decimal>\r\n`, formatted on the stack.
fn put_length(out: &mut BytesMut, kind: u8, n: usize) {
    out.extend_from_slice(&[kind]);
    out.extend_from_slice(decimal(n as u64, &mut [0; 20]));
    out.extend_from_slice(b"\r\n");
}

/// Splits one complete reply off the front of `buf`, if there is one.
pub fn decode(buf: &mut BytesMut, resp3: bool) -> Result<Option<Reply>, ProtocolError> {
    match resp3 {
        false => bulk_array(buf).or_else(|OtherShape| decode_any(buf, false)),
        true => decode_any(buf, true),
    }
}

/// [`decode`] by redis-protocol's reading of any reply.
pub fn decode_any(buf: &mut BytesMut, resp3: bool) -> Result<Option<Reply>, ProtocolError> {
    let error = |e: redis_protocol::error::RedisProtocolError| ProtocolError(e.to_string());
    if resp3 {
        Ok(redis_protocol::resp3::decode::complete::decode_bytes_mut(buf).map_err(error)?.map(|(f, _, _)| from3(f)))
    } else {
        // The frame's ranges, then our reply sliced from them: one array
        // built per reply, not redis-protocol's and then ours.
        let Some((frame, len)) = redis_protocol::resp2::decode::decode_range(buf).map_err(error)? else {
            return Ok(None);
        };
        let bytes = buf.split_to(len).freeze();
        Ok(Some(from_range(&bytes, frame)))
    }
}

/// Bytes that are not an array of bulk strings [`bulk_array`] reads:
/// redis-protocol's to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtherShape;

/// Most bulk strings in an array [`bulk_array`] reads.
const BULK_ARRAY_MAX: usize = 8;

/// A RESP2 array of up to [`BULK_ARRAY_MAX`] bulk strings, the shape of
/// every pushed message (`message`, channel, payload) and of most replies
/// the bus reads, read straight into a [`Reply`] (a subscription's
/// messages by [`decode_heard`], without the array): through
/// redis-protocol's parser and its list of ranges a lone bus message's
/// push cost ~1,300 of the ~10,600 instructions a receiving instance spent
/// on it (`benches/callgrind.py`). `Ok(None)`
/// while the bytes so far are such an array's beginning; `Err` when they
/// are anything else, left to redis-protocol, which also words every
/// refusal. `fuzz/fuzz_targets/resp_reply.rs` checks that whatever it
/// reads, redis-protocol ([`decode_any`]) reads the same.
pub fn bulk_array(buf: &mut BytesMut) -> Result<Option<Reply>, OtherShape> {
    let Some(array) = BulkArray::read(buf)? else { return Ok(None) };
    let bytes = buf.split_to(array.len).freeze();
    Ok(Some(array.into_reply(&bytes)))
}

/// Where the strings of a whole RESP2 array of bulk strings stand in a buffer.
struct BulkArray {
    spans: [(usize, usize); BULK_ARRAY_MAX],
    count: usize,
    /// Bytes the array takes.
    len: usize,
}

impl BulkArray {
    /// The array at the start of `buf`, read as [`bulk_array`] says.
    fn read(buf: &[u8]) -> Result<Option<BulkArray>, OtherShape> {
        let mut at = 0;
        let Some(count) = header(buf, &mut at, b'*')? else { return Ok(None) };
        if count > BULK_ARRAY_MAX {
            return Err(OtherShape);
        }
        let mut spans = [(0, 0); BULK_ARRAY_MAX];
        for span in &mut spans[..count] {
            let Some(len) = header(buf, &mut at, b'$')? else { return Ok(None) };
            let end = at + len;
            match buf.get(end..end + 2) {
                None => return Ok(None),
                Some(b"\r\n") => {}
                Some(_) => return Err(OtherShape),
            }
            *span = (at, end);
            at = end + 2;
        }
        Ok(Some(BulkArray { spans, count, len: at }))
    }

    /// The array as a reply, its strings slices of `bytes` (the array's own).
    fn into_reply(self, bytes: &Bytes) -> Reply {
        Reply::Array(
            self.spans[..self.count].iter().map(|&(start, end)| Reply::Text(bytes.slice(start..end))).collect(),
        )
    }
}

/// What a subscription reads: a message pushed on a channel, or any other reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Heard {
    /// `message`/`smessage`, channel, payload: every message of the bus,
    /// read from RESP2 without the array a [`Reply`] would allocate for it.
    Message {
        /// The channel it was published on.
        channel: Bytes,
        /// What was published.
        payload: Bytes,
    },
    /// Anything else (subscription confirmations, RESP3 pushes, errors).
    Reply(Reply),
}

/// [`decode`] for a subscription: a pushed message (RESP2) as [`Heard::Message`].
pub fn decode_heard(buf: &mut BytesMut, resp3: bool) -> Result<Option<Heard>, ProtocolError> {
    if !resp3 {
        if let Ok(read) = BulkArray::read(buf) {
            let Some(array) = read else { return Ok(None) };
            let bytes = buf.split_to(array.len).freeze();
            let [kind, channel, payload, ..] = array.spans;
            return Ok(Some(match array.count == 3 && is_message(&bytes[kind.0..kind.1]) {
                true => Heard::Message {
                    channel: bytes.slice(channel.0..channel.1),
                    payload: bytes.slice(payload.0..payload.1),
                },
                false => Heard::Reply(array.into_reply(&bytes)),
            }));
        }
    }
    Ok(decode_any(buf, resp3)?.map(Heard::from))
}

impl From<Reply> for Heard {
    /// A pushed message read as a plain reply (a RESP3 push, a sharded
    /// subscription's reader) is a [`Heard::Message`] all the same.
    fn from(reply: Reply) -> Heard {
        let Reply::Array(parts) = reply else { return Heard::Reply(reply) };
        match <[Reply; 3]>::try_from(parts) {
            Ok([Reply::Text(kind), Reply::Text(channel), Reply::Text(payload)]) if is_message(&kind) => {
                Heard::Message { channel, payload }
            }
            Ok(three) => Heard::Reply(Reply::Array(three.into())),
            Err(parts) => Heard::Reply(Reply::Array(parts)),
        }
    }
}

/// The kind of a pushed message (`smessage`: sharded Pub/Sub).
fn is_message(kind: &[u8]) -> bool {
    matches!(kind, b"message" | b"smessage")
}

/// `<kind><decimal>\r\n` at `at`, which it moves past it: `Ok(None)` while
/// the bytes end before it does, `Err` when they are something else (a
/// sign, over nine digits).
fn header(bytes: &[u8], at: &mut usize, kind: u8) -> Result<Option<usize>, OtherShape> {
    let rest = &bytes[*at..];
    match rest.first() {
        None => return Ok(None),
        Some(&first) if first != kind => return Err(OtherShape),
        Some(_) => {}
    }
    let mut value = 0;
    for (place, &byte) in rest.iter().enumerate().skip(1) {
        match byte {
            b'0'..=b'9' if place <= 9 => value = value * 10 + usize::from(byte - b'0'),
            b'\r' if place > 1 => {
                return match rest.get(place + 1) {
                    None => Ok(None),
                    Some(b'\n') => {
                        *at += place + 2;
                        Ok(Some(value))
                    }
                    Some(_) => Err(OtherShape),
                };
            }
            _ => return Err(OtherShape),
        }
    }
    Ok(None)
}

fn from_range(bytes: &Bytes, frame: RangeFrame) -> Reply {
    match frame {
        RangeFrame::SimpleString((start, end)) | RangeFrame::BulkString((start, end)) => {
            Reply::Text(bytes.slice(start..end))
        }
        RangeFrame::Error((start, end)) => Reply::Error(String::from_utf8_lossy(&bytes[start..end]).into_owned()),
        RangeFrame::Integer(i) => Reply::Int(i),
        RangeFrame::Array(items) => Reply::Array(items.into_iter().map(|item| from_range(bytes, item)).collect()),
        RangeFrame::Null => Reply::Null,
    }
}

fn from3(frame: Resp3) -> Reply {
    match frame {
        Resp3::BlobString { data, .. }
        | Resp3::SimpleString { data, .. }
        | Resp3::VerbatimString { data, .. }
        | Resp3::BigNumber { data, .. } => Reply::Text(data),
        Resp3::BlobError { data, .. } => Reply::Error(String::from_utf8_lossy(&data).into_owned()),
        Resp3::SimpleError { data, .. } => Reply::Error(data.to_string()),
        Resp3::Number { data, .. } => Reply::Int(data),
        Resp3::Boolean { data, .. } => Reply::Int(i64::from(data)),
        Resp3::Double { data, .. } => Reply::Text(Bytes::from(data.to_string())),
        Resp3::Array { data, .. } | Resp3::Push { data, .. } => Reply::Array(data.into_iter().map(from3).collect()),
        Resp3::Set { data, .. } => Reply::Array(data.into_iter().map(from3).collect()),
        Resp3::Map { data, .. } => Reply::Array(data.into_iter().flat_map(|(k, v)| [from3(k), from3(v)]).collect()),
        Resp3::Null => Reply::Null,
        other => Reply::Error(format!("unexpected RESP3 frame {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_bulk_string_arrays() {
        let mut out = BytesMut::new();
        command(&mut out, &[b"PUBLISH", b"ch", b"a\r\nb"]);
        assert_eq!(&out[..], b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$4\r\na\r\nb\r\n");
        out.clear();
        let long = vec![b'x'; 1234];
        command(&mut out, &[b"", &long]);
        assert_eq!(&out[..12], b"*2\r\n$0\r\n\r\n$1");
        assert_eq!(&out[12..18], b"234\r\nx");
    }

    #[test]
    fn replies_split_across_reads() {
        let wire = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$3\r\nabc\r\n:5\r\n-ERR no\r\n$-1\r\n+OK\r\n";
        let (replies, left) = one_byte_at_a_time(wire, decode);
        assert_eq!(
            replies,
            vec![
                Reply::Array(vec![
                    Reply::Text(Bytes::from_static(b"message")),
                    Reply::Text(Bytes::from_static(b"ch")),
                    Reply::Text(Bytes::from_static(b"abc")),
                ]),
                Reply::Int(5),
                Reply::Error("ERR no".into()),
                Reply::Null,
                Reply::Text(Bytes::from_static(b"OK")),
            ]
        );
        assert!(left.is_empty(), "every reply taken whole");
    }

    /// What `decode` reads from `wire` arriving a byte at a time, and the bytes left.
    fn one_byte_at_a_time<T>(
        wire: &[u8],
        decode: fn(&mut BytesMut, bool) -> Result<Option<T>, ProtocolError>,
    ) -> (Vec<T>, BytesMut) {
        let mut buf = BytesMut::new();
        let mut read = Vec::new();
        for byte in wire {
            buf.extend_from_slice(&[*byte]);
            while let Some(one) = decode(&mut buf, false).unwrap() {
                read.push(one);
            }
        }
        (read, buf)
    }

    #[test]
    fn a_subscription_hears_messages_whole_and_anything_else_as_a_reply() {
        let wire = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$3\r\na\r\n\r\n\
            *3\r\n$8\r\nsmessage\r\n$3\r\n{c}\r\n$0\r\n\r\n*3\r\n$4\r\nlist\r\n$1\r\nx\r\n$1\r\ny\r\n-ERR no\r\n";
        let (heard, left) = one_byte_at_a_time(wire, decode_heard);
        let text = |t: &'static [u8]| Reply::Text(Bytes::from_static(t));
        assert_eq!(
            heard,
            vec![
                Heard::Reply(Reply::Array(vec![text(b"subscribe"), text(b"ch"), Reply::Int(1)])),
                Heard::Message { channel: Bytes::from_static(b"ch"), payload: Bytes::from_static(b"a\r\n") },
                Heard::Message { channel: Bytes::from_static(b"{c}"), payload: Bytes::new() },
                Heard::Reply(Reply::Array(vec![text(b"list"), text(b"x"), text(b"y")])),
                Heard::Reply(Reply::Error("ERR no".into())),
            ]
        );
        assert!(left.is_empty(), "everything taken whole");
        // Read as plain replies (RESP3 pushes, a sharded subscription's
        // reader), messages are heard the same.
        let message = Reply::Array(vec![text(b"smessage"), text(b"{c}"), text(b"x")]);
        let expected = Heard::Message { channel: Bytes::from_static(b"{c}"), payload: Bytes::from_static(b"x") };
        assert_eq!(Heard::from(message), expected);
        let mut buf = BytesMut::from(&b">3\r\n$8\r\nsmessage\r\n$3\r\n{c}\r\n$1\r\nx\r\n"[..]);
        assert_eq!(decode_heard(&mut buf, true).unwrap(), Some(expected));
        let not_text = Reply::Array(vec![text(b"message"), text(b"ch"), Reply::Int(1)]);
        assert_eq!(Heard::from(not_text.clone()), Heard::Reply(not_text));
    }

    #[test]
    fn bulk_arrays_are_read_as_redis_protocol_reads_them() {
        let samples: [&[u8]; 8] = [
            b"*3\r\n$7\r\nmessage\r\n$7\r\n{b:0}:n\r\n$14\r\n1a2b:17:\x00\r\nxyz\r\n+OK\r\n",
            b"*4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$2\r\nch\r\n$0\r\n\r\n",
            b"*0\r\n",
            b"*1\r\n$010\r\n0123456789\r\n",
            b"*2\r\n:5\r\n$1\r\nx\r\n",
            b"*2\r\n$-1\r\n$1\r\nx\r\n",
            b"*9\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n",
            b"*1\r\n$3\r\nabcX\n",
        ];
        // The first four are bulk arrays (the first followed by another
        // reply); the others go to redis-protocol once their shape shows.
        for (index, sample) in samples.iter().enumerate() {
            let mut whole = false;
            for end in 0..=sample.len() {
                let (mut ours, mut reference) = (BytesMut::from(&sample[..end]), BytesMut::from(&sample[..end]));
                let expected = decode_any(&mut reference, false);
                match bulk_array(&mut ours) {
                    Ok(Some(reply)) => {
                        assert_eq!(expected, Ok(Some(reply)), "{sample:?} to {end}");
                        assert_eq!(ours, reference, "{sample:?} to {end}: the same bytes left");
                        whole = true;
                    }
                    Ok(None) => assert!(!matches!(expected, Ok(Some(_))), "{sample:?} to {end}: {expected:?}"),
                    Err(OtherShape) => assert!(index >= 4, "{sample:?} to {end}: a bulk array left to redis-protocol"),
                }
            }
            assert_eq!(whole, index < 4, "{sample:?} read whole");
        }
        assert_eq!(bulk_array(&mut BytesMut::from(samples[4])), Err(OtherShape), "an integer element");
        assert_eq!(bulk_array(&mut BytesMut::from(samples[5])), Err(OtherShape), "a null bulk string");
        assert_eq!(bulk_array(&mut BytesMut::from(samples[6])), Err(OtherShape), "more than BULK_ARRAY_MAX");
        assert_eq!(bulk_array(&mut BytesMut::from(samples[7])), Err(OtherShape), "no CRLF after the string");
    }

    #[test]
    fn resp3_pushes_look_like_arrays() {
        let mut buf = BytesMut::from(&b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n-ERR no\r\n"[..]);
        assert!(matches!(decode(&mut buf, true).unwrap(), Some(Reply::Array(items)) if items.len() == 3));
        assert_eq!(decode(&mut buf, true).unwrap(), Some(Reply::Error("ERR no".into())));
    }
}
