//! End-to-end test harness: spawns the real `ssekify` binary on `127.0.0.1:0`
//! and talks to it over plain `std::net` sockets.
//!
//! Parts:
//! - [`Server`]: start the binary, wait for its `ssekify listening` line (ports,
//!   shards, driver; with `--redis` the bus may still be down), keep its logs,
//!   kill it on drop.
//! - [`http`], [`raw_exchange`], [`parse_responses`], [`HttpConn`]: a tiny HTTP/1.1
//!   client (one request per connection, raw bytes, or keep-alive).
//! - [`SseClient`] and [`SseParser`]: an EventSource client that parses the stream
//!   by the WHATWG HTML "event stream interpretation" rules.
//! - helpers: [`wait_until`], [`drivers`], publish/stats wrappers, [`pct`].
//!
//! Every network operation has a timeout, so a misbehaving server fails a test
//! instead of hanging it.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Upper bound for one request/response exchange.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for the server to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------

/// A running `ssekify` child process; killed (SIGKILL) and reaped on drop.
pub struct Server {
    child: Child,
    /// Public listener (`/sse`).
    pub public: SocketAddr,
    /// Api listener (`/v1/...`).
    pub api: SocketAddr,
    /// Number of shards the server reported.
    pub shards: usize,
    /// `uring` or `epoll`, as the server reported.
    pub driver: String,
    logs: Arc<Mutex<String>>,
    exit: Option<ExitStatus>,
}

/// Drivers the "on both drivers" tests run on: `SSEKIFY_TEST_DRIVERS`
/// (comma list) or `uring,epoll`.
pub fn drivers() -> Vec<&'static str> {
    match std::env::var("SSEKIFY_TEST_DRIVERS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| &*Box::leak(d.to_string().into_boxed_str()))
            .collect(),
        _ => vec!["uring", "epoll"],
    }
}

fn has_flag(args: &[&str], flag: &str) -> bool {
    let prefix = format!("{flag}=");
    args.iter().any(|a| *a == flag || a.starts_with(&prefix))
}

fn drain_into<R: Read + Send + 'static>(mut pipe: R, logs: Arc<Mutex<String>>) {
    thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => logs.lock().unwrap().push_str(&String::from_utf8_lossy(&chunk[..n])),
            }
        }
    });
}

impl Server {
    /// Starts the server with test defaults (`--listen 127.0.0.1:0 --api-listen
    /// 127.0.0.1:0 --log-level info`, each only when `args` does not give it)
    /// followed by `args`, and waits for its listening line (not for its
    /// `ssekify ready` line, which with `--redis` waits for the bus: bus tests
    /// start instances whose Redis is down on purpose).
    pub fn start(args: &[&str]) -> Server {
        Self::try_start(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Server::start`] with `--io-driver <driver>` added.
    pub fn start_with_driver(driver: &str, args: &[&str]) -> Server {
        let mut all = vec!["--io-driver", driver];
        all.extend_from_slice(args);
        let server = Self::start(&all);
        assert_eq!(
            server.driver, driver,
            "asked for --io-driver {driver}, the listening line says driver={}",
            server.driver
        );
        server
    }

    /// Starts the server; `Err` carries the reason and the captured output.
    pub fn try_start(args: &[&str]) -> Result<Server, String> {
        Self::launch(args, None, &[])
    }

    /// Like [`Server::start`] with `env` added to the process's environment
    /// (the flags' `SSEKIFY_*` variables).
    pub fn start_with_env(env: &[(&str, &str)], args: &[&str]) -> Server {
        Self::launch(args, None, env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the server with its open-file limit (soft and hard) set to
    /// `open_files`, as a small container or systemd unit would.
    pub fn start_with_open_files(open_files: u64, args: &[&str]) -> Server {
        Self::launch(args, Some(open_files), &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn launch(args: &[&str], open_files: Option<u64>, env: &[(&str, &str)]) -> Result<Server, String> {
        let mut argv: Vec<String> = Vec::new();
        for (flag, value) in [("--listen", "127.0.0.1:0"), ("--api-listen", "127.0.0.1:0"), ("--log-level", "info")] {
            if !has_flag(args, flag) {
                argv.push(flag.into());
                argv.push(value.into());
            }
        }
        argv.extend(args.iter().map(|a| a.to_string()));
        let mut command = Command::new(env!("CARGO_BIN_EXE_ssekify"));
        command.args(&argv).env_remove("RUST_LOG").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command.envs(env.iter().copied());
        if let Some(limit) = open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe, as pre_exec requires.
            unsafe {
                command.pre_exec(move || {
                    let rlimit = libc::rlimit { rlim_cur: limit, rlim_max: limit };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command.spawn().map_err(|e| format!("cannot spawn ssekify: {e}"))?;
        let logs = Arc::new(Mutex::new(String::new()));
        drain_into(child.stderr.take().unwrap(), logs.clone());
        drain_into(child.stdout.take().unwrap(), logs.clone());

        let deadline = Instant::now() + START_TIMEOUT;
        let line = loop {
            // Only a whole line (newline seen) counts.
            let listening = logs
                .lock()
                .unwrap()
                .split_inclusive('\n')
                .find(|l| l.contains("ssekify listening") && l.ends_with('\n'))
                .map(|l| l.trim_end().to_string());
            if let Some(line) = listening {
                break line;
            }
            if let Ok(Some(status)) = child.try_wait() {
                thread::sleep(Duration::from_millis(50));
                return Err(format!(
                    "ssekify {argv:?} exited with {status} before it listened; output:\n{}",
                    logs.lock().unwrap()
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "ssekify {argv:?} printed no `ssekify listening` line within {START_TIMEOUT:?}; output:\n{}",
                    logs.lock().unwrap()
                ));
            }
            thread::sleep(Duration::from_millis(10));
        };
        // The line is text (`key=value`) or, with --log-format json, an object.
        let json: Option<serde_json::Value> = serde_json::from_str(&line).ok();
        let field = |key: &str| -> Option<String> {
            if let Some(object) = &json {
                return object.get(key).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned));
            }
            let prefix = format!("{key}=");
            line.split_whitespace()
                .find_map(|tok| tok.strip_prefix(prefix.as_str()))
                .map(|v| v.trim_matches(|c| c == '"' || c == ',').to_string())
        };
        let parse_addr = |key: &str| -> Result<SocketAddr, String> {
            field(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("listening line has no valid `{key}=` address: {line}"))
        };
        let public = parse_addr("public")?;
        let api = parse_addr("api")?;
        let shards = field("shards")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("listening line has no `shards=N`: {line}"))?;
        let driver = field("driver").ok_or_else(|| format!("listening line has no `driver=`: {line}"))?;
        Ok(Server { child, public, api, shards, driver, logs, exit: None })
    }

    /// Everything the process wrote to stderr/stdout so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`) with the `kill` command.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").args(["-s", name, &self.pid().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -s {name} {} failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
                return self.exit;
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident set size of the server process in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS line")
    }

    /// `GET /v1/stats` on this server.
    pub fn stats(&self) -> serde_json::Value {
        stats(self.api)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------

/// One parsed HTTP response.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked when the response was chunked).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// Body parsed as JSON; panics with the body text when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response {} body is not JSON ({e}): {:?}", self.status, self.text()))
    }

    /// Body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the JSON error shape `{"error": code, "message": "..."}`.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "expected {status} {code}, got {} {:?}", self.status, self.text());
        let body = self.json();
        assert_eq!(body["error"], code, "error code in {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error body needs a non-empty message: {body}"
        );
    }
}

/// Connects with a timeout and sets 10 s read/write timeouts and `TCP_NODELAY`.
pub fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses a response head (`HTTP/1.1 200 OK\r\n...\r\n\r\n`).
fn parse_head(head: &[u8]) -> (u16, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    assert!(version.starts_with("HTTP/1."), "not an HTTP/1.x status line: {status_line:?}");
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap_or_else(|| panic!("bad header line {l:?}"));
            (n.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    (status, headers)
}

/// Result of trying to parse one response from the front of a buffer.
enum Parsed {
    /// A whole response and the bytes it used.
    Done(HttpResponse, usize),
    /// More bytes are needed.
    Partial,
}

fn try_parse_response(buf: &[u8], head_only_body: bool, eof: bool) -> Parsed {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Parsed::Partial;
    };
    let (status, headers) = parse_head(&buf[..end]);
    let mut resp = HttpResponse { status, headers, body: Vec::new() };
    let body_start = end + 4;
    if head_only_body || status == 204 || status == 304 || (100..200).contains(&status) {
        return Parsed::Done(resp, body_start);
    }
    let chunked = resp.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut pos = body_start;
        loop {
            let Some(line_end) = find(&buf[pos..], b"\r\n") else {
                return Parsed::Partial;
            };
            let size_text = String::from_utf8_lossy(&buf[pos..pos + line_end]);
            let size_text = size_text.split(';').next().unwrap().trim().to_string();
            let size = usize::from_str_radix(&size_text, 16).unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
            pos += line_end + 2;
            if size == 0 {
                // Trailers end with an empty line.
                let Some(t) = find(&buf[pos..], b"\r\n") else {
                    return Parsed::Partial;
                };
                if t == 0 {
                    return Parsed::Done(resp, pos + 2);
                }
                let Some(t_end) = find(&buf[pos..], b"\r\n\r\n") else {
                    return Parsed::Partial;
                };
                return Parsed::Done(resp, pos + t_end + 4);
            }
            if buf.len() < pos + size + 2 {
                return Parsed::Partial;
            }
            resp.body.extend_from_slice(&buf[pos..pos + size]);
            pos += size + 2;
        }
    }
    if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().unwrap_or_else(|_| panic!("bad content-length {len:?}"));
        if buf.len() < body_start + len {
            return Parsed::Partial;
        }
        resp.body = buf[body_start..body_start + len].to_vec();
        return Parsed::Done(resp, body_start + len);
    }
    // No framing: the body runs to EOF.
    if eof {
        resp.body = buf[body_start..].to_vec();
        Parsed::Done(resp, buf.len())
    } else {
        Parsed::Partial
    }
}

/// Parses every complete response in `bytes` (for pipelining tests). Trailing
/// incomplete data is ignored; a response without length runs to the end.
pub fn parse_responses(bytes: &[u8]) -> Vec<HttpResponse> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        match try_parse_response(&bytes[pos..], false, true) {
            Parsed::Done(resp, used) => {
                out.push(resp);
                pos += used;
            }
            Parsed::Partial => break,
        }
    }
    out
}

/// Builds a request with `Host`, optional `Content-Length` and the given headers.
pub fn build_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !has("content-length") && !has("transfer-encoding") && (!body.is_empty() || method == "POST" || method == "PUT")
    {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if close && !has("connection") {
        req.push_str("Connection: close\r\n");
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// One request on a fresh connection (`Connection: close`), response read with
/// a 10 s timeout.
pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    let mut conn = HttpConn::open(addr);
    let req = build_request(addr, method, path, headers, body, true);
    conn.send_raw(&req);
    conn.read_response_for(method).unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// Writes `bytes`, then reads until EOF (10 s timeout; what arrived by then is returned).
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    raw_exchange_closed(addr, bytes).0
}

/// Like [`raw_exchange`], also telling whether the server closed the connection
/// (EOF or reset) within the 10 s timeout.
pub fn raw_exchange_closed(addr: SocketAddr, bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut stream = tcp_connect(addr);
    // A server that answers early and closes may reset a long write; keep what was read.
    let _ = stream.write_all(bytes);
    read_to_eof(&mut stream, IO_TIMEOUT)
}

/// Reads until EOF or `timeout`; returns the bytes and whether EOF (or a reset) was seen.
pub fn read_to_eof(stream: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, false);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return (out, false),
            Err(_) => return (out, true), // reset counts as closed
        }
    }
}

/// A keep-alive HTTP/1.1 connection (for pipelining and many publishes).
pub struct HttpConn {
    /// The socket.
    pub stream: TcpStream,
    addr: SocketAddr,
    buf: Vec<u8>,
    eof: bool,
}

impl HttpConn {
    /// Connects with 10 s read/write timeouts.
    pub fn open(addr: SocketAddr) -> HttpConn {
        HttpConn { stream: tcp_connect(addr), addr, buf: Vec::new(), eof: false }
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write request");
    }

    /// Sends one keep-alive request and reads its response.
    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
        let req = build_request(self.addr, method, path, headers, body, false);
        self.send_raw(&req);
        self.read_response_for(method).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Reads one response (a `HEAD` response has no body).
    pub fn read_response_for(&mut self, method: &str) -> Result<HttpResponse, String> {
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match try_parse_response(&self.buf, method == "HEAD", self.eof) {
                Parsed::Done(resp, used) => {
                    self.buf.drain(..used);
                    return Ok(resp);
                }
                Parsed::Partial if self.eof => {
                    return Err(format!(
                        "connection closed before a whole response; got {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ))
                }
                Parsed::Partial => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no whole response within {IO_TIMEOUT:?}; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => {
                    if self.buf.is_empty() {
                        return Err(format!("read failed: {e}"));
                    }
                    self.eof = true;
                }
            }
        }
    }

    /// Reads one response (not to a `HEAD`).
    pub fn read_response(&mut self) -> Result<HttpResponse, String> {
        self.read_response_for("GET")
    }

    /// True when the server closes the connection within `timeout` (buffered
    /// leftovers are ignored).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        self.eof || read_to_eof(&mut self.stream, timeout).1
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn pct(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn with_query(path: String, query: &str) -> String {
    let query = query.trim_start_matches('?');
    if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    }
}

/// `POST /v1/users/{user}/events?{query}` with `body` as text.
pub fn publish_user(api: SocketAddr, user: &str, body: &str, query: &str) -> HttpResponse {
    let path = with_query(format!("/v1/users/{}/events", pct(user)), query);
    http(api, "POST", &path, &[], body.as_bytes())
}

/// `POST /v1/rooms/{room}/events?{query}` with `body` as text.
pub fn publish_room(api: SocketAddr, room: &str, body: &str, query: &str) -> HttpResponse {
    let path = with_query(format!("/v1/rooms/{}/events", pct(room)), query);
    http(api, "POST", &path, &[], body.as_bytes())
}

/// `POST /v1/broadcast?{query}` with `body` as text.
pub fn broadcast(api: SocketAddr, body: &str, query: &str) -> HttpResponse {
    let path = with_query("/v1/broadcast".to_string(), query);
    http(api, "POST", &path, &[], body.as_bytes())
}

/// `POST /v1/publish` with `{"messages": messages}` as JSON (one fresh connection).
pub fn publish_batch(api: SocketAddr, messages: &serde_json::Value) -> HttpResponse {
    let body = serde_json::json!({ "messages": messages }).to_string();
    http(api, "POST", "/v1/publish", &[("Content-Type", "application/json")], body.as_bytes())
}

/// `DELETE /v1/users/{user}/connections`: closes every stream of `user`.
pub fn close_user(api: SocketAddr, user: &str) -> HttpResponse {
    http(api, "DELETE", &format!("/v1/users/{}/connections", pct(user)), &[], b"")
}

/// `DELETE /v1/users/{user}/recent`: drops `user`'s replay ring.
pub fn clear_recent_user(api: SocketAddr, user: &str) -> HttpResponse {
    http(api, "DELETE", &format!("/v1/users/{}/recent", pct(user)), &[], b"")
}

/// `DELETE /v1/recent`: drops every replay ring.
pub fn clear_recent_all(api: SocketAddr) -> HttpResponse {
    http(api, "DELETE", "/v1/recent", &[], b"")
}

/// Like the publish wrappers, asserting `200` and returning the JSON answer.
pub fn ok_json(resp: HttpResponse) -> serde_json::Value {
    assert_eq!(resp.status, 200, "expected 200, got {resp:?} {:?}", resp.text());
    resp.json()
}

/// The `delivered` count of a publish answer (asserting 200).
pub fn delivered(resp: HttpResponse) -> u64 {
    ok_json(resp)["delivered"].as_u64().expect("delivered count")
}

/// `GET /v1/stats` (asserting 200).
pub fn stats(api: SocketAddr) -> serde_json::Value {
    let resp = http(api, "GET", "/v1/stats", &[], b"");
    assert_eq!(resp.status, 200, "stats: {:?}", resp.text());
    resp.json()
}

/// Integer field of a stats object (panics when missing).
pub fn stat(stats: &serde_json::Value, key: &str) -> u64 {
    stats[key].as_u64().unwrap_or_else(|| panic!("stats has no integer `{key}`: {stats}"))
}

/// Waits until the server reports `n` connections.
pub fn wait_connections(api: SocketAddr, n: u64) {
    let mut last = serde_json::Value::Null;
    let ok = wait_until(Duration::from_secs(10), || {
        last = stats(api);
        last["connections"].as_u64() == Some(n)
    });
    assert!(ok, "expected {n} connections; stats: {last}");
}

// ---------------------------------------------------------------------------
// SSE client
// ---------------------------------------------------------------------------

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// `id:` field of this event's block, if any.
    pub id: Option<String>,
    /// `event:` field, if any (None means the default `message`).
    pub event: Option<String>,
    /// Data lines joined with `\n`.
    pub data: String,
}

/// One item of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SseItem {
    /// A comment line (text after `:`, one leading space stripped).
    Comment(String),
    /// A `retry:` field with a valid number.
    Retry(u64),
    /// A dispatched event.
    Event(SseEvent),
}

/// Incremental parser for `text/event-stream` (WHATWG HTML, "Interpreting an
/// event stream"): lines end in CRLF, CR or LF; `field: value` with one leading
/// space of the value stripped; a blank line dispatches; a block without data
/// lines is not dispatched, but its `id` still updates the last event id.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Bytes of `buf` before this offset are consumed.
    start: usize,
    /// The previous line ended with CR: a following LF belongs to it.
    skip_lf: bool,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    /// WHATWG "last event ID buffer" (persists across events).
    pub last_event_id: String,
    /// Bytes seen so far (total).
    pub bytes_seen: usize,
}

impl SseParser {
    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.bytes_seen += bytes.len();
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet consumed by [`SseParser::next_item`].
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Takes all unconsumed bytes.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        let out = self.buf.split_off(self.start);
        self.buf.clear();
        self.start = 0;
        out
    }

    fn next_line(&mut self) -> Option<String> {
        if self.skip_lf && self.start < self.buf.len() {
            if self.buf[self.start] == b'\n' {
                self.start += 1;
            }
            self.skip_lf = false;
        }
        let rest = &self.buf[self.start..];
        let pos = rest.iter().position(|&b| b == b'\n' || b == b'\r')?;
        let line = String::from_utf8_lossy(&rest[..pos]).into_owned();
        if rest[pos] == b'\r' {
            if pos + 1 < rest.len() {
                let extra = usize::from(rest[pos + 1] == b'\n');
                self.start += pos + 1 + extra;
            } else {
                self.start += pos + 1;
                self.skip_lf = true;
            }
        } else {
            self.start += pos + 1;
        }
        Some(line)
    }

    /// Next complete item from the buffered bytes, if any.
    pub fn next_item(&mut self) -> Option<SseItem> {
        while let Some(line) = self.next_line() {
            if line.is_empty() {
                let id = self.id.take();
                let event = self.event.take();
                if let Some(data) = self.data.take() {
                    return Some(SseItem::Event(SseEvent { id, event, data }));
                }
                continue;
            }
            let (field, value) = match line.find(':') {
                Some(0) => {
                    let text = &line[1..];
                    return Some(SseItem::Comment(text.strip_prefix(' ').unwrap_or(text).to_string()));
                }
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(' ').unwrap_or(v))
                }
                None => (line.as_str(), ""),
            };
            match field {
                "data" => match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => self.data = Some(value.to_string()),
                },
                "event" => self.event = Some(value.to_string()),
                "id" if !value.contains('\0') => {
                    self.id = Some(value.to_string());
                    self.last_event_id = value.to_string();
                }
                "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                    if let Ok(ms) = value.parse() {
                        return Some(SseItem::Retry(ms));
                    }
                }
                _ => {}
            }
        }
        None
    }
}

/// A subscriber connection (`GET /sse`).
pub struct SseClient {
    /// The socket.
    pub stream: TcpStream,
    /// Response status.
    pub status: u16,
    /// Response headers (names lower-cased).
    pub headers: Vec<(String, String)>,
    /// Parser state and unconsumed bytes.
    pub parser: SseParser,
    error_body: Vec<u8>,
    eof: bool,
}

impl SseClient {
    /// Opens `GET {path_and_query}` (adding `Accept: text/event-stream` unless
    /// `headers` has an Accept) and reads the response head. For non-200
    /// answers the body is read too ([`SseClient::error_body`]).
    pub fn connect(addr: SocketAddr, path_and_query: &str, headers: &[(&str, &str)]) -> SseClient {
        Self::try_connect(addr, path_and_query, headers)
            .unwrap_or_else(|e| panic!("GET {path_and_query} on {addr}: {e}"))
    }

    /// Like [`SseClient::connect`], returning errors instead of panicking.
    pub fn try_connect(addr: SocketAddr, path_and_query: &str, headers: &[(&str, &str)]) -> Result<SseClient, String> {
        let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut req = format!("GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\n");
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("accept")) {
            req.push_str("Accept: text/event-stream\r\n");
        }
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).map_err(|e| format!("write: {e}"))?;

        let deadline = Instant::now() + IO_TIMEOUT;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        let mut eof = false;
        let end = loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                break end;
            }
            if eof {
                return Err(format!("closed before a whole response head: {:?}", String::from_utf8_lossy(&buf)));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no response head within {IO_TIMEOUT:?}: {:?}", String::from_utf8_lossy(&buf)));
            }
            stream.set_read_timeout(Some(left)).unwrap();
            match stream.read(&mut chunk) {
                Ok(0) => eof = true,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if buf.is_empty() => return Err(format!("read: {e}")),
                Err(_) => eof = true,
            }
        };
        let (status, headers) = parse_head(&buf[..end]);
        let rest = buf[end + 4..].to_vec();
        let mut client =
            SseClient { stream, status, headers, parser: SseParser::default(), error_body: Vec::new(), eof };
        if status == 200 {
            client.parser.push(&rest);
        } else {
            // Read the (Content-Length framed) error body.
            let len = client.header("content-length").and_then(|v| v.parse::<usize>().ok());
            let mut body = rest;
            while !matches!(len, Some(l) if body.len() >= l) && !client.eof {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                client.stream.set_read_timeout(Some(left)).unwrap();
                match client.stream.read(&mut chunk) {
                    Ok(0) => client.eof = true,
                    Ok(n) => body.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            if let Some(l) = len {
                body.truncate(l);
            }
            client.error_body = body;
        }
        Ok(client)
    }

    /// Opens a stream and reads only the response head; the caller then never
    /// reads (a slow subscriber). Panics unless the answer is 200.
    pub fn connect_unread(addr: SocketAddr, path_and_query: &str, headers: &[(&str, &str)]) -> SseClient {
        let client = Self::connect(addr, path_and_query, headers);
        assert_eq!(client.status, 200, "subscribe: {:?}", client.error_text());
        client
    }

    /// Connects and asserts `200`.
    pub fn open(addr: SocketAddr, path_and_query: &str) -> SseClient {
        let client = Self::connect(addr, path_and_query, &[]);
        assert_eq!(client.status, 200, "GET {path_and_query}: {} {:?}", client.status, client.error_text());
        client
    }

    /// Connects, asserts `200` and consumes the initial `retry:` field.
    pub fn open_ready(addr: SocketAddr, path_and_query: &str) -> SseClient {
        Self::open_ready_with(addr, path_and_query, &[])
    }

    /// [`SseClient::open_ready`] with request headers (credentials, cookies).
    pub fn open_ready_with(addr: SocketAddr, path_and_query: &str, headers: &[(&str, &str)]) -> SseClient {
        let mut client = Self::connect(addr, path_and_query, headers);
        assert_eq!(client.status, 200, "GET {path_and_query}: {} {:?}", client.status, client.error_text());
        match client.next_item(IO_TIMEOUT) {
            Some(SseItem::Retry(_)) => {}
            other => panic!("expected a retry: field first, got {other:?}"),
        }
        client
    }

    /// Resumes: opens `path_and_query` with `Last-Event-ID: last_id`, asserts
    /// `200` and consumes the initial `retry:` field.
    pub fn resume(addr: SocketAddr, path_and_query: &str, last_id: &str) -> SseClient {
        let mut client = Self::connect(addr, path_and_query, &[("Last-Event-ID", last_id)]);
        assert_eq!(client.status, 200, "resume {path_and_query} after {last_id:?}: {:?}", client.error_text());
        match client.next_item(IO_TIMEOUT) {
            Some(SseItem::Retry(_)) => {}
            other => panic!("expected a retry: field first, got {other:?}"),
        }
        client
    }

    /// First value of a response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// Body of a non-200 answer.
    pub fn error_body(&self) -> &[u8] {
        &self.error_body
    }

    /// Body of a non-200 answer as text.
    pub fn error_text(&self) -> String {
        String::from_utf8_lossy(&self.error_body).into_owned()
    }

    /// Body of a non-200 answer as JSON.
    pub fn error_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.error_body)
            .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {:?}", self.error_text()))
    }

    /// Asserts a JSON error answer with `status` and `code`.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "expected {status} {code}, got {} {:?}", self.status, self.error_text());
        assert_eq!(self.error_json()["error"], code, "{:?}", self.error_text());
    }

    /// One read into the parser, waiting at most `timeout`; false on timeout/EOF.
    fn fill(&mut self, timeout: Duration) -> bool {
        if self.eof || timeout.is_zero() {
            return false;
        }
        let mut chunk = [0u8; 64 * 1024];
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return false;
                }
                Ok(n) => {
                    self.parser.push(&chunk[..n]);
                    return true;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return false,
                Err(_) => {
                    self.eof = true;
                    return false;
                }
            }
        }
    }

    /// Next comment, retry or event within `timeout`.
    pub fn next_item(&mut self, timeout: Duration) -> Option<SseItem> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(item) = self.parser.next_item() {
                return Some(item);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.eof {
                return None;
            }
            self.fill(left);
        }
    }

    /// Next event (comments and retry skipped) within `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_item(left)? {
                SseItem::Event(e) => return Some(e),
                _ => continue,
            }
        }
    }

    /// Next event, panicking with `what` when none arrives within 10 s.
    pub fn expect_event(&mut self, what: &str) -> SseEvent {
        self.next_event(IO_TIMEOUT).unwrap_or_else(|| panic!("no event ({what}) within {IO_TIMEOUT:?}"))
    }

    /// Asserts no event arrives within `timeout` (comments are allowed).
    pub fn expect_no_event(&mut self, timeout: Duration) {
        if let Some(e) = self.next_event(timeout) {
            panic!("unexpected event {e:?}");
        }
    }

    /// Reads (and discards) until EOF; true when EOF or a reset came within `timeout`.
    pub fn expect_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.eof {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.fill(left);
        }
        true
    }

    /// True once EOF was seen.
    pub fn is_eof(&self) -> bool {
        self.eof
    }

    /// Every unconsumed byte plus whatever arrives within `timeout` (waits the whole timeout).
    pub fn raw_read(&mut self, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.eof {
                break;
            }
            self.fill(left);
        }
        self.parser.take_buffered()
    }

    /// Exactly `n` unconsumed bytes (fewer on timeout or EOF).
    pub fn read_bytes(&mut self, n: usize, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        while self.parser.buffered().len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.eof {
                break;
            }
            self.fill(left);
        }
        let take = n.min(self.parser.buffered().len());
        let mut all = self.parser.take_buffered();
        let rest = all.split_off(take);
        self.parser.push(&rest);
        self.parser.bytes_seen -= rest.len();
        all
    }

    /// Switches the socket to non-blocking mode (for [`SseClient::read_available`]).
    pub fn set_nonblocking(&mut self) {
        self.stream.set_nonblocking(true).unwrap();
    }

    /// Non-blocking: reads whatever is available into the parser. Returns the
    /// number of bytes read; 0 when nothing was ready; `None` on EOF/reset.
    pub fn read_available(&mut self) -> Option<usize> {
        if self.eof {
            return None;
        }
        let mut chunk = [0u8; 16 * 1024];
        let mut total = 0;
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return if total > 0 { Some(total) } else { None };
                }
                Ok(n) => {
                    self.parser.push(&chunk[..n]);
                    total += n;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Some(total),
                Err(_) => {
                    self.eof = true;
                    return if total > 0 { Some(total) } else { None };
                }
            }
        }
    }
}

/// Path-and-query for a subscription: `/sse?userId=..&rooms=..` (either may be empty).
pub fn sse_path(user: &str, rooms: &[&str]) -> String {
    let mut q = Vec::new();
    if !user.is_empty() {
        q.push(format!("userId={}", pct(user)));
    }
    if !rooms.is_empty() {
        let list: Vec<String> = rooms.iter().map(|r| pct(r)).collect();
        q.push(format!("rooms={}", list.join(",")));
    }
    if q.is_empty() {
        "/sse".to_string()
    } else {
        format!("/sse?{}", q.join("&"))
    }
}

/// Checks the generated-id shape `^[0-9]{13}-[0-9a-f]{8}-[0-9a-f]{8}$`.
pub fn is_generated_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('-').collect();
    parts.len() == 3
        && parts[0].len() == 13
        && parts[0].bytes().all(|b| b.is_ascii_digit())
        && parts[1..]
            .iter()
            .all(|p| p.len() == 8 && p.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}
