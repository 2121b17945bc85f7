//! Observability routes: `/v1/stats` (the seed's `stats()`), `/metrics`,
//! `/healthz`, `/readyz`.

use std::rc::Rc;

use serde_json::{json, Map, Value};

use crate::auth::jwks::JwksStats;
use crate::bus::{Bus, BusState, BusStats};
use crate::http::response::Response;
use crate::metrics::{self, Rejection, TenantRow, FIELDS};
use crate::shard::{Phase, ShardCtx};

/// `GET /healthz`: the process runs.
pub fn health() -> Response {
    Response::json(200, &json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 while accepting subscribers and, with a bus, while its
/// subscription is verified live by the canary; 503 otherwise.
pub fn ready(ctx: &Rc<ShardCtx>, bus: Option<&Bus>) -> Response {
    match ctx.shared.phase() {
        Phase::Running if bus.is_some_and(|b| !b.is_live()) => {
            Response::json(503, &json!({ "status": "bus_unavailable" }))
        }
        Phase::Running => Response::json(200, &json!({ "status": "ready" })),
        Phase::Draining => Response::json(503, &json!({ "status": "draining" })),
        Phase::Closing => Response::json(503, &json!({ "status": "shutting_down" })),
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Running => "running",
        Phase::Draining => "draining",
        Phase::Closing => "closing",
    }
}

/// `GET /v1/stats`: instance totals in the seed's shape, plus per shard.
pub async fn stats(ctx: &Rc<ShardCtx>, bus: Option<&Bus>) -> Response {
    let snapshots: Vec<_> = ctx.shared.stats.iter().map(|s| s.snapshot()).collect();
    let totals = metrics::totals(&snapshots);
    let rooms = ctx.distinct_rooms().await;
    let mut body = Map::new();
    for (slot, (key, _, _, _)) in FIELDS.iter().enumerate() {
        body.insert((*key).into(), totals[slot].into());
    }
    body.insert("rooms".into(), rooms.into());
    let rejected = metrics::rejection_totals(&ctx.shared.stats);
    let rejected: Map<String, Value> =
        Rejection::ALL.iter().zip(rejected).map(|(reason, n)| (reason.name().into(), n.into())).collect();
    body.insert("rejected".into(), rejected.into());
    body.insert("eventListeners".into(), ctx.shared.events.listeners().into());
    body.insert("eventsDropped".into(), ctx.shared.events.dropped().into());
    body.insert("eventsPosted".into(), ctx.shared.events.posted().into());
    body.insert("eventsPostFailures".into(), ctx.shared.events.post_failures().into());
    let jwks = jwks_stats(ctx);
    body.insert("jwksKeys".into(), jwks.keys.into());
    body.insert("jwksLoads".into(), jwks.loads.into());
    body.insert("jwksFetchErrors".into(), jwks.fetch_errors.into());
    let shards: Vec<Value> = snapshots
        .iter()
        .enumerate()
        .map(|(id, snapshot)| {
            let mut shard = Map::new();
            shard.insert("id".into(), id.into());
            for (slot, (key, _, _, _)) in FIELDS.iter().enumerate() {
                shard.insert((*key).into(), snapshot[slot].into());
            }
            Value::Object(shard)
        })
        .collect();
    body.insert("shards".into(), shards.into());
    body.insert("phase".into(), phase_name(ctx.shared.phase()).into());
    body.insert("instance".into(), format!("{:08x}", ctx.shared.instance).into());
    let bus = match bus.map(Bus::stats) {
        Some(s) => json!({
            "state": s.state.name(),
            "published": s.published,
            "received": s.received,
            "reconnects": s.reconnects,
            "catchUps": s.catch_ups,
            "gaps": s.gaps,
            "roundTripUs": s.round_trip_us,
            "instances": s.instances,
            "partitions": s.positions.iter().enumerate().map(|(partition, p)| json!({
                "partition": partition,
                "applied": p.applied,
                "lag": p.lag,
                "epoch": p.epoch,
            })).collect::<Vec<_>>(),
            "lastError": s.last_error,
        }),
        None => json!({
            "state": "disabled", "published": 0, "received": 0, "reconnects": 0,
            "catchUps": 0, "gaps": 0, "roundTripUs": 0, "instances": 1, "partitions": [], "lastError": null,
        }),
    };
    body.insert("bus".into(), bus);
    Response::json(200, &Value::Object(body))
}

/// The JWKS counters, zero without a JWKS.
fn jwks_stats(ctx: &ShardCtx) -> JwksStats {
    ctx.shared.auth.jwks().map(|jwks| jwks.stats()).unwrap_or_default()
}

/// `GET /v1/t/{tenant}/stats`: one tenant's share of the instance, and the
/// limits in force for it. `published`, `sent` and `rejected` are the
/// counters of its metrics label, named in `label`: its own when the tenant
/// config lists it, else `_other`'s, shared by every tenant it does not list.
pub async fn tenant_stats(ctx: &Rc<ShardCtx>, tenant: &str) -> Response {
    let figures = ctx.tenant_counts(tenant).await;
    let config = ctx.tenant_config();
    let limits = config.limits(tenant);
    let rejected: Map<String, Value> = Rejection::PER_TENANT
        .iter()
        .zip(figures.tally.rejected)
        .map(|(reason, n)| (reason.name().into(), n.into()))
        .collect();
    Response::json(
        200,
        &json!({
            "tenant": tenant,
            "connections": figures.connections,
            "users": figures.users,
            "rooms": figures.rooms,
            "replayBytes": figures.replay_bytes,
            "label": config.label(config.slot(tenant)),
            "published": figures.tally.published,
            "sent": figures.tally.sent,
            "rejected": rejected,
            "limits": {
                "maxConnections": limits.max_connections,
                "publishRate": limits.publish.map(|rate| rate.per_second),
                "publishBurst": limits.publish.map(|rate| rate.burst),
                "recentMaxBytes": limits.recent_max_bytes,
            },
        }),
    )
}

/// The `ssekify_tenant_*` families: every listed tenant and `_other`.
async fn render_tenants(ctx: &Rc<ShardCtx>, text: &mut String) {
    let config = ctx.tenant_config();
    let figures = ctx.tenant_report(config.clone()).await;
    let rows: Vec<TenantRow<'_>> = figures
        .iter()
        .enumerate()
        .map(|(slot, f)| TenantRow {
            label: config.label(slot),
            connections: f.connections,
            users: f.users,
            rooms: f.rooms,
            replay_bytes: f.replay_bytes,
            published: f.tally.published,
            sent: f.tally.sent,
            rejected: f.tally.rejected,
        })
        .collect();
    metrics::render_tenants(text, &rows);
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(ctx: &Rc<ShardCtx>, bus: Option<&Bus>) -> Response {
    let snapshots: Vec<_> = ctx.shared.stats.iter().map(|s| s.snapshot()).collect();
    let rooms = ctx.distinct_rooms().await;
    let ready = u64::from(ctx.shared.phase() == Phase::Running && bus.is_none_or(Bus::is_live));
    let bus = bus.map(Bus::stats);
    let bus_value = |f: fn(&BusStats) -> u64| bus.as_ref().map_or(0, f);
    let histograms: Vec<_> = ctx.shared.stats.iter().map(|s| &s.publish_latency).collect();
    let mut text = metrics::render(
        &snapshots,
        &[
            ("ssekify_rooms", "Distinct rooms with members on any shard.", rooms),
            ("ssekify_ready", "1 while accepting subscribers.", ready),
            ("ssekify_shards", "Shard threads.", snapshots.len() as u64),
            ("ssekify_event_listeners", "Open GET /v1/events streams.", ctx.shared.events.listeners()),
            (
                "ssekify_events_dropped",
                "Lifecycle events lost to a slow listener or a full shard inbox (a counter).",
                ctx.shared.events.dropped(),
            ),
            (
                "ssekify_events_posted",
                "Lifecycle events the application acknowledged at --events-url (a counter).",
                ctx.shared.events.posted(),
            ),
            (
                "ssekify_events_post_failures",
                "Failed POSTs to --events-url (a counter).",
                ctx.shared.events.post_failures(),
            ),
            (
                "ssekify_bus_live",
                "1 while the Redis subscription is verified live.",
                bus_value(|b| u64::from(b.state == BusState::Live)),
            ),
            ("ssekify_bus_published", "Messages acknowledged by Redis.", bus_value(|b| b.published)),
            ("ssekify_bus_received", "Messages received from other instances.", bus_value(|b| b.received)),
            ("ssekify_bus_reconnects", "Bus reconnect attempts.", bus_value(|b| b.reconnects)),
            ("ssekify_bus_catch_ups", "Reads of missed entries from the bus log.", bus_value(|b| b.catch_ups)),
            (
                "ssekify_bus_gaps",
                "Times the bus log had lost entries this instance missed (announced as ssekify.gap).",
                bus_value(|b| b.gaps),
            ),
            (
                "ssekify_bus_lag_entries",
                "Bus log entries heard of but not yet applied, over all partitions.",
                bus_value(|b| b.positions.iter().map(|p| p.lag).sum()),
            ),
            (
                "ssekify_bus_instances",
                "Instances heard alive over the bus, this one included.",
                bus_value(|b| b.instances),
            ),
            (
                "ssekify_bus_round_trip_microseconds",
                "The last canary round trip through Redis.",
                bus_value(|b| b.round_trip_us),
            ),
        ],
        &histograms,
    );
    metrics::render_rejections(&mut text, &metrics::rejection_totals(&ctx.shared.stats));
    metrics::render_jwks(&mut text, &jwks_stats(ctx));
    render_tenants(ctx, &mut text).await;
    Response::with_body(200, "text/plain; version=0.0.4; charset=utf-8", text)
}

/// The subscriber page of `examples/browser` at `GET /` with `--demo`: a
/// first look at a running server from a browser, same origin, no CORS.
pub fn demo_page() -> Response {
    const PAGE: &str = include_str!("../../examples/browser/index.html");
    Response::with_body(200, "text/html; charset=utf-8", PAGE).header("Cache-Control", "no-cache")
}
