//! Where RS256/ES256 keys come from when they rotate: a JWKS file
//! (`--jwks-file`, re-read on `SIGHUP`) or an identity provider's JWKS URL
//! (`--jwks-url`, fetched every `--jwks-refresh` and when a token names a
//! `kid` the set lacks).
//!
//! Parts: [`Jwks`] (the keys in use, the source, the counters), its
//! refresher thread ([`Jwks::start`], blocking I/O off the shards:
//! DNS, connect, TLS, read), [`JwksUrl`] and [`fetch`] (one `GET` over plain
//! TCP or rustls, bounded in time and size; the answer is read by
//! `http::client`'s parser, the webhook's and the events sink's).
//!
//! The keys in use are an `Arc<KeySet>` behind a `RwLock` that is held only
//! to clone or swap the `Arc`, so a shard verifying a token never waits on a
//! fetch. A fetch or read that fails, or a document that is refused, keeps
//! the keys in use (served stale) and counts in `jwksFetchErrors`; so
//! does a bad file on `SIGHUP`, with a log line.
//!
//! A token whose `kid` is unknown asks for a fetch at most once per
//! [`UNKNOWN_KID_REFRESH`] (a stream of made-up `kid`s must not turn ssekify
//! into a load generator against the identity provider), and its subscribe
//! request waits for that fetch, so the first token signed with a rotated-in
//! key is accepted without a retry.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::keys::{parse_jwks, KeySet, MAX_JWKS_BYTES};
use super::webhook::shown_url;
use crate::http::client::parse_answer;

/// Bound on one fetch (resolve, connect, TLS, request, answer): an identity
/// provider answers in milliseconds; a subscribe request waiting on an
/// unknown `kid` must not wait much longer than a browser tolerates.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Fetches asked for by unknown `kid`s are at most this frequent: a rotation
/// needs one, and anything faster only lets made-up `kid`s hammer the provider.
pub const UNKNOWN_KID_REFRESH: Duration = Duration::from_secs(30);

/// How often a subscribe request waiting for a fetch looks whether it is done.
const WAIT_POLL: Duration = Duration::from_millis(10);

/// Counters for `/v1/stats` and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JwksStats {
    /// Keys in use (gauge).
    pub keys: u64,
    /// Documents loaded and put in use, the first included (counter).
    pub loads: u64,
    /// Fetches or reads that failed or brought a refused document; the keys
    /// in use were kept (counter).
    pub fetch_errors: u64,
}

/// `--jwks-url`: where the identity provider publishes its keys.
#[derive(Debug, Clone)]
pub struct JwksUrl {
    /// `https://`: fetched over TLS, the certificate checked against Mozilla's roots.
    tls: bool,
    /// `host[:port]` as given: the `Host` header.
    host: String,
    /// `host:port`, resolved at each fetch (a provider's addresses change).
    authority: String,
    /// Path and query.
    target: String,
}

impl JwksUrl {
    /// Parses `http://host[:port]/path` or `https://…`.
    pub fn parse(url: &str) -> Result<JwksUrl, String> {
        let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            _ => return Err("must start with https:// or http://".into()),
        };
        let (host, target) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        if host.is_empty() {
            return Err("has no host".into());
        }
        if host.contains('@') {
            return Err("carries a user or password; a JWKS is public and needs neither".into());
        }
        let has_port =
            host.rsplit_once(':').is_some_and(|(name, port)| port.parse::<u16>().is_ok() && !name.ends_with(':'));
        let authority = if has_port { host.to_owned() } else { format!("{host}:{}", if tls { 443 } else { 80 }) };
        let target = crate::http::client::request_target(target)?;
        Ok(JwksUrl { tls, host: host.to_owned(), authority, target })
    }

    /// The URL as logs show it (its query hidden, as for `--auth-url`).
    pub fn shown(&self) -> String {
        shown_url(&format!("{}://{}{}", if self.tls { "https" } else { "http" }, self.host, self.target))
    }
}

/// Where the key set comes from.
#[derive(Debug)]
enum Source {
    /// `--jwks-file`.
    File(PathBuf),
    /// `--jwks-url`, fetched every `every`; TLS settings when `https://`.
    Url { url: JwksUrl, every: Duration, tls: Option<Arc<ClientConfig>> },
}

/// Fetch requests between the shards (or `SIGHUP`) and the refresher thread.
#[derive(Debug, Default)]
struct Refresh {
    /// A fetch is asked for and has not started.
    wanted: bool,
    /// Fetches started so far; the refresher numbers them 1, 2, …
    started: u64,
    /// When an unknown `kid` last asked for a fetch.
    last_on_demand: Option<Instant>,
}

/// A rotating key set and its source.
#[derive(Debug)]
pub struct Jwks {
    source: Source,
    current: RwLock<Arc<KeySet>>,
    refresh: Mutex<Refresh>,
    wake: Condvar,
    /// The number of the last fetch that finished, loaded or not.
    finished: AtomicU64,
    loads: AtomicU64,
    fetch_errors: AtomicU64,
    /// Why keys of the file read by [`Jwks::file`] were left out, for the
    /// log line of [`Jwks::start`].
    first_skipped: Vec<String>,
}

impl Jwks {
    /// `--jwks-file`: read now (quietly: `check-config` reads it too, and
    /// the server logs the set in [`Jwks::start`]); a file that cannot be
    /// used stops start-up.
    pub fn file(path: PathBuf) -> Result<Jwks, String> {
        let parsed = read_file(&path)?;
        let mut jwks = Jwks::new(Source::File(path));
        jwks.install(parsed.set);
        jwks.first_skipped = parsed.skipped;
        Ok(jwks)
    }

    /// `--jwks-url`: checked now, fetched by the refresher thread once the
    /// server starts (a provider that is down then delays nothing but the
    /// tokens, which wait for or retry the fetch); `tls` is for an `https://` URL.
    pub fn url(url: &str, every: Duration, tls: Arc<ClientConfig>) -> Result<Jwks, String> {
        let url = JwksUrl::parse(url)?;
        let tls = url.tls.then_some(tls);
        Ok(Jwks::new(Source::Url { url, every, tls }))
    }

    fn new(source: Source) -> Jwks {
        Jwks {
            source,
            current: RwLock::new(Arc::new(KeySet::default())),
            refresh: Mutex::new(Refresh::default()),
            wake: Condvar::new(),
            finished: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            fetch_errors: AtomicU64::new(0),
            first_skipped: Vec::new(),
        }
    }

    /// The keys in use.
    pub fn keys(&self) -> Arc<KeySet> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// The source as `check-config` and the logs show it.
    pub fn shown(&self) -> String {
        match &self.source {
            Source::File(path) => path.display().to_string(),
            Source::Url { url, .. } => url.shown(),
        }
    }

    /// `--jwks-refresh`, when the source is a URL.
    pub fn refresh_every(&self) -> Option<Duration> {
        match &self.source {
            Source::File(_) => None,
            Source::Url { every, .. } => Some(*every),
        }
    }

    /// The counters.
    pub fn stats(&self) -> JwksStats {
        JwksStats {
            keys: self.keys().keys.len() as u64,
            loads: self.loads.load(Ordering::Relaxed),
            fetch_errors: self.fetch_errors.load(Ordering::Relaxed),
        }
    }

    /// Puts `set` in use; true when it differs from the set it replaces.
    fn install(&self, set: KeySet) -> bool {
        let set = Arc::new(set);
        let previous =
            std::mem::replace(&mut *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()), set.clone());
        self.loads.fetch_add(1, Ordering::Relaxed);
        *previous != *set
    }

    /// Puts a document read or fetched in use and logs it: an info line
    /// with the `kid`s and the keys left out, or, for a set the same as the
    /// one in use that `always` does not ask to announce, a debug line
    /// (periodic fetches mostly bring that).
    fn load(&self, parsed: super::keys::Parsed, always: bool) {
        let changed = self.install(parsed.set);
        self.announce(&parsed.skipped, changed || always);
    }

    fn announce(&self, skipped: &[String], info: bool) {
        let set = self.keys();
        if info {
            let skipped = (!skipped.is_empty()).then(|| skipped.join("; "));
            let (keys, kids) = (set.keys.len(), set.kids());
            crate::log!(Info, "JWKS loaded", source = self.shown(), keys = keys, kids = kids, skipped = skipped);
        } else {
            crate::log!(Debug, "JWKS unchanged", source = self.shown(), keys = set.keys.len());
        }
    }

    /// A failed read or fetch: counted and logged; the keys in use stay.
    fn failed(&self, why: &str) {
        self.fetch_errors.fetch_add(1, Ordering::Relaxed);
        crate::log!(
            Warn,
            "JWKS not loaded; keeping the keys in use",
            source = self.shown(),
            error = why,
            keys = self.keys().keys.len()
        );
    }

    /// `SIGHUP`: re-reads the file now, or fetches the URL now (whatever the
    /// rate limit of unknown `kid`s).
    pub fn reload(&self) {
        match &self.source {
            Source::File(path) => match read_file(path) {
                Ok(parsed) => self.load(parsed, true),
                Err(why) => self.failed(&why),
            },
            Source::Url { .. } => {
                self.request(true);
            }
        }
    }

    /// At server start: logs the keys of a file, or starts the thread that
    /// fetches the URL at once, then every `--jwks-refresh` and when asked.
    pub fn start(self: &Arc<Self>) -> io::Result<()> {
        let Source::Url { url, every, tls } = &self.source else {
            self.announce(&self.first_skipped, true);
            return Ok(());
        };
        let (url, every, tls, jwks) = (url.clone(), *every, tls.clone(), self.clone());
        std::thread::Builder::new().name("jwks".into()).spawn(move || {
            let mut next = Instant::now();
            loop {
                let number = {
                    let mut state = jwks.refresh.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    while !state.wanted && Instant::now() < next {
                        let wait = next.saturating_duration_since(Instant::now());
                        state = jwks.wake.wait_timeout(state, wait).unwrap_or_else(|p| p.into_inner()).0;
                    }
                    state.wanted = false;
                    state.started += 1;
                    state.started
                };
                match fetch(&url, tls.as_ref()).and_then(|document| parse_jwks(&document)) {
                    Ok(parsed) => jwks.load(parsed, false),
                    Err(why) => jwks.failed(&why),
                }
                jwks.finished.store(number, Ordering::Release);
                next = Instant::now() + every;
            }
        })?;
        Ok(())
    }

    /// Asks the refresher for a fetch; returns the number of the fetch whose
    /// end to wait for, or `None` when there is none to wait for (a file, or
    /// an unknown `kid` within [`UNKNOWN_KID_REFRESH`] of the last, with no
    /// fetch under way). `forced` (`SIGHUP`) ignores the rate limit.
    fn request(&self, forced: bool) -> Option<u64> {
        if !matches!(self.source, Source::Url { .. }) {
            return None;
        }
        let mut state = self.refresh.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let allowed = forced || state.last_on_demand.is_none_or(|last| now.duration_since(last) >= UNKNOWN_KID_REFRESH);
        if allowed && !state.wanted {
            state.last_on_demand = Some(now);
            state.wanted = true;
            self.wake.notify_one();
        }
        if state.wanted {
            Some(state.started + 1)
        } else {
            (self.finished.load(Ordering::Acquire) < state.started).then_some(state.started)
        }
    }

    /// A token named a `kid` the set lacks (or had none and no key fits):
    /// fetches the URL if the rate limit allows, waiting for the fetch; true
    /// when one finished, so the token is worth checking again.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        let Some(number) = self.request(false) else {
            return false;
        };
        // The fetch has FETCH_TIMEOUT per read after its connect; a second
        // one may be queued behind a periodic fetch under way.
        let deadline = Instant::now() + FETCH_TIMEOUT * 3;
        while self.finished.load(Ordering::Acquire) < number {
            if Instant::now() >= deadline {
                return false;
            }
            monoio::time::sleep(WAIT_POLL).await;
        }
        true
    }
}

/// Reads and parses a JWKS file, bounded by [`MAX_JWKS_BYTES`].
fn read_file(path: &Path) -> Result<super::keys::Parsed, String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("{shown}: cannot be read ({e})"))?;
    let mut document = Vec::new();
    file.take(MAX_JWKS_BYTES as u64 + 1)
        .read_to_end(&mut document)
        .map_err(|e| format!("{shown}: cannot be read ({e})"))?;
    parse_jwks(&document).map_err(|why| format!("{shown}: {why}"))
}

/// One `GET` of the JWKS: the body of a `200`, at most [`MAX_JWKS_BYTES`].
/// Blocking: runs on the refresher thread only.
pub fn fetch(url: &JwksUrl, tls: Option<&Arc<ClientConfig>>) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + FETCH_TIMEOUT;
    let addresses = url.authority.to_socket_addrs().map_err(|e| format!("cannot resolve {}: {e}", url.authority))?;
    // Each address in turn (`localhost` may resolve to ::1 before 127.0.0.1).
    let mut failure = format!("{} resolves to no address", url.authority);
    let socket = addresses
        .into_iter()
        .find_map(|address| {
            TcpStream::connect_timeout(&address, FETCH_TIMEOUT).map_err(|e| failure = format!("connect: {e}")).ok()
        })
        .ok_or(failure)?;
    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    socket
        .set_read_timeout(Some(remaining))
        .and_then(|()| socket.set_write_timeout(Some(remaining)))
        .map_err(|e| format!("socket: {e}"))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json, application/jwk-set+json\r\n\
         User-Agent: ssekify\r\nConnection: close\r\n\r\n",
        url.target, url.host
    );
    let (status, body) = match tls {
        Some(config) => {
            let name = crate::tls::server_name(&url.authority)?;
            let session = ClientConnection::new(config.clone(), name).map_err(|e| format!("TLS setup: {e}"))?;
            exchange(&mut StreamOwned::new(session, socket), request.as_bytes(), deadline)?
        }
        None => exchange(&mut { socket }, request.as_bytes(), deadline)?,
    };
    match status {
        200 => Ok(body.to_vec()),
        other => Err(format!("answered {other}, not 200")),
    }
}

/// Sends `request` and reads the whole answer: (status, body).
fn exchange(stream: &mut (impl Read + Write), request: &[u8], deadline: Instant) -> Result<(u16, BytesMut), String> {
    stream.write_all(request).and_then(|()| stream.flush()).map_err(|e| format!("send: {e}"))?;
    // Head and framing come on top of the body's bound.
    let limit = MAX_JWKS_BYTES + 16 * 1024;
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if Instant::now() > deadline {
            return Err(format!("no whole answer within {FETCH_TIMEOUT:?}"));
        }
        let read = match stream.read(&mut chunk) {
            Ok(read) => read,
            // A TLS peer that closes without close_notify: the framing below
            // still decides whether the answer is whole.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(format!("read: {e}")),
        };
        buf.extend_from_slice(&chunk[..read]);
        if buf.len() > limit {
            return Err(format!("the answer is over {MAX_JWKS_BYTES} bytes"));
        }
        if let Some(answer) = parse_answer(&mut buf.clone(), read == 0, MAX_JWKS_BYTES)? {
            return Ok(answer);
        }
        if read == 0 {
            return Err("the connection closed before a whole answer".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn urls_are_http_or_https_with_a_host() {
        let url = JwksUrl::parse("https://kc.example/realms/demo/protocol/openid-connect/certs").unwrap();
        assert_eq!((url.tls, url.authority.as_str()), (true, "kc.example:443"));
        assert_eq!(url.target, "/realms/demo/protocol/openid-connect/certs");
        let url = JwksUrl::parse("http://127.0.0.1:9000?k=1").unwrap();
        assert_eq!((url.tls, url.authority.as_str(), url.target.as_str()), (false, "127.0.0.1:9000", "/?k=1"));
        assert_eq!(url.shown(), "http://127.0.0.1:9000/?…");
        assert_eq!(JwksUrl::parse("http://[::1]").unwrap().authority, "[::1]:80");
        assert_eq!(JwksUrl::parse("http://[::1]:8080/").unwrap().authority, "[::1]:8080");
        for bad in ["ftp://x/", "http:///certs", "https://u:p@idp/certs", "http://idp/a b"] {
            assert!(JwksUrl::parse(bad).is_err(), "{bad}");
        }
    }

    /// Serves `answers` in turn, one connection each, on a loopback port.
    fn serve(answers: Vec<String>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for answer in answers {
                let (mut socket, _) = listener.accept().unwrap();
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request);
                let _ = socket.write_all(answer.as_bytes());
            }
        });
        format!("http://{address}/certs")
    }

    const JWKS: &str = r#"{"keys":[{"kty":"EC","kid":"k1","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    #[test]
    fn fetch_reads_a_200_and_refuses_the_rest() {
        let ok = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{JWKS}", JWKS.len());
        let closing = format!("HTTP/1.0 200 OK\r\n\r\n{JWKS}");
        let missing = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned();
        let huge = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", MAX_JWKS_BYTES + 1);
        let url = JwksUrl::parse(&serve(vec![ok, closing, missing, huge])).unwrap();
        assert_eq!(fetch(&url, None).unwrap(), JWKS.as_bytes());
        assert_eq!(fetch(&url, None).unwrap(), JWKS.as_bytes(), "framed by the close");
        assert_eq!(fetch(&url, None).unwrap_err(), "answered 404, not 200");
        assert!(fetch(&url, None).unwrap_err().contains("over"), "bounded");
    }

    #[test]
    fn a_bad_file_on_reload_keeps_the_keys_in_use() {
        let path = std::env::temp_dir().join(format!("ssekify-jwks-unit-{}.json", std::process::id()));
        std::fs::write(&path, JWKS).unwrap();
        let jwks = Jwks::file(path.clone()).unwrap();
        assert_eq!(jwks.stats(), JwksStats { keys: 1, loads: 1, fetch_errors: 0 });
        std::fs::write(&path, "{\"keys\": [").unwrap();
        jwks.reload();
        assert_eq!(jwks.stats(), JwksStats { keys: 1, loads: 1, fetch_errors: 1 });
        assert!(jwks.keys().by_kid("k1").is_some());
        std::fs::write(&path, JWKS.replace("k1", "k2")).unwrap();
        jwks.reload();
        assert_eq!(jwks.stats(), JwksStats { keys: 1, loads: 2, fetch_errors: 1 });
        assert!(jwks.keys().by_kid("k2").is_some());
        std::fs::remove_file(&path).unwrap();
        let err = Jwks::file(path).unwrap_err();
        assert!(err.contains("cannot be read"), "{err}");
        assert_eq!(jwks.request(true), None, "a file has nothing to fetch");
    }

    #[test]
    fn unknown_kids_ask_for_a_fetch_at_most_every_30_seconds() {
        let tls = crate::tls::Tls::public_roots().client_config();
        let jwks = Jwks::url("http://127.0.0.1:9/certs", Duration::from_secs(300), tls).unwrap();
        assert_eq!(jwks.request(false), Some(1), "the first asks");
        assert_eq!(jwks.request(false), Some(1), "the next waits for the same fetch");
        jwks.refresh.lock().unwrap().wanted = false;
        jwks.refresh.lock().unwrap().started = 1;
        assert_eq!(jwks.request(false), Some(1), "under way");
        jwks.finished.store(1, Ordering::Release);
        assert_eq!(jwks.request(false), None, "rate-limited, nothing under way");
        assert_eq!(jwks.request(true), Some(2), "SIGHUP is not rate-limited");
    }
}
