//! `GET /sse` and `GET /t/{tenant}/sse`: validate the request and turn it
//! into a [`Subscription`] in the route's namespace.
//!
//! The user and the rooms it may join come from the `--auth` mode
//! ([`crate::auth`]): `?userId=` in development, else the credential only;
//! a credential opens only the namespace it is for (`403` otherwise).

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use bytes::{BufMut, Bytes, BytesMut};

use super::names::check_name;
use super::{param, query_params, Routed};
use crate::auth::webhook::Forwarded;
use crate::auth::{Authenticator, Credentials, Denied, Kind};
use crate::bus::Bus;
use crate::http::request::{Known, Method, Request};
use crate::http::response::Response;
use crate::metrics::{Rejection, ShardStats};
use crate::namespace::Namespace;
use crate::shard::envelope::{Refusal, Subscription};
use crate::shard::{Phase, ShardCtx};
use crate::sse::frame;

/// Validates a subscribe request; reserves its connection slot on success.
pub async fn handle(ctx: &Rc<ShardCtx>, bus: Option<&Bus>, namespace: Namespace, request: &Request) -> Routed {
    match subscription(ctx, bus, namespace, request).await {
        Ok(subscription) => Routed::Subscribe(subscription),
        Err(response) => {
            if response.status >= 400 {
                ShardStats::add(&ctx.stats().errors, 1);
            }
            Routed::Response(response)
        }
    }
}

async fn subscription(
    ctx: &Rc<ShardCtx>,
    bus: Option<&Bus>,
    namespace: Namespace,
    request: &Request,
) -> Result<Subscription, Response> {
    let shared = &ctx.shared;
    let config = &shared.config;
    if shared.phase() != Phase::Running {
        return Err(Response::error(503, "not_accepting", "the server is not accepting new subscribers")
            .header("Retry-After", "1"));
    }
    if !accepts_event_stream(request.known(Known::Accept)) {
        return Err(Response::error(406, "not_acceptable", "this route only produces text/event-stream"));
    }
    let params = query_params(request)?;
    let credentials = Credentials {
        authorization: request.known(Known::Authorization),
        token: param(&params, "token"),
        user_id: param(&params, "userId"),
        user: param(&params, "user"),
        rooms: param(&params, "rooms"),
        exp: param(&params, "exp"),
        sig: param(&params, "sig"),
        tenant: namespace.tenant_name(),
        forwarded: Forwarded {
            query: &request.query,
            cookie: request.known(Known::Cookie),
            authorization: request.known(Known::Authorization),
            forwarded_for: request.known(Known::XForwardedFor),
            tenant: namespace.tenant_name(),
        },
    };
    let grant =
        shared.auth.authenticate(&credentials, SystemTime::now()).await.map_err(|denied| refusal(ctx, &denied))?;
    grant.allow_tenant(namespace.tenant_name()).map_err(|denied| refusal(ctx, &denied))?;
    if let Some(user) = &grant.user {
        check_name("userId", user).map_err(|invalid| match shared.auth.kind() {
            // The name came from the app, whose answer is at fault.
            Some(Kind::AppAnswer) => refusal(
                ctx,
                &Denied::AppAnswerInvalid(
                    "its user is not a valid user id (1-128 bytes without control characters, ',' or '/')".into(),
                ),
            ),
            // The name came from a verified credential, not from the query.
            Some(kind) => refusal(ctx, &Denied::InvalidUser(kind)),
            None => invalid,
        })?;
    }
    let mut rooms: Vec<String> = Vec::new();
    if let Some(list) = param(&params, "rooms").filter(|r| !r.is_empty()) {
        for room in list.split(',') {
            check_name("room", room)?;
            if !rooms.iter().any(|r| r == room) {
                rooms.push(room.to_owned());
            }
        }
    }
    if rooms.len() > config.max_rooms_per_connection {
        let limit = config.max_rooms_per_connection;
        return Err(super::names::invalid(format!(
            "at most {limit} rooms per connection (--max-rooms-per-connection)"
        )));
    }
    grant.allow(&rooms).map_err(|denied| refusal(ctx, &denied))?;
    if request.method == Method::Head {
        return Err(Response::with_body(200, "text/event-stream; charset=utf-8", Bytes::new())
            .header("Cache-Control", "no-cache, no-transform")
            .closing());
    }
    if let (Some(user), Some(bus)) = (&grant.user, bus.filter(|_| config.max_connections_per_user.is_some())) {
        // Boxed: the wait on the bus would otherwise enlarge every
        // connection's task (see `api::route`).
        Box::pin(super::user_limit::check(ctx, bus, &namespace.key(user))).await?;
    }
    let open = shared.connections.fetch_add(1, Ordering::AcqRel);
    shared.connections_high.fetch_max(open + 1, Ordering::Relaxed);
    if let Some(limit) = config.max_connections {
        if open >= limit.get() {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            ctx.count_tenant_rejection(namespace.tenant_name(), Rejection::AtCapacity);
            return Err(Response::error(
                503,
                "at_capacity",
                format!("the server holds {limit} subscribers (--max-connections)"),
            )
            .header("Retry-After", "1"));
        }
    }
    if let (Some(quotas), Some(tenant)) = (&shared.tenant_quotas, namespace.tenant_name()) {
        if let Err(limit) = quotas.admit_connection(tenant, ctx.tenant_config().limits(tenant).max_connections) {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            ctx.count_tenant_rejection(Some(tenant), Rejection::TenantQuota);
            return Err(Response::error(
                429,
                "tenant_quota",
                format!("tenant {tenant} holds its {limit} subscribers (maxConnections, over every instance)"),
            ));
        }
    }
    // The header wins over the query parameter (API.md "Subscribe").
    let last_event_id = request
        .known_str(Known::LastEventId)
        .map(str::to_owned)
        .or_else(|| param(&params, "lastEventId").map(str::to_owned))
        .filter(|id| !id.is_empty());
    // Names were checked (and the grant applied) as the client knows them;
    // the shards index them by their internal keys.
    let user = grant.user.map(|user| namespace.key(&user).into_owned());
    let rooms = rooms.iter().map(|room| namespace.key(room).into_owned()).collect();
    Ok(Subscription { namespace, user, rooms, last_event_id, preamble: preamble(ctx), events: None })
}

/// The whole HTTP answer for a subscriber its owner shard turned away (the
/// shard says why, this says it in HTTP; see [`crate::shard::Shared::render_refusal`]).
pub fn render_refusal(refusal: &Refusal) -> Bytes {
    let response = match refusal {
        Refusal::TooManyConnections { limit } => Response::error(
            429,
            "too_many_connections",
            format!("user already holds {limit} connections (--max-connections-per-user)"),
        ),
    };
    response.closing().encode(false, false).into()
}

/// The refusal's answer; a `401` for a token names the scheme to use (RFC 6750 §3),
/// a webhook outage says when to retry.
fn refusal(ctx: &ShardCtx, denied: &Denied) -> Response {
    let stats = ctx.stats();
    match denied.status() {
        502 | 503 => {
            ShardStats::add(&stats.auth_failures, 1);
            ctx.emit_error("auth_webhook", &denied.to_string(), None);
        }
        _ => ShardStats::add(&stats.auth_refused, 1),
    }
    let response = Response::error(denied.status(), denied.code(), denied.to_string());
    match (&ctx.shared.auth, denied) {
        (Authenticator::Jwt(_), _) if denied.status() == 401 => response.header("WWW-Authenticate", "Bearer"),
        (_, Denied::AppUnavailable(_)) => response.header("Retry-After", "1"),
        _ => response,
    }
}

/// RFC 9110 §12.5.1: no Accept, or one admitting `text/event-stream`,
/// `text/*` or `*/*`, is fine.
fn accepts_event_stream(accept: Option<&[u8]>) -> bool {
    let Some(accept) = accept.and_then(|a| std::str::from_utf8(a).ok()) else {
        return true;
    };
    accept.split(',').any(|range| {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let refused =
            parts.any(|p| matches!(p.trim().strip_prefix("q="), Some(q) if q.trim().parse::<f32>() == Ok(0.0)));
        !refused && matches!(media.as_str(), "text/event-stream" | "text/*" | "*/*")
    })
}

/// Response head and `retry:` line, written before any event.
/// The response head of a stream (and the `retry:` hint).
pub(super) fn preamble(ctx: &ShardCtx) -> Bytes {
    let config = &ctx.shared.config;
    let mut out = BytesMut::with_capacity(256);
    out.put_slice(
        b"HTTP/1.1 200 OK\r\n\
          Content-Type: text/event-stream; charset=utf-8\r\n\
          Cache-Control: no-cache, no-transform\r\n\
          Connection: keep-alive\r\n\
          X-Accel-Buffering: no\r\n",
    );
    if let Some(origin) = &config.cors_origin {
        out.put_slice(format!("Access-Control-Allow-Origin: {origin}\r\nVary: Origin\r\n").as_bytes());
        if origin != "*" {
            out.put_slice(b"Access-Control-Allow-Credentials: true\r\n");
        }
    }
    out.put_slice(b"\r\n");
    out.put_slice(&frame::retry(config.retry.as_millis()));
    out.freeze()
}

/// Adds the CORS preflight answer for `/sse`.
pub fn cors_preflight(response: Response, origin: &str) -> Response {
    let response = response
        .header("Access-Control-Allow-Origin", origin)
        .header("Access-Control-Allow-Methods", "GET, OPTIONS")
        .header("Access-Control-Allow-Headers", "Last-Event-ID, Authorization, Cache-Control")
        .header("Access-Control-Max-Age", "600")
        .header("Vary", "Origin");
    if origin == "*" {
        response
    } else {
        response.header("Access-Control-Allow-Credentials", "true")
    }
}

#[cfg(test)]
mod tests {
    use super::accepts_event_stream;

    #[test]
    fn accept_header() {
        assert!(accepts_event_stream(None));
        assert!(accepts_event_stream(Some(b"text/event-stream")));
        assert!(accepts_event_stream(Some(b"application/json, */*;q=0.1")));
        assert!(accepts_event_stream(Some(b"text/*")));
        assert!(!accepts_event_stream(Some(b"application/json")));
        assert!(!accepts_event_stream(Some(b"text/event-stream;q=0")));
    }
}
