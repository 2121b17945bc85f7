//! Admin and observability routes: closing connections, stats, metrics,
//! stop-accepting, shutdown by route and by SIGTERM.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn close_user_connections_flushes_then_closes() {
    for driver in drivers() {
        let server = Server::start_with_driver(driver, &["--shards", "2"]);
        let api = server.api;
        let mut u1 = SseClient::open_ready(server.public, "/sse?userId=gone");
        let mut u2 = SseClient::open_ready(server.public, "/sse?userId=gone&rooms=x");
        let mut other = SseClient::open_ready(server.public, "/sse?userId=stays");
        wait_connections(api, 3);
        ok_json(publish_user(api, "gone", "last words", ""));
        let resp = http(api, "DELETE", "/v1/users/gone/connections", &[], b"");
        assert_eq!(resp.status, 200, "{driver}: {:?}", resp.text());
        assert_eq!(resp.json(), json!({"closed": 2}), "{driver}");
        for c in [&mut u1, &mut u2] {
            assert_eq!(c.expect_event("queued before close").data, "last words", "{driver}");
            assert!(c.expect_closed(Duration::from_secs(5)), "{driver}: user stream not closed");
        }
        wait_connections(api, 1);
        ok_json(broadcast(api, "still here", ""));
        assert_eq!(other.expect_event("other user").data, "still here", "{driver}");
        // Closing a user with no connections closes nothing.
        let resp = http(api, "DELETE", "/v1/users/nobody/connections", &[], b"");
        assert_eq!(resp.json(), json!({"closed": 0}));
    }
}

#[test]
fn close_all_connections() {
    let server = Server::start(&["--shards", "2"]);
    let api = server.api;
    let mut clients: Vec<SseClient> =
        (0..3).map(|i| SseClient::open_ready(server.public, &format!("/sse?userId=all{i}"))).collect();
    clients.push(SseClient::open_ready(server.public, "/sse?rooms=z"));
    wait_connections(api, 4);
    let resp = http(api, "DELETE", "/v1/connections", &[], b"");
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    assert_eq!(resp.json(), json!({"closed": 4}));
    for c in clients.iter_mut() {
        assert!(c.expect_closed(Duration::from_secs(5)), "stream not closed");
    }
    wait_connections(api, 0);
    // The server keeps accepting.
    let _again = SseClient::open_ready(server.public, "/sse");
    wait_connections(api, 1);
}

#[test]
fn stats_shape_and_counters() {
    let server = Server::start(&["--shards", "2", "--keep-alive", "300ms"]);
    let api = server.api;
    let s = stats(api);
    for key in [
        "connections",
        "users",
        "rooms",
        "sent",
        "droppedOldest",
        "droppedNewest",
        "disconnectedByBackpressure",
        "queueItemsMax",
        "queueBytesMax",
        "errorCount",
    ] {
        assert!(s[key].is_u64(), "stats.{key} missing or not an integer: {s}");
    }
    let shards = s["shards"].as_array().expect("shards array");
    assert_eq!(shards.len(), 2, "{s}");
    let ids: BTreeSet<u64> = shards.iter().map(|sh| stat(sh, "id")).collect();
    assert_eq!(ids, BTreeSet::from([0, 1]), "{s}");
    for sh in shards {
        for key in ["connections", "users", "rooms", "sent"] {
            assert!(sh[key].is_u64(), "shard.{key} missing: {sh}");
        }
    }
    assert_eq!(s["bus"]["state"], "disabled", "{s}");
    assert_eq!(stat(&s, "sent"), 0);

    let mut a = SseClient::open_ready(server.public, "/sse?userId=s1&rooms=q");
    let mut b = SseClient::open_ready(server.public, "/sse?userId=s2");
    wait_connections(api, 2);
    for i in 0..3 {
        ok_json(broadcast(api, &format!("b{i}"), ""));
    }
    ok_json(publish_room(api, "q", "room", ""));
    for _ in 0..4 {
        a.expect_event("a");
    }
    for _ in 0..3 {
        b.expect_event("b");
    }
    // Wait past a few heartbeats: they do not count.
    thread::sleep(Duration::from_millis(800));
    let s = stats(api);
    assert_eq!(stat(&s, "sent"), 7, "{s}");
    assert_eq!(stat(&s, "users"), 2, "{s}");
    assert_eq!(stat(&s, "rooms"), 1, "{s}");
    let shards = s["shards"].as_array().unwrap();
    let sum = |key: &str| shards.iter().map(|sh| stat(sh, key)).sum::<u64>();
    assert_eq!(sum("sent"), 7, "{s}");
    assert_eq!(sum("connections"), 2, "{s}");
    assert_eq!(sum("users"), 2, "{s}");
}

/// Splits a sample line into (metric name, value).
fn sample(line: &str) -> (String, f64) {
    let (series, value) = match line.find('}') {
        Some(close) => (&line[..=close], line[close + 1..].trim()),
        None => {
            let (n, v) = line.split_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
            (n, v.trim())
        }
    };
    let name = series.split('{').next().unwrap().to_string();
    assert!(
        !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
            && !name.as_bytes()[0].is_ascii_digit(),
        "bad metric name in {line:?}"
    );
    if let Some(open) = series.find('{') {
        let labels = &series[open + 1..series.len() - 1];
        if !labels.is_empty() {
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("bad label in {line:?}"));
                assert!(!k.is_empty() && v.starts_with('"'), "bad label {pair:?} in {line:?}");
            }
        }
    }
    // An optional timestamp may follow the value.
    let value = value.split_whitespace().next().unwrap_or_default();
    let v = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
    };
    (name, v)
}

#[test]
fn metrics_are_prometheus_text() {
    let server = Server::start(&["--shards", "2"]);
    let api = server.api;
    let mut c = SseClient::open_ready(server.public, "/sse?userId=m");
    wait_connections(api, 1);
    ok_json(publish_user(api, "m", "x", ""));
    c.expect_event("x");

    let resp = http(api, "GET", "/metrics", &[], b"");
    assert_eq!(resp.status, 200);
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "content-type {ct:?}");
    let text = resp.text();
    let mut help = BTreeSet::new();
    let mut types = BTreeMap::new();
    let mut samples: Vec<(String, f64)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help.insert(rest.split_whitespace().next().unwrap().to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().unwrap().to_string();
            let kind = parts.next().unwrap_or_default().to_string();
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind.as_str()),
                "bad TYPE line {line:?}"
            );
            types.insert(name, kind);
        } else if line.starts_with('#') {
            continue;
        } else {
            samples.push(sample(line));
        }
    }
    assert!(!samples.is_empty(), "no samples:\n{text}");
    for (name, _) in &samples {
        let family = if types.contains_key(name) {
            name.clone()
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| matches!(types.get(*base).map(String::as_str), Some("histogram" | "summary")))
                .map(str::to_string)
                .unwrap_or_else(|| panic!("sample {name} has no # TYPE line:\n{text}"))
        };
        assert!(help.contains(&family), "metric {family} has no # HELP line");
    }
    let value = |name: &str| -> f64 {
        let found: Vec<f64> = samples.iter().filter(|(n, _)| n == name).map(|(_, v)| *v).collect();
        assert!(!found.is_empty(), "metric {name} missing:\n{text}");
        found.iter().sum()
    };
    assert_eq!(value("ssekify_connections"), 1.0, "\n{text}");
    assert_eq!(value("ssekify_sent_total"), 1.0, "\n{text}");
    assert_eq!(types.get("ssekify_sent_total").map(String::as_str), Some("counter"));
    assert_eq!(types.get("ssekify_connections").map(String::as_str), Some("gauge"));
}

#[test]
fn stop_accepting_keeps_existing_streams() {
    for driver in drivers() {
        let server = Server::start_with_driver(driver, &[]);
        let api = server.api;
        let mut existing = SseClient::open_ready(server.public, "/sse?userId=e");
        wait_connections(api, 1);
        let resp = http(api, "POST", "/v1/admin/stop-accepting", &[], b"");
        assert_eq!(resp.status, 200, "{driver}: {:?}", resp.text());
        assert_eq!(resp.json(), json!({"accepting": false}));
        for addr in [server.public, api] {
            let r = http(addr, "GET", "/readyz", &[], b"");
            assert_eq!(r.status, 503, "{driver}: readyz on {addr}: {:?}", r.text());
            assert_eq!(http(addr, "GET", "/healthz", &[], b"").status, 200);
        }
        SseClient::connect(server.public, "/sse?userId=new", &[]).assert_error(503, "not_accepting");
        // Existing streams keep receiving, and the api still works.
        assert_eq!(ok_json(publish_user(api, "e", "still", ""))["delivered"], 1);
        assert_eq!(existing.expect_event("after stop-accepting").data, "still", "{driver}");
        assert_eq!(stat(&stats(api), "connections"), 1);
    }
}

#[test]
fn shutdown_route_announces_drains_and_exits_zero() {
    for driver in drivers() {
        let mut server = Server::start_with_driver(driver, &["--shards", "2"]);
        let api = server.api;
        let mut clients: Vec<SseClient> =
            (0..4).map(|i| SseClient::open_ready(server.public, &format!("/sse?userId=sd{}", i % 2))).collect();
        wait_connections(api, 4);
        let started = Instant::now();
        let resp = http(api, "POST", "/v1/admin/shutdown?graceMs=1000&announce=true&event=server:shutdown", &[], b"");
        assert_eq!(resp.status, 202, "{driver}: {:?}", resp.text());
        assert_eq!(resp.json(), json!({"shuttingDown": true, "graceMs": 1000}));
        expect_announced_drained_exited(driver, &mut server, &mut clients, started);
    }
}

/// Every client gets the `server:shutdown` event (graceMs 1000), then EOF
/// within the grace (+1 s), and the process exits 0.
fn expect_announced_drained_exited(driver: &str, server: &mut Server, clients: &mut [SseClient], started: Instant) {
    for (i, c) in clients.iter_mut().enumerate() {
        let ev = c.expect_event("shutdown announcement");
        assert_eq!(ev.event.as_deref(), Some("server:shutdown"), "{driver}: client {i}");
        let data: serde_json::Value = serde_json::from_str(&ev.data).expect("JSON data");
        assert_eq!(data, json!({"graceMs": 1000}), "{driver}");
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let left = Duration::from_millis(2000).saturating_sub(started.elapsed());
        assert!(
            c.expect_closed(left.max(Duration::from_millis(1))),
            "{driver}: client {i} still open {:?} after a shutdown with a 1 s grace",
            started.elapsed()
        );
    }
    let status = server.wait_exit(Duration::from_secs(5));
    assert_eq!(status.map(|s| s.code()), Some(Some(0)), "{driver}: exit status {status:?}; logs:\n{}", server.logs());
}

/// The announcement is a control frame: no `id:` line, so the client's last
/// event id stays that of its last message and its reconnect (to any
/// instance holding that id) resumes exactly instead of getting the gap notice.
#[test]
fn shutdown_announcement_has_no_id_line() {
    let mut server = Server::start(&["--shards", "2"]);
    let api = server.api;
    let mut c = SseClient::open_ready(server.public, "/sse?userId=ann");
    wait_connections(api, 1);
    ok_json(publish_user(api, "ann", "last message", "id=m-last"));
    assert_eq!(c.expect_event("the message before the shutdown").id.as_deref(), Some("m-last"));
    assert_eq!(c.parser.last_event_id, "m-last");

    let resp = http(api, "POST", "/v1/admin/shutdown?graceMs=300&event=server:shutdown", &[], b"");
    assert_eq!(resp.status, 202, "{:?}", resp.text());
    let rest = c.raw_read(IO_TIMEOUT);
    assert!(c.is_eof(), "the stream must close after the grace");
    let text = String::from_utf8_lossy(&rest);
    assert_eq!(text, "event: server:shutdown\ndata: {\"graceMs\":300}\n\n", "everything after the last message");
    assert!(!text.lines().any(|line| line.starts_with("id")), "no id line: {text:?}");
    c.parser.push(&rest);
    match c.parser.next_item() {
        Some(SseItem::Event(ev)) => assert_eq!((ev.id, ev.event.as_deref()), (None, Some("server:shutdown"))),
        other => panic!("expected the announcement, got {other:?}"),
    }
    assert_eq!(c.parser.last_event_id, "m-last", "a reconnect sends Last-Event-ID: m-last");
    assert_eq!(server.wait_exit(Duration::from_secs(5)).map(|s| s.code()), Some(Some(0)));
}

#[test]
fn sigterm_drains_and_exits_zero() {
    for driver in drivers() {
        let mut server = Server::start_with_driver(driver, &["--shutdown-grace", "1s"]);
        let mut clients: Vec<SseClient> = (0..3).map(|_| SseClient::open_ready(server.public, "/sse")).collect();
        wait_connections(server.api, 3);
        let started = Instant::now();
        server.signal("TERM");
        expect_announced_drained_exited(driver, &mut server, &mut clients, started);
    }
}

#[test]
fn second_sigterm_exits_at_once() {
    let mut server = Server::start(&["--shutdown-grace", "30s"]);
    let _clients: Vec<SseClient> = (0..3).map(|_| SseClient::open_ready(server.public, "/sse")).collect();
    wait_connections(server.api, 3);
    server.signal("TERM");
    thread::sleep(Duration::from_millis(300));
    if server.wait_exit(Duration::ZERO).is_none() {
        server.signal("TERM");
    }
    let status = server.wait_exit(Duration::from_secs(3));
    assert!(status.is_some(), "a second SIGTERM during a 30 s grace must exit at once; logs:\n{}", server.logs());
}

#[test]
fn new_subscribers_are_refused_while_shutting_down() {
    let server = Server::start(&["--shutdown-grace", "3s"]);
    let _c = SseClient::open_ready(server.public, "/sse");
    wait_connections(server.api, 1);
    let resp = http(server.api, "POST", "/v1/admin/shutdown?graceMs=3000", &[], b"");
    assert_eq!(resp.status, 202, "{:?}", resp.text());
    // While draining, a new subscriber is refused (or the listener is already gone).
    match SseClient::try_connect(server.public, "/sse", &[]) {
        Ok(c) => c.assert_error(503, "not_accepting"),
        Err(e) => eprintln!("listener closed during drain: {e}"),
    }
}

#[test]
fn shutdown_spreads_the_closes_over_the_grace() {
    let mut server = Server::start(&["--shards", "2"]);
    let clients: Vec<SseClient> =
        (0..12).map(|i| SseClient::open_ready(server.public, &format!("/sse?userId=spread{i}"))).collect();
    wait_connections(server.api, 12);
    let started = Instant::now();
    let resp = http(server.api, "POST", "/v1/admin/shutdown?graceMs=1200", &[], b"");
    assert_eq!(resp.status, 202);
    let waiters: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            std::thread::spawn(move || {
                assert!(client.expect_closed(Duration::from_secs(4)), "a stream outlived the grace");
                started.elapsed()
            })
        })
        .collect();
    let mut closed: Vec<Duration> = waiters.into_iter().map(|w| w.join().expect("waiter")).collect();
    closed.sort();
    let (first, last) = (closed[0], closed[closed.len() - 1]);
    assert!(last - first >= Duration::from_millis(500), "closes not spread: first {first:?}, last {last:?}");
    assert!(last <= Duration::from_millis(2200), "last close {last:?} too late for a 1200 ms grace");
    assert_eq!(server.wait_exit(Duration::from_secs(5)).map(|s| s.code()), Some(Some(0)));
}
