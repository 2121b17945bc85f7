//! Replay and lossless reconnect: `Last-Event-ID` (header or `?lastEventId=`)
//! resumes from the per-user, per-room and broadcast rings; an id that cannot
//! be resumed exactly gets one `ssekify.gap` frame first. Ring bounds (entries,
//! TTL, LRU users/rooms, connected users kept beyond the cap), the clear
//! routes, stats and metrics, and reconnects racing with publishes.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const GAP: &str = "ssekify.gap";

/// Where a test message goes.
#[derive(Clone, Copy, Debug)]
enum To<'a> {
    User(&'a str),
    Room(&'a str),
    All,
}

/// The data every test message with publisher id `id` carries.
fn data_of(id: &str) -> String {
    format!("data of {id}")
}

/// Publishes `data_of(id)` with publisher id `id` to `to`; asserts 200 and the id.
fn send(api: std::net::SocketAddr, to: To, id: &str) -> Value {
    let query = format!("id={}", pct(id));
    let data = data_of(id);
    let resp = match to {
        To::User(user) => publish_user(api, user, &data, &query),
        To::Room(room) => publish_room(api, room, &data, &query),
        To::All => broadcast(api, &data, &query),
    };
    let answer = ok_json(resp);
    assert_eq!(answer["id"], id, "publish {to:?} {id}: {answer}");
    answer
}

/// Asserts the next events are exactly the messages `ids` (id and data), in order.
fn expect_ids(client: &mut SseClient, ids: &[&str], what: &str) {
    for (i, id) in ids.iter().enumerate() {
        let ev = client
            .next_event(IO_TIMEOUT)
            .unwrap_or_else(|| panic!("{what}: no event #{i} (wanted {id}) within {IO_TIMEOUT:?}; wanted {ids:?}"));
        assert_eq!(ev.id.as_deref(), Some(*id), "{what}: event #{i} of {ids:?} is {ev:?}");
        assert_eq!(ev.event, None, "{what}: event #{i} ({id}) has an event name: {ev:?}");
        assert_eq!(ev.data, data_of(id), "{what}: data of {id}");
    }
}

/// Asserts the next event is the gap notice for `last_id` (no id line, JSON data).
fn expect_gap(client: &mut SseClient, last_id: &str, what: &str) {
    let ev = client.next_event(IO_TIMEOUT).unwrap_or_else(|| panic!("{what}: no gap event within {IO_TIMEOUT:?}"));
    assert_eq!(ev.event.as_deref(), Some(GAP), "{what}: expected the gap notice first, got {ev:?}");
    assert_eq!(ev.id, None, "{what}: the gap notice must carry no id: {ev:?}");
    let data: Value =
        serde_json::from_str(&ev.data).unwrap_or_else(|e| panic!("{what}: gap data not JSON ({e}): {ev:?}"));
    assert_eq!(data, json!({ "lastEventId": last_id }), "{what}: gap data");
}

/// Publishes the live message `id` to `to` and asserts it is the very next
/// event of every client: nothing else was queued before it.
fn expect_live(api: std::net::SocketAddr, clients: &mut [&mut SseClient], to: To, id: &str, what: &str) {
    send(api, to, id);
    for (i, client) in clients.iter_mut().enumerate() {
        expect_ids(client, &[id], &format!("{what} (client {i}, live {id})"));
    }
}

// ---------------------------------------------------------------------------
// Resume basics
// ---------------------------------------------------------------------------

#[test]
fn resume_after_the_second_of_five_on_both_drivers() {
    for driver in drivers() {
        let server = Server::start_with_driver(driver, &["--shards", "2"]);
        let api = server.api;
        for id in ["m1", "m2", "m3", "m4", "m5"] {
            send(api, To::User("u"), id);
        }
        assert_eq!(stat(&server.stats(), "sent"), 0, "{driver}: nobody was connected");
        let mut c = SseClient::resume(server.public, "/sse?userId=u", "m2");
        expect_ids(&mut c, &["m3", "m4", "m5"], &format!("{driver}: replay after m2"));
        expect_live(api, &mut [&mut c], To::User("u"), "m6", driver);
        // Replayed frames count as sent.
        assert_eq!(stat(&server.stats(), "sent"), 4, "{driver}: 3 replayed + 1 live");
    }
}

#[test]
fn no_last_event_id_means_live_only() {
    let server = Server::start(&["--shards", "2"]);
    let api = server.api;
    send(api, To::User("u"), "m1");
    send(api, To::Room("r"), "m2");
    send(api, To::All, "m3");
    let mut c = SseClient::open_ready(server.public, "/sse?userId=u&rooms=r");
    expect_live(api, &mut [&mut c], To::User("u"), "m4", "no Last-Event-ID");
    expect_live(api, &mut [&mut c], To::All, "m5", "no Last-Event-ID");
}

#[test]
fn query_parameter_form_and_header_wins() {
    let server = Server::start(&["--shards", "2"]);
    let api = server.api;
    for id in ["m1", "m2", "m3", "m4", "m5"] {
        send(api, To::User("u"), id);
    }
    // ?lastEventId= alone.
    let mut q = SseClient::open_ready(server.public, "/sse?userId=u&lastEventId=m2");
    expect_ids(&mut q, &["m3", "m4", "m5"], "query form");
    // Both: the header (m3) wins over the query (m1).
    let mut both = SseClient::connect(server.public, "/sse?userId=u&lastEventId=m1", &[("Last-Event-ID", "m3")]);
    assert_eq!(both.status, 200, "{:?}", both.error_text());
    expect_ids(&mut both, &["m4", "m5"], "header wins over query");
    expect_live(api, &mut [&mut q, &mut both], To::User("u"), "m6", "after resume");
}

#[test]
fn unknown_id_gets_the_gap_frame_then_everything_buffered() {
    let server = Server::start(&["--shards", "2", "--retry", "1500ms"]);
    let api = server.api;
    send(api, To::User("u"), "m1");
    send(api, To::Room("r"), "m2");
    send(api, To::All, "m3");
    send(api, To::User("other"), "m4");
    send(api, To::Room("elsewhere"), "m5");

    // Byte-exact once: retry, the gap frame (no id line), then the buffered frames.
    let mut c = SseClient::connect(server.public, "/sse?userId=u&rooms=r", &[("Last-Event-ID", "nope")]);
    assert_eq!(c.status, 200, "{:?}", c.error_text());
    let expected = "retry: 1500\n\n\
                    event: ssekify.gap\ndata: {\"lastEventId\":\"nope\"}\n\n\
                    id: m1\ndata: data of m1\n\n\
                    id: m2\ndata: data of m2\n\n\
                    id: m3\ndata: data of m3\n\n";
    let got = c.read_bytes(expected.len(), IO_TIMEOUT);
    assert_eq!(String::from_utf8_lossy(&got), expected, "resume with an unknown id, byte for byte");
    let extra = c.raw_read(Duration::from_millis(300));
    assert!(
        extra.is_empty(),
        "nothing may follow the replay before a live event: {:?}",
        String::from_utf8_lossy(&extra)
    );
    expect_live(api, &mut [&mut c], To::User("u"), "m6", "after the gap replay");

    // The gap data is JSON even for an id that needs escaping.
    let odd = r#"a"b\c"#;
    let mut o = SseClient::resume(server.public, "/sse?userId=u", odd);
    expect_gap(&mut o, odd, "id with a quote and a backslash");
    expect_ids(&mut o, &["m1", "m3", "m6"], "everything buffered for u (user and broadcast)");
}

#[test]
fn replay_disabled_with_recent_buffer_zero() {
    let server = Server::start(&["--shards", "2", "--recent-buffer", "0"]);
    let api = server.api;
    for id in ["m1", "m2", "m3"] {
        send(api, To::User("u"), id);
    }
    send(api, To::All, "b1");
    let s = server.stats();
    assert_eq!(stat(&s, "replayEntries"), 0, "{s}");
    assert_eq!(stat(&s, "replayUsers"), 0, "{s}");
    let mut c = SseClient::resume(server.public, "/sse?userId=u", "m2");
    expect_gap(&mut c, "m2", "replay disabled");
    expect_live(api, &mut [&mut c], To::User("u"), "m4", "replay disabled");
}

#[test]
fn ring_wraps_around() {
    let server = Server::start(&["--shards", "2", "--recent-buffer", "3"]);
    let api = server.api;
    for id in ["m1", "m2", "m3", "m4", "m5"] {
        send(api, To::User("u"), id);
    }
    // m1 was pushed out: gap, then what the ring holds.
    let mut c = SseClient::resume(server.public, "/sse?userId=u", "m1");
    expect_gap(&mut c, "m1", "resume from a wrapped-out id");
    expect_ids(&mut c, &["m3", "m4", "m5"], "ring of 3 after the gap");
    // m3 is still there: no gap.
    let mut d = SseClient::resume(server.public, "/sse?userId=u", "m3");
    expect_ids(&mut d, &["m4", "m5"], "resume from the oldest kept id");
    expect_live(api, &mut [&mut c, &mut d], To::User("u"), "m6", "after wrap-around");

    // Found, but part of the history is lost: the broadcast ring wrapped past it.
    let server = Server::start(&["--shards", "2", "--recent-buffer", "3"]);
    let api = server.api;
    send(api, To::User("w"), "x1");
    for id in ["b1", "b2", "b3", "b4"] {
        send(api, To::All, id);
    }
    let mut w = SseClient::resume(server.public, "/sse?userId=w", "x1");
    expect_gap(&mut w, "x1", "broadcast ring wrapped past the resumed id");
    expect_ids(&mut w, &["b2", "b3", "b4"], "what is left after the gap");
    expect_live(api, &mut [&mut w], To::User("w"), "x2", "after partial loss");
}

#[test]
fn rings_expire_after_the_ttl() {
    let server = Server::start(&["--shards", "2", "--recent-ttl", "500ms"]);
    let api = server.api;
    send(api, To::User("u"), "m1");
    send(api, To::User("u"), "m2");
    send(api, To::Room("r"), "r1");
    send(api, To::All, "b1");
    // The sweep runs every <= 250 ms: everything is gone well within ttl + 1 s
    // (polled, bounded, so a slow machine does not fail the test).
    let mut last = Value::Null;
    let gone = wait_until(Duration::from_secs(10), || {
        last = server.stats();
        ["replayUsers", "replayRooms", "replayEntries", "replayBytes"].iter().all(|k| stat(&last, k) == 0)
    });
    assert!(gone, "rings must expire after --recent-ttl 500ms; stats: {last}");
    let mut c = SseClient::resume(server.public, "/sse?userId=u&rooms=r", "m1");
    expect_gap(&mut c, "m1", "expired ring");
    expect_live(api, &mut [&mut c], To::User("u"), "m3", "after expiry");
}

#[test]
fn least_recently_active_rings_are_evicted() {
    let server = Server::start(&["--shards", "1", "--recent-max-users", "2", "--recent-max-rooms", "2"]);
    let api = server.api;
    send(api, To::User("a"), "a1");
    send(api, To::User("b"), "b1");
    send(api, To::User("c"), "c1");
    send(api, To::Room("r1"), "r1-1");
    send(api, To::Room("r2"), "r2-1");
    send(api, To::Room("r3"), "r3-1");
    let s = server.stats();
    assert_eq!(stat(&s, "replayUsers"), 2, "{s}");
    assert_eq!(stat(&s, "replayRooms"), 2, "{s}");
    assert_eq!(stat(&s, "replayEntries"), 4, "{s}");

    let mut a = SseClient::resume(server.public, "/sse?userId=a", "a1");
    expect_gap(&mut a, "a1", "evicted user a");
    let mut b = SseClient::resume(server.public, "/sse?userId=b", "b1");
    let mut c = SseClient::resume(server.public, "/sse?userId=c", "c1");
    let mut r1 = SseClient::resume(server.public, "/sse?rooms=r1", "r1-1");
    expect_gap(&mut r1, "r1-1", "evicted room r1");
    let mut r3 = SseClient::resume(server.public, "/sse?rooms=r3", "r3-1");
    // Found ids with nothing after them: the next event is the live one.
    expect_live(api, &mut [&mut a, &mut b, &mut c, &mut r1, &mut r3], To::All, "live", "after eviction");
}

#[test]
fn connected_users_keep_their_rings_beyond_recent_max_users() {
    const USERS: usize = 150;
    let server = Server::start(&["--shards", "1", "--recent-max-users", "100"]);
    let api = server.api;
    let mut clients: Vec<SseClient> =
        (0..USERS).map(|i| SseClient::open_ready(server.public, &format!("/sse?userId=u{i}"))).collect();
    wait_connections(api, USERS as u64);
    let id = |round: &str, user: usize| format!("{round}-u{user}");
    let round = |name: &str, users: std::ops::Range<usize>| {
        let messages: Vec<Value> = users
            .map(|i| json!({ "user": format!("u{i}"), "id": id(name, i), "data": data_of(&id(name, i)) }))
            .collect();
        ok_json(publish_batch(api, &Value::Array(messages)));
    };
    round("m1", 0..USERS);
    for (i, client) in clients.iter_mut().enumerate() {
        expect_ids(client, &[&id("m1", i)], "first round");
    }
    assert_eq!(stat(&server.stats(), "replayUsers"), USERS as u64, "150 connected users keep 150 rings");

    // u0, the least recently active, drops (a network blip) while the
    // others and u0 itself get more messages.
    drop(clients.remove(0));
    wait_connections(api, USERS as u64 - 1);
    round("m2", 0..USERS);
    send(api, To::User("u0"), "m3-u0");
    for (i, client) in clients.iter_mut().enumerate() {
        expect_ids(client, &[&id("m2", i + 1)], "second round");
    }
    let mut back = SseClient::resume(server.public, "/sse?userId=u0", &id("m1", 0));
    expect_ids(&mut back, &["m2-u0", "m3-u0"], "u0 resuming after its last message (no gap notice)");
    expect_live(api, &mut [&mut back, &mut clients[0]], To::All, "live", "after the blip");
    clients.push(back);

    // Without connections, the cap applies again.
    assert_eq!(ok_json(http(api, "DELETE", "/v1/connections", &[], b"")).get("closed"), Some(&json!(USERS)));
    drop(clients);
    wait_connections(api, 0);
    assert_eq!(stat(&server.stats(), "replayUsers"), 100, "--recent-max-users for users without a connection");
}

#[test]
fn clear_recent_for_a_user_and_for_all() {
    let server = Server::start(&["--shards", "2"]);
    let api = server.api;
    send(api, To::User("u"), "u1");
    send(api, To::User("u"), "u2");
    send(api, To::User("v"), "v1");
    send(api, To::User("v"), "v2");
    send(api, To::All, "b1");

    let resp = clear_recent_user(api, "u");
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    assert_eq!(resp.json(), json!({ "cleared": true }));
    // u's ring is gone: gap, then what is still buffered for u (the broadcast).
    let mut u = SseClient::resume(server.public, "/sse?userId=u", "u1");
    expect_gap(&mut u, "u1", "after clearing u");
    expect_ids(&mut u, &["b1"], "broadcast still buffered");
    // v's ring is untouched.
    let mut v = SseClient::resume(server.public, "/sse?userId=v", "v1");
    expect_ids(&mut v, &["v2", "b1"], "v untouched by clearing u");
    // Clearing a user nobody published to is fine too.
    let resp = clear_recent_user(api, "nobody");
    assert_eq!((resp.status, resp.json()), (200, json!({ "cleared": true })));
    clear_recent_user(api, "a,b").assert_error(400, "invalid_request");

    send(api, To::User("v"), "v3");
    expect_ids(&mut v, &["v3"], "live v3");
    let resp = clear_recent_all(api);
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    assert_eq!(resp.json(), json!({ "cleared": true }));
    let s = server.stats();
    for key in ["replayUsers", "replayRooms", "replayEntries", "replayBytes"] {
        assert_eq!(stat(&s, key), 0, "{key} after DELETE /v1/recent: {s}");
    }
    // Afterwards a resume gets the gap frame and nothing else.
    let mut v2 = SseClient::resume(server.public, "/sse?userId=v", "v2");
    expect_gap(&mut v2, "v2", "after clearing all");
    let mut b = SseClient::resume(server.public, "/sse", "b1");
    expect_gap(&mut b, "b1", "after clearing all (broadcast)");
    expect_live(api, &mut [&mut v2, &mut b, &mut u, &mut v], To::All, "b2", "after clearing all");
}

// ---------------------------------------------------------------------------
// Which rings a connection resumes from
// ---------------------------------------------------------------------------

#[test]
fn resume_merges_the_connections_own_rings_in_publish_order() {
    let server = Server::start(&["--shards", "4"]);
    let api = server.api;
    let plan: [(To, &str); 12] = [
        (To::User("u"), "p1"),
        (To::Room("r1"), "p2"),
        (To::Room("r3"), "p3"),
        (To::Room("r2"), "p4"),
        (To::All, "p5"),
        (To::User("v"), "p6"),
        (To::Room("r1"), "p7"),
        (To::User("u"), "p8"),
        (To::All, "p9"),
        (To::Room("r2"), "p10"),
        (To::Room("r3"), "p11"),
        (To::User("u"), "p12"),
    ];
    for (to, id) in plan {
        send(api, to, id);
    }
    let own = ["p1", "p2", "p4", "p5", "p7", "p8", "p9", "p10", "p12"];
    let path = "/sse?userId=u&rooms=r1,r2";
    // (resume from, gap expected, what follows)
    let cases: [(&str, bool, &[&str]); 6] = [
        ("p1", false, &own[1..]), // from its user ring
        ("p2", false, &own[2..]), // from room r1's ring
        ("p4", false, &own[3..]), // from room r2's ring
        ("p5", false, &own[4..]), // from the broadcast ring
        ("p3", true, &own[..]),   // another room's id: not its rings
        ("p6", true, &own[..]),   // another user's id
    ];
    let mut clients: Vec<SseClient> = Vec::new();
    for (from, gap, want) in cases {
        let mut c = SseClient::resume(server.public, path, from);
        let what = format!("u in r1,r2 resuming after {from}");
        if gap {
            expect_gap(&mut c, from, &what);
        }
        expect_ids(&mut c, want, &what);
        clients.push(c);
    }
    let mut refs: Vec<&mut SseClient> = clients.iter_mut().collect();
    expect_live(api, &mut refs, To::Room("r2"), "p13", "live after the merged replay");
}

#[test]
fn anonymous_connection_resumes_its_rooms_and_broadcasts() {
    let server = Server::start(&["--shards", "4"]);
    let api = server.api;
    send(api, To::Room("r1"), "a1");
    send(api, To::User("x"), "x1");
    send(api, To::All, "b1");
    send(api, To::Room("r2"), "y1");
    send(api, To::Room("r1"), "a2");
    send(api, To::All, "b2");
    let mut c = SseClient::resume(server.public, "/sse?rooms=r1", "a1");
    expect_ids(&mut c, &["b1", "a2", "b2"], "anonymous in r1 after a1");
    let mut d = SseClient::resume(server.public, "/sse?rooms=r1", "b1");
    expect_ids(&mut d, &["a2", "b2"], "anonymous in r1 after b1");
    let mut e = SseClient::resume(server.public, "/sse", "b1");
    expect_ids(&mut e, &["b2"], "anonymous without rooms after b1");
    let mut f = SseClient::resume(server.public, "/sse?rooms=r1", "x1");
    expect_gap(&mut f, "x1", "a user's id is not in an anonymous connection's rings");
    expect_ids(&mut f, &["a1", "b1", "a2", "b2"], "everything buffered for r1 + broadcast");
    expect_live(api, &mut [&mut c, &mut d, &mut f], To::Room("r1"), "a3", "live after resume");
}

// ---------------------------------------------------------------------------
// Reconnects racing with publishes
// ---------------------------------------------------------------------------

/// Reads events until EOF, returning them; panics when the stream is not
/// closed within the timeout.
fn drain_until_closed(client: &mut SseClient, what: &str) -> Vec<SseEvent> {
    let mut got = Vec::new();
    while let Some(ev) = client.next_event(IO_TIMEOUT) {
        got.push(ev);
    }
    assert!(client.is_eof(), "{what}: the stream was not closed within {IO_TIMEOUT:?}");
    got
}

#[test]
fn messages_published_while_reconnecting_arrive_exactly_once() {
    let server = Server::start(&["--shards", "4"]);
    let api = server.api;
    let mut c = SseClient::open_ready(server.public, "/sse?userId=u");
    wait_connections(api, 1);
    let mut published = Vec::new();
    let mut seen: Vec<SseEvent> = Vec::new();
    let publish = |n: usize, published: &mut Vec<(String, String)>| {
        for _ in 0..n {
            let data = format!("n{}", published.len());
            let answer = ok_json(publish_user(api, "u", &data, ""));
            published.push((answer["id"].as_str().expect("id").to_string(), data));
        }
    };
    publish(3, &mut published);
    for _ in 0..3 {
        seen.push(c.expect_event("live before the cut"));
    }
    assert_eq!(ok_json(close_user(api, "u"))["closed"], 1);
    seen.extend(drain_until_closed(&mut c, "after DELETE /v1/users/u/connections"));
    assert_eq!(seen.len(), 3, "{seen:?}");

    // Away: 5 messages nobody receives live.
    publish(5, &mut published);
    let last = seen.last().unwrap().id.clone().expect("events carry ids");
    let mut c = SseClient::resume(server.public, "/sse?userId=u", &last);
    for _ in 0..5 {
        seen.push(c.expect_event("missed message"));
    }
    publish(2, &mut published);
    for _ in 0..2 {
        seen.push(c.expect_event("live after the resume"));
    }
    let got: Vec<(String, String)> = seen.iter().map(|e| (e.id.clone().unwrap_or_default(), e.data.clone())).collect();
    assert_eq!(got, published, "every message exactly once, in order");
    assert!(seen.iter().all(|e| e.event.is_none()), "no gap notice expected: {seen:?}");
    // Nothing more (no duplicate of the replayed part behind the live one).
    c.expect_no_event(Duration::from_millis(200));
}

#[test]
fn reconnect_loop_under_a_background_publisher_sees_every_message_once() {
    const TOTAL: usize = 300;
    const ROUNDS: usize = 8;
    // A ring far larger than TOTAL: no reconnect can miss anything.
    let server = Server::start(&["--shards", "4", "--recent-buffer", "1000"]);
    let (api, public) = (server.api, server.public);
    let mut client = SseClient::open_ready(public, "/sse?userId=loop");
    wait_connections(api, 1);

    let published: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (published, stop) = (published.clone(), stop.clone());
        thread::spawn(move || {
            for i in 0..TOTAL {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let data = format!("n{i}");
                // One fresh connection per publish: lands on any of the 4 shards.
                let answer = ok_json(publish_user(api, "loop", &data, ""));
                published.lock().unwrap().push((answer["id"].as_str().expect("id").to_string(), data));
                thread::sleep(Duration::from_millis(2));
            }
        })
    };
    // Stop the publisher if an assertion below fails.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_guard = StopOnDrop(stop.clone());

    let mut seen: Vec<SseEvent> = Vec::new();
    let mut reconnects = 0;
    while seen.len() < TOTAL {
        let want = if reconnects < ROUNDS { (seen.len() + 15).min(TOTAL) } else { TOTAL };
        while seen.len() < want {
            let ev = client.next_event(IO_TIMEOUT).unwrap_or_else(|| {
                panic!("no event #{} within {IO_TIMEOUT:?} (after {reconnects} reconnects)", seen.len())
            });
            seen.push(ev);
        }
        if seen.len() >= TOTAL {
            break;
        }
        close_user(api, "loop");
        seen.extend(drain_until_closed(&mut client, "reconnect loop"));
        // Like a browser: resume from the last event dispatched.
        let last = seen.last().unwrap().id.clone().expect("events carry ids");
        client = SseClient::resume(public, "/sse?userId=loop", &last);
        reconnects += 1;
    }
    publisher.join().expect("publisher thread");
    let published = published.lock().unwrap().clone();
    assert_eq!(published.len(), TOTAL);
    assert!(seen.iter().all(|e| e.event.is_none()), "no gap notice expected");
    let got: Vec<(String, String)> = seen.iter().map(|e| (e.id.clone().unwrap_or_default(), e.data.clone())).collect();
    if got != published {
        let first_diff = got.iter().zip(&published).position(|(a, b)| a != b);
        panic!(
            "after {reconnects} reconnects the client saw {} events, {} were published; first difference at {first_diff:?}\n\
             seen: {got:?}\npublished: {published:?}",
            got.len(),
            published.len()
        );
    }
    assert_eq!(reconnects, ROUNDS, "the loop should have reconnected {ROUNDS} times");
    // No duplicate trails behind.
    ok_json(publish_user(api, "loop", "end", "id=end"));
    let ev = client.expect_event("end marker");
    assert_eq!((ev.id.as_deref(), ev.data.as_str()), (Some("end"), "end"));
}

// ---------------------------------------------------------------------------
// Bounds, stats and metrics
// ---------------------------------------------------------------------------

/// Value of the unlabelled sample `name` in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("/metrics has no sample `{name}`:\n{text}"))
}

#[test]
fn memory_stays_bounded_with_many_users_and_rooms() {
    const USERS: usize = 5000;
    const ROOMS: usize = 2000;
    let server = Server::start(&["--shards", "2", "--recent-max-users", "100", "--recent-max-rooms", "100"]);
    let api = server.api;
    let per_shard: u64 = 100u64.div_ceil(2);
    let mut messages: Vec<Value> =
        (0..USERS).map(|i| json!({ "user": format!("u{i}"), "id": format!("mu{i}"), "data": "x" })).collect();
    messages.extend((0..ROOMS).map(|i| json!({ "room": format!("r{i}"), "id": format!("mr{i}"), "data": "y" })));
    let answer = ok_json(publish_batch(api, &Value::Array(messages)));
    assert_eq!(answer["results"].as_array().map(Vec::len), Some(USERS + ROOMS));

    let s = server.stats();
    let shards = s["shards"].as_array().expect("shards array").clone();
    assert_eq!(shards.len(), 2);
    for key in ["replayUsers", "replayRooms", "replayEntries", "replayBytes"] {
        let sum: u64 = shards.iter().map(|sh| stat(sh, key)).sum();
        assert_eq!(sum, stat(&s, key), "{key}: shards must add up to the total: {s}");
    }
    for sh in &shards {
        let (users, rooms, entries, bytes) =
            (stat(sh, "replayUsers"), stat(sh, "replayRooms"), stat(sh, "replayEntries"), stat(sh, "replayBytes"));
        assert!(users <= per_shard, "shard keeps at most ceil(100/2) user rings: {sh}");
        assert!(rooms <= per_shard, "shard keeps at most ceil(100/2) room rings: {sh}");
        // One message per user and room: one entry per ring held.
        assert_eq!(entries, users + rooms, "{sh}");
        assert!(bytes <= entries * 64, "each entry references one small frame: {sh}");
    }
    let users = stat(&s, "replayUsers");
    assert!((1..=102).contains(&users), "replayUsers {users} with --recent-max-users 100: {s}");
    assert!(stat(&s, "replayRooms") <= 2 * per_shard, "{s}");
    assert!(stat(&s, "replayEntries") <= 102 + 2 * per_shard, "{s}");

    // The same gauges in /metrics.
    let resp = http(api, "GET", "/metrics", &[], b"");
    assert_eq!(resp.status, 200);
    let text = resp.text();
    assert_eq!(metric(&text, "ssekify_replay_users"), users, "{s}");
    assert_eq!(metric(&text, "ssekify_replay_entries"), stat(&s, "replayEntries"), "{s}");
    assert_eq!(metric(&text, "ssekify_replay_bytes"), stat(&s, "replayBytes"), "{s}");

    // Least recently active went first: the last users and rooms resume exactly,
    // the first ones get the gap notice.
    let last_user = USERS - 1;
    let last_room = ROOMS - 1;
    let mut newest = SseClient::resume(server.public, &format!("/sse?userId=u{last_user}"), &format!("mu{last_user}"));
    let mut newest_room =
        SseClient::resume(server.public, &format!("/sse?rooms=r{last_room}"), &format!("mr{last_room}"));
    let mut oldest = SseClient::resume(server.public, "/sse?userId=u0", "mu0");
    expect_gap(&mut oldest, "mu0", "evicted user u0");
    let mut oldest_room = SseClient::resume(server.public, "/sse?rooms=r0", "mr0");
    expect_gap(&mut oldest_room, "mr0", "evicted room r0");
    expect_live(
        api,
        &mut [&mut newest, &mut newest_room, &mut oldest, &mut oldest_room],
        To::All,
        "live",
        "after bounded replay",
    );
}
