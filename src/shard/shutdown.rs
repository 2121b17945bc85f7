//! The shard's part of a shutdown: announce, then close every stream, spread
//! evenly over the grace period, wait for api requests in flight to be
//! answered (with `Connection: close`), then report drained to the main thread.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::conn::{CloseReason, Closing};
use super::{LifecycleEvent, ShardCtx, ShardState};
use crate::metrics::ShardStats;

impl ShardCtx {
    /// Starts the shutdown of this shard: the announcement to every stream,
    /// then closes spread evenly over `grace`, then a report to the main thread.
    pub fn shutdown(self: &Rc<Self>, grace: Duration, announce: Option<Bytes>) {
        if let Some(frame) = announce {
            let mut guard = self.state.borrow_mut();
            let ShardState { conns, ready, .. } = &mut *guard;
            let count = conns.len() as u64;
            for (_, conn) in conns.iter_mut() {
                conn.push_control(frame.clone(), ready);
            }
            ShardStats::add(&self.stats().sent, count);
        }
        monoio::spawn(close_spread(self.clone(), grace));
    }
}

/// Closes this shard's connections one by one, evenly over `grace`, so that
/// clients do not all reconnect at the same instant; then reports drained.
async fn close_spread(ctx: Rc<ShardCtx>, grace: Duration) {
    let keys: Vec<usize> = ctx.state.borrow().conns.iter().map(|(key, _)| key).collect();
    let start = Instant::now();
    let step = grace.checked_div(keys.len().max(1) as u32).unwrap_or_default();
    for (index, key) in keys.iter().enumerate() {
        let due = start + step * index as u32;
        let now = Instant::now();
        if due > now + Duration::from_millis(5) {
            monoio::time::sleep(due - now).await;
        }
        let mut guard = ctx.state.borrow_mut();
        let ShardState { conns, ready, .. } = &mut *guard;
        if let Some(conn) = conns.get_mut(*key) {
            conn.close(Closing::AfterFlush, CloseReason::Shutdown, ready);
        }
    }
    // Anything that subscribed meanwhile (moved in flight) closes too.
    ctx.close_local(&super::envelope::Selection::Everything, CloseReason::Shutdown);
    let deadline = start + grace + Duration::from_secs(2);
    let busy = || !ctx.state.borrow().conns.is_empty() || ctx.requests_in_flight.get() > 0;
    while busy() && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = ctx.shared.lifecycle.send(LifecycleEvent::Drained);
}
