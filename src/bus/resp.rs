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
        let mut buf = BytesMut::new();
        let mut replies = Vec::new();
        for byte in wire {
            buf.extend_from_slice(&[*byte]);
            while let Some(reply) = decode(&mut buf, false).unwrap() {
                replies.push(reply);
            }
        }
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
        assert!(buf.is_empty(), "every reply taken whole");
    }

    #[test]
    fn resp3_pushes_look_like_arrays() {
        let mut buf = BytesMut::from(&b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n-ERR no\r\n"[..]);
        assert!(matches!(decode(&mut buf, true).unwrap(), Some(Reply::Array(items)) if items.len() == 3));
        assert_eq!(decode(&mut buf, true).unwrap(), Some(Reply::Error("ERR no".into())));
    }
}
