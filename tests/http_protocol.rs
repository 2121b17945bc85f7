//! HTTP/1.1 handling on both listeners: routing, health, keep-alive,
//! pipelining, chunked bodies, limits, timeouts and error bodies.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn head_and_body(bytes: &[u8]) -> (String, Vec<u8>) {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(bytes)));
    (String::from_utf8_lossy(&bytes[..end]).into_owned(), bytes[end + 4..].to_vec())
}

#[test]
fn health_routes_answer_on_both_listeners() {
    let server = Server::start(&[]);
    for addr in [server.public, server.api] {
        let resp = http(addr, "GET", "/healthz", &[], b"");
        assert_eq!(resp.status, 200, "{addr} /healthz: {:?}", resp.text());
        assert_eq!(resp.json(), serde_json::json!({"status": "ok"}));
        let resp = http(addr, "GET", "/readyz", &[], b"");
        assert_eq!(resp.status, 200, "{addr} /readyz: {:?}", resp.text());
        assert_eq!(resp.json(), serde_json::json!({"status": "ready"}));
    }
}

#[test]
fn head_healthz_has_no_body() {
    let server = Server::start(&[]);
    for addr in [server.public, server.api] {
        let req = format!("HEAD /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        let (bytes, closed) = raw_exchange_closed(addr, req.as_bytes());
        assert!(closed, "server kept the connection after Connection: close");
        let (head, body) = head_and_body(&bytes);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body.is_empty(), "HEAD response carried a body: {:?}", String::from_utf8_lossy(&body));
    }
}

#[test]
fn unknown_paths_are_404_json() {
    let server = Server::start(&[]);
    for addr in [server.public, server.api] {
        http(addr, "GET", "/nope", &[], b"").assert_error(404, "not_found");
        http(addr, "GET", "/v2/stats", &[], b"").assert_error(404, "not_found");
    }
}

#[test]
fn route_sets_are_split_between_listeners() {
    let server = Server::start(&[]);
    // Api routes on the public listener.
    http(server.public, "POST", "/v1/broadcast", &[], b"x").assert_error(404, "not_found");
    http(server.public, "GET", "/v1/stats", &[], b"").assert_error(404, "not_found");
    http(server.public, "GET", "/metrics", &[], b"").assert_error(404, "not_found");
    http(server.public, "POST", "/v1/users/u/events", &[], b"x").assert_error(404, "not_found");
    // The stream route on the api listener.
    let client = SseClient::connect(server.api, "/sse", &[]);
    client.assert_error(404, "not_found");
    // And each works where it belongs.
    assert_eq!(http(server.api, "GET", "/v1/stats", &[], b"").status, 200);
    assert_eq!(SseClient::connect(server.public, "/sse", &[]).status, 200);
}

#[test]
fn one_address_serves_both_route_sets() {
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let server = Server::start(&["--listen", &addr, "--api-listen", &addr, "--api-key", "k1"]);
    assert_eq!(server.public, server.api);
    let mut sub = SseClient::open_ready(server.public, "/sse?userId=u");
    http(server.api, "POST", "/v1/users/u/events", &[], b"x").assert_error(401, "unauthorized");
    let resp = http(server.api, "POST", "/v1/users/u/events", &[("Authorization", "Bearer k1")], b"shared");
    assert_eq!(ok_json(resp)["delivered"], 1);
    assert_eq!(sub.expect_event("user publish").data, "shared");
}

#[test]
fn wrong_method_is_405_with_allow() {
    let server = Server::start(&[]);
    let resp = http(server.api, "GET", "/v1/broadcast", &[], b"");
    resp.assert_error(405, "method_not_allowed");
    let allow = resp.header("allow").expect("405 needs an Allow header");
    assert!(allow.split(',').any(|m| m.trim() == "POST"), "Allow: {allow}");

    let resp = http(server.api, "PUT", "/v1/stats", &[], b"");
    resp.assert_error(405, "method_not_allowed");
    let allow = resp.header("allow").expect("405 needs an Allow header");
    assert!(allow.split(',').any(|m| m.trim() == "GET"), "Allow: {allow}");
}

#[test]
fn non_loopback_api_listener_needs_a_key() {
    // 192.0.2.1 (TEST-NET-1) is never local: the server must refuse before binding.
    let err = match Server::try_start(&["--api-listen", "192.0.2.1:0"]) {
        Ok(_) => panic!("started with a non-loopback --api-listen and no --api-key"),
        Err(e) => e,
    };
    assert!(err.contains("exited"), "{err}");
    assert!(err.contains("--api-key"), "the refusal should name --api-key: {err}");
}

#[test]
fn api_key_guards_every_api_route_but_health() {
    let server = Server::start(&["--api-key", "s3cret", "--log-level", "debug"]);
    let api = server.api;
    http(api, "GET", "/v1/stats", &[], b"").assert_error(401, "unauthorized");
    http(api, "GET", "/v1/stats", &[("Authorization", "Bearer wrong")], b"").assert_error(401, "unauthorized");
    http(api, "GET", "/v1/stats", &[("Authorization", "s3cret")], b"").assert_error(401, "unauthorized");
    http(api, "POST", "/v1/broadcast", &[], b"x").assert_error(401, "unauthorized");
    http(api, "GET", "/metrics", &[], b"").assert_error(401, "unauthorized");
    let auth = [("Authorization", "Bearer s3cret")];
    assert_eq!(http(api, "GET", "/v1/stats", &auth, b"").status, 200);
    assert_eq!(http(api, "GET", "/metrics", &auth, b"").status, 200);
    assert_eq!(http(api, "POST", "/v1/broadcast", &auth, b"x").status, 200);
    assert_eq!(http(api, "GET", "/healthz", &[], b"").status, 200);
    assert_eq!(http(api, "GET", "/readyz", &[], b"").status, 200);
    assert_eq!(http(server.public, "GET", "/healthz", &[], b"").status, 200);
    // Neither the key nor a wrong guess is ever logged.
    let logs = server.logs();
    assert!(!logs.contains("s3cret"), "the api key appears in the logs:\n{logs}");
    assert!(!logs.contains("Bearer wrong"), "a credential appears in the logs:\n{logs}");
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    for driver in drivers() {
        let server = Server::start_with_driver(driver, &[]);
        let mut conn = HttpConn::open(server.api);
        for i in 0..5 {
            let resp = conn.request("POST", &format!("/v1/broadcast?id=k{i}"), &[], b"x");
            assert_eq!(resp.status, 200, "{driver}: request {i}: {:?}", resp.text());
            assert_eq!(resp.json()["id"], format!("k{i}"));
        }
        let resp = conn.request("GET", "/v1/stats", &[], b"");
        assert_eq!(resp.status, 200);
    }
}

#[test]
fn pipelined_publishes_are_answered_in_order() {
    for driver in drivers() {
        let server = Server::start_with_driver(driver, &[]);
        let mut sub = SseClient::open_ready(server.public, "/sse?userId=pipe");
        let addr = server.api;
        let mut bytes = Vec::new();
        for (i, body) in ["first", "second", "third"].iter().enumerate() {
            let close = if i == 2 { "Connection: close\r\n" } else { "" };
            bytes.extend_from_slice(
                format!(
                    "POST /v1/users/pipe/events?id=p{i} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n{close}\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
        let (raw, closed) = raw_exchange_closed(addr, &bytes);
        assert!(closed, "{driver}: no close after the last pipelined request");
        let responses = parse_responses(&raw);
        assert_eq!(responses.len(), 3, "{driver}: {:?}", String::from_utf8_lossy(&raw));
        for (i, resp) in responses.iter().enumerate() {
            assert_eq!(resp.status, 200, "{driver}: {:?}", resp.text());
            assert_eq!(resp.json()["id"], format!("p{i}"), "{driver}: response order");
            assert_eq!(resp.json()["delivered"], 1);
        }
        for (i, body) in ["first", "second", "third"].iter().enumerate() {
            let ev = sub.expect_event("pipelined publish");
            assert_eq!(ev.id.as_deref(), Some(format!("p{i}").as_str()), "{driver}");
            assert_eq!(ev.data, *body, "{driver}");
        }
    }
}

#[test]
fn pipelined_requests_split_across_writes() {
    let server = Server::start(&[]);
    let addr = server.api;
    let mut stream = tcp_connect(addr);
    let req = format!(
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\nPOST /v1/broadcast HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 5\r\n\r\nhelloGET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    // Dribble it out in small pieces so heads and bodies straddle reads.
    for piece in req.as_bytes().chunks(7) {
        stream.write_all(piece).unwrap();
        thread::sleep(Duration::from_millis(2));
    }
    let (raw, closed) = read_to_eof(&mut stream, IO_TIMEOUT);
    assert!(closed);
    let responses = parse_responses(&raw);
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200, 200, 200], "{:?}", String::from_utf8_lossy(&raw));
    assert_eq!(responses[1].json()["delivered"], 0);
}

#[test]
fn head_split_across_reads_is_served() {
    for driver in drivers() {
        let server = Server::start_with_driver(driver, &[]);
        for addr in [server.public, server.api] {
            let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            for split in [3, 9, 20, 30, req.len() - 2] {
                let mut stream = tcp_connect(addr);
                stream.write_all(&req.as_bytes()[..split]).unwrap();
                thread::sleep(Duration::from_millis(50));
                // The server may already have given up on the first part: keep the answer.
                let _ = stream.write_all(&req.as_bytes()[split..]);
                let (raw, _) = read_to_eof(&mut stream, Duration::from_secs(3));
                let responses = parse_responses(&raw);
                assert!(
                    responses.len() == 1 && responses[0].status == 200,
                    "{driver}: head split after {split} bytes ({:?} | …) on {addr} got {:?}",
                    &req[..split],
                    String::from_utf8_lossy(&raw)
                );
            }
        }
    }
}

#[test]
fn body_split_across_reads_is_delivered_intact() {
    for driver in drivers() {
        let server = Server::start_with_driver(driver, &[]);
        let mut sub = SseClient::open_ready(server.public, "/sse?userId=split");
        let addr = server.api;
        let body: String = (0..400).map(|i| format!("{i:04}|")).collect();
        let head = format!(
            "POST /v1/users/split/events HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut stream = tcp_connect(addr);
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&body.as_bytes()[..100]).unwrap();
        thread::sleep(Duration::from_millis(50));
        let _ = stream.write_all(&body.as_bytes()[100..1000]);
        thread::sleep(Duration::from_millis(50));
        let _ = stream.write_all(&body.as_bytes()[1000..]);
        let (raw, _) = read_to_eof(&mut stream, Duration::from_secs(5));
        let responses = parse_responses(&raw);
        assert!(responses.len() == 1 && responses[0].status == 200, "{driver}: {:?}", String::from_utf8_lossy(&raw));
        assert_eq!(sub.expect_event("split body").data, body, "{driver}: body damaged");
    }
}

#[test]
fn large_bodies_arrive_intact() {
    for driver in drivers() {
        let server = Server::start_with_driver(driver, &[]);
        let mut sub = SseClient::open_ready(server.public, "/sse");
        // 512 KiB: the server's wait takes 16 KiB, and the room it then
        // makes for the rest is filled by reads of at most 256 KiB each.
        let body: String = (0..64 * 1024).map(|i| format!("{:07}\n", i % 10_000_000)).collect::<String>();
        let body = body.trim_end().to_string();
        let mut conn = HttpConn::open(server.api);
        for round in 0..3 {
            let resp = conn.request("POST", "/v1/broadcast", &[], body.as_bytes());
            assert_eq!(resp.status, 200, "{driver}: round {round}: {:?}", resp.text());
            assert_eq!(sub.expect_event("large body").data, body, "{driver}: round {round}: body damaged");
        }
    }
}

#[test]
fn chunked_request_bodies_are_accepted() {
    for driver in drivers() {
        let server = Server::start_with_driver(driver, &[]);
        let mut sub = SseClient::open_ready(server.public, "/sse");
        let addr = server.api;
        let req = format!(
            "POST /v1/broadcast?id=c1 HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nhel\r\n2;ext=1\r\nlo\r\nA\r\n, chunked!\r\n0\r\n\r\n"
        );
        let responses = parse_responses(&raw_exchange(addr, req.as_bytes()));
        assert_eq!(responses.len(), 1, "{driver}");
        assert_eq!(responses[0].status, 200, "{driver}: {:?}", responses[0].text());
        assert_eq!(responses[0].json()["delivered"], 1);
        let ev = sub.expect_event("chunked publish");
        assert_eq!(ev.data, "hello, chunked!", "{driver}");
    }
}

#[test]
fn unsupported_transfer_encoding_is_400() {
    let server = Server::start(&[]);
    let addr = server.api;
    let req = format!("POST /v1/broadcast HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: gzip\r\n\r\nxxxx");
    let (raw, closed) = raw_exchange_closed(addr, req.as_bytes());
    let responses = parse_responses(&raw);
    assert_eq!(responses.len(), 1, "{:?}", String::from_utf8_lossy(&raw));
    responses[0].assert_error(400, "bad_request");
    assert!(closed, "connection must close after a malformed request");
}

#[test]
fn oversized_head_is_431_and_closes() {
    let server = Server::start(&[]);
    for addr in [server.public, server.api] {
        let big = "a".repeat(9 * 1024);
        let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Big: {big}\r\n\r\n");
        let (raw, closed) = raw_exchange_closed(addr, req.as_bytes());
        let responses = parse_responses(&raw);
        assert_eq!(responses.len(), 1, "{:?}", String::from_utf8_lossy(&raw));
        responses[0].assert_error(431, "headers_too_large");
        assert!(closed, "connection must close after 431");
    }
    // A head just under the limit is fine.
    let addr = server.api;
    let fine = "a".repeat(7 * 1024);
    let resp = http(addr, "GET", "/healthz", &[("X-Fine", &fine)], b"");
    assert_eq!(resp.status, 200);
}

#[test]
fn too_many_headers_is_431() {
    let server = Server::start(&[]);
    let addr = server.api;
    let mut req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n");
    for i in 0..70 {
        req.push_str(&format!("X-H{i}: v\r\n"));
    }
    req.push_str("\r\n");
    let (raw, closed) = raw_exchange_closed(addr, req.as_bytes());
    let responses = parse_responses(&raw);
    assert_eq!(responses.len(), 1, "{:?}", String::from_utf8_lossy(&raw));
    responses[0].assert_error(431, "headers_too_large");
    assert!(closed);
    // 60 headers are fine.
    let names: Vec<String> = (0..60).map(|i| format!("X-H{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    assert_eq!(http(addr, "GET", "/healthz", &headers, b"").status, 200);
}

#[test]
fn garbage_request_line_is_400_and_closes() {
    let server = Server::start(&[]);
    for addr in [server.public, server.api] {
        for garbage in
            [&b"HELLO THERE\r\n\r\n"[..], &b"GET /a b c HTTP/1.1\r\n\r\n"[..], &b"\x01\x02\x03 / HTTP/1.1\r\n\r\n"[..]]
        {
            let (raw, closed) = raw_exchange_closed(addr, garbage);
            let responses = parse_responses(&raw);
            assert_eq!(
                responses.len(),
                1,
                "{:?} -> {:?}",
                String::from_utf8_lossy(garbage),
                String::from_utf8_lossy(&raw)
            );
            responses[0].assert_error(400, "bad_request");
            assert!(closed, "connection must close after 400");
        }
    }
}

/// Sends a head that never ends on a new connection to `addr` of a server
/// run with `--read-timeout 500ms`; asserts the 408 and the close, not
/// before the timeout, and returns how long they took.
fn assert_a_stalled_head_is_408(addr: SocketAddr, driver: &str) -> Duration {
    let mut stream = tcp_connect(addr);
    let started = Instant::now();
    stream.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Half: ").as_bytes()).unwrap();
    let (raw, closed) = read_to_eof(&mut stream, IO_TIMEOUT);
    let elapsed = started.elapsed();
    assert!(closed, "{driver}: no close after a stalled head");
    assert!(elapsed >= Duration::from_millis(400), "{driver}: closed too early ({elapsed:?})");
    let responses = parse_responses(&raw);
    assert_eq!(responses.len(), 1, "{driver}: {:?}", String::from_utf8_lossy(&raw));
    responses[0].assert_error(408, "request_timeout");
    elapsed
}

#[test]
fn stalled_head_is_408_after_read_timeout() {
    for driver in drivers() {
        let server = Server::start_with_driver(driver, &["--read-timeout", "500ms"]);
        for addr in [server.public, server.api] {
            assert_a_stalled_head_is_408(addr, driver);
        }
    }
}

#[test]
fn stalled_body_is_408_after_read_timeout() {
    let server = Server::start(&["--read-timeout", "500ms"]);
    let addr = server.api;
    let mut stream = tcp_connect(addr);
    stream
        .write_all(format!("POST /v1/broadcast HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 10\r\n\r\nabc").as_bytes())
        .unwrap();
    let (raw, closed) = read_to_eof(&mut stream, IO_TIMEOUT);
    assert!(closed, "no close after a stalled body");
    let responses = parse_responses(&raw);
    assert_eq!(responses.len(), 1, "{:?}", String::from_utf8_lossy(&raw));
    responses[0].assert_error(408, "request_timeout");
}

#[test]
fn idle_keep_alive_connection_is_not_answered_408() {
    // An idle connection between requests has not started a request: the read
    // timeout does not apply to it (only --idle-timeout does).
    let server = Server::start(&["--read-timeout", "300ms"]);
    let mut conn = HttpConn::open(server.api);
    assert_eq!(conn.request("GET", "/healthz", &[], b"").status, 200);
    thread::sleep(Duration::from_millis(900));
    assert_eq!(conn.request("GET", "/healthz", &[], b"").status, 200);
}

#[test]
fn a_kept_alive_connection_idle_past_idle_timeout_is_closed_unanswered() {
    for driver in drivers() {
        let server = Server::start_with_driver(driver, &["--idle-timeout", "400ms", "--read-timeout", "5s"]);
        let mut conn = HttpConn::open(server.api);
        // Two requests answered on the connection (the second read by the
        // connection's kept timer), then silence.
        for _ in 0..2 {
            assert_eq!(conn.request("GET", "/healthz", &[], b"").status, 200, "{driver}");
        }
        let started = Instant::now();
        let (raw, closed) = read_to_eof(&mut conn.stream, IO_TIMEOUT);
        let elapsed = started.elapsed();
        assert!(closed, "{driver}: an idle connection stays open");
        assert!(raw.is_empty(), "{driver}: no 408 for an idle connection: {:?}", String::from_utf8_lossy(&raw));
        assert!(elapsed >= Duration::from_millis(300), "{driver}: closed too early ({elapsed:?})");
        assert!(elapsed < Duration::from_secs(4), "{driver}: --read-timeout applied, not --idle-timeout ({elapsed:?})");
    }
}

#[test]
fn a_stalled_head_after_an_answered_request_is_408_after_read_timeout() {
    for driver in drivers() {
        let server = Server::start_with_driver(driver, &["--read-timeout", "500ms", "--idle-timeout", "30s"]);
        let mut conn = HttpConn::open(server.api);
        assert_eq!(conn.request("GET", "/healthz", &[], b"").status, 200, "{driver}");
        let started = Instant::now();
        conn.send_raw(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\nX-Half: ", server.api).as_bytes());
        let (raw, closed) = read_to_eof(&mut conn.stream, IO_TIMEOUT);
        let elapsed = started.elapsed();
        assert!(closed, "{driver}: no close after a stalled second head");
        assert!(elapsed >= Duration::from_millis(400), "{driver}: closed too early ({elapsed:?})");
        assert!(elapsed < Duration::from_secs(20), "{driver}: --idle-timeout applied to a started head ({elapsed:?})");
        let responses = parse_responses(&raw);
        assert_eq!(responses.len(), 1, "{driver}: {:?}", String::from_utf8_lossy(&raw));
        responses[0].assert_error(408, "request_timeout");
    }
}

#[test]
fn a_connection_after_closed_ones_times_out_its_stalled_head_on_its_own_deadline() {
    for driver in drivers() {
        let server = Server::start_with_driver(driver, &["--read-timeout", "500ms"]);
        // Connections the server answered and closed leave their read
        // timers for the next connections on its thread to take.
        for _ in 0..3 {
            let (raw, closed) = raw_exchange_closed(
                server.api,
                format!("GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", server.api).as_bytes(),
            );
            assert!(closed, "{driver}: Connection: close not honoured");
            assert_eq!(parse_responses(&raw)[0].status, 200, "{driver}");
        }
        for addr in [server.api, server.public] {
            let elapsed = assert_a_stalled_head_is_408(addr, driver);
            assert!(
                elapsed < Duration::from_secs(10),
                "{driver}: the stalled head waited past its own deadline ({elapsed:?})"
            );
        }
    }
}

#[test]
fn error_bodies_are_json_with_content_length() {
    let server = Server::start(&[]);
    let resp = http(server.api, "GET", "/definitely/not/here", &[], b"");
    resp.assert_error(404, "not_found");
    assert_eq!(resp.header("content-length").map(str::to_string), Some(resp.body.len().to_string()));
    assert!(
        resp.header("content-type").is_some_and(|t| t.starts_with("application/json")),
        "{:?}",
        resp.header("content-type")
    );
}
