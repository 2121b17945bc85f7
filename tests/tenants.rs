//! Tenants (API.md "Tenants"): `GET /t/{tenant}/sse` and `/v1/t/{tenant}/…`
//! address a namespace of their own. Covered: users, rooms and broadcasts
//! kept apart between the default namespace and two tenants that use the
//! same user and room names (single and batch publishes, on both drivers);
//! replay per tenant; idempotency keys per tenant; `--tenants` (404) and bad
//! tenant names (400); admin closes and replay clears touching one namespace
//! only; the per-user connection limit counted per tenant; tenant stats; the
//! api key on tenant routes.
//!
//! Every server runs two shards, so users and rooms are spread across them.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const SHARDS: &[&str] = &["--shards", "2"];
/// Long enough for a stray delivery to show up.
const QUIET: Duration = Duration::from_millis(300);

/// The api path prefix of `tenant` (`None`: the default namespace).
fn v1(tenant: Option<&str>) -> String {
    match tenant {
        None => "/v1".to_string(),
        Some(tenant) => format!("/v1/t/{}", pct(tenant)),
    }
}

/// Subscribe path of `tenant`: `/sse?…` or `/t/{tenant}/sse?…`.
fn sse(tenant: Option<&str>, user: &str, rooms: &[&str]) -> String {
    let path = sse_path(user, rooms);
    match tenant {
        None => path,
        Some(tenant) => format!("/t/{}{path}", pct(tenant)),
    }
}

/// `POST {v1}/{what}` with a text body; the JSON answer (asserting 200).
fn post(api: SocketAddr, tenant: Option<&str>, what: &str, body: &str) -> Value {
    ok_json(http(api, "POST", &format!("{}/{what}", v1(tenant)), &[], body.as_bytes()))
}

/// `DELETE {v1}/{what}`; the JSON answer (asserting 200).
fn delete(api: SocketAddr, tenant: Option<&str>, what: &str) -> Value {
    ok_json(http(api, "DELETE", &format!("{}/{what}", v1(tenant)), &[], b""))
}

/// One subscriber per namespace for the same user, room, and anonymous.
struct Subscribers {
    user: SseClient,
    room: SseClient,
    anonymous: SseClient,
}

const NAMESPACES: [Option<&str>; 3] = [None, Some("acme"), Some("globex")];

fn subscribe_all(server: &Server) -> Vec<Subscribers> {
    let subscribers: Vec<Subscribers> = NAMESPACES
        .iter()
        .map(|&ns| Subscribers {
            user: SseClient::open_ready(server.public, &sse(ns, "u", &[])),
            room: SseClient::open_ready(server.public, &sse(ns, "", &["r"])),
            anonymous: SseClient::open_ready(server.public, &sse(ns, "", &[])),
        })
        .collect();
    wait_connections(server.api, 9);
    subscribers
}

/// Asserts that every client got exactly `expected[namespace][client]` (data
/// of each event, in order) and nothing else.
fn expect(subscribers: &mut [Subscribers], expected: [[&[&str]; 3]; 3], what: &str) {
    for (n, subs) in subscribers.iter_mut().enumerate() {
        for (c, (name, client)) in
            [("user", &mut subs.user), ("room", &mut subs.room), ("anonymous", &mut subs.anonymous)]
                .into_iter()
                .enumerate()
        {
            let who = format!("{what}: {:?} {name}", NAMESPACES[n]);
            let got: Vec<String> = expected[n][c].iter().map(|_| client.expect_event(&who).data).collect::<Vec<_>>();
            assert_eq!(got, expected[n][c], "{who}");
        }
    }
    std::thread::sleep(QUIET);
    for (n, subs) in subscribers.iter_mut().enumerate() {
        for (name, client) in [("user", &mut subs.user), ("room", &mut subs.room), ("anonymous", &mut subs.anonymous)] {
            if let Some(e) = client.next_event(Duration::from_millis(20)) {
                panic!("{what}: {:?} {name} got a stray event {e:?}", NAMESPACES[n]);
            }
        }
    }
}

#[test]
fn users_rooms_and_broadcasts_stay_in_their_namespace() {
    for driver in drivers() {
        let server = Server::start_with_driver(driver, SHARDS);
        let api = server.api;
        let mut subs = subscribe_all(&server);
        let none: &[&str] = &[];

        // The same user and room names in three namespaces.
        for (n, ns) in NAMESPACES.iter().enumerate() {
            let tag = ns.unwrap_or("default");
            let to_user = post(api, *ns, "users/u/events", &format!("{tag} to u"));
            assert_eq!(to_user["delivered"], 1, "[{driver}] {tag}: {to_user}");
            let to_room = post(api, *ns, "rooms/r/events", &format!("{tag} to r"));
            assert_eq!(to_room["delivered"], 1, "[{driver}] {tag}: {to_room}");
            let mut expected = [[none; 3]; 3];
            let user_msg = [format!("{tag} to u")];
            let room_msg = [format!("{tag} to r")];
            let user_refs: Vec<&str> = user_msg.iter().map(String::as_str).collect();
            let room_refs: Vec<&str> = room_msg.iter().map(String::as_str).collect();
            expected[n][0] = &user_refs;
            expected[n][1] = &room_refs;
            expect(&mut subs, expected, &format!("[{driver}] user and room publishes in {tag}"));
        }

        // Broadcasts: the default one reaches the default namespace only, a
        // tenant's that tenant only.
        for (n, ns) in NAMESPACES.iter().enumerate() {
            let tag = ns.unwrap_or("default");
            let answer = post(api, *ns, "broadcast", &format!("{tag} to all"));
            assert_eq!(answer["delivered"], 3, "[{driver}] {tag} broadcast: {answer}");
            let message = [format!("{tag} to all")];
            let refs: Vec<&str> = message.iter().map(String::as_str).collect();
            let mut expected = [[none; 3]; 3];
            expected[n] = [&refs, &refs, &refs];
            expect(&mut subs, expected, &format!("[{driver}] broadcast in {tag}"));
        }

        // A batch under a tenant: every target of it is the tenant's.
        let batch = json!({ "messages": [
            { "user": "u", "data": "batch to u" },
            { "room": "r", "data": "batch to r" },
            { "all": true, "data": "batch to all" },
        ]});
        let answer = ok_json(http(
            api,
            "POST",
            "/v1/t/globex/publish",
            &[("Content-Type", "application/json")],
            batch.to_string().as_bytes(),
        ));
        let delivered: Vec<&Value> = answer["results"].as_array().unwrap().iter().map(|r| &r["delivered"]).collect();
        assert_eq!(delivered, [&json!(1), &json!(1), &json!(3)], "[{driver}] {answer}");
        let mut expected = [[none; 3]; 3];
        expected[2] = [&["batch to u", "batch to all"], &["batch to r", "batch to all"], &["batch to all"]];
        expect(&mut subs, expected, &format!("[{driver}] batch in globex"));

        // Stats: instance-wide on /v1/stats, one tenant's on its own route.
        let all = stats(api);
        assert_eq!(stat(&all, "connections"), 9, "[{driver}] {all}");
        assert_eq!(stat(&all, "users"), 3, "[{driver}] one `u` per namespace: {all}");
        assert_eq!(stat(&all, "rooms"), 3, "[{driver}] one `r` per namespace: {all}");
        let counts = |stats: &Value| json!({ "tenant": stats["tenant"], "connections": stats["connections"], "users": stats["users"], "rooms": stats["rooms"] });
        let acme = ok_json(http(api, "GET", "/v1/t/acme/stats", &[], b""));
        assert_eq!(counts(&acme), json!({ "tenant": "acme", "connections": 3, "users": 1, "rooms": 1 }), "[{driver}]");
        assert_eq!(acme["label"], "_other", "[{driver}] no tenant config: every tenant's counters are _other's");
        assert!(acme["replayBytes"].as_u64().unwrap() > 0, "[{driver}] {acme}");
        let empty = ok_json(http(api, "GET", "/v1/t/nobody/stats", &[], b""));
        assert_eq!(
            counts(&empty),
            json!({ "tenant": "nobody", "connections": 0, "users": 0, "rooms": 0 }),
            "[{driver}]"
        );
        assert_eq!(empty["replayBytes"], 0, "[{driver}]");
        assert_eq!(empty["limits"]["maxConnections"], Value::Null, "[{driver}] no tenant config: no limits");
    }
}

#[test]
fn replay_is_per_tenant() {
    let server = Server::start(SHARDS);
    let api = server.api;
    let ids = |tenant: Option<&str>, what: &str, n: usize| -> Vec<String> {
        (0..n)
            .map(|i| {
                let tag = tenant.unwrap_or("default");
                post(api, tenant, what, &format!("{tag} {what} {i}"))["id"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let acme_user = ids(Some("acme"), "users/u/events", 3);
    let default_user = ids(None, "users/u/events", 2);
    let acme_all = ids(Some("acme"), "broadcast", 1);
    let default_all = ids(None, "broadcast", 1);
    ids(Some("globex"), "broadcast", 1);

    // Resuming in acme after its first message: acme's user ring and acme's
    // broadcasts, in publish order, nothing of the default namespace's or globex's.
    let mut acme = SseClient::resume(server.public, &sse(Some("acme"), "u", &[]), &acme_user[0]);
    let got: Vec<String> = (0..3).map(|_| acme.expect_event("acme replay").data).collect();
    assert_eq!(got, ["acme users/u/events 1", "acme users/u/events 2", "acme broadcast 0"]);
    acme.expect_no_event(QUIET);

    // The default namespace's `u` resumes its own ring.
    let mut plain = SseClient::resume(server.public, &sse(None, "u", &[]), &default_user[0]);
    let got: Vec<String> = (0..2).map(|_| plain.expect_event("default replay").data).collect();
    assert_eq!(got, ["default users/u/events 1", "default broadcast 0"]);
    plain.expect_no_event(QUIET);

    // An id of another namespace is unknown here: the gap notice, then
    // everything buffered for this connection in its own namespace.
    let mut crossed = SseClient::resume(server.public, &sse(None, "u", &[]), &acme_all[0]);
    let gap = crossed.expect_event("gap");
    assert_eq!(gap.event.as_deref(), Some("ssekify.gap"));
    let got: Vec<Option<String>> = (0..3).map(|_| crossed.expect_event("after the gap").id).collect();
    assert_eq!(got, [Some(default_user[0].clone()), Some(default_user[1].clone()), Some(default_all[0].clone())]);
}

#[test]
fn idempotency_keys_are_per_tenant() {
    let server = Server::start(SHARDS);
    let api = server.api;
    let mut acme = SseClient::open_ready(server.public, &sse(Some("acme"), "", &[]));
    let mut plain = SseClient::open_ready(server.public, &sse(None, "", &[]));
    wait_connections(api, 2);
    let publish = |tenant: Option<&str>, body: &str| {
        http(api, "POST", &format!("{}/broadcast", v1(tenant)), &[("Idempotency-Key", "order-42")], body.as_bytes())
    };
    let first = publish(None, "default once");
    assert_eq!(first.status, 200, "{:?}", first.text());
    assert_eq!(first.header("idempotent-replayed"), None);
    let other = publish(Some("acme"), "acme once");
    assert_eq!(other.status, 200, "{:?}", other.text());
    assert_eq!(other.header("idempotent-replayed"), None, "the same key in another namespace is a new key");
    assert_ne!(first.json()["id"], other.json()["id"]);
    assert_eq!(other.json()["delivered"], 1);

    let repeat = publish(Some("acme"), "acme twice");
    assert_eq!(repeat.header("idempotent-replayed"), Some("true"));
    assert_eq!(repeat.json(), other.json(), "the first answer in acme again");
    let repeat = publish(None, "default twice");
    assert_eq!(repeat.header("idempotent-replayed"), Some("true"));
    assert_eq!(repeat.json(), first.json());

    assert_eq!(acme.expect_event("acme").data, "acme once");
    assert_eq!(plain.expect_event("default").data, "default once");
    acme.expect_no_event(QUIET);
    plain.expect_no_event(QUIET);
}

#[test]
fn the_tenants_flag_lists_the_tenants() {
    let server = Server::start(&["--shards", "2", "--tenants", "acme,globex"]);
    let api = server.api;
    let mut ok = SseClient::open_ready(server.public, &sse(Some("globex"), "u", &[]));
    let refused = SseClient::connect(server.public, &sse(Some("initech"), "u", &[]), &[]);
    refused.assert_error(404, "not_found");
    for (method, path) in [
        ("POST", "/v1/t/initech/users/u/events"),
        ("POST", "/v1/t/initech/rooms/r/events"),
        ("POST", "/v1/t/initech/broadcast"),
        ("POST", "/v1/t/initech/publish"),
        ("DELETE", "/v1/t/initech/users/u/connections"),
        ("DELETE", "/v1/t/initech/connections"),
        ("DELETE", "/v1/t/initech/users/u/recent"),
        ("DELETE", "/v1/t/initech/recent"),
        ("GET", "/v1/t/initech/stats"),
    ] {
        http(api, method, path, &[], b"x").assert_error(404, "not_found");
    }
    // Listed tenants and the default namespace work.
    assert_eq!(post(api, Some("globex"), "users/u/events", "hi")["delivered"], 1);
    assert_eq!(ok.expect_event("listed tenant").data, "hi");
    assert_eq!(post(api, None, "broadcast", "default")["delivered"], 0, "globex's u is not in the default namespace");
    // A bad name is still a 400, listed or not.
    SseClient::connect(server.public, "/t/a%2Cb/sse", &[]).assert_error(400, "invalid_request");
}

#[test]
fn bad_tenant_names_are_refused() {
    let server = Server::start(SHARDS);
    let api = server.api;
    let long = "x".repeat(129);
    for tenant in ["a%2Cb", "a%2Fb", "%01", "", long.as_str()] {
        let client = SseClient::connect(server.public, &format!("/t/{tenant}/sse"), &[]);
        client.assert_error(400, "invalid_request");
        http(api, "POST", &format!("/v1/t/{tenant}/broadcast"), &[], b"x").assert_error(400, "invalid_request");
        http(api, "DELETE", &format!("/v1/t/{tenant}/connections"), &[], b"").assert_error(400, "invalid_request");
    }
    // The longest valid name and any character but the excluded ones work.
    let longest = "x".repeat(128);
    for tenant in [longest.as_str(), "名前", "a b"] {
        let _client = SseClient::open_ready(server.public, &sse(Some(tenant), "u", &[]));
        assert_eq!(post(api, Some(tenant), "users/u/events", "x")["delivered"], 1, "{tenant}");
    }
    // Tenant routes exist for the publish, admin and stats routes only.
    http(api, "POST", "/v1/t/acme/admin/shutdown", &[], b"").assert_error(404, "not_found");
    http(api, "GET", "/v1/t/acme/metrics", &[], b"").assert_error(404, "not_found");
    http(server.public, "GET", "/t/acme/healthz", &[], b"").assert_error(404, "not_found");
    // A tenant subscribe path is public only.
    http(api, "GET", "/t/acme/sse", &[], b"").assert_error(404, "not_found");
    http(server.public, "POST", "/v1/t/acme/broadcast", &[], b"x").assert_error(404, "not_found");
}

#[test]
fn closes_and_clears_touch_one_namespace() {
    let server = Server::start(SHARDS);
    let api = server.api;
    let mut plain_u = SseClient::open_ready(server.public, &sse(None, "u", &[]));
    let mut acme_u = SseClient::open_ready(server.public, &sse(Some("acme"), "u", &[]));
    let mut acme_anon = SseClient::open_ready(server.public, &sse(Some("acme"), "", &["r"]));
    let mut globex_u = SseClient::open_ready(server.public, &sse(Some("globex"), "u", &[]));
    wait_connections(api, 4);

    // One user of one tenant.
    assert_eq!(delete(api, Some("acme"), "users/u/connections"), json!({ "closed": 1 }));
    assert!(acme_u.expect_closed(Duration::from_secs(5)), "acme's u is closed");
    wait_connections(api, 3);
    // Every connection of one tenant.
    assert_eq!(delete(api, Some("globex"), "connections"), json!({ "closed": 1 }));
    assert!(globex_u.expect_closed(Duration::from_secs(5)), "globex's u is closed");
    wait_connections(api, 2);
    // The default namespace's: the tenant's connection stays.
    assert_eq!(delete(api, None, "connections"), json!({ "closed": 1 }));
    assert!(plain_u.expect_closed(Duration::from_secs(5)), "the default u is closed");
    wait_connections(api, 1);
    assert_eq!(post(api, Some("acme"), "rooms/r/events", "still here")["delivered"], 1);
    assert_eq!(acme_anon.expect_event("acme's room member stays").data, "still here");

    // Replay rings: clearing one namespace's leaves the others'.
    let id = |tenant: Option<&str>, what: &str, body: &str| -> String {
        post(api, tenant, what, body)["id"].as_str().unwrap().to_string()
    };
    let acme_first = id(Some("acme"), "users/u/events", "a1");
    id(Some("acme"), "users/u/events", "a2");
    let plain_first = id(None, "users/u/events", "d1");
    id(None, "users/u/events", "d2");
    let globex_first = id(Some("globex"), "broadcast", "g1");
    id(Some("globex"), "broadcast", "g2");

    assert_eq!(delete(api, Some("acme"), "users/u/recent"), json!({ "cleared": true }));
    let mut resumed = SseClient::resume(server.public, &sse(Some("acme"), "u", &[]), &acme_first);
    assert_eq!(resumed.expect_event("cleared ring").event.as_deref(), Some("ssekify.gap"));
    resumed.expect_no_event(QUIET);
    drop(resumed);
    let mut resumed = SseClient::resume(server.public, &sse(None, "u", &[]), &plain_first);
    assert_eq!(resumed.expect_event("the default ring is untouched").data, "d2");
    drop(resumed);

    assert_eq!(delete(api, None, "recent"), json!({ "cleared": true }));
    let mut resumed = SseClient::resume(server.public, &sse(None, "u", &[]), &plain_first);
    assert_eq!(resumed.expect_event("cleared").event.as_deref(), Some("ssekify.gap"));
    resumed.expect_no_event(QUIET);
    drop(resumed);
    let mut resumed = SseClient::resume(server.public, &sse(Some("globex"), "", &[]), &globex_first);
    assert_eq!(resumed.expect_event("globex's broadcast ring is untouched").data, "g2");
    drop(resumed);

    assert_eq!(delete(api, Some("globex"), "recent"), json!({ "cleared": true }));
    let mut resumed = SseClient::resume(server.public, &sse(Some("globex"), "", &[]), &globex_first);
    assert_eq!(resumed.expect_event("cleared").event.as_deref(), Some("ssekify.gap"));
    resumed.expect_no_event(QUIET);
}

#[test]
fn the_per_user_limit_counts_per_tenant() {
    let server = Server::start(&["--shards", "2", "--max-connections-per-user", "1"]);
    let _plain = SseClient::open_ready(server.public, &sse(None, "u", &[]));
    let _acme = SseClient::open_ready(server.public, &sse(Some("acme"), "u", &[]));
    let _globex = SseClient::open_ready(server.public, &sse(Some("globex"), "u", &[]));
    wait_connections(server.api, 3);
    for tenant in NAMESPACES {
        let second = SseClient::connect(server.public, &sse(tenant, "u", &[]), &[]);
        second.assert_error(429, "too_many_connections");
    }
    let _other_user = SseClient::open_ready(server.public, &sse(Some("acme"), "v", &[]));
    wait_connections(server.api, 4);
}

#[test]
fn tenant_api_routes_need_the_api_key() {
    let server = Server::start(&["--api-key", "k", "--tenants", "acme"]);
    http(server.api, "POST", "/v1/t/acme/broadcast", &[], b"x").assert_error(401, "unauthorized");
    // The key is checked before the tenant, so unlisted names are not revealed.
    http(server.api, "POST", "/v1/t/initech/broadcast", &[], b"x").assert_error(401, "unauthorized");
    let answer = http(server.api, "POST", "/v1/t/acme/broadcast", &[("Authorization", "Bearer k")], b"x");
    assert_eq!(answer.status, 200, "{:?}", answer.text());
}
