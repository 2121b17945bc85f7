//! Live room membership: `PUT`/`DELETE /v1/users/{user}/rooms/{room}` and
//! `/v1/connections/{connId}/rooms/{room}` (the seed's `handle.join(room)`
//! and `handle.leave(room)`), for connections open now; a later connection
//! joins what its own query asks.
//!
//! A change travels like a message to its target: through the bus log when
//! there is one (so every instance applies it in order with that user's
//! messages), else straight to the shard holding the connections. The answer
//! comes once this instance applied it.

use std::rc::Rc;

use serde_json::json;

use super::names::{check_name, invalid};
use super::publish::{scope, Scope};
use crate::bus::{self, Bus, Outgoing};
use crate::http::request::{Method, Request};
use crate::http::response::Response;
use crate::namespace::Namespace;
use crate::shard::envelope::Question;
use crate::shard::envelope::{ConnId, Delivery, RoomChange, RoomChangeCount, Target};
use crate::shard::presence::decode_answer;
use crate::shard::ShardCtx;

/// Whose connections a room change moves.
pub enum Who {
    /// Every connection of a user.
    User(String),
    /// One connection, by the id in events and presence listings.
    Connection(String),
}

/// `PUT` (join) or `DELETE` (leave) of `room` for `who`. The `Err` is a refusal, answered as it is.
pub async fn change(
    ctx: &Rc<ShardCtx>,
    bus: Option<&Bus>,
    ns: &Namespace,
    request: &Request,
    who: Who,
    room: &str,
) -> Result<Response, Response> {
    check_name("room", room)?;
    let join = request.method == Method::Put;
    let scope = scope(request)?;
    let cluster = scope == Scope::Cluster && bus.is_some();
    // Whether this instance can tell that the connection does not exist:
    // it is this instance's, or no other instance is asked.
    let (target, known_here) = match who {
        Who::User(user) => {
            check_name("user", &user)?;
            (Target::User(user.into()).scoped(ns), false)
        }
        Who::Connection(id) => {
            let id = ConnId::parse(&id).ok_or_else(|| invalid("not a connection id"))?;
            let here = id.instance == ctx.shared.instance || !cluster;
            if let Some(bus) = bus.filter(|_| !here) {
                if !open_elsewhere(ctx, bus, id, ns).await? {
                    return Err(no_such_connection());
                }
            }
            (Target::Connection(id), here)
        }
    };
    let change = RoomChange { room: ns.key(room).into(), join };
    let delivery = Delivery::room_change(target, change);
    let (count, instances) = match bus.filter(|_| cluster) {
        Some(bus) => {
            let published =
                bus::publish(ctx, bus, vec![Outgoing::room_change(delivery)]).await.map_err(|_| unavailable())?;
            (published.delivered[0], published.receivers)
        }
        None => (ctx.publish([delivery]).await[0], 1),
    };
    let count = RoomChangeCount::unpack(count);
    if known_here && count.found == 0 {
        return Err(no_such_connection());
    }
    if count.refused > 0 {
        let limit = ctx.shared.config.max_rooms_per_connection;
        return Err(Response::error(
            409,
            "too_many_rooms",
            format!("{} connection(s) already in {limit} rooms (--max-rooms-per-connection)", count.refused),
        ));
    }
    let key = if join { "joined" } else { "left" };
    Ok(Response::json(200, &json!({ key: count.changed, "instances": instances })))
}

fn no_such_connection() -> Response {
    Response::error(404, "not_found", "no such connection")
}

fn unavailable() -> Response {
    Response::error(503, "bus_unavailable", "the change was not acknowledged by Redis; retry it")
        .header("Retry-After", "1")
}

/// Whether connection `id` of another instance is open there, in `ns`: its
/// instance is asked (one round trip through Redis); an instance not alive
/// holds nothing.
async fn open_elsewhere(ctx: &Rc<ShardCtx>, bus: &Bus, id: ConnId, ns: &Namespace) -> Result<bool, Response> {
    let answers =
        bus::ask(ctx, bus, Question::Connection { id }, Some(id.instance)).await.map_err(|_| unavailable())?;
    let open = answers.answers.iter().filter_map(|(_, body)| decode_answer(body)).any(|(values, lines)| {
        values.first() == Some(&1) && lines.first().copied().unwrap_or_default() == ns.tenant_name().unwrap_or_default()
    });
    Ok(open)
}
