//! What travels between shards over their inboxes.

use std::os::fd::OwnedFd;
use std::time::Duration;

use bytes::Bytes;

use crate::namespace::Namespace;

/// Who a message is for. Inside the process user and room names are internal
/// keys ([`Namespace::key`]); on the bus they are plain names, the tenant
/// being the channel's ([`Target::scoped`], [`Target::unscoped`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every connection of one user (on the user's owner shard).
    User(Box<str>),
    /// Every member of a room (on every shard).
    Room(Box<str>),
    /// Every connection of the default namespace (on every shard).
    All,
    /// Every connection of one tenant (on every shard); never on the bus,
    /// where a tenant's channel carries `All` instead.
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

    /// The plain (client-facing) form of a target of `namespace`, as another
    /// instance receives it on that namespace's channel.
    pub fn unscoped(&self, namespace: &Namespace) -> Target {
        match self {
            Target::User(user) => Target::User(namespace.name_of(user).into()),
            Target::Room(room) => Target::Room(namespace.name_of(room).into()),
            Target::All | Target::Tenant(_) => Target::All,
        }
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
    /// frames from other instances, so a publisher's retry (same id) after a
    /// lost acknowledgement from Redis is not delivered twice.
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
        /// Where to send the [`Answer`] (values `[0]` claimed, `[1]` in progress, `[2]` done + body).
        reply: ReplyTo,
    },
    /// Store the answer for a claimed key, or release it (`None`).
    IdempotencyFinish {
        /// The key.
        key: Box<str>,
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
