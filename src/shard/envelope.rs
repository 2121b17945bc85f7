//! What travels between shards over their inboxes.

use std::num::NonZeroU32;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::idempotency::Ticket;
use super::key::Key;
use crate::events::{Event, EventTypes};
use crate::namespace::Namespace;
use crate::tenants::TenantConfig;

/// Who a message is for. User and room names are internal keys
/// ([`Namespace::key`]), in the process and on the bus alike, held in place
/// when short and shared when long ([`Key`]), so that a target costs no
/// allocation and its copies (a room's or a broadcast's delivery to every
/// shard, a bus entry's run of messages to one user) no copy of a long key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every connection of one user (on the user's owner shard).
    User(Key),
    /// Every member of a room (on every shard).
    Room(Key),
    /// Every connection of the default namespace (on every shard).
    All,
    /// Every connection of one tenant (on every shard).
    Tenant(Key),
    /// One connection, wherever in the cluster its id says it lives.
    Connection(ConnId),
}

/// A connection's cluster-wide id, `<instance>-<shard>-<slot>-<serial>`
/// (instance in 8 hex digits): the instance and shard say where it lives,
/// the slot finds it there in O(1), and the serial (per shard, never reused)
/// tells it from a later connection in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    /// The instance holding it.
    pub instance: u32,
    /// Its shard there.
    pub shard: u16,
    /// Its slot in that shard's connection table.
    pub slot: u32,
    /// Its shard's count of registrations when it registered.
    pub serial: u64,
}

impl ConnId {
    /// Reads an id exactly as [`ConnId`]'s `Display` writes it (one spelling
    /// per id: no sign, leading zero or upper-case hex); `None` otherwise.
    pub fn parse(text: &str) -> Option<ConnId> {
        let mut parts = text.split('-');
        let instance = parts.next().filter(|p| p.len() == 8).and_then(|p| u32::from_str_radix(p, 16).ok())?;
        let mut number = || parts.next().and_then(|p| p.parse::<u64>().ok());
        let (shard, slot, serial) = (number()?, number()?, number()?);
        if parts.next().is_some() {
            return None;
        }
        let id = ConnId { instance, shard: u16::try_from(shard).ok()?, slot: u32::try_from(slot).ok()?, serial };
        (id.to_string() == text).then_some(id)
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}-{}-{}-{}", self.instance, self.shard, self.slot, self.serial)
    }
}

/// A live room change (`PUT`/`DELETE …/rooms/{room}`): the target's
/// connections join or leave `room` (an internal key). It travels as a
/// [`Delivery`] so that it keeps its place among the target's messages, on
/// the bus too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomChange {
    /// The room's internal key.
    pub room: Box<str>,
    /// Join (`true`) or leave.
    pub join: bool,
}

/// What a room change did on one shard, packed into the one count a
/// delivery answers with (21 bits each: far above one shard's connections).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomChangeCount {
    /// Connections that joined or left.
    pub changed: u64,
    /// Connections that could not join: at `--max-rooms-per-connection`.
    pub refused: u64,
    /// Connections the target named (changed, refused or already so).
    pub found: u64,
}

impl RoomChangeCount {
    const BITS: u32 = 21;
    const MASK: u64 = (1 << Self::BITS) - 1;

    /// The count as a delivery answers it; sums of packed counts add up field by field.
    pub fn pack(self) -> u64 {
        self.changed | self.refused << Self::BITS | self.found << (2 * Self::BITS)
    }

    /// The fields of a packed count.
    pub fn unpack(packed: u64) -> Self {
        RoomChangeCount {
            changed: packed & Self::MASK,
            refused: packed >> Self::BITS & Self::MASK,
            found: packed >> (2 * Self::BITS) & Self::MASK,
        }
    }
}

impl Target {
    /// The target of a plain (client-facing) `self` in `namespace`.
    pub fn scoped(self, namespace: &Namespace) -> Target {
        let Some(tenant) = namespace.tenant_name() else { return self };
        match self {
            Target::User(user) => Target::User(namespace.key(&user).into()),
            Target::Room(room) => Target::Room(namespace.key(&room).into()),
            Target::All | Target::Tenant(_) => Target::Tenant(tenant.into()),
            Target::Connection(id) => Target::Connection(id),
        }
    }

    /// The bus log partition (of `partitions`) that carries this target's
    /// messages, so that each user, room or broadcast has one order on every
    /// instance. FNV-1a over the kind and key: the same on every instance,
    /// build and CPU (a randomised or CPU-dependent hash would split a
    /// target's messages between partitions).
    pub fn partition(&self, partitions: u16) -> u16 {
        let id;
        let (kind, key): (u8, &str) = match self {
            Target::All => (0, ""),
            Target::User(key) => (1, key),
            Target::Room(key) => (2, key),
            Target::Tenant(key) => (3, key),
            Target::Connection(conn) => {
                id = conn.to_string();
                (4, &id)
            }
        };
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in std::iter::once(kind).chain(key.bytes()) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        (hash % u64::from(partitions.max(1))) as u16
    }
}

/// Which connections or replay rings an admin request addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// One user's (an internal key), on the user's owner shard.
    User(Box<str>),
    /// Everything of one namespace, on every shard.
    Namespace(Namespace),
    /// Everything on every shard (shutdown).
    Everything,
}

/// One encoded frame for one target; the frame is shared, never copied.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Recipients.
    pub target: Target,
    /// The encoded SSE frame (empty while `packed`).
    pub frame: Bytes,
    /// Skip it when its id is already in the target's replay ring: set for
    /// frames from other instances, so a message that reaches an instance
    /// twice by id is delivered once. An empty frame delivers nothing (a
    /// message the bus log dropped as a duplicate).
    pub skip_known_id: bool,
    /// Set for a live room change instead of a message (the frame is then
    /// empty); boxed, being rare, so that every message's delivery is
    /// smaller to move.
    pub room_change: Option<Box<RoomChange>>,
    /// Set for a message from another instance whose frame is not encoded
    /// yet: where its id, event and data stand in the bus log entry that
    /// came with it ([`Envelope::Deliver`]'s `entry`), for the shard that
    /// delivers it to encode.
    pub packed: Option<PackedAt>,
}

impl Delivery {
    /// A message: `frame` to `target`.
    pub fn message(target: Target, frame: Bytes, skip_known_id: bool) -> Self {
        Delivery { target, frame, skip_known_id, room_change: None, packed: None }
    }

    /// A message from another instance, its fields `packed` in its bus log
    /// entry, for the shard that delivers it to encode.
    pub fn packed(target: Target, packed: PackedAt) -> Self {
        Delivery { target, frame: Bytes::new(), skip_known_id: true, room_change: None, packed: Some(packed) }
    }

    /// A live room change of `target`'s connections.
    pub fn room_change(target: Target, change: RoomChange) -> Self {
        Delivery {
            target,
            frame: Bytes::new(),
            skip_known_id: false,
            room_change: Some(Box::new(change)),
            packed: None,
        }
    }
}

/// Where a message's packed fields stand in its bus log entry, as two
/// numbers rather than a slice of the entry's `Bytes`: each such slice took
/// a reference on the bus thread's read buffer that the shard gave back, an
/// atomic on one line the two cores passed to and fro for every message of
/// an entry (~7 % of a receiving instance's CPU in `perf record`). The entry
/// travels once per envelope instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedAt {
    start: u32,
    len: NonZeroU32,
}

impl PackedAt {
    /// Where `packed`, a non-empty part of `entry`, stands in it; `None`
    /// for anything else (an entry is far below 4 GiB).
    pub fn within(entry: &[u8], packed: &[u8]) -> Option<Self> {
        let start = (packed.as_ptr() as usize).checked_sub(entry.as_ptr() as usize)?;
        entry.get(start..start.checked_add(packed.len())?)?;
        Some(PackedAt { start: u32::try_from(start).ok()?, len: NonZeroU32::new(u32::try_from(packed.len()).ok()?)? })
    }

    /// The packed fields in `entry`, if it is long enough.
    pub fn of(self, entry: &[u8]) -> Option<&[u8]> {
        let start = self.start as usize;
        entry.get(start..start + self.len.get() as usize)
    }
}

/// A validated subscribe request, ready to register on the owning shard.
#[derive(Debug)]
pub struct Subscription {
    /// The namespace the connection lives in.
    pub namespace: Namespace,
    /// The user's internal key, or `None` for an anonymous connection.
    pub user: Option<String>,
    /// Internal keys of the rooms to join.
    pub rooms: Vec<String>,
    /// `Last-Event-ID` (header, else `lastEventId` query parameter).
    pub last_event_id: Option<String>,
    /// Response head plus `retry:` line, written first.
    pub preamble: Bytes,
    /// Set for a lifecycle events listener (`GET /v1/events`) instead of a
    /// subscriber: the kinds it hears (of its namespace's tenant only, when
    /// it has one).
    pub events: Option<EventTypes>,
}

/// Where a reply goes: a pending slot on the asking shard.
#[derive(Debug, Clone, Copy)]
pub struct ReplyTo {
    /// Asking shard.
    pub shard: usize,
    /// Pending slot there.
    pub slot: usize,
    /// Guards against a reused slot.
    pub generation: u64,
    /// Index of this reply among those awaited.
    pub position: usize,
}

/// What a shard answers to a request.
#[derive(Debug, Default, Clone)]
pub struct Answer {
    /// Counts, hashes or a status code, by request kind.
    pub values: Vec<u64>,
    /// A stored response body (idempotency).
    pub body: Option<Bytes>,
}

/// A question another instance asks about this one's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// A user's connections (an internal key): `[count]`, and the `list`
    /// oldest as lines `<connId> <opened, Unix ms>`.
    User {
        /// The user's internal key.
        user: Box<str>,
        /// How many of the oldest connections to list.
        list: u32,
    },
    /// A room's presence (an internal key): `[connections, users]`, and up
    /// to `list` user names as lines.
    Room {
        /// The room's internal key.
        room: Box<str>,
        /// How many user names to send.
        list: u32,
    },
    /// Whether a connection is open here: `[1]` and a line with its tenant
    /// (empty in the default namespace), or `[0]`.
    Connection {
        /// The connection.
        id: ConnId,
    },
}

/// Why a subscriber's owner shard turned it away after the api layer had
/// admitted it. The shard says why; the api layer puts it into an HTTP
/// answer ([`crate::shard::Shared::render_refusal`]), so the shard builds
/// no HTTP itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The user already holds `--max-connections-per-user` streams here.
    TooManyConnections {
        /// The limit.
        limit: usize,
    },
}

/// Where the answer to another instance's question goes: the bus's way
/// back to it, called once with the answer's bytes.
pub type AnswerBack = Box<dyn FnOnce(Bytes) + Send>;

/// A cross-shard message.
pub enum Envelope {
    /// A subscriber accepted by another shard; this one owns its user.
    Subscriber {
        /// The socket.
        fd: OwnedFd,
        /// The parsed request.
        subscription: Subscription,
    },
    /// Frames to queue locally, in order; replies with one count each.
    Deliver {
        /// In publish order.
        deliveries: Vec<Delivery>,
        /// Where to send the counts, if anyone waits.
        reply: Option<ReplyTo>,
        /// The bus log entry the packed deliveries' fields stand in
        /// ([`Delivery::packed`]); empty when every frame is encoded.
        entry: Bytes,
    },
    /// Close the selected connections after flushing; replies with the count.
    Close {
        /// Whose connections.
        which: Selection,
        /// Where to send the count.
        reply: ReplyTo,
    },
    /// Drop the selected replay rings; replies when done.
    ClearRecent {
        /// Whose rings.
        which: Selection,
        /// Where to confirm.
        reply: ReplyTo,
    },
    /// Reply with the connections of a user (an internal key) here: the
    /// count, and the `list` oldest as lines (see [`Question::User`]).
    UserPresence {
        /// The user.
        user: Box<str>,
        /// How many to list.
        list: usize,
        /// Where to send them.
        reply: ReplyTo,
    },
    /// Reply with a room's connections and users here, and up to `list_max` user names.
    RoomPresence {
        /// The room (an internal key).
        room: Box<str>,
        /// Most names to send.
        list_max: usize,
        /// Where to send them.
        reply: ReplyTo,
    },
    /// Reply with the hashes of rooms with members here (for distinct counts).
    RoomHashes {
        /// Where to send them.
        reply: ReplyTo,
    },
    /// Reply with a tenant's figures here (see `shard::tenants`).
    TenantCounts {
        /// The tenant.
        tenant: Box<str>,
        /// Where to send them.
        reply: ReplyTo,
    },
    /// Reply with the figures of every label of `labels` here (metrics).
    TenantReport {
        /// The labels asked for, as the asking shard's config has them.
        labels: Arc<TenantConfig>,
        /// Where to send them.
        reply: ReplyTo,
    },
    /// A reloaded tenant config to put in force.
    TenantConfig(Arc<TenantConfig>),
    /// The bus log lost messages of some partitions: tell the connections
    /// that may have missed one (once each), and make resumes from before it
    /// report a gap.
    BusGap {
        /// The partitions.
        lost: Vec<u16>,
        /// How many partitions the bus has.
        partitions: u16,
    },
    /// A lifecycle event for this shard's listeners.
    Event(Event),
    /// The bus queued something in this shard's lane (see `shard::lane`)
    /// that somebody here may want: take the lane now.
    BusDoorbell,
    /// Announce, then close every connection over `grace`.
    Shutdown {
        /// Spread of the closes.
        grace: Duration,
        /// Frame to send to every stream first.
        announce: Option<Bytes>,
    },
    /// Look up or claim an idempotency key owned by this shard.
    IdempotencyClaim {
        /// The key.
        key: Box<str>,
        /// Where to send the [`Answer`] (values `[0, ticket]` claimed, `[1]` in progress, `[2]` done + body).
        reply: ReplyTo,
    },
    /// Store the answer for a claimed key, or release it (`None`).
    IdempotencyFinish {
        /// The key.
        key: Box<str>,
        /// The claim being finished.
        ticket: Ticket,
        /// The successful answer's body.
        answer: Option<Bytes>,
    },
    /// A question from another instance (through the bus), answered through `answer`.
    Question {
        /// What is asked.
        question: Question,
        /// Where the answer goes.
        answer: AnswerBack,
    },
    /// Close this shard's connection `id` with `ssekify.evicted`.
    Evict {
        /// The connection.
        id: ConnId,
    },
    /// An answer to an earlier request.
    Reply {
        /// The request it answers.
        to: ReplyTo,
        /// The answer.
        answer: Answer,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_place_reads_back_the_part_of_its_entry_and_nothing_else() {
        let entry = Bytes::from_static(b"header:packed fields:rest");
        let part = &entry[7..20];
        let at = PackedAt::within(&entry, part).expect("a part of the entry");
        assert_eq!(at.of(&entry), Some(part));
        assert_eq!(at.of(&entry[..19]), None, "an entry too short for it");
        let elsewhere = b"packed fields".to_vec();
        assert_eq!(PackedAt::within(&entry, &elsewhere), None);
        assert_eq!(PackedAt::within(&entry[..10], part), None, "runs past the entry");
        assert_eq!(PackedAt::within(&entry, &entry[3..3]), None, "empty");
    }

    /// Found by the `bus_entry` fuzzer: `01` read as `1` wrote back
    /// differently, so two spellings named one connection.
    #[test]
    fn a_connection_id_has_one_spelling() {
        let id = ConnId { instance: 0x0abc_def0, shard: 1, slot: 22, serial: 333 };
        assert_eq!(id.to_string(), "0abcdef0-1-22-333");
        assert_eq!(ConnId::parse("0abcdef0-1-22-333"), Some(id));
        for other in [
            "0ABCDEF0-1-22-333",
            "0abcdef0-01-22-333",
            "0abcdef0-+1-22-333",
            "abcdef0-1-22-333",
            "0abcdef0-1-22",
            "0abcdef0-1-22-333-4",
            "0abcdef0-70000-1-1",
            "",
        ] {
            assert_eq!(ConnId::parse(other), None, "{other:?}");
        }
    }

    #[test]
    fn room_change_counts_add_up_packed() {
        let a = RoomChangeCount { changed: 3, refused: 1, found: 5 };
        let b = RoomChangeCount { changed: 2, refused: 0, found: 2 };
        assert_eq!(RoomChangeCount::unpack(a.pack() + b.pack()), RoomChangeCount { changed: 5, refused: 1, found: 7 });
    }
}
