//! `GET /sse`: response head, `retry:`, heartbeats, CORS, content negotiation,
//! connection limits and the subscriber bookkeeping in stats.

mod common;

use std::time::Duration;

use common::*;

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

#[test]
fn stream_head_and_retry_come_first() {
    for driver in drivers() {
        let server = Server::start_with_driver(driver, &[]);
        let mut client = SseClient::open(server.public, "/sse");
        assert_eq!(client.header("content-type"), Some("text/event-stream; charset=utf-8"), "{driver}");
        assert_eq!(client.header("cache-control"), Some("no-cache, no-transform"), "{driver}");
        assert_eq!(client.header("connection"), Some("keep-alive"), "{driver}");
        assert_eq!(client.header("x-accel-buffering"), Some("no"), "{driver}");
        assert_eq!(client.header("content-length"), None, "{driver}: a stream has no length");
        assert_eq!(client.header("access-control-allow-origin"), None, "{driver}: no CORS unless asked");
        let first = client.read_bytes(13, IO_TIMEOUT);
        assert_eq!(
            String::from_utf8_lossy(&first),
            "retry: 2000\n\n",
            "{driver}: the stream must start with the retry hint"
        );
    }
}

#[test]
fn retry_follows_the_flag() {
    let server = Server::start(&["--retry", "5s"]);
    let mut client = SseClient::open(server.public, "/sse?userId=r");
    let first = client.read_bytes(13, IO_TIMEOUT);
    assert_eq!(String::from_utf8_lossy(&first), "retry: 5000\n\n");

    let server = Server::start(&["--retry", "750"]);
    let mut client = SseClient::open(server.public, "/sse");
    assert_eq!(client.next_item(IO_TIMEOUT), Some(SseItem::Retry(750)));
}

#[test]
fn idle_stream_gets_heartbeats() {
    for driver in drivers() {
        let server = Server::start_with_driver(driver, &["--keep-alive", "300ms"]);
        let mut client = SseClient::open(server.public, "/sse?userId=hb");
        let bytes = client.raw_read(Duration::from_millis(2500));
        assert!(bytes.starts_with(b"retry: 2000\n\n"), "{driver}: {:?}", String::from_utf8_lossy(&bytes));
        let pings = count(&bytes, b": ping\n\n");
        assert!(
            pings >= 2,
            "{driver}: expected repeated `: ping` heartbeats within 2.5 s at --keep-alive 300ms, got {:?}",
            String::from_utf8_lossy(&bytes)
        );
        // Heartbeats are not message frames.
        let stats = server.stats();
        assert_eq!(stat(&stats, "sent"), 0, "{driver}: heartbeats must not count as sent: {stats}");
        // The stream still carries events after heartbeats.
        ok_json(publish_user(server.api, "hb", "after pings", ""));
        assert_eq!(client.expect_event("event after heartbeats").data, "after pings");
    }
}

#[test]
fn heartbeat_items_parse_as_ping_comments() {
    let server = Server::start(&["--keep-alive", "300ms"]);
    let mut client = SseClient::open_ready(server.public, "/sse");
    let mut saw_ping = false;
    for _ in 0..5 {
        match client.next_item(Duration::from_secs(3)) {
            Some(SseItem::Comment(text)) if text == "ping" => {
                saw_ping = true;
                break;
            }
            Some(SseItem::Comment(_)) => continue,
            other => panic!("expected a ping comment, got {other:?}"),
        }
    }
    assert!(saw_ping, "no `: ping` comment");
}

#[test]
fn cors_origin_is_sent_and_preflight_answered() {
    let server = Server::start(&["--cors-origin", "https://a.example"]);
    let client = SseClient::open(server.public, "/sse");
    assert_eq!(client.header("access-control-allow-origin"), Some("https://a.example"));
    let resp = http(
        server.public,
        "OPTIONS",
        "/sse",
        &[
            ("Origin", "https://a.example"),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "last-event-id"),
        ],
        b"",
    );
    assert_eq!(resp.status, 204, "{:?}", resp.text());
    assert_eq!(resp.header("access-control-allow-origin"), Some("https://a.example"));
    assert!(resp.body.is_empty());
}

#[test]
fn accept_header_negotiation() {
    let server = Server::start(&[]);
    let client = SseClient::connect(server.public, "/sse", &[("Accept", "application/json")]);
    client.assert_error(406, "not_acceptable");
    for accept in ["*/*", "text/event-stream", "text/html, */*;q=0.8", "text/event-stream;q=1"] {
        let client = SseClient::connect(server.public, "/sse", &[("Accept", accept)]);
        assert_eq!(client.status, 200, "Accept: {accept}: {:?}", client.error_text());
    }
    // No Accept header at all is fine too.
    let mut stream = tcp_connect(server.public);
    let req = format!("GET /sse HTTP/1.1\r\nHost: {}\r\n\r\n", server.public);
    std::io::Write::write_all(&mut stream, req.as_bytes()).unwrap();
    let (bytes, _) = read_to_eof(&mut stream, Duration::from_millis(500));
    assert!(bytes.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&bytes));
}

#[test]
fn sse_only_takes_get() {
    let server = Server::start(&[]);
    let resp = http(server.public, "POST", "/sse", &[], b"x");
    resp.assert_error(405, "method_not_allowed");
    let allow = resp.header("allow").expect("Allow header");
    assert!(allow.split(',').any(|m| m.trim() == "GET"), "Allow: {allow}");
}

#[test]
fn max_connections_answers_503_at_capacity() {
    let server = Server::start(&["--max-connections", "3", "--keep-alive", "300ms"]);
    let mut clients: Vec<SseClient> =
        (0..3).map(|i| SseClient::open(server.public, &format!("/sse?userId=c{i}"))).collect();
    wait_connections(server.api, 3);
    let fourth = SseClient::connect(server.public, "/sse?userId=c3", &[]);
    fourth.assert_error(503, "at_capacity");
    let anon = SseClient::connect(server.public, "/sse", &[]);
    anon.assert_error(503, "at_capacity");
    // The health routes are not subscribers.
    assert_eq!(http(server.public, "GET", "/healthz", &[], b"").status, 200);
    // A freed slot can be taken again.
    drop(clients.pop());
    let mut reopened = None;
    let ok = wait_until(Duration::from_secs(10), || {
        let c = SseClient::connect(server.public, "/sse?userId=again", &[]);
        if c.status == 200 {
            reopened = Some(c);
            true
        } else {
            false
        }
    });
    assert!(ok, "a slot freed by a closed subscriber was not reusable");
    wait_connections(server.api, 3);
}

#[test]
fn max_connections_per_user_answers_429() {
    let server = Server::start(&["--max-connections-per-user", "2", "--shards", "2"]);
    let _a = SseClient::open(server.public, "/sse?userId=alice");
    let _b = SseClient::open(server.public, "/sse?userId=alice&rooms=r1");
    let third = SseClient::connect(server.public, "/sse?userId=alice", &[]);
    third.assert_error(429, "too_many_connections");
    // Other users and anonymous subscribers are not affected.
    let _c = SseClient::open(server.public, "/sse?userId=bob");
    let _d = SseClient::open(server.public, "/sse?userId=bob");
    let _e = SseClient::open(server.public, "/sse");
    let _f = SseClient::open(server.public, "/sse");
    let _g = SseClient::open(server.public, "/sse");
    SseClient::connect(server.public, "/sse?userId=bob", &[]).assert_error(429, "too_many_connections");
    wait_connections(server.api, 7);
    let resp = ok_json(publish_user(server.api, "alice", "x", ""));
    assert_eq!(resp["delivered"], 2);
}

#[test]
fn invalid_subscribe_queries_are_400() {
    let server = Server::start(&[]);
    let too_long = "u".repeat(129);
    for query in [
        "/sse?userId=a%2Fb".to_string(),
        "/sse?userId=a%2Cb".to_string(),
        "/sse?userId=a%01b".to_string(),
        format!("/sse?userId={too_long}"),
        "/sse?rooms=ok,bad%2Fname".to_string(),
        "/sse?rooms=ok,bad%0Aname".to_string(),
        format!("/sse?rooms={too_long}"),
        "/sse?userId=%ZZ".to_string(),
    ] {
        let client = SseClient::connect(server.public, &query, &[]);
        assert_eq!(client.status, 400, "{query}: {:?}", client.error_text());
        let code = client.error_json()["error"].as_str().unwrap_or_default().to_string();
        assert!(code == "invalid_request" || code == "bad_request", "{query}: error code {code}");
    }
    // The name rules, not the query syntax: these are validation errors.
    SseClient::connect(server.public, "/sse?userId=a%2Fb", &[]).assert_error(400, "invalid_request");
    SseClient::connect(server.public, &format!("/sse?userId={too_long}"), &[]).assert_error(400, "invalid_request");
    // 128 bytes (64 two-byte characters) is the longest valid name.
    let max = "é".repeat(64);
    let client = SseClient::connect(server.public, &format!("/sse?userId={}", pct(&max)), &[]);
    assert_eq!(client.status, 200, "{:?}", client.error_text());
}

#[test]
fn stats_track_subscribers() {
    let server = Server::start(&["--shards", "2"]);
    let api = server.api;
    let a = SseClient::open(server.public, "/sse?userId=u1&rooms=r1,r2");
    let b = SseClient::open(server.public, "/sse?userId=u1&rooms=r2");
    let c = SseClient::open(server.public, "/sse?userId=u2");
    let d = SseClient::open(server.public, "/sse?rooms=r3");
    wait_connections(api, 4);
    let s = stats(api);
    assert_eq!(stat(&s, "users"), 2, "{s}");
    assert_eq!(stat(&s, "rooms"), 3, "{s}");
    drop((a, b, c, d));
    let mut last = serde_json::Value::Null;
    let gone = wait_until(Duration::from_secs(10), || {
        last = stats(api);
        last["connections"] == 0 && last["users"] == 0 && last["rooms"] == 0
    });
    assert!(gone, "closed subscribers are still counted: {last}");
}

#[test]
fn anonymous_subscriber_gets_broadcasts_and_rooms_only() {
    let server = Server::start(&[]);
    let mut anon = SseClient::open_ready(server.public, "/sse?rooms=lobby");
    assert_eq!(ok_json(publish_user(server.api, "someone", "private", ""))["delivered"], 0);
    assert_eq!(ok_json(publish_room(server.api, "lobby", "room msg", ""))["delivered"], 1);
    assert_eq!(ok_json(broadcast(server.api, "to all", ""))["delivered"], 1);
    assert_eq!(anon.expect_event("room").data, "room msg");
    assert_eq!(anon.expect_event("broadcast").data, "to all");
    let s = stats(server.api);
    assert_eq!(stat(&s, "users"), 0, "anonymous connections are not users: {s}");
}

#[test]
fn demo_page_only_with_the_flag_and_only_on_the_public_listener() {
    let plain = Server::start(&[]);
    assert_eq!(http(plain.public, "GET", "/", &[], b"").status, 404, "no demo page unless asked for");

    let demo = Server::start(&["--demo"]);
    let page = http(demo.public, "GET", "/", &[], b"");
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    let html = page.text();
    assert!(html.contains("new EventSource(url)"), "the subscriber page: {html}");
    assert!(html.contains("/sse?"), "it subscribes on the same origin");
    assert_eq!(http(demo.api, "GET", "/", &[], b"").status, 404, "the api listener has no demo page");
}

#[test]
fn rooms_per_connection_follow_the_flag() {
    let server = Server::start(&["--max-rooms-per-connection", "2"]);
    SseClient::open_ready(server.public, "/sse?rooms=a,b");
    let refused = SseClient::connect(server.public, "/sse?rooms=a,b,c", &[]);
    refused.assert_error(400, "invalid_request");
    let message = refused.error_json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("at most 2 rooms") && message.contains("--max-rooms-per-connection"), "{message}");
}

/// Opens a stream on a bare socket and reads its response head.
fn raw_stream(addr: std::net::SocketAddr, user: &str) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut stream = tcp_connect(addr);
    stream.write_all(format!("GET /sse?userId={user} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("a response head");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    stream
}

#[test]
fn a_client_that_goes_away_in_any_way_is_unregistered_at_once() {
    // The shard's epoll set reports a FIN (EPOLLRDHUP), a reset (EPOLLHUP |
    // EPOLLERR) and a half-close alike, with nothing sent to the stream.
    for driver in drivers() {
        let server = Server::start(&["--io-driver", driver, "--keep-alive", "1h"]);
        let closed = raw_stream(server.public, "fin");
        let reset = raw_stream(server.public, "rst");
        let half = raw_stream(server.public, "half");
        wait_connections(server.api, 3);
        drop(closed);
        wait_connections(server.api, 2);
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: a plain setsockopt on the stream's open descriptor; with a
        // zero linger its close sends a reset instead of a FIN.
        let set = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&reset),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "{driver}: SO_LINGER");
        drop(reset);
        wait_connections(server.api, 1);
        half.shutdown(std::net::Shutdown::Write).unwrap();
        wait_connections(server.api, 0);
    }
}

/// This port's sockets that the kernel holds in CLOSE_WAIT (state 08 of
/// `/proc/net/tcp`): the peer closed and the server has not let go.
fn close_wait_on(port: u16) -> usize {
    let local = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    fields.len() > 3 && fields[1].ends_with(&local) && fields[3] == "08"
                })
                .count()
        })
        .sum()
}

#[test]
fn a_hung_up_subscribers_socket_is_let_go() {
    // Each stream is sent to before its client goes (under io_uring the
    // write loop's ring then holds its socket in a table, which keeps it
    // open past the descriptor's close unless it is taken out first).
    for driver in drivers() {
        let server = Server::start_with_driver(driver, &[]);
        let mut clients: Vec<SseClient> =
            (0..8).map(|i| SseClient::open_ready(server.public, &format!("/sse?userId=leaving{i}"))).collect();
        wait_connections(server.api, 8);
        for (i, client) in clients.iter_mut().enumerate() {
            ok_json(publish_user(server.api, &format!("leaving{i}"), "hello", ""));
            assert_eq!(client.expect_event("a message before leaving").data, "hello", "{driver}");
        }
        drop(clients);
        wait_connections(server.api, 0);
        assert!(
            wait_until(Duration::from_secs(5), || close_wait_on(server.public.port()) == 0),
            "{driver}: {} sockets the clients closed are still held open",
            close_wait_on(server.public.port())
        );
    }
}
