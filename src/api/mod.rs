//! Routes: which handler answers which method and path on which listener.
//!
//! Parts: [`subscribe`] (`GET /sse`), [`publish`] (single and batch),
//! [`admin`] (closes, stop-accepting, shutdown), [`observe`] (stats, metrics,
//! health), [`names`] (validation of user, room, tenant and event fields).
//!
//! Tenants: `GET /t/{tenant}/sse` and `/v1/t/{tenant}/…` are the routes of
//! `/sse` and `/v1/…` that address one namespace (publish, closes, replay
//! clears, stats); the `{tenant}` segment is checked here, after the api key,
//! and the handlers get the [`Namespace`](crate::namespace::Namespace).

pub mod admin;
mod batch_scan;
pub mod events;
pub mod names;
pub mod observe;
pub mod presence;
pub mod publish;
pub mod rooms;
pub mod subscribe;
pub mod user_limit;

use std::borrow::Cow;
use std::rc::Rc;

use std::sync::Arc;

use bytes::Bytes;
use smallvec::{smallvec, SmallVec};

use crate::bus::Bus;
use crate::config::Config;
use crate::http::query::{self, SEGMENTS_INLINE};
use crate::http::request::{BodyFraming, Known, Method, Request};
use crate::http::response::Response;
use crate::metrics::Rejection;
use crate::namespace::Namespace;
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

/// A known route: the methods it allows, whether it is an api route, and
/// the `{tenant}` segment of a tenant route (checked later, after the api key).
struct Route {
    allow: &'static [Method],
    api: bool,
    endpoint: Endpoint,
    tenant: Option<String>,
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
    UserPresence(String),
    RoomPresence(String),
    UserRoom(String, String),
    ConnectionRoom(String, String),
    CloseUser(String),
    CloseAll,
    ClearRecentUser(String),
    ClearRecentAll,
    Events,
    StopAccepting,
    Shutdown,
    Stats,
    Metrics,
}

impl Endpoint {
    /// Routes that exist under `/v1/t/{tenant}/…` too.
    fn per_tenant(&self) -> bool {
        matches!(
            self,
            Endpoint::PublishUser(_)
                | Endpoint::PublishRoom(_)
                | Endpoint::Broadcast
                | Endpoint::Batch
                | Endpoint::UserPresence(_)
                | Endpoint::RoomPresence(_)
                | Endpoint::UserRoom(..)
                | Endpoint::ConnectionRoom(..)
                | Endpoint::CloseUser(_)
                | Endpoint::CloseAll
                | Endpoint::ClearRecentUser(_)
                | Endpoint::ClearRecentAll
                | Endpoint::Stats
                | Endpoint::Events
        )
    }
}

fn find(segments: &[Cow<'_, str>]) -> Option<Route> {
    let seg: SmallVec<[&str; SEGMENTS_INLINE]> = segments.iter().map(|segment| &**segment).collect();
    match seg.as_slice() {
        ["t", tenant, "sse"] => Some(Route {
            allow: &[Method::Get],
            api: false,
            endpoint: Endpoint::Subscribe,
            tenant: Some((*tenant).into()),
        }),
        ["v1", "t", tenant, rest @ ..] => {
            let mut inner: SmallVec<[&str; SEGMENTS_INLINE]> = smallvec!["v1"];
            inner.extend_from_slice(rest);
            let route = find_default(&inner).filter(|route| route.endpoint.per_tenant())?;
            Some(Route { tenant: Some((*tenant).into()), ..route })
        }
        _ => find_default(&seg),
    }
}

/// The routes of the default namespace.
fn find_default(seg: &[&str]) -> Option<Route> {
    use Method::{Delete, Get, Post, Put};
    let (allow, api, endpoint): (&'static [Method], bool, Endpoint) = match seg {
        [""] => (&[Get], false, Endpoint::Demo),
        ["sse"] => (&[Get], false, Endpoint::Subscribe),
        ["healthz"] => (&[Get], false, Endpoint::Health),
        ["readyz"] => (&[Get], false, Endpoint::Ready),
        ["metrics"] => (&[Get], true, Endpoint::Metrics),
        ["v1", "users", user, "events"] => (&[Post], true, Endpoint::PublishUser((*user).into())),
        ["v1", "rooms", room, "events"] => (&[Post], true, Endpoint::PublishRoom((*room).into())),
        ["v1", "broadcast"] => (&[Post], true, Endpoint::Broadcast),
        ["v1", "publish"] => (&[Post], true, Endpoint::Batch),
        ["v1", "users", user, "presence"] => (&[Get], true, Endpoint::UserPresence((*user).into())),
        ["v1", "rooms", room, "presence"] => (&[Get], true, Endpoint::RoomPresence((*room).into())),
        ["v1", "users", user, "rooms", room] => {
            (&[Put, Delete], true, Endpoint::UserRoom((*user).into(), (*room).into()))
        }
        ["v1", "connections", id, "rooms", room] => {
            (&[Put, Delete], true, Endpoint::ConnectionRoom((*id).into(), (*room).into()))
        }
        ["v1", "users", user, "connections"] => (&[Delete], true, Endpoint::CloseUser((*user).into())),
        ["v1", "connections"] => (&[Delete], true, Endpoint::CloseAll),
        ["v1", "users", user, "recent"] => (&[Delete], true, Endpoint::ClearRecentUser((*user).into())),
        ["v1", "recent"] => (&[Delete], true, Endpoint::ClearRecentAll),
        ["v1", "admin", "stop-accepting"] => (&[Post], true, Endpoint::StopAccepting),
        ["v1", "admin", "shutdown"] => (&[Post], true, Endpoint::Shutdown),
        ["v1", "stats"] => (&[Get], true, Endpoint::Stats),
        ["v1", "events"] => (&[Get], true, Endpoint::Events),
        _ => return None,
    };
    Some(Route { allow, api, endpoint, tenant: None })
}

fn allow_header(allow: &[Method]) -> String {
    let mut names: Vec<&str> = allow
        .iter()
        .map(|m| match m {
            Method::Get => "GET, HEAD",
            Method::Post => "POST",
            Method::Delete => "DELETE",
            Method::Put => "PUT",
            _ => "",
        })
        .collect();
    names.push("OPTIONS");
    names.join(", ")
}

/// A request its route accepts, decided from the head alone: method,
/// listener, api key and tenant are checked before any body byte is read.
pub struct Admitted {
    endpoint: Endpoint,
    ns: Namespace,
}

impl Admitted {
    /// The largest body this route reads, or `None` for routes that read no
    /// body (a body sent to them is never read: the connection closes after
    /// the answer).
    pub fn body_limit(&self, config: &Config) -> Option<usize> {
        match self.endpoint {
            Endpoint::PublishUser(_) | Endpoint::PublishRoom(_) | Endpoint::Broadcast => Some(config.max_payload),
            Endpoint::Batch => Some(config.max_batch_body),
            _ => None,
        }
    }
}

/// Decides from the head whether a request read on a listener with `role`
/// may go on; refusals (and answers that need nothing more, like OPTIONS)
/// come back as the response to send, with the reason counted.
pub fn admit(ctx: &ShardCtx, role: Role, request: &Request) -> Result<Admitted, Response> {
    let config = &ctx.shared.config;
    let rejected = &ctx.stats().rejected;
    let Ok(segments) = query::segments(&request.path) else {
        rejected.count(Rejection::BadRequest);
        return Err(Response::error(400, "bad_request", "the path is not valid percent-encoded UTF-8").closing());
    };
    let Some(route) = find(&segments).filter(|r| config.demo || !matches!(r.endpoint, Endpoint::Demo)) else {
        rejected.count(Rejection::NotFound);
        return Err(not_found(role, &segments));
    };
    let is_health = matches!(route.endpoint, Endpoint::Health | Endpoint::Ready);
    let visible = is_health || if route.api { role.api() } else { role.public() };
    if !visible {
        rejected.count(Rejection::NotFound);
        return Err(not_found(role, &segments));
    }
    let allowed =
        route.allow.contains(&request.method) || (request.method == Method::Head && route.allow.contains(&Method::Get));
    if request.method == Method::Options {
        let mut response =
            Response::with_body(204, "text/plain", Bytes::new()).header("Allow", allow_header(route.allow));
        if let (Endpoint::Subscribe, Some(origin)) = (&route.endpoint, &config.cors_origin) {
            response = subscribe::cors_preflight(response, origin);
        }
        return Err(response);
    }
    if !allowed {
        rejected.count(Rejection::MethodNotAllowed);
        return Err(Response::error(405, "method_not_allowed", "this method is not allowed on this path")
            .header("Allow", allow_header(route.allow)));
    }
    if route.api && !is_health {
        check_api_key(ctx, request, route.tenant.as_deref())?;
    }
    if matches!(route.endpoint, Endpoint::Subscribe) && request.body != BodyFraming::Empty {
        rejected.count(Rejection::BadRequest);
        return Err(Response::error(400, "bad_request", "a subscribe request carries no body").closing());
    }
    let ns = names::namespace(route.tenant.as_deref(), config.tenants.as_deref())?;
    Ok(Admitted { endpoint: route.endpoint, ns })
}

/// Answers an admitted request; `body` is what [`Admitted::body_limit`] let
/// the connection read (empty for routes that read none).
pub async fn route(
    ctx: &Rc<ShardCtx>,
    services: &Services,
    request: &Request,
    admitted: Admitted,
    body: Bytes,
) -> Routed {
    let bus = services.bus.as_deref();
    let Admitted { endpoint, ns } = admitted;
    // Routes that wait on other shards or the bus have large futures (up to
    // ~7 KiB). Boxed, they cost one allocation per such request instead of
    // making every connection's task that large — subscribers' too, whose
    // tasks, thousands at once in a reconnect storm, would leave the heap
    // fragmented under the streams' long-lived state.
    let response = match endpoint {
        Endpoint::Demo => observe::demo_page(),
        Endpoint::Subscribe => return subscribe::handle(ctx, bus, ns, request).await,
        Endpoint::Health => observe::health(),
        Endpoint::Ready => observe::ready(ctx, bus),
        Endpoint::Metrics => Box::pin(observe::metrics(ctx, bus)).await,
        Endpoint::Stats => match ns.tenant_name() {
            None => Box::pin(observe::stats(ctx, bus)).await,
            Some(tenant) => Box::pin(observe::tenant_stats(ctx, tenant)).await,
        },
        // Not boxed here: `single` answers what completes on this shard at
        // once without a future, and boxes the rest itself.
        Endpoint::PublishUser(user) => publish::single(ctx, bus, &ns, request, &body, publish::To::User(user)).await,
        Endpoint::PublishRoom(room) => publish::single(ctx, bus, &ns, request, &body, publish::To::Room(room)).await,
        Endpoint::Broadcast => publish::single(ctx, bus, &ns, request, &body, publish::To::All).await,
        Endpoint::Batch => Box::pin(publish::batch(ctx, bus, &ns, request, &body)).await,
        Endpoint::UserPresence(user) => Box::pin(presence::presence(ctx, bus, &ns, request, presence::Of::User(user)))
            .await
            .unwrap_or_else(|refusal| refusal),
        Endpoint::RoomPresence(room) => Box::pin(presence::presence(ctx, bus, &ns, request, presence::Of::Room(room)))
            .await
            .unwrap_or_else(|refusal| refusal),
        Endpoint::UserRoom(user, room) => {
            Box::pin(rooms::change(ctx, bus, &ns, request, rooms::Who::User(user), &room))
                .await
                .unwrap_or_else(|refusal| refusal)
        }
        Endpoint::ConnectionRoom(id, room) => {
            Box::pin(rooms::change(ctx, bus, &ns, request, rooms::Who::Connection(id), &room))
                .await
                .unwrap_or_else(|refusal| refusal)
        }
        Endpoint::CloseUser(user) => Box::pin(admin::close_user(ctx, &ns, &user)).await,
        Endpoint::CloseAll => Box::pin(admin::close_all(ctx, ns)).await,
        Endpoint::ClearRecentUser(user) => Box::pin(admin::clear_recent(ctx, ns, Some(&user))).await,
        Endpoint::ClearRecentAll => Box::pin(admin::clear_recent(ctx, ns, None)).await,
        Endpoint::Events => return events::listen(ctx, ns, request),
        Endpoint::StopAccepting => admin::stop_accepting(ctx),
        Endpoint::Shutdown => Box::pin(admin::shutdown(ctx, request)).await,
    };
    Routed::Response(response)
}

/// 404, pointing to the api listener when an api path was asked on the public one.
fn not_found(role: Role, segments: &[Cow<'_, str>]) -> Response {
    let api_path = segments.first().is_some_and(|first| first == "v1" || first == "metrics");
    if role == Role::Public && api_path {
        Response::error(
            404,
            "not_found",
            "no such route on the public listener; publish and admin routes are served on --api-listen",
        )
    } else {
        Response::error(404, "not_found", "no such route")
    }
}

/// `Authorization: Bearer <key>`, compared in constant time, for an api
/// route of `tenant` (`None`: an instance-wide route). The instance's
/// `--api-key` opens every route. A tenant's `apiKey` (`--tenant-config`)
/// opens that tenant's `/v1/t/{tenant}/…` routes only: `403 forbidden`
/// elsewhere, whether or not the instance has a key. Without `--api-key`,
/// a route of a tenant with an `apiKey` needs that key, and every other
/// route is open as before (the api listener is then loopback only).
fn check_api_key(ctx: &ShardCtx, request: &Request, tenant: Option<&str>) -> Result<(), Response> {
    let config = &ctx.shared.config;
    let given = request.known(Known::Authorization).and_then(|v| v.strip_prefix(b"Bearer ")).unwrap_or_default();
    if config.api_key.as_deref().is_some_and(|key| constant_time_eq(given, key.as_bytes())) {
        return Ok(());
    }
    let tenants = ctx.tenant_config();
    if let Some((owner, _)) = tenants.key_owner(given).filter(|(_, key)| constant_time_eq(given, key.as_bytes())) {
        if tenant == Some(owner) {
            return Ok(());
        }
        ctx.count_tenant_rejection(Some(owner), Rejection::Forbidden);
        let message = format!("this is tenant {owner}'s key: it opens /v1/t/{owner}/… routes only");
        return Err(Response::error(403, "forbidden", message));
    }
    let needed = config.api_key.is_some() || tenant.is_some_and(|tenant| tenants.api_key(tenant).is_some());
    if !needed {
        return Ok(());
    }
    ctx.stats().rejected.count(Rejection::Unauthorized);
    Err(Response::error(401, "unauthorized", "missing or wrong api key (Authorization: Bearer <key>)")
        .header("WWW-Authenticate", "Bearer"))
}

/// Equality whose time depends only on the lengths, not on where bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Decoded query parameters, or the 400 answer for an undecodable query
/// (a malformed request: the connection closes after it).
pub fn query_params(request: &Request) -> Result<Vec<(String, String)>, Response> {
    query::pairs(&request.query)
        .map_err(|_| Response::error(400, "bad_request", "the query is not valid percent-encoded UTF-8").closing())
}

/// The last value of a query parameter.
pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str) -> Option<(bool, Option<String>)> {
        let segments = query::segments(path.as_bytes()).unwrap();
        find(&segments).map(|route| (route.api, route.tenant))
    }

    #[test]
    fn tenant_routes_mirror_the_default_ones() {
        assert_eq!(route("/sse"), Some((false, None)));
        assert_eq!(route("/t/acme/sse"), Some((false, Some("acme".into()))));
        assert_eq!(route("/t/a%20b/sse"), Some((false, Some("a b".into()))), "decoded");
        for path in [
            "/v1/t/acme/users/u/events",
            "/v1/t/acme/rooms/r/events",
            "/v1/t/acme/broadcast",
            "/v1/t/acme/publish",
            "/v1/t/acme/users/u/connections",
            "/v1/t/acme/connections",
            "/v1/t/acme/users/u/recent",
            "/v1/t/acme/recent",
            "/v1/t/acme/stats",
        ] {
            assert_eq!(route(path), Some((true, Some("acme".into()))), "{path}");
        }
        for path in [
            "/t/acme/healthz",
            "/t/acme",
            "/v1/t/acme",
            "/v1/t/acme/admin/shutdown",
            "/v1/t/acme/admin/stop-accepting",
            "/v1/t/acme/metrics",
            "/v1/t/acme/t/other/broadcast",
        ] {
            assert!(route(path).is_none(), "{path} is not a route");
        }
    }
}
