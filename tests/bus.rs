//! The cross-instance Redis bus, end to end: real `ssekify` processes talking
//! through real `redis-server` / `redis-sentinel` / Redis Cluster processes.
//!
//! Covered: exactly-once delivery across two instances (user, room,
//! broadcast, an ordered batch) with the publisher's ids; a batch larger
//! than a stream's queue to readers on both instances; replay on another
//! instance after a reconnect; the publisher skipping its own echo; Redis
//! stopping and coming back (503 `bus_unavailable`, `/readyz`, no
//! redelivery); `scope=local`; Sentinel failover; Cluster; `rediss://`
//! (TLS with a private CA, a wrong CA, a client certificate, a TLS Cluster,
//! Sentinel failover over TLS, unusable certificate files); RESP3; tenants
//! apart on the shared log (all, and listed); a Cluster's partitions spread
//! over every node; a Cluster master failover. Faults under steady traffic
//! are in `bus_faults.rs`.
//!
//! Needs `redis-server`, `redis-cli` (and `redis-sentinel`) on PATH; without
//! them each test prints why and passes, unless `SSEKIFY_REQUIRE_REDIS=1`.

mod common;
#[path = "support_redis/mod.rs"]
mod support_redis;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use support_redis::*;

/// How long an instance may take to report `/readyz` 200 (bus live).
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// `--bus-timeout` the tests use.
const BUS_TIMEOUT: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Starts an instance on `redis` (`--shards 2 --bus-timeout 1s` + `extra`)
/// and waits until its bus is live.
fn instance(driver: Option<&str>, redis: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--redis", redis, "--shards", "2", "--bus-timeout", "1s"];
    args.extend_from_slice(extra);
    let server = match driver {
        Some(driver) => Server::start_with_driver(driver, &args),
        None => Server::start(&args),
    };
    wait_ready(&server, "after start");
    server
}

fn readyz(server: &Server) -> HttpResponse {
    http(server.public, "GET", "/readyz", &[], b"")
}

/// Waits (bounded) until `/readyz` answers 200.
fn wait_ready(server: &Server, what: &str) {
    wait_ready_within(server, READY_TIMEOUT, what);
}

fn wait_ready_within(server: &Server, timeout: Duration, what: &str) {
    let mut last = None;
    let ok = wait_until(timeout, || {
        let resp = readyz(server);
        let ok = resp.status == 200;
        last = Some(resp);
        ok
    });
    assert!(
        ok,
        "/readyz on {} not 200 within {timeout:?} ({what}); last answer {:?} {:?}; bus {}; logs:\n{}",
        server.public,
        last.as_ref().map(|r| r.status),
        last.as_ref().map(HttpResponse::text),
        bus(server),
        server.logs()
    );
}

/// `bus` object of `/v1/stats`.
fn bus(server: &Server) -> Value {
    server.stats()["bus"].clone()
}

/// An integer counter of the `bus` object.
fn bus_count(server: &Server, key: &str) -> u64 {
    let b = bus(server);
    b[key].as_u64().unwrap_or_else(|| panic!("stats.bus has no integer `{key}`: {b}"))
}

/// Value of an unlabelled metric line `name value`.
fn metric(server: &Server, name: &str) -> f64 {
    let resp = http(server.api, "GET", "/metrics", &[], b"");
    assert_eq!(resp.status, 200, "/metrics: {:?}", resp.text());
    let text = resp.text();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.split_once(' ')?;
            (key == name).then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("/metrics has no `{name}` line:\n{text}"))
}

/// The io_uring instances process `pid` holds open.
fn io_uring_rings(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the instance's descriptors")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains("io_uring"))
        .count()
}

/// Subscribes and waits until the server counts `expect_total` connections.
fn subscribe(server: &Server, path: &str, expect_total: u64) -> SseClient {
    let client = SseClient::open_ready(server.public, path);
    wait_connections(server.api, expect_total);
    client
}

/// An expected event.
fn ev(id: &str, event: Option<&str>, data: &str) -> SseEvent {
    SseEvent { id: Some(id.to_string()), event: event.map(str::to_string), data: data.to_string() }
}

/// Reads exactly `n` events (10 s each at most).
fn take(client: &mut SseClient, n: usize, what: &str) -> Vec<SseEvent> {
    (0..n).map(|i| client.expect_event(&format!("{what}: event {} of {n}", i + 1))).collect()
}

/// After a pause long enough for stragglers, no client has another event
/// (catches duplicates and leaks without waiting a whole timeout per client).
fn assert_quiet(clients: &mut [(&str, &mut SseClient)], pause: Duration) {
    std::thread::sleep(pause);
    for (name, client) in clients.iter_mut() {
        if let Some(e) = client.next_event(Duration::from_millis(50)) {
            panic!("{name}: unexpected extra event {e:?} (duplicate or leaked delivery)");
        }
    }
}

/// `id` of a publish answer.
fn id_of(answer: &Value) -> String {
    answer["id"].as_str().unwrap_or_else(|| panic!("publish answer has no string id: {answer}")).to_string()
}

/// Asserts a 200 publish answer with `instances` and `delivered`.
fn check_answer(answer: &Value, instances: Value, delivered: u64, what: &str) {
    assert_eq!(answer["instances"], instances, "{what}: `instances` in {answer}");
    assert_eq!(answer["delivered"].as_u64(), Some(delivered), "{what}: `delivered` in {answer}");
}

/// Asserts `503 bus_unavailable` with the JSON error shape.
fn assert_bus_unavailable(resp: &HttpResponse, what: &str) {
    assert_eq!(resp.status, 503, "{what}: expected 503 bus_unavailable, got {} {:?}", resp.status, resp.text());
    resp.assert_error(503, "bus_unavailable");
}

// ---------------------------------------------------------------------------
// 1. Two instances: each subscriber gets each message once, with A's ids
// ---------------------------------------------------------------------------

#[test]
fn two_instances_deliver_every_message_once_with_the_same_ids() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    for driver in drivers() {
        // A channel per driver: the previous round's instances are gone, but
        // Redis may not have dropped their subscriptions yet.
        let channel = format!("bus-test-{driver}");
        let url = redis.url();
        let a = instance(Some(driver), &url, &["--channel", &channel]);
        let b = instance(Some(driver), &url, &["--channel", &channel]);
        if driver == "epoll" {
            // The bus thread too: where io_uring is refused (a container's
            // seccomp profile), `--io-driver epoll` must keep every thread off it.
            assert_eq!(io_uring_rings(a.pid()), 0, "--io-driver epoll with a bus opened io_uring rings");
        }

        let mut a_user = subscribe(&a, &sse_path("u", &[]), 1);
        let mut a_room = subscribe(&a, &sse_path("", &["r"]), 2);
        let mut a_anon = subscribe(&a, "/sse", 3);
        let mut b_user = subscribe(&b, &sse_path("u", &[]), 1);
        let mut b_room = subscribe(&b, &sse_path("", &["r"]), 2);
        let mut b_anon = subscribe(&b, "/sse", 3);

        // Single publishes on A: `delivered` counts A's connections only,
        // `instances` is both subscribers of the channel.
        let to_user = ok_json(publish_user(a.api, "u", "to-u", ""));
        check_answer(&to_user, json!(2), 1, &format!("[{driver}] user publish"));
        let to_room = ok_json(publish_room(a.api, "r", "to-r", "event=note"));
        check_answer(&to_room, json!(2), 1, &format!("[{driver}] room publish"));
        let to_all = ok_json(broadcast(a.api, "to-all", ""));
        check_answer(&to_all, json!(2), 3, &format!("[{driver}] broadcast"));
        let (id_user, id_room, id_all) = (id_of(&to_user), id_of(&to_room), id_of(&to_all));

        let user_events = vec![ev(&id_user, None, "to-u"), ev(&id_all, None, "to-all")];
        let room_events = vec![ev(&id_room, Some("note"), "to-r"), ev(&id_all, None, "to-all")];
        let anon_events = vec![ev(&id_all, None, "to-all")];
        for (name, client, expected) in [
            ("A user", &mut a_user, &user_events),
            ("B user", &mut b_user, &user_events),
            ("A room", &mut a_room, &room_events),
            ("B room", &mut b_room, &room_events),
            ("A anonymous", &mut a_anon, &anon_events),
            ("B anonymous", &mut b_anon, &anon_events),
        ] {
            let got = take(client, expected.len(), &format!("[{driver}] {name}"));
            assert_eq!(&got, expected, "[{driver}] {name}: events (ids must be the ones A answered)");
        }

        // A batch of 20 mixed messages: one PUBLISH, order kept on B.
        let messages: Vec<Value> = (0..20)
            .map(|i| {
                let mut m = match i % 3 {
                    0 => json!({ "user": "u" }),
                    1 => json!({ "room": "r" }),
                    _ => json!({ "all": true }),
                };
                m["data"] = if i == 7 { json!({ "n": 7, "s": "x" }) } else { json!(format!("b{i}")) };
                if i % 2 == 0 {
                    m["event"] = json!("batch");
                }
                m
            })
            .collect();
        let answer = ok_json(publish_batch(a.api, &Value::Array(messages.clone())));
        let results = answer["results"].as_array().unwrap_or_else(|| panic!("batch answer: {answer}"));
        assert_eq!(results.len(), 20, "[{driver}] batch results: {answer}");
        let mut user_expect = Vec::new();
        let mut room_expect = Vec::new();
        let mut anon_expect = Vec::new();
        for (i, (m, r)) in messages.iter().zip(results).enumerate() {
            let delivered = if m.get("all").is_some() { 3 } else { 1 };
            check_answer(r, json!(2), delivered, &format!("[{driver}] batch message {i}"));
            let data = if i == 7 { r#"{"n":7,"s":"x"}"#.to_string() } else { format!("b{i}") };
            let e = ev(&id_of(r), m["event"].as_str(), &data);
            if m.get("user").is_some() || m.get("all").is_some() {
                user_expect.push(e.clone());
            }
            if m.get("room").is_some() || m.get("all").is_some() {
                room_expect.push(e.clone());
            }
            if m.get("all").is_some() {
                anon_expect.push(e);
            }
        }
        for (name, client, expected) in [
            ("B user", &mut b_user, &user_expect),
            ("B room", &mut b_room, &room_expect),
            ("B anonymous", &mut b_anon, &anon_expect),
            ("A user", &mut a_user, &user_expect),
            ("A room", &mut a_room, &room_expect),
            ("A anonymous", &mut a_anon, &anon_expect),
        ] {
            let got = take(client, expected.len(), &format!("[{driver}] {name} batch"));
            assert_eq!(&got, expected, "[{driver}] {name}: batch events in order with A's ids");
        }

        // No subscriber gets anything twice.
        assert_quiet(
            &mut [
                ("A user", &mut a_user),
                ("A room", &mut a_room),
                ("A anonymous", &mut a_anon),
                ("B user", &mut b_user),
                ("B room", &mut b_room),
                ("B anonymous", &mut b_anon),
            ],
            Duration::from_millis(400),
        );

        // B received the 23 messages from A; A received nothing (B published nothing).
        let (a_bus, b_bus) = (bus(&a), bus(&b));
        assert_eq!(b_bus["received"], json!(23), "[{driver}] B's bus.received: {b_bus}");
        assert_eq!(a_bus["received"], json!(0), "[{driver}] A's bus.received: {a_bus}");
        assert_eq!(a_bus["state"], "live", "[{driver}] A's bus: {a_bus}");
        eprintln!("[{driver}] after 3 single publishes and one batch of 20 on A: A bus {a_bus}, B bus {b_bus}");
    }
}

// ---------------------------------------------------------------------------
// 2. Replay on another instance
// ---------------------------------------------------------------------------

#[test]
fn a_client_resumes_on_another_instance_from_its_replay_ring() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    let a = instance(None, &redis.url(), &[]);
    let b = instance(None, &redis.url(), &[]);
    let path = sse_path("replayer", &[]);

    let mut on_a = subscribe(&a, &path, 1);
    let mut ids = Vec::new();
    for n in 1..=2 {
        let answer = ok_json(publish_user(a.api, "replayer", &format!("m{n}"), ""));
        check_answer(&answer, json!(2), 1, &format!("m{n}"));
        ids.push(id_of(&answer));
    }
    let got = take(&mut on_a, 2, "subscriber on A");
    assert_eq!(got, vec![ev(&ids[0], None, "m1"), ev(&ids[1], None, "m2")]);
    drop(on_a);
    wait_connections(a.api, 0);

    for n in 3..=5 {
        let answer = ok_json(publish_user(a.api, "replayer", &format!("m{n}"), ""));
        check_answer(&answer, json!(2), 0, &format!("m{n}"));
        ids.push(id_of(&answer));
    }
    // B has taken in all five before the client comes back.
    let ok = wait_until(Duration::from_secs(10), || bus_count(&b, "received") >= 5);
    assert!(ok, "B's bus.received never reached 5: {}", bus(&b));

    let mut on_b = SseClient::resume(b.public, &path, &ids[1]);
    let got = take(&mut on_b, 3, "resumed on B after m2");
    assert_eq!(
        got,
        vec![ev(&ids[2], None, "m3"), ev(&ids[3], None, "m4"), ev(&ids[4], None, "m5")],
        "replay on B after Last-Event-ID {} (m2)",
        ids[1]
    );
    // Then live, without duplicates.
    let answer = ok_json(publish_user(a.api, "replayer", "m6", ""));
    let got = take(&mut on_b, 1, "live on B after the replay");
    assert_eq!(got, vec![ev(&id_of(&answer), None, "m6")]);
    assert_quiet(&mut [("resumed on B", &mut on_b)], Duration::from_millis(300));
}

// ---------------------------------------------------------------------------
// 3. Own echo skipped
// ---------------------------------------------------------------------------

#[test]
fn an_instance_alone_delivers_once_and_skips_its_own_echo() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    let s = instance(None, &redis.url(), &[]);
    let mut client = subscribe(&s, &sse_path("solo", &[]), 1);

    let mut expected = Vec::new();
    for n in 0..5 {
        let answer = if n % 2 == 0 {
            ok_json(publish_user(s.api, "solo", &format!("e{n}"), ""))
        } else {
            ok_json(broadcast(s.api, &format!("e{n}"), ""))
        };
        check_answer(&answer, json!(1), 1, &format!("publish {n}"));
        expected.push(ev(&id_of(&answer), None, &format!("e{n}")));
    }
    assert_eq!(take(&mut client, 5, "alone"), expected);
    assert_quiet(&mut [("subscriber", &mut client)], Duration::from_millis(500));

    let b = bus(&s);
    assert_eq!(b["received"], json!(0), "own echo must not count as received: {b}");
    assert_eq!(b["published"], json!(5), "five publishes acknowledged: {b}");
    assert_eq!(b["state"], "live", "{b}");
    assert_eq!(metric(&s, "ssekify_bus_live"), 1.0);
    assert_eq!(metric(&s, "ssekify_bus_published"), 5.0);
    assert_eq!(metric(&s, "ssekify_bus_received"), 0.0);
}

#[test]
fn an_instance_with_another_partition_count_stays_out_until_the_old_count_is_gone() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    let a = instance(None, &redis.url(), &[]);
    let mut on_a = subscribe(&a, &sse_path("split", &[]), 1);
    // Its users would go to partitions `a` does not read: acknowledged
    // messages `a`'s subscribers never get. It refuses to go live instead.
    let b = Server::start(&["--redis", &redis.url(), "--shards", "2", "--bus-timeout", "1s", "--bus-partitions", "64"]);
    let refusal = "this instance has --bus-partitions 64, the instances on --channel ssekify:bus have 16";
    assert_bus_stays_down(&b, Duration::from_millis(1500), &[refusal], "another partition count");
    let last_error = bus(&b)["lastError"].as_str().unwrap_or_default().to_string();
    assert!(last_error.contains(refusal), "bus.lastError {last_error:?}");
    assert_bus_unavailable(&publish_user(b.api, "split", "must-not-pass", ""), "another partition count");

    let answer = ok_json(publish_user(a.api, "split", "still served", ""));
    check_answer(&answer, json!(1), 1, "the tier's own count");
    assert_eq!(take(&mut on_a, 1, "the tier's own count"), vec![ev(&id_of(&answer), None, "still served")]);

    // Once the last instance of the old count is gone, its claim lapses
    // and the new count's instances go live.
    drop(a);
    wait_ready(&b, "after the old count's last instance stopped");
    let mut on_b = subscribe(&b, &sse_path("split", &[]), 1);
    let answer = ok_json(publish_user(b.api, "split", "new count", ""));
    assert_eq!(take(&mut on_b, 1, "the new count"), vec![ev(&id_of(&answer), None, "new count")]);
}

#[test]
fn an_unreadable_log_entry_is_a_gap_for_its_partition_then_every_message() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    let a = instance(None, &redis.url(), &[]);
    let b = instance(None, &redis.url(), &[]);
    let mut on_b = subscribe(&b, &sse_path("garbled", &[]), 1);
    let first = ok_json(publish_user(a.api, "garbled", "before", ""));
    assert_eq!(take(&mut on_b, 1, "before"), vec![ev(&id_of(&first), None, "before")]);
    // Positions are published at the bus's tick.
    let used = || -> Vec<u64> {
        let partitions = bus(&b)["partitions"].as_array().cloned().unwrap_or_default();
        partitions.iter().filter(|p| p["applied"].as_u64() > Some(0)).filter_map(|p| p["partition"].as_u64()).collect()
    };
    assert!(wait_until(Duration::from_secs(5), || !used().is_empty()), "no position: {}", bus(&b));
    let [partition] = used()[..] else { panic!("one partition carried the message: {}", bus(&b)) };

    // An entry no instance can read (corrupt, or from a build with another
    // wire version), appended and announced as the append script would.
    let tag = format!("{{ssekify:bus:{partition}}}");
    let inject = "local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1) \
                  local epoch = redis.call('HGET', KEYS[1], 'epoch') \
                  redis.call('XADD', KEYS[2], seq .. '-0', 'e', ARGV[1]) \
                  redis.call('PUBLISH', KEYS[3], epoch .. ':' .. seq .. ':' .. ARGV[1]) \
                  return seq";
    let (meta, log, channel) = (format!("{tag}:meta"), format!("{tag}:log"), format!("{tag}:n"));
    let injected = redis.cli(&["EVAL", inject, "3", &meta, &log, &channel, "not an entry"]);
    assert_eq!(injected.as_deref().map(str::trim), Some("2"), "the second entry of partition {partition}");

    let gap = on_b.expect_event("the gap for the unreadable entry");
    assert_eq!(gap.event.as_deref(), Some("ssekify.gap"), "{gap:?}");
    assert_eq!(gap.id, None, "{gap:?}");
    let data: Value = serde_json::from_str(&gap.data).expect("gap data is JSON");
    assert_eq!(data, json!({"lastEventId": id_of(&first), "reason": "bus"}));
    let last_error = bus(&b)["lastError"].as_str().unwrap_or_default().to_string();
    assert!(last_error.contains("undecodable bus log entry in partition"), "bus.lastError {last_error:?}");
    assert!(bus_count(&b, "gaps") >= 1, "{}", bus(&b));

    let after = ok_json(publish_user(a.api, "garbled", "after", ""));
    assert_eq!(take(&mut on_b, 1, "after"), vec![ev(&id_of(&after), None, "after")]);
}

#[test]
fn a_read_only_replica_given_as_redis_keeps_the_instance_down_saying_so() {
    if !require_redis() {
        return;
    }
    let master = RedisServer::start(&[]);
    let port = master.port().to_string();
    let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &port]);
    // A reader endpoint by mistake: every append would be refused.
    let server = Server::start(&["--redis", &replica.url(), "--bus-timeout", "1s"]);
    let says = format!("Redis at 127.0.0.1:{} is a read-only replica", replica.port());
    assert_bus_stays_down(&server, Duration::from_millis(1500), &[&says], "a replica");
    let last_error = bus(&server)["lastError"].as_str().unwrap_or_default().to_string();
    assert!(last_error.contains(&says), "bus.lastError {last_error:?}");
    // The master, named instead, serves.
    let on_master = instance(None, &master.url(), &[]);
    ok_json(publish_user(on_master.api, "r", "to the master", ""));
}

#[test]
fn the_documented_redis_user_works_and_one_without_a_needed_command_stays_down() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    for (user, denied) in [("noscripts", ["-eval", "-evalsha"]), ("nosubscribe", ["-subscribe", "-ssubscribe"])] {
        let acl = ["ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", denied[0], denied[1]];
        redis.ok(&acl);
    }
    for (user, says) in [
        ("noscripts", "the Redis user may not run the bus's scripts: NOPERM"),
        ("nosubscribe", "NOPERM this user has no permissions to run the 'subscribe' command"),
    ] {
        let url = format!("redis://{user}:pw@127.0.0.1:{}", redis.port());
        let server = Server::start(&["--redis", &url, "--bus-timeout", "1s"]);
        assert_bus_stays_down(&server, Duration::from_millis(1500), &[says], user);
        let last_error = bus(&server)["lastError"].as_str().unwrap_or_default().to_string();
        assert!(last_error.contains(says), "{user}: bus.lastError {last_error:?}");
    }

    // The user docs/operations.md gives: exactly what the bus needs.
    let acl = "ACL SETUSER ssekify on >secret ~{ssekify:bus:* &ssekify:bus:* &{ssekify:bus:* +@connection +info \
               +role +cluster|slots +cluster|nodes +script|load +eval +evalsha +xrange +hmget +publish +spublish \
               +subscribe +ssubscribe +hget +hset +hincrby +set +get +del +xadd +time";
    let words: Vec<&str> = acl.split_whitespace().collect();
    redis.ok(&words);
    let url = format!("redis://ssekify:secret@127.0.0.1:{}", redis.port());
    let a = instance(None, &url, &[]);
    let b = instance(None, &url, &[]);
    let mut on_b = subscribe(&b, &sse_path("acl", &["acl-room"]), 1);
    let to_user = ok_json(publish_user(a.api, "acl", "as the bus's user", "id=acl-1"));
    let again = http(a.api, "POST", "/v1/users/acl/events?id=acl-1", &[("Idempotency-Key", "k")], b"again");
    assert_eq!(again.status, 200, "{:?}", again.text());
    let to_room = ok_json(publish_room(a.api, "acl-room", "room", ""));
    assert_eq!(
        take(&mut on_b, 2, "as the bus's user"),
        vec![ev(&id_of(&to_user), None, "as the bus's user"), ev(&id_of(&to_room), None, "room")]
    );
}

// ---------------------------------------------------------------------------
// 4. Redis goes away and comes back
// ---------------------------------------------------------------------------

#[test]
fn redis_outage_refuses_publishes_then_recovers_without_redelivery() {
    if !require_redis() {
        return;
    }
    let mut redis = RedisServer::start(&[]);
    let a = instance(None, &redis.url(), &[]);
    let b = instance(None, &redis.url(), &[]);
    let mut on_a = subscribe(&a, "/sse", 1);
    let mut on_b = subscribe(&b, "/sse", 1);

    let mut acknowledged = Vec::new();
    for n in 1..=3 {
        let answer = ok_json(broadcast(a.api, &format!("before{n}"), ""));
        check_answer(&answer, json!(2), 1, &format!("before{n}"));
        acknowledged.push(ev(&id_of(&answer), None, &format!("before{n}")));
    }
    assert_eq!(take(&mut on_a, 3, "A before the outage"), acknowledged);
    assert_eq!(take(&mut on_b, 3, "B before the outage"), acknowledged);
    let reconnects_before = (bus_count(&a, "reconnects"), bus_count(&b, "reconnects"));

    redis.stop();
    let stopped = Instant::now();
    // Every publish while Redis is gone: 503 bus_unavailable, within the bus timeout.
    let slack = Duration::from_millis(700);
    for n in 0..6 {
        let (server, name) = if n % 3 == 2 { (&b, "B") } else { (&a, "A") };
        let started = Instant::now();
        let resp = if n == 4 {
            publish_batch(server.api, &json!([{ "all": true, "data": "during-batch" }, { "user": "x", "data": "y" }]))
        } else {
            broadcast(server.api, &format!("during{n}"), "")
        };
        let took = started.elapsed();
        assert_bus_unavailable(&resp, &format!("publish {n} on {name}, {:?} after Redis stopped", stopped.elapsed()));
        assert!(
            took <= BUS_TIMEOUT + slack,
            "publish {n} on {name} took {took:?} to be refused (bus timeout {BUS_TIMEOUT:?})"
        );
        std::thread::sleep(Duration::from_millis(150));
    }
    for (server, name) in [(&a, "A"), (&b, "B")] {
        let mut last = None;
        let down = wait_until(Duration::from_secs(5), || {
            let resp = readyz(server);
            let down = resp.status == 503;
            last = Some(resp);
            down
        });
        let last = last.unwrap();
        assert!(down, "{name}: /readyz still {} {:?} with Redis stopped", last.status, last.text());
        assert_eq!(last.json()["status"], "bus_unavailable", "{name}: /readyz body {:?}", last.text());
        let state = bus(server);
        assert_ne!(state["state"], "live", "{name}: bus state with Redis stopped: {state}");
        assert_eq!(metric(server, "ssekify_bus_live"), 0.0, "{name}: ssekify_bus_live with Redis stopped");
    }
    // Nothing refused was delivered anywhere.
    assert_quiet(
        &mut [("A during the outage", &mut on_a), ("B during the outage", &mut on_b)],
        Duration::from_millis(300),
    );

    redis.restart();
    let restarted = Instant::now();
    wait_ready(&a, "after Redis came back");
    wait_ready_within(&b, READY_TIMEOUT.saturating_sub(restarted.elapsed()), "after Redis came back");
    eprintln!("both instances ready {:?} after the Redis restart", restarted.elapsed());

    let mut after = Vec::new();
    for n in 1..=3 {
        let answer = ok_json(broadcast(a.api, &format!("after{n}"), ""));
        check_answer(&answer, json!(2), 1, &format!("after{n} on A"));
        after.push(ev(&id_of(&answer), None, &format!("after{n}")));
    }
    // Redis came back empty (no persistence): the log is gone, which each
    // subscriber hears once as a bus gap naming the last message it got;
    // then after1..: nothing acknowledged before (and nothing refused
    // during) the outage comes again.
    let gap = SseEvent {
        id: None,
        event: Some("ssekify.gap".into()),
        data: json!({ "lastEventId": acknowledged[2].id, "reason": "bus" }).to_string(),
    };
    let mut expected = vec![gap];
    expected.extend(after.iter().cloned());
    assert_eq!(take(&mut on_a, 4, "A after the outage"), expected);
    assert_eq!(take(&mut on_b, 4, "B after the outage"), expected);
    for (server, name) in [(&a, "A"), (&b, "B")] {
        assert_eq!(bus_count(server, "gaps"), 1, "{name}: one lost log, one gap: {}", bus(server));
    }
    let answer = ok_json(broadcast(b.api, "after4", ""));
    check_answer(&answer, json!(2), 1, "after4 on B");
    let from_b = vec![ev(&id_of(&answer), None, "after4")];
    assert_eq!(take(&mut on_a, 1, "A after the outage, from B"), from_b);
    assert_eq!(take(&mut on_b, 1, "B after the outage, from B"), from_b);
    assert_quiet(&mut [("A", &mut on_a), ("B", &mut on_b)], Duration::from_millis(400));

    assert!(bus_count(&a, "reconnects") > reconnects_before.0, "A's bus.reconnects did not grow: {}", bus(&a));
    assert!(bus_count(&b, "reconnects") > reconnects_before.1, "B's bus.reconnects did not grow: {}", bus(&b));
    assert!(metric(&a, "ssekify_bus_reconnects") > 0.0);
    assert_eq!(bus(&a)["state"], "live");
}

// ---------------------------------------------------------------------------
// 5. scope=local stays local
// ---------------------------------------------------------------------------

#[test]
fn scope_local_publishes_stay_on_the_instance() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    let a = instance(None, &redis.url(), &[]);
    let b = instance(None, &redis.url(), &[]);
    let mut a_anon = subscribe(&a, "/sse", 1);
    let mut a_user = subscribe(&a, &sse_path("lu", &[]), 2);
    let mut b_anon = subscribe(&b, "/sse", 1);
    let mut b_user = subscribe(&b, &sse_path("lu", &[]), 2);

    let local_all = ok_json(broadcast(a.api, "local-all", "scope=local"));
    check_answer(&local_all, Value::Null, 2, "local broadcast");
    let local_user = ok_json(publish_user(a.api, "lu", "local-user", "scope=local"));
    check_answer(&local_user, Value::Null, 1, "local user publish");
    let local_batch = ok_json(http(
        a.api,
        "POST",
        "/v1/publish?scope=local",
        &[("Content-Type", "application/json")],
        json!({ "messages": [{ "room": "nobody", "data": "local-room" }] }).to_string().as_bytes(),
    ));
    check_answer(&local_batch["results"][0], Value::Null, 0, "local batch");
    // A cluster publish after them: on B it must be the first event.
    let cluster = ok_json(broadcast(a.api, "cluster-all", ""));
    check_answer(&cluster, json!(2), 2, "cluster broadcast");

    let (l_all, l_user, c_all) = (id_of(&local_all), id_of(&local_user), id_of(&cluster));
    assert_eq!(
        take(&mut a_anon, 2, "A anonymous"),
        vec![ev(&l_all, None, "local-all"), ev(&c_all, None, "cluster-all")]
    );
    assert_eq!(
        take(&mut a_user, 3, "A user"),
        vec![ev(&l_all, None, "local-all"), ev(&l_user, None, "local-user"), ev(&c_all, None, "cluster-all")]
    );
    assert_eq!(take(&mut b_anon, 1, "B anonymous"), vec![ev(&c_all, None, "cluster-all")]);
    assert_eq!(take(&mut b_user, 1, "B user"), vec![ev(&c_all, None, "cluster-all")]);
    assert_quiet(
        &mut [
            ("A anonymous", &mut a_anon),
            ("A user", &mut a_user),
            ("B anonymous", &mut b_anon),
            ("B user", &mut b_user),
        ],
        Duration::from_millis(300),
    );
    assert_eq!(bus(&b)["received"], json!(1), "B got only the cluster publish: {}", bus(&b));
    assert_eq!(bus(&a)["published"], json!(1), "A put only the cluster publish on the bus: {}", bus(&a));
}

/// A batch with thousands of messages for one stream reaches reading
/// subscribers on both instances whole at the default queue bounds (100
/// frames): the instance that receives it from the bus delivers the entry's
/// thousands of messages within a turn or two, as the publishing one does.
/// (Before the sockets took such bursts as they came, 600 and 500 of 5,000
/// arrived.)
#[test]
fn a_batch_larger_than_a_stream_queue_reaches_readers_on_every_instance_whole() {
    if !require_redis() {
        return;
    }
    const MESSAGES: usize = 5000;
    let redis = RedisServer::start(&[]);
    let a = instance(None, &redis.url(), &[]);
    let b = instance(None, &redis.url(), &[]);
    let readers: Vec<_> = [&a, &b]
        .into_iter()
        .enumerate()
        .map(|(n, server)| {
            let mut client = subscribe(server, &sse_path(&format!("reader{n}"), &["hall"]), 1);
            std::thread::spawn(move || {
                let mut got = Vec::with_capacity(MESSAGES);
                while got.len() < MESSAGES {
                    match client.next_event(Duration::from_secs(20)) {
                        Some(event) => got.push(event.data),
                        None => break,
                    }
                }
                got
            })
        })
        .collect();
    let messages: Vec<Value> =
        (0..MESSAGES).map(|n| json!({ "room": "hall", "data": format!("{n:04}{}", "y".repeat(200)) })).collect();
    let answer = ok_json(publish_batch(a.api, &json!(messages)));
    assert_eq!(answer["results"].as_array().map(Vec::len), Some(MESSAGES), "{answer}");
    for (n, reader) in readers.into_iter().enumerate() {
        let got = reader.join().expect("reader thread");
        assert_eq!(got.len(), MESSAGES, "instance {n}: the reading subscriber lost messages");
        assert!(
            got.iter().enumerate().all(|(i, data)| data.starts_with(&format!("{i:04}"))),
            "instance {n}: out of order"
        );
    }
    for server in [&a, &b] {
        let stats = server.stats();
        assert_eq!(stat(&stats, "droppedOldest"), 0, "{stats}");
    }
}

// ---------------------------------------------------------------------------
// 6. Sentinel failover
// ---------------------------------------------------------------------------

#[test]
fn sentinel_failover_is_followed_without_restarting() {
    if !require_sentinel() {
        return;
    }
    follow_a_failover(SentinelSet::start(1), &[]);
}

/// Two instances on `set` (with `extra` flags) deliver to each other before
/// and after the master is killed and Sentinel promotes the replica.
fn follow_a_failover(mut set: SentinelSet, extra: &[&str]) {
    let url = set.url();
    let a = instance(None, &url, extra);
    let b = instance(None, &url, extra);
    let mut on_a = subscribe(&a, "/sse", 1);
    let mut on_b = subscribe(&b, "/sse", 1);

    let before = ok_json(broadcast(a.api, "before-failover", ""));
    check_answer(&before, json!(2), 1, "publish before the failover");
    let first = vec![ev(&id_of(&before), None, "before-failover")];
    assert_eq!(take(&mut on_a, 1, "A before the failover"), first);
    assert_eq!(take(&mut on_b, 1, "B before the failover"), first);

    let old_master = set.master.addr();
    let new_master = set.replica.addr();
    set.master.stop();
    let killed = Instant::now();
    let promoted = wait_until(Duration::from_secs(30), || {
        set.master_seen_by(&set.sentinels[0]).as_deref() == Some(&new_master[..])
            && set.replica.cli(&["ROLE"]).is_some_and(|r| r.lines().next().map(str::trim) == Some("master"))
    });
    assert!(
        promoted,
        "no failover from {old_master} to {new_master} within 30 s; sentinel says {:?}; logs:\n{}",
        set.master_seen_by(&set.sentinels[0]),
        set.logs()
    );
    eprintln!("sentinel promoted {new_master} {:?} after the master was killed", killed.elapsed());
    let left = Duration::from_secs(30).saturating_sub(killed.elapsed()).max(READY_TIMEOUT);
    wait_ready_within(&a, left, "after the failover");
    wait_ready_within(&b, left, "after the failover");
    eprintln!("both instances ready {:?} after the master was killed", killed.elapsed());

    let from_a = ok_json(broadcast(a.api, "after-a", ""));
    check_answer(&from_a, json!(2), 1, "publish on A after the failover");
    let expected = vec![ev(&id_of(&from_a), None, "after-a")];
    assert_eq!(take(&mut on_a, 1, "A after the failover, from A"), expected);
    assert_eq!(take(&mut on_b, 1, "B after the failover, from A"), expected);
    let from_b = ok_json(broadcast(b.api, "after-b", ""));
    check_answer(&from_b, json!(2), 1, "publish on B after the failover");
    let expected = vec![ev(&id_of(&from_b), None, "after-b")];
    assert_eq!(take(&mut on_a, 1, "A after the failover, from B"), expected);
    assert_eq!(take(&mut on_b, 1, "B after the failover, from B"), expected);
    assert_quiet(&mut [("A", &mut on_a), ("B", &mut on_b)], Duration::from_millis(300));
    assert!(bus_count(&a, "reconnects") > 0, "A: {}", bus(&a));
    assert!(bus_count(&b, "reconnects") > 0, "B: {}", bus(&b));
}

// ---------------------------------------------------------------------------
// 7. Cluster
// ---------------------------------------------------------------------------

#[test]
fn cluster_instances_on_different_nodes_reach_each_other() {
    if !require_redis() {
        return;
    }
    let cluster = RedisCluster::start(3);
    let a = instance(None, &cluster.url_via(0), &[]);
    let b = instance(None, &cluster.url_via(2), &[]);
    let mut on_a = subscribe(&a, "/sse", 1);
    let mut on_b = subscribe(&b, &sse_path("cu", &[]), 1);

    // Messages from different publishers travel through different nodes (and
    // the cluster bus between them), so only each publisher's own order is
    // promised: B publishes once A's messages have arrived.
    let from_a = ok_json(broadcast(a.api, "from-a", ""));
    assert_eq!(from_a["delivered"], json!(1), "{from_a}");
    let to_user = ok_json(publish_user(a.api, "cu", "a-to-cu", "event=direct"));
    assert_eq!(to_user["delivered"], json!(0), "{to_user}");
    assert_eq!(take(&mut on_a, 1, "A, from A"), vec![ev(&id_of(&from_a), None, "from-a")]);
    assert_eq!(
        take(&mut on_b, 2, "B, from A"),
        vec![ev(&id_of(&from_a), None, "from-a"), ev(&id_of(&to_user), Some("direct"), "a-to-cu")]
    );
    let from_b = ok_json(broadcast(b.api, "from-b", ""));
    assert_eq!(from_b["delivered"], json!(1), "{from_b}");
    assert_eq!(take(&mut on_a, 1, "A, from B"), vec![ev(&id_of(&from_b), None, "from-b")]);
    assert_eq!(take(&mut on_b, 1, "B, from B"), vec![ev(&id_of(&from_b), None, "from-b")]);
    // Redis 7: sharded Pub/Sub, so the answer counts every instance
    // subscribed to the partition's channel on its node.
    for answer in [&from_a, &to_user, &from_b] {
        assert_eq!(answer["instances"], json!(2), "`instances` is SPUBLISH's reply: {answer}");
    }
    assert_quiet(&mut [("A", &mut on_a), ("B", &mut on_b)], Duration::from_millis(300));
    // Instances on different nodes hear each other (plain Pub/Sub crosses
    // the cluster bus): presence asked on A counts B's subscriber.
    assert!(wait_until(Duration::from_secs(10), || bus(&a)["instances"] == 2 && bus(&b)["instances"] == 2));
    let presence = http(a.api, "GET", "/v1/users/cu/presence", &[], b"").json();
    assert_eq!(presence, json!({ "user": "cu", "online": true, "connections": 1, "instances": 2 }));
}

#[test]
fn cluster_command_connections_outlive_redis_closing_idle_clients() {
    if !require_redis() {
        return;
    }
    let cluster = RedisCluster::start(3);
    // `timeout 1`: Redis closes an ordinary client idle for over a second.
    // The instance's connections to the nodes whose partitions carry no
    // traffic must not go idle and take the session down with them.
    for node in &cluster.nodes {
        node.ok(&["CONFIG", "SET", "timeout", "1"]);
    }
    let a = instance(None, &cluster.url_via(0), &[]);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(bus_count(&a, "reconnects"), 0, "a connection was closed as idle: {}", bus(&a));
    // Users spread over the partitions, so every node's connection is used.
    for n in 0..32 {
        let answer = ok_json(publish_user(a.api, &format!("idle{n}"), "after the quiet", ""));
        assert_eq!(answer["delivered"], json!(0), "{answer}");
    }
    assert_eq!(bus_count(&a, "reconnects"), 0, "{}", bus(&a));
}

// ---------------------------------------------------------------------------
// 8. TLS (rediss://)
// ---------------------------------------------------------------------------

/// Waits `for_how_long` and checks that `/readyz` stayed 503 throughout, that
/// a cluster publish is refused with 503 `bus_unavailable`, and that the log
/// holds every one of `log_says`.
fn assert_bus_stays_down(server: &Server, for_how_long: Duration, log_says: &[&str], what: &str) {
    let until = Instant::now() + for_how_long;
    while Instant::now() < until {
        let resp = readyz(server);
        assert_eq!(resp.status, 503, "{what}: /readyz {} {:?}; logs:\n{}", resp.status, resp.text(), server.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_bus_unavailable(&broadcast(server.api, "must-not-pass", ""), what);
    let logs = server.logs();
    for needle in log_says {
        assert!(logs.contains(needle), "{what}: the log does not say `{needle}`:\n{logs}");
    }
    assert_ne!(bus(server)["state"], "live", "{what}: {}", bus(server));
}

#[test]
fn rediss_instances_with_a_private_ca_deliver_every_message_once() {
    if !require_redis() {
        return;
    }
    let pki = TestPki::generate("bus");
    let redis = RedisServer::start_tls(&pki, false);
    let url = redis.url();
    assert!(url.starts_with("rediss://"), "{url}");
    let ca = ["--redis-ca", TestPki::arg(&pki.ca)];
    let a = instance(None, &url, &ca);
    let b = instance(None, &url, &ca);
    assert!(a.logs().contains("rediss://127.0.0.1"), "the log names the TLS address:\n{}", a.logs());

    let mut a_user = subscribe(&a, &sse_path("t", &[]), 1);
    let mut a_anon = subscribe(&a, "/sse", 2);
    let mut b_user = subscribe(&b, &sse_path("t", &[]), 1);
    let mut b_anon = subscribe(&b, "/sse", 2);

    let to_user = ok_json(publish_user(a.api, "t", "over-tls", ""));
    check_answer(&to_user, json!(2), 1, "user publish on A");
    // Larger than a TLS record (16 KiB) and than rustls' 64 KiB send buffer:
    // the write goes out in rounds and the read is reassembled from records.
    let big = "x".repeat(200 * 1024);
    let to_all = ok_json(broadcast(a.api, &big, ""));
    check_answer(&to_all, json!(2), 2, "large broadcast on A");
    let from_b = ok_json(publish_batch(b.api, &json!([{ "all": true, "data": "from-b", "event": "b" }])));
    check_answer(&from_b["results"][0], json!(2), 2, "batch on B");

    let user = vec![ev(&id_of(&to_user), None, "over-tls"), ev(&id_of(&to_all), None, &big)];
    let from_b = vec![ev(&id_of(&from_b["results"][0]), Some("b"), "from-b")];
    for (name, client) in [("A user", &mut a_user), ("B user", &mut b_user)] {
        assert_eq!(take(client, 2, name), user, "{name}");
        assert_eq!(take(client, 1, name), from_b, "{name}");
    }
    for (name, client) in [("A anonymous", &mut a_anon), ("B anonymous", &mut b_anon)] {
        assert_eq!(take(client, 1, name), user[1..], "{name}");
        assert_eq!(take(client, 1, name), from_b, "{name}");
    }
    assert_quiet(
        &mut [
            ("A user", &mut a_user),
            ("A anonymous", &mut a_anon),
            ("B user", &mut b_user),
            ("B anonymous", &mut b_anon),
        ],
        Duration::from_millis(400),
    );
    assert_eq!(bus(&a)["received"], json!(1), "A got B's one message: {}", bus(&a));
    assert_eq!(bus(&b)["received"], json!(2), "B got A's two messages: {}", bus(&b));
    assert_eq!(bus(&a)["reconnects"], json!(0), "no TLS session was lost: {}", bus(&a));
}

#[test]
fn rediss_refuses_a_server_certificate_the_ca_did_not_sign() {
    if !require_redis() {
        return;
    }
    let trusted = TestPki::generate("trusted");
    let other = TestPki::generate("other");
    let redis = RedisServer::start_tls(&other, false);
    let url = redis.url();
    let address = format!("TLS handshake with 127.0.0.1:{} failed", redis.port());
    let with_ca = Server::start(&["--redis", &url, "--redis-ca", TestPki::arg(&trusted.ca), "--bus-timeout", "1s"]);
    // Mozilla's roots alone do not know a private CA either.
    let without_ca = Server::start(&["--redis", &url, "--bus-timeout", "1s"]);
    for (server, what) in [(&with_ca, "another CA given"), (&without_ca, "no CA given")] {
        assert_bus_stays_down(server, Duration::from_millis(1500), &[&address, "invalid peer certificate"], what);
        let last_error = bus(server)["lastError"].as_str().unwrap_or_default().to_string();
        assert!(last_error.contains("invalid peer certificate"), "{what}: bus.lastError {last_error:?}");
        assert!(bus_count(server, "reconnects") > 0, "{what}: it keeps retrying: {}", bus(server));
        eprintln!("{what}: bus {}", bus(server));
    }
}

#[test]
fn rediss_client_certificate_is_presented_when_redis_requires_one() {
    if !require_redis() {
        return;
    }
    let pki = TestPki::generate("mtls");
    let redis = RedisServer::start_tls(&pki, true);
    let url = redis.url();
    let ca = TestPki::arg(&pki.ca);
    let with_cert = instance(
        None,
        &url,
        &[
            "--redis-ca",
            ca,
            "--redis-cert",
            TestPki::arg(&pki.client_cert),
            "--redis-key",
            TestPki::arg(&pki.client_key),
        ],
    );
    let mut on = subscribe(&with_cert, "/sse", 1);
    let answer = ok_json(broadcast(with_cert.api, "mutual", ""));
    check_answer(&answer, json!(1), 1, "publish with a client certificate");
    assert_eq!(take(&mut on, 1, "subscriber"), vec![ev(&id_of(&answer), None, "mutual")]);

    let without_cert = Server::start(&["--redis", &url, "--redis-ca", ca, "--bus-timeout", "1s"]);
    assert_bus_stays_down(&without_cert, Duration::from_millis(1500), &["TLS", "alert"], "no client certificate");
    eprintln!("without a client certificate: bus {}", bus(&without_cert));
}

#[test]
fn rediss_cluster_spreads_partitions_over_every_node() {
    if !require_redis() {
        return;
    }
    let pki = TestPki::generate("cluster");
    let cluster = RedisCluster::start_tls(3, &pki);
    let ca = ["--redis-ca", TestPki::arg(&pki.ca)];
    // A knows only node 0, B only node 2: the partitions on the other nodes
    // are found through MOVED, over TLS as well.
    let a = instance(None, &cluster.url_via(0), &ca);
    let b = instance(None, &cluster.url_via(2), &ca);
    let users: Vec<String> = (0..24).map(|n| format!("spread{n}")).collect();
    let mut on_b: Vec<SseClient> =
        users.iter().enumerate().map(|(n, u)| subscribe(&b, &sse_path(u, &[]), n as u64 + 1)).collect();
    let mut expected = Vec::new();
    for user in &users {
        let answer = ok_json(publish_user(a.api, user, &format!("to {user}"), ""));
        expected.push(ev(&id_of(&answer), None, &format!("to {user}")));
    }
    for ((user, client), expected) in users.iter().zip(&mut on_b).zip(&expected) {
        assert_eq!(take(client, 1, user), vec![expected.clone()], "{user} on B");
    }
    let keys_per_node: Vec<usize> = cluster
        .nodes
        .iter()
        .map(|node| node.cli(&["DBSIZE"]).and_then(|n| n.trim().parse().ok()).unwrap_or(0))
        .collect();
    assert!(keys_per_node.iter().all(|&n| n > 0), "every node holds some partitions' logs: {keys_per_node:?}");
    // Redis 7: each partition's channel is a shard channel on its own node.
    for node in &cluster.nodes {
        let channels = node.cli(&["PUBSUB", "SHARDCHANNELS"]).unwrap_or_default();
        assert!(channels.contains(":n"), "node {} has no shard channel subscribed: {channels:?}", node.addr());
    }
    assert_eq!(bus_count(&a, "reconnects"), 0, "MOVED is followed without a reconnect: {}", bus(&a));
}

#[test]
fn cluster_master_failover_is_followed_and_retries_arrive_once() {
    if !require_redis() {
        return;
    }
    let mut cluster = RedisCluster::start_with_replicas(3);
    let a = instance(None, &cluster.url_via(0), &[]);
    let b = instance(None, &cluster.url_via(1), &[]);
    let mut on_a = subscribe(&a, "/sse", 1);
    let mut on_b = subscribe(&b, "/sse", 1);
    let first = ok_json(broadcast(a.api, "before", ""));
    let expected = vec![ev(&id_of(&first), None, "before")];
    assert_eq!(take(&mut on_a, 1, "A"), expected);
    assert_eq!(take(&mut on_b, 1, "B"), expected);

    // Node 0, a master and A's only seed, dies; its replica takes over its
    // slots and the bus log partitions on them. A comes back through a node
    // it learnt from CLUSTER NODES. Until the failover is done, publishes
    // touching the lost slots get 503; the publisher retries with the same
    // id until one is acknowledged, and the message arrives once everywhere.
    let gone = cluster.nodes[0].addr();
    cluster.nodes[0].stop();
    let mut after = None;
    let acknowledged = wait_until(Duration::from_secs(30), || {
        let resp = broadcast(a.api, "after", "id=after-failover");
        if resp.status == 200 {
            after = Some(resp.json());
            return true;
        }
        assert_bus_unavailable(&resp, "a publish during the cluster failover");
        std::thread::sleep(Duration::from_millis(200));
        false
    });
    assert!(acknowledged, "nothing acknowledged after {gone} died: bus {}; logs:\n{}", bus(&a), a.logs());
    let after = after.expect("acknowledged");
    // A 503 says "not acknowledged", not "not appended": when an attempt
    // reached the log before its answer was lost, the retry that gets 200
    // is the duplicate (delivered there already). Either way it arrives
    // once on each instance, below.
    let first_landing = after["delivered"] == json!(1) && after.get("duplicate").is_none();
    assert!(first_landing || after["duplicate"] == json!(true), "{after}");
    let learned: Vec<String> = cluster.nodes[1..].iter().map(RedisServer::addr).collect();
    let logs = a.logs();
    assert!(
        learned.iter().any(|node| logs.contains(&format!("bus live redis={node}"))),
        "A should have subscribed on a learned node {learned:?}:\n{logs}"
    );
    let expected = vec![ev("after-failover", None, "after")];
    assert_eq!(take(&mut on_a, 1, "A after the failover"), expected);
    assert_eq!(take(&mut on_b, 1, "B after the failover"), expected);
    assert_quiet(&mut [("A", &mut on_a), ("B", &mut on_b)], Duration::from_millis(300));
}

#[test]
fn rediss_sentinel_failover_is_followed_over_tls() {
    if !require_sentinel() {
        return;
    }
    let pki = TestPki::generate("sentinel");
    let set = SentinelSet::start_tls(1, &pki);
    assert!(set.url().starts_with("rediss-sentinel://"), "{}", set.url());
    follow_a_failover(set, &["--redis-ca", TestPki::arg(&pki.ca)]);
}

#[test]
fn unusable_tls_files_fail_start_up_with_exit_2() {
    let garbage = std::env::temp_dir().join(format!("ssekify-not-a-ca-{}.pem", std::process::id()));
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64 !\n-----END CERTIFICATE-----\n").unwrap();
    let missing = "/nonexistent/ssekify-ca.pem";
    for (args, says) in [
        (
            vec!["--redis", "rediss://127.0.0.1:1", "--redis-ca", missing],
            "--redis-ca: /nonexistent/ssekify-ca.pem: cannot be read",
        ),
        (vec!["--redis", "rediss://127.0.0.1:1", "--redis-ca", garbage.to_str().unwrap()], "--redis-ca:"),
        (vec!["--redis", "redis://127.0.0.1:1", "--redis-ca", missing], "--redis-ca: is for a rediss:// address"),
        (vec!["--redis", "rediss://127.0.0.1:1", "--redis-cert", missing], "--redis-key:"),
    ] {
        let err = match Server::try_start(&args) {
            Ok(server) => panic!("ssekify started with {args:?}; logs:\n{}", server.logs()),
            Err(err) => err,
        };
        assert!(err.contains("exit status: 2"), "{args:?}: expected exit status 2: {err}");
        let output = err.split_once("output:").map(|(_, o)| o).unwrap_or(&err);
        assert!(output.contains(says), "{args:?}: the refusal should say `{says}`: {err}");
        assert_eq!(output.trim().lines().count(), 1, "{args:?}: one sentence: {output}");
    }
    let _ = std::fs::remove_file(&garbage);
}

// ---------------------------------------------------------------------------
// 9. RESP3
// ---------------------------------------------------------------------------

#[test]
fn resp3_instances_deliver_to_each_other() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    let url = format!("{}?protocol=resp3", redis.url());
    let a = instance(None, &url, &[]);
    let b = instance(None, &url, &[]);
    let mut on_a = subscribe(&a, "/sse", 1);
    let mut on_b = subscribe(&b, "/sse", 1);

    let from_a = ok_json(broadcast(a.api, "resp3-a", ""));
    check_answer(&from_a, json!(2), 1, "publish on A");
    let expected = vec![ev(&id_of(&from_a), None, "resp3-a")];
    assert_eq!(take(&mut on_a, 1, "A, from A"), expected);
    assert_eq!(take(&mut on_b, 1, "B, from A"), expected);
    let from_b = ok_json(publish_batch(b.api, &json!([{ "all": true, "data": "resp3-b", "event": "x" }])));
    check_answer(&from_b["results"][0], json!(2), 1, "batch on B");
    let expected = vec![ev(&id_of(&from_b["results"][0]), Some("x"), "resp3-b")];
    assert_eq!(take(&mut on_a, 1, "A, from B"), expected);
    assert_eq!(take(&mut on_b, 1, "B, from B"), expected);
    assert_quiet(&mut [("A", &mut on_a), ("B", &mut on_b)], Duration::from_millis(300));
    assert_eq!(bus(&a)["received"], json!(1));
    assert_eq!(bus(&b)["received"], json!(1));
}

/// A publisher that got a 503 (Redis's acknowledgement lost) retries with the
/// same id, on the same instance or another: the log recognises the retry, no
/// instance delivers it twice, and the answer says so.
#[test]
fn a_retry_with_the_same_id_is_delivered_once_on_every_instance() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    let a = instance(None, &redis.url(), &[]);
    let b = instance(None, &redis.url(), &[]);
    let mut a_user = subscribe(&a, &sse_path("rt", &["lobby"]), 1);
    let mut b_user = subscribe(&b, &sse_path("rt", &["lobby"]), 1);
    let expected =
        vec![ev("order-42", None, "order shipped"), ev("room-7", None, "room news"), ev("all-3", None, "for all")];
    for (attempt, api) in [a.api, a.api, b.api].into_iter().enumerate() {
        let answers = [
            ok_json(publish_user(api, "rt", "order shipped", "id=order-42")),
            ok_json(publish_room(api, "lobby", "room news", "id=room-7")),
            ok_json(broadcast(api, "for all", "id=all-3")),
        ];
        for answer in &answers {
            if attempt == 0 {
                assert_eq!(answer.get("duplicate"), None, "first attempt: {answer}");
            } else {
                assert_eq!(answer["duplicate"], json!(true), "retry {attempt}: {answer}");
                assert_eq!(answer["delivered"], json!(0), "retry {attempt}: {answer}");
            }
        }
        if attempt == 0 {
            assert_eq!(take(&mut a_user, 3, "A user"), expected);
            assert_eq!(take(&mut b_user, 3, "B user"), expected);
        }
    }
    ok_json(publish_user(b.api, "rt", "next", "id=order-43"));
    assert_eq!(take(&mut a_user, 1, "A user after the retries"), vec![ev("order-43", None, "next")]);
    assert_eq!(take(&mut b_user, 1, "B user after the retries"), vec![ev("order-43", None, "next")]);
}

/// A batch retried with the same `Idempotency-Key` on another instance (which
/// has not seen the key) is recognised by the log: delivered once everywhere,
/// answered with the ids the first attempt was given.
#[test]
fn an_idempotency_key_retried_on_another_instance_is_delivered_once() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    let a = instance(None, &redis.url(), &[]);
    let b = instance(None, &redis.url(), &[]);
    let mut on_a = subscribe(&a, &sse_path("ik", &[]), 1);
    let mut on_b = subscribe(&b, &sse_path("ik", &[]), 1);
    let batch = json!({ "messages": [{ "user": "ik", "data": "one" }, { "all": true, "data": "two" }] });
    let post = |server: &Server| {
        ok_json(http(
            server.api,
            "POST",
            "/v1/publish",
            &[("Content-Type", "application/json"), ("Idempotency-Key", "order-9-batch")],
            batch.to_string().as_bytes(),
        ))
    };
    let first = post(&a);
    let ids: Vec<String> = first["results"].as_array().unwrap().iter().map(id_of).collect();
    let expected = vec![ev(&ids[0], None, "one"), ev(&ids[1], None, "two")];
    assert_eq!(take(&mut on_a, 2, "A"), expected);
    assert_eq!(take(&mut on_b, 2, "B"), expected);

    let retry = post(&b);
    for (result, id) in retry["results"].as_array().unwrap().iter().zip(&ids) {
        assert_eq!(result["duplicate"], json!(true), "{retry}");
        assert_eq!(&id_of(result), id, "the retry is told the first attempt's ids: {retry}");
    }
    assert_quiet(&mut [("A", &mut on_a), ("B", &mut on_b)], Duration::from_millis(400));
}

// ---------------------------------------------------------------------------
// Tenants: apart on the shared log
// ---------------------------------------------------------------------------

/// A tenant's publish on one instance reaches that tenant's subscribers on
/// the other, once, and never the same-named user or room of the default
/// namespace or of another tenant. A takes every tenant (no `--tenants`), B
/// the ones `--tenants` lists. In RESP2 and RESP3.
#[test]
fn tenant_messages_cross_instances_and_stay_in_their_namespaces() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    for protocol in ["resp2", "resp3"] {
        let url = format!("{}?protocol={protocol}", redis.url());
        tenant_round(&url, &format!("tenants-test-{protocol}"));
    }
}

fn tenant_round(url: &str, channel: &str) {
    let a = instance(None, url, &["--channel", channel]);
    let b = instance(None, url, &["--channel", channel, "--tenants", "acme,globex"]);
    let tenant_path = |tenant: &str, user: &str, rooms: &[&str]| format!("/t/{tenant}{}", sse_path(user, rooms));

    let mut a_acme = subscribe(&a, &tenant_path("acme", "u", &["r"]), 1);
    let mut b_acme = subscribe(&b, &tenant_path("acme", "u", &["r"]), 1);
    let mut b_acme_anon = subscribe(&b, &tenant_path("acme", "", &[]), 2);
    let mut b_default = subscribe(&b, &sse_path("u", &["r"]), 3);
    let mut b_globex = subscribe(&b, &tenant_path("globex", "u", &["r"]), 4);

    let post = |server: &Server, path: &str, body: &str| -> Value {
        ok_json(http(server.api, "POST", path, &[("Content-Type", "text/plain")], body.as_bytes()))
    };
    // On A, to acme: A's own subscriber once (echo skipped), B's acme ones.
    let to_user = post(&a, "/v1/t/acme/users/u/events", "acme u");
    check_answer(&to_user, json!(2), 1, "acme user publish on A");
    let to_room = post(&a, "/v1/t/acme/rooms/r/events", "acme r");
    check_answer(&to_room, json!(2), 1, "acme room publish on A");
    let to_all = post(&a, "/v1/t/acme/broadcast", "acme all");
    check_answer(&to_all, json!(2), 1, "acme broadcast on A");
    let batch =
        json!({ "messages": [{ "user": "u", "data": "acme batch u" }, { "all": true, "data": "acme batch all" }] });
    let batch = ok_json(http(
        a.api,
        "POST",
        "/v1/t/acme/publish",
        &[("Content-Type", "application/json")],
        batch.to_string().as_bytes(),
    ));
    let batch_ids: Vec<String> = batch["results"].as_array().unwrap().iter().map(id_of).collect();
    // On A, to the default namespace: B's default subscriber only.
    let plain = post(&a, "/v1/broadcast", "default all");
    check_answer(&plain, json!(2), 0, "default broadcast on A");

    let acme_u = vec![
        ev(&id_of(&to_user), None, "acme u"),
        ev(&id_of(&to_room), None, "acme r"),
        ev(&id_of(&to_all), None, "acme all"),
        ev(&batch_ids[0], None, "acme batch u"),
        ev(&batch_ids[1], None, "acme batch all"),
    ];
    assert_eq!(take(&mut a_acme, 5, "acme u on A"), acme_u);
    assert_eq!(take(&mut b_acme, 5, "acme u on B"), acme_u);
    assert_eq!(
        take(&mut b_acme_anon, 2, "acme anonymous on B"),
        vec![ev(&id_of(&to_all), None, "acme all"), ev(&batch_ids[1], None, "acme batch all")]
    );
    assert_eq!(take(&mut b_default, 1, "default u on B"), vec![ev(&id_of(&plain), None, "default all")]);

    // On B (listed tenants), to acme: back to A through its pattern, once.
    let from_b = post(&b, "/v1/t/acme/users/u/events", "from B");
    check_answer(&from_b, json!(2), 1, "acme user publish on B");
    assert_eq!(take(&mut a_acme, 1, "acme u on A, from B"), vec![ev(&id_of(&from_b), None, "from B")]);
    assert_eq!(take(&mut b_acme, 1, "acme u on B, from B"), vec![ev(&id_of(&from_b), None, "from B")]);

    // A tenant B does not list: B hears it on the shared log and drops it.
    let unlisted = post(&a, "/v1/t/initech/users/u/events", "initech u");
    check_answer(&unlisted, json!(2), 0, "unlisted tenant publish on A");

    assert_quiet(
        &mut [
            ("acme u on A", &mut a_acme),
            ("acme u on B", &mut b_acme),
            ("acme anonymous on B", &mut b_acme_anon),
            ("default u on B", &mut b_default),
            ("globex u on B", &mut b_globex),
        ],
        Duration::from_millis(500),
    );
    assert_eq!(bus(&b)["received"], json!(6), "five acme messages and one default one from A: {}", bus(&b));
}
