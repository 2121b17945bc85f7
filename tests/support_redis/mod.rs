//! Real Redis processes for the bus tests: a single server (plain or TLS), a
//! Sentinel set (master, replica, Sentinels) and a 3-master Cluster; and the
//! certificates a TLS server needs ([`TestPki`]).
//!
//! Use it from a test file with
//! ```ignore
//! mod common;
//! #[path = "support_redis/mod.rs"]
//! mod support_redis;
//! ```
//!
//! Everything runs on 127.0.0.1 with ports from [`free_port`] (below the
//! kernel's ephemeral range, so an outgoing connection never takes the port of
//! a stopped server), in its own directory under `std::env::temp_dir()`,
//! removed on drop. Every wait is bounded; a process that does not come up
//! panics with its log.

#![allow(dead_code)]

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::wait_until;

/// How long a Redis process may take to answer PING after spawning.
pub const REDIS_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for one `redis-cli` invocation.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Prerequisites
// ---------------------------------------------------------------------------

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

fn require(program: &str) -> bool {
    if on_path(program) {
        return true;
    }
    if std::env::var("SSEKIFY_REQUIRE_REDIS").is_ok_and(|v| v.trim() == "1") {
        panic!("{program} not found and SSEKIFY_REQUIRE_REDIS=1");
    }
    eprintln!("skipping: {program} not installed (set SSEKIFY_REQUIRE_REDIS=1 to make this a failure)");
    false
}

/// True when `redis-server` (and `redis-cli`) are on PATH. Otherwise panics
/// when `SSEKIFY_REQUIRE_REDIS=1`, else prints why the test is skipped and
/// returns false (the test then returns early).
pub fn require_redis() -> bool {
    require("redis-server") && require("redis-cli")
}

/// Like [`require_redis`], for `redis-sentinel` as well.
pub fn require_sentinel() -> bool {
    require_redis() && require("redis-sentinel")
}

// ---------------------------------------------------------------------------
// Ports and directories
// ---------------------------------------------------------------------------

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn ephemeral_low() -> u16 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(32768)
}

/// A port on 127.0.0.1 that nothing listens on, never handed out twice in
/// this process, chosen at random below the ephemeral range (so the kernel
/// does not give it to an outgoing connection while a test has its server
/// stopped).
pub fn free_port() -> u16 {
    let high = ephemeral_low().saturating_sub(1).max(12000);
    let low = 10000u16;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0) as u64;
    let mut seed = nanos
        ^ ((std::process::id() as u64) << 20)
        ^ COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut guard = HANDED_OUT.lock().unwrap();
    let used = guard.get_or_insert_with(HashSet::new);
    for _ in 0..10_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = low + (seed % u64::from(high - low)) as u16;
        if used.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            used.insert(port);
            return port;
        }
    }
    panic!("no free port found in {low}..{high}");
}

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "ssekify-{tag}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

// ---------------------------------------------------------------------------
// Talking to Redis
// ---------------------------------------------------------------------------

/// Runs `redis-cli -h 127.0.0.1 -p <port> <args…>` (bounded by [`CLI_TIMEOUT`]);
/// `None` when it could not run, timed out or failed.
pub fn cli(port: u16, args: &[&str]) -> Option<String> {
    let mut argv = vec!["-h".to_string(), "127.0.0.1".to_string(), "-p".to_string(), port.to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    run_bounded("redis-cli", &argv, CLI_TIMEOUT)
}

/// Runs a program with a deadline; stdout on success.
fn run_bounded(program: &str, args: &[String], timeout: Duration) -> Option<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    let mut stderr = child.stderr.take()?;
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let out = out.join().unwrap_or_default();
    let _ = err.join();
    match status {
        Some(s) if s.success() => Some(out),
        _ => None,
    }
}

/// Runs a program with a deadline; `(success, stdout + stderr)`.
pub fn run_logged(program: &str, args: &[String], timeout: Duration) -> (bool, String) {
    let child =
        Command::new(program).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let Ok(mut child) = child else { return (false, format!("cannot run {program}")) };
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let ok = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.success(),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
        }
    };
    let mut text = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    text.push_str(&String::from_utf8_lossy(&err.join().unwrap_or_default()));
    (ok, text)
}

/// Sends an inline `PING` over TCP (1 s timeouts) and checks for `+PONG`.
pub fn ping(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got.starts_with(b"+PONG")
}

/// True when a TCP connection to 127.0.0.1:`port` is accepted (1 s timeout).
pub fn accepts(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// Value of `field:` in an `INFO`-style answer.
pub fn info_field(info: &str, field: &str) -> Option<String> {
    let prefix = format!("{field}:");
    info.lines().find_map(|l| l.trim().strip_prefix(prefix.as_str()).map(|v| v.trim().to_string()))
}

// ---------------------------------------------------------------------------
// One Redis process
// ---------------------------------------------------------------------------

/// A `redis-server` (or `redis-sentinel`) child on 127.0.0.1; killed (SIGKILL)
/// and its directory removed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    program: &'static str,
    /// Arguments after the program name (fixed at start, reused by restart).
    args: Vec<String>,
    starts: u32,
    /// For a TLS-only server, the `redis-cli` arguments that reach it (it is
    /// up once its port accepts: PING would need a TLS client).
    tls: Option<Vec<String>>,
}

/// What every test server runs with: loopback only, nothing persisted, its
/// files in `dir`.
fn scratch_args(dir: &Path) -> Vec<String> {
    let dir = dir.to_str().expect("utf-8 temp dir");
    ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir", dir]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

impl RedisServer {
    /// `redis-server --port P --bind 127.0.0.1 --save '' --appendonly no
    /// --protected-mode no --dir <tmp>` plus `extra_args`, on a fresh port;
    /// returns once it answers PING.
    pub fn start(extra_args: &[&str]) -> RedisServer {
        Self::start_on(free_port(), extra_args)
    }

    /// Like [`RedisServer::start`] on a given port.
    pub fn start_on(port: u16, extra_args: &[&str]) -> RedisServer {
        let dir = temp_dir(&format!("redis-{port}"));
        let mut args = vec!["--port".to_string(), port.to_string()];
        args.extend(scratch_args(&dir));
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let mut server = RedisServer { child: None, port, dir, program: "redis-server", args, starts: 0, tls: None };
        server.spawn();
        server
    }

    /// A TLS-only server (`--port 0 --tls-port P`) with `pki`'s server
    /// certificate, trusting `pki`'s CA for client certificates, which it
    /// requires when `require_client_cert` (`--tls-auth-clients yes|no`).
    pub fn start_tls(pki: &TestPki, require_client_cert: bool) -> RedisServer {
        Self::start_tls_on(free_port(), pki, require_client_cert, &[])
    }

    /// Like [`RedisServer::start_tls`] on a given port, plus `extra_args`.
    pub fn start_tls_on(port: u16, pki: &TestPki, require_client_cert: bool, extra_args: &[&str]) -> RedisServer {
        let dir = temp_dir(&format!("redis-tls-{port}"));
        let path = |p: &Path| p.to_str().expect("utf-8 temp dir").to_string();
        let mut args: Vec<String> = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &path(&pki.server_cert),
            "--tls-key-file",
            &path(&pki.server_key),
            "--tls-ca-cert-file",
            &path(&pki.ca),
            "--tls-auth-clients",
            if require_client_cert { "yes" } else { "no" },
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(scratch_args(&dir));
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let mut cli = vec!["--tls".to_string(), "--cacert".to_string(), path(&pki.ca)];
        if require_client_cert {
            cli.extend(["--cert".to_string(), path(&pki.client_cert), "--key".to_string(), path(&pki.client_key)]);
        }
        let mut server =
            RedisServer { child: None, port, dir, program: "redis-server", args, starts: 0, tls: Some(cli) };
        server.spawn();
        server
    }

    /// `redis-sentinel <dir>/sentinel.conf` with `config` written first (the
    /// Sentinel rewrites its file, so it lives in the server's own directory).
    /// With `tls_cli` (the `redis-cli` arguments that reach a TLS-only
    /// Sentinel), up once its port accepts.
    fn start_sentinel(port: u16, tls_cli: Option<Vec<String>>, config: impl FnOnce(&Path) -> String) -> RedisServer {
        let dir = temp_dir(&format!("sentinel-{port}"));
        let file = dir.join("sentinel.conf");
        fs::write(&file, config(&dir)).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        let args = vec![file.to_str().expect("utf-8 temp dir").to_string()];
        let mut server =
            RedisServer { child: None, port, dir, program: "redis-sentinel", args, starts: 0, tls: tls_cli };
        server.spawn();
        server
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}-{}.log", self.program, self.starts))
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} on port {} is already running", self.program, self.port);
        self.starts += 1;
        let log = fs::File::create(self.log_path()).expect("create the redis log file");
        let child = Command::new(self.program)
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", self.program));
        self.child = Some(child);
        let deadline = Instant::now() + REDIS_START_TIMEOUT;
        loop {
            let up = if self.tls.is_some() { accepts(self.port) } else { ping(self.port) };
            if up {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                panic!(
                    "{} {:?} exited with {status} before answering PING; log:\n{}",
                    self.program,
                    self.args,
                    self.logs()
                );
            }
            if Instant::now() >= deadline {
                self.stop();
                panic!(
                    "{} on port {} did not answer PING within {REDIS_START_TIMEOUT:?}; log:\n{}",
                    self.program,
                    self.port,
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        let s = if self.tls.is_some() { "s" } else { "" };
        format!("redis{s}://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Kills the process (SIGKILL: no save, no goodbye to clients beyond the
    /// kernel closing its sockets) and reaps it. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the process with `kill(1)`:
    /// `STOP` freezes Redis with its sockets open, as a hung host does.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = std::process::Command::new("kill").args([&format!("-{signal}"), &pid]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} {pid} failed");
    }

    /// Starts it again on the same port with the same arguments (after
    /// [`RedisServer::stop`]); returns once it answers PING.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        match &self.tls {
            None => cli(self.port, args),
            Some(tls) => {
                let mut all: Vec<&str> = tls.iter().map(String::as_str).collect();
                all.extend_from_slice(args);
                cli(self.port, &all)
            }
        }
    }

    /// Runs a command that answers `OK`; anything else fails the test.
    pub fn ok(&self, args: &[&str]) {
        let answer = self.cli(args);
        assert_eq!(answer.as_deref().map(str::trim), Some("OK"), "redis-cli {args:?}");
    }

    /// Everything the process logged (all runs).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for run in 1..=self.starts {
            let path = self.dir.join(format!("{}-{run}.log", self.program));
            if let Ok(text) = fs::read_to_string(&path) {
                out.push_str(&format!("--- {} (run {run}) ---\n{text}", self.program));
            }
        }
        out
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// A throwaway CA and two certificates it signed, as PEM files in a fresh
/// directory (removed on drop): Redis's server certificate (for `127.0.0.1`
/// and `localhost`) and a client certificate. Made with rcgen (ECDSA P-256).
pub struct TestPki {
    dir: PathBuf,
    /// The CA certificate.
    pub ca: PathBuf,
    /// Redis's certificate and key.
    pub server_cert: PathBuf,
    /// See [`TestPki::server_cert`].
    pub server_key: PathBuf,
    /// A client certificate and key.
    pub client_cert: PathBuf,
    /// See [`TestPki::client_cert`].
    pub client_key: PathBuf,
}

impl TestPki {
    /// A new CA named `name` and its two certificates.
    pub fn generate(name: &str) -> TestPki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
        };
        let dir = temp_dir(&format!("pki-{name}"));
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, format!("ssekify test CA {name}"));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let leaf = |names: Vec<String>, usages: Vec<ExtendedKeyUsagePurpose>, file: &str| -> (PathBuf, PathBuf) {
            let mut params = CertificateParams::new(names).expect("certificate parameters");
            params.distinguished_name.push(DnType::CommonName, format!("{file} ({name})"));
            params.extended_key_usages = usages;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &ca, &ca_key).expect("signed certificate");
            let (cert_path, key_path) = (dir.join(format!("{file}.crt")), dir.join(format!("{file}.key")));
            fs::write(&cert_path, cert.pem()).expect("write certificate");
            fs::write(&key_path, key.serialize_pem()).expect("write key");
            (cert_path, key_path)
        };
        // The server certificate is a client one too: a cluster node presents
        // it to the nodes it dials (the cluster bus always wants one).
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            "server",
        );
        let (client_cert, client_key) =
            leaf(vec!["client".into()], vec![ExtendedKeyUsagePurpose::ClientAuth], "client");
        let ca_path = dir.join("ca.crt");
        fs::write(&ca_path, ca.pem()).expect("write CA certificate");
        TestPki { dir, ca: ca_path, server_cert, server_key, client_cert, client_key }
    }

    /// A path as a command-line argument.
    pub fn arg(path: &Path) -> &str {
        path.to_str().expect("utf-8 temp dir")
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// Sentinel
// ---------------------------------------------------------------------------

/// Master group name the Sentinels monitor.
pub const SENTINEL_MASTER: &str = "m";

/// A master, one replica and Sentinels monitoring them as [`SENTINEL_MASTER`].
pub struct SentinelSet {
    /// The initial master.
    pub master: RedisServer,
    /// Its replica (promoted by a failover).
    pub replica: RedisServer,
    /// The Sentinels.
    pub sentinels: Vec<RedisServer>,
}

impl SentinelSet {
    /// Starts master, replica (in sync) and `count` Sentinels (quorum 1,
    /// down-after 1 s, failover-timeout 5 s) that know the master and the
    /// replica.
    pub fn start(count: usize) -> SentinelSet {
        Self::start_with(count, None)
    }

    /// Like [`SentinelSet::start`] with TLS only: master and replica (which
    /// replicates over TLS) and the Sentinels (which reach them over TLS),
    /// all on `pki`'s certificates.
    pub fn start_tls(count: usize, pki: &TestPki) -> SentinelSet {
        Self::start_with(count, Some(pki))
    }

    fn start_with(count: usize, tls: Option<&TestPki>) -> SentinelSet {
        assert!(count >= 1);
        let server = |args: &[&str]| match tls {
            None => RedisServer::start(args),
            Some(pki) => {
                let mut all = vec!["--tls-replication", "yes"];
                all.extend_from_slice(args);
                RedisServer::start_tls_on(free_port(), pki, false, &all)
            }
        };
        let master = server(&[]);
        let master_port = master.port().to_string();
        let replica = server(&["--replicaof", "127.0.0.1", &master_port]);
        let synced = wait_until(Duration::from_secs(15), || {
            replica.cli(&["INFO", "replication"]).and_then(|info| info_field(&info, "master_link_status")).as_deref()
                == Some("up")
        });
        assert!(
            synced,
            "replica {} never synced with master {}; replica log:\n{}",
            replica.port(),
            master.port(),
            replica.logs()
        );
        let sentinels: Vec<RedisServer> = (0..count)
            .map(|_| {
                let port = free_port();
                let listen = match tls {
                    None => format!("port {port}\n"),
                    Some(pki) => format!(
                        "port 0\ntls-port {port}\ntls-replication yes\ntls-auth-clients no\n\
                         tls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n",
                        pki.server_cert.display(),
                        pki.server_key.display(),
                        pki.ca.display()
                    ),
                };
                RedisServer::start_sentinel(port, master.tls.clone(), |dir| {
                    format!(
                        "{listen}\
                         bind 127.0.0.1\n\
                         protected-mode no\n\
                         dir {}\n\
                         sentinel resolve-hostnames no\n\
                         sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master_port} 1\n\
                         sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                         sentinel failover-timeout {SENTINEL_MASTER} 5000\n",
                        dir.display()
                    )
                })
            })
            .collect();
        let set = SentinelSet { master, replica, sentinels };
        for sentinel in &set.sentinels {
            let knows = wait_until(Duration::from_secs(15), || {
                set.master_seen_by(sentinel).as_deref() == Some(&set.master.addr()[..])
                    && sentinel
                        .cli(&["SENTINEL", "replicas", SENTINEL_MASTER])
                        .is_some_and(|r| r.contains(&set.replica.port().to_string()))
            });
            assert!(
                knows,
                "sentinel {} never learnt master {} and replica {}; log:\n{}",
                sentinel.port(),
                set.master.port(),
                set.replica.port(),
                sentinel.logs()
            );
        }
        set
    }

    /// `host:port` a Sentinel names as the master, if it answers.
    pub fn master_seen_by(&self, sentinel: &RedisServer) -> Option<String> {
        let out = sentinel.cli(&["SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER])?;
        let mut lines = out.lines().map(str::trim).filter(|l| !l.is_empty());
        let host = lines.next()?;
        let port = lines.next()?;
        Some(format!("{host}:{port}"))
    }

    /// `redis-sentinel://127.0.0.1:s1,127.0.0.1:s2/m` (`rediss-sentinel://` with TLS).
    pub fn url(&self) -> String {
        let list: Vec<String> = self.sentinels.iter().map(RedisServer::addr).collect();
        let s = if self.master.tls.is_some() { "s" } else { "" };
        format!("redis{s}-sentinel://{}/{SENTINEL_MASTER}", list.join(","))
    }

    /// Every log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = self.master.logs();
        out.push_str(&self.replica.logs());
        for s in &self.sentinels {
            out.push_str(&s.logs());
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------

/// A Redis Cluster: masters, and replicas when asked for.
pub struct RedisCluster {
    /// The nodes, in the order they were created.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` nodes (`--cluster-enabled yes`, node timeout 2 s, each
    /// in its own directory, cluster bus on its own free port), joins them with
    /// `redis-cli --cluster create … --cluster-replicas 0 --cluster-yes`, and
    /// waits for `cluster_state:ok` on every node.
    pub fn start(masters: usize) -> RedisCluster {
        Self::start_with(masters, 0, None)
    }

    /// Like [`RedisCluster::start`] with one replica per master (the first
    /// `masters` nodes are the masters), so a master's death is a failover.
    pub fn start_with_replicas(masters: usize) -> RedisCluster {
        Self::start_with(masters, 1, None)
    }

    /// Like [`RedisCluster::start`] with TLS only, between the nodes too
    /// (`--tls-cluster yes`), on `pki`'s certificates.
    pub fn start_tls(masters: usize, pki: &TestPki) -> RedisCluster {
        Self::start_with(masters, 0, Some(pki))
    }

    fn start_with(masters: usize, replicas: usize, tls: Option<&TestPki>) -> RedisCluster {
        assert!(masters >= 3, "redis-cli --cluster create needs at least 3 masters");
        let total = masters * (1 + replicas);
        let nodes: Vec<RedisServer> = (0..total)
            .map(|_| {
                let port = free_port();
                let bus_port = free_port().to_string();
                let conf = format!("nodes-{port}.conf");
                let cluster_args = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    "2000",
                    // The default bus port (port + 10000) may be past 65535 or taken.
                    "--cluster-port",
                    &bus_port,
                    // Replicas sync at once instead of after the default 5 s.
                    "--repl-diskless-sync-delay",
                    "0",
                ];
                match tls {
                    None => RedisServer::start_on(port, &cluster_args),
                    Some(pki) => {
                        let mut args = cluster_args.to_vec();
                        args.extend_from_slice(&["--tls-cluster", "yes"]);
                        RedisServer::start_tls_on(port, pki, false, &args)
                    }
                }
            })
            .collect();
        let mut args = nodes[0].tls.clone().unwrap_or_default();
        args.extend(["--cluster".to_string(), "create".to_string()]);
        args.extend(nodes.iter().map(RedisServer::addr));
        args.extend(["--cluster-replicas".to_string(), replicas.to_string(), "--cluster-yes".to_string()]);
        let (ok, output) = run_logged("redis-cli", &args, Duration::from_secs(30));
        assert!(ok, "redis-cli {args:?} failed:\n{output}");
        let cluster = RedisCluster { nodes };
        for node in &cluster.nodes {
            let up = wait_until(Duration::from_secs(20), || {
                node.cli(&["CLUSTER", "INFO"]).and_then(|i| info_field(&i, "cluster_state")).as_deref() == Some("ok")
                    && node
                        .cli(&["CLUSTER", "INFO"])
                        .and_then(|i| info_field(&i, "cluster_known_nodes"))
                        .and_then(|n| n.parse::<usize>().ok())
                        == Some(total)
            });
            assert!(
                up,
                "cluster node {} never reached cluster_state:ok with {total} nodes: {:?}\nlog:\n{}",
                node.port(),
                node.cli(&["CLUSTER", "INFO"]),
                node.logs()
            );
        }
        for node in &cluster.nodes {
            let synced = wait_until(Duration::from_secs(20), || {
                let info = node.cli(&["INFO", "replication"]).unwrap_or_default();
                info_field(&info, "role").as_deref() == Some("master")
                    || info_field(&info, "master_link_status").as_deref() == Some("up")
            });
            assert!(synced, "replica {} never synced with its master:\n{}", node.port(), node.logs());
        }
        cluster
    }

    /// `redis-cluster://127.0.0.1:<port of node i>` (`rediss-cluster://` with TLS).
    pub fn url_via(&self, node: usize) -> String {
        let s = if self.nodes[node].tls.is_some() { "s" } else { "" };
        format!("redis{s}-cluster://{}", self.nodes[node].addr())
    }
}
