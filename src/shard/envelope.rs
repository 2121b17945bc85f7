//! What travels between shards over their inboxes.

use std::os::fd::OwnedFd;
use std::time::Duration;

use bytes::Bytes;

use super::idempotency::Ticket;
use crate::namespace::Namespace;

/// Who a message is for. User and room names are internal keys
/// ([`Namespace::key`]), in the process and on the bus alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every connection of one user (on the user's owner shard).
    User(Box<str>),
    /// Every member of a room (on every shard).
    Room(Box<str>),
    /// Every connection of the default namespace (on every shard).
    All,
    /// Every connection of one tenant (on every shard).
    Tenant(Box<str>),
}

impl Target {
    /// The target of a plain (client-facing) `self` in `namespace`.
    pub fn scoped(self, namespace: &Namespace) -> Target {
        let Some(tenant) = namespace.tenant_name() else { return self };
        match self {
            Target::User(user) => Target::User(namespace.key(&user).into()),
            Target::Room(room) => Target::Room(namespace.key(&room).into()),
            Target::All | Target::Tenant(_) => Target::Tenant(tenant.into()),
        }
    }

    /// The bus log partition (of `partitions`) that carries this target's
    /// messages, so that each user, room or broadcast has one order on every
    /// instance. FNV-1a over the kind and key: the same on every instance,
    /// build and CPU (a randomised or CPU-dependent hash would split a
    /// target's messages between partitions).
    pub fn partition(&self, partitions: u16) -> u16 {
        let (kind, key): (u8, &str) = match self {
            Target::All => (0, ""),
            Target::User(key) => (1, key),
            Target::Room(key) => (2, key),
            Target::Tenant(key) => (3, key),
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
    /// The encoded SSE frame.
    pub frame: Bytes,
    /// Skip it when its id is already in the target's replay ring: set for
    /// frames from other instances, so a message that reaches an instance
    /// twice by id is delivered once. An empty frame delivers nothing (a
    /// message the bus log dropped as a duplicate).
    pub skip_known_id: bool,
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

/// A cross-shard message.
#[derive(Debug)]
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
    /// Reply with the hashes of rooms with members here (for distinct counts).
    RoomHashes {
        /// Where to send them.
        reply: ReplyTo,
    },
    /// Reply with a tenant's counts here: `[connections, users, room hashes…]`.
    TenantCounts {
        /// The tenant.
        tenant: Box<str>,
        /// Where to send them.
        reply: ReplyTo,
    },
    /// The bus log lost messages of some partitions: tell the connections
    /// that may have missed one (once each), and make resumes from before it
    /// report a gap.
    BusGap {
        /// The partitions.
        lost: Vec<u16>,
        /// How many partitions the bus has.
        partitions: u16,
    },
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
    /// An answer to an earlier request.
    Reply {
        /// The request it answers.
        to: ReplyTo,
        /// The answer.
        answer: Answer,
    },
}
