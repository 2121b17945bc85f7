//! The message format on the Redis channel: compact, binary, versioned.
//!
//! ```text
//! u8  version (1)
//! u32 publishing instance id (big endian)
//! u16 message count, then per message, in publish order:
//!     u8  target: 0 all, 1 user, 2 room
//!     u16 name length, name bytes (empty for all)
//!     u16 id length, id bytes
//!     u16 event length, event bytes (0: no event)
//!     u32 data length, data bytes
//! ```
//! Receivers encode the SSE frame themselves (once per message), with the
//! publisher's id, so every instance's replay rings hold the same ids. Names
//! are plain (never internal keys); the namespace is the channel's, so on a
//! tenant's channel `all` means every connection of that tenant.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::shard::envelope::Target;

/// The only version written; others are refused on read.
pub const VERSION: u8 = 1;

/// One message as it travels between instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireMessage {
    /// Recipients.
    pub target: Target,
    /// Event id, assigned by the publishing instance.
    pub id: String,
    /// Event name.
    pub event: Option<String>,
    /// Payload.
    pub data: Bytes,
}

/// Why a channel message was not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub &'static str);

/// Encodes a publish of `messages` by `instance`.
pub fn encode(instance: u32, messages: &[WireMessage]) -> Bytes {
    let size: usize = 7 + messages
        .iter()
        .map(|m| 11 + name(&m.target).len() + m.id.len() + m.event.as_ref().map_or(0, String::len) + m.data.len())
        .sum::<usize>();
    let mut out = BytesMut::with_capacity(size);
    out.put_u8(VERSION);
    out.put_u32(instance);
    out.put_u16(messages.len() as u16);
    for message in messages {
        out.put_u8(match message.target {
            // A tenant's broadcast travels as `all` on the tenant's channel.
            Target::All | Target::Tenant(_) => 0,
            Target::User(_) => 1,
            Target::Room(_) => 2,
        });
        put_short(&mut out, name(&message.target).as_bytes());
        put_short(&mut out, message.id.as_bytes());
        put_short(&mut out, message.event.as_deref().unwrap_or_default().as_bytes());
        out.put_u32(message.data.len() as u32);
        out.put_slice(&message.data);
    }
    out.freeze()
}

/// Decodes a channel message into its instance id and messages.
pub fn decode(mut input: Bytes) -> Result<(u32, Vec<WireMessage>), WireError> {
    if input.remaining() < 7 {
        return Err(WireError("truncated header"));
    }
    if input.get_u8() != VERSION {
        return Err(WireError("unknown version"));
    }
    let instance = input.get_u32();
    let count = input.get_u16() as usize;
    let mut messages = Vec::with_capacity(count);
    for _ in 0..count {
        if input.remaining() < 1 {
            return Err(WireError("truncated message"));
        }
        let kind = input.get_u8();
        let name = text(take_short(&mut input)?)?;
        let target = match kind {
            0 => Target::All,
            1 => Target::User(name.into()),
            2 => Target::Room(name.into()),
            _ => return Err(WireError("unknown target")),
        };
        let id = text(take_short(&mut input)?)?;
        let event = text(take_short(&mut input)?)?;
        if input.remaining() < 4 {
            return Err(WireError("truncated data length"));
        }
        let len = input.get_u32() as usize;
        if input.remaining() < len {
            return Err(WireError("truncated data"));
        }
        let data = input.split_to(len);
        messages.push(WireMessage { target, id, event: (!event.is_empty()).then_some(event), data });
    }
    Ok((instance, messages))
}

fn name(target: &Target) -> &str {
    match target {
        Target::All | Target::Tenant(_) => "",
        Target::User(name) | Target::Room(name) => name,
    }
}

fn put_short(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u16(bytes.len() as u16);
    out.put_slice(bytes);
}

fn take_short(input: &mut Bytes) -> Result<Bytes, WireError> {
    if input.remaining() < 2 {
        return Err(WireError("truncated length"));
    }
    let len = input.get_u16() as usize;
    if input.remaining() < len {
        return Err(WireError("truncated field"));
    }
    Ok(input.split_to(len))
}

fn text(bytes: Bytes) -> Result<String, WireError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| WireError("field is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_order_and_fields() {
        let messages = vec![
            WireMessage {
                target: Target::User("alice".into()),
                id: "1".into(),
                event: Some("n".into()),
                data: Bytes::from_static(b"a\nb"),
            },
            WireMessage { target: Target::Room("lobby".into()), id: "2".into(), event: None, data: Bytes::new() },
            WireMessage { target: Target::All, id: "3".into(), event: None, data: Bytes::from_static(b"{}") },
        ];
        let encoded = encode(0xdead_beef, &messages);
        assert_eq!(decode(encoded).unwrap(), (0xdead_beef, messages));
    }

    #[test]
    fn damaged_input_is_refused() {
        let good = encode(
            1,
            &[WireMessage { target: Target::All, id: "1".into(), event: None, data: Bytes::from_static(b"xyz") }],
        );
        for cut in 0..good.len() {
            assert!(decode(good.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut wrong_version = good.to_vec();
        wrong_version[0] = 9;
        assert_eq!(decode(Bytes::from(wrong_version)), Err(WireError("unknown version")));
    }
}
