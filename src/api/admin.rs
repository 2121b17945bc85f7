//! Admin routes: close connections, clear replay rings, stop accepting, shut down.
//! Closes and clears address one namespace (the default one, or a tenant's
//! under `/v1/t/{tenant}/…`); stop-accepting and shutdown the whole instance.

use std::rc::Rc;
use std::time::Duration;

use serde_json::json;

use super::names::{check_field, check_name, invalid};
use super::{param, query_params};
use crate::http::request::Request;
use crate::http::response::Response;
use crate::namespace::Namespace;
use crate::shard::envelope::Selection;
use crate::shard::{Phase, ShardCtx};

/// Event name of the shutdown announcement (the seed's default).
pub const SHUTDOWN_EVENT: &str = "server:shutdown";

/// `DELETE /v1/users/{u}/connections` (seed `close(userId)`).
pub async fn close_user(ctx: &Rc<ShardCtx>, ns: &Namespace, user: &str) -> Response {
    if let Err(refusal) = check_name("user id", user) {
        return refusal;
    }
    let closed = ctx.close(Selection::User(ns.key(user).into())).await;
    Response::json(200, &json!({ "closed": closed }))
}

/// `DELETE /v1/connections` (seed `close()`): every connection of the namespace.
pub async fn close_all(ctx: &Rc<ShardCtx>, ns: Namespace) -> Response {
    let closed = ctx.close(Selection::Namespace(ns)).await;
    Response::json(200, &json!({ "closed": closed }))
}

/// `DELETE /v1/users/{u}/recent` and `DELETE /v1/recent` (seed `clearRecent`),
/// within the namespace.
pub async fn clear_recent(ctx: &Rc<ShardCtx>, ns: Namespace, user: Option<&str>) -> Response {
    let which = match user {
        Some(user) => match check_name("user id", user) {
            Ok(()) => Selection::User(ns.key(user).into()),
            Err(refusal) => return refusal,
        },
        None => Selection::Namespace(ns),
    };
    ctx.clear_recent(which).await;
    Response::json(200, &json!({ "cleared": true }))
}

/// `POST /v1/admin/stop-accepting` (seed `stopAccepting()`): new subscribers
/// get 503 and `/readyz` fails, so a load balancer drains this instance.
pub fn stop_accepting(ctx: &Rc<ShardCtx>) -> Response {
    if ctx.shared.advance_phase(Phase::Draining) {
        crate::log!(Info, "stopped accepting subscribers");
    }
    Response::json(200, &json!({ "accepting": false }))
}

/// `POST /v1/admin/shutdown?graceMs=&announce=&event=` (seed `shutdown()`).
pub async fn shutdown(ctx: &Rc<ShardCtx>, request: &Request) -> Response {
    let params = match query_params(request) {
        Ok(params) => params,
        Err(refusal) => return refusal,
    };
    let grace = match param(&params, "graceMs") {
        None => ctx.shared.config.shutdown_grace,
        Some(text) => match text.parse::<u64>() {
            Ok(ms) if ms <= 3_600_000 => Duration::from_millis(ms),
            _ => return invalid("graceMs must be a number of milliseconds up to 3600000"),
        },
    };
    let announce = match param(&params, "announce") {
        None | Some("true") | Some("1") => true,
        Some("false") | Some("0") => false,
        Some(_) => return invalid("announce must be true or false"),
    };
    let event = param(&params, "event").unwrap_or(SHUTDOWN_EVENT);
    if let Err(refusal) = check_field("event", event) {
        return refusal;
    }
    if let Some(order) = ctx.shared.begin_shutdown(grace, announce.then_some(event)) {
        crate::log!(Info, "shutting down", reason = "admin route", grace_ms = grace.as_millis());
        for shard in 0..ctx.shared.shard_count() {
            ctx.send(shard, order.envelope()).await;
        }
    }
    Response::json(202, &json!({ "shuttingDown": true, "graceMs": grace.as_millis() as u64 }))
}
