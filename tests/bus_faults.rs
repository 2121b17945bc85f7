//! The bus's promise under the faults operators meet: every publish answered
//! `200` reaches every instance's subscriber exactly once and in order for
//! its user, room and broadcast, while publishers keep publishing and Redis
//! freezes (`kill -STOP`), sleeps (`DEBUG SLEEP`), pauses writes (`CLIENT
//! PAUSE … WRITE`), drops the subscriptions (`CLIENT KILL TYPE pubsub`, a tiny
//! `client-output-buffer-limit`) or the command connections, or
//! restarts with and without persistence (without: exactly one `ssekify.gap`
//! with reason `bus`), comes back from an older snapshot (one gap, then
//! every message: the log gets a new epoch instead of reusing numbers), is
//! flushed (`FLUSHALL`: a gap notice per partition whose log was lost, then
//! every message), runs out of memory (`maxmemory`: publishes refused, none
//! lost), loses its scripts (`SCRIPT FLUSH`), or fails over under Sentinel or in a Cluster (at most one gap, which covers
//! what the old master had not replicated); an instance that missed more
//! than the log keeps gets one gap; one whose catch-up is more than Redis
//! lets an ordinary client receive (`client-output-buffer-limit normal`)
//! reads it in smaller pieces. Also a 100,000-message batch crossing
//! whole.
//!
//! Every scenario counts every acknowledged message on every instance: a
//! publisher thread publishes with its own ids through the instances in turn,
//! retrying a 503 with the same ids until acknowledged; a reader thread per
//! subscriber keeps everything it receives.
//!
//! Needs `redis-server` and `redis-cli` on PATH; without them each test
//! prints why and passes, unless `SSEKIFY_REQUIRE_REDIS=1`.

mod common;
#[path = "support_redis/mod.rs"]
mod support_redis;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use support_redis::*;

/// `--bus-timeout` of the instances: how soon a silent Redis must be noticed.
const BUS_TIMEOUT: Duration = Duration::from_secs(1);
/// The user and room every subscriber holds (besides the broadcast).
const USER: &str = "fu";
const ROOM: &str = "fr";

/// One acknowledged message: its id and which stream it went to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Acked {
    id: String,
    target: &'static str,
}

/// Instances on one Redis, each with one subscriber to `USER`, `ROOM` and
/// the broadcast, read by a thread of its own.
struct Tier {
    redis: RedisServer,
    instances: Vec<Server>,
    readers: Vec<Reader>,
}

/// Starts `count` instances on `url` (`--shards 2 --bus-timeout …` + `extra`),
/// each with its subscriber and reader.
fn instances_on(url: &str, count: usize, extra: &[&str], bus_timeout: Duration) -> (Vec<Server>, Vec<Reader>) {
    let timeout = format!("{}ms", bus_timeout.as_millis());
    let mut args = vec!["--redis", url, "--shards", "2", "--bus-timeout", &timeout];
    args.extend_from_slice(extra);
    let instances: Vec<Server> = (0..count).map(|_| Server::start(&args)).collect();
    for server in &instances {
        wait_ready(server, "after start");
    }
    let readers = instances
        .iter()
        .map(|server| {
            let client = SseClient::open_ready(server.public, &sse_path(USER, &[ROOM]));
            wait_connections(server.api, 1);
            Reader::start(client)
        })
        .collect();
    (instances, readers)
}

struct Reader {
    events: Arc<Mutex<Vec<SseEvent>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Reader {
    fn start(mut client: SseClient) -> Reader {
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (kept, stopped) = (events.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                if let Some(event) = client.next_event(Duration::from_millis(100)) {
                    kept.lock().unwrap().push(event);
                }
            }
        });
        Reader { events, stop, handle: Some(handle) }
    }

    fn count(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    /// Stops reading once nothing has arrived for a while, and returns everything.
    fn finish(mut self) -> Vec<SseEvent> {
        let mut last = self.count();
        loop {
            std::thread::sleep(Duration::from_millis(1500));
            let now = self.count();
            if now == last {
                break;
            }
            last = now;
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            handle.join().expect("reader thread");
        }
        std::mem::take(&mut *self.events.lock().unwrap())
    }
}

fn tier(redis_args: &[&str], count: usize, extra: &[&str]) -> Tier {
    tier_with_timeout(redis_args, count, extra, BUS_TIMEOUT)
}

fn tier_with_timeout(redis_args: &[&str], count: usize, extra: &[&str], bus_timeout: Duration) -> Tier {
    let redis = RedisServer::start(redis_args);
    let (instances, readers) = instances_on(&redis.url(), count, extra, bus_timeout);
    Tier { redis, instances, readers }
}

fn readyz(server: &Server) -> u16 {
    http(server.public, "GET", "/readyz", &[], b"").status
}

fn wait_ready(server: &Server, what: &str) {
    let ready = wait_until(Duration::from_secs(20), || readyz(server) == 200);
    assert!(ready, "/readyz on {} not 200 ({what}); logs:\n{}", server.public, server.logs());
}

fn bus(server: &Server) -> Value {
    ok_json(http(server.api, "GET", "/v1/stats", &[], b""))["bus"].clone()
}

/// Publishes until stopped; see the module docs.
struct Publisher {
    stop: Arc<AtomicBool>,
    acked_so_far: Arc<std::sync::atomic::AtomicUsize>,
    handle: JoinHandle<Vec<Acked>>,
}

impl Publisher {
    /// `data` bytes of payload per message, one publish every `every`.
    fn start(apis: Vec<std::net::SocketAddr>, data: usize, every: Duration) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let acked_so_far = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = acked_so_far.clone();
        let handle = std::thread::spawn(move || {
            let payload = "x".repeat(data);
            let mut acked = Vec::new();
            let mut n = 0usize;
            while !stopped.load(Ordering::Relaxed) {
                let api = apis[n % apis.len()];
                let id = format!("m{n}");
                let publish = || match n % 4 {
                    0 => (publish_user(api, USER, &payload, &format!("id={id}")), vec![(id.clone(), "user")]),
                    1 => (publish_room(api, ROOM, &payload, &format!("id={id}")), vec![(id.clone(), "room")]),
                    2 => (broadcast(api, &payload, &format!("id={id}")), vec![(id.clone(), "all")]),
                    _ => {
                        let batch = json!([
                            { "user": USER, "id": format!("{id}a"), "data": payload },
                            { "room": ROOM, "id": format!("{id}b"), "data": payload },
                            { "all": true, "id": format!("{id}c"), "data": payload },
                        ]);
                        let sent =
                            vec![(format!("{id}a"), "user"), (format!("{id}b"), "room"), (format!("{id}c"), "all")];
                        (publish_batch(api, &batch), sent)
                    }
                };
                let started = Instant::now();
                loop {
                    let (resp, sent) = publish();
                    if resp.status == 200 {
                        acked.extend(sent.into_iter().map(|(id, target)| Acked { id, target }));
                        count.store(acked.len(), Ordering::Relaxed);
                        break;
                    }
                    assert_eq!(resp.status, 503, "publish {n}: {:?}", resp.text());
                    resp.assert_error(503, "bus_unavailable");
                    assert!(started.elapsed() < Duration::from_secs(60), "publish {n} never acknowledged");
                    std::thread::sleep(Duration::from_millis(100));
                }
                n += 1;
                std::thread::sleep(every);
            }
            acked
        });
        Publisher { stop, acked_so_far, handle }
    }

    /// Messages acknowledged so far.
    fn acked(&self) -> usize {
        self.acked_so_far.load(Ordering::Relaxed)
    }

    /// Waits until `more` further messages were acknowledged: traffic before
    /// and after a fault, counted rather than timed.
    fn wait_for_more(&self, more: usize) {
        let from = self.acked();
        let done = wait_until(Duration::from_secs(30), || self.acked() >= from + more);
        assert!(done, "fewer than {more} acknowledgements in 30 s (from {from})");
    }

    fn finish(self) -> Vec<Acked> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("publisher thread")
    }
}

/// What one subscriber received, checked against what was acknowledged:
/// each acknowledged message once, nothing else, in acknowledgement order
/// for each of its streams, and `gaps` bus gap notices. Acknowledged
/// messages in `may_miss` (indexes into `acked`: those acknowledged while a
/// log was lost with Redis) may be missing; the gap notice covers them.
fn check(name: &str, events: &[SseEvent], acked: &[Acked], gaps: usize, may_miss: std::ops::Range<usize>) {
    let gap_events: Vec<&SseEvent> = events.iter().filter(|e| e.event.as_deref() == Some("ssekify.gap")).collect();
    assert_eq!(gap_events.len(), gaps, "{name}: bus gap notices: {gap_events:?}");
    for gap in &gap_events {
        assert_eq!(gap.id, None, "{name}: a gap notice carries no id");
        let data: Value = serde_json::from_str(&gap.data).expect("gap data is JSON");
        assert_eq!(data["reason"], "bus", "{name}: {data}");
    }
    let target_of: std::collections::HashMap<&str, &str> = acked.iter().map(|a| (a.id.as_str(), a.target)).collect();
    let received: Vec<&str> =
        events.iter().filter(|e| e.event.is_none()).map(|e| e.id.as_deref().expect("messages have ids")).collect();
    let mut seen = std::collections::HashSet::new();
    for id in &received {
        assert!(seen.insert(*id), "{name}: {id} delivered twice");
        assert!(target_of.contains_key(id), "{name}: {id} was never acknowledged");
    }
    let missing: Vec<(usize, &Acked)> =
        acked.iter().enumerate().filter(|(_, a)| !seen.contains(a.id.as_str())).collect();
    let unexcused: Vec<&(usize, &Acked)> = missing.iter().filter(|(index, _)| !may_miss.contains(index)).collect();
    assert!(unexcused.is_empty(), "{name}: acknowledged but never delivered: {unexcused:?}");
    for target in ["user", "room", "all"] {
        let expected: Vec<&str> = acked
            .iter()
            .filter(|a| a.target == target && seen.contains(a.id.as_str()))
            .map(|a| a.id.as_str())
            .collect();
        let got: Vec<&str> = received.iter().copied().filter(|id| target_of[id] == target).collect();
        assert_eq!(got, expected, "{name}: {target} messages out of acknowledgement order");
    }
    eprintln!(
        "{name}: {} delivered exactly once, {} missed under a gap, {gaps} gap notices",
        received.len(),
        missing.len()
    );
}

/// Publishes a while, runs `fault`, publishes a while longer, then checks
/// every subscriber (see [`check`]), who heard a number of gap notices in
/// `gaps`.
fn under_fault(
    tier: Tier,
    data: usize,
    fault: impl FnOnce(&mut Tier, &Publisher),
    gaps: std::ops::RangeInclusive<usize>,
) -> Tier {
    let mut tier = tier;
    let apis = tier.instances.iter().map(|s| s.api).collect();
    let publisher = Publisher::start(apis, data, Duration::from_millis(20));
    publisher.wait_for_more(60);
    let fault_started = publisher.acked();
    fault(&mut tier, &publisher);
    for server in &tier.instances {
        wait_ready(server, "after the fault");
    }
    // Everything acknowledged from here on is on the log that survived.
    let recovered = publisher.acked();
    publisher.wait_for_more(60);
    let acked = publisher.finish();
    assert!(acked.len() > 50, "the publisher got few acknowledgements: {}", acked.len());
    let readers = std::mem::take(&mut tier.readers);
    for (n, reader) in readers.into_iter().enumerate() {
        let events = reader.finish();
        let announced = events.iter().filter(|e| e.event.as_deref() == Some("ssekify.gap")).count();
        assert!(gaps.contains(&announced), "instance {n}: {announced} gap notices, expected {gaps:?}");
        let may_miss = if announced > 0 { fault_started..recovered } else { 0..0 };
        check(&format!("instance {n}"), &events, &acked, announced, may_miss);
    }
    tier
}

#[test]
fn a_frozen_redis_is_noticed_and_nothing_acknowledged_is_lost() {
    if !require_redis() {
        return;
    }
    let tier = tier(&[], 2, &[]);
    let tier = under_fault(
        tier,
        100,
        |tier, _| {
            tier.redis.signal("STOP");
            let frozen = Instant::now();
            for server in &tier.instances {
                let noticed = wait_until(Duration::from_secs(5), || readyz(server) == 503);
                assert!(noticed, "/readyz stayed 200 with Redis frozen; bus {}", bus(server));
            }
            let noticed_after = frozen.elapsed();
            assert!(
                noticed_after < BUS_TIMEOUT * 3,
                "a frozen Redis took {noticed_after:?} to notice (bus timeout {BUS_TIMEOUT:?})"
            );
            std::thread::sleep(Duration::from_secs(3).saturating_sub(frozen.elapsed()));
            tier.redis.signal("CONT");
        },
        0..=0,
    );
    for server in &tier.instances {
        assert!(bus(server)["reconnects"].as_u64() > Some(0), "the freeze ended the session: {}", bus(server));
    }
}

#[test]
fn debug_sleep_loses_nothing_acknowledged() {
    if !require_redis() {
        return;
    }
    let tier = tier(&[], 2, &[]);
    under_fault(
        tier,
        100,
        |tier, _| {
            let port = tier.redis.port();
            let sleeper = std::thread::spawn(move || cli(port, &["DEBUG", "SLEEP", "2"]));
            sleeper.join().expect("redis-cli");
        },
        0..=0,
    );
}

#[test]
fn paused_writes_lose_nothing_acknowledged() {
    if !require_redis() {
        return;
    }
    let tier = tier(&[], 2, &[]);
    let tier = under_fault(
        tier,
        100,
        |tier, _| {
            // What an operator's `FAILOVER` or a manual switch does: reads
            // go on, appends (and the canary's PUBLISH) wait for 2 s.
            tier.redis.ok(&["CLIENT", "PAUSE", "2000", "WRITE"]);
            std::thread::sleep(Duration::from_millis(2500));
        },
        0..=0,
    );
    for server in &tier.instances {
        assert!(bus(server)["reconnects"].as_u64() >= Some(1), "the stall was noticed: {}", bus(server));
    }
}

#[test]
fn killed_command_connections_lose_nothing_acknowledged() {
    if !require_redis() {
        return;
    }
    let tier = tier(&[], 2, &[]);
    let tier = under_fault(
        tier,
        100,
        |tier, publisher| {
            // Appends in flight are cut off: their publishers hear 503 and
            // retry with the same ids, which the log takes once.
            for _ in 0..3 {
                let killed = tier.redis.cli(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]).unwrap_or_default();
                assert!(killed.trim().parse::<u32>().is_ok_and(|n| n >= 2), "CLIENT KILL answered {killed:?}");
                publisher.wait_for_more(10);
            }
        },
        0..=0,
    );
    for server in &tier.instances {
        assert!(bus(server)["reconnects"].as_u64() >= Some(1), "the session was rebuilt: {}", bus(server));
    }
}

#[test]
fn killed_subscriptions_are_caught_up_from_the_log() {
    if !require_redis() {
        return;
    }
    let tier = tier(&[], 3, &[]);
    let tier = under_fault(
        tier,
        100,
        |tier, _| {
            for round in 1..=2u64 {
                let killed = tier.redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).unwrap_or_default();
                assert!(killed.trim().parse::<u32>().is_ok_and(|n| n >= 3), "CLIENT KILL answered {killed:?}");
                // Every instance resubscribed before the next kill.
                let back = wait_until(Duration::from_secs(20), || {
                    tier.instances.iter().all(|s| bus(s)["reconnects"].as_u64() >= Some(round) && readyz(s) == 200)
                });
                assert!(back, "not every instance resubscribed after kill {round}");
            }
        },
        0..=0,
    );
    for server in &tier.instances {
        assert!(bus(server)["reconnects"].as_u64() > Some(0), "the subscription was rebuilt: {}", bus(server));
    }
}

#[test]
fn an_output_buffer_limit_that_cuts_subscribers_loses_nothing() {
    if !require_redis() {
        return;
    }
    let tier = tier(&[], 2, &[]);
    under_fault(
        tier,
        4096,
        |tier, _| {
            // A subscriber more than 8 KiB behind is cut at once.
            tier.redis.ok(&["CONFIG", "SET", "client-output-buffer-limit", "pubsub 8kb 4kb 1"]);
            std::thread::sleep(Duration::from_secs(3));
            tier.redis.ok(&["CONFIG", "SET", "client-output-buffer-limit", "pubsub 32mb 8mb 60"]);
        },
        0..=0,
    );
}

#[test]
fn a_redis_restart_with_persistence_loses_nothing() {
    if !require_redis() {
        return;
    }
    let tier = tier(&["--appendonly", "yes", "--appendfsync", "always"], 2, &[]);
    let tier = under_fault(tier, 100, |tier, _| tier.redis.restart(), 0..=0);
    for server in &tier.instances {
        assert_eq!(bus(server)["gaps"], json!(0), "the log survived: {}", bus(server));
    }
}

#[test]
fn a_redis_restart_without_persistence_is_one_gap_then_every_message() {
    if !require_redis() {
        return;
    }
    let tier = tier(&[], 2, &[]);
    let tier = under_fault(tier, 100, |tier, _| tier.redis.restart(), 1..=1);
    for server in &tier.instances {
        assert!(bus(server)["gaps"].as_u64() >= Some(1), "the log was lost: {}", bus(server));
    }
}

#[test]
fn a_redis_restored_from_an_older_snapshot_is_one_gap_then_every_message() {
    if !require_redis() {
        return;
    }
    let tier = tier(&[], 2, &[]);
    let tier = under_fault(
        tier,
        100,
        |tier, publisher| {
            // A snapshot, acknowledged messages after it, and a
            // crash: Redis comes back with the snapshot, its logs behind what
            // the instances applied, and would give out those sequence
            // numbers again.
            tier.redis.ok(&["SAVE"]);
            publisher.wait_for_more(40);
            tier.redis.restart();
        },
        1..=1,
    );
    for server in &tier.instances {
        assert!(bus(server)["gaps"].as_u64() >= Some(1), "the lost tail is a gap: {}", bus(server));
    }
    assert!(
        tier.instances.iter().any(|server| server.logs().contains("bus log went back")),
        "the first instance back started a new epoch"
    );
}

#[test]
fn a_full_redis_refuses_publishes_and_loses_nothing_acknowledged() {
    if !require_redis() {
        return;
    }
    let tier = tier(&[], 2, &[]);
    let tier = under_fault(
        tier,
        100,
        |tier, publisher| {
            // Over `maxmemory` with nothing to evict: Redis refuses every
            // write, the appends among them (`OOM command not allowed…`).
            tier.redis.ok(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
            tier.redis.ok(&["CONFIG", "SET", "maxmemory", "1"]);
            let refused = wait_until(Duration::from_secs(10), || {
                tier.instances.iter().any(|s| bus(s)["lastError"].as_str().is_some_and(|e| e.contains("OOM")))
            });
            assert!(refused, "no append was refused: {}", bus(&tier.instances[0]));
            let stalled_at = publisher.acked();
            std::thread::sleep(Duration::from_secs(2));
            assert!(publisher.acked() <= stalled_at + 1, "publishes were acknowledged by a full Redis");
            tier.redis.ok(&["CONFIG", "SET", "maxmemory", "0"]);
        },
        0..=0,
    );
    for server in &tier.instances {
        assert_eq!(bus(server)["gaps"], json!(0), "nothing was lost: {}", bus(server));
    }
}

#[test]
fn a_flushed_script_cache_loses_nothing() {
    if !require_redis() {
        return;
    }
    let tier = tier(&[], 2, &[]);
    let tier = under_fault(
        tier,
        100,
        |tier, publisher| {
            // The next append finds no script (`NOSCRIPT`): its publisher
            // hears 503 and the session loads the script again.
            for _ in 0..2 {
                tier.redis.ok(&["SCRIPT", "FLUSH"]);
                publisher.wait_for_more(20);
            }
        },
        0..=0,
    );
    for server in &tier.instances {
        assert_eq!(bus(server)["gaps"], json!(0), "nothing was lost: {}", bus(server));
    }
    let reloaded = tier.instances.iter().any(|server| bus(server)["reconnects"].as_u64() >= Some(1));
    assert!(reloaded, "no session met the missing script: {}", bus(&tier.instances[0]));
}

#[test]
fn a_flushall_is_a_gap_per_partition_then_every_message() {
    if !require_redis() {
        return;
    }
    let tier = tier(&[], 2, &[]);
    let tier = under_fault(
        tier,
        100,
        |tier, publisher| {
            // The logs and their sequences are gone while every instance
            // stays connected: each partition's next append starts a new
            // epoch (before, an instance that had created a log made it again
            // under the same epoch, and receivers dropped its entries as old).
            tier.redis.ok(&["FLUSHALL"]);
            publisher.wait_for_more(20);
        },
        // Found partition by partition, at its next append: one notice for
        // each of the user's, the room's and the broadcast's (which may share).
        1..=3,
    );
    for server in &tier.instances {
        assert!(bus(server)["gaps"].as_u64() >= Some(1), "the log was lost: {}", bus(server));
    }
}

#[test]
fn a_catch_up_larger_than_redis_lets_a_client_receive_is_read_in_smaller_pieces() {
    if !require_redis() {
        return;
    }
    // 100 KB messages: over the 64 KiB a notification carries, so every one
    // is read from the log, and a catch-up read of many is megabytes, more
    // than a client's socket takes at once. The streams' queues hold the
    // rest of the catch-up's burst (at the default 256 KiB,
    // `--drop-policy oldest` would drop frames of it: not what this tests).
    let mut tier = tier(&[], 2, &["--max-queue-bytes", "64MiB", "--max-queue-items", "1000"]);
    let publisher = Publisher::start(vec![tier.instances[0].api], 100_000, Duration::from_millis(20));
    publisher.wait_for_more(20);
    tier.instances[1].signal("STOP");
    tier.redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    publisher.wait_for_more(60);
    // Redis now closes an ordinary client whose unread replies pass 1 MB:
    // the frozen instance's first catch-up reads are cut off.
    tier.redis.ok(&["CONFIG", "SET", "client-output-buffer-limit", "normal 1mb 512kb 1"]);
    tier.instances[1].signal("CONT");
    publisher.wait_for_more(20);
    let acked = publisher.finish();
    // Every acknowledged message is one event for each subscriber (its
    // user, its room or the broadcast): each must get them all, however many
    // reconnects the catch-up takes.
    for (n, reader) in std::mem::take(&mut tier.readers).into_iter().enumerate() {
        let all = wait_until(Duration::from_secs(60), || reader.count() >= acked.len());
        let server = &tier.instances[n];
        assert!(all, "instance {n}: {} of {} in 60 s: {}\n{}", reader.count(), acked.len(), bus(server), server.logs());
        check(&format!("instance {n}"), &reader.finish(), &acked, 0, 0..0);
    }
    assert!(
        tier.instances[1].logs().contains("bus catch-up reads made smaller"),
        "the limit cut a read off: {}",
        bus(&tier.instances[1])
    );
}

#[test]
fn entries_trimmed_before_an_instance_read_them_are_one_gap() {
    if !require_redis() {
        return;
    }
    // A short log: an instance that misses more than it holds cannot catch up.
    let mut tier = tier(&[], 2, &["--bus-history", "10"]);
    let publisher = Publisher::start(vec![tier.instances[0].api], 100, Duration::from_millis(20));
    publisher.wait_for_more(40);
    let fault_started = publisher.acked();
    // Instance 1 freezes, and Redis drops the subscriptions meanwhile: when
    // it thaws it must read what it missed, and the log kept only the end.
    tier.instances[1].signal("STOP");
    let pid = tier.instances[1].pid();
    let stopped = wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T')))
    });
    assert!(stopped, "instance 1 did not stop");
    tier.redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    // `MAXLEN ~ 10` trims whole stream nodes (100 entries by default): 300
    // entries are sure to take the ones instance 1 missed.
    let frozen_from = publisher.acked();
    let enough = wait_until(Duration::from_secs(30), || publisher.acked() > frozen_from + 300);
    tier.instances[1].signal("CONT");
    assert!(enough, "the publisher got too few acknowledgements while instance 1 was frozen");
    // Its /readyz says 200 at once (the state it froze in): wait for the
    // new session, which has read what the log still held.
    let back = wait_until(Duration::from_secs(20), || {
        bus(&tier.instances[1])["reconnects"].as_u64() >= Some(1) && readyz(&tier.instances[1]) == 200
    });
    assert!(back, "instance 1 did not reconnect after thawing: {}", bus(&tier.instances[1]));
    let recovered = publisher.acked();
    publisher.wait_for_more(60);
    let acked = publisher.finish();
    let mut readers = std::mem::take(&mut tier.readers).into_iter();
    let events = readers.next().expect("instance 0's reader").finish();
    check("instance 0 (never away)", &events, &acked, 0, 0..0);
    let events = readers.next().expect("instance 1's reader").finish();
    check("instance 1 (frozen)", &events, &acked, 1, fault_started..recovered);
    // Counted per partition whose log had lost entries: the user's, the
    // room's and the broadcast's may be different ones.
    assert!(bus(&tier.instances[1])["gaps"].as_u64() >= Some(1), "{}", bus(&tier.instances[1]));
}

/// Publishes through `instances` while `fail_over` replaces Redis's master
/// (it returns once the replacement serves; it gets the publisher and how
/// many messages were acknowledged when it began), then checks every
/// subscriber. Replication is asynchronous: what the old master acknowledged
/// and had not passed on is lost with it, and then announced as one gap;
/// everything acknowledged outside the failover arrives exactly once.
fn failover_under_traffic(instances: &[Server], readers: Vec<Reader>, fail_over: impl FnOnce(&Publisher, usize)) {
    let publisher = Publisher::start(instances.iter().map(|s| s.api).collect(), 100, Duration::from_millis(20));
    publisher.wait_for_more(60);
    let fault_started = publisher.acked();
    fail_over(&publisher, fault_started);
    for server in instances {
        wait_ready(server, "after the failover");
    }
    let recovered = publisher.acked();
    publisher.wait_for_more(60);
    let acked = publisher.finish();
    for (n, reader) in readers.into_iter().enumerate() {
        let events = reader.finish();
        let gaps = events.iter().filter(|e| e.event.as_deref() == Some("ssekify.gap")).count();
        assert!(gaps <= 1, "instance {n}: {gaps} gap notices for one failover");
        let may_miss = if gaps == 1 { fault_started..recovered } else { 0..0 };
        check(&format!("instance {n}"), &events, &acked, gaps, may_miss);
    }
}

#[test]
fn a_cluster_master_failover_under_traffic_loses_nothing_silently() {
    if !require_redis() {
        return;
    }
    let mut cluster = RedisCluster::start_with_replicas(3);
    let (instances, readers) = instances_on(&cluster.url_via(1), 2, &[], BUS_TIMEOUT);
    failover_under_traffic(&instances, readers, |publisher, fault_started| {
        cluster.nodes[0].stop();
        // The replica takes over once the cluster marks the master failed
        // (node timeout 2 s); publishes touching its slots get 503 meanwhile.
        let took_over = wait_until(Duration::from_secs(30), || {
            cluster.nodes[1].cli(&["CLUSTER", "INFO"]).is_some_and(|info| info.contains("cluster_state:ok"))
                && publisher.acked() > fault_started + 20
        });
        assert!(took_over, "the cluster did not fail over");
    });
}

#[test]
fn a_sentinel_failover_under_traffic_loses_nothing_silently() {
    if !require_sentinel() {
        return;
    }
    let mut set = SentinelSet::start(1);
    let (instances, readers) = instances_on(&set.url(), 2, &[], BUS_TIMEOUT);
    failover_under_traffic(&instances, readers, |_, _| {
        let new_master = set.replica.addr();
        set.master.stop();
        let promoted = wait_until(Duration::from_secs(30), || {
            set.master_seen_by(&set.sentinels[0]).as_deref() == Some(&new_master[..])
        });
        assert!(promoted, "no failover to {new_master}; logs:\n{}", set.logs());
    });
}

#[test]
fn a_hundred_thousand_message_batch_crosses_whole_and_in_order() {
    if !require_redis() {
        return;
    }
    let queue = ["--max-queue-items", "200000", "--max-queue-bytes", "64MiB", "--max-batch-body", "32MiB"];
    // The debug build parses and encodes 100,000 messages slowly: give the
    // publish time; what is tested is that the batch crosses whole.
    let mut tier = tier_with_timeout(&[], 2, &queue, Duration::from_secs(10));
    let count = 100_000;
    let body: String =
        (0..count).map(|n| format!("{{\"user\":\"{USER}\",\"id\":\"b{n}\",\"data\":\"{n}\"}}\n")).collect();
    let resp = http(
        tier.instances[0].api,
        "POST",
        "/v1/publish",
        &[("Content-Type", "application/x-ndjson")],
        body.as_bytes(),
    );
    assert_eq!(resp.status, 200, "{:?}", resp.text().chars().take(300).collect::<String>());
    let results = resp.json()["results"].as_array().map(Vec::len);
    assert_eq!(results, Some(count));
    let acked: Vec<Acked> = (0..count).map(|n| Acked { id: format!("b{n}"), target: "user" }).collect();
    for (n, reader) in std::mem::take(&mut tier.readers).into_iter().enumerate() {
        let events = reader.finish();
        check(&format!("instance {n}"), &events, &acked, 0, 0..0);
    }
    assert_eq!(bus(&tier.instances[1])["received"], json!(count), "counted in messages, not wire entries");
}
