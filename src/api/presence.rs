//! Presence: `GET /v1/users/{user}/presence` ("is Alice online?") and
//! `GET /v1/rooms/{room}/presence[?list=users]` (who is in the room).
//!
//! Counted on this instance: a user's owner shard answers for the user, every
//! shard for a room. With a bus, cluster-wide counts are not available yet:
//! the routes then need `?scope=local`, and say so, rather than answer with
//! one instance's share as if it were the cluster's.

use std::rc::Rc;

use serde_json::json;

use super::names::{check_name, invalid};
use super::publish::{scope, Scope};
use super::{param, query_params};
use crate::bus::Bus;
use crate::http::request::Request;
use crate::http::response::Response;
use crate::namespace::Namespace;
use crate::shard::ShardCtx;

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
    if bus.is_some() && scope(request)? == Scope::Cluster {
        return Err(Response::error(
            501,
            "not_implemented",
            "cluster-wide presence is not available yet: ask each instance with ?scope=local",
        ));
    }
    match of {
        Of::User(user) => {
            check_name("user", &user)?;
            let connections = ctx.user_presence(&ns.key(&user)).await;
            Ok(Response::json(
                200,
                &json!({ "user": user, "online": connections > 0, "connections": connections, "instances": 1 }),
            ))
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
            let presence = ctx.room_presence(&ns.key(&room), list_max).await;
            let mut body = json!({ "room": room, "connections": presence.connections, "users": presence.users });
            if list {
                body["userIds"] = json!(presence.user_ids);
                body["truncated"] = json!(presence.users > presence.user_ids.len() as u64);
            }
            Ok(Response::json(200, &body))
        }
    }
}
