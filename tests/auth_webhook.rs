//! `--auth webhook` end to end: a real HTTP application (a thread of this
//! test on a loopback port) answers for each subscribe request from its
//! cookies; ssekify forwards the query and headers, grants the answer's user
//! and rooms, passes the app's refusals through, answers 503/502 when the app
//! is down or answers nonsense, reuses answers for --auth-cache-ttl, and
//! holds a subscriber to the tenant the app names.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;

/// The application: answers by the `session` cookie and records every request head.
struct App {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl App {
    fn start() -> App {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = seen.clone();
                thread::spawn(move || answer(stream, &seen));
            }
        });
        App { addr, heads }
    }

    fn url(&self) -> String {
        format!("http://{}/auth?site=1", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

fn answer(mut stream: TcpStream, seen: &Mutex<Vec<String>>) {
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8(head).unwrap();
    seen.lock().unwrap().push(head.clone());
    let session = head.lines().find_map(|l| l.strip_prefix("Cookie: session=")).unwrap_or("").to_owned();
    let with_length = |status: &str, body: &str| {
        format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
    };
    let reply = match session.as_str() {
        "alice" => with_length("200 OK", r#"{"user":"alice","rooms":["news"]}"#),
        "acme-alice" => with_length("200 OK", r#"{"user":"alice","rooms":["news"],"tenant":"acme"}"#),
        // Chunked, in two chunks, as frameworks stream JSON.
        "guest" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nd\r\n{\"user\":null,\r\ne\r\n\"rooms\":[\"*\"]}\r\n0\r\n\r\n".into(),
        "banned" => with_length("403 Forbidden", r#"{"error":"banned"}"#),
        "maintenance" => with_length("503 Service Unavailable", ""),
        "broken" => with_length("200 OK", "<html>login</html>"),
        "bad-user" => with_length("200 OK", r#"{"user":"a/b"}"#),
        "slow" => {
            thread::sleep(Duration::from_secs(3));
            with_length("200 OK", r#"{"user":"slow"}"#)
        }
        _ => with_length("401 Unauthorized", r#"{"error":"login"}"#),
    };
    let _ = stream.write_all(reply.as_bytes());
}

fn webhook_args(app: &App, extra: &[&str]) -> Vec<String> {
    let base = ["--auth", "webhook", "--auth-url", &app.url(), "--auth-timeout", "500ms", "--log-level", "debug"];
    base.iter().chain(extra).map(|arg| arg.to_string()).collect()
}

fn webhook_server(app: &App, extra: &[&str]) -> Server {
    Server::start(&webhook_args(app, extra).iter().map(String::as_str).collect::<Vec<_>>())
}

fn webhook_server_on(driver: &str, app: &App, extra: &[&str]) -> Server {
    Server::start_with_driver(driver, &webhook_args(app, extra).iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn the_app_names_the_user_and_its_rooms() {
    for driver in drivers() {
        the_app_names_the_user_and_its_rooms_on(driver);
    }
}

fn the_app_names_the_user_and_its_rooms_on(driver: &str) {
    let app = App::start();
    let server = webhook_server_on(driver, &app, &["--auth-cache-ttl", "0"]);
    let headers =
        [("Cookie", "session=alice"), ("Authorization", "Basic YWxpY2U6cHc="), ("X-Forwarded-For", "203.0.113.7")];
    let mut alice = SseClient::open_ready_with(server.public, "/sse?rooms=news&userId=mallory", &headers);
    let mut guest = SseClient::open_ready_with(server.public, "/sse?rooms=anything", &[("Cookie", "session=guest")]);

    assert_eq!(delivered(publish_user(server.api, "mallory", "to mallory", "")), 0, "userId must not be trusted");
    assert_eq!(delivered(publish_user(server.api, "alice", "to alice", "")), 1);
    assert_eq!(delivered(publish_room(server.api, "news", "news", "")), 1);
    assert_eq!(delivered(publish_room(server.api, "anything", "anything", "")), 1);
    assert_eq!(alice.expect_event("user message").data, "to alice");
    assert_eq!(alice.expect_event("room message").data, "news");
    assert_eq!(guest.expect_event("any room").data, "anything");

    let requests = app.requests();
    let first = &requests[0];
    assert!(first.starts_with("GET /auth?site=1&rooms=news&userId=mallory HTTP/1.1\r\n"), "{first}");
    for header in [
        "Cookie: session=alice",
        "Authorization: Basic YWxpY2U6cHc=",
        "X-Forwarded-For: 203.0.113.7",
        &format!("Host: {}", app.addr),
    ] {
        assert!(first.contains(&format!("{header}\r\n")), "{header} not forwarded: {first}");
    }
    // The answer's rooms bound what the query may ask for.
    let client = SseClient::connect(server.public, "/sse?rooms=news,secret", &[("Cookie", "session=alice")]);
    client.assert_error(403, "forbidden");
    assert!(!server.logs().contains("session=alice"), "a cookie reached the logs");
}

#[test]
fn the_app_names_the_tenant() {
    let app = App::start();
    let server = webhook_server(&app, &["--auth-cache-ttl", "0"]);
    let acme = [("Cookie", "session=acme-alice")];
    let mut alice = SseClient::open_ready_with(server.public, "/t/acme/sse?rooms=news", &acme);
    let head = app.requests().pop().unwrap();
    assert!(head.contains("\r\nX-Ssekify-Tenant: acme\r\n"), "the path's tenant is forwarded: {head}");
    for path in ["/sse?rooms=news", "/t/globex/sse?rooms=news"] {
        SseClient::connect(server.public, path, &acme).assert_error(403, "forbidden");
    }
    // An answer without a tenant is for the default namespace only.
    SseClient::connect(server.public, "/t/acme/sse", &[("Cookie", "session=alice")]).assert_error(403, "forbidden");
    let head = app.requests().pop().unwrap();
    assert!(head.contains("X-Ssekify-Tenant: acme"), "{head}");
    let _plain = SseClient::open_ready_with(server.public, "/sse", &[("Cookie", "session=alice")]);
    assert!(!app.requests().pop().unwrap().contains("X-Ssekify-Tenant"), "no tenant on /sse");
    assert_eq!(delivered(http(server.api, "POST", "/v1/t/acme/rooms/news/events", &[], b"acme news")), 1);
    assert_eq!(alice.expect_event("acme's room").data, "acme news");
}

#[test]
fn refusals_outages_and_bad_answers() {
    let app = App::start();
    let server = webhook_server(&app, &["--auth-cache-ttl", "0"]);
    let refused = |cookie: &str, status: u16, code: &str| {
        let client = SseClient::connect(server.public, "/sse", &[("Cookie", cookie)]);
        client.assert_error(status, code);
        client
    };
    refused("session=nobody", 401, "unauthorized");
    refused("session=banned", 403, "forbidden");
    refused("session=maintenance", 503, "auth_unavailable");
    let broken = refused("session=broken", 502, "auth_failed");
    assert!(broken.error_json()["message"].as_str().unwrap().contains("not a JSON object"));
    refused("session=bad-user", 502, "auth_failed");
    let slow = refused("session=slow", 503, "auth_unavailable");
    assert_eq!(slow.header("retry-after"), Some("1"));
    // Operators see the app's refusals apart from its failures.
    let counts = stats(server.api);
    assert_eq!((counts["authRefused"].as_u64(), counts["authFailures"].as_u64()), (Some(2), Some(4)), "{counts}");
    let metrics = http(server.api, "GET", "/metrics", &[], b"").text();
    assert!(metrics.contains("ssekify_auth_failures_total 4\n"), "{metrics}");

    // An app that is not there at all.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("http://{closed}/auth");
    let orphan = Server::start(&["--auth", "webhook", "--auth-url", &url]);
    let client = SseClient::connect(orphan.public, "/sse", &[("Cookie", "session=alice")]);
    client.assert_error(503, "auth_unavailable");
    // The server itself is fine: other routes answer.
    assert_eq!(http(orphan.public, "GET", "/healthz", &[], b"").status, 200);
}

#[test]
fn answers_are_reused_for_the_cache_ttl() {
    let app = App::start();
    let server = webhook_server(&app, &["--shards", "1", "--auth-cache-ttl", "1m"]);
    let _a = SseClient::open_ready_with(server.public, "/sse?rooms=news", &[("Cookie", "session=alice")]);
    let _b = SseClient::open_ready_with(server.public, "/sse?rooms=news", &[("Cookie", "session=alice")]);
    SseClient::connect(server.public, "/sse", &[("Cookie", "session=nobody")]).assert_error(401, "unauthorized");
    SseClient::connect(server.public, "/sse", &[("Cookie", "session=nobody")]).assert_error(401, "unauthorized");
    assert_eq!(app.requests().len(), 2, "one request per distinct session, refusals included");
    // Anything forwarded that differs is asked again.
    let _c = SseClient::open_ready_with(server.public, "/sse", &[("Cookie", "session=alice")]);
    assert_eq!(app.requests().len(), 3);
    // Outages are not remembered.
    SseClient::connect(server.public, "/sse", &[("Cookie", "session=maintenance")])
        .assert_error(503, "auth_unavailable");
    SseClient::connect(server.public, "/sse", &[("Cookie", "session=maintenance")])
        .assert_error(503, "auth_unavailable");
    assert_eq!(app.requests().len(), 5);
}

#[test]
fn webhook_needs_an_http_url() {
    for (args, message) in [
        (&["--auth", "webhook"][..], "--auth-url: --auth webhook needs the application's URL"),
        (&["--auth", "webhook", "--auth-url", "https://app.example/auth"][..], "must start with http://"),
    ] {
        let error = Server::try_start(args).err().expect("must not start");
        assert!(error.contains(message), "{args:?}: {error}");
    }
}
