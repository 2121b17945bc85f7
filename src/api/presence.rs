//! Presence: `GET /v1/users/{user}/presence[?list=connections]` ("is Alice
//! online, and which tabs?") and `GET /v1/rooms/{room}/presence[?list=users]`
//! (who is in the room).
//!
//! On one instance a user's owner shard answers for the user, every shard
//! for a room. With a bus the question goes to every instance alive (this one
//! included) and the answer adds theirs up, within one round trip through
//! Redis; `?scope=local` counts this instance only. An instance that died
//! stops answering and its heartbeats stop, so it never counts, and nothing
//! is stored in Redis that could go stale.

use std::collections::BTreeSet;
use std::rc::Rc;

use serde_json::json;

use super::names::{check_name, invalid};
use super::publish::{scope, Scope};
use super::{param, query_params};
use crate::bus::{self, Bus};
use crate::http::request::Request;
use crate::http::response::Response;
use crate::namespace::Namespace;
use crate::shard::envelope::{ConnId, Question};
use crate::shard::presence::{decode_answer, oldest_first, parse_listed_connection, RoomPresence};
use crate::shard::ShardCtx;

/// User names each instance sends for a room, so that `users` counts a user
/// connected to several instances once. A room with more users than this on
/// one instance is counted by adding the instances' counts instead (a user
/// on two instances then counts twice).
const UNION_NAMES: usize = 10_000;

/// Whose presence is asked.
pub enum Of {
    /// A user's connections.
    User(String),
    /// A room's connections and users.
    Room(String),
}

/// Answers a presence request. The `Err` is a refusal, answered as it is.
pub async fn presence(
    ctx: &Rc<ShardCtx>,
    bus: Option<&Bus>,
    ns: &Namespace,
    request: &Request,
    of: Of,
) -> Result<Response, Response> {
    let scope = scope(request)?;
    let cluster = bus.filter(|_| scope == Scope::Cluster);
    match of {
        Of::User(user) => {
            check_name("user", &user)?;
            let list = match param(&query_params(request)?, "list") {
                None => false,
                Some("connections") => true,
                Some(other) => return Err(invalid(format!("list must be `connections`, not `{other}`"))),
            };
            let list_max = if list { ctx.shared.config.presence_list_max } else { 0 };
            let key = ns.key(&user);
            let (connections, instances, mut listed) = match cluster {
                Some(bus) => user_over_instances(ctx, bus, key.into(), list_max).await?,
                None => {
                    let (connections, listed) = ctx.user_presence(&key, list_max).await;
                    (connections, 1, listed)
                }
            };
            let mut body = json!({
                "user": user, "online": connections > 0, "connections": connections, "instances": instances
            });
            if list {
                oldest_first(&mut listed);
                listed.truncate(list_max);
                body["connIds"] = json!(listed.iter().map(|(_, id)| id.to_string()).collect::<Vec<_>>());
                body["truncated"] = json!(connections > listed.len() as u64);
            }
            Ok(Response::json(200, &body))
        }
        Of::Room(room) => {
            check_name("room", &room)?;
            let params = query_params(request)?;
            let list = match param(&params, "list") {
                None => false,
                Some("users") => true,
                Some(other) => return Err(invalid(format!("list must be `users`, not `{other}`"))),
            };
            let list_max = if list { ctx.shared.config.presence_list_max } else { 0 };
            let key = ns.key(&room);
            let presence = match cluster {
                Some(bus) => room_over_instances(ctx, bus, key.into(), list_max).await?,
                None => ctx.room_presence(&key, list_max).await,
            };
            let mut body = json!({ "room": room, "connections": presence.connections, "users": presence.users });
            if list {
                body["userIds"] = json!(presence.user_ids);
                body["truncated"] = json!(presence.users > presence.user_ids.len() as u64);
            }
            Ok(Response::json(200, &body))
        }
    }
}

fn unavailable() -> Response {
    Response::error(503, "bus_unavailable", "other instances cannot be asked without Redis; retry, or ask ?scope=local")
        .header("Retry-After", "1")
}

/// A user's connections over every instance, the instances that answered,
/// and up to `list` of each instance's oldest connections.
async fn user_over_instances(
    ctx: &Rc<ShardCtx>,
    bus: &Bus,
    user: Box<str>,
    list: usize,
) -> Result<(u64, usize, Vec<(u64, ConnId)>), Response> {
    let question = Question::User { user, list: list as u32 };
    let answers = bus::ask(ctx, bus, question, None).await.map_err(|_| unavailable())?;
    let (mut connections, mut instances, mut listed) = (0, 0, Vec::new());
    for (_, body) in &answers.answers {
        let Some((values, lines)) = decode_answer(body) else { continue };
        let Some(count) = values.first() else { continue };
        connections += count;
        instances += 1;
        listed.extend(lines.into_iter().filter_map(parse_listed_connection));
    }
    Ok((connections, instances, listed))
}

/// A room's presence over every instance: connections add up; users are
/// the union of the instances' names while every instance could send all of
/// its own, else the sum of their counts.
async fn room_over_instances(
    ctx: &Rc<ShardCtx>,
    bus: &Bus,
    room: Box<str>,
    list_max: usize,
) -> Result<RoomPresence, Response> {
    let list = UNION_NAMES.max(list_max) as u32;
    let answers = bus::ask(ctx, bus, Question::Room { room, list }, None).await.map_err(|_| unavailable())?;
    let mut presence = RoomPresence::default();
    let mut names = BTreeSet::new();
    let mut all_named = true;
    let mut users_added = 0;
    for (_, body) in &answers.answers {
        let Some((values, lines)) = decode_answer(body) else { continue };
        let [connections, users] = values[..] else { continue };
        presence.connections += connections;
        users_added += users;
        all_named &= lines.len() as u64 == users;
        names.extend(lines.into_iter().filter(|name| !name.is_empty()));
    }
    presence.users = if all_named { names.len() as u64 } else { users_added };
    presence.user_ids = names.into_iter().take(list_max).map(str::to_owned).collect();
    Ok(presence)
}
