//! Tenant quotas and keys (API.md "Tenant quotas and keys") on one instance,
//! through the real binary and real sockets: `maxConnections` (429
//! `tenant_quota`, other tenants unaffected, a freed place reusable),
//! `publishRate`/`publishBurst` (the burst passes, then 429 with
//! `Retry-After`, a batch takes one token per message, a batch over the
//! burst is 413, the bucket refills), `recentMaxBytes` (a tenant's rings
//! evicted under its budget while another tenant's stay and resume), tenant
//! `apiKey`s (403 on other tenants' and instance-wide routes, accepted on
//! their own), SIGHUP lowering and raising limits with streams kept open and
//! a broken file refused with the old config still enforced, the metrics'
//! `tenant` label, and a bad file refused at start; and `maxConnections`
//! over two instances sharing a real Redis.
//!
//! Servers run two shards (one where eviction order must be exact, one where
//! every single publish completes on the shard that read it), so a tenant's
//! subscribers are spread across them.

mod common;
#[path = "support_redis/mod.rs"]
mod support_redis;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use support_redis::{require_redis, RedisServer};

/// A tenant config file in the temp directory, removed on drop.
struct TenantFile(PathBuf);

impl TenantFile {
    fn new(name: &str, config: &Value) -> TenantFile {
        let path = std::env::temp_dir().join(format!("ssekify-tenant-quotas-{name}-{}.json", std::process::id()));
        let file = TenantFile(path);
        file.write(&config.to_string());
        file
    }

    /// Replaces the file's text (written whole, then renamed into place).
    fn write(&self, text: &str) {
        let temp = self.0.with_extension("tmp");
        std::fs::write(&temp, text).unwrap();
        std::fs::rename(&temp, &self.0).unwrap();
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TenantFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn start(file: &TenantFile, extra: &[&str]) -> Server {
    let mut args = vec!["--shards", "2", "--tenant-config", file.path()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// `GET /t/{tenant}/sse?userId={user}` (anonymous when `user` is empty).
fn sse(tenant: &str, user: &str) -> String {
    format!("/t/{tenant}{}", sse_path(user, &[]))
}

fn tenant_stats(api: SocketAddr, tenant: &str) -> Value {
    ok_json(http(api, "GET", &format!("/v1/t/{tenant}/stats"), &[], b""))
}

/// Waits until `tenant` has `n` connections on the instance.
fn wait_tenant_connections(api: SocketAddr, tenant: &str, n: u64) {
    let mut last = Value::Null;
    let ok = wait_until(Duration::from_secs(10), || {
        last = tenant_stats(api, tenant);
        last["connections"] == n
    });
    assert!(ok, "expected {n} connections of {tenant}: {last}");
}

/// Waits until the server's output holds `count` lines containing `text`.
fn wait_log(server: &Server, text: &str, count: usize) {
    let ok = wait_until(Duration::from_secs(10), || server.logs().matches(text).count() >= count);
    assert!(ok, "no {count} lines with `{text}` in:\n{}", server.logs());
}

fn publish(api: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> HttpResponse {
    http(api, "POST", path, headers, body.as_bytes())
}

fn batch(api: SocketAddr, tenant: &str, messages: usize) -> HttpResponse {
    let messages: Vec<Value> = (0..messages).map(|i| json!({ "all": true, "data": format!("m{i}") })).collect();
    let body = json!({ "messages": messages }).to_string();
    publish(api, &format!("/v1/t/{tenant}/publish"), &[("Content-Type", "application/json")], &body)
}

#[test]
fn a_tenants_subscribers_beyond_max_connections_get_429_and_others_are_unaffected() {
    let file = TenantFile::new(
        "connections",
        &json!({ "defaults": { "maxConnections": 2 }, "tenants": { "acme": { "maxConnections": 3 } } }),
    );
    let server = start(&file, &[]);
    let api = server.api;
    // Named users (on their owner shards) and anonymous ones (where accepted).
    let mut acme: Vec<SseClient> =
        ["u1", "u2", ""].iter().map(|user| SseClient::open_ready(server.public, &sse("acme", user))).collect();
    wait_tenant_connections(api, "acme", 3);
    let refused = SseClient::connect(server.public, &sse("acme", "u4"), &[]);
    refused.assert_error(429, "tenant_quota");
    SseClient::connect(server.public, &sse("acme", ""), &[]).assert_error(429, "tenant_quota");

    // An unlisted tenant has the defaults' quota of its own; the default
    // namespace has none.
    let _globex: Vec<SseClient> =
        ["g1", "g2"].iter().map(|user| SseClient::open_ready(server.public, &sse("globex", user))).collect();
    SseClient::connect(server.public, &sse("globex", "g3"), &[]).assert_error(429, "tenant_quota");
    let _initech: Vec<SseClient> =
        ["i1", "i2"].iter().map(|user| SseClient::open_ready(server.public, &sse("initech", user))).collect();
    let _plain: Vec<SseClient> =
        (0..5).map(|i| SseClient::open_ready(server.public, &sse_path(&format!("p{i}"), &[]))).collect();
    wait_connections(api, 3 + 2 + 2 + 5);

    // The refused ones never counted, the open ones still receive.
    let answer = ok_json(publish(api, "/v1/t/acme/broadcast", &[], "to acme"));
    assert_eq!(answer["delivered"], 3, "{answer}");
    for client in &mut acme {
        assert_eq!(client.expect_event("acme broadcast").data, "to acme");
    }

    // A closed stream frees its place.
    drop(acme.remove(0));
    wait_tenant_connections(api, "acme", 2);
    let _again = SseClient::open_ready(server.public, &sse("acme", "u5"));
    wait_tenant_connections(api, "acme", 3);
    SseClient::connect(server.public, &sse("acme", "u6"), &[]).assert_error(429, "tenant_quota");

    let stats = server.stats();
    assert_eq!(stats["rejected"]["tenant_quota"], 4, "{}", stats["rejected"]);
    let acme_stats = tenant_stats(api, "acme");
    assert_eq!(acme_stats["rejected"]["tenant_quota"], 3, "{acme_stats}");
    assert_eq!(acme_stats["limits"]["maxConnections"], 3, "{acme_stats}");
    assert_eq!(acme_stats["label"], "acme");
    let globex_stats = tenant_stats(api, "globex");
    assert_eq!(globex_stats["label"], "_other", "{globex_stats}");
    assert_eq!(globex_stats["limits"]["maxConnections"], 2, "{globex_stats}");
}

#[test]
fn a_tenants_publish_rate_refuses_beyond_its_burst_and_refills() {
    let file = TenantFile::new(
        "rate",
        &json!({ "tenants": { "acme": { "publishRate": 2, "publishBurst": 4 }, "globex": {} } }),
    );
    let server = start(&file, &[]);
    let api = server.api;
    let mut subscriber = SseClient::open_ready(server.public, &sse("acme", ""));
    wait_connections(api, 1);

    for i in 0..4 {
        let answer = publish(api, "/v1/t/acme/broadcast", &[], &format!("burst {i}"));
        assert_eq!(answer.status, 200, "message {i} of the burst: {:?}", answer.text());
    }
    let refused = publish(api, "/v1/t/acme/broadcast", &[], "one too many");
    refused.assert_error(429, "tenant_rate_limited");
    let retry_after: u64 = refused.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&retry_after), "whole seconds from the bucket: {retry_after}");
    // Every route of the tenant draws from the same bucket; others have their own.
    publish(api, "/v1/t/acme/users/u/events", &[], "x").assert_error(429, "tenant_rate_limited");
    publish(api, "/v1/t/acme/rooms/r/events", &[], "x").assert_error(429, "tenant_rate_limited");
    assert_eq!(publish(api, "/v1/t/globex/broadcast", &[], "globex").status, 200, "globex has no rate");
    assert_eq!(publish(api, "/v1/broadcast", &[], "default").status, 200, "the default namespace has none");

    // A batch larger than the burst can never pass.
    let over = batch(api, "acme", 5);
    over.assert_error(413, "batch_over_burst");
    assert!(over.text().contains("publishBurst of 4"), "{}", over.text());

    // Refilled after burst / rate = 2 s: a batch takes one token per message.
    std::thread::sleep(Duration::from_millis(2_100));
    let three = batch(api, "acme", 3);
    assert_eq!(three.status, 200, "{:?}", three.text());
    assert_eq!(three.json()["results"].as_array().unwrap().len(), 3);
    batch(api, "acme", 3).assert_error(429, "tenant_rate_limited");

    assert_eq!(publish(api, "/v1/t/acme/broadcast", &[], "last token").status, 200, "a refusal took nothing");
    publish(api, "/v1/t/acme/broadcast", &[], "empty").assert_error(429, "tenant_rate_limited");

    // And it keeps refilling: one token comes back in half a second.
    let started = Instant::now();
    let passed =
        wait_until(Duration::from_secs(5), || publish(api, "/v1/t/acme/broadcast", &[], "later").status == 200);
    assert!(passed && started.elapsed() < Duration::from_secs(3), "refilled after {:?}", started.elapsed());

    let got: Vec<String> = (0..9).map(|_| subscriber.expect_event("acme").data).collect();
    assert_eq!(
        got,
        ["burst 0", "burst 1", "burst 2", "burst 3", "m0", "m1", "m2", "last token", "later"],
        "refused ones delivered nothing"
    );
    subscriber.expect_no_event(Duration::from_millis(200));
    let acme = tenant_stats(api, "acme");
    assert_eq!(acme["published"], 9, "{acme}");
    assert!(acme["rejected"]["tenant_rate_limited"].as_u64().unwrap() >= 6, "{acme}");
    assert!(server.stats()["rejected"]["tenant_rate_limited"].as_u64().unwrap() >= 5);
}

#[test]
fn a_single_publish_answered_where_it_was_read_draws_from_the_tenants_bucket() {
    // One shard and no bus: every single publish completes on the shard
    // that read it, the path that answers without a future; the two-shard
    // test above mostly takes the other.
    let file =
        TenantFile::new("rate-one-shard", &json!({ "tenants": { "acme": { "publishRate": 1, "publishBurst": 2 } } }));
    let server = Server::start(&["--shards", "1", "--tenant-config", file.path()]);
    let api = server.api;
    let mut subscriber = SseClient::open_ready(server.public, &sse("acme", "u"));
    wait_connections(api, 1);

    for i in 0..2 {
        let answer = ok_json(publish(api, "/v1/t/acme/users/u/events", &[], &format!("m{i}")));
        assert_eq!(answer["delivered"], 1, "message {i}: {answer}");
        assert_eq!(answer["instances"], Value::Null, "no bus: {answer}");
    }
    let refused = publish(api, "/v1/t/acme/users/u/events", &[], "one too many");
    refused.assert_error(429, "tenant_rate_limited");
    assert!(refused.header("retry-after").is_some(), "a refusal says when to retry");
    publish(api, "/v1/t/acme/rooms/r/events", &[], "x").assert_error(429, "tenant_rate_limited");

    let got: Vec<String> = (0..2).map(|i| subscriber.expect_event(&format!("m{i}")).data).collect();
    assert_eq!(got, ["m0", "m1"]);
    subscriber.expect_no_event(Duration::from_millis(200));
    let acme = tenant_stats(api, "acme");
    assert_eq!(acme["published"], 2, "{acme}");
    assert_eq!(acme["rejected"]["tenant_rate_limited"], 2, "{acme}");
}

#[test]
fn a_tenants_replay_is_evicted_under_its_budget_while_anothers_stays() {
    // One shard: eviction order is exact. Frames are ~80 bytes; acme may
    // keep about ten of them, globex has no budget.
    let file = TenantFile::new("replay", &json!({ "tenants": { "acme": { "recentMaxBytes": "1KiB" }, "globex": {} } }));
    let server = Server::start(&["--shards", "1", "--tenant-config", file.path()]);
    let api = server.api;
    let id = |tenant: &str, user: &str, body: &str| -> String {
        ok_json(publish(api, &format!("/v1/t/{tenant}/users/{user}/events"), &[], body))["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let globex_first: Vec<String> = (0..20).map(|i| id("globex", &format!("g{i}"), &format!("globex {i}"))).collect();
    let acme_first = id("acme", "a0", "acme 0");
    for i in 1..40 {
        id("acme", &format!("a{i}"), &format!("acme {i}"));
    }
    let acme = tenant_stats(api, "acme");
    assert!(acme["replayBytes"].as_u64().unwrap() <= 1024, "{acme}");
    let globex = tenant_stats(api, "globex");
    assert!(globex["replayBytes"].as_u64().unwrap() > 1024, "globex's rings stay whole: {globex}");

    // acme's least recently active rings went: its first user resumes with a gap.
    let mut resumed = SseClient::resume(server.public, &sse("acme", "a0"), &acme_first);
    assert_eq!(resumed.expect_event("evicted ring").event.as_deref(), Some("ssekify.gap"));
    // Its newest ones stay.
    let last = id("acme", "a39", "acme 39 again");
    let mut kept = SseClient::resume(server.public, &sse("acme", "a39"), &last);
    kept.expect_no_event(Duration::from_millis(200));
    // globex's rings, older than all of acme's, are intact and resume exactly.
    for (i, first) in globex_first.iter().enumerate().step_by(5) {
        let later = id("globex", &format!("g{i}"), &format!("globex {i} later"));
        let mut client = SseClient::resume(server.public, &sse("globex", &format!("g{i}")), first);
        let event = client.expect_event("globex resume");
        assert_eq!((event.id.as_deref(), event.data.as_str()), (Some(later.as_str()), &*format!("globex {i} later")));
    }
}

#[test]
fn a_tenant_key_opens_its_own_routes_only() {
    let file = TenantFile::new(
        "keys",
        &json!({ "tenants": { "acme": { "apiKey": "acme-key-0123456789" }, "globex": { "apiKey": "globex-key-0123456789" } } }),
    );
    let server = start(&file, &["--api-key", "instance-key"]);
    let api = server.api;
    let acme = [("Authorization", "Bearer acme-key-0123456789")];
    let instance = [("Authorization", "Bearer instance-key")];
    assert_eq!(publish(api, "/v1/t/acme/broadcast", &acme, "x").status, 200);
    assert_eq!(http(api, "GET", "/v1/t/acme/stats", &acme, b"").status, 200);
    for (method, path) in [
        ("POST", "/v1/t/globex/broadcast"),
        ("POST", "/v1/t/initech/broadcast"),
        ("GET", "/v1/t/globex/stats"),
        ("POST", "/v1/broadcast"),
        ("POST", "/v1/publish"),
        ("GET", "/v1/stats"),
        ("GET", "/metrics"),
        ("DELETE", "/v1/connections"),
        ("POST", "/v1/admin/stop-accepting"),
    ] {
        http(api, method, path, &acme, b"x").assert_error(403, "forbidden");
    }
    // The instance key opens everything; health needs no key.
    for path in ["/v1/t/acme/broadcast", "/v1/t/globex/broadcast", "/v1/broadcast"] {
        assert_eq!(publish(api, path, &instance, "x").status, 200, "{path}");
    }
    assert_eq!(http(api, "GET", "/metrics", &instance, b"").status, 200);
    assert_eq!(http(api, "GET", "/healthz", &[], b"").status, 200);
    assert_eq!(http(server.public, "GET", "/readyz", &[], b"").status, 200);
    // A wrong key or none is 401 as before.
    let wrong = [("Authorization", "Bearer acme-key-012345678X")];
    http(api, "POST", "/v1/t/acme/broadcast", &wrong, b"x").assert_error(401, "unauthorized");
    http(api, "POST", "/v1/t/acme/broadcast", &[], b"x").assert_error(401, "unauthorized");
    let stats = ok_json(http(api, "GET", "/v1/stats", &instance, b""));
    assert_eq!(stats["rejected"]["forbidden"], 9, "{}", stats["rejected"]);
    let acme_stats = ok_json(http(api, "GET", "/v1/t/acme/stats", &instance, b""));
    assert_eq!(acme_stats["rejected"]["forbidden"], 9, "counted for the key's tenant: {acme_stats}");

    // Without --api-key: a tenant with a key needs it, the rest is open as before.
    let open = start(&file, &[]);
    http(open.api, "POST", "/v1/t/acme/broadcast", &[], b"x").assert_error(401, "unauthorized");
    assert_eq!(publish(open.api, "/v1/t/acme/broadcast", &acme, "x").status, 200);
    assert_eq!(publish(open.api, "/v1/t/initech/broadcast", &[], "x").status, 200, "no key in the file");
    assert_eq!(publish(open.api, "/v1/broadcast", &[], "x").status, 200);
    http(open.api, "POST", "/v1/broadcast", &acme, b"x").assert_error(403, "forbidden");
}

#[test]
fn sighup_lowers_and_raises_limits_without_dropping_streams_and_refuses_a_broken_file() {
    let file = TenantFile::new("reload", &json!({ "tenants": { "acme": { "maxConnections": 4 } } }));
    let server = start(&file, &[]);
    let api = server.api;
    let mut streams: Vec<SseClient> =
        (0..4).map(|i| SseClient::open_ready(server.public, &sse("acme", &format!("u{i}")))).collect();
    wait_tenant_connections(api, "acme", 4);
    SseClient::connect(server.public, &sse("acme", "x"), &[]).assert_error(429, "tenant_quota");

    // Lowered below the streams open: they stay and receive; new ones are refused.
    file.write(&json!({ "tenants": { "acme": { "maxConnections": 2 }, "globex": {} } }).to_string());
    server.signal("HUP");
    wait_log(&server, "tenant config reloaded", 1);
    assert!(server.logs().contains("tenants=2"), "{}", server.logs());
    assert_eq!(ok_json(publish(api, "/v1/t/acme/broadcast", &[], "after lowering"))["delivered"], 4);
    for stream in &mut streams {
        assert_eq!(stream.expect_event("kept stream").data, "after lowering");
    }
    SseClient::connect(server.public, &sse("acme", "x"), &[]).assert_error(429, "tenant_quota");
    assert_eq!(tenant_stats(api, "acme")["limits"]["maxConnections"], 2);

    // Raised: new ones are accepted up to it.
    file.write(&json!({ "tenants": { "acme": { "maxConnections": 6 } } }).to_string());
    server.signal("HUP");
    wait_log(&server, "tenant config reloaded", 2);
    streams.push(SseClient::open_ready(server.public, &sse("acme", "u4")));
    streams.push(SseClient::open_ready(server.public, &sse("acme", "u5")));
    wait_tenant_connections(api, "acme", 6);
    SseClient::connect(server.public, &sse("acme", "x"), &[]).assert_error(429, "tenant_quota");

    // A broken file is refused with a log line; the config in force stays enforced.
    file.write("{ \"tenants\": { \"acme\": { \"maxConnections\": 0 } } }");
    server.signal("HUP");
    wait_log(&server, "tenant config refused", 1);
    assert!(server.logs().contains("tenants.acme.maxConnections: must be a positive integer"), "{}", server.logs());
    file.write("{ not json");
    server.signal("HUP");
    wait_log(&server, "tenant config refused", 2);
    assert_eq!(tenant_stats(api, "acme")["limits"]["maxConnections"], 6);
    drop(streams.pop());
    wait_tenant_connections(api, "acme", 5);
    streams.push(SseClient::open_ready(server.public, &sse("acme", "u6")));
    SseClient::connect(server.public, &sse("acme", "x"), &[]).assert_error(429, "tenant_quota");
    assert_eq!(ok_json(publish(api, "/v1/t/acme/broadcast", &[], "still"))["delivered"], 6);
}

#[test]
fn metrics_label_listed_tenants_and_share_other_for_the_rest() {
    let file = TenantFile::new("metrics", &json!({ "tenants": { "acme": { "maxConnections": 1 } } }));
    let server = start(&file, &[]);
    let api = server.api;
    let mut acme = SseClient::open_ready(server.public, &sse("acme", "u"));
    let mut initech = SseClient::open_ready(server.public, &format!("/t/initech{}", sse_path("u", &["r"])));
    let _globex = SseClient::open_ready(server.public, &sse("globex", ""));
    wait_connections(api, 3);
    SseClient::connect(server.public, &sse("acme", "v"), &[]).assert_error(429, "tenant_quota");
    ok_json(publish(api, "/v1/t/acme/users/u/events", &[], "to acme"));
    ok_json(publish(api, "/v1/t/initech/rooms/r/events", &[], "to initech"));
    assert_eq!(acme.expect_event("acme").data, "to acme");
    assert_eq!(initech.expect_event("initech").data, "to initech");

    let text = http(api, "GET", "/metrics", &[], b"").text();
    for line in [
        "ssekify_tenant_connections{tenant=\"acme\"} 1\n",
        "ssekify_tenant_connections{tenant=\"_other\"} 2\n",
        "ssekify_tenant_users{tenant=\"acme\"} 1\n",
        "ssekify_tenant_users{tenant=\"_other\"} 1\n",
        "ssekify_tenant_rooms{tenant=\"_other\"} 1\n",
        "ssekify_tenant_published_total{tenant=\"acme\"} 1\n",
        "ssekify_tenant_published_total{tenant=\"_other\"} 1\n",
        "ssekify_tenant_sent_total{tenant=\"acme\"} 1\n",
        "ssekify_tenant_sent_total{tenant=\"_other\"} 1\n",
        "ssekify_tenant_rejected_total{tenant=\"acme\",reason=\"tenant_quota\"} 1\n",
        "ssekify_tenant_rejected_total{tenant=\"_other\",reason=\"tenant_quota\"} 0\n",
        "ssekify_rejected_total{reason=\"tenant_quota\"} 1\n",
        "# TYPE ssekify_tenant_replay_bytes gauge\n",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    assert!(!text.contains("tenant=\"initech\""), "unlisted tenants have no label of their own");
    assert!(!text.contains("tenant=\"globex\""));
}

#[test]
fn a_bad_file_stops_the_start_and_check_config_shows_a_good_one() {
    let file = TenantFile::new("bad", &json!({ "tenants": { "acme": { "publishRate": -5 } } }));
    let error = Server::try_start(&["--tenant-config", file.path()]).map(|_| ()).unwrap_err();
    assert!(error.contains("tenants.acme.publishRate: must be a positive number"), "{error}");
    assert!(error.contains("--tenant-config"), "{error}");

    file.write(
        &json!({ "defaults": { "maxConnections": 10 }, "tenants": { "acme": { "apiKey": "secret-acme-key" } } })
            .to_string(),
    );
    let output = Command::new(env!("CARGO_BIN_EXE_ssekify"))
        .args(["check-config", "--tenant-config", file.path()])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{report}");
    assert!(report.contains("--tenant-config") && report.contains("1 tenants: acme"), "{report}");
    assert!(report.contains("maxConnections=10"), "{report}");
    assert!(!report.contains("secret-acme-key"), "no key shown: {report}");
}

#[test]
fn a_tenants_connections_count_over_every_instance() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    let file = TenantFile::new("cluster", &json!({ "tenants": { "acme": { "maxConnections": 3 } } }));
    let url = redis.url();
    let instance = || {
        let server = start(&file, &["--redis", &url, "--bus-timeout", "1s"]);
        assert!(wait_until(Duration::from_secs(15), || http(server.public, "GET", "/readyz", &[], b"").status == 200));
        server
    };
    let (a, b) = (instance(), instance());
    assert!(wait_until(Duration::from_secs(10), || a.stats()["bus"]["instances"] == 2
        && b.stats()["bus"]["instances"] == 2));
    let on_a: Vec<SseClient> = (0..2).map(|_| SseClient::open_ready(a.public, "/t/acme/sse")).collect();
    // B hears A's two within a heartbeat (a quarter of --bus-timeout).
    let _on_b = SseClient::open_ready(b.public, "/t/acme/sse");
    assert!(wait_until(Duration::from_secs(5), || {
        let refused = SseClient::connect(a.public, "/t/acme/sse", &[]);
        refused.status == 429
    }));
    let refused = SseClient::connect(b.public, "/t/acme/sse", &[]);
    refused.assert_error(429, "tenant_quota");
    assert!(refused.error_text().contains("over every instance"), "{}", refused.error_text());
    let _other = SseClient::open_ready(b.public, "/t/globex/sse");

    // A dies with its two streams: they stop counting once its heartbeats
    // stop (--bus-timeout and two heartbeats), and B admits two more.
    a.signal("KILL");
    let mut more_on_b = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        let client = SseClient::connect(b.public, "/t/acme/sse", &[]);
        if client.status == 200 {
            more_on_b.push(client);
        }
        more_on_b.len() == 2
    }));
    SseClient::connect(b.public, "/t/acme/sse", &[]).assert_error(429, "tenant_quota");
    drop(on_a);
}
