//! Live room membership: a connected user joins and leaves rooms without
//! reconnecting, on one instance and across two through a real Redis.

mod common;
#[path = "support_redis/mod.rs"]
mod support_redis;

use std::time::Duration;

use common::*;
use serde_json::json;
use support_redis::*;

fn change(api: std::net::SocketAddr, method: &str, path: &str) -> HttpResponse {
    http(api, method, path, &[], b"")
}

#[test]
fn a_user_joins_and_leaves_a_room_while_connected() {
    let server = Server::start(&["--shards", "2"]);
    let mut alice = SseClient::open_ready(server.public, "/sse?userId=alice");
    let mut second_tab = SseClient::open_ready(server.public, "/sse?userId=alice");
    assert_eq!(delivered(publish_room(server.api, "lobby", r#""before""#, "")), 0);

    let joined = change(server.api, "PUT", "/v1/users/alice/rooms/lobby");
    assert_eq!(joined.status, 200, "{}", joined.text());
    assert_eq!(joined.json(), json!({ "joined": 2, "instances": 1 }));
    assert_eq!(delivered(publish_room(server.api, "lobby", r#""hello room""#, "")), 2);
    assert_eq!(alice.next_event(IO_TIMEOUT).unwrap().data, r#""hello room""#);
    assert_eq!(second_tab.next_event(IO_TIMEOUT).unwrap().data, r#""hello room""#);
    assert_eq!(server.stats()["rooms"], 1);

    let again = change(server.api, "PUT", "/v1/users/alice/rooms/lobby");
    assert_eq!(again.json(), json!({ "joined": 0, "instances": 1 }), "a join already in effect changes nothing");

    let left = change(server.api, "DELETE", "/v1/users/alice/rooms/lobby");
    assert_eq!(left.json(), json!({ "left": 2, "instances": 1 }));
    assert_eq!(delivered(publish_room(server.api, "lobby", r#""after""#, "")), 0);
    assert_eq!(server.stats()["rooms"], 0);

    // Nobody connected: nothing changes, and nothing is remembered for later.
    assert_eq!(change(server.api, "PUT", "/v1/users/bob/rooms/lobby").json(), json!({ "joined": 0, "instances": 1 }));
    let mut bob = SseClient::open_ready(server.public, "/sse?userId=bob");
    assert_eq!(delivered(publish_room(server.api, "lobby", r#""later""#, "")), 0);
    assert_eq!(delivered(publish_user(server.api, "bob", r#""direct""#, "")), 1);
    assert_eq!(bob.next_event(IO_TIMEOUT).unwrap().data, r#""direct""#, "bob got no room message first");
}

#[test]
fn live_joins_respect_the_room_limit_names_and_tenants() {
    let server = Server::start(&["--max-rooms-per-connection", "2"]);
    let _alice = SseClient::open_ready(server.public, "/sse?userId=alice&rooms=a");
    assert_eq!(change(server.api, "PUT", "/v1/users/alice/rooms/b").json()["joined"], 1);
    change(server.api, "PUT", "/v1/users/alice/rooms/c").assert_error(409, "too_many_rooms");
    assert_eq!(change(server.api, "DELETE", "/v1/users/alice/rooms/a").json()["left"], 1);
    assert_eq!(change(server.api, "PUT", "/v1/users/alice/rooms/c").json()["joined"], 1);

    change(server.api, "PUT", "/v1/users/alice/rooms/a%2Cb").assert_error(400, "invalid_request");
    change(server.api, "PUT", "/v1/connections/nonsense/rooms/a").assert_error(400, "invalid_request");
    change(server.api, "PUT", "/v1/connections/00000000-0-0-1/rooms/a").assert_error(404, "not_found");
    let post = change(server.api, "POST", "/v1/users/alice/rooms/a");
    post.assert_error(405, "method_not_allowed");
    assert_eq!(post.header("allow"), Some("PUT, DELETE, OPTIONS"));

    // A tenant's alice is another user; the default alice stays where she is.
    let mut acme_alice = SseClient::open_ready(server.public, "/t/acme/sse?userId=alice");
    assert_eq!(change(server.api, "PUT", "/v1/t/acme/users/alice/rooms/lobby").json()["joined"], 1);
    assert_eq!(delivered(publish_room(server.api, "lobby", r#""default""#, "")), 0);
    let tenant_room = http(server.api, "POST", "/v1/t/acme/rooms/lobby/events", &[], br#""acme""#);
    assert_eq!(tenant_room.json()["delivered"], 1);
    assert_eq!(acme_alice.next_event(IO_TIMEOUT).unwrap().data, r#""acme""#);
}

#[test]
fn a_join_crosses_instances_in_order_with_the_users_messages() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    let url = redis.url();
    let start = || {
        let server = Server::start(&["--redis", &url, "--shards", "2", "--bus-timeout", "1s"]);
        assert!(wait_until(Duration::from_secs(15), || http(server.public, "GET", "/readyz", &[], b"").status == 200));
        server
    };
    let (a, b) = (start(), start());
    let mut alice_on_b = SseClient::open_ready(b.public, "/sse?userId=alice");

    let joined = change(a.api, "PUT", "/v1/users/alice/rooms/lobby");
    assert_eq!(joined.json(), json!({ "joined": 0, "instances": 2 }), "A has no connection of alice");
    // A message to alice after the join is applied after it on B too.
    publish_user(a.api, "alice", r#""marker""#, "");
    assert_eq!(alice_on_b.next_event(IO_TIMEOUT).unwrap().data, r#""marker""#);
    assert_eq!(ok_json(publish_room(a.api, "lobby", r#""to the room""#, ""))["instances"], 2);
    assert_eq!(alice_on_b.next_event(IO_TIMEOUT).unwrap().data, r#""to the room""#);

    let left = change(a.api, "DELETE", "/v1/users/alice/rooms/lobby");
    assert_eq!(left.json(), json!({ "left": 0, "instances": 2 }));
    publish_user(a.api, "alice", r#""marker 2""#, "");
    assert_eq!(alice_on_b.next_event(IO_TIMEOUT).unwrap().data, r#""marker 2""#);
    publish_room(a.api, "lobby", r#""not for alice""#, "");
    publish_user(a.api, "alice", r#""marker 3""#, "");
    assert_eq!(alice_on_b.next_event(IO_TIMEOUT).unwrap().data, r#""marker 3""#, "the room message did not come");

    // On the instance holding her, the answer counts her connection.
    let on_b = change(b.api, "PUT", "/v1/users/alice/rooms/lobby?scope=local");
    assert_eq!(on_b.json(), json!({ "joined": 1, "instances": 1 }));
}

#[test]
fn a_room_change_redis_cannot_acknowledge_is_503_and_a_retry_applies_it() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    let server = Server::start(&["--redis", &redis.url(), "--bus-timeout", "500ms"]);
    let ready = |status: u16| http(server.public, "GET", "/readyz", &[], b"").status == status;
    assert!(wait_until(Duration::from_secs(15), || ready(200)));
    let mut kim = SseClient::open_ready(server.public, "/sse?userId=kim");

    // A frozen Redis: the change is not acknowledged, and not applied here either.
    redis.signal("STOP");
    assert!(wait_until(Duration::from_secs(10), || ready(503)), "the bus noticed the frozen Redis");
    let refused = change(server.api, "PUT", "/v1/users/kim/rooms/desk");
    refused.assert_error(503, "bus_unavailable");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(get_rooms(&server), 0, "nothing joined without Redis's acknowledgement");

    redis.signal("CONT");
    assert!(wait_until(Duration::from_secs(15), || ready(200)), "the bus came back");
    assert_eq!(change(server.api, "PUT", "/v1/users/kim/rooms/desk").json()["joined"], 1, "the retry applies it");
    assert_eq!(delivered(publish_room(server.api, "desk", r#""back""#, "")), 1);
    assert_eq!(kim.next_event(IO_TIMEOUT).unwrap().data, r#""back""#);
}

fn get_rooms(server: &Server) -> u64 {
    server.stats()["rooms"].as_u64().unwrap()
}
