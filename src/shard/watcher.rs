//! The task that hears from the shard's epoll set of subscriber sockets: a
//! client that went away is unregistered at once (its `disconnect` event,
//! presence and limits follow), a blocked socket with room again gets its
//! turn in the write loop.
//!
//! A subscriber sends nothing after its request, so its socket is not
//! watched for input: bytes it sends anyway sit in the kernel's buffer
//! (bounded by its window) and cost the shard nothing.

use std::rc::Rc;

use monoio::net::unix::UnixDatagram;

use super::conn::{slot_of, CloseReason};
use super::socket::Readiness;
use super::{writer, ShardCtx, ShardState};

/// Runs the watch of one shard forever; `waiter` is its epoll set's
/// ([`super::socket::Watchlist::waiter`]).
pub async fn run(ctx: Rc<ShardCtx>, waiter: UnixDatagram) {
    let mut news: Vec<Readiness> = Vec::new();
    loop {
        if let Err(error) = waiter.readable(false).await {
            crate::log!(Error, "cannot wait on the subscriber sockets' epoll set", shard = ctx.id, error = error);
            return;
        }
        let mut more = true;
        while more {
            news.clear();
            more = ctx.sockets.take_ready(&mut news);
            for readiness in &news {
                heard(&ctx, readiness);
            }
        }
    }
}

/// Acts on what the epoll set said about one socket.
fn heard(ctx: &ShardCtx, readiness: &Readiness) {
    let slot = slot_of(readiness.token);
    let mut guard = ctx.state.borrow_mut();
    let ShardState { conns, ready, .. } = &mut *guard;
    let Some(conn) = conns.get_mut(slot).filter(|conn| conn.token() == readiness.token) else { return };
    if readiness.hung_up {
        drop(guard);
        ctx.unregister(slot, CloseReason::ClientClosed);
    } else if readiness.writable {
        writer::unblock(conn, ready);
    }
}
