//! What travels between shards over their inboxes.

use std::os::fd::OwnedFd;
use std::time::Duration;

use bytes::Bytes;

/// Who a message is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every connection of one user (on the user's owner shard).
    User(Box<str>),
    /// Every member of a room (on every shard).
    Room(Box<str>),
    /// Every connection (on every shard).
    All,
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
    /// The user, or `None` for an anonymous connection.
    pub user: Option<String>,
    /// Rooms to join.
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
    /// Close a user's connections (or all) after flushing; replies with the count.
    Close {
        /// `None` closes every connection.
        user: Option<Box<str>>,
        /// Where to send the count.
        reply: ReplyTo,
    },
    /// Drop a user's replay ring (or all rings); replies when done.
    ClearRecent {
        /// `None` clears every ring.
        user: Option<Box<str>>,
        /// Where to confirm.
        reply: ReplyTo,
    },
    /// Reply with the hashes of rooms with members here (for distinct counts).
    RoomHashes {
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
