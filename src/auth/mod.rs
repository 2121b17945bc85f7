//! Subscriber auth (API.md "Subscriber auth"): which user a subscribe request
//! is for and which rooms it may join, from the credential the mode asks for.
//!
//! Parts: [`Authenticator`] (the `--auth` mode with its key, called by
//! `api::subscribe`), [`jwt`] (HS256, RS256 and ES256 tokens), [`keys`] (the
//! public keys: PEM and JWKS), [`jwks`] (a key set that rotates: a file
//! re-read on `SIGHUP`, a URL fetched), [`signed`] (presigned URLs and
//! their canonical string, also used by `ssekify sign` in [`crate::sign`]),
//! [`webhook`] (the application decides, over HTTP), [`base64url`]. Apart
//! from the webhook's and the JWKS fetch's own clients, nothing here knows HTTP: the caller hands
//! over the credential fields and turns a [`Denied`] into an answer. Secrets and
//! credentials are never logged or echoed in an answer, and every MAC is
//! compared in constant time (`Mac::verify_slice`).
//!
//! Tenants: a credential is for one namespace, [`Grant::tenant`] (a JWT's
//! `tenant` claim, the tenant a URL was signed for, the webhook answer's
//! `tenant`; none of them: the default namespace), and opens only that
//! namespace's path ([`Grant::allow_tenant`], else `403`). With `--auth none`
//! the path's tenant is trusted like `userId`.

pub mod base64url;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod signed;
pub mod webhook;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Shortest secret accepted for HMAC-SHA256: as long as its output. RFC 7518
/// §3.2 requires at least that for HS256; a shorter key is the weak point
/// that brute force attacks instead of the hash.
pub const MIN_SECRET_BYTES: usize = 32;

/// An HMAC-SHA256 key, keyed once at start-up; each use clones the keyed state.
#[derive(Clone)]
pub struct Key(Hmac<Sha256>);

impl Key {
    /// Keys HMAC-SHA256 with `secret` (its length is checked by the caller).
    pub fn new(secret: &[u8]) -> Key {
        // HMAC hashes or pads a key of any length; `InvalidLength` is for fixed-key MACs.
        Key(<Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length"))
    }

    /// The 32-byte tag of `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 32] {
        let mut mac = self.0.clone();
        mac.update(message);
        mac.finalize().into_bytes().into()
    }

    /// True when `tag` is the tag of `message`, compared in constant time.
    pub fn verify(&self, message: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.0.clone();
        mac.update(message);
        mac.verify_slice(tag).is_ok()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `Config` is `Debug`; the secret must not leak through it.
        f.write_str("Key(<secret>)")
    }
}

/// The `--auth` mode with what it needs to verify credentials.
#[derive(Debug, Clone)]
pub enum Authenticator {
    /// Development: the `userId` query parameter is trusted and any room may be joined.
    None,
    /// A JWT in `Authorization: Bearer` or `?token=`, HS256 with the secret
    /// or RS256/ES256 with a public key (boxed: the keys are large, and
    /// every other mode would pay for them in size).
    Jwt(Box<jwt::Verifier>),
    /// A presigned URL: `?user=&rooms=&exp=&sig=`.
    Signed {
        /// `--sign-secret`.
        key: Key,
        /// `--auth-leeway`: clock skew allowed on `exp`.
        leeway: Duration,
    },
    /// The application answers for each subscribe request (`--auth-url`).
    Webhook(Box<webhook::Webhook>),
}

/// The credential fields of a subscribe request, as the caller found them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Credentials<'a> {
    /// The `Authorization` header's value.
    pub authorization: Option<&'a [u8]>,
    /// `?token=` (jwt).
    pub token: Option<&'a str>,
    /// `?userId=` (none).
    pub user_id: Option<&'a str>,
    /// `?user=` (signed).
    pub user: Option<&'a str>,
    /// `?rooms=` (signed: part of what is signed).
    pub rooms: Option<&'a str>,
    /// `?exp=` (signed).
    pub exp: Option<&'a str>,
    /// `?sig=` (signed).
    pub sig: Option<&'a str>,
    /// The tenant of the path (`/t/{tenant}/sse`), `None` for `/sse`; a
    /// signed URL's signature covers it.
    pub tenant: Option<&'a str>,
    /// What the webhook forwards: the query string and some headers.
    pub forwarded: webhook::Forwarded<'a>,
}

/// What a verified credential allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The user, or `None` for an anonymous subscriber (broadcasts and rooms only).
    /// Not yet checked against the name rules: the caller does that.
    pub user: Option<String>,
    /// Rooms the subscriber may join.
    pub rooms: Rooms,
    /// The tenant whose namespace the credential is for; `None`: the default
    /// namespace only.
    pub tenant: Option<String>,
}

/// Rooms a credential allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rooms {
    /// Any room (`--auth none`, or a token's `"rooms":["*"]`).
    Any,
    /// Only these (none when empty).
    Only(Vec<String>),
}

/// The room entry that allows every room.
pub const ANY_ROOM: &str = "*";

impl Rooms {
    /// The rooms of a JSON array of names (a JWT's `rooms` claim, a webhook
    /// answer's `rooms`): [`ANY_ROOM`] among them allows any; `None` when an
    /// entry is not a string.
    pub fn from_names(list: &[serde_json::Value]) -> Option<Rooms> {
        let names: Vec<String> = list.iter().map(|room| room.as_str().map(str::to_owned)).collect::<Option<_>>()?;
        Some(if names.iter().any(|room| room == ANY_ROOM) { Rooms::Any } else { Rooms::Only(names) })
    }
}

impl Grant {
    /// Checks that every requested room is allowed; `403` names the first that is not.
    pub fn allow(&self, requested: &[String]) -> Result<(), Denied> {
        let Rooms::Only(allowed) = &self.rooms else {
            return Ok(());
        };
        match requested.iter().find(|room| !allowed.contains(room)) {
            Some(room) => Err(Denied::Room(room.clone())),
            None => Ok(()),
        }
    }

    /// Checks that the credential is for the namespace of the path, whose
    /// tenant is `tenant` (`None`: `/sse`, the default namespace); `403` otherwise.
    pub fn allow_tenant(&self, tenant: Option<&str>) -> Result<(), Denied> {
        if self.tenant.as_deref() == tenant {
            Ok(())
        } else {
            Err(Denied::Tenant)
        }
    }
}

/// Which kind of credential a refusal is about, for its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A JWT.
    Token,
    /// A presigned URL.
    SignedUrl,
    /// The webhook app's answer.
    AppAnswer,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Token => "token",
            Kind::SignedUrl => "signed URL",
            Kind::AppAnswer => "application's answer",
        })
    }
}

/// Why a subscriber was refused: the client's credential, or (webhook) the
/// app's answer. `Display` is the answer's message and never contains the
/// credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No credential at all.
    Missing(Kind),
    /// Not the shape the mode expects, or a claim of the wrong type.
    Malformed(Kind, &'static str),
    /// A JWT whose `alg` is none of `HS256`, `RS256`, `ES256` (`none` included).
    Algorithm,
    /// A JWT whose `alg` has no key here, or whose `kid` names a key of
    /// another type, or that has no `kid` where several keys could verify it.
    NoKey(&'static str),
    /// A JWT whose `kid` names no key here, or none without a `kid` (with
    /// `--jwks-url` the set is fetched again before this is final).
    UnknownKey(&'static str),
    /// A JWT without the `iss` of `--jwt-issuer`.
    Issuer,
    /// A JWT whose `aud` is not or does not contain `--jwt-audience`.
    Audience,
    /// The MAC does not verify: wrong secret or altered fields.
    Signature(Kind),
    /// Past `exp` plus the leeway.
    Expired(Kind),
    /// Before the token's `nbf` minus the leeway.
    NotYetValid,
    /// A verified credential names a user that breaks the name rules.
    InvalidUser(Kind),
    /// A requested room the credential does not allow.
    Room(String),
    /// The credential is for another namespace than the path's.
    Tenant,
    /// The webhook app refused with this `4xx`/`5xx` status.
    AppRefused(u16),
    /// The webhook app could not be asked: connection, timeout.
    AppUnavailable(String),
    /// The webhook app answered something that is neither an allowance nor a refusal.
    AppAnswerInvalid(String),
}

impl Denied {
    /// HTTP status: `403` for a room outside the grant, the app's own status
    /// when the webhook refused, `503`/`502` when the webhook app is down or
    /// answered nonsense, `401` otherwise.
    pub fn status(&self) -> u16 {
        match self {
            Denied::Room(_) | Denied::Tenant => 403,
            Denied::AppRefused(status) => *status,
            Denied::AppUnavailable(_) => 503,
            Denied::AppAnswerInvalid(_) => 502,
            _ => 401,
        }
    }

    /// The `error` code of the answer.
    pub fn code(&self) -> &'static str {
        match self.status() {
            401 => "unauthorized",
            403 => "forbidden",
            502 => "auth_failed",
            503 => "auth_unavailable",
            _ => "refused",
        }
    }
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denied::Missing(Kind::Token) => {
                f.write_str("a token is required: Authorization: Bearer <jwt>, or the token query parameter")
            }
            Denied::Missing(Kind::SignedUrl) => {
                f.write_str("a signed URL is required: the user, rooms, exp and sig query parameters")
            }
            Denied::Missing(Kind::AppAnswer) => f.write_str("the application's auth check gave no answer"),
            Denied::Malformed(kind, why) => write!(f, "the {kind} is malformed: {why}"),
            Denied::Algorithm => f.write_str(
                "the token's alg is not accepted: HS256 (with the server's secret), RS256 or ES256 (with its \
                 public keys) only, never none",
            ),
            Denied::NoKey(why) | Denied::UnknownKey(why) => write!(f, "the token cannot be verified: {why}"),
            Denied::Issuer => f.write_str("the token is not from the issuer this server trusts (iss)"),
            Denied::Audience => f.write_str("the token is not for this server (aud)"),
            Denied::Signature(kind) => write!(f, "the {kind}'s signature does not verify"),
            Denied::Expired(kind) => write!(f, "the {kind} has expired"),
            Denied::NotYetValid => f.write_str("the token is not valid yet (nbf is in the future)"),
            Denied::InvalidUser(kind) => write!(
                f,
                "the {kind}'s user is not a valid user id (1-128 bytes without control characters, ',' or '/')"
            ),
            Denied::Room(room) => write!(f, "the credential does not allow room `{room}`"),
            Denied::Tenant => f.write_str(
                "the credential is for another namespace: a tenant's credential opens /t/{tenant}/sse, \
                 one without a tenant /sse",
            ),
            Denied::AppRefused(status) => write!(f, "the application's auth check refused this subscriber ({status})"),
            Denied::AppUnavailable(why) => write!(f, "the application's auth check is unavailable: {why}"),
            Denied::AppAnswerInvalid(why) => write!(f, "the application's auth check answered badly: {why}"),
        }
    }
}

impl std::error::Error for Denied {}

impl Authenticator {
    /// `none`, `jwt` or `signed`, for the start-up log.
    pub fn mode(&self) -> &'static str {
        match self {
            Authenticator::None => "none",
            Authenticator::Jwt(_) => "jwt",
            Authenticator::Signed { .. } => "signed",
            Authenticator::Webhook(_) => "webhook",
        }
    }

    /// Which kind of credential this mode reads (`None` in development mode).
    pub fn kind(&self) -> Option<Kind> {
        match self {
            Authenticator::None => None,
            Authenticator::Jwt(_) => Some(Kind::Token),
            Authenticator::Signed { .. } => Some(Kind::SignedUrl),
            Authenticator::Webhook(_) => Some(Kind::AppAnswer),
        }
    }

    /// Verifies the credential the mode asks for at time `now`; only the
    /// webhook waits (for the app).
    pub async fn authenticate(&self, credentials: &Credentials<'_>, now: SystemTime) -> Result<Grant, Denied> {
        match self {
            // Boxed: an inline exchange with the app would enlarge every
            // connection's task, idle streams included, by its whole state.
            Authenticator::Webhook(hook) => Box::pin(hook.check(&credentials.forwarded)).await,
            Authenticator::Jwt(verifier) => verifier.check(token(credentials)?, now).await,
            local => local.verify(credentials, now),
        }
    }

    /// Verifies a credential without asking anyone: every mode but the
    /// webhook, which has no answer here ([`Authenticator::authenticate`] asks it).
    pub fn verify(&self, credentials: &Credentials<'_>, now: SystemTime) -> Result<Grant, Denied> {
        match self {
            Authenticator::Webhook(_) => Err(Denied::Missing(Kind::AppAnswer)),
            Authenticator::None => Ok(Grant {
                user: credentials.user_id.filter(|u| !u.is_empty()).map(str::to_owned),
                rooms: Rooms::Any,
                tenant: credentials.tenant.map(str::to_owned),
            }),
            Authenticator::Jwt(verifier) => verifier.verify(token(credentials)?, Clock::new(now, verifier.leeway)),
            Authenticator::Signed { key, leeway } => signed::verify(key, credentials, Clock::new(now, *leeway)),
        }
    }

    /// The rotating key set of `--jwks-file` or `--jwks-url`, if there is one:
    /// for `SIGHUP`, the refresher thread and the counters.
    pub fn jwks(&self) -> Option<&Arc<jwks::Jwks>> {
        match self {
            Authenticator::Jwt(verifier) => verifier.jwks.as_ref(),
            _ => None,
        }
    }
}

/// The JWT of a request: the `Authorization: Bearer` header wins over the
/// `token` query parameter (documented in the README).
fn token<'a>(credentials: &Credentials<'a>) -> Result<&'a [u8], Denied> {
    credentials
        .authorization
        .and_then(bearer)
        .filter(|t| !t.is_empty())
        .or(credentials.token.map(str::as_bytes).filter(|t| !t.is_empty()))
        .ok_or(Denied::Missing(Kind::Token))
}

/// The value after `Bearer ` (the scheme is case-insensitive, RFC 9110 §11.1).
fn bearer(authorization: &[u8]) -> Option<&[u8]> {
    let scheme = authorization.get(..7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| authorization[7..].trim_ascii())
}

/// The current time and the allowed skew, in seconds since the Unix epoch.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    now: f64,
    leeway: f64,
}

impl Clock {
    /// `now` with `leeway` of skew allowed either way.
    pub fn new(now: SystemTime, leeway: Duration) -> Clock {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        Clock { now, leeway: leeway.as_secs_f64() }
    }

    /// RFC 7519 §4.1.4: valid only before `exp`.
    fn expired(&self, exp: f64) -> bool {
        self.now >= exp + self.leeway
    }

    /// RFC 7519 §4.1.5: valid from `nbf` on.
    fn before(&self, nbf: f64) -> bool {
        self.now + self.leeway < nbf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic YWxhZGRpbjpvcGVuc2VzYW1l"), None);
        assert_eq!(bearer(b"Bear"), None);
    }

    #[test]
    fn grant_allows_only_its_rooms() {
        let rooms = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let grant = Grant { user: None, rooms: Rooms::Only(rooms(&["a", "b"])), tenant: None };
        assert_eq!(grant.allow(&rooms(&["b", "a"])), Ok(()));
        assert_eq!(grant.allow(&rooms(&["a", "c"])), Err(Denied::Room("c".into())));
        let any = Grant { user: None, rooms: Rooms::Any, tenant: None };
        assert_eq!(any.allow(&rooms(&["anything"])), Ok(()));
    }

    #[test]
    fn grant_opens_its_own_namespace_only() {
        let default = Grant { user: None, rooms: Rooms::Any, tenant: None };
        assert_eq!(default.allow_tenant(None), Ok(()));
        assert_eq!(default.allow_tenant(Some("acme")), Err(Denied::Tenant));
        let acme = Grant { tenant: Some("acme".into()), ..default };
        assert_eq!(acme.allow_tenant(Some("acme")), Ok(()));
        assert_eq!(acme.allow_tenant(Some("globex")), Err(Denied::Tenant));
        assert_eq!(acme.allow_tenant(None), Err(Denied::Tenant));
        assert_eq!((Denied::Tenant.status(), Denied::Tenant.code()), (403, "forbidden"));
    }

    #[test]
    fn none_mode_trusts_user_id() {
        let credentials = Credentials { user_id: Some("alice"), user: Some("mallory"), ..Credentials::default() };
        let grant = Authenticator::None.verify(&credentials, SystemTime::now()).unwrap();
        assert_eq!(grant, Grant { user: Some("alice".into()), rooms: Rooms::Any, tenant: None });
        let credentials = Credentials { tenant: Some("acme"), ..credentials };
        let grant = Authenticator::None.verify(&credentials, SystemTime::now()).unwrap();
        assert_eq!(grant.allow_tenant(Some("acme")), Ok(()), "the path's tenant is trusted");
    }

    #[test]
    fn jwt_from_header_first_then_query() {
        let key = Key::new(b"0123456789abcdef0123456789abcdef");
        let auth = Authenticator::Jwt(Box::new(jwt::Verifier { secret: Some(key), ..jwt::Verifier::default() }));
        let verify = |authorization: Option<&'static [u8]>, token: Option<&'static str>| {
            auth.verify(&Credentials { authorization, token, ..Credentials::default() }, SystemTime::now())
        };
        assert_eq!(verify(None, None), Err(Denied::Missing(Kind::Token)));
        assert_eq!(verify(Some(b"Bearer "), Some("")), Err(Denied::Missing(Kind::Token)));
        let malformed = Err(Denied::Malformed(Kind::Token, "a JWT has three parts separated by dots"));
        assert_eq!(verify(Some(b"Bearer x"), Some("a.b.c")), malformed, "the header wins");
        assert!(matches!(verify(None, Some("a.b.c")), Err(Denied::Malformed(_, why)) if why.contains("header")));
        assert_eq!(verify(Some(b"Bearer "), Some("x")), malformed, "an empty header falls back to the query");
        assert_eq!(verify(Some(b"Basic eDp5"), Some("x")), malformed, "another scheme falls back to the query");
    }

    #[test]
    fn key_debug_hides_the_secret() {
        let key = Key::new(b"0123456789abcdef0123456789abcdef");
        assert_eq!(format!("{key:?}"), "Key(<secret>)");
        let tag = key.sign(b"message");
        assert!(key.verify(b"message", &tag));
        assert!(!key.verify(b"messagE", &tag));
        assert!(!key.verify(b"message", &tag[..31]));
    }
}
