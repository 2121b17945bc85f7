//! `chaos`: does the cross-instance bus lose or duplicate acknowledged
//! messages while instances restart and Redis stalls, drops subscribers or
//! restarts? Logical subscribers hop between instances like browsers
//! ([`client`]), publishers send to random instances and record what was
//! acknowledged ([`publish`]), and the checker ([`check`]) compares the two.
//! The faults themselves are the scenario script's (`scenarios/chaos.sh`).
//! Only the public HTTP contract is used, so the same run measures any bus.

mod check;
mod client;
mod plan;
mod publish;
mod seen;
mod sse;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Args;

use crate::net::parse_url;
use crate::record::now_nanos;
use crate::{workers, Common, Report};
use check::{Rules, Tally};
use client::Clients;
use plan::{Cast, Mix};
use publish::{Counts, Publishing};
use seen::Seen;

/// How long subscribers get to open their first streams before publishing
/// starts anyway (those still closed are checked from their first stream on).
const CONNECT_WAIT: Duration = Duration::from_secs(60);

/// Flags of `ssekify-loadtest chaos`.
#[derive(Args)]
pub struct ChaosArgs {
    /// `--sse-url`: each instance's subscribe URL (`http://127.0.0.1:8080/sse`;
    /// a query is replaced by the subscriber's own). `--rooms`: rooms the
    /// subscribers join one or two of.
    #[command(flatten)]
    common: Common,
    /// Each instance's api listener (`http://127.0.0.1:8081`); repeat.
    #[arg(long = "api-url", required = true)]
    api_urls: Vec<String>,
    /// Messages per second, all routes together.
    #[arg(long, default_value_t = 180.0)]
    rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Messages acknowledged in the last this-many seconds of publishing are
    /// not expected (they may still be on their way when the run stops).
    #[arg(long, default_value_t = 5.0)]
    settle: f64,
    /// Share of messages to one user.
    #[arg(long, default_value_t = 0.6)]
    user_share: f64,
    /// Share of messages to one room; the rest are broadcasts.
    #[arg(long, default_value_t = 0.35)]
    room_share: f64,
    /// Share of messages sent through the batch route (`POST /v1/publish`).
    #[arg(long, default_value_t = 0.25)]
    batch_share: f64,
    /// Messages per batch request.
    #[arg(long, default_value_t = 10)]
    batch_size: usize,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Publisher lanes (each keeps one connection per instance).
    #[arg(long, default_value_t = 16)]
    publishers: usize,
    /// Retries, with the same ids, of a request not answered `200` (503, a
    /// broken connection or a timeout), each to a random instance.
    #[arg(long, default_value_t = 5)]
    retries: u32,
    /// Milliseconds before a retry.
    #[arg(long, default_value_t = 1000)]
    retry_delay_ms: u64,
    /// Seconds one publish attempt may take.
    #[arg(long, default_value_t = 10.0)]
    attempt_timeout: f64,
    /// Shortest life of a subscriber's connection before it drops it, seconds.
    #[arg(long, default_value_t = 5.0)]
    drop_min: f64,
    /// Longest life of a subscriber's connection, seconds (uniform in between).
    #[arg(long, default_value_t = 20.0)]
    drop_max: f64,
    /// Milliseconds a subscriber waits before reconnecting; by default the
    /// stream's `retry:`, as a browser does.
    #[arg(long)]
    reconnect_ms: Option<u64>,
    /// Two messages of one stream are out of order only when the later one
    /// was first sent more than this many ms after the earlier was acknowledged.
    #[arg(long, default_value_t = 50)]
    order_tolerance_ms: u64,
    /// First streams opened per second (per process) at the start.
    #[arg(long, default_value_t = 2000.0)]
    connect_rate: f64,
    /// Message ids are `<prefix>-<sequence>`.
    #[arg(long, default_value = "m")]
    id_prefix: String,
    /// Seed of every random choice (rooms, targets, instances, lifetimes).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Written (with the start time in ns) when publishing starts, so a
    /// script can time its faults from it.
    #[arg(long)]
    ready_file: Option<String>,
}

/// Runs the scenario; the report fails when anything was lost, duplicated or misrouted.
pub async fn run(args: ChaosArgs) -> Result<Report, String> {
    let common = &args.common;
    let sse = common.urls()?;
    let instances: Vec<SocketAddr> = sse.iter().map(|u| u.addr).collect();
    let apis: Vec<SocketAddr> = args.api_urls.iter().map(|u| parse_url(u).map(|u| u.addr)).collect::<Result<_, _>>()?;
    if instances.is_empty() || apis.is_empty() || args.rate <= 0.0 {
        return Err("chaos needs an --sse-url and an --api-url per instance, and a positive --rate".into());
    }
    let cast = Cast::new(common.subscribers, common.rooms, args.seed);
    let mix =
        Mix { users: args.user_share, rooms: args.room_share, batched: args.batch_share, batch_size: args.batch_size };
    let messages = (args.rate * args.duration).round().max(1.0) as usize;
    let (targets, requests) = plan::draw(&cast, mix, messages, args.seed);
    let workers = match common.worker {
        None if common.processes > 1 => workers::spawn(common.processes)?,
        _ => Vec::new(),
    };
    let local: Vec<usize> = (0..common.subscribers).filter(|&i| common.owns(i)).collect();
    let clients = Rc::new(Clients {
        instances,
        path: sse[0].path.split('?').next().unwrap_or("/sse").to_owned(),
        cast: cast.clone(),
        id_prefix: args.id_prefix.clone(),
        source_ips: common.source_ips.clone(),
        lifetime: (args.drop_min, args.drop_max.max(args.drop_min)),
        reconnect_ms: args.reconnect_ms,
        seed: args.seed,
        seen: RefCell::new(vec![Seen::default(); local.len()]),
        connected_once: Cell::new(0),
        open: Cell::new(0),
        messages: Cell::new(0),
    });
    for (slot, &index) in local.iter().enumerate() {
        let delay = Duration::from_secs_f64(slot as f64 / args.connect_rate.max(1.0));
        monoio::spawn(client::run(clients.clone(), index, slot, delay));
    }
    let waited = Instant::now();
    while clients.connected_once.get() < local.len() && waited.elapsed() < CONNECT_WAIT {
        monoio::time::sleep(Duration::from_millis(50)).await;
    }
    if common.worker.is_some() {
        let export = || clients.seen.borrow().iter().zip(&local).map(|(seen, &i)| seen.to_line(i)).collect();
        workers::serve(&[], || clients.messages.get(), export).await;
        std::process::exit(0);
    }
    for worker in &workers {
        worker.ready()?;
    }
    eprintln!(
        "{} of {} local subscribers connected over {} process(es); publishing {messages} messages",
        clients.connected_once.get(),
        local.len(),
        common.processes.max(1)
    );

    let start_ns = now_nanos() + 100_000_000;
    if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{start_ns}\n")).map_err(|e| format!("cannot write {path}: {e}"))?;
    }
    let publishing = Rc::new(Publishing {
        instances: apis,
        ledger: Publishing::blank_ledger(&targets),
        targets,
        requests,
        rate: args.rate,
        start_ns,
        id_prefix: args.id_prefix.clone(),
        size: args.size,
        retries: args.retries,
        retry_delay: Duration::from_millis(args.retry_delay_ms),
        attempt_timeout: Duration::from_secs_f64(args.attempt_timeout),
        seed: args.seed,
        counts: Counts::default(),
    });
    let lanes = args.publishers.max(1);
    let tasks: Vec<_> = (0..lanes).map(|lane| monoio::spawn(publish::lane(publishing.clone(), lane, lanes))).collect();
    let progress = monoio::spawn({
        let (publishing, clients) = (publishing.clone(), clients.clone());
        let elsewhere: Vec<_> = workers.iter().map(|w| w.seen.clone()).collect();
        async move {
            loop {
                monoio::time::sleep(Duration::from_secs(1)).await;
                let c = &publishing.counts;
                let received = clients.messages.get()
                    + elsewhere.iter().map(|n| n.load(std::sync::atomic::Ordering::Relaxed)).sum::<u64>();
                eprintln!(
                    "acked {} (on retry {}, given up {}), requests {} (503 {}, failed {}), received {received}, streams open here {}",
                    c.acked.get(),
                    c.acked_on_retry.get(),
                    c.given_up.get(),
                    c.attempts.get(),
                    c.unavailable.get(),
                    c.failed.get(),
                    clients.open.get()
                );
            }
        }
    });
    for task in tasks {
        task.await;
    }
    drop(progress);
    let end_ns = now_nanos();

    let mut seen = vec![Seen::default(); common.subscribers];
    for (slot, &index) in local.iter().enumerate() {
        seen[index] = clients.seen.borrow()[slot].clone();
    }
    for worker in workers {
        worker.finish(|line| {
            if let Some((index, one)) = Seen::from_line(line) {
                if let Some(slot) = seen.get_mut(index) {
                    *slot = one;
                }
            }
        });
    }
    let rules = Rules {
        origin_ns: start_ns,
        window_end_ns: end_ns.saturating_sub((args.settle * 1e9) as u64),
        order_tolerance_ns: args.order_tolerance_ms * 1_000_000,
    };
    let tally = check::check(&cast, &publishing.ledger.borrow(), &seen, &rules);
    let mut report = Report::new(common.json.clone());
    report.add("server", &common.label);
    report.add("scenario", "chaos");
    report.add("instances", clients.instances.len());
    report.add("subscribers", common.subscribers);
    report.add("generator_processes", common.processes.max(1));
    report.add("rooms", cast.rooms);
    report.add("rate_msgs_per_s", args.rate);
    report.add("publish_s", format!("{:.2}", (end_ns - start_ns) as f64 / 1e9));
    report.add("settle_s", args.settle);
    add_publishing(&mut report, &publishing.counts, messages);
    add_subscribers(&mut report, &seen);
    add_tally(&mut report, &tally);
    let failures = [("lost", tally.lost), ("duplicated", tally.duplicated), ("misrouted", tally.misrouted)];
    let failed: Vec<String> = failures.iter().filter(|(_, n)| *n > 0).map(|(what, n)| format!("{n} {what}")).collect();
    report.add("verdict", if failed.is_empty() { "pass" } else { "FAIL" });
    if !failed.is_empty() {
        report.fail(format!("acknowledged messages went wrong: {}", failed.join(", ")));
    }
    Ok(report)
}

fn add_publishing(report: &mut Report, c: &Counts, messages: usize) {
    report.add("messages_published", messages);
    report.add("messages_acked", c.acked.get());
    report.add("messages_acked_on_retry", c.acked_on_retry.get());
    report.add("messages_not_acked", c.given_up.get());
    report.add("publish_requests", c.attempts.get());
    report.add("publish_503", c.unavailable.get());
    report.add("publish_failed", c.failed.get());
    report.add("publish_refused", c.refused.get());
}

fn add_subscribers(report: &mut Report, seen: &[Seen]) {
    let sum = |f: fn(&Seen) -> u32| seen.iter().map(|s| u64::from(f(s))).sum::<u64>();
    report.add("streams_opened", sum(|s| s.connects));
    report.add("streams_resumed", sum(|s| s.resumes));
    report.add("stream_attempts_failed", sum(|s| s.connect_failures));
    report.add("messages_received", seen.iter().map(|s| s.received.len()).sum::<usize>());
    report.add("shutdown_notices", sum(|s| s.shutdowns));
    report.add("evicted_notices", sum(|s| s.evictions));
    report.add("control_frames_with_id", sum(|s| s.controls_with_id));
    report.add("foreign_ids", sum(|s| s.foreign));
}

fn add_tally(report: &mut Report, t: &Tally) {
    report.add("subscribers_checked", t.subscribers_checked);
    report.add("subscribers_never_connected", t.never_connected);
    report.add("expected", t.expected);
    report.add("delivered_once", t.delivered_once);
    report.add("delivered_repeatedly", t.delivered_repeatedly);
    report.add("gap_announced", t.gap_announced);
    report.add("lost", t.lost);
    report.add("lost_users", t.lost_by_kind[0]);
    report.add("lost_rooms", t.lost_by_kind[1]);
    report.add("lost_broadcast", t.lost_by_kind[2]);
    report.add("lost_by_second", timeline(&t.lost_by_second));
    report.add("duplicated", t.duplicated);
    report.add("duplicate_copies", t.duplicate_copies);
    report.add("resent_after_gap", t.resent_after_gap);
    report.add("duplicated_by_second", timeline(&t.duplicated_by_second));
    report.add("out_of_order", t.out_of_order);
    report.add("late_in_gap_resend", t.late_in_gap_resend);
    report.add("unexpected", t.unexpected);
    report.add("misrouted", t.misrouted);
    report.add("received_outside_window", t.outside_window);
    report.add("gap_notices", t.gap_notices);
}

/// `second:count` pairs, e.g. `10:1200 11:40`, or `-` when empty.
fn timeline(counts: &BTreeMap<u64, u64>) -> String {
    if counts.is_empty() {
        return "-".into();
    }
    counts.iter().map(|(s, n)| format!("{s}:{n}")).collect::<Vec<_>>().join(" ")
}
