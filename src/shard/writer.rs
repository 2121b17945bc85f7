//! The shard's write loop: one task sends every listed connection's frames
//! with one non-blocking `send`/`sendmsg` each, and carries out closes.
//!
//! Deliveries only queue a frame and list the connection ([`ReadyList`]);
//! the loop runs once the publish or inbox batch that listed them gives way,
//! so a connection that got several frames meanwhile gets them in one system
//! call. A socket that takes less than offered is `blocked` until the shard's
//! epoll set says it has room ([`super::watcher`]); the heartbeat sweep closes
//! one that stays blocked for `--write-timeout`.

use std::future::poll_fn;
use std::rc::Rc;

use bytes::Bytes;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::conn::{slot_of, CloseReason, Closing, Conn, ReadyList};
use super::{socket, yielding, ShardCtx};
use crate::metrics::ShardStats;

/// Frames per send: plenty to empty a typical queue in one system call
/// while keeping the iovec array small (IOV_MAX is 1024).
pub const MAX_FRAMES_PER_WRITE: usize = 64;

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

/// Runs the write loop of one shard forever.
pub async fn run(ctx: Rc<ShardCtx>) {
    let mut due = Vec::new();
    let mut iovecs = Vec::with_capacity(MAX_FRAMES_PER_WRITE);
    loop {
        poll_fn(|cx| ctx.state.borrow_mut().ready.poll_take(cx, &mut due)).await;
        let mut budget = yielding::Budget::default();
        let mut next = 0;
        while next < due.len() {
            if budget.spent() {
                yielding::yield_now().await;
            }
            turn(&ctx, due[next], &mut iovecs);
            next += 1;
        }
        due.clear();
    }
}

/// One connection's turn: send what waits, then close it if that was asked.
fn turn(ctx: &ShardCtx, token: u64, iovecs: &mut Vec<libc::iovec>) {
    let slot = slot_of(token);
    let mut state = ctx.state.borrow_mut();
    let Some(conn) = state.conns.get_mut(slot).filter(|conn| conn.token() == token) else { return };
    conn.taken();
    let Some(end) = send_waiting(conn, iovecs, ctx.now_ms()) else { return };
    let reason = match end {
        End::WriteFailed => CloseReason::WriteError,
        // Only a close the server asked for finishes or aborts a connection.
        End::Finished | End::Aborted => conn.close_reason.unwrap_or(CloseReason::Shutdown),
    };
    match end {
        End::Finished => socket::shutdown_write(conn.socket),
        End::WriteFailed => ShardStats::add(&ctx.stats().errors, 1),
        End::Aborted => {}
    }
    drop(state);
    ctx.unregister(slot, reason);
}

/// Sends the waiting frames until the queue is empty or the socket full;
/// says how the connection ends, if it does.
fn send_waiting(conn: &mut Conn, iovecs: &mut Vec<libc::iovec>, now_ms: u64) -> Option<End> {
    if conn.closing == Some(Closing::Now) {
        return Some(End::Aborted);
    }
    let mut progressed = false;
    while !conn.blocked && conn.queue.has_waiting() {
        iovecs.clear();
        let offered = conn.queue.describe(iovecs, MAX_FRAMES_PER_WRITE);
        match socket::send(conn.socket, iovecs) {
            Ok(sent) => {
                conn.queue.consume(sent);
                conn.last_write_ms = now_ms;
                progressed = true;
                conn.blocked = sent < offered;
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => conn.blocked = true,
            Err(_) => return Some(End::WriteFailed),
        }
    }
    if !conn.blocked {
        conn.writing_since_ms = None;
    } else if progressed || conn.writing_since_ms.is_none() {
        // Progress restarts the stall clock.
        conn.writing_since_ms = Some(now_ms);
    }
    (conn.closing == Some(Closing::AfterFlush) && conn.queue.is_idle()).then_some(End::Finished)
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
