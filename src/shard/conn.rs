//! One subscriber connection's state on its shard: identity, socket and
//! queue, and the list through which it asks the shard's write loop for a turn.

use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use smallvec::SmallVec;

use super::key::Key;
use super::queue::FrameQueue;
use crate::events::EventTypes;

/// Why and how a connection is being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// Write what is queued, then close (admin close, shutdown).
    AfterFlush,
    /// Close at once, abandoning queued frames (backpressure overflow).
    Now,
}

/// Why a subscriber's stream ended, for its disconnect log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed its side (or reset the connection).
    ClientClosed,
    /// A write to the socket failed.
    WriteError,
    /// The queue overflowed under `--drop-policy disconnect` or its bounds.
    Backpressure,
    /// The socket took no bytes for `--write-timeout`.
    WriteTimeout,
    /// An admin route closed it (`DELETE …/connections`).
    AdminClose,
    /// The instance shut down.
    Shutdown,
    /// A newer connection of its user took its place (`--user-limit-policy evict-oldest`).
    Evicted,
}

impl CloseReason {
    /// The name in log lines.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::WriteError => "write_error",
            CloseReason::Backpressure => "backpressure",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::AdminClose => "admin_close",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Evicted => "evicted",
        }
    }

    /// The `reason` of a `disconnect` lifecycle event: the contract's coarser
    /// words (a failed write means the client went away).
    pub fn event_name(self) -> &'static str {
        match self {
            CloseReason::ClientClosed | CloseReason::WriteError => "client",
            CloseReason::Backpressure => "backpressure",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::AdminClose => "server",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Evicted => "evicted",
        }
    }
}

/// A subscriber as the shard sees it.
#[derive(Debug)]
pub struct Conn {
    /// The tenant, `None` in the default namespace.
    pub tenant: Option<Rc<str>>,
    /// The user's internal key, when the connection is not anonymous.
    pub user: Option<Key>,
    /// Internal keys of the rooms joined.
    pub rooms: SmallVec<[Rc<str>; 2]>,
    /// Its shard's registration count when it registered (see `ConnId`).
    pub serial: u64,
    /// Shard clock (ms) when it registered (`durationMs` of its disconnect event).
    pub opened_ms: u64,
    /// Message frames queued to it, replays included (`sent` of its disconnect event).
    pub sent: u64,
    /// Set for a lifecycle events listener: the kinds it hears.
    pub listener: Option<EventTypes>,
    /// Frames not yet sent (the first one possibly in part).
    pub queue: FrameQueue,
    /// Shard clock (ms) of the last completed write, for heartbeats.
    pub last_write_ms: u64,
    /// Set once a close was asked for.
    pub closing: Option<Closing>,
    /// Why the server closes it, once `closing` is set (the reason of the
    /// close that set or hardened `closing`).
    pub close_reason: Option<CloseReason>,
    /// Shard clock (ms) when the write in progress started, if one is.
    pub writing_since_ms: Option<u64>,
    /// A bus gap notice was queued and no message since: a second loss
    /// found before the next message is the same news, not told twice.
    pub told_bus_gap: bool,
    /// The socket, owned: closed when the connection is unregistered (a
    /// raw descriptor, so that a connection without one can be built for
    /// benchmarks of the shard's bookkeeping).
    pub socket: RawFd,
    /// The socket took less than it was offered: frames wait for the
    /// shard's epoll set to say it has room.
    pub blocked: bool,
    /// The write loop's ring holds the socket at [`Conn::slot`] of its
    /// table (`socket::SendRing::attach`): taken out before it is closed.
    pub attached: bool,
    slot: u32,
    scheduled: bool,
}

impl Conn {
    /// A connection on `socket`, registered in `slot` at shard time `now_ms`.
    pub fn new(
        socket: RawFd,
        slot: usize,
        tenant: Option<Rc<str>>,
        user: Option<Key>,
        rooms: SmallVec<[Rc<str>; 2]>,
        serial: u64,
        now_ms: u64,
    ) -> Self {
        Conn {
            tenant,
            user,
            rooms,
            serial,
            opened_ms: now_ms,
            sent: 0,
            listener: None,
            queue: FrameQueue::default(),
            last_write_ms: now_ms,
            closing: None,
            close_reason: None,
            writing_since_ms: None,
            told_bus_gap: false,
            socket,
            blocked: false,
            attached: false,
            slot: slot as u32,
            scheduled: false,
        }
    }

    /// The token of this connection in the shard's epoll set and write list:
    /// its slot, and its serial for telling a reused slot's new tenant apart.
    pub fn token(&self) -> u64 {
        token(self.slot as usize, self.serial)
    }

    /// Queues a control frame outside the limits and asks for a write.
    pub fn push_control(&mut self, frame: Bytes, ready: &mut ReadyList) {
        self.queue.push_unbounded(frame);
        ready.add(self);
    }

    /// Asks for a close for `reason`; `Now` also abandons a blocked write.
    pub fn close(&mut self, how: Closing, reason: CloseReason, ready: &mut ReadyList) {
        if self.closing.is_none() || (how == Closing::Now && self.closing != Some(Closing::Now)) {
            self.close_reason = Some(reason);
        }
        if self.closing != Some(Closing::Now) {
            self.closing = Some(how);
        }
        ready.add(self);
    }

    /// Called by the write loop as it takes its turn: the connection may be listed again.
    pub fn taken(&mut self) {
        self.scheduled = false;
    }
}

/// The token of slot `slot` holding the connection with `serial`.
pub fn token(slot: usize, serial: u64) -> u64 {
    (serial << 32) | (slot as u64 & 0xffff_ffff)
}

/// The slot a token names.
pub fn slot_of(token: u64) -> usize {
    (token & 0xffff_ffff) as usize
}

/// The connections with something for the shard's write loop to do (frames
/// to send, a close to carry out), each listed once however many frames it
/// got meanwhile; a blocked one waits for room instead, unless it is to be
/// closed at once. The loop's waker is woken when the list stops being empty.
#[derive(Default)]
pub struct ReadyList {
    tokens: Vec<u64>,
    waker: Option<Waker>,
}

impl ReadyList {
    /// Lists `conn` for the write loop, unless it is listed or waits for room.
    pub fn add(&mut self, conn: &mut Conn) {
        if conn.scheduled || (conn.blocked && conn.closing != Some(Closing::Now)) {
            return;
        }
        conn.scheduled = true;
        self.tokens.push(conn.token());
        if self.tokens.len() == 1 {
            if let Some(waker) = self.waker.take() {
                waker.wake();
            }
        }
    }

    /// The write loop's wait: moves the listed tokens into `due` when there
    /// are any, else keeps the waker.
    pub fn poll_take(&mut self, cx: &mut Context<'_>, due: &mut Vec<u64>) -> Poll<()> {
        if self.take(due) {
            return Poll::Ready(());
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Moves the listed tokens into the empty `due` (which lends the list
    /// its capacity back); false when none are listed.
    pub fn take(&mut self, due: &mut Vec<u64>) -> bool {
        if self.tokens.is_empty() {
            return false;
        }
        std::mem::swap(&mut self.tokens, due);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record is most of what an idle subscriber costs (its queue's ring
    /// and the user index are the rest), so growing it is a visible choice.
    /// (232 since the user's name is held in it, not in a shared allocation
    /// of its own: 634 → 637 B an idle subscriber, `loadtest/scenarios/idle.sh`.)
    #[test]
    fn a_connection_record_stays_small() {
        let size = std::mem::size_of::<Conn>();
        assert!(size <= 232, "a connection record is {size} B");
    }

    /// A reused slot's new connection has another token: the write loop and
    /// the epoll set tell it from the one that left.
    #[test]
    fn tokens_name_the_slot_and_tell_its_tenants_apart() {
        let first = Conn::new(-1, 7, None, None, SmallVec::new(), 1, 0);
        let second = Conn::new(-1, 7, None, None, SmallVec::new(), 2, 0);
        assert_eq!(slot_of(first.token()), 7);
        assert_eq!(slot_of(second.token()), 7);
        assert_ne!(first.token(), second.token());
    }

    /// However many frames a connection gets before its turn, it is listed
    /// once; a blocked one is not listed until a close at once.
    #[test]
    fn the_ready_list_holds_each_connection_once() {
        let mut ready = ReadyList::default();
        let mut conn = Conn::new(-1, 3, None, None, SmallVec::new(), 1, 0);
        conn.push_control(Bytes::from_static(b"a"), &mut ready);
        conn.push_control(Bytes::from_static(b"b"), &mut ready);
        let mut due = Vec::new();
        assert!(ready.take(&mut due));
        assert_eq!(due, vec![conn.token()]);
        conn.taken();
        conn.blocked = true;
        conn.push_control(Bytes::from_static(b"c"), &mut ready);
        assert!(!ready.take(&mut Vec::new()), "a blocked connection waits for room");
        conn.close(Closing::Now, CloseReason::Backpressure, &mut ready);
        let mut due = Vec::new();
        assert!(ready.take(&mut due), "a close at once does not wait for room");
        assert_eq!(due, vec![conn.token()]);
    }
}
