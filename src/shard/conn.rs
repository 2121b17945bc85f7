//! One subscriber connection's state on its shard: identity, queue, and the
//! handshake with its writer task.

use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use smallvec::SmallVec;

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

/// What the writer should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Frames are waiting.
    Write,
    /// Everything is written and a graceful close was asked for.
    Finish,
    /// Stop immediately.
    Abort,
}

/// A subscriber as the shard sees it.
#[derive(Debug)]
pub struct Conn {
    /// The tenant, `None` in the default namespace.
    pub tenant: Option<Rc<str>>,
    /// The user's internal key, when the connection is not anonymous.
    pub user: Option<Rc<str>>,
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
    /// Frames waiting or in flight.
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
    waker: Option<Waker>,
    parked: bool,
}

impl Conn {
    /// A connection registered at shard time `now_ms`.
    pub fn new(
        tenant: Option<Rc<str>>,
        user: Option<Rc<str>>,
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
            waker: None,
            parked: false,
        }
    }

    /// Wakes the writer if it waits for frames.
    pub fn notify(&mut self) {
        if self.parked {
            self.parked = false;
            if let Some(waker) = &self.waker {
                waker.wake_by_ref();
            }
        }
    }

    /// Queues a control frame outside the limits and wakes the writer.
    pub fn push_control(&mut self, frame: Bytes) {
        self.queue.push_unbounded(frame);
        self.notify();
    }

    /// Asks for a close for `reason`; `Now` also interrupts a write in progress.
    pub fn close(&mut self, how: Closing, reason: CloseReason) {
        if self.closing.is_none() || (how == Closing::Now && self.closing != Some(Closing::Now)) {
            self.close_reason = Some(reason);
        }
        if self.closing != Some(Closing::Now) {
            self.closing = Some(how);
        }
        // Wake the writer whether it waits for frames or is mid-write: a
        // close must interrupt both.
        self.parked = false;
        if let Some(waker) = &self.waker {
            waker.wake_by_ref();
        }
    }

    /// The writer's wait: ready when there is work, else parks with the waker.
    pub fn poll_work(&mut self, cx: &mut Context<'_>) -> Poll<Work> {
        let work = match self.closing {
            Some(Closing::Now) => Some(Work::Abort),
            _ if self.queue.has_waiting() => Some(Work::Write),
            Some(Closing::AfterFlush) if self.queue.is_idle() => Some(Work::Finish),
            _ => None,
        };
        match work {
            Some(work) => {
                self.parked = false;
                Poll::Ready(work)
            }
            None => {
                self.register(cx);
                self.parked = true;
                Poll::Pending
            }
        }
    }

    /// During a write: true when the write must be abandoned. Keeps the waker
    /// registered but not parked, so frame pushes do not wake a busy writer.
    pub fn poll_abort(&mut self, cx: &mut Context<'_>) -> bool {
        if self.closing == Some(Closing::Now) {
            return true;
        }
        self.register(cx);
        false
    }

    fn register(&mut self, cx: &mut Context<'_>) {
        match &self.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
    }
}
