//! `Idempotency-Key` on the publish routes: a repeat within
//! `--idempotency-window` gets the first answer again and delivers nothing;
//! only successful answers are remembered; keys are 1–256 visible ASCII bytes;
//! the memory keys take is bounded by `--idempotency-max-bytes`, and failed
//! publishes take none. Every request goes on a fresh TCP connection to a
//! 4-shard server, so repeats land on different shards, except in the memory
//! tests, which need many requests quickly.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const SHARDS: &[&str] = &["--shards", "4"];

/// One publish route and a valid body for it.
struct Route {
    name: &'static str,
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ROUTES: [Route; 4] = [
    Route { name: "user", path: "/v1/users/u/events", content_type: "text/plain", body: "to u" },
    Route { name: "room", path: "/v1/rooms/r/events", content_type: "text/plain", body: "to r" },
    Route { name: "broadcast", path: "/v1/broadcast", content_type: "text/plain", body: "to all" },
    Route {
        name: "batch",
        path: "/v1/publish",
        content_type: "application/json",
        body: r#"{"messages":[{"user":"u","data":"batch to u"},{"room":"r","data":"batch to r"},{"all":true,"data":"batch to all"}]}"#,
    },
];

/// `POST path` with `Idempotency-Key: key` (when given) on a fresh connection.
fn post(api: SocketAddr, path: &str, key: Option<&str>, content_type: &str, body: &str) -> HttpResponse {
    let mut headers = vec![("Content-Type", content_type)];
    if let Some(key) = key {
        headers.push(("Idempotency-Key", key));
    }
    http(api, "POST", path, &headers, body.as_bytes())
}

/// Data of every event a client receives up to (and including) the broadcast
/// marker `end`; publishes the marker first.
fn events_until_marker(api: SocketAddr, clients: &mut [&mut SseClient]) -> Vec<Vec<String>> {
    ok_json(broadcast(api, "end", "event=end"));
    clients
        .iter_mut()
        .map(|c| {
            let mut got = Vec::new();
            loop {
                let ev = c.expect_event("events before the end marker");
                if ev.event.as_deref() == Some("end") {
                    break got;
                }
                got.push(ev.data);
            }
        })
        .collect()
}

/// Ids in a single or batch answer.
fn answer_ids(answer: &Value) -> Vec<String> {
    match answer["results"].as_array() {
        Some(results) => results.iter().map(|r| r["id"].as_str().expect("id").to_string()).collect(),
        None => vec![answer["id"].as_str().expect("id").to_string()],
    }
}

#[test]
fn a_repeat_gets_the_first_answer_and_delivers_nothing() {
    let server = Server::start(SHARDS);
    let api = server.api;
    for route in &ROUTES {
        let name = route.name;
        let mut first_sub = SseClient::open_ready(server.public, "/sse?userId=u&rooms=r");
        wait_connections(api, 1);
        let key = format!("key-{name}");
        let first = post(api, route.path, Some(&key), route.content_type, route.body);
        assert_eq!(first.status, 200, "{name}: {:?}", first.text());
        assert_eq!(first.header("idempotent-replayed"), None, "{name}: the first answer is not a replay");
        let first_body = first.json();
        let first_ids = answer_ids(&first_body);

        // A second subscriber: a real publish would now reach two connections,
        // a remembered answer still says what the first one did.
        let mut second_sub = SseClient::open_ready(server.public, "/sse?userId=u&rooms=r");
        wait_connections(api, 2);
        for attempt in 0..8 {
            let again = post(api, route.path, Some(&key), route.content_type, route.body);
            assert_eq!(again.status, 200, "{name} repeat {attempt}: {:?}", again.text());
            assert_eq!(again.json(), first_body, "{name} repeat {attempt}: the first answer, unchanged");
            assert_eq!(again.header("idempotent-replayed"), Some("true"), "{name} repeat {attempt}");
        }

        // Another key publishes again, with new ids.
        let other = post(api, route.path, Some(&format!("other-{name}")), route.content_type, route.body);
        let other_body = ok_json(other);
        let other_ids = answer_ids(&other_body);
        for (a, b) in first_ids.iter().zip(&other_ids) {
            assert_ne!(a, b, "{name}: a different key is a new publish");
        }

        let got = events_until_marker(api, &mut [&mut first_sub, &mut second_sub]);
        let per_publish = if name == "batch" { 3 } else { 1 };
        assert_eq!(
            got[0].len(),
            2 * per_publish,
            "{name}: first subscriber sees the keyed publish once and the other key once: {got:?}"
        );
        assert_eq!(got[1].len(), per_publish, "{name}: second subscriber sees only the other key's publish: {got:?}");
        assert_eq!(got[0][..per_publish], got[1][..], "{name}: {got:?}");
        drop((first_sub, second_sub));
        wait_connections(api, 0);
    }
}

#[test]
fn a_failed_request_can_be_retried_with_the_same_key() {
    let server = Server::start(SHARDS);
    let api = server.api;
    let mut sub = SseClient::open_ready(server.public, "/sse?userId=u&rooms=r");
    wait_connections(api, 1);

    // Single route: the body is not the JSON it claims to be.
    post(api, "/v1/users/u/events", Some("retry-me"), "application/json", "{bad").assert_error(400, "invalid_request");
    let ok = post(api, "/v1/users/u/events", Some("retry-me"), "application/json", r#"{"n":1}"#);
    let ok_body = ok_json(ok);
    assert_eq!(ok_body["delivered"], 1, "{ok_body}");
    let again = post(api, "/v1/users/u/events", Some("retry-me"), "application/json", r#"{"n":1}"#);
    assert_eq!((again.status, again.json()), (200, ok_body.clone()));

    // Batch: one invalid message refuses the whole batch, the key stays free.
    let bad = r#"{"messages":[{"user":"u","data":"b1"},{"user":"a,b","data":"b2"}]}"#;
    post(api, "/v1/publish", Some("batch-retry"), "application/json", bad).assert_error(400, "invalid_request");
    let good = r#"{"messages":[{"user":"u","data":"b1"},{"room":"r","data":"b2"}]}"#;
    let batch_body = ok_json(post(api, "/v1/publish", Some("batch-retry"), "application/json", good));
    let again = post(api, "/v1/publish", Some("batch-retry"), "application/json", good);
    assert_eq!((again.status, again.json()), (200, batch_body));

    let got = events_until_marker(api, &mut [&mut sub]);
    assert_eq!(got[0], [r#"{"n":1}"#, "b1", "b2"], "each successful publish exactly once");
}

#[test]
fn keys_must_be_1_to_256_visible_ascii_bytes() {
    let server = Server::start(SHARDS);
    let api = server.api;
    let mut sub = SseClient::open_ready(server.public, "/sse?userId=u");
    wait_connections(api, 1);
    let too_long = "k".repeat(257);
    for bad in ["", too_long.as_str(), "a b", "a\tb", "é", "ключ"] {
        let resp = post(api, "/v1/users/u/events", Some(bad), "text/plain", "refused");
        resp.assert_error(400, "invalid_request");
    }
    for (i, bad) in ["", "a b"].iter().enumerate() {
        let body = format!(r#"{{"messages":[{{"user":"u","data":"batch refused {i}"}}]}}"#);
        post(api, "/v1/publish", Some(bad), "application/json", &body).assert_error(400, "invalid_request");
    }
    let longest = "~".repeat(256);
    let visible: String = (0x21u8..=0x7e).map(char::from).collect();
    for good in ["!", longest.as_str(), visible.as_str()] {
        let first = ok_json(post(api, "/v1/users/u/events", Some(good), "text/plain", "accepted"));
        let again = ok_json(post(api, "/v1/users/u/events", Some(good), "text/plain", "accepted"));
        assert_eq!(first, again, "key {good:?}");
    }
    let got = events_until_marker(api, &mut [&mut sub]);
    assert_eq!(got[0], ["accepted"; 3], "refused requests deliver nothing; each good key once");
}

#[test]
fn the_same_key_on_another_route_is_answered_from_memory() {
    let server = Server::start(SHARDS);
    let api = server.api;
    let mut sub = SseClient::open_ready(server.public, "/sse?userId=u&rooms=r");
    wait_connections(api, 1);
    let first = ok_json(post(api, "/v1/users/u/events", Some("shared"), "text/plain", "first"));
    for route in &ROUTES {
        let resp = post(api, route.path, Some("shared"), route.content_type, route.body);
        assert_eq!(resp.status, 200, "{}: {:?}", route.name, resp.text());
        assert_eq!(resp.json(), first, "{}: answered from memory", route.name);
    }
    let got = events_until_marker(api, &mut [&mut sub]);
    assert_eq!(got[0], ["first"], "only the first publish was delivered");
}

#[test]
fn a_repeat_sent_after_the_answer_gets_the_answer() {
    // The key's owner records the answer before the client gets it, so a
    // repeat the client sends next (here on a fresh connection, often to
    // another shard than the key's owner or the first request's) is answered
    // from memory, never `409 idempotency_in_progress`. Many keys, because a
    // late record loses only a race.
    const KEYS: usize = 300;
    for driver in drivers() {
        let server = Server::start_with_driver(driver, SHARDS);
        let api = server.api;
        for n in 0..KEYS {
            let key = format!("answered-{n}");
            let first = ok_json(post(api, "/v1/users/u/events", Some(&key), "text/plain", "once"));
            let repeat = post(api, "/v1/users/u/events", Some(&key), "text/plain", "once");
            assert_eq!(repeat.status, 200, "{driver}, key {key}: {:?}", repeat.text());
            assert_eq!(repeat.json(), first, "{driver}, key {key}: answered from memory");
        }
    }
}

#[test]
fn keys_are_forgotten_after_the_window() {
    let server = Server::start(&["--shards", "4", "--idempotency-window", "300ms"]);
    let api = server.api;
    let mut sub = SseClient::open_ready(server.public, "/sse?userId=u");
    wait_connections(api, 1);
    let first = ok_json(post(api, "/v1/users/u/events", Some("short"), "text/plain", "once"));
    thread::sleep(Duration::from_millis(1300));
    let later = ok_json(post(api, "/v1/users/u/events", Some("short"), "text/plain", "once"));
    assert_ne!(first["id"], later["id"], "after the window the key publishes again: {first} {later}");
    let got = events_until_marker(api, &mut [&mut sub]);
    assert_eq!(got[0], ["once", "once"], "delivered again after the window");
}

#[test]
fn concurrent_repeats_publish_once() {
    // Which request wins is up to the scheduler; whatever the interleaving,
    // each answer is the one remembered body or 409 idempotency_in_progress,
    // and the batch is delivered exactly once.
    const ATTEMPTS: usize = 8;
    const MESSAGES: usize = 2000;
    // Queues large enough to hold the whole batch for the one subscriber.
    let server = Server::start(&["--shards", "4", "--max-queue-items", "10000", "--max-queue-bytes", "16MiB"]);
    let api = server.api;
    let mut sub = SseClient::open_ready(server.public, "/sse?userId=u");
    wait_connections(api, 1);
    let messages: Vec<Value> =
        (0..MESSAGES).map(|i| serde_json::json!({ "user": "u", "data": format!("c{i}") })).collect();
    let body = serde_json::json!({ "messages": messages }).to_string();
    let answers: Vec<HttpResponse> = thread::scope(|scope| {
        let handles: Vec<_> = (0..ATTEMPTS)
            .map(|_| scope.spawn(|| post(api, "/v1/publish", Some("concurrent"), "application/json", &body)))
            .collect();
        handles.into_iter().map(|h| h.join().expect("request thread")).collect()
    });
    let mut remembered: Option<Value> = None;
    for (i, resp) in answers.iter().enumerate() {
        match resp.status {
            200 => {
                let answer = resp.json();
                assert_eq!(answer["results"].as_array().map(Vec::len), Some(MESSAGES), "attempt {i}");
                match &remembered {
                    Some(first) => assert_eq!(&answer, first, "attempt {i}: every 200 carries the same answer"),
                    None => remembered = Some(answer),
                }
            }
            _ => resp.assert_error(409, "idempotency_in_progress"),
        }
    }
    let first = remembered.expect("at least one attempt publishes");
    eprintln!("concurrent attempts: {:?}", answers.iter().map(|r| r.status).collect::<Vec<_>>());
    // Once it finished, a repeat gets the remembered answer.
    let again = post(api, "/v1/publish", Some("concurrent"), "application/json", &body);
    assert_eq!((again.status, again.json()), (200, first));
    let got = events_until_marker(api, &mut [&mut sub]);
    let want: Vec<String> = (0..MESSAGES).map(|i| format!("c{i}")).collect();
    assert_eq!(got[0].len(), MESSAGES, "the batch was delivered exactly once");
    assert_eq!(got[0], want);
}

/// `POST /v1/users/u/events` with `Idempotency-Key: key` on a keep-alive connection.
fn post_on(conn: &mut HttpConn, key: &str, query: &str) -> HttpResponse {
    let path = format!("/v1/users/u/events{query}");
    conn.request("POST", &path, &[("Content-Type", "text/plain"), ("Idempotency-Key", key)], b"payload")
}

#[test]
fn failed_publishes_take_no_memory() {
    // Publishes fail genuinely: the bus's Redis is a closed port, so every
    // cluster publish answers 503 bus_unavailable after its key was claimed.
    // Each of the 100k distinct 240-byte keys used to stay in the table's age
    // queue for the whole window (about 280 B each, 27 MiB in all).
    const THREADS: usize = 4;
    const PER_THREAD: usize = 25_000;
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let redis = format!("redis://{closed}");
    let server = Server::start(&["--shards", "4", "--redis", &redis, "--idempotency-max-bytes", "1MiB"]);
    let api = server.api;
    let started = Instant::now();

    // A key whose publish succeeded (this instance only) must outlive the flood.
    let mut conn = HttpConn::open(api);
    let kept = ok_json(post_on(&mut conn, "kept", "?scope=local"));
    // Key `n` of thread `t`: 239 bytes.
    let long_key = |t: usize, n: usize| format!("{}-{t}-{n:08}", "p".repeat(228));
    let flood = |thread: usize, from: usize, count: usize| {
        let mut conn = HttpConn::open(api);
        for n in from..from + count {
            post_on(&mut conn, &long_key(thread, n), "").assert_error(503, "bus_unavailable");
        }
    };
    // Warm-up: connection buffers, allocator arenas, the shards' inboxes.
    let flood_all = |from: usize, count: usize| {
        thread::scope(|s| {
            for t in 0..THREADS {
                s.spawn(move || flood(t, from, count));
            }
        })
    };
    flood_all(0, 2_000);
    let before = server.rss_kib();
    flood_all(2_000, PER_THREAD);
    let after = server.rss_kib();
    eprintln!("{} failed publishes in {:?}: RSS {before} -> {after} KiB", THREADS * PER_THREAD, started.elapsed());
    assert!(
        after.saturating_sub(before) < 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB over failed publishes, beyond the 1 MiB bound and noise"
    );

    let again = post_on(&mut conn, "kept", "?scope=local");
    assert_eq!(again.header("idempotent-replayed"), Some("true"), "failures evicted nothing: {:?}", again.text());
    assert_eq!(again.json(), kept);
    let retried = post_on(&mut conn, &long_key(0, 2_000), "?scope=local");
    assert_eq!(retried.status, 200, "a failed key is free to retry: {:?}", retried.text());
    assert_eq!(retried.header("idempotent-replayed"), None);
}

#[test]
fn the_byte_bound_forgets_the_oldest_keys() {
    // One shard, so the whole 64 KiB is one table and claim order is global.
    const KEYS: usize = 3_000;
    let server = Server::start(&["--shards", "1", "--idempotency-max-bytes", "64KiB"]);
    let mut conn = HttpConn::open(server.api);
    let key = |n: usize| format!("order-{n:06}");
    let mut answers = Vec::with_capacity(KEYS);
    for n in 0..KEYS {
        answers.push(ok_json(post_on(&mut conn, &key(n), "")));
    }

    // Remembered keys are the newest ones: walk back from the newest until
    // one publishes again (a key forgotten, and all older ones with it).
    let mut remembered = 0;
    for n in (0..KEYS).rev() {
        let again = post_on(&mut conn, &key(n), "");
        assert_eq!(again.status, 200, "{}: {:?}", key(n), again.text());
        if again.header("idempotent-replayed").is_none() {
            assert_ne!(again.json()["id"], answers[n]["id"], "{}: forgotten, so published again", key(n));
            break;
        }
        assert_eq!(again.json(), answers[n], "{}: the stored answer", key(n));
        remembered += 1;
    }
    let oldest = post_on(&mut conn, &key(0), "");
    assert_eq!(oldest.header("idempotent-replayed"), None, "the oldest key was forgotten");
    assert_ne!(oldest.json()["id"], answers[0]["id"]);

    // Each key holds its key and answer bytes plus bookkeeping (about 200 B a
    // key in all, README), and the bound counts all of it.
    let answer_len = serde_json::to_vec(&answers[KEYS - 1]).unwrap().len();
    let payload = key(0).len() + answer_len;
    eprintln!("{remembered} keys of {payload} B key+answer remembered in 64 KiB");
    assert!(remembered * payload < 64 * 1024, "{remembered} keys of {payload} B are over the bound");
    assert!(remembered > 64 * 1024 / 400, "only {remembered} keys in 64 KiB: over-counted");
    assert!(remembered < KEYS / 2, "{remembered} keys remembered: the bound did not bind");
}
