//! What the server writes to its log, and its command-line tools, through the
//! real binary: JSON lines with typed fields; a connect and a disconnect line
//! per subscriber at debug, naming why the stream ended (client closed,
//! admin close, backpressure, write timeout, shutdown); `--access-log` lines
//! for the api listener without query strings or credentials; `ssekify
//! ready` only once the bus is live, a Redis outage as a few lines rather
//! than lines per retry; no secret in any line; booleans from the
//! environment as `1/0/yes/no/on/off`; `ssekify check-config`; `ssekify
//! --version` with the commit.
//!
//! The bus tests need `redis-server` and `redis-cli` on PATH; without them
//! they print why and pass, unless `SSEKIFY_REQUIRE_REDIS=1`.

mod common;
#[path = "support_redis/mod.rs"]
mod support_redis;

use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use support_redis::*;

const JWT_SECRET: &str = "logs-test-jwt-secret-0123456789abcdef";
const API_KEY: &str = "logs-test-api-key-5f1e";

/// The log lines holding `needle`.
fn lines_with<'a>(logs: &'a str, needle: &str) -> Vec<&'a str> {
    logs.lines().filter(|line| line.contains(needle)).collect()
}

/// The value of `key=` in a text line (quotes removed).
fn text_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let prefix = format!("{key}=");
    line.split_whitespace().find_map(|token| token.strip_prefix(prefix.as_str())).map(|v| v.trim_matches('"'))
}

/// Waits until the server's log holds `needle` `count` times.
fn wait_for_lines(server: &Server, needle: &str, count: usize, timeout: Duration) -> bool {
    wait_until(timeout, || lines_with(&server.logs(), needle).len() >= count)
}

/// The reason of `user`'s disconnect line, once it is logged.
fn disconnect_reason(server: &Server, user: &str) -> String {
    let mut reason = None;
    let logged = wait_until(Duration::from_secs(10), || {
        let logs = server.logs();
        reason = lines_with(&logs, "subscriber disconnected")
            .into_iter()
            .find(|line| text_field(line, "user") == Some(user))
            .and_then(|line| text_field(line, "reason").map(str::to_owned));
        reason.is_some()
    });
    assert!(logged, "no disconnect line for {user}; logs:\n{}", server.logs());
    reason.unwrap_or_default()
}

/// Runs the binary with `args` and extra `env`, SSEKIFY_* variables of the
/// test's own environment removed.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ssekify"));
    for (key, _) in std::env::vars().filter(|(key, _)| key.starts_with("SSEKIFY_")) {
        command.env_remove(key);
    }
    command.args(args).envs(env.iter().copied()).output().expect("run ssekify")
}

/// The value `check-config` shows for `--flag`.
fn shown(report: &str, flag: &str) -> Option<String> {
    let prefix = format!("--{flag} ");
    report.lines().find_map(|line| line.trim().strip_prefix(prefix.as_str()).map(|v| v.trim().to_owned()))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Publishes 512 KiB messages to `user` on one keep-alive connection until
/// `done` holds (at most 200 of them, 100 MiB).
fn flood(server: &Server, user: &str, mut done: impl FnMut() -> bool) -> bool {
    let body = "x".repeat(512 * 1024);
    let mut conn = HttpConn::open(server.api);
    for _ in 0..200 {
        let resp = conn.request("POST", &format!("/v1/users/{user}/events"), &[], body.as_bytes());
        assert_eq!(resp.status, 200, "{:?}", resp.text());
        if done() {
            return true;
        }
    }
    wait_until(Duration::from_secs(10), done)
}

#[test]
fn json_lines_carry_numbers_booleans_and_strings() {
    let server = Server::start(&["--log-format", "json", "--log-level", "debug", "--shards", "2"]);
    let _alice = SseClient::open_ready(server.public, "/sse?userId=alice&rooms=a,b");
    wait_connections(server.api, 1);
    ok_json(http(server.api, "DELETE", "/v1/users/alice/connections", &[], b""));
    assert!(wait_for_lines(&server, "subscriber disconnected", 1, Duration::from_secs(10)), "{}", server.logs());

    let logs = server.logs();
    let lines: Vec<Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")))
        .collect();
    for (line, text) in lines.iter().zip(logs.lines()) {
        assert!(text.starts_with("{\"ts\":"), "ts comes first: {text}");
        assert!(line["level"].is_string() && line["msg"].is_string(), "{text}");
    }
    let find = |msg: &str| {
        lines.iter().find(|line| line["msg"] == msg).unwrap_or_else(|| panic!("no `{msg}` line:\n{logs}")).clone()
    };
    let listening = find("ssekify listening");
    assert_eq!(listening["shards"], 2, "{listening}");
    assert!(listening["max_connections"].is_u64(), "{listening}");
    assert_eq!(listening["public"], server.public.to_string(), "{listening}");
    assert!(listening["commit"].is_string(), "{listening}");
    let connected = find("subscriber connected");
    assert_eq!(connected["user"], "alice", "{connected}");
    assert_eq!(connected["rooms"], 2, "{connected}");
    assert_eq!(connected["resumed"], false, "{connected}");
    assert!(connected["shard"].is_u64(), "{connected}");
    assert!(connected.get("tenant").is_none(), "no tenant: the field is left out: {connected}");
    let disconnected = find("subscriber disconnected");
    assert_eq!(disconnected["reason"], "admin_close", "{disconnected}");
    assert_eq!(disconnected["shard"], connected["shard"], "{disconnected}");
    let conn = connected["conn"].as_str().expect("the connection id is a string");
    assert_eq!(conn.split('-').count(), 4, "<instance>-<shard>-<slot>-<serial>: {connected}");
    assert_eq!(disconnected["conn"], conn, "the id pairs the two lines: {disconnected}");
}

#[test]
fn disconnect_lines_name_the_reason() {
    let server = Server::start(&[
        "--log-level",
        "debug",
        "--shards",
        "2",
        "--drop-policy",
        "disconnect",
        "--max-queue-bytes",
        "1MiB",
        "--shutdown-grace",
        "200ms",
    ]);
    // The client goes away.
    let gone = SseClient::open_ready(server.public, "/t/acme/sse?userId=gone");
    let _bob = SseClient::open_ready(server.public, "/sse?userId=bob");
    let _slow = SseClient::connect_unread(server.public, "/sse?userId=slow", &[]);
    let _carol = SseClient::open_ready(server.public, "/sse?userId=carol");
    wait_connections(server.api, 4);
    assert!(wait_for_lines(&server, "subscriber connected", 4, Duration::from_secs(5)), "{}", server.logs());
    let logs = server.logs();
    let connected = lines_with(&logs, "subscriber connected");
    let gone_line = connected.iter().find(|line| text_field(line, "user") == Some("gone")).expect("gone connected");
    assert_eq!(text_field(gone_line, "tenant"), Some("acme"), "{gone_line}");
    drop(gone);
    assert_eq!(disconnect_reason(&server, "gone"), "client_closed");
    // An operator closes a user's streams.
    ok_json(http(server.api, "DELETE", "/v1/users/bob/connections", &[], b""));
    assert_eq!(disconnect_reason(&server, "bob"), "admin_close");
    // A subscriber that reads nothing overflows its queue.
    let overflowed = flood(&server, "slow", || stat(&stats(server.api), "disconnectedByBackpressure") == 1);
    assert!(overflowed, "no backpressure close: {}", stats(server.api));
    assert_eq!(disconnect_reason(&server, "slow"), "backpressure");
    // The instance shuts down with carol connected.
    let resp = http(server.api, "POST", "/v1/admin/shutdown?graceMs=100", &[], b"");
    assert_eq!(resp.status, 202, "{:?}", resp.text());
    assert_eq!(disconnect_reason(&server, "carol"), "shutdown");
}

#[test]
fn a_stalled_stream_logs_its_write_timeout() {
    let server = Server::start(&[
        "--log-level",
        "debug",
        "--write-timeout",
        "1s",
        "--max-queue-items",
        "100000",
        "--max-queue-bytes",
        "256MiB",
    ]);
    let _stalled = SseClient::connect_unread(server.public, "/sse?userId=stalled", &[]);
    wait_connections(server.api, 1);
    let cut = flood(&server, "stalled", || stat(&stats(server.api), "writeTimeouts") == 1);
    assert!(cut, "the stalled stream was not closed: {}", stats(server.api));
    assert_eq!(disconnect_reason(&server, "stalled"), "write_timeout");
}

#[test]
fn info_level_has_no_per_connection_lines() {
    let server = Server::start(&[]);
    let client = SseClient::open_ready(server.public, "/sse?userId=quiet");
    wait_connections(server.api, 1);
    drop(client);
    wait_connections(server.api, 0);
    let logs = server.logs();
    assert!(lines_with(&logs, "subscriber").iter().all(|line| !line.contains("DEBUG")), "{logs}");
    assert!(lines_with(&logs, "subscriber connected").is_empty(), "{logs}");
    assert!(lines_with(&logs, "api request").is_empty(), "no access log without --access-log:\n{logs}");
}

#[test]
fn the_access_log_has_a_line_per_api_request_without_query_or_credentials() {
    let server = Server::start_with_env(&[("SSEKIFY_ACCESS_LOG", "yes")], &["--api-key", API_KEY]);
    let auth = format!("Bearer {API_KEY}");
    let mut conn = HttpConn::open(server.api);
    let resp = conn.request("POST", "/v1/broadcast?event=secret-looking-query", &[("Authorization", &auth)], b"hi");
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    let refused = conn.request("GET", "/v1/stats", &[("Authorization", "Bearer wrong-key-0042")], b"");
    assert_eq!(refused.status, 401);
    let health = http(server.public, "GET", "/healthz", &[], b"");
    assert_eq!(health.status, 200);
    assert!(wait_for_lines(&server, "api request", 2, Duration::from_secs(5)), "{}", server.logs());

    let logs = server.logs();
    let lines = lines_with(&logs, "api request");
    assert_eq!(lines.len(), 2, "one line per api request, none for the public listener:\n{logs}");
    let published = lines[0];
    assert!(published.contains(" INFO api request "), "{published}");
    assert_eq!(text_field(published, "method"), Some("POST"), "{published}");
    assert_eq!(text_field(published, "path"), Some("/v1/broadcast"), "{published}");
    assert_eq!(text_field(published, "status"), Some("200"), "{published}");
    assert!(text_field(published, "duration_us").is_some_and(|v| v.parse::<u64>().is_ok()), "{published}");
    assert!(text_field(published, "bytes").is_some_and(|v| v.parse::<u64>().unwrap() > 100), "{published}");
    assert!(text_field(published, "peer").is_some_and(|v| v.starts_with("127.0.0.1:")), "{published}");
    assert_eq!(text_field(lines[1], "status"), Some("401"), "{}", lines[1]);
    assert_eq!(text_field(lines[1], "path"), Some("/v1/stats"), "{}", lines[1]);
    for secret in ["secret-looking-query", API_KEY, "wrong-key-0042", "Bearer"] {
        assert!(!logs.contains(secret), "`{secret}` reached the log:\n{logs}");
    }
}

/// Starts Redis on `port` for `--redis` to find.
fn redis_on(port: u16) -> RedisServer {
    RedisServer::start_on(port, &[])
}

#[test]
fn ready_waits_for_the_bus_and_an_outage_is_a_few_lines() {
    if !require_redis() {
        return;
    }
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let server = Server::start(&["--redis", &url, "--shards", "2", "--bus-timeout", "1s"]);
    // Several reconnect attempts (100 ms, doubling) while nothing listens.
    thread::sleep(Duration::from_secs(3));
    let logs = server.logs();
    assert!(lines_with(&logs, "ssekify ready").is_empty(), "ready while the bus is down:\n{logs}");
    assert_eq!(lines_with(&logs, "waiting for the bus").len(), 1, "{logs}");
    assert_eq!(lines_with(&logs, "bus down").len(), 1, "one line for the outage, not one per attempt:\n{logs}");
    assert_eq!(http(server.public, "GET", "/readyz", &[], b"").status, 503);

    let mut redis = redis_on(port);
    assert!(wait_for_lines(&server, "ssekify ready", 1, Duration::from_secs(15)), "{}", server.logs());
    let logs = server.logs();
    let live = lines_with(&logs, "bus live");
    assert_eq!(live.len(), 1, "{logs}");
    let attempts: u64 = text_field(live[0], "failed_attempts").and_then(|v| v.parse().ok()).expect("failed_attempts");
    assert!(attempts >= 2, "the live line counts the failed attempts ({attempts}):\n{logs}");
    assert!(text_field(live[0], "down_ms").is_some(), "{}", live[0]);
    assert_eq!(text_field(live[0], "redis"), Some(redis.addr().as_str()), "{}", live[0]);
    let position = |needle: &str| logs.find(needle).unwrap_or_else(|| panic!("no `{needle}`:\n{logs}"));
    assert!(position("bus live") < position("ssekify ready"), "ready comes after the bus is live:\n{logs}");
    let ready = lines_with(&logs, "ssekify ready")[0];
    assert_eq!(text_field(ready, "public"), Some(server.public.to_string().as_str()), "{ready}");
    assert!(lines_with(&logs, "bus still down").is_empty(), "{logs}");
    // starting the bus, bus down, waiting for the bus, bus live: whatever the attempts.
    assert_eq!(lines_with(&logs, "bus").len(), 4, "a 3 s outage in a few lines:\n{logs}");

    // Down again after ready: one line down, one line back, no second ready.
    let before = Instant::now();
    redis.stop();
    assert!(wait_for_lines(&server, "bus down", 2, Duration::from_secs(10)), "{}", server.logs());
    thread::sleep(Duration::from_secs(2).saturating_sub(before.elapsed()));
    assert_eq!(lines_with(&server.logs(), "bus down").len(), 2, "{}", server.logs());
    redis.restart();
    assert!(wait_for_lines(&server, "bus live", 2, Duration::from_secs(15)), "{}", server.logs());
    assert_eq!(lines_with(&server.logs(), "ssekify ready").len(), 1, "{}", server.logs());
}

#[test]
fn no_secret_reaches_the_log() {
    if !require_redis() {
        return;
    }
    const REDIS_PASSWORD: &str = "redis-pw-never-logged-77";
    let redis = RedisServer::start(&[]);
    // Set once it runs: the harness checks a new server with a plain PING.
    redis.ok(&["CONFIG", "SET", "requirepass", REDIS_PASSWORD]);
    let url = format!("redis://:{REDIS_PASSWORD}@{}", redis.addr());
    let server = Server::start(&[
        "--redis",
        &url,
        "--api-key",
        API_KEY,
        "--auth",
        "jwt",
        "--jwt-secret",
        JWT_SECRET,
        "--log-level",
        "debug",
        "--access-log",
    ]);
    assert!(wait_for_lines(&server, "ssekify ready", 1, Duration::from_secs(15)), "{}", server.logs());
    let refused = http(server.public, "GET", "/sse?token=not.a.jwt-token-77", &[], b"");
    assert_eq!(refused.status, 401);
    let resp = http(server.api, "GET", "/v1/stats", &[("Authorization", &format!("Bearer {API_KEY}"))], b"");
    assert_eq!(resp.status, 200);
    assert!(wait_for_lines(&server, "api request", 1, Duration::from_secs(5)), "{}", server.logs());

    let logs = server.logs();
    assert!(logs.contains(&format!("redis://{} (with password)", redis.addr())), "{logs}");
    for secret in [REDIS_PASSWORD, API_KEY, JWT_SECRET, "jwt-token-77"] {
        assert!(!logs.contains(secret), "`{secret}` reached the log:\n{logs}");
    }
    let check = run(&["check-config", "--redis", &url, "--auth", "jwt"], &[("SSEKIFY_JWT_SECRET", JWT_SECRET)]);
    assert!(check.status.success(), "{}", stderr(&check));
    for secret in [REDIS_PASSWORD, JWT_SECRET] {
        assert!(!stdout(&check).contains(secret), "`{secret}` in check-config:\n{}", stdout(&check));
    }
}

#[test]
fn booleans_from_the_environment_take_1_0_yes_no_on_off() {
    for (value, expected) in [("1", true), ("0", false), ("yes", true), ("No", false), ("on", true), ("OFF", false)] {
        for flag in ["DEMO", "PIN_CORES", "ACCESS_LOG"] {
            let env = format!("SSEKIFY_{flag}");
            let output = run(&["check-config"], &[(&env, value)]);
            assert!(output.status.success(), "{env}={value}: {}", stderr(&output));
            let name = flag.to_ascii_lowercase().replace('_', "-");
            assert_eq!(
                shown(&stdout(&output), &name),
                Some(expected.to_string()),
                "{env}={value}:\n{}",
                stdout(&output)
            );
        }
    }
    let refused = run(&["check-config"], &[("SSEKIFY_DEMO", "maybe")]);
    assert_eq!(refused.status.code(), Some(2), "{}", stdout(&refused));
    assert!(stderr(&refused).contains("--demo"), "{}", stderr(&refused));
    // A bare flag is true; an explicit value on the command line works too.
    let bare = run(&["check-config", "--demo", "--pin-cores", "false"], &[]);
    assert!(bare.status.success(), "{}", stderr(&bare));
    assert_eq!(shown(&stdout(&bare), "demo").as_deref(), Some("true"), "{}", stdout(&bare));
    assert_eq!(shown(&stdout(&bare), "pin-cores").as_deref(), Some("false"), "{}", stdout(&bare));
    // And the server itself: SSEKIFY_DEMO=1 serves the demo page.
    let server = Server::start_with_env(&[("SSEKIFY_DEMO", "1")], &[]);
    assert_eq!(http(server.public, "GET", "/", &[], b"").status, 200);
}

#[test]
fn check_config_prints_the_settings_or_the_error() {
    let ok = run(&["check-config", "--shards", "3", "--keep-alive", "20s"], &[("SSEKIFY_MAX_PAYLOAD", "64KiB")]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let report = stdout(&ok);
    assert!(report.starts_with("ssekify ") && report.contains("the configuration is valid"), "{report}");
    for (flag, value) in [("shards", "3"), ("keep-alive", "20s"), ("max-payload", "64KiB"), ("listen", "0.0.0.0:8080")]
    {
        assert_eq!(shown(&report, flag).as_deref(), Some(value), "{flag}:\n{report}");
    }
    assert!(report.contains("note: subscriber auth is `none`"), "{report}");

    let bad = run(&["check-config", "--keep-alive", "soon"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stdout(&bad).is_empty(), "{}", stdout(&bad));
    assert!(
        stderr(&bad).starts_with("ssekify check-config: --keep-alive: `soon` is not a duration"),
        "{}",
        stderr(&bad)
    );
    // Files named by flags are read: a missing CA file is the error.
    let missing =
        run(&["check-config", "--redis", "rediss://127.0.0.1:6380", "--redis-ca", "/nonexistent/ca.pem"], &[]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("--redis-ca: /nonexistent/ca.pem: cannot be read"), "{}", stderr(&missing));
    let not_pem = std::env::temp_dir().join(format!("ssekify-logs-not-pem-{}.pem", std::process::id()));
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let garbage =
        run(&["check-config", "--redis", "rediss://127.0.0.1:6380", "--redis-ca", not_pem.to_str().unwrap()], &[]);
    let _ = std::fs::remove_file(&not_pem);
    assert_eq!(garbage.status.code(), Some(2), "{}", stdout(&garbage));
    assert!(stderr(&garbage).starts_with("ssekify check-config: --redis-ca:"), "{}", stderr(&garbage));
    // A flag given before the subcommand is refused rather than ignored.
    let misplaced = run(&["--shards", "2", "check-config"], &[]);
    assert_eq!(misplaced.status.code(), Some(2));
}

#[test]
fn version_names_the_release_and_the_commit() {
    let output = run(&["--version"], &[]);
    assert!(output.status.success());
    let version = stdout(&output);
    let expected_start = format!("ssekify {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(version.starts_with(&expected_start) && version.trim_end().ends_with(')'), "{version}");
    let commit = version.trim_end().trim_end_matches(')').rsplit(' ').next().unwrap_or_default().to_owned();
    let head = Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    match head {
        Some(head) => assert_eq!(commit, head, "built from this checkout"),
        None => assert_eq!(commit, "unknown", "no git: {version}"),
    }
    let server = Server::start(&[]);
    assert!(lines_with(&server.logs(), "ssekify listening")[0].contains(&format!("commit={commit}")));
}
