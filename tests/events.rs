//! Lifecycle events (`GET /v1/events`): every kind with its fields, the
//! `types` filter, tenants, joining one connection by the id its `connect`
//! event gave, and a stalled reader that never delays deliveries.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// The next event of `listener`, as (kind, JSON data).
fn next(listener: &mut SseClient, what: &str) -> (String, Value) {
    let event = listener.expect_event(what);
    assert_eq!(event.id, None, "lifecycle events carry no id: {event:?}");
    let data: Value = serde_json::from_str(&event.data).unwrap_or_else(|e| panic!("{what}: {e}: {}", event.data));
    (event.event.unwrap_or_default(), data)
}

fn assert_common(data: &Value, instance: &str) {
    assert_eq!(data["instance"], instance, "{data}");
    assert!(data["at"].as_u64().is_some_and(|at| at > 1_700_000_000_000), "{data}");
}

#[test]
fn every_kind_arrives_with_its_fields() {
    let server = Server::start(&["--shards", "2", "--max-payload", "1KiB"]);
    let instance = server.stats()["instance"].as_str().unwrap().to_owned();
    let mut listener = SseClient::open_ready(server.api, "/v1/events");
    assert_eq!(server.stats()["eventListeners"], 1);
    assert_eq!(server.stats()["connections"], 0, "a listener is not a subscriber");

    let mut alice = SseClient::open_ready(server.public, "/sse?userId=alice&rooms=lobby,kitchen");
    let (kind, connect) = next(&mut listener, "alice's connect");
    assert_eq!(kind, "connect");
    assert_common(&connect, &instance);
    assert_eq!(connect["user"], "alice");
    assert_eq!(connect["tenant"], Value::Null);
    let mut rooms: Vec<&str> = connect["rooms"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    rooms.sort();
    assert_eq!(rooms, ["kitchen", "lobby"]);
    let conn_id = connect["connId"].as_str().unwrap().to_owned();
    assert!(conn_id.starts_with(&format!("{instance}-")), "{conn_id}");

    let published = ok_json(publish_user(server.api, "alice", r#""hi""#, "&id=m1"));
    assert_eq!(published["delivered"], 1);
    let (kind, publish) = next(&mut listener, "the publish");
    assert_eq!(kind, "publish");
    assert_common(&publish, &instance);
    assert_eq!(
        (&publish["id"], &publish["target"], &publish["delivered"]),
        (&json!("m1"), &json!({ "user": "alice" }), &json!(1))
    );
    alice.expect_event("alice's message");
    broadcast(server.api, r#""all""#, "");
    assert_eq!(next(&mut listener, "the broadcast").1["target"], json!({ "all": true }));
    publish_room(server.api, "lobby", r#""room""#, "");
    assert_eq!(next(&mut listener, "the room publish").1["target"], json!({ "room": "lobby" }));

    let too_big = format!("\"{}\"", "x".repeat(2000));
    publish_user(server.api, "alice", &too_big, "").assert_error(413, "payload_too_large");
    let (kind, error) = next(&mut listener, "the error");
    assert_eq!(kind, "error");
    assert_common(&error, &instance);
    assert_eq!(error["kind"], "payload_too_large");
    assert!(error["message"].as_str().unwrap().contains("--max-payload"), "{error}");

    assert_eq!(close_user(server.api, "alice").json()["closed"], 1);
    let (kind, disconnect) = next(&mut listener, "alice's disconnect");
    assert_eq!(kind, "disconnect");
    assert_common(&disconnect, &instance);
    assert_eq!(disconnect["connId"], conn_id.as_str());
    assert_eq!(disconnect["reason"], "server");
    assert_eq!(disconnect["sent"], 3, "her message, the broadcast and the room message");
    assert!(disconnect["durationMs"].as_u64().is_some(), "{disconnect}");

    let bob = SseClient::open_ready(server.public, "/sse?userId=bob");
    assert_eq!(next(&mut listener, "bob's connect").1["user"], "bob");
    drop(bob);
    let (_, gone) = next(&mut listener, "bob's disconnect");
    assert_eq!((&gone["user"], &gone["reason"]), (&json!("bob"), &json!("client")));
}

#[test]
fn listeners_choose_kinds_and_tenants_hear_only_their_own() {
    let server = Server::start(&[]);
    let mut publishes = SseClient::open_ready(server.api, "/v1/events?types=publish");
    let mut acme = SseClient::open_ready(server.api, "/v1/t/acme/events");
    http(server.api, "GET", "/v1/events?types=connect,nope", &[], b"").assert_error(400, "invalid_request");

    let _default_user = SseClient::open_ready(server.public, "/sse?userId=dana");
    let _acme_user = SseClient::open_ready(server.public, "/t/acme/sse?userId=erin");
    let (kind, connect) = next(&mut acme, "erin's connect");
    assert_eq!((kind.as_str(), &connect["user"], &connect["tenant"]), ("connect", &json!("erin"), &json!("acme")));

    publish_user(server.api, "dana", r#""d""#, "");
    let (kind, publish) = next(&mut publishes, "dana's publish, not the connects");
    assert_eq!((kind.as_str(), &publish["target"]), ("publish", &json!({ "user": "dana" })));
    http(server.api, "POST", "/v1/t/acme/users/erin/events", &[], br#""e""#);
    assert_eq!(next(&mut publishes, "erin's publish").1["tenant"], "acme");
    let (kind, publish) = next(&mut acme, "erin's publish, not dana's");
    assert_eq!(
        (kind.as_str(), &publish["target"], &publish["tenant"]),
        ("publish", &json!({ "user": "erin" }), &json!("acme"))
    );

    // Listeners are not subscribers: broadcasts and closes pass them by.
    assert_eq!(delivered(broadcast(server.api, r#""b""#, "")), 1);
    assert_eq!(http(server.api, "DELETE", "/v1/connections", &[], b"").json()["closed"], 1);
    assert_eq!(next(&mut publishes, "the broadcast's publish").1["target"], json!({ "all": true }));
}

#[test]
fn publishes_answered_where_they_were_read_are_heard_with_their_counts() {
    // One shard: every single publish completes on the shard that read it,
    // the path that answers without a future.
    let server = Server::start(&["--shards", "1"]);
    let mut publishes = SseClient::open_ready(server.api, "/v1/events?types=publish");
    let _gus = SseClient::open_ready(server.public, "/sse?userId=gus&rooms=lab");
    wait_connections(server.api, 1);

    assert_eq!(delivered(publish_user(server.api, "gus", r#""u""#, "")), 1);
    assert_eq!(delivered(publish_room(server.api, "lab", r#""r""#, "")), 1);
    assert_eq!(delivered(publish_user(server.api, "nobody-here", r#""n""#, "")), 0);
    let heard: Vec<(Value, Value)> = (0..3)
        .map(|i| {
            let (kind, event) = next(&mut publishes, &format!("publish {i}"));
            assert_eq!(kind, "publish");
            (event["target"].clone(), event["delivered"].clone())
        })
        .collect();
    assert_eq!(
        heard,
        [
            (json!({ "user": "gus" }), json!(1)),
            (json!({ "room": "lab" }), json!(1)),
            (json!({ "user": "nobody-here" }), json!(0))
        ]
    );
}

#[test]
fn one_connection_joins_a_room_by_the_id_its_connect_event_gave() {
    let server = Server::start(&["--shards", "2"]);
    let mut listener = SseClient::open_ready(server.api, "/v1/events?types=connect");
    let mut first_tab = SseClient::open_ready(server.public, "/sse?userId=fay");
    let first_id = next(&mut listener, "first tab").1["connId"].as_str().unwrap().to_owned();
    let mut second_tab = SseClient::open_ready(server.public, "/sse?userId=fay");
    let second_id = next(&mut listener, "second tab").1["connId"].as_str().unwrap().to_owned();
    assert_ne!(first_id, second_id);

    let joined = http(server.api, "PUT", &format!("/v1/connections/{first_id}/rooms/desk"), &[], b"");
    assert_eq!(joined.json(), json!({ "joined": 1, "instances": 1 }));
    assert_eq!(delivered(publish_room(server.api, "desk", r#""first only""#, "")), 1);
    assert_eq!(first_tab.expect_event("the room message").data, r#""first only""#);
    assert_eq!(delivered(publish_user(server.api, "fay", r#""both""#, "")), 2);
    assert_eq!(second_tab.expect_event("the user message").data, r#""both""#, "the second tab got no room message");

    // Another tenant's route cannot move this connection.
    let foreign = http(server.api, "PUT", &format!("/v1/t/acme/connections/{second_id}/rooms/desk"), &[], b"");
    foreign.assert_error(404, "not_found");
    drop(first_tab);
    assert!(wait_until(Duration::from_secs(10), || server.stats()["connections"] == 1));
    let gone = http(server.api, "DELETE", &format!("/v1/connections/{first_id}/rooms/desk"), &[], b"");
    gone.assert_error(404, "not_found");
}

#[test]
fn a_stalled_listener_loses_old_events_and_never_delays_deliveries() {
    // Gus's own queue holds a whole batch: only the listener may lose anything.
    let server = Server::start(&["--shards", "1", "--max-queue-items", "30000", "--max-queue-bytes", "16MiB"]);
    // A listener that reads nothing at all.
    let mut stalled = tcp_connect(server.api);
    stalled.write_all(b"GET /v1/events HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert!(wait_until(Duration::from_secs(10), || server.stats()["eventListeners"] == 1));
    let mut reader = SseClient::open_ready(server.public, "/sse?userId=gus");

    let batch: Vec<Value> = (0..20_000).map(|i| json!({ "user": "gus", "data": i })).collect();
    let mut received = 0;
    for _ in 0..5 {
        let answer = publish_batch(server.api, &json!(batch));
        assert_eq!(answer.status, 200, "{}", answer.text());
        for _ in 0..batch.len() {
            reader.expect_event("gus's messages keep flowing");
            received += 1;
        }
    }
    assert_eq!(received, 100_000);
    let dropped = server.stats()["eventsDropped"].as_u64().unwrap();
    assert!(dropped > 0, "100,000 publish events should overflow a listener that reads nothing");
    drop(stalled);
}

#[test]
fn the_newest_connection_of_a_user_wins_with_evict_oldest() {
    let args = ["--shards", "2", "--max-connections-per-user", "2", "--user-limit-policy", "evict-oldest"];
    let server = Server::start(&args);
    let mut listener = SseClient::open_ready(server.api, "/v1/events?types=disconnect");
    let mut first = SseClient::open_ready(server.public, "/sse?userId=hal");
    let mut second = SseClient::open_ready(server.public, "/sse?userId=hal");
    let mut third = SseClient::open_ready(server.public, "/sse?userId=hal");

    let notice = first.expect_event("the eviction notice");
    assert_eq!((notice.event.as_deref(), notice.id.as_deref()), (Some("ssekify.evicted"), None));
    assert_eq!(serde_json::from_str::<Value>(&notice.data).unwrap(), json!({ "reason": "max_connections_per_user" }));
    assert!(first.expect_closed(IO_TIMEOUT), "the evicted connection closes");
    let (_, gone) = next(&mut listener, "the eviction");
    assert_eq!((&gone["user"], &gone["reason"]), (&json!("hal"), &json!("evicted")));

    assert_eq!(delivered(publish_user(server.api, "hal", r#""still here""#, "")), 2);
    assert_eq!(second.expect_event("second").data, r#""still here""#);
    assert_eq!(third.expect_event("third").data, r#""still here""#);
}

#[test]
fn reject_keeps_the_old_connections() {
    let server = Server::start(&["--max-connections-per-user", "1"]);
    let mut only = SseClient::open_ready(server.public, "/sse?userId=ida");
    SseClient::connect(server.public, "/sse?userId=ida", &[]).assert_error(429, "too_many_connections");
    assert_eq!(delivered(publish_user(server.api, "ida", r#""kept""#, "")), 1);
    assert_eq!(only.expect_event("the kept connection").data, r#""kept""#);
}

/// A stand-in for the application's events endpoint: records every POSTed
/// `{"events":[…]}` body; answers `500` to the first `fail_first` POSTs.
fn events_endpoint(fail_first: usize) -> (std::net::SocketAddr, std::sync::mpsc::Receiver<Vec<Value>>) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (index, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut request = Vec::new();
            let mut chunk = [0u8; 64 * 1024];
            let body = loop {
                let read = stream.read(&mut chunk).unwrap_or(0);
                if read == 0 {
                    break None;
                }
                request.extend_from_slice(&chunk[..read]);
                let text = String::from_utf8_lossy(&request).into_owned();
                let Some(end) = text.find("\r\n\r\n") else { continue };
                let length: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap();
                if request.len() >= end + 4 + length {
                    break Some(request[end + 4..end + 4 + length].to_vec());
                }
            };
            let Some(body) = body else { continue };
            let status = if index < fail_first { "500 Internal Server Error" } else { "204 No Content" };
            let _ = stream
                .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
            if index >= fail_first {
                let parsed: Value = serde_json::from_slice(&body).expect("a JSON body");
                if tx.send(parsed["events"].as_array().expect("an events array").clone()).is_err() {
                    return;
                }
            }
        }
    });
    (addr, rx)
}

#[test]
fn events_are_posted_in_batches_and_retried() {
    let (addr, posts) = events_endpoint(1);
    let url = format!("http://{addr}/hooks/ssekify");
    let server = Server::start(&["--events-url", &url, "--max-queue-items", "3000"]);
    let mut jo = SseClient::open_ready(server.public, "/sse?userId=jo");
    let batch: Vec<Value> = (0..2500).map(|i| json!({ "user": "jo", "data": i })).collect();
    assert_eq!(publish_batch(server.api, &json!(batch)).status, 200);
    for _ in 0..2500 {
        jo.expect_event("jo's messages");
    }
    drop(jo);

    let mut events = Vec::new();
    let mut sizes = Vec::new();
    let got_all = wait_until(Duration::from_secs(30), || {
        while let Ok(batch) = posts.try_recv() {
            sizes.push(batch.len());
            events.extend(batch);
        }
        events.iter().any(|e| e["type"] == "disconnect")
    });
    assert!(got_all, "no disconnect among {} posted events (batches {sizes:?})", events.len());
    assert!(sizes.iter().all(|&n| n <= 1000), "a POST holds at most 1000 events: {sizes:?}");
    let kinds = |kind: &str| events.iter().filter(|e| e["type"] == kind).count();
    assert_eq!(
        (kinds("connect"), kinds("publish"), kinds("disconnect")),
        (1, 2500, 1),
        "after one failed POST, retried"
    );
    let connect = events.iter().find(|e| e["type"] == "connect").unwrap();
    assert_eq!(connect["user"], "jo");
    let stats = server.stats();
    assert_eq!(stats["eventsPosted"], 2502);
    assert!(stats["eventsPostFailures"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(stats["eventsDropped"], 0);
}
