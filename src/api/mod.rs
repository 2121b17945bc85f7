//! Routes: which handler answers which method and path on which listener.
//!
//! Parts: [`subscribe`] (`GET /sse`), [`publish`] (single and batch),
//! [`admin`] (closes, stop-accepting, shutdown), [`observe`] (stats, metrics,
//! health), [`names`] (validation of user, room and event fields).

pub mod admin;
pub mod names;
pub mod observe;
pub mod publish;
pub mod subscribe;

use std::rc::Rc;

use std::sync::Arc;

use bytes::Bytes;

use crate::bus::Bus;
use crate::config::Config;
use crate::http::query;
use crate::http::request::{Method, Request};
use crate::http::response::Response;
use crate::shard::envelope::Subscription;
use crate::shard::ShardCtx;

/// Which route sets a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `--listen`: subscribe and health.
    Public,
    /// `--api-listen`: publish, admin, observability and health.
    Api,
    /// Both flags name the same address.
    Both,
}

impl Role {
    fn public(self) -> bool {
        matches!(self, Role::Public | Role::Both)
    }

    fn api(self) -> bool {
        matches!(self, Role::Api | Role::Both)
    }
}

/// What routes need beyond the shard: the bus, when `--redis` is set.
#[derive(Default)]
pub struct Services {
    /// The cross-instance bus.
    pub bus: Option<Arc<Bus>>,
}

/// What a request turned into.
pub enum Routed {
    /// An answer; the connection may go on.
    Response(Response),
    /// A subscriber: the socket becomes a stream.
    Subscribe(Subscription),
}

/// The largest body a request may carry (checked before it is read).
pub fn body_limit(request: &Request, config: &Config) -> usize {
    if &request.path[..] == b"/v1/publish" {
        config.max_batch_body
    } else {
        config.max_payload
    }
}

/// A known route: the methods it allows and whether it is an api route.
struct Route {
    allow: &'static [Method],
    api: bool,
    endpoint: Endpoint,
}

enum Endpoint {
    Demo,
    Subscribe,
    Health,
    Ready,
    PublishUser(String),
    PublishRoom(String),
    Broadcast,
    Batch,
    CloseUser(String),
    CloseAll,
    ClearRecentUser(String),
    ClearRecentAll,
    StopAccepting,
    Shutdown,
    Stats,
    Metrics,
}

fn find(segments: &[String]) -> Option<Route> {
    use Method::{Delete, Get, Post};
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (allow, api, endpoint): (&'static [Method], bool, Endpoint) = match seg.as_slice() {
        [""] => (&[Get], false, Endpoint::Demo),
        ["sse"] => (&[Get], false, Endpoint::Subscribe),
        ["healthz"] => (&[Get], false, Endpoint::Health),
        ["readyz"] => (&[Get], false, Endpoint::Ready),
        ["metrics"] => (&[Get], true, Endpoint::Metrics),
        ["v1", "users", user, "events"] => (&[Post], true, Endpoint::PublishUser((*user).into())),
        ["v1", "rooms", room, "events"] => (&[Post], true, Endpoint::PublishRoom((*room).into())),
        ["v1", "broadcast"] => (&[Post], true, Endpoint::Broadcast),
        ["v1", "publish"] => (&[Post], true, Endpoint::Batch),
        ["v1", "users", user, "connections"] => (&[Delete], true, Endpoint::CloseUser((*user).into())),
        ["v1", "connections"] => (&[Delete], true, Endpoint::CloseAll),
        ["v1", "users", user, "recent"] => (&[Delete], true, Endpoint::ClearRecentUser((*user).into())),
        ["v1", "recent"] => (&[Delete], true, Endpoint::ClearRecentAll),
        ["v1", "admin", "stop-accepting"] => (&[Post], true, Endpoint::StopAccepting),
        ["v1", "admin", "shutdown"] => (&[Post], true, Endpoint::Shutdown),
        ["v1", "stats"] => (&[Get], true, Endpoint::Stats),
        _ => return None,
    };
    Some(Route { allow, api, endpoint })
}

fn allow_header(allow: &[Method]) -> String {
    let mut names: Vec<&str> = allow
        .iter()
        .map(|m| match m {
            Method::Get => "GET, HEAD",
            Method::Post => "POST",
            Method::Delete => "DELETE",
            _ => "",
        })
        .collect();
    names.push("OPTIONS");
    names.join(", ")
}

/// Answers one request read on a listener with `role`.
pub async fn route(ctx: &Rc<ShardCtx>, services: &Services, role: Role, request: &Request, body: Bytes) -> Routed {
    let bus = services.bus.as_deref();
    let config = &ctx.shared.config;
    let Ok(segments) = query::segments(&request.path) else {
        return Routed::Response(Response::error(400, "bad_request", "the path is not valid percent-encoded UTF-8"));
    };
    let Some(route) = find(&segments).filter(|r| config.demo || !matches!(r.endpoint, Endpoint::Demo)) else {
        return Routed::Response(not_found());
    };
    let is_health = matches!(route.endpoint, Endpoint::Health | Endpoint::Ready);
    let visible = is_health || if route.api { role.api() } else { role.public() };
    if !visible {
        return Routed::Response(not_found());
    }
    let allowed =
        route.allow.contains(&request.method) || (request.method == Method::Head && route.allow.contains(&Method::Get));
    if request.method == Method::Options {
        let mut response =
            Response::with_body(204, "text/plain", Bytes::new()).header("Allow", allow_header(route.allow));
        if let (Endpoint::Subscribe, Some(origin)) = (&route.endpoint, &config.cors_origin) {
            response = subscribe::cors_preflight(response, origin);
        }
        return Routed::Response(response);
    }
    if !allowed {
        return Routed::Response(
            Response::error(405, "method_not_allowed", "this method is not allowed on this path")
                .header("Allow", allow_header(route.allow)),
        );
    }
    if route.api && !is_health {
        if let Some(refusal) = check_api_key(request, config) {
            return Routed::Response(refusal);
        }
    }
    let response = match route.endpoint {
        Endpoint::Demo => observe::demo_page(),
        Endpoint::Subscribe => return subscribe::handle(ctx, request).await,
        Endpoint::Health => observe::health(),
        Endpoint::Ready => observe::ready(ctx, bus),
        Endpoint::Metrics => observe::metrics(ctx, bus).await,
        Endpoint::Stats => observe::stats(ctx, bus).await,
        Endpoint::PublishUser(user) => publish::single(ctx, bus, request, &body, publish::To::User(user)).await,
        Endpoint::PublishRoom(room) => publish::single(ctx, bus, request, &body, publish::To::Room(room)).await,
        Endpoint::Broadcast => publish::single(ctx, bus, request, &body, publish::To::All).await,
        Endpoint::Batch => publish::batch(ctx, bus, request, &body).await,
        Endpoint::CloseUser(user) => admin::close_user(ctx, &user).await,
        Endpoint::CloseAll => admin::close_all(ctx).await,
        Endpoint::ClearRecentUser(user) => admin::clear_recent(ctx, Some(&user)).await,
        Endpoint::ClearRecentAll => admin::clear_recent(ctx, None).await,
        Endpoint::StopAccepting => admin::stop_accepting(ctx),
        Endpoint::Shutdown => admin::shutdown(ctx, request).await,
    };
    Routed::Response(response)
}

fn not_found() -> Response {
    Response::error(404, "not_found", "no such route")
}

/// `Authorization: Bearer <key>`, compared in constant time.
fn check_api_key(request: &Request, config: &Config) -> Option<Response> {
    let key = config.api_key.as_deref()?;
    let given = request.header("authorization").and_then(|v| v.strip_prefix(b"Bearer ")).unwrap_or_default();
    if constant_time_eq(given, key.as_bytes()) {
        None
    } else {
        Some(
            Response::error(401, "unauthorized", "missing or wrong api key (Authorization: Bearer <key>)")
                .header("WWW-Authenticate", "Bearer"),
        )
    }
}

/// Equality whose time depends only on the lengths, not on where bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Decoded query parameters, or the 400 answer for an undecodable query.
pub fn query_params(request: &Request) -> Result<Vec<(String, String)>, Response> {
    query::pairs(&request.query)
        .map_err(|_| Response::error(400, "bad_request", "the query is not valid percent-encoded UTF-8"))
}

/// The last value of a query parameter.
pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}
