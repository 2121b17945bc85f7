//! Presence: a user's connections and a room's members, counted over every
//! shard and, with a real Redis, over every instance (one killed, Redis
//! frozen), listed within `--presence-list-max`; the per-user limit across
//! instances (reject, evict-oldest, each instance alone without Redis); a
//! room change for another instance's connection.

mod common;
#[path = "support_redis/mod.rs"]
mod support_redis;

use std::time::Duration;

use common::*;
use serde_json::json;
use support_redis::*;

fn get(api: std::net::SocketAddr, path: &str) -> serde_json::Value {
    let response = http(api, "GET", path, &[], b"");
    assert_eq!(response.status, 200, "GET {path}: {}", response.text());
    response.json()
}

#[test]
fn users_and_rooms_are_counted_over_every_shard() {
    let server = Server::start(&["--shards", "2", "--presence-list-max", "2"]);
    assert_eq!(
        get(server.api, "/v1/users/ann/presence"),
        json!({ "user": "ann", "online": false, "connections": 0, "instances": 1 })
    );
    let ann_tabs: Vec<SseClient> =
        (0..2).map(|_| SseClient::open_ready(server.public, "/sse?userId=ann&rooms=lobby")).collect();
    let _ben = SseClient::open_ready(server.public, "/sse?userId=ben&rooms=lobby");
    let _cat = SseClient::open_ready(server.public, "/sse?userId=cat&rooms=lobby,kitchen");
    let _anonymous = SseClient::open_ready(server.public, "/sse?rooms=lobby");
    assert_eq!(
        get(server.api, "/v1/users/ann/presence"),
        json!({ "user": "ann", "online": true, "connections": 2, "instances": 1 })
    );
    assert_eq!(get(server.api, "/v1/rooms/lobby/presence"), json!({ "room": "lobby", "connections": 5, "users": 3 }));
    let tabs = get(server.api, "/v1/users/ann/presence?list=connections");
    let instance = server.stats()["instance"].as_str().unwrap().to_owned();
    let ids = tabs["connIds"].as_array().unwrap();
    assert_eq!((ids.len(), &tabs["truncated"]), (2, &json!(false)), "{tabs}");
    assert!(ids.iter().all(|id| id.as_str().unwrap().starts_with(&format!("{instance}-"))), "{tabs}");
    assert_ne!(ids[0], ids[1]);
    http(server.api, "GET", "/v1/users/ann/presence?list=users", &[], b"").assert_error(400, "invalid_request");
    let listed = get(server.api, "/v1/rooms/lobby/presence?list=users");
    assert_eq!(listed["truncated"], true, "{listed}");
    assert_eq!(listed["userIds"].as_array().unwrap().len(), 2, "{listed}");
    let kitchen = get(server.api, "/v1/rooms/kitchen/presence?list=users");
    assert_eq!(
        kitchen,
        json!({ "room": "kitchen", "connections": 1, "users": 1, "userIds": ["cat"], "truncated": false })
    );
    http(server.api, "GET", "/v1/rooms/lobby/presence?list=all", &[], b"").assert_error(400, "invalid_request");

    // A live join shows at once; closes show once the streams are gone.
    http(server.api, "PUT", "/v1/users/ben/rooms/kitchen", &[], b"");
    assert_eq!(get(server.api, "/v1/rooms/kitchen/presence")["users"], 2);
    drop(ann_tabs);
    assert!(wait_until(Duration::from_secs(10), || get(server.api, "/v1/users/ann/presence")["online"] == false));
    assert_eq!(get(server.api, "/v1/rooms/lobby/presence")["users"], 2);

    // A tenant's presence is its own.
    let _acme_ann = SseClient::open_ready(server.public, "/t/acme/sse?userId=ann");
    assert_eq!(get(server.api, "/v1/t/acme/users/ann/presence")["connections"], 1);
    assert_eq!(get(server.api, "/v1/users/ann/presence")["connections"], 0);
}

/// Two instances on one Redis, each seeing the other alive.
fn pair(redis: &RedisServer, extra: &[&str]) -> (Server, Server) {
    let url = redis.url();
    let start = || {
        let mut args = vec!["--redis", &url, "--shards", "2", "--bus-timeout", "1s"];
        args.extend_from_slice(extra);
        let server = Server::start(&args);
        assert!(wait_until(Duration::from_secs(15), || http(server.public, "GET", "/readyz", &[], b"").status == 200));
        server
    };
    let (a, b) = (start(), start());
    // Each hears the other's heartbeat within a second; an anonymous
    // connection on B is seen from A once it does.
    let _probe = SseClient::open_ready(b.public, "/sse?rooms=probe");
    assert!(wait_until(Duration::from_secs(10), || get(a.api, "/v1/rooms/probe/presence")["connections"] == 1));
    assert!(
        wait_until(Duration::from_secs(5), || a.stats()["bus"]["instances"] == 2 && b.stats()["bus"]["instances"] == 2)
    );
    (a, b)
}

/// The connection id the next `connect` event on `listener` names.
fn next_conn_id(listener: &mut SseClient) -> String {
    let event = listener.expect_event("a connect event");
    let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
    data["connId"].as_str().unwrap().to_owned()
}

#[test]
fn presence_adds_up_every_instance_and_forgets_one_that_died() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    let (a, b) = pair(&redis, &["--presence-list-max", "5"]);
    let _alice_a = SseClient::open_ready(a.public, "/sse?userId=alice&rooms=lobby");
    let alice_b: Vec<SseClient> =
        (0..2).map(|_| SseClient::open_ready(b.public, "/sse?userId=alice&rooms=lobby")).collect();
    let _bob_b = SseClient::open_ready(b.public, "/sse?userId=bob&rooms=lobby");
    let _anonymous_a = SseClient::open_ready(a.public, "/sse?rooms=lobby");

    assert_eq!(
        get(a.api, "/v1/users/alice/presence"),
        json!({ "user": "alice", "online": true, "connections": 3, "instances": 2 })
    );
    assert_eq!(
        get(a.api, "/v1/users/alice/presence?scope=local"),
        json!({ "user": "alice", "online": true, "connections": 1, "instances": 1 })
    );
    assert_eq!(get(b.api, "/v1/users/bob/presence")["connections"], 1, "asked from the other side too");
    assert_eq!(get(a.api, "/v1/users/carol/presence")["online"], false);
    // Her tabs, by id, wherever they are: the oldest first.
    let tabs = get(b.api, "/v1/users/alice/presence?list=connections");
    let ids: Vec<&str> = tabs["connIds"].as_array().unwrap().iter().map(|id| id.as_str().unwrap()).collect();
    let a_instance = a.stats()["instance"].as_str().unwrap().to_owned();
    assert_eq!(ids.len(), 3, "{tabs}");
    assert_eq!(ids.iter().filter(|id| id.starts_with(&a_instance)).count(), 1, "{tabs}");
    // Alice is on both instances and counts once among the room's users.
    assert_eq!(
        get(a.api, "/v1/rooms/lobby/presence?list=users"),
        json!({ "room": "lobby", "connections": 5, "users": 2, "userIds": ["alice", "bob"], "truncated": false })
    );
    assert_eq!(
        get(a.api, "/v1/rooms/lobby/presence?scope=local"),
        json!({ "room": "lobby", "connections": 2, "users": 1 })
    );
    assert_eq!(get(a.api, "/v1/t/acme/users/alice/presence")["connections"], 0, "a tenant's alice is another user");

    drop(alice_b);
    assert!(wait_until(Duration::from_secs(10), || get(a.api, "/v1/users/alice/presence")["connections"] == 1));

    // B dies without a word: its connections stop counting once its
    // heartbeats stop (--bus-timeout and two heartbeats), nothing to clean up.
    b.signal("KILL");
    assert!(wait_until(Duration::from_secs(10), || get(a.api, "/v1/rooms/lobby/presence")["connections"] == 2));
    assert_eq!(
        get(a.api, "/v1/users/alice/presence"),
        json!({ "user": "alice", "online": true, "connections": 1, "instances": 1 })
    );
    assert_eq!(get(a.api, "/v1/users/bob/presence")["online"], false);
}

#[test]
fn without_redis_cluster_presence_is_503_and_local_presence_still_answers() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    let server = Server::start(&["--redis", &redis.url(), "--bus-timeout", "500ms"]);
    let ready = |status: u16| http(server.public, "GET", "/readyz", &[], b"").status == status;
    assert!(wait_until(Duration::from_secs(15), || ready(200)));
    let _dan = SseClient::open_ready(server.public, "/sse?userId=dan");
    assert_eq!(get(server.api, "/v1/users/dan/presence")["connections"], 1);
    redis.signal("STOP");
    assert!(wait_until(Duration::from_secs(10), || ready(503)));
    let refused = http(server.api, "GET", "/v1/users/dan/presence", &[], b"");
    refused.assert_error(503, "bus_unavailable");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(get(server.api, "/v1/users/dan/presence?scope=local")["connections"], 1);
    redis.signal("CONT");
    assert!(wait_until(Duration::from_secs(15), || ready(200)));
    assert_eq!(get(server.api, "/v1/users/dan/presence")["connections"], 1);
}

#[test]
fn the_per_user_limit_holds_across_instances() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    let (a, b) = pair(&redis, &["--max-connections-per-user", "2"]);
    let _on_a = SseClient::open_ready(a.public, "/sse?userId=erin");
    let on_b = SseClient::open_ready(b.public, "/sse?userId=erin");
    for server in [&a, &b] {
        let third = SseClient::connect(server.public, "/sse?userId=erin", &[]);
        third.assert_error(429, "too_many_connections");
        assert!(third.error_text().contains("across instances"), "{}", third.error_text());
    }
    let _other_user = SseClient::open_ready(a.public, "/sse?userId=finn");
    drop(on_b);
    assert!(wait_until(Duration::from_secs(10), || get(a.api, "/v1/users/erin/presence")["connections"] == 1));
    let mut again = SseClient::open_ready(a.public, "/sse?userId=erin");
    assert_eq!(delivered(publish_user(a.api, "erin", r#""still two""#, "&scope=local")), 2);
    assert_eq!(again.next_event(IO_TIMEOUT).unwrap().data, r#""still two""#);
}

#[test]
fn without_redis_the_per_user_limit_holds_on_each_instance() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    let (a, b) = pair(&redis, &["--max-connections-per-user", "1"]);
    let _on_b = SseClient::open_ready(b.public, "/sse?userId=ivy");
    assert!(wait_until(Duration::from_secs(10), || get(a.api, "/v1/users/ivy/presence")["connections"] == 1));
    SseClient::connect(a.public, "/sse?userId=ivy", &[]).assert_error(429, "too_many_connections");

    // Frozen Redis: the instances cannot ask each other, so each holds the
    // limit for its own streams, and subscribers still get in.
    redis.signal("STOP");
    let ready = |status: u16| http(a.public, "GET", "/readyz", &[], b"").status == status;
    assert!(wait_until(Duration::from_secs(10), || ready(503)), "A noticed the frozen Redis");
    let mut on_a = SseClient::open_ready(a.public, "/sse?userId=ivy");
    let second = SseClient::connect(a.public, "/sse?userId=ivy", &[]);
    second.assert_error(429, "too_many_connections");
    assert!(!second.error_text().contains("across instances"), "A's own count: {}", second.error_text());
    assert_eq!(delivered(publish_user(a.api, "ivy", r#""local""#, "&scope=local")), 1);
    assert_eq!(on_a.next_event(IO_TIMEOUT).unwrap().data, r#""local""#);

    redis.signal("CONT");
    assert!(wait_until(Duration::from_secs(15), || ready(200)), "the bus came back");
}

#[test]
fn evict_oldest_closes_the_oldest_connection_on_another_instance() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    let (a, b) = pair(&redis, &["--max-connections-per-user", "2", "--user-limit-policy", "evict-oldest"]);
    let mut oldest_on_b = SseClient::open_ready(b.public, "/sse?userId=gus");
    // Opening times are compared to a quarter second.
    std::thread::sleep(Duration::from_millis(600));
    let mut second_on_a = SseClient::open_ready(a.public, "/sse?userId=gus");
    std::thread::sleep(Duration::from_millis(600));
    let mut newest_on_a = SseClient::open_ready(a.public, "/sse?userId=gus");

    let evicted = oldest_on_b.expect_event("the eviction");
    assert_eq!(evicted.event.as_deref(), Some("ssekify.evicted"));
    assert_eq!(evicted.data, r#"{"reason":"max_connections_per_user"}"#);
    assert_eq!(evicted.id, None);
    assert!(oldest_on_b.expect_closed(IO_TIMEOUT), "then closed");
    assert!(wait_until(Duration::from_secs(10), || get(b.api, "/v1/users/gus/presence")["connections"] == 2));
    assert_eq!(delivered(publish_user(a.api, "gus", r#""both""#, "")), 2);
    assert_eq!(second_on_a.next_event(IO_TIMEOUT).unwrap().data, r#""both""#);
    assert_eq!(newest_on_a.next_event(IO_TIMEOUT).unwrap().data, r#""both""#);
}

#[test]
fn a_connection_of_another_instance_is_found_there_or_404() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    let (a, b) = pair(&redis, &[]);
    let mut listener = SseClient::open_ready(b.api, "/v1/events?types=connect");
    let mut hal = SseClient::open_ready(b.public, "/sse?userId=hal");
    let id = next_conn_id(&mut listener);

    let joined = http(a.api, "PUT", &format!("/v1/connections/{id}/rooms/desk"), &[], b"");
    assert_eq!(joined.json(), json!({ "joined": 0, "instances": 2 }), "applied on B through the log");
    assert_eq!(ok_json(publish_room(a.api, "desk", r#""at the desk""#, ""))["instances"], 2);
    assert_eq!(hal.next_event(IO_TIMEOUT).unwrap().data, r#""at the desk""#);

    let (instance, rest) = id.split_once('-').unwrap();
    let serial = rest.rsplit('-').next().unwrap();
    let gone = format!("{}{}", &id[..id.len() - serial.len()], serial.parse::<u64>().unwrap() + 100);
    for missing in [gone, "ffffffff-0-0-1".to_owned(), format!("{instance}-9-0-1")] {
        let path = format!("/v1/connections/{missing}/rooms/desk");
        http(a.api, "PUT", &path, &[], b"").assert_error(404, "not_found");
    }
    let other_tenant = format!("/v1/t/acme/connections/{id}/rooms/desk");
    http(a.api, "PUT", &other_tenant, &[], b"").assert_error(404, "not_found");
}
