//! Heartbeats as one paced sweep per shard, not one timer per connection.
//!
//! Every tick visits the next slice of the connection slab, sized so the whole
//! slab is visited once every quarter of `--keep-alive`; a connection idle for
//! `--keep-alive` therefore gets its `: ping` within 1.25 × keep-alive. The same
//! visit closes a stream whose write has made no progress for `--write-timeout`.

use std::rc::Rc;
use std::time::Duration;

use super::conn::{CloseReason, Closing};
use super::{ShardCtx, ShardState};
use crate::metrics::ShardStats;
use crate::sse::frame::PING;

/// Shortest tick: keeps the sweep cheap for tiny keep-alives in tests.
const MIN_TICK: Duration = Duration::from_millis(10);
/// Longest tick: also the resolution of the shard clock.
const MAX_TICK: Duration = Duration::from_millis(250);

/// Runs the sweep of one shard forever.
pub async fn run(ctx: Rc<ShardCtx>) {
    let keep_alive = ctx.shared.config.keep_alive;
    let keep_alive_ms = keep_alive.as_millis() as u64;
    let write_timeout_ms = ctx.shared.config.write_timeout.as_millis() as u64;
    let period = keep_alive / 4;
    let tick = (period / 8).clamp(MIN_TICK, MAX_TICK);
    let mut cursor = 0usize;
    loop {
        monoio::time::sleep(tick).await;
        let now = ctx.tick_clock();
        let mut state = ctx.state.borrow_mut();
        state.replay.expire(now);
        state.idempotency.expire(now);
        ctx.report_replay(&state.replay);
        let slots = state.conns.capacity();
        if slots == 0 {
            continue;
        }
        let visits = (slots as u128 * tick.as_nanos()).div_ceil(period.as_nanos().max(1)) as usize;
        let mut pinged = 0;
        let mut stalled = 0;
        for _ in 0..visits.min(slots) {
            if cursor >= slots {
                cursor = 0;
            }
            let ShardState { conns, ready, .. } = &mut *state;
            if let Some(conn) = conns.get_mut(cursor) {
                let stuck = conn.writing_since_ms.is_some_and(|since| now.saturating_sub(since) >= write_timeout_ms);
                if stuck && conn.closing != Some(Closing::Now) {
                    conn.close(Closing::Now, CloseReason::WriteTimeout, ready);
                    stalled += 1;
                } else if conn.closing.is_none()
                    && conn.queue.is_idle()
                    && now.saturating_sub(conn.last_write_ms) >= keep_alive_ms
                {
                    conn.last_write_ms = now;
                    conn.push_control(PING, ready);
                    pinged += 1;
                }
            }
            cursor += 1;
        }
        ShardStats::add(&ctx.stats().pings, pinged);
        ShardStats::add(&ctx.stats().write_timeouts, stalled);
    }
}
