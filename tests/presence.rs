//! Presence on one instance: a user's connections and a room's members,
//! counted over every shard, listed within `--presence-list-max`.

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

#[test]
fn with_a_bus_presence_is_asked_per_instance() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    let server = Server::start(&["--redis", &redis.url(), "--bus-timeout", "1s"]);
    let _dan = SseClient::open_ready(server.public, "/sse?userId=dan");
    http(server.api, "GET", "/v1/users/dan/presence", &[], b"").assert_error(501, "not_implemented");
    assert_eq!(get(server.api, "/v1/users/dan/presence?scope=local")["connections"], 1);
}
