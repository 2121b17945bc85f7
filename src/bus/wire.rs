//! The format of one bus log entry: compact, binary, versioned.
//!
//! ```text
//! entry   = header message+
//! header  = u8 version (2), u32 publishing instance, u64 publish token
//! message = u8 target (0 all, 1 user, 2 room, 3 tenant broadcast)
//!           u16 key length, key bytes   (internal key; the tenant name for 3; empty for 0)
//!           u16 id length, id bytes
//!           u16 event length, event bytes (0: no event)
//!           u32 data length, data bytes
//!         | u8 room change (4 join, 5 leave), u8 who (1 user, 6 connection)
//!           u16 key length, key bytes   (user key, or the connection's id)
//!           u16 room length, room bytes (internal key)
//! ```
//! Messages are self-delimiting and run to the end of the entry, so there is
//! no count to overflow, and the log's script can drop a duplicate message by
//! leaving its bytes out. Targets travel as internal keys
//! ([`crate::namespace`]): a tenant's user is `acme\0alice`, which keeps
//! tenants apart on shared partitions. Receivers encode the SSE frame
//! themselves, once per message, with the publisher's id, so every
//! instance's replay rings hold the same ids: the shard that delivers a
//! message encodes it from the message's id, event and data as they stand
//! here (`sse::frame::encode_packed` reads that part).
//!
//! A log entry comes from Redis, which anyone with its password can write to:
//! [`decode`] and [`messages`] trust nothing, and check every field as the HTTP edge
//! checks a publish (names, ids, events, UTF-8 data), refusing trailing bytes.

use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;

use crate::namespace::{valid_key, valid_name};
use crate::shard::envelope::{ConnId, RoomChange, Target};
use crate::shard::key::Key;
use crate::sse::frame;

/// The only version written; others are refused on read.
pub const VERSION: u8 = 2;

/// Bytes of an entry's header.
pub const HEADER_LEN: usize = 13;

/// Longest id or event name, as the HTTP edge allows.
const MAX_FIELD: usize = 256;

/// One message as it travels between instances, read from an entry's
/// bytes, which it borrows: the receiver encodes its frame and is done with
/// it, so nothing of it is copied or reference-counted on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireMessage<'a> {
    /// Recipients, in internal keys.
    pub target: Target,
    /// Event id, assigned by the publishing instance.
    pub id: &'a str,
    /// Event name.
    pub event: Option<&'a str>,
    /// Payload.
    pub data: &'a [u8],
    /// Id, event and data as they stand in the entry, lengths included
    /// ([`frame::encode_packed`] reads them): what a shard encodes the frame
    /// from.
    pub packed: &'a [u8],
    /// Set for a live room change (id, event and data are then empty).
    pub room_change: Option<RoomChange>,
}

/// A decoded log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The instance that published it.
    pub instance: u32,
    /// The publisher's token for it (matches its own pending publishes).
    pub token: u64,
    /// Its messages, in publish order (most entries hold one: a batch's
    /// messages to different partitions travel as entries of their own).
    pub messages: SmallVec<[WireMessage<'a>; 1]>,
}

/// Why an entry was not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub &'static str);

/// The header of an entry published by `instance` under `token`.
pub fn header(instance: u32, token: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN);
    out.put_u8(VERSION);
    out.put_u32(instance);
    out.put_u64(token);
    out.freeze()
}

/// Bytes [`message`] produces for these fields.
pub fn message_len(target: &Target, id: &str, event: Option<&str>, data: &[u8]) -> usize {
    3 + key(target).len() + frame::packed_len(id, event, data)
}

/// One message's bytes; an entry is a header followed by any number of these.
/// Fields must have passed the HTTP edge's checks (lengths fit their prefixes).
pub fn message(target: &Target, id: &str, event: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(message_len(target, id, event, data));
    out.put_u8(match target {
        Target::All => 0,
        Target::User(_) => 1,
        Target::Room(_) => 2,
        Target::Tenant(_) => 3,
        Target::Connection(_) => unreachable!("messages address users, rooms and broadcasts, not one connection"),
    });
    put_short(&mut out, key(target).as_bytes());
    frame::put_packed(&mut out, id, event, data);
    out.freeze()
}

/// Bytes [`room_change`] produces for these fields.
pub fn room_change_len(target: &Target, change: &RoomChange) -> usize {
    6 + key(target).len() + change.room.len()
}

/// One room change's bytes (a user's connections, or one connection).
pub fn room_change(target: &Target, change: &RoomChange) -> Bytes {
    let mut out = BytesMut::with_capacity(room_change_len(target, change));
    out.put_u8(if change.join { 4 } else { 5 });
    out.put_u8(match target {
        Target::User(_) => 1,
        Target::Connection(_) => 6,
        Target::Room(_) | Target::All | Target::Tenant(_) => {
            unreachable!("room changes address a user or a connection")
        }
    });
    put_short(&mut out, key(target).as_bytes());
    put_short(&mut out, change.room.as_bytes());
    out.freeze()
}

/// Decodes and validates one entry.
pub fn decode(entry: &[u8]) -> Result<Entry<'_>, WireError> {
    let messages = messages(entry)?.collect::<Result<_, _>>()?;
    let instance = u32::from_be_bytes(entry[1..5].try_into().expect("4 bytes"));
    let token = u64::from_be_bytes(entry[5..13].try_into().expect("8 bytes"));
    Ok(Entry { instance, token, messages })
}

/// The messages of an entry after its header is checked, each checked as
/// it is read: a receiver builds its deliveries straight from them, not
/// from a list of them first (a large entry's list was written to memory
/// the shard had just freed, a cache miss a line; `perf annotate`).
pub fn messages(entry: &[u8]) -> Result<Messages<'_>, WireError> {
    let mut input = Reader(entry);
    let header = input.take(HEADER_LEN).ok_or(WireError("truncated header"))?;
    if header[0] != VERSION {
        return Err(WireError("unknown version"));
    }
    if input.0.is_empty() {
        return Err(WireError("no messages"));
    }
    Ok(Messages { input, previous: None })
}

/// An entry's messages, read and checked one at a time ([`messages`]);
/// after an error, nothing more.
#[derive(Debug)]
pub struct Messages<'a> {
    input: Reader<'a>,
    /// The last message's target and its kind and key as they were read: a
    /// batch's messages to one user come in runs, whose target is checked
    /// once and copied.
    previous: Option<(u8, &'a [u8], Target)>,
}

impl Messages<'_> {
    /// How many messages the rest of the entry holds, by their lengths
    /// alone, for a list sized up front (exact when the entry is well formed).
    pub fn count_ahead(&self) -> usize {
        let mut rest = Reader(self.input.0);
        let mut count = 0;
        while !rest.0.is_empty() && rest.skip_message().is_some() {
            count += 1;
        }
        count
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<WireMessage<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.input.0.is_empty() {
            return None;
        }
        let message = decode_message(&mut self.input, &mut self.previous);
        if message.is_err() {
            self.input.0 = &[];
        }
        Some(message)
    }
}

fn decode_message<'a>(
    input: &mut Reader<'a>,
    previous: &mut Option<(u8, &'a [u8], Target)>,
) -> Result<WireMessage<'a>, WireError> {
    let kind = input.take(1).ok_or(WireError("truncated message"))?[0];
    if let 4 | 5 = kind {
        *previous = None;
        return decode_room_change(input, kind == 4);
    }
    let raw = input.short()?;
    let target = match previous {
        Some((seen, key, target)) if *seen == kind && *key == raw => target.clone(),
        _ => {
            let target = decode_target(kind, text(raw)?)?;
            *previous = Some((kind, raw, target.clone()));
            target
        }
    };
    let packed_from = input.0;
    let id = field(input.short()?).ok_or(WireError("invalid id"))?;
    let event = match input.short()? {
        [] => None,
        event => Some(field(event).ok_or(WireError("invalid event"))?),
    };
    let len = input.take(4).ok_or(WireError("truncated data length"))?;
    let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
    let data = input.take(len).ok_or(WireError("truncated data"))?;
    if crate::text::utf8(data).is_none() {
        return Err(WireError("data is not UTF-8"));
    }
    let packed = &packed_from[..packed_from.len() - input.0.len()];
    Ok(WireMessage { target, id, event, data, packed, room_change: None })
}

fn decode_target(kind: u8, key: &str) -> Result<Target, WireError> {
    Ok(match kind {
        0 if key.is_empty() => Target::All,
        // A run of the entry's messages to one target copies it: held in
        // place when short, a copy is a copy of its bytes. Held shared, each
        // copy took a reference on the bus thread that the shard gave back,
        // an atomic on a line the two cores passed to and fro for every
        // message (~4 % of a receiving instance's CPU, `perf record`).
        1 if valid_key(key) => Target::User(Key::from(key)),
        2 if valid_key(key) => Target::Room(Key::from(key)),
        3 if valid_name(key) => Target::Tenant(Key::from(key)),
        0..=3 => return Err(WireError("invalid target name")),
        _ => return Err(WireError("unknown target")),
    })
}

fn decode_room_change<'a>(input: &mut Reader<'a>, join: bool) -> Result<WireMessage<'a>, WireError> {
    let who = input.take(1).ok_or(WireError("truncated room change"))?[0];
    let key = text(input.short()?)?;
    let target = match who {
        1 if valid_key(key) => Target::User(key.into()),
        6 => Target::Connection(ConnId::parse(key).ok_or(WireError("invalid connection id"))?),
        1 => return Err(WireError("invalid target name")),
        _ => return Err(WireError("unknown room change target")),
    };
    let room = text(input.short()?)?;
    if !valid_key(room) {
        return Err(WireError("invalid room name"));
    }
    let room_change = Some(RoomChange { room: room.into(), join });
    Ok(WireMessage { target, id: "", event: None, data: &[], packed: &[], room_change })
}

/// An id or event name as the HTTP edge accepts it: 1 to 256 bytes of
/// UTF-8 without CR, LF or NUL.
fn field(bytes: &[u8]) -> Option<&str> {
    if bytes.is_empty() || bytes.len() > MAX_FIELD {
        return None;
    }
    if crate::text::plain_field(bytes) {
        // SAFETY: ASCII is UTF-8.
        return Some(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes).ok().filter(|text| frame::check_field(text).is_ok())
}

fn key(target: &Target) -> std::borrow::Cow<'_, str> {
    match target {
        Target::All => "".into(),
        Target::User(key) | Target::Room(key) | Target::Tenant(key) => (**key).into(),
        Target::Connection(id) => id.to_string().into(),
    }
}

fn put_short(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u16(bytes.len() as u16);
    out.put_slice(bytes);
}

/// The unread rest of an entry.
#[derive(Debug)]
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// The next `len` bytes, if there are as many.
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        Some(taken)
    }

    /// Passes over one message by its lengths, reading none of its fields.
    fn skip_message(&mut self) -> Option<()> {
        let bytes = self.0;
        let short = |at: usize| Some(2 + usize::from(u16::from_be_bytes(*bytes.get(at..)?.first_chunk::<2>()?)));
        let mut at = 1;
        if let 4 | 5 = *bytes.first()? {
            at += 1;
            at += short(at)?;
            at += short(at)?;
        } else {
            for _ in 0..3 {
                at += short(at)?;
            }
            at += 4 + u32::from_be_bytes(*bytes.get(at..)?.first_chunk::<4>()?) as usize;
        }
        self.0 = bytes.get(at..)?;
        Some(())
    }

    /// A field with a `u16` length before it.
    fn short(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.take(2).ok_or(WireError("truncated length"))?;
        self.take(usize::from(u16::from_be_bytes([len[0], len[1]]))).ok_or(WireError("truncated field"))
    }
}

fn text(bytes: &[u8]) -> Result<&str, WireError> {
    crate::text::utf8(bytes).ok_or(WireError("field is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(messages: &[WireMessage<'_>]) -> Bytes {
        let mut out = BytesMut::from(&header(0xdead_beef, 42)[..]);
        for m in messages {
            out.extend_from_slice(&message(&m.target, m.id, m.event, m.data));
        }
        out.freeze()
    }

    fn sample() -> Vec<WireMessage<'static>> {
        vec![
            WireMessage {
                target: Target::User("alice".into()),
                id: "1",
                event: Some("n"),
                data: b"a\nb",
                packed: &[],
                room_change: None,
            },
            WireMessage {
                target: Target::Room("acme\0lobby".into()),
                id: "2",
                event: None,
                data: b"",
                packed: &[],
                room_change: None,
            },
            WireMessage { target: Target::All, id: "3", event: None, data: b"{}", packed: &[], room_change: None },
            WireMessage {
                target: Target::Tenant("acme".into()),
                id: "4",
                event: None,
                data: "é".as_bytes(),
                packed: &[],
                room_change: None,
            },
        ]
    }

    #[test]
    fn round_trip_keeps_order_and_fields() {
        let messages = sample();
        let encoded = entry(&messages);
        let lens: usize = messages.iter().map(|m| message_len(&m.target, m.id, m.event, m.data)).sum();
        assert_eq!(encoded.len(), HEADER_LEN + lens);
        let decoded = decode(&encoded).unwrap();
        for m in &decoded.messages {
            let frame = frame::encode(m.id, m.event, m.data);
            assert_eq!(frame::encode_packed(m.packed), Some(frame), "a shard encodes the same frame: {m:?}");
        }
        let decoded = Entry { messages: decoded.messages.into_iter().map(unpacked).collect(), ..decoded };
        assert_eq!(decoded, Entry { instance: 0xdead_beef, token: 42, messages: messages.into() });
    }

    /// `m` without its packed fields (which the round trip tests check by
    /// the frame they encode).
    fn unpacked(m: WireMessage<'_>) -> WireMessage<'_> {
        WireMessage { packed: &[], ..m }
    }

    #[test]
    fn runs_to_one_target_keep_each_target_of_its_kind() {
        let to = |target: Target, id: &'static str| WireMessage {
            target,
            id,
            event: None,
            data: b"{}",
            packed: &[],
            room_change: None,
        };
        let messages = vec![
            to(Target::User("a".into()), "1"),
            to(Target::User("a".into()), "2"),
            to(Target::Room("a".into()), "3"),
            to(Target::User("a".into()), "4"),
            to(Target::User("b".into()), "5"),
            to(Target::User("b".into()), "6"),
        ];
        let encoded = entry(&messages);
        let decoded = decode(&encoded).unwrap();
        assert_eq!(decoded.messages.into_iter().map(unpacked).collect::<Vec<_>>(), messages);
        let mut bad = BytesMut::from(&entry(&messages[..1])[..]);
        bad.extend_from_slice(&message(&Target::User("a/b".into()), "7", None, b"{}"));
        assert_eq!(decode(&bad), Err(WireError("invalid target name")), "a new key is checked");
    }

    #[test]
    fn more_messages_than_a_u16_count_survive() {
        let one = WireMessage { target: Target::All, id: "x", event: None, data: b"1", packed: &[], room_change: None };
        let messages = vec![one; 70_000];
        assert_eq!(decode(&entry(&messages)).unwrap().messages.len(), 70_000);
    }

    #[test]
    fn damaged_input_is_refused() {
        let messages = sample();
        let good = entry(&messages);
        let mut message_ends = Vec::new();
        let mut end = HEADER_LEN;
        for m in &messages {
            end += message_len(&m.target, m.id, m.event, m.data);
            message_ends.push(end);
        }
        for cut in 0..good.len() {
            let decoded = decode(&good[..cut]);
            if let Ok(mut read) = super::messages(&good[..cut]) {
                let whole = message_ends.iter().filter(|&&end| end <= cut).count();
                assert_eq!(read.count_ahead(), whole, "the whole messages before a cut at {cut}");
                let (taken, refused) = (read.by_ref().take_while(Result::is_ok).count(), read.next());
                assert_eq!((taken, refused.is_none()), (whole, true), "read up to the damage, then nothing: {cut}");
            }
            if cut == HEADER_LEN {
                assert_eq!(decoded, Err(WireError("no messages")));
            } else {
                assert_eq!(decoded.is_ok(), message_ends.contains(&cut), "cut at {cut}");
            }
        }
        let mut trailing = good.to_vec();
        trailing.push(0);
        assert!(decode(&trailing).is_err(), "a trailing byte is a truncated message");
        let mut wrong_version = good.to_vec();
        wrong_version[0] = 1;
        assert_eq!(decode(&wrong_version), Err(WireError("unknown version")));
    }

    #[test]
    fn fields_are_checked_as_the_http_edge_checks_them() {
        let bad = |target: Target, id: &str, event: Option<&str>, data: &[u8]| {
            let mut out = BytesMut::from(&header(1, 1)[..]);
            out.extend_from_slice(&message(&target, id, event, data));
            decode(&out).unwrap_err()
        };
        assert_eq!(bad(Target::User("a,b".into()), "1", None, b""), WireError("invalid target name"));
        assert_eq!(bad(Target::User("".into()), "1", None, b""), WireError("invalid target name"));
        assert_eq!(bad(Target::Room("t\0".into()), "1", None, b""), WireError("invalid target name"));
        assert_eq!(bad(Target::Tenant("a\0b".into()), "1", None, b""), WireError("invalid target name"));
        assert_eq!(bad(Target::All, "", None, b""), WireError("invalid id"));
        assert_eq!(bad(Target::All, "a\nb", None, b""), WireError("invalid id"));
        assert_eq!(bad(Target::All, &"x".repeat(257), None, b""), WireError("invalid id"));
        assert_eq!(bad(Target::All, "1", Some("e\r"), b""), WireError("invalid event"));
        assert_eq!(bad(Target::All, "1", None, b"\xff"), WireError("data is not UTF-8"));
        let mut unknown = BytesMut::from(&header(1, 1)[..]);
        unknown.extend_from_slice(&message(&Target::All, "1", None, b""));
        unknown[HEADER_LEN] = 9;
        assert_eq!(decode(&unknown), Err(WireError("unknown target")));
    }

    #[test]
    fn room_changes_round_trip_and_are_checked() {
        let id = ConnId { instance: 0xabcd_0123, shard: 1, slot: 7, serial: 99 };
        let changes = [
            (Target::User("acme\0alice".into()), RoomChange { room: "acme\0lobby".into(), join: true }),
            (Target::Connection(id), RoomChange { room: "lobby".into(), join: false }),
        ];
        let mut out = BytesMut::from(&header(1, 1)[..]);
        for (target, change) in &changes {
            let bytes = room_change(target, change);
            assert_eq!(bytes.len(), room_change_len(target, change));
            out.extend_from_slice(&bytes);
        }
        assert_eq!(messages(&out).unwrap().count_ahead(), changes.len());
        let decoded = decode(&out).unwrap().messages;
        let back: Vec<_> = decoded.into_iter().map(|m| (m.target, m.room_change.unwrap())).collect();
        assert_eq!(back, changes);

        let bad = |target: &Target, room: &str| {
            let mut out = BytesMut::from(&header(1, 1)[..]);
            out.extend_from_slice(&room_change(target, &RoomChange { room: room.into(), join: true }));
            decode(&out).unwrap_err()
        };
        assert_eq!(bad(&Target::User("a".into()), "x,y"), WireError("invalid room name"));
        assert_eq!(bad(&Target::User("a/b".into()), "x"), WireError("invalid target name"));
        let mut forged = BytesMut::from(&header(1, 1)[..]);
        forged.extend_from_slice(&[4, 6, 0, 3, b'a', b'-', b'b', 0, 1, b'x']);
        assert_eq!(decode(&forged), Err(WireError("invalid connection id")));
    }
}
