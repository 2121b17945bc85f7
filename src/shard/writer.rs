//! The shard's write loop: one task sends every listed connection's frames
//! in batches of non-blocking sends, and carries out closes.
//!
//! Deliveries only queue a frame and list the connection ([`ReadyList`]);
//! the loop runs once the publish or inbox batch that listed them gives way,
//! so a connection that got several frames meanwhile gets them in one send.
//! Under the io_uring driver a round's sends go to the kernel in one
//! submission ([`SendRing`]); under epoll, one `send`/`sendmsg` each. A
//! socket that takes less than offered is `blocked` until the shard's epoll
//! set says it has room ([`super::watcher`]); the heartbeat sweep closes one
//! that stays blocked for `--write-timeout`.

use std::future::poll_fn;
use std::io;
use std::ops::Range;
use std::os::fd::RawFd;
use std::rc::Rc;

use bytes::Bytes;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use slab::Slab;
use smallvec::SmallVec;

use super::conn::{slot_of, CloseReason, Closing, Conn, ReadyList};
use super::queue::{Pushed, QueueLimits};
use super::socket::{self, SendRing, Socket};
use super::{yielding, ShardCtx, ShardState};
use crate::metrics::ShardStats;

/// Frames per send: plenty to empty a typical queue at once while keeping
/// the iovec arrays small (IOV_MAX is 1024); a longer queue is listed again
/// and sends its next frames in the next round.
const MAX_FRAMES_PER_WRITE: usize = 64;

/// Connections per round, and so sends per ring submission.
const ROUND: u32 = 256;

/// How a connection's turn ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Everything was sent and a graceful close was asked for.
    Finished,
    /// A close at once was asked for.
    Aborted,
    /// The socket refused a send.
    WriteFailed,
}

/// The write loop's reused buffers. A round's sends go as one batch
/// through the ring in `ShardCtx::send_ring`; without one (the epoll
/// driver, or no ring to be had), a system call per send.
struct Round {
    /// The iovecs of every send of the round; reserved once, never grown
    /// during a round, so the ring's pointers into it stay valid.
    iovecs: Vec<libc::iovec>,
    /// The round's sends.
    sends: Vec<Pending>,
    /// Connections the round ended, unregistered once the state is released.
    ends: Vec<(usize, End)>,
}

/// One send of a round.
struct Pending {
    token: u64,
    /// The descriptor, for a send by system call.
    fd: RawFd,
    /// The socket as the ring names it.
    socket: Socket,
    /// Its frames' iovecs in the round's array.
    iovecs: Range<usize>,
    /// Their length in bytes.
    offered: usize,
}

/// Runs the write loop of one shard forever; `uring` when the shard runs
/// the io_uring driver (the sends then go through a ring too).
pub async fn run(ctx: Rc<ShardCtx>, uring: bool) {
    let ring = match uring.then(|| SendRing::new(ROUND)) {
        Some(Ok(ring)) => Some(ring),
        Some(Err(error)) => {
            crate::log!(Warn, "no io_uring ring for sends; sending by system calls", shard = ctx.id, error = error);
            None
        }
        None => None,
    };
    *ctx.send_ring.borrow_mut() = ring;
    let mut round = Round {
        iovecs: Vec::with_capacity(ROUND as usize * MAX_FRAMES_PER_WRITE),
        sends: Vec::with_capacity(ROUND as usize),
        ends: Vec::new(),
    };
    let mut due = Vec::new();
    loop {
        poll_fn(|cx| ctx.state.borrow_mut().ready.poll_take(cx, &mut due)).await;
        let mut budget = yielding::Budget::default();
        let mut next = 0;
        while next < due.len() {
            if budget.spent() {
                yielding::yield_now().await;
            }
            let until = due.len().min(next + ROUND as usize);
            round.run(&ctx, &due[next..until]);
            next = until;
        }
        due.clear();
    }
}

impl Round {
    /// One round: the listed connections' waiting frames sent, their
    /// outcomes settled, the connections that ended unregistered.
    fn run(&mut self, ctx: &ShardCtx, tokens: &[u64]) {
        let now_ms = ctx.now_ms();
        {
            let mut guard = ctx.state.borrow_mut();
            let ShardState { conns, ready, .. } = &mut *guard;
            let mut ring = ctx.send_ring.borrow_mut();
            self.prepare(conns, tokens, ring.as_ref());
            self.send(ctx, conns, ready, &mut ring, now_ms);
        }
        for (slot, end) in self.ends.drain(..) {
            let reason = {
                let state = ctx.state.borrow();
                let conn = &state.conns[slot];
                match end {
                    End::Finished => socket::shutdown_write(conn.socket),
                    End::WriteFailed => ShardStats::add(&ctx.stats().errors, 1),
                    End::Aborted => {}
                }
                match end {
                    End::WriteFailed => CloseReason::WriteError,
                    // Only a close the server asked for finishes or aborts a connection.
                    End::Finished | End::Aborted => conn.close_reason.unwrap_or(CloseReason::Shutdown),
                }
            };
            ctx.unregister(slot, reason);
        }
    }

    /// Describes each listed connection's waiting frames for one send, or
    /// notes that it ends. A socket first sent to through `ring` is put in
    /// its table.
    fn prepare(&mut self, conns: &mut Slab<Conn>, tokens: &[u64], ring: Option<&SendRing>) {
        self.iovecs.clear();
        self.sends.clear();
        for &token in tokens {
            let slot = slot_of(token);
            let Some(conn) = conns.get_mut(slot).filter(|conn| conn.token() == token) else { continue };
            conn.taken();
            if conn.closing == Some(Closing::Now) {
                self.ends.push((slot, End::Aborted));
            } else if conn.queue.has_waiting() && !conn.blocked {
                let first = self.iovecs.len();
                let offered = conn.queue.describe(&mut self.iovecs, MAX_FRAMES_PER_WRITE);
                let socket = ring.map_or(Socket::Fd(conn.socket), |ring| socket_in(ring, slot, conn));
                let iovecs = first..self.iovecs.len();
                self.sends.push(Pending { token, fd: conn.socket, socket, iovecs, offered });
            } else if finished(conn) {
                self.ends.push((slot, End::Finished));
            }
        }
    }

    /// Makes the round's sends and settles each connection's outcome.
    fn send(
        &mut self,
        ctx: &ShardCtx,
        conns: &mut Slab<Conn>,
        ready: &mut ReadyList,
        ring: &mut Option<SendRing>,
        now_ms: u64,
    ) {
        let Round { iovecs, sends, ends } = self;
        if sends.is_empty() {
            return;
        }
        let mut outcome = |send: &Pending, result: io::Result<usize>| {
            let slot = slot_of(send.token);
            if let Some(end) = settle(&mut conns[slot], result, send.offered, now_ms, ready) {
                ends.push((slot, end));
            }
        };
        let failed = match ring {
            None => {
                for send in sends.iter() {
                    outcome(send, socket::send(send.fd, &iovecs[send.iovecs.clone()]));
                }
                None
            }
            Some(ring) => {
                for (index, send) in sends.iter().enumerate() {
                    // SAFETY: `iovecs` is not touched until the batch is
                    // answered, and the frames it describes stay in their
                    // queues: nothing else runs meanwhile.
                    unsafe { ring.push(send.socket, &iovecs[send.iovecs.clone()], index as u64) };
                }
                ring.submit(|tag, result| outcome(&sends[tag as usize], result)).err()
            }
        };
        if let Some(error) = failed {
            crate::log!(Error, "the send ring failed; sending by system calls", shard = ctx.id, error = error);
            *ring = None;
            // What the ring did not answer is still queued: list it again
            // (a connection it did answer gets an empty turn).
            for send in sends.iter() {
                ready.add(&mut conns[slot_of(send.token)]);
            }
        }
    }
}

/// How `ring` names `conn`'s socket (at `slot`): by its place in the
/// ring's table, put there at its first send, or by descriptor when the
/// table has no room for it.
fn socket_in(ring: &SendRing, slot: usize, conn: &mut Conn) -> Socket {
    if !conn.attached {
        conn.attached = ring.attach(slot, conn.socket);
    }
    match conn.attached {
        true => Socket::Attached(slot as u32),
        false => Socket::Fd(conn.socket),
    }
}

/// Applies one send's outcome to its connection; says how the connection
/// ends, if it does. A connection with frames left (more than one send's
/// worth) is listed again for the next round.
fn settle(
    conn: &mut Conn,
    result: io::Result<usize>,
    offered: usize,
    now_ms: u64,
    ready: &mut ReadyList,
) -> Option<End> {
    if record(conn, result, offered, now_ms).is_err() {
        return Some(End::WriteFailed);
    }
    if conn.queue.has_waiting() {
        ready.add(conn);
        return None;
    }
    finished(conn).then_some(End::Finished)
}

/// Applies what a send of `offered` bytes took to `conn`'s queue and its
/// write clocks; a failure other than a full socket is given back.
fn record(conn: &mut Conn, result: io::Result<usize>, offered: usize, now_ms: u64) -> io::Result<()> {
    match result {
        Ok(sent) => {
            conn.queue.consume(sent);
            conn.last_write_ms = now_ms;
            conn.blocked = sent < offered;
            // Progress restarts the stall clock.
            conn.writing_since_ms = conn.blocked.then_some(now_ms);
        }
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
            conn.blocked = true;
            conn.writing_since_ms.get_or_insert(now_ms);
        }
        Err(error) => return Err(error),
    }
    Ok(())
}

/// Queues a message frame to `conn` under `limits`. When it would not fit,
/// the socket of a connection not known to be slow first takes what it
/// will, at once: the bounds are for what a slow client leaves waiting, not
/// for a burst that reached the connection within one turn (a batch, a bus
/// catch-up) before the write loop had its turn. A fast client's socket
/// takes such a burst whole, so it loses nothing to the drop policy. Costs
/// a system call only then; no send of `conn` is in flight meanwhile (a
/// round's sends are answered before the round returns). A failed send is
/// left for the connection's turn in the loop, which ends it.
#[inline]
pub fn offer(conn: &mut Conn, frame: Bytes, limits: &QueueLimits, now_ms: u64) -> Pushed {
    if !conn.blocked && !conn.queue.fits(frame.len(), limits) {
        make_room(conn, frame.len(), limits, now_ms);
    }
    conn.queue.push(frame, limits)
}

/// [`offer`]'s sends, until `len` more bytes fit or the socket is full.
#[cold]
#[inline(never)]
fn make_room(conn: &mut Conn, len: usize, limits: &QueueLimits, now_ms: u64) {
    let mut iovecs: SmallVec<[libc::iovec; MAX_FRAMES_PER_WRITE]> = SmallVec::new();
    while !conn.blocked && !conn.queue.fits(len, limits) {
        iovecs.clear();
        let offered = conn.queue.describe(&mut iovecs, MAX_FRAMES_PER_WRITE);
        if record(conn, socket::send(conn.socket, &iovecs), offered, now_ms).is_err() {
            break;
        }
    }
}

/// True when a graceful close was asked for and everything is sent.
fn finished(conn: &Conn) -> bool {
    conn.closing == Some(Closing::AfterFlush) && conn.queue.is_idle()
}

/// Gives a blocked connection whose socket has room again its turn.
pub fn unblock(conn: &mut Conn, ready: &mut ReadyList) {
    if conn.blocked {
        conn.blocked = false;
        ready.add(conn);
    }
}

/// Writes a refusal (a whole HTTP answer, see [`super::envelope::Refusal`])
/// and closes: a subscriber refused on its owner shard.
pub async fn answer_and_close(mut stream: TcpStream, answer: Bytes) {
    let _ = stream.write_all(answer).await;
    let _ = stream.shutdown().await;
}
