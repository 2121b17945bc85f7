//! `--max-connections-per-user` over every instance, when a bus is
//! configured: before a subscriber is admitted, the instances alive are asked
//! for the user's connections (one round trip through Redis).
//!
//! `reject` refuses the newcomer (`429`) when the user already holds the
//! limit anywhere; `evict-oldest` admits it and has the instances holding the
//! oldest connections close them with `ssekify.evicted` (the new tab wins).
//! The owner shard still applies the limit to this instance's connections
//! when it registers the newcomer, so without Redis the limit holds per
//! instance. Nothing is stored in Redis: an instance that dies stops
//! answering, so its connections stop counting as soon as its heartbeats
//! stop (`--bus-timeout` and two heartbeats), and there is no stale count to heal.
//! Two connections of one user opened on different instances within the
//! same round trip may both be admitted (each asked before the other
//! registered); the next connection of that user corrects it under `evict-oldest`.

use std::rc::Rc;

use crate::bus::{self, Bus};
use crate::config::UserLimitPolicy;
use crate::http::response::Response;
use crate::namespace::plain_name;
use crate::shard::envelope::{ConnId, Question};
use crate::shard::presence::{decode_answer, oldest_first, parse_listed_connection};
use crate::shard::ShardCtx;

/// Admits or refuses a new connection of `user` (an internal key) under the
/// cluster-wide limit; evicts the oldest connections elsewhere when the
/// policy says so. Without a limit or an answer from Redis, it admits and
/// leaves the limit to the owner shard.
pub async fn check(ctx: &Rc<ShardCtx>, bus: &Bus, user: &str) -> Result<(), Response> {
    let config = &ctx.shared.config;
    let Some(limit) = config.max_connections_per_user else { return Ok(()) };
    let limit = limit.get();
    let question = Question::User { user: user.into(), list: limit as u32 };
    let Ok(answers) = bus::ask(ctx, bus, question, None).await else { return Ok(()) };
    let mut total = 0;
    let mut open: Vec<(u64, ConnId)> = Vec::new();
    for (_, body) in &answers.answers {
        let Some((values, lines)) = decode_answer(body) else { continue };
        total += values.first().copied().unwrap_or(0);
        open.extend(lines.iter().filter_map(|line| parse_listed_connection(line)));
    }
    if total < limit as u64 {
        return Ok(());
    }
    if config.user_limit_policy == UserLimitPolicy::Reject {
        crate::log!(
            Debug,
            "subscriber refused",
            user = plain_name(user),
            reason = "too_many_connections",
            held = total
        );
        return Err(Response::error(
            429,
            "too_many_connections",
            format!("user already holds {total} connections across instances (--max-connections-per-user {limit})"),
        ));
    }
    oldest_first(&mut open);
    let excess = (total + 1 - limit as u64) as usize;
    for (_, id) in open.into_iter().take(excess) {
        bus::evict(bus, id);
    }
    Ok(())
}
