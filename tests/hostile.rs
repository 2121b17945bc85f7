//! The public port faces every bot: each limit of the security model, tried
//! through the real binary the way an attacker or a careless operator would,
//! while a normal subscriber and publisher keep working.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const SIXTEEN_MIB: usize = 16 << 20;

/// Sends a head announcing `length` body bytes, then keeps sending the body
/// until the server stops taking it; returns what came back, whether the
/// server closed, how long the answer took and how much body got out.
fn push_body(addr: std::net::SocketAddr, head: String, length: usize) -> (Vec<u8>, bool, Duration, usize) {
    let started = Instant::now();
    let mut stream = tcp_connect(addr);
    stream.write_all(head.as_bytes()).expect("send head");
    let mut writer = stream.try_clone().expect("clone socket");
    let sender = thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < length {
            match writer.write(&chunk[..chunk.len().min(length - sent)]) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    });
    let mut first = [0u8; 1];
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let got_first = stream.read(&mut first).unwrap_or(0);
    let answered_in = started.elapsed();
    let (rest, closed) = read_to_eof(&mut stream, Duration::from_secs(5));
    let mut bytes = first[..got_first].to_vec();
    bytes.extend_from_slice(&rest);
    (bytes, closed, answered_in, sender.join().unwrap())
}

fn post_head(path: &str, length: usize, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{extra}Content-Length: {length}\r\n\r\n"
    )
}

#[test]
fn bodies_nobody_may_read_are_answered_at_once_and_never_buffered() {
    let server = Server::start(&["--api-key", "secret"]);
    let mut subscriber = SseClient::open_ready(server.public, "/sse?userId=alice");
    let idle_kib = server.rss_kib();
    // Before, 40 such uploads held 615 MB until the read timeout.
    let cases = [
        (server.public, "/v1/publish", 404, "not_found"),
        (server.api, "/v1/publish", 401, "unauthorized"),
        (server.api, "/v1/users/alice/events", 401, "unauthorized"),
        (server.api, "/v1/stats", 405, "method_not_allowed"),
    ];
    let uploads: Vec<_> = (0..40)
        .map(|i| {
            let (addr, path, status, code) = cases[i % cases.len()];
            thread::spawn(move || (status, code, push_body(addr, post_head(path, SIXTEEN_MIB, ""), SIXTEEN_MIB)))
        })
        .collect();
    for upload in uploads {
        let (status, code, (bytes, closed, answered_in, sent)) = upload.join().unwrap();
        let responses = parse_responses(&bytes);
        assert!(!responses.is_empty(), "no answer: {:?}", String::from_utf8_lossy(&bytes));
        responses[0].assert_error(status, code);
        assert_eq!(responses[0].header("connection"), Some("close"));
        assert!(answered_in < Duration::from_secs(1), "answered after {answered_in:?}");
        assert!(closed, "the connection stayed open");
        assert!(sent < SIXTEEN_MIB, "the server read the whole refused body");
    }
    let grown_kib = server.rss_kib().saturating_sub(idle_kib);
    assert!(grown_kib < 32 * 1024, "RSS grew {grown_kib} KiB while refusing 640 MiB of bodies");

    // The normal publisher and subscriber never noticed.
    let published =
        http(server.api, "POST", "/v1/users/alice/events", &[("Authorization", "Bearer secret")], br#"{"n":1}"#);
    assert_eq!(published.status, 200, "{}", published.text());
    let event = subscriber.next_event(IO_TIMEOUT).expect("the subscriber's message");
    assert_eq!(event.data, r#"{"n":1}"#);

    let metrics = http(server.api, "GET", "/metrics", &[("Authorization", "Bearer secret")], b"").text();
    for (reason, at_least) in [("not_found", 10), ("unauthorized", 20), ("method_not_allowed", 10)] {
        let line = format!("ssekify_rejected_total{{reason=\"{reason}\"}} ");
        let count: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line} in /metrics"));
        assert!(count >= at_least, "{reason}: {count}");
    }
}

/// Reads an interim or final head (up to the blank line) byte by byte.
fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[test]
fn expect_100_continue_is_answered_only_when_the_body_will_be_read() {
    let server = Server::start(&["--api-key", "secret"]);
    let mut subscriber = SseClient::open_ready(server.public, "/sse?userId=bob");
    let body = br#"{"big":true}"#;

    let mut stream = tcp_connect(server.api);
    let expect = "Authorization: Bearer secret\r\nExpect: 100-continue\r\n";
    stream.write_all(post_head("/v1/users/bob/events", body.len(), expect).as_bytes()).unwrap();
    let interim = read_head(&mut stream);
    assert!(interim.starts_with("HTTP/1.1 100 Continue\r\n"), "{interim:?}");
    stream.write_all(body).unwrap();
    let answer = read_head(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert_eq!(subscriber.next_event(IO_TIMEOUT).expect("the message").data, r#"{"big":true}"#);

    // Without the key the final answer comes first, and the body is never asked for.
    let mut stream = tcp_connect(server.api);
    stream.write_all(post_head("/v1/users/bob/events", body.len(), "Expect: 100-continue\r\n").as_bytes()).unwrap();
    let (bytes, closed) = read_to_eof(&mut stream, IO_TIMEOUT);
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
    assert!(closed);
}

#[test]
fn a_full_body_budget_answers_503_and_frees_with_the_request() {
    let args = ["--max-payload", "64KiB", "--max-batch-body", "64KiB", "--body-budget", "100KiB", "--shards", "1"];
    let server = Server::start(&args);
    let length = 60_000;
    // One publish holds 60,000 bytes of the budget while its body trickles in.
    let mut slow = tcp_connect(server.api);
    slow.write_all(post_head("/v1/broadcast", length, "").as_bytes()).unwrap();
    slow.write_all(b"\"").unwrap();

    // Until the server has read that head, a second publish still fits.
    let body = format!("\"{}\"", "y".repeat(length - 2));
    let mut refused = None;
    let budget_spent = wait_until(IO_TIMEOUT, || {
        let answer = http(server.api, "POST", "/v1/broadcast", &[], body.as_bytes());
        let spent = answer.status == 503;
        refused = Some(answer);
        spent
    });
    assert!(budget_spent, "the slow publish never held the budget");
    let refused = refused.expect("an answer");
    refused.assert_error(503, "overloaded");
    assert_eq!(refused.header("retry-after"), Some("1"));

    slow.write_all(format!("{}\"", "z".repeat(length - 2)).as_bytes()).unwrap();
    let answer = read_head(&mut slow);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let accepted = http(server.api, "POST", "/v1/broadcast", &[], format!("\"{}\"", "y".repeat(length - 2)).as_bytes());
    assert_eq!(accepted.status, 200, "the budget came back: {}", accepted.text());
    assert_eq!(server.stats()["rejected"]["body_budget"], 1);
}

#[test]
fn framing_and_escapes_are_strict() {
    let server = Server::start(&[]);
    // `close` asks for the close a good request would not get (keep-alive).
    let chunked = |size_line: &str, close: bool| {
        let connection = if close { "Connection: close\r\n" } else { "" };
        let request = format!(
            "POST /v1/broadcast HTTP/1.1\r\nHost: t\r\n{connection}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{size_line}\r\n\"hi\"\r\n0\r\n\r\n"
        );
        let (bytes, closed) = raw_exchange_closed(server.api, request.as_bytes());
        (parse_responses(&bytes), closed)
    };
    let (ok, _) = chunked("4", true);
    assert_eq!(ok[0].status, 200, "a plain chunk size: {}", ok[0].text());
    let (ok, _) = chunked("4 ;ext=1", true);
    assert_eq!(ok[0].status, 200, "an extension after whitespace: {}", ok[0].text());
    for bad in ["+4", " 4", "0x4", "4x", "-4"] {
        let (responses, closed) = chunked(bad, false);
        responses[0].assert_error(400, "bad_request");
        assert!(closed, "chunk size {bad:?}: the connection stayed open");
    }

    let trailers = "X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(200);
    let request = format!(
        "POST /v1/broadcast HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n\"hi\"\r\n0\r\n{trailers}\r\n"
    );
    let (bytes, closed) = raw_exchange_closed(server.api, request.as_bytes());
    parse_responses(&bytes)[0].assert_error(431, "headers_too_large");
    assert!(closed);

    for target in ["/sse?userId=%+5", "/sse?userId=%-1", "/sse?userId=%4", "/sse/%ff"] {
        let (bytes, closed) =
            raw_exchange_closed(server.public, format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        parse_responses(&bytes)[0].assert_error(400, "bad_request");
        assert!(closed, "{target}: a malformed request target leaves the connection open");
    }
    let mut subscriber = SseClient::open_ready(server.public, "/sse?userId=a%2Bb");
    assert_eq!(delivered(publish_user(server.api, "a+b", r#""ok""#, "")), 1);
    assert_eq!(subscriber.next_event(IO_TIMEOUT).unwrap().data, r#""ok""#);
}

#[test]
fn a_second_instance_on_the_same_ports_refuses_to_start() {
    let first = Server::start(&[]);
    let mut subscriber = SseClient::open_ready(first.public, "/sse?userId=carol");
    for (flag, taken) in [("--listen", first.public), ("--api-listen", first.api)] {
        let taken_text = taken.to_string();
        let args = match flag {
            "--listen" => vec!["--listen", taken_text.as_str()],
            _ => vec!["--api-listen", taken_text.as_str()],
        };
        let error = Server::try_start(&args).err().expect("the second instance started");
        assert!(error.contains("exited with exit status: 1"), "{error}");
        assert!(
            error.contains(&format!("cannot listen on {taken} ({flag}): another process already listens there")),
            "{error}"
        );
    }
    // The first still has every subscriber: a publish reaches carol.
    assert_eq!(delivered(publish_user(first.api, "carol", r#""still here""#, "")), 1);
    assert_eq!(subscriber.next_event(IO_TIMEOUT).unwrap().data, r#""still here""#);
}

#[test]
fn subscribers_cannot_take_the_descriptors_the_api_needs() {
    // 400 descriptors: the default --max-connections keeps 128 back.
    let server = Server::start_with_open_files(400, &[]);
    assert!(server.logs().contains("max_connections=272"), "{}", server.logs());
    let mut subscribers: Vec<SseClient> =
        (0..272).map(|i| SseClient::open_ready(server.public, &format!("/sse?userId=u{i}"))).collect();
    SseClient::connect(server.public, "/sse?userId=late", &[]).assert_error(503, "at_capacity");

    // Sockets that connect and say nothing fill the headroom, then get 503 at once.
    let silent: Vec<TcpStream> = (0..100).map(|_| tcp_connect(server.public)).collect();
    let answered_503 = silent
        .into_iter()
        .filter_map(|mut socket| {
            socket.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            let mut buf = [0u8; 512];
            let read = socket.read(&mut buf).unwrap_or(0);
            String::from_utf8_lossy(&buf[..read]).starts_with("HTTP/1.1 503").then_some(socket)
        })
        .count();
    assert!(answered_503 >= 30, "only {answered_503} of 100 silent sockets were turned away");

    // The api listener, health checks and publishing still work.
    assert_eq!(http(server.api, "GET", "/healthz", &[], b"").status, 200);
    let stats = server.stats();
    assert_eq!(stats["connections"], 272);
    assert!(stats["rejected"]["at_capacity"].as_u64().unwrap() >= 31, "{}", stats["rejected"]);
    assert_eq!(delivered(broadcast(server.api, r#""everyone""#, "")), 272);
    assert_eq!(subscribers[0].next_event(IO_TIMEOUT).unwrap().data, r#""everyone""#);
    assert_eq!(subscribers[271].next_event(IO_TIMEOUT).unwrap().data, r#""everyone""#);
    assert!(!server.logs().contains("Too many open files"), "{}", server.logs());
}

#[test]
fn a_shutdown_answers_requests_in_flight_with_connection_close() {
    let mut server = Server::start(&["--shutdown-grace", "500ms"]);
    let mut publisher = HttpConn::open(server.api);
    let first = publisher.request("POST", "/v1/broadcast", &[("Content-Type", "application/json")], b"1");
    assert_eq!(first.status, 200);
    assert_ne!(first.header("connection"), Some("close"));

    // A request whose body is still on its way when the shutdown starts:
    // pipelined behind one more answered request, so its head is read once
    // that answer is.
    let mut pipelined = build_request(server.api, "POST", "/v1/broadcast", &[], b"2", false);
    pipelined.extend_from_slice(post_head("/v1/broadcast", 4, "").as_bytes());
    pipelined.extend_from_slice(b"12");
    publisher.send_raw(&pipelined);
    assert_eq!(publisher.read_response().expect("the pipelined answer").status, 200);
    assert_eq!(http(server.api, "POST", "/v1/admin/shutdown?graceMs=300", &[], b"").status, 202);
    assert_eq!(http(server.api, "GET", "/readyz", &[], b"").status, 503, "the shutdown is under way");
    publisher.send_raw(b"34");
    let answer = publisher.read_response().expect("an answer, not a reset");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(publisher.closed_within(IO_TIMEOUT));
    assert_eq!(server.wait_exit(Duration::from_secs(10)).map(|s| s.code()), Some(Some(0)));
}

/// The server's RSS once it has stopped changing (two equal readings 100 ms
/// apart, within 10 s): after start-up, or after it took in a burst.
fn settled_rss_kib(server: &Server) -> u64 {
    let mut last = server.rss_kib();
    wait_until(Duration::from_secs(10), || {
        thread::sleep(Duration::from_millis(100));
        let now = server.rss_kib();
        std::mem::replace(&mut last, now) == now
    });
    last
}

/// Opens a subscriber to `rooms` rooms of its own without keeping a client.
fn subscribe_raw(addr: std::net::SocketAddr, index: usize, rooms: usize) -> TcpStream {
    let rooms: Vec<String> = (0..rooms).map(|r| format!("r{index}-{r}")).collect();
    let mut stream = tcp_connect(addr);
    let request = format!("GET /sse?userId=f{index}&rooms={} HTTP/1.1\r\nHost: t\r\n\r\n", rooms.join(","));
    stream.write_all(request.as_bytes()).unwrap();
    stream
}

#[test]
fn memory_goes_back_to_the_system_after_a_room_flood() {
    let server = Server::start(&["--shards", "2"]);
    let idle_kib = settled_rss_kib(&server);
    let flood: Vec<TcpStream> = (0..3000).map(|i| subscribe_raw(server.public, i, 64)).collect();
    wait_connections(server.api, 3000);
    let peak_kib = server.rss_kib();
    assert!(peak_kib > 2 * idle_kib, "the flood should have cost memory: {idle_kib} → {peak_kib} KiB");
    drop(flood);
    wait_connections(server.api, 0);
    let mut now_kib = 0;
    let back = wait_until(Duration::from_secs(60), || {
        now_kib = server.rss_kib();
        now_kib <= 2 * idle_kib
    });
    assert!(back, "RSS {now_kib} KiB a minute after the flood left (idle {idle_kib}, peak {peak_kib})");
    assert_eq!(server.stats()["rooms"], 0);
}

#[test]
fn a_silent_socket_holds_a_small_buffer() {
    let server = Server::start(&["--shards", "1", "--read-timeout", "30s"]);
    let before_kib = settled_rss_kib(&server);
    let count = 2000;
    let sockets: Vec<TcpStream> = (0..count)
        .map(|_| {
            let mut socket = tcp_connect(server.public);
            socket.write_all(b"G").unwrap();
            socket
        })
        .collect();
    // Every socket accepted and its byte read: the server's memory stops moving.
    let per_socket = (settled_rss_kib(&server).saturating_sub(before_kib)) * 1024 / count;
    // A slow-loris socket cost ~19 KiB when its read buffer grew to 16 KiB
    // after the first byte; now the 4 KiB it started with and its task.
    assert!(per_socket < 10 * 1024, "{per_socket} B per silent socket");
    drop(sockets);
}

#[test]
fn running_out_of_descriptors_backs_off_without_flooding_the_log() {
    // An operator's --max-connections above what the open-file limit allows.
    let server = Server::start_with_open_files(200, &["--max-connections", "1000", "--shards", "1"]);
    let mut subscribers = Vec::new();
    let mut refused_for_a_while = false;
    for i in 0..400 {
        let mut socket = tcp_connect(server.public);
        socket.write_all(format!("GET /sse?userId=x{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut head = [0u8; 12];
        if socket.read(&mut head).unwrap_or(0) == 0 {
            // The kernel queued the connection; the server could not accept it.
            refused_for_a_while = true;
            break;
        }
        subscribers.push(socket);
    }
    assert!(refused_for_a_while, "400 subscribers fit in 200 descriptors?");
    thread::sleep(Duration::from_secs(3));
    let failures = server.logs().matches("accept failed").count();
    assert!((1..=2).contains(&failures), "{failures} 'accept failed' lines in 3 s:\n{}", server.logs());

    // Descriptors come back: the server accepts again.
    drop(subscribers);
    assert!(wait_until(Duration::from_secs(10), || http(server.api, "GET", "/healthz", &[], b"").status == 200));
    let mut late = SseClient::open_ready(server.public, "/sse?userId=late");
    assert_eq!(delivered(publish_user(server.api, "late", r#""back""#, "")), 1);
    assert_eq!(late.next_event(IO_TIMEOUT).unwrap().data, r#""back""#);
}
