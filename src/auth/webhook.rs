//! `--auth webhook`: the application decides who a subscriber is, from the
//! cookies and headers the browser sent — for sites whose session lives in a
//! cookie and that cannot mint tokens for their pages.
//!
//! ssekify asks `--auth-url` with `GET`, forwarding the subscribe request's
//! query string and its `Cookie`, `Authorization` and `X-Forwarded-For`
//! headers, and, for a tenant's path, `X-Ssekify-Tenant` (the tenant,
//! percent-encoded as in the path). `200` with `{"user": …, "rooms": [...],
//! "tenant": …}` allows (rooms as a JWT's claim: the ones the subscriber may
//! join, `"*"` for any; tenant the namespace the answer is for, absent or
//! null the default one, which must be the path's); any other `4xx`
//! or `5xx` refuses the subscriber with that status. An app that cannot be
//! reached within `--auth-timeout` gives the subscriber `503` (its
//! `EventSource` retries), an answer that is not such JSON `502`.
//!
//! Answers (allowed, and refused with a `4xx`) are cached for `--auth-cache-ttl`
//! per shard, keyed by exactly what was forwarded, so a reconnect storm after
//! a deploy costs the app one request per session, not one per tab and retry.
//! The cache lives in a thread-local: each shard is one thread, so no lock.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytes::{BufMut, BytesMut};
use serde_json::Value;

use super::{Denied, Grant, Rooms};
use crate::http::client::{self, Endpoint};

/// Largest answer read from the app: a user, a few hundred room names.
const MAX_ANSWER: usize = 64 * 1024;

/// The app's endpoint and how ssekify uses it.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// `--auth-url`, resolved once at start (a shard must not block on DNS);
    /// the subscriber's query is appended to its target.
    endpoint: Endpoint,
    /// `--auth-timeout`: connect, send and answer together.
    pub timeout: Duration,
    /// `--auth-cache-ttl`: how long an answer is reused (zero: never).
    pub cache_ttl: Duration,
    /// `--auth-cache-max`: answers kept per shard.
    pub cache_max: usize,
}

/// What is forwarded to the app (and keys the cache).
#[derive(Debug, Default, Clone, Copy)]
pub struct Forwarded<'a> {
    /// The subscribe request's query string, still encoded, without `?`.
    pub query: &'a [u8],
    /// Its `Cookie` header.
    pub cookie: Option<&'a [u8]>,
    /// Its `Authorization` header.
    pub authorization: Option<&'a [u8]>,
    /// Its `X-Forwarded-For` header.
    pub forwarded_for: Option<&'a [u8]>,
    /// The tenant of its path (`/t/{tenant}/sse`), sent as `X-Ssekify-Tenant`.
    pub tenant: Option<&'a str>,
}

impl Forwarded<'_> {
    /// The cache key: every forwarded field, length-prefixed so that no two
    /// different requests share a key (a hash alone could hand one user's
    /// session to another on a collision).
    fn key(&self) -> Vec<u8> {
        let mut key = Vec::new();
        let tenant = self.tenant.map(str::as_bytes);
        for field in [Some(self.query), self.cookie, self.authorization, self.forwarded_for, tenant] {
            match field {
                Some(bytes) => {
                    key.extend_from_slice(&(bytes.len() as u32 + 1).to_le_bytes());
                    key.extend_from_slice(bytes);
                }
                None => key.extend_from_slice(&0u32.to_le_bytes()),
            }
        }
        key
    }
}

/// An auth URL as errors and reports may show it: everything up to its
/// query, which may carry a key for the app (`?…` marks one was there).
pub fn shown_url(url: &str) -> String {
    match url.split_once('?') {
        Some((before, _)) => format!("{before}?…"),
        None => url.to_owned(),
    }
}

impl Webhook {
    /// Parses and resolves `--auth-url` (`http://host[:port]/path[?query]`).
    pub fn new(url: &str, timeout: Duration, cache_ttl: Duration, cache_max: usize) -> Result<Webhook, String> {
        Ok(Webhook { endpoint: Endpoint::parse(url)?, timeout, cache_ttl, cache_max })
    }

    /// `--auth-url` as `check-config` shows it: its query, which may carry
    /// a key for the app, hidden.
    pub fn shown_url(&self) -> String {
        shown_url(&self.endpoint.url())
    }

    /// Asks the app (or the cache) about one subscribe request.
    pub async fn check(&self, request: &Forwarded<'_>) -> Result<Grant, Denied> {
        let key = (!self.cache_ttl.is_zero()).then(|| request.key());
        if let Some(answer) = key.as_deref().and_then(cached) {
            return answer;
        }
        let answer = match monoio::time::timeout(self.timeout, self.ask(request)).await {
            Err(_) => Err(Denied::AppUnavailable(format!("no answer within {:?}", self.timeout))),
            Ok(Err(error)) => Err(Denied::AppUnavailable(error)),
            Ok(Ok((status, body))) => decide(status, &body),
        };
        // Allowances and the app's 4xx refusals are its decision and worth
        // reusing; an outage (its 5xx included) or a broken answer is asked again.
        if let Some(key) = key {
            if matches!(answer, Ok(_) | Err(Denied::AppRefused(400..=499))) {
                remember(key, answer.clone(), self.cache_ttl, self.cache_max);
            }
        }
        answer
    }

    /// One HTTP/1.1 exchange on a fresh connection: (status, body).
    async fn ask(&self, request: &Forwarded<'_>) -> Result<(u16, BytesMut), String> {
        client::exchange(self.endpoint.addr, self.request(request), MAX_ANSWER).await
    }

    fn request(&self, request: &Forwarded<'_>) -> BytesMut {
        let mut out = BytesMut::with_capacity(512);
        out.put_slice(b"GET ");
        out.put_slice(self.endpoint.target.as_bytes());
        if !request.query.is_empty() {
            out.put_u8(if self.endpoint.target.contains('?') { b'&' } else { b'?' });
            out.put_slice(request.query);
        }
        out.put_slice(b" HTTP/1.1\r\nHost: ");
        out.put_slice(self.endpoint.host.as_bytes());
        out.put_slice(b"\r\nAccept: application/json\r\nUser-Agent: ssekify\r\nConnection: close\r\n");
        for (name, value) in [
            ("Cookie", request.cookie),
            ("Authorization", request.authorization),
            ("X-Forwarded-For", request.forwarded_for),
        ] {
            if let Some(value) = value {
                out.put_slice(name.as_bytes());
                out.put_slice(b": ");
                out.put_slice(value);
                out.put_slice(b"\r\n");
            }
        }
        if let Some(tenant) = request.tenant {
            out.put_slice(b"X-Ssekify-Tenant: ");
            for byte in tenant.bytes() {
                if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                    out.put_u8(byte);
                } else {
                    out.put_slice(format!("%{byte:02X}").as_bytes());
                }
            }
            out.put_slice(b"\r\n");
        }
        out.put_slice(b"\r\n");
        out
    }
}

/// What the app's answer means for the subscriber.
fn decide(status: u16, body: &[u8]) -> Result<Grant, Denied> {
    match status {
        200 => grant(body).map_err(|why| Denied::AppAnswerInvalid(why.into())),
        400..=599 => Err(Denied::AppRefused(status)),
        other => Err(Denied::AppAnswerInvalid(format!("status {other}; it answers 200 to allow, 4xx/5xx to refuse"))),
    }
}

/// `{"user": "alice" | null, "rooms": ["a", "b"] | ["*"], "tenant": "acme" | null}`;
/// a missing user is an anonymous subscriber, missing rooms allow none, a
/// missing tenant is the default namespace.
fn grant(body: &[u8]) -> Result<Grant, &'static str> {
    let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(body) else {
        return Err("the 200 answer is not a JSON object");
    };
    let user = match answer.get("user") {
        None | Some(Value::Null) => None,
        Some(Value::String(user)) => Some(user.clone()),
        Some(_) => return Err("user must be a string or null"),
    };
    let rooms = match answer.get("rooms") {
        None | Some(Value::Null) => Rooms::Only(Vec::new()),
        Some(Value::Array(list)) => Rooms::from_names(list).ok_or("rooms must be an array of strings")?,
        Some(_) => return Err("rooms must be an array of strings"),
    };
    let tenant = match answer.get("tenant") {
        None | Some(Value::Null) => None,
        Some(Value::String(tenant)) => Some(tenant.clone()),
        Some(_) => return Err("tenant must be a string or null"),
    };
    Ok(Grant { user, rooms, tenant })
}

/// Answers of this shard's thread: (expiry, answer) by forwarded request.
type Cache = AHashMap<Vec<u8>, (Instant, Result<Grant, Denied>)>;

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(AHashMap::new());
}

fn cached(key: &[u8]) -> Option<Result<Grant, Denied>> {
    CACHE.with_borrow(|cache| cache.get(key).filter(|(expiry, _)| *expiry > Instant::now()).map(|(_, a)| a.clone()))
}

/// Stores an answer; a full cache first drops what expired, and everything
/// when nothing did, so it stays within `max` entries at a constant cost.
fn remember(key: Vec<u8>, answer: Result<Grant, Denied>, ttl: Duration, max: usize) {
    CACHE.with_borrow_mut(|cache| {
        if cache.len() >= max && !cache.contains_key(&key) {
            let now = Instant::now();
            cache.retain(|_, (expiry, _)| *expiry > now);
            if cache.len() >= max {
                cache.clear();
            }
        }
        if max > 0 {
            cache.insert(key, (Instant::now() + ttl, answer));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_decides() {
        let allowed = decide(200, br#"{"user":"alice","rooms":["r1","r2"]}"#).unwrap();
        assert_eq!(
            allowed,
            Grant { user: Some("alice".into()), rooms: Rooms::Only(vec!["r1".into(), "r2".into()]), tenant: None }
        );
        assert_eq!(
            decide(200, br#"{"user":null,"rooms":["*"],"tenant":"acme"}"#).unwrap(),
            Grant { user: None, rooms: Rooms::Any, tenant: Some("acme".into()) }
        );
        assert_eq!(decide(200, b"{}").unwrap(), Grant { user: None, rooms: Rooms::Only(Vec::new()), tenant: None });
        assert_eq!(decide(401, b"").unwrap_err(), Denied::AppRefused(401));
        assert_eq!(decide(503, b"").unwrap_err(), Denied::AppRefused(503));
        for (status, body) in [
            (200, &b"[]"[..]),
            (200, br#"{"user":1}"#),
            (200, br#"{"rooms":"r1"}"#),
            (200, br#"{"tenant":1}"#),
            (302, b""),
        ] {
            assert!(matches!(decide(status, body), Err(Denied::AppAnswerInvalid(_))), "{status} {body:?}");
        }
    }

    #[test]
    fn the_url_is_checked_and_resolved_at_start() {
        let hook = Webhook::new("http://127.0.0.1:9000/auth?app=1", Duration::ZERO, Duration::ZERO, 1).unwrap();
        assert_eq!(
            (hook.endpoint.addr, hook.endpoint.host.as_str(), hook.endpoint.target.as_str()),
            ("127.0.0.1:9000".parse().unwrap(), "127.0.0.1:9000", "/auth?app=1")
        );
        let request = hook.request(&Forwarded { query: b"rooms=a", cookie: Some(b"s=1"), ..Default::default() });
        assert_eq!(
            &request[..],
            &b"GET /auth?app=1&rooms=a HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nAccept: application/json\r\n\
               User-Agent: ssekify\r\nConnection: close\r\nCookie: s=1\r\n\r\n"[..]
        );
        let tenant = hook.request(&Forwarded { tenant: Some("a b/ü"), ..Default::default() });
        assert!(tenant.ends_with(b"Connection: close\r\nX-Ssekify-Tenant: a%20b%2F%C3%BC\r\n\r\n"), "{tenant:?}");
        assert_eq!(Webhook::new("http://localhost", Duration::ZERO, Duration::ZERO, 1).unwrap().endpoint.target, "/");
        assert!(Webhook::new("https://app/auth", Duration::ZERO, Duration::ZERO, 1).is_err());
        assert!(Webhook::new("http:///auth", Duration::ZERO, Duration::ZERO, 1).is_err());
        assert_eq!(hook.shown_url(), "http://127.0.0.1:9000/auth?…", "the query may hold a key");
        let with_password = Webhook::new("http://u:pw@127.0.0.1/auth", Duration::ZERO, Duration::ZERO, 1);
        assert!(with_password.is_err_and(|why| !why.contains("pw")));
    }

    #[test]
    fn keys_tell_fields_apart() {
        let a = Forwarded { cookie: Some(b"ab"), ..Default::default() };
        let b = Forwarded { authorization: Some(b"ab"), ..Default::default() };
        let c = Forwarded { cookie: Some(b""), ..Default::default() };
        assert_ne!(a.key(), b.key());
        assert_ne!(c.key(), Forwarded::default().key(), "an empty header is not a missing one");
        let acme = Forwarded { tenant: Some("acme"), ..Default::default() };
        assert_ne!(acme.key(), Forwarded::default().key(), "another tenant's path is another question");
    }

    #[test]
    fn the_cache_stays_bounded() {
        let grant = || Ok(Grant { user: None, rooms: Rooms::Any, tenant: None });
        for i in 0..10u8 {
            remember(vec![i], grant(), Duration::from_secs(60), 4);
            assert!(CACHE.with_borrow(|c| c.len()) <= 4);
        }
        assert!(cached(&[9]).is_some());
        remember(vec![42], grant(), Duration::ZERO, 4);
        assert!(cached(&[42]).is_none(), "expired at once");
    }
}
