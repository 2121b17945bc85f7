//! The task that owns a subscriber's socket: drains its queue with vectored
//! writes and notices a client that goes away.
//!
//! One task per connection does both jobs: it waits on a pending read (which
//! completes only when the client closes or misbehaves) and on its queue, and
//! while writing it still watches both, so a hang-up or an overflow close
//! interrupts even a write that is stuck on a full socket.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::Poll;

use bytes::{Buf, Bytes};
use monoio::buf::IoVecBuf;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::tcp::TcpOwnedReadHalf;
use monoio::net::TcpStream;

use super::conn::{CloseReason, Work};
use super::ShardCtx;
use crate::metrics::ShardStats;

/// Frames per `writev`: plenty to empty a typical queue in one syscall while
/// keeping the iovec array small (IOV_MAX is 1024).
pub const MAX_FRAMES_PER_WRITE: usize = 64;

/// Bytes read at a time from a subscriber, which should send nothing at all.
const HANGUP_READ: usize = 16;

/// Frames being written and their iovecs; monoio owns it during the write,
/// so the iovecs point into `Bytes` that cannot move or be freed meanwhile.
#[derive(Default)]
pub struct FrameBatch {
    frames: Vec<Bytes>,
    iovecs: Vec<libc::iovec>,
}

impl FrameBatch {
    /// Drops the frames, keeping the capacity.
    pub fn clear(&mut self) {
        self.frames.clear();
        self.iovecs.clear();
    }

    fn prepare(&mut self) {
        self.iovecs.clear();
        self.iovecs.extend(
            self.frames.iter().map(|f| libc::iovec { iov_base: f.as_ptr() as *mut libc::c_void, iov_len: f.len() }),
        );
    }

    /// Accounts `written` bytes: drops whole frames, advances a partial one.
    /// Returns the number of whole frames written.
    fn consume(&mut self, mut written: usize) -> usize {
        let mut done = 0;
        for frame in &mut self.frames {
            if written >= frame.len() {
                written -= frame.len();
                done += 1;
            } else {
                frame.advance(written);
                break;
            }
        }
        self.frames.drain(..done);
        done
    }
}

// SAFETY: the iovecs describe `frames`, which the batch owns and keeps alive
// and unmoved (heap data of `Bytes`) for as long as the runtime holds it.
unsafe impl IoVecBuf for FrameBatch {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iovecs.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iovecs.len()
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Finished,
    Aborted,
    HungUp,
    WriteFailed,
}

/// Serves the connection registered under `key` until it ends, then unregisters it.
pub async fn serve(ctx: Rc<ShardCtx>, key: usize, stream: TcpStream) {
    let (reader, mut writer) = stream.into_split();
    let mut hangup = pin!(watch_hangup(reader));
    let end = 'serve: loop {
        let work = poll_fn(|cx| {
            if hangup.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            ctx.state.borrow_mut().conns[key].poll_work(cx).map(Some)
        })
        .await;
        match work {
            None => break End::HungUp,
            Some(Work::Abort) => break End::Aborted,
            Some(Work::Finish) => break End::Finished,
            Some(Work::Write) => {}
        }
        let mut out = take_outgoing(&ctx, key);
        loop {
            let (result, returned) = match out {
                Outgoing::One(frame) => match drive(writer.write(frame), hangup.as_mut(), &ctx, key).await {
                    Ok((result, frame)) => (result, Outgoing::One(frame)),
                    Err(end) => break 'serve end,
                },
                Outgoing::Many(mut batch) => {
                    batch.prepare();
                    match drive(writer.writev(batch), hangup.as_mut(), &ctx, key).await {
                        Ok((result, batch)) => (result, Outgoing::Many(batch)),
                        Err(end) => break 'serve end,
                    }
                }
            };
            out = returned;
            let written = match result {
                Ok(0) | Err(_) => break 'serve End::WriteFailed,
                Ok(written) => written,
            };
            let frames = out.consume(written);
            let mut state = ctx.state.borrow_mut();
            let conn = &mut state.conns[key];
            conn.queue.written(frames, written);
            conn.last_write_ms = ctx.now_ms();
            // Progress restarts the stall clock; nothing left ends the write.
            conn.writing_since_ms = (!out.is_empty()).then(|| ctx.now_ms());
            if out.is_empty() {
                break;
            }
        }
        if let Outgoing::Many(batch) = out {
            ctx.return_batch(batch);
        }
    };
    if end == End::Finished {
        let _ = writer.shutdown().await;
    }
    if end == End::WriteFailed {
        ShardStats::add(&ctx.stats().errors, 1);
    }
    let reason = match end {
        End::HungUp => CloseReason::ClientClosed,
        End::WriteFailed => CloseReason::WriteError,
        // Only a close the server asked for finishes or aborts a writer.
        End::Finished | End::Aborted => ctx.state.borrow().conns[key].close_reason.unwrap_or(CloseReason::Shutdown),
    };
    ctx.unregister(key, reason);
}

/// What one write sends: a lone frame goes out as it is (no batch buffer, no
/// iovec: the common case of one message per connection); several go out in
/// one `writev` from a pooled batch.
enum Outgoing {
    One(Bytes),
    Many(FrameBatch),
}

impl Outgoing {
    fn is_empty(&self) -> bool {
        match self {
            Outgoing::One(frame) => frame.is_empty(),
            Outgoing::Many(batch) => batch.frames.is_empty(),
        }
    }

    /// Accounts `written` bytes; returns the number of whole frames written.
    fn consume(&mut self, written: usize) -> usize {
        match self {
            Outgoing::One(frame) => {
                frame.advance(written);
                usize::from(frame.is_empty())
            }
            Outgoing::Many(batch) => batch.consume(written),
        }
    }
}

/// Moves the waiting frames (up to [`MAX_FRAMES_PER_WRITE`]) in flight.
fn take_outgoing(ctx: &ShardCtx, key: usize) -> Outgoing {
    let several = ctx.state.borrow().conns[key].queue.waiting() > 1;
    let mut out = if several { Outgoing::Many(ctx.take_batch()) } else { Outgoing::One(Bytes::new()) };
    let mut state = ctx.state.borrow_mut();
    let conn = &mut state.conns[key];
    match &mut out {
        Outgoing::One(frame) => *frame = conn.queue.take_one().unwrap_or_default(),
        Outgoing::Many(batch) => conn.queue.take_batch(&mut batch.frames, MAX_FRAMES_PER_WRITE),
    }
    conn.writing_since_ms = Some(ctx.now_ms());
    out
}

/// Drives a write to completion unless the client hangs up or an overflow
/// close interrupts it (which a write stuck on a full socket would never see).
async fn drive<T>(
    write: impl Future<Output = T>,
    mut hangup: Pin<&mut impl Future<Output = ()>>,
    ctx: &ShardCtx,
    key: usize,
) -> Result<T, End> {
    let mut write = pin!(write);
    poll_fn(|cx| {
        if let Poll::Ready(result) = write.as_mut().poll(cx) {
            return Poll::Ready(Ok(result));
        }
        if hangup.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(End::HungUp));
        }
        if ctx.state.borrow_mut().conns[key].poll_abort(cx) {
            return Poll::Ready(Err(End::Aborted));
        }
        Poll::Pending
    })
    .await
}

/// Completes when the client closes its side or the socket fails. A
/// subscriber has nothing to say after its request, so anything it sends is
/// read and ignored.
async fn watch_hangup(mut reader: TcpOwnedReadHalf) {
    let mut buf = Vec::with_capacity(HANGUP_READ);
    loop {
        let (result, returned) = reader.read(buf).await;
        buf = returned;
        buf.clear();
        match result {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Writes a refusal (a whole HTTP answer, see [`super::envelope::Refusal`])
/// and closes: a subscriber refused on its owner shard.
pub async fn answer_and_close(mut stream: TcpStream, answer: Bytes) {
    let _ = stream.write_all(answer).await;
    let _ = stream.shutdown().await;
}
