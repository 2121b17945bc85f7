//! Counters kept per shard and summed on scrape, plus their Prometheus text.
//!
//! Each shard writes only its own [`ShardStats`] (relaxed atomics on its own
//! cache lines; hot paths add once per fan-out, not once per recipient), and
//! readers on any thread sum them, so no statistic needs a cross-shard message.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::auth::jwks::JwksStats;

/// Upper bounds of the latency buckets, in microseconds (100 µs to 2.5 s).
pub const LATENCY_BUCKETS_US: [u64; 14] =
    [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000];

/// A Prometheus-style latency histogram a shard records into without locks.
#[derive(Default, Debug)]
pub struct LatencyHistogram {
    /// Per bucket (not cumulative); the last slot is above every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn record(&self, micros: u64) {
        let slot = LATENCY_BUCKETS_US.iter().position(|&bound| micros <= bound).unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes the sum of `histograms` in Prometheus text format (cumulative buckets, seconds).
pub fn render_histogram(out: &mut String, name: &str, help: &str, histograms: &[&LatencyHistogram]) {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (slot, bound) in LATENCY_BUCKETS_US.iter().map(Some).chain([None]).enumerate() {
        cumulative += histograms.iter().map(|h| load(&h.buckets[slot])).sum::<u64>();
        let le = bound.map_or("+Inf".to_owned(), |us| format!("{}", *us as f64 / 1e6));
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let sum_us: u64 = histograms.iter().map(|h| load(&h.sum_us)).sum();
    let count: u64 = histograms.iter().map(|h| load(&h.count)).sum();
    let _ = writeln!(out, "{name}_sum {}\n{name}_count {count}", sum_us as f64 / 1e6);
}

/// Why a request or connection was turned away before its route ran: each
/// limit of the security model has its own reason, so an operator can tell
/// an attack or a misconfigured client from the counters alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Malformed request line, headers, framing or target (400).
    BadRequest,
    /// Head over `--max-head` or `--max-headers`, or trailers too large (431).
    HeadTooLarge,
    /// Body over `--max-payload` or `--max-batch-body` (413).
    BodyTooLarge,
    /// Request not received within `--read-timeout` (408).
    Timeout,
    /// No such route on this listener (404).
    NotFound,
    /// Route exists, method does not (405).
    MethodNotAllowed,
    /// Missing or wrong api key (401).
    Unauthorized,
    /// The shard's `--body-budget` of body bytes in flight was spent (503).
    BodyBudget,
    /// `--max-connections` subscribers, or public sockets beyond them (503).
    AtCapacity,
    /// A tenant's subscriber beyond its `maxConnections` (429).
    TenantQuota,
    /// A tenant's publish beyond its `publishRate`/`publishBurst` (429, or 413
    /// for a batch larger than the burst).
    TenantRateLimited,
    /// A tenant's api key on a route that is not its tenant's (403).
    Forbidden,
}

impl Rejection {
    /// Every reason, in the order of [`Rejections`]' slots.
    pub const ALL: [Rejection; 12] = [
        Rejection::BadRequest,
        Rejection::HeadTooLarge,
        Rejection::BodyTooLarge,
        Rejection::Timeout,
        Rejection::NotFound,
        Rejection::MethodNotAllowed,
        Rejection::Unauthorized,
        Rejection::BodyBudget,
        Rejection::AtCapacity,
        Rejection::TenantQuota,
        Rejection::TenantRateLimited,
        Rejection::Forbidden,
    ];

    /// The reasons counted per tenant too (a tenant's metrics and stats):
    /// the refusals of its limits and keys, and its subscribers turned away
    /// by the instance's capacity.
    pub const PER_TENANT: [Rejection; 4] =
        [Rejection::TenantQuota, Rejection::TenantRateLimited, Rejection::Forbidden, Rejection::AtCapacity];

    /// The `reason` label and stats key.
    pub fn name(self) -> &'static str {
        match self {
            Rejection::BadRequest => "bad_request",
            Rejection::HeadTooLarge => "head_too_large",
            Rejection::BodyTooLarge => "body_too_large",
            Rejection::Timeout => "timeout",
            Rejection::NotFound => "not_found",
            Rejection::MethodNotAllowed => "method_not_allowed",
            Rejection::Unauthorized => "unauthorized",
            Rejection::BodyBudget => "body_budget",
            Rejection::AtCapacity => "at_capacity",
            Rejection::TenantQuota => "tenant_quota",
            Rejection::TenantRateLimited => "tenant_rate_limited",
            Rejection::Forbidden => "forbidden",
        }
    }
}

/// One counter per [`Rejection`] reason.
#[derive(Default, Debug)]
pub struct Rejections([AtomicU64; Rejection::ALL.len()]);

impl Rejections {
    /// Counts one rejection.
    pub fn count(&self, reason: Rejection) {
        self.0[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Current counts, in the order of [`Rejection::ALL`].
    pub fn snapshot(&self) -> [u64; Rejection::ALL.len()] {
        std::array::from_fn(|slot| self.0[slot].load(Ordering::Relaxed))
    }
}

/// Rejections summed over shards, in the order of [`Rejection::ALL`].
pub fn rejection_totals(shards: &[ShardStats]) -> [u64; Rejection::ALL.len()] {
    let mut out = [0; Rejection::ALL.len()];
    for shard in shards {
        for (slot, value) in shard.rejected.snapshot().into_iter().enumerate() {
            out[slot] += value;
        }
    }
    out
}

/// Appends `ssekify_rejected_total{reason=…}` to a Prometheus exposition.
pub fn render_rejections(out: &mut String, totals: &[u64; Rejection::ALL.len()]) {
    let name = "ssekify_rejected_total";
    let _ = writeln!(
        out,
        "# HELP {name} Requests and connections turned away by a limit, by reason.\n# TYPE {name} counter"
    );
    for (reason, value) in Rejection::ALL.iter().zip(totals) {
        let _ = writeln!(out, "{name}{{reason=\"{}\"}} {value}", reason.name());
    }
}

/// One tenant label's figures for the exposition ([`render_tenants`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct TenantRow<'a> {
    /// A listed tenant's name, or `_other` for every tenant the file does not list.
    pub label: &'a str,
    /// Open connections (gauge).
    pub connections: u64,
    /// Distinct named users with a connection (gauge).
    pub users: u64,
    /// Distinct rooms with members (gauge).
    pub rooms: u64,
    /// Frame bytes its replay rings reference (gauge).
    pub replay_bytes: u64,
    /// Messages accepted by its publish routes (counter).
    pub published: u64,
    /// Message frames handed to its connections (counter).
    pub sent: u64,
    /// Refusals in the order of [`Rejection::PER_TENANT`] (counters).
    pub rejected: [u64; Rejection::PER_TENANT.len()],
}

/// Appends the per-tenant families, `ssekify_tenant_*{tenant="…"}`: one
/// series per listed tenant and one for `_other`, so the label's values are
/// bounded by the tenant config. They are families of their own, beside the
/// unlabelled instance totals (which count every namespace), so a `sum()`
/// over either never counts anything twice.
pub fn render_tenants(out: &mut String, rows: &[TenantRow<'_>]) {
    type Field = fn(&TenantRow<'_>) -> u64;
    let families: [(&str, &str, &str, Field); 6] = [
        ("ssekify_tenant_connections", "gauge", "Open subscriber connections of the tenant.", |r| r.connections),
        ("ssekify_tenant_users", "gauge", "Distinct users of the tenant with a connection.", |r| r.users),
        ("ssekify_tenant_rooms", "gauge", "Distinct rooms of the tenant with members.", |r| r.rooms),
        ("ssekify_tenant_replay_bytes", "gauge", "Frame bytes referenced by the tenant's replay rings.", |r| {
            r.replay_bytes
        }),
        ("ssekify_tenant_published_total", "counter", "Messages accepted by the tenant's publish routes.", |r| {
            r.published
        }),
        ("ssekify_tenant_sent_total", "counter", "Message frames handed to the tenant's connections.", |r| r.sent),
    ];
    for (name, kind, help, field) in families {
        let _ = writeln!(out, "# HELP {name} {help} Unlisted tenants share tenant=\"_other\".\n# TYPE {name} {kind}");
        for row in rows {
            let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {}", label_value(row.label), field(row));
        }
    }
    let name = "ssekify_tenant_rejected_total";
    let _ = writeln!(
        out,
        "# HELP {name} The tenant's requests and connections turned away, by reason.\n# TYPE {name} counter"
    );
    for row in rows {
        for (reason, value) in Rejection::PER_TENANT.iter().zip(row.rejected) {
            let _ =
                writeln!(out, "{name}{{tenant=\"{}\",reason=\"{}\"}} {value}", label_value(row.label), reason.name());
        }
    }
}

/// A label value escaped as the text format asks (`\`, `"` and newline).
fn label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Appends the JWKS figures (all zero without `--jwks-file`/`--jwks-url`,
/// so dashboards and alerts need no special case).
pub fn render_jwks(out: &mut String, stats: &JwksStats) {
    for (name, kind, help, value) in [
        ("ssekify_jwks_keys", "gauge", "RS256/ES256 keys of the JWKS in use.", stats.keys),
        ("ssekify_jwks_loads_total", "counter", "JWKS documents loaded and put in use.", stats.loads),
        (
            "ssekify_jwks_fetch_errors_total",
            "counter",
            "JWKS fetches or reads that failed or were refused; the keys in use were kept.",
            stats.fetch_errors,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    }
}

/// One shard's counters and gauges.
#[derive(Default, Debug)]
#[repr(align(128))]
pub struct ShardStats {
    /// Open subscriber connections (gauge).
    pub connections: AtomicU64,
    /// Distinct named users with a connection here (gauge).
    pub users: AtomicU64,
    /// Rooms with a member here (gauge).
    pub rooms: AtomicU64,
    /// Message frames handed to connections (replays included, pings not).
    pub sent: AtomicU64,
    /// Frames dropped from the front of full queues.
    pub dropped_oldest: AtomicU64,
    /// Frames refused by full queues.
    pub dropped_newest: AtomicU64,
    /// Connections closed because their queue overflowed (`--drop-policy disconnect`).
    pub disconnected_by_backpressure: AtomicU64,
    /// Largest number of frames any queue held (high-water mark).
    pub queue_items_max: AtomicU64,
    /// Largest number of bytes any queue held (high-water mark).
    pub queue_bytes_max: AtomicU64,
    /// Streams closed because a write made no progress for `--write-timeout`.
    pub write_timeouts: AtomicU64,
    /// User replay rings held (gauge).
    pub replay_users: AtomicU64,
    /// Room replay rings held (gauge).
    pub replay_rooms: AtomicU64,
    /// Replay entries held (gauge).
    pub replay_entries: AtomicU64,
    /// Frame bytes referenced by replay rings (gauge).
    pub replay_bytes: AtomicU64,
    /// Errors answered or logged (bad requests, failed writes, refused subscribers).
    pub errors: AtomicU64,
    /// Subscribers accepted (counter).
    pub subscribes: AtomicU64,
    /// Subscribers handed to this shard by another one (counter).
    pub moved_in: AtomicU64,
    /// Messages published through this shard's api connections (counter).
    pub published: AtomicU64,
    /// Heartbeats written.
    pub pings: AtomicU64,
    /// Subscribers refused by `--auth`: a missing, bad or expired credential,
    /// a room it does not allow, or the webhook app's 4xx (counter).
    pub auth_refused: AtomicU64,
    /// Subscribers turned away because the webhook app was unreachable, slow
    /// or answered nonsense (502/503; counter): the app's health as ssekify sees it.
    pub auth_failures: AtomicU64,
    /// Publish requests: from validated to queued on every shard (bus included).
    pub publish_latency: LatencyHistogram,
    /// Requests and connections turned away, by reason.
    pub rejected: Rejections,
}

impl ShardStats {
    /// Adds to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Raises a high-water mark.
    pub fn raise(mark: &AtomicU64, value: u64) {
        if value > mark.load(Ordering::Relaxed) {
            mark.fetch_max(value, Ordering::Relaxed);
        }
    }

    /// Current values, in the order of [`FIELDS`].
    pub fn snapshot(&self) -> [u64; FIELDS.len()] {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            load(&self.connections),
            load(&self.users),
            load(&self.rooms),
            load(&self.sent),
            load(&self.dropped_oldest),
            load(&self.dropped_newest),
            load(&self.disconnected_by_backpressure),
            load(&self.queue_items_max),
            load(&self.queue_bytes_max),
            load(&self.write_timeouts),
            load(&self.replay_users),
            load(&self.replay_rooms),
            load(&self.replay_entries),
            load(&self.replay_bytes),
            load(&self.errors),
            load(&self.subscribes),
            load(&self.moved_in),
            load(&self.published),
            load(&self.pings),
            load(&self.auth_refused),
            load(&self.auth_failures),
        ]
    }
}

/// How a field is exposed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Summed across shards; a level.
    Gauge,
    /// Summed across shards; only grows.
    Counter,
    /// Maximum across shards.
    HighWater,
}

/// (stats JSON key, Prometheus name, kind, help) for each snapshot slot.
pub const FIELDS: [(&str, &str, Kind, &str); 21] = [
    ("connections", "ssekify_connections", Kind::Gauge, "Open subscriber connections."),
    ("users", "ssekify_users", Kind::Gauge, "Distinct users with at least one connection."),
    ("rooms", "ssekify_shard_rooms", Kind::Gauge, "Rooms with members, counted per shard."),
    ("sent", "ssekify_sent_total", Kind::Counter, "Message frames handed to connections."),
    ("droppedOldest", "ssekify_dropped_oldest_total", Kind::Counter, "Frames dropped from the front of full queues."),
    ("droppedNewest", "ssekify_dropped_newest_total", Kind::Counter, "Frames refused by full queues."),
    (
        "disconnectedByBackpressure",
        "ssekify_disconnected_by_backpressure_total",
        Kind::Counter,
        "Connections closed because their queue overflowed.",
    ),
    ("queueItemsMax", "ssekify_queue_items_max", Kind::HighWater, "Most frames any connection queue held."),
    ("queueBytesMax", "ssekify_queue_bytes_max", Kind::HighWater, "Most bytes any connection queue held."),
    ("writeTimeouts", "ssekify_write_timeouts_total", Kind::Counter, "Streams closed after a stalled write."),
    ("replayUsers", "ssekify_replay_users", Kind::Gauge, "User replay rings held."),
    ("replayRooms", "ssekify_replay_rooms", Kind::Gauge, "Room replay rings held, counted per shard."),
    ("replayEntries", "ssekify_replay_entries", Kind::Gauge, "Replay entries held."),
    ("replayBytes", "ssekify_replay_bytes", Kind::Gauge, "Frame bytes referenced by replay rings, counted per shard."),
    ("errorCount", "ssekify_errors_total", Kind::Counter, "Errors answered or logged."),
    ("subscribes", "ssekify_subscribes_total", Kind::Counter, "Subscriber connections accepted."),
    ("movedIn", "ssekify_moved_subscribers_total", Kind::Counter, "Subscribers handed over from another shard."),
    ("published", "ssekify_published_total", Kind::Counter, "Messages accepted by the publish routes."),
    ("pings", "ssekify_heartbeats_total", Kind::Counter, "Heartbeat comments written."),
    (
        "authRefused",
        "ssekify_auth_refused_total",
        Kind::Counter,
        "Subscribers refused by their credential or the auth webhook.",
    ),
    (
        "authFailures",
        "ssekify_auth_failures_total",
        Kind::Counter,
        "Subscribers turned away because the auth webhook failed.",
    ),
];

/// Combines per-shard snapshots into instance totals.
pub fn totals(shards: &[[u64; FIELDS.len()]]) -> [u64; FIELDS.len()] {
    let mut out = [0u64; FIELDS.len()];
    for shard in shards {
        for (slot, (_, _, kind, _)) in FIELDS.iter().enumerate() {
            out[slot] = match kind {
                Kind::HighWater => out[slot].max(shard[slot]),
                Kind::Gauge | Kind::Counter => out[slot] + shard[slot],
            };
        }
    }
    out
}

/// Prometheus text exposition (format 0.0.4): instance totals, per-shard series
/// labelled `shard`, and the extra gauges given by the caller.
pub fn render(shards: &[[u64; FIELDS.len()]], extra: &[(&str, &str, u64)], histograms: &[&LatencyHistogram]) -> String {
    let total = totals(shards);
    let mut out = String::with_capacity(4096);
    for (slot, (_, name, kind, help)) in FIELDS.iter().enumerate() {
        let kind_name = if *kind == Kind::Counter { "counter" } else { "gauge" };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind_name}\n{name} {}", total[slot]);
        let per_shard = format!("{}_by_shard", name.trim_end_matches("_total"));
        let per_shard = if *kind == Kind::Counter { format!("{per_shard}_total") } else { per_shard };
        let _ = writeln!(out, "# HELP {per_shard} {help} Per shard.\n# TYPE {per_shard} {kind_name}");
        for (id, shard) in shards.iter().enumerate() {
            let _ = writeln!(out, "{per_shard}{{shard=\"{id}\"}} {}", shard[slot]);
        }
    }
    for (name, help, value) in extra {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    }
    render_histogram(
        &mut out,
        "ssekify_publish_duration_seconds",
        "Publish requests, from validated to queued on every shard (bus acknowledgement included).",
        histograms,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_counters_and_take_max_of_marks() {
        let a = ShardStats::default();
        let b = ShardStats::default();
        ShardStats::add(&a.sent, 3);
        ShardStats::add(&b.sent, 4);
        ShardStats::raise(&a.queue_items_max, 9);
        ShardStats::raise(&b.queue_items_max, 5);
        let total = totals(&[a.snapshot(), b.snapshot()]);
        assert_eq!(total[3], 7);
        assert_eq!(total[7], 9);
    }

    #[test]
    fn exposition_has_help_and_type_for_every_series() {
        let stats = ShardStats::default();
        stats.publish_latency.record(300);
        stats.publish_latency.record(5_000_000);
        let text = render(&[stats.snapshot()], &[("ssekify_rooms", "Rooms.", 2)], &[&stats.publish_latency]);
        assert!(text.contains("ssekify_publish_duration_seconds_bucket{le=\"0.0005\"} 1\n"), "{text}");
        assert!(text.contains("ssekify_publish_duration_seconds_bucket{le=\"+Inf\"} 2\n"), "{text}");
        assert!(text.contains("ssekify_publish_duration_seconds_count 2\n"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let series = line.split(['{', ' ']).next().unwrap();
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    series.strip_suffix(suffix).filter(|base| text.contains(&format!("# TYPE {base} histogram")))
                })
                .unwrap_or(series);
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} has a TYPE line");
            assert!(line.rsplit(' ').next().unwrap().parse::<f64>().is_ok(), "{line}");
        }
        assert!(text.contains("ssekify_rooms 2\n"));
    }

    #[test]
    fn tenant_rows_carry_escaped_labels() {
        let mut out = String::new();
        let rows = [
            TenantRow { label: "acme", connections: 3, sent: 9, ..TenantRow::default() },
            TenantRow { label: "a\"b\\c", rejected: [1, 2, 0, 0], ..TenantRow::default() },
        ];
        render_tenants(&mut out, &rows);
        assert!(out.contains("ssekify_tenant_connections{tenant=\"acme\"} 3\n"), "{out}");
        assert!(out.contains("ssekify_tenant_sent_total{tenant=\"acme\"} 9\n"), "{out}");
        assert!(
            out.contains("ssekify_tenant_rejected_total{tenant=\"a\\\"b\\\\c\",reason=\"tenant_rate_limited\"} 2\n"),
            "{out}"
        );
    }
}
