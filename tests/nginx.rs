//! A real nginx in front of the real binary, configured with the shipped
//! `deploy/nginx/ssekify.conf` and `deploy/nginx/ssekify-locations.conf`.
//! The files are changed only where they name ports and paths: the upstream
//! address, the `listen` ports (on loopback) and the certificate paths (a test
//! CA's). Everything else, TLS and HTTP/2 listeners included, is as shipped.
//!
//! nginx runs unprivileged-friendly: in the foreground (`daemon off`, one
//! process), with its own prefix, temp directories, pid file and access log
//! in a temporary directory, and `-e stderr`. Its `http {}` level turns on
//! what a distribution or an operator may have there (gzip for
//! `text/event-stream`, proxy buffering), which the shipped server-level
//! settings must override for streams.
//!
//! Checked through the proxy, over TLS: events arrive unbuffered and
//! uncompressed (a publish reaches the subscriber while no other byte is on
//! its way), the tenant route `/t/{tenant}/sse`, heartbeats, a reconnect with
//! `Last-Event-ID` that replays what was missed, the probes, the `--demo` page,
//! `/readyz` turning 503 on stop-accepting, no api route, and the plain-HTTP
//! redirect.
//!
//! nginx is Debian's `nginx` package (scripts/test.sh installs it when it is
//! missing and runs as root). Without it every test prints why and passes,
//! unless `SSEKIFY_REQUIRE_NGINX=1` (set by scripts/test.sh under CI).

mod common;
#[path = "support_redis/mod.rs"]
mod support_redis;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use support_redis::{free_port, temp_dir, TestPki};

/// How long nginx may take to listen.
const NGINX_START: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------

/// `nginx` on PATH, else Debian's `/usr/sbin/nginx` (not on a user's PATH).
fn nginx_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("nginx")).find(|p| p.is_file()));
    on_path.or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
}

/// The nginx binary, or `None` (test skipped) when it is missing; panics
/// instead when `SSEKIFY_REQUIRE_NGINX=1`.
fn require_nginx() -> Option<PathBuf> {
    if let Some(binary) = nginx_binary() {
        return Some(binary);
    }
    if std::env::var("SSEKIFY_REQUIRE_NGINX").is_ok_and(|v| v.trim() == "1") {
        panic!("nginx not found and SSEKIFY_REQUIRE_NGINX=1");
    }
    eprintln!("skipping: nginx not installed (set SSEKIFY_REQUIRE_NGINX=1 to make this a failure)");
    None
}

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

/// Replaces the one occurrence of `from`; a shipped file that no longer has
/// exactly one fails the test (the templating would silently miss it).
fn replace_once(text: &str, from: &str, to: &str) -> String {
    let count = text.matches(from).count();
    assert_eq!(count, 1, "deploy/nginx/ssekify.conf should contain `{from}` exactly once, found {count}");
    text.replacen(from, to, 1)
}

/// True when this machine has IPv6 loopback (then the shipped `[::]` listeners
/// become `[::1]` ones; without it they are dropped).
fn ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// A running nginx; killed on drop (one process: `master_process off`).
struct Nginx {
    child: Child,
    /// The TLS (HTTP/2-capable) server of the shipped config.
    tls: SocketAddr,
    /// The plain-HTTP server (redirects to https).
    plain: SocketAddr,
    /// The test CA that signed nginx's certificate (for 127.0.0.1 and localhost).
    pki: TestPki,
    logs: Arc<Mutex<String>>,
    dir: PathBuf,
}

impl Nginx {
    /// nginx with the shipped config in front of `upstream` (a public listener).
    fn start(binary: &Path, upstream: SocketAddr) -> Nginx {
        let dir = temp_dir("nginx");
        let pki = TestPki::generate("nginx");
        let (tls_port, plain_port) = (free_port(), free_port());
        let v6 = ipv6_loopback();

        let mut site = repo_file("deploy/nginx/ssekify.conf");
        site = replace_once(&site, "server 127.0.0.1:8080 max_fails=0;", &format!("server {upstream} max_fails=0;"));
        site = replace_once(&site, "listen 80;", &format!("listen 127.0.0.1:{plain_port};"));
        site = replace_once(
            &site,
            "listen [::]:80;",
            &if v6 { format!("listen [::1]:{plain_port};") } else { String::new() },
        );
        site = replace_once(&site, "listen 443 ssl http2;", &format!("listen 127.0.0.1:{tls_port} ssl http2;"));
        site = replace_once(
            &site,
            "listen [::]:443 ssl http2;",
            &if v6 { format!("listen [::1]:{tls_port} ssl http2;") } else { String::new() },
        );
        site = replace_once(&site, "/etc/ssl/certs/sse.example.com.pem", TestPki::arg(&pki.server_cert));
        site = replace_once(&site, "/etc/ssl/private/sse.example.com.key", TestPki::arg(&pki.server_key));
        fs::write(dir.join("ssekify.conf"), site).unwrap();
        // The shipped include is relative to the configuration's directory.
        fs::create_dir_all(dir.join("snippets")).unwrap();
        fs::write(dir.join("snippets/ssekify-locations.conf"), repo_file("deploy/nginx/ssekify-locations.conf"))
            .unwrap();

        let d = dir.display();
        let main = format!(
            "daemon off;\n\
             master_process off;\n\
             worker_processes 1;\n\
             pid {d}/nginx.pid;\n\
             error_log stderr notice;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n\
             \x20   access_log {d}/access.log;\n\
             \x20   client_body_temp_path {d}/client_body;\n\
             \x20   proxy_temp_path {d}/proxy;\n\
             \x20   fastcgi_temp_path {d}/fastcgi;\n\
             \x20   uwsgi_temp_path {d}/uwsgi;\n\
             \x20   scgi_temp_path {d}/scgi;\n\
             \x20   # What an http {{}} level may have; the shipped server level must override it for streams.\n\
             \x20   gzip on;\n\
             \x20   gzip_types text/event-stream;\n\
             \x20   gzip_min_length 1;\n\
             \x20   proxy_buffering on;\n\
             \x20   include ssekify.conf;\n\
             }}\n"
        );
        let conf = dir.join("nginx.conf");
        fs::write(&conf, main).unwrap();

        let mut child = Command::new(binary)
            .arg("-p")
            .arg(format!("{d}/"))
            .arg("-c")
            .arg(&conf)
            .args(["-e", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let logs = Arc::new(Mutex::new(String::new()));
        for pipe in
            [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())]
        {
            let logs = logs.clone();
            thread::spawn(move || {
                let mut pipe = pipe;
                let mut chunk = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    logs.lock().unwrap().push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            });
        }
        let tls: SocketAddr = ([127, 0, 0, 1], tls_port).into();
        let plain: SocketAddr = ([127, 0, 0, 1], plain_port).into();
        let deadline = Instant::now() + NGINX_START;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                thread::sleep(Duration::from_millis(50));
                panic!("nginx exited with {status}; output:\n{}", logs.lock().unwrap());
            }
            let up = |addr| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
            if up(tls) && up(plain) {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("nginx did not listen within {NGINX_START:?}; output:\n{}", logs.lock().unwrap());
            }
            thread::sleep(Duration::from_millis(20));
        }
        Nginx { child, tls, plain, pki, logs, dir }
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("nginx output:\n{}", self.logs());
            eprintln!("nginx files kept in {}", self.dir.display());
        }
    }
}

// ---------------------------------------------------------------------------
// An HTTPS client for one request (and, for streams, the SSE body)
// ---------------------------------------------------------------------------

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// One request over TLS to nginx; reads the head, then de-chunks the body
/// (nginx sends a stream to an HTTP/1.1 client chunked) into an SSE parser.
struct Exchange {
    tls: Tls,
    status: u16,
    headers: Vec<(String, String)>,
    raw: Vec<u8>,
    chunked: bool,
    /// Without chunking: the Content-Length bytes still to come (`None`: to EOF).
    length_left: Option<usize>,
    chunk_left: usize,
    chunk_crlf: bool,
    body_done: bool,
    eof: bool,
    parser: SseParser,
}

impl Exchange {
    fn send(nginx: &Nginx, method: &str, path: &str, headers: &[(&str, &str)]) -> Exchange {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&nginx.pki.ca).expect("CA file") {
            roots.add(cert.expect("CA certificate")).expect("add CA");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connection =
            rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap()).unwrap();
        let socket = TcpStream::connect_timeout(&nginx.tls, IO_TIMEOUT).expect("connect to nginx");
        socket.set_nodelay(true).unwrap();
        socket.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut tls = rustls::StreamOwned::new(connection, socket);
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: sse.example.com\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if method == "POST" {
            request.push_str("Content-Length: 0\r\n");
        }
        request.push_str("\r\n");
        tls.write_all(request.as_bytes()).expect("send the request through TLS");
        tls.flush().unwrap();
        let mut exchange = Exchange {
            tls,
            status: 0,
            headers: Vec::new(),
            raw: Vec::new(),
            chunked: false,
            length_left: None,
            chunk_left: 0,
            chunk_crlf: false,
            body_done: false,
            eof: false,
            parser: SseParser::default(),
        };
        let deadline = Instant::now() + IO_TIMEOUT;
        let end = loop {
            if let Some(end) = exchange.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            assert!(!exchange.eof, "nginx closed before a response head: {:?}", String::from_utf8_lossy(&exchange.raw));
            assert!(Instant::now() < deadline, "no response head from nginx within {IO_TIMEOUT:?}");
            exchange.read_some(deadline);
        };
        let head = String::from_utf8_lossy(&exchange.raw[..end]).into_owned();
        exchange.raw.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        exchange.status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
        exchange.headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        exchange.chunked = exchange.header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        if !exchange.chunked {
            exchange.length_left = exchange.header("content-length").and_then(|v| v.parse::<usize>().ok());
            exchange.body_done = exchange.length_left == Some(0);
        }
        exchange.dechunk();
        exchange
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// One read of ciphertext-decoded bytes into `raw`, bounded by `deadline`.
    fn read_some(&mut self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        self.tls.sock.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 16 * 1024];
        match self.tls.read(&mut chunk) {
            Ok(0) => self.eof = true,
            Ok(n) => self.raw.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => self.eof = true,
        }
    }

    /// Moves whole chunk payloads from `raw` into the SSE parser.
    fn dechunk(&mut self) {
        if !self.chunked {
            let n = self.length_left.map_or(self.raw.len(), |left| left.min(self.raw.len()));
            self.parser.push(&self.raw[..n]);
            self.raw.drain(..n);
            if let Some(left) = &mut self.length_left {
                *left -= n;
                self.body_done = *left == 0;
            }
            return;
        }
        while !self.body_done {
            if self.chunk_left > 0 {
                if self.raw.is_empty() {
                    return;
                }
                let n = self.chunk_left.min(self.raw.len());
                self.parser.push(&self.raw[..n]);
                self.raw.drain(..n);
                self.chunk_left -= n;
                self.chunk_crlf = self.chunk_left == 0;
            } else if self.chunk_crlf {
                if self.raw.len() < 2 {
                    return;
                }
                assert_eq!(&self.raw[..2], b"\r\n", "chunk not followed by CRLF");
                self.raw.drain(..2);
                self.chunk_crlf = false;
            } else {
                let Some(end) = self.raw.windows(2).position(|w| w == b"\r\n") else { return };
                let line = String::from_utf8_lossy(&self.raw[..end]).into_owned();
                let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
                self.raw.drain(..end + 2);
                if size == 0 {
                    self.body_done = true;
                } else {
                    self.chunk_left = size;
                }
            }
        }
    }

    /// The next SSE item (comment, retry or event) within `timeout`.
    fn next_item(&mut self, timeout: Duration) -> Option<SseItem> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(item) = self.parser.next_item() {
                return Some(item);
            }
            if self.eof || self.body_done || Instant::now() >= deadline {
                return None;
            }
            self.read_some(deadline);
            self.dechunk();
        }
    }

    /// The next event (comments and retry skipped) within `timeout`.
    fn next_event(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_item(left)? {
                SseItem::Event(event) => return Some(event),
                _ => continue,
            }
        }
    }

    fn expect_event(&mut self, what: &str) -> SseEvent {
        self.next_event(IO_TIMEOUT).unwrap_or_else(|| panic!("no event ({what}) through nginx within {IO_TIMEOUT:?}"))
    }

    /// The whole (small) body as text.
    fn body(mut self) -> String {
        let deadline = Instant::now() + IO_TIMEOUT;
        while !self.body_done && !self.eof && Instant::now() < deadline {
            self.read_some(deadline);
            self.dechunk();
        }
        String::from_utf8_lossy(&self.parser.take_buffered()).into_owned()
    }
}

/// Opens a stream through nginx (asking for gzip, which must not be applied),
/// asserts 200 and an uncompressed event stream, and consumes `retry:`.
fn subscribe(nginx: &Nginx, path: &str, headers: &[(&str, &str)]) -> Exchange {
    let mut all = vec![("Accept", "text/event-stream"), ("Accept-Encoding", "gzip")];
    all.extend_from_slice(headers);
    let mut stream = Exchange::send(nginx, "GET", path, &all);
    assert_eq!(stream.status, 200, "GET {path} through nginx: {:?}", stream.headers);
    assert!(
        stream.header("content-type").is_some_and(|v| v.starts_with("text/event-stream")),
        "content type through nginx: {:?}",
        stream.headers
    );
    assert_eq!(stream.header("content-encoding"), None, "nginx compressed the stream: {:?}", stream.headers);
    match stream.next_item(IO_TIMEOUT) {
        Some(SseItem::Retry(_)) => {}
        other => panic!("expected retry: first through nginx, got {other:?}"),
    }
    stream
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn a_publish_reaches_the_subscriber_through_nginx_unbuffered() {
    let Some(binary) = require_nginx() else { return };
    // No heartbeat for a minute: nothing but the event can push bytes through.
    let server = Server::start(&["--keep-alive", "60s"]);
    let nginx = Nginx::start(&binary, server.public);
    let mut stream = subscribe(&nginx, "/sse?userId=alice&rooms=lobby", &[]);
    wait_connections(server.api, 1);
    for (n, publish) in [
        Box::new(|| publish_user(server.api, "alice", "one small event", "event=notify")) as Box<dyn Fn() -> _>,
        Box::new(|| publish_room(server.api, "lobby", "{\"text\":\"hi room\"}", "")),
    ]
    .iter()
    .enumerate()
    {
        let sent = Instant::now();
        assert_eq!(delivered(publish()), 1);
        let event = stream
            .next_event(Duration::from_secs(2))
            .unwrap_or_else(|| panic!("publish {n} did not come through nginx within 2 s: buffered or compressed?"));
        let took = sent.elapsed();
        assert!(took < Duration::from_secs(1), "publish {n} took {took:?} through nginx");
        if n == 0 {
            assert_eq!(event.event.as_deref(), Some("notify"));
            assert_eq!(event.data, "one small event");
        } else {
            assert_eq!(event.data, "{\"text\":\"hi room\"}");
        }
    }
}

#[test]
fn the_tenant_route_is_proxied() {
    let Some(binary) = require_nginx() else { return };
    let server = Server::start(&["--keep-alive", "60s"]);
    let nginx = Nginx::start(&binary, server.public);
    let mut tenant = subscribe(&nginx, "/t/acme/sse?userId=alice", &[]);
    let mut default = subscribe(&nginx, "/sse?userId=alice", &[]);
    wait_connections(server.api, 2);
    let resp = http(server.api, "POST", "/v1/t/acme/users/alice/events?event=notify", &[], b"for acme's alice");
    assert_eq!(delivered(resp), 1);
    let event = tenant.expect_event("tenant publish");
    assert_eq!(event.data, "for acme's alice");
    assert_eq!(delivered(publish_user(server.api, "alice", "for the default alice", "")), 1);
    assert_eq!(default.expect_event("default publish").data, "for the default alice");
    assert!(tenant.next_event(Duration::from_millis(300)).is_none(), "a default-namespace publish reached a tenant");
}

#[test]
fn heartbeats_pass_through_nginx() {
    let Some(binary) = require_nginx() else { return };
    let server = Server::start(&["--keep-alive", "500ms"]);
    let nginx = Nginx::start(&binary, server.public);
    let mut stream = subscribe(&nginx, "/sse?userId=idle", &[]);
    for n in 0..2 {
        match stream.next_item(Duration::from_secs(3)) {
            Some(SseItem::Comment(text)) => assert_eq!(text, "ping", "heartbeat {n}"),
            other => panic!("expected heartbeat {n} (a `: ping` comment) through nginx, got {other:?}"),
        }
    }
}

#[test]
fn a_reconnect_with_last_event_id_through_nginx_replays_what_was_missed() {
    let Some(binary) = require_nginx() else { return };
    let server = Server::start(&["--keep-alive", "60s"]);
    let nginx = Nginx::start(&binary, server.public);
    let mut stream = subscribe(&nginx, "/sse?userId=bob", &[]);
    wait_connections(server.api, 1);
    assert_eq!(delivered(publish_user(server.api, "bob", "first", "")), 1);
    let first = stream.expect_event("first");
    let last_id = first.id.clone().expect("events carry ids");
    drop(stream);
    wait_connections(server.api, 0);
    for data in ["second", "third"] {
        assert_eq!(delivered(publish_user(server.api, "bob", data, "")), 0);
    }
    let mut resumed = subscribe(&nginx, "/sse?userId=bob", &[("Last-Event-ID", &last_id)]);
    let second = resumed.expect_event("replayed second");
    let third = resumed.expect_event("replayed third");
    assert_eq!((second.data.as_str(), third.data.as_str()), ("second", "third"));
    assert_ne!(second.id.as_deref(), Some(last_id.as_str()));
    // And live again after the replay.
    assert_eq!(delivered(publish_user(server.api, "bob", "fourth", "")), 1);
    assert_eq!(resumed.expect_event("live after replay").data, "fourth");
}

#[test]
fn probes_the_demo_page_and_nothing_else_are_public() {
    let Some(binary) = require_nginx() else { return };
    let server = Server::start(&["--demo"]);
    let nginx = Nginx::start(&binary, server.public);

    let health = Exchange::send(&nginx, "GET", "/healthz", &[]);
    assert_eq!(health.status, 200);
    assert!(health.body().contains("\"ok\""));
    let ready = Exchange::send(&nginx, "GET", "/readyz", &[]);
    assert_eq!(ready.status, 200);
    let page = Exchange::send(&nginx, "GET", "/", &[]);
    assert_eq!(page.status, 200, "the --demo page through nginx");
    assert!(page.header("content-type").is_some_and(|v| v.starts_with("text/html")), "{:?}", page.headers);
    assert!(page.body().contains("EventSource"), "the demo page subscribes with EventSource");

    // The api is not proxied, whatever the method.
    for (method, path) in [("POST", "/v1/broadcast"), ("GET", "/v1/stats"), ("GET", "/metrics"), ("GET", "/sse/x")] {
        let answer = Exchange::send(&nginx, method, path, &[]);
        assert_eq!(answer.status, 404, "{method} {path} through nginx");
    }

    // Plain HTTP redirects to https.
    let answer =
        raw_exchange(nginx.plain, b"GET /sse?userId=a HTTP/1.1\r\nHost: sse.example.com\r\nConnection: close\r\n\r\n");
    let resp = parse_responses(&answer).into_iter().next().expect("an answer on the plain port");
    assert_eq!(resp.status, 301);
    assert_eq!(resp.header("location"), Some("https://sse.example.com/sse?userId=a"));

    // Draining: /readyz and new subscribers get 503 through nginx.
    assert_eq!(http(server.api, "POST", "/v1/admin/stop-accepting", &[], b"").status, 200);
    assert_eq!(Exchange::send(&nginx, "GET", "/readyz", &[]).status, 503);
    let refused = Exchange::send(&nginx, "GET", "/sse?userId=late", &[("Accept", "text/event-stream")]);
    assert_eq!(refused.status, 503);
}
