//! `ssekify sign`: mints a presigned subscribe URL for `--auth signed`, so a
//! backend or a shell script can hand one to a browser without reimplementing
//! the [canonical string](crate::auth::signed::canonical).
//!
//! ```text
//! ssekify sign --user alice --rooms lobby,news --ttl 5m --base-url https://push.example/sse
//! ssekify sign --tenant acme --user alice --base-url https://push.example/t/acme/sse
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use crate::api::names::{is_valid_name, MAX_NAME};
use crate::auth::signed;
use crate::config::{ConfigError, SignArgs};
use crate::setup::hmac_key;
use crate::units::parse_duration;

/// The signed URL (or query string) for `args`, valid from `now` for `--ttl`.
pub fn url(args: &SignArgs, now: SystemTime) -> Result<String, ConfigError> {
    let key = hmac_key("sign-secret", args.sign_secret.as_deref(), "signing")?;
    let names = format!("1-{MAX_NAME} bytes without control characters, ',' or '/'");
    if !args.user.is_empty() && !is_valid_name(&args.user) {
        return Err(ConfigError::new("user", format!("a user id is {names}")));
    }
    let rooms: Vec<&str> = if args.rooms.is_empty() { Vec::new() } else { args.rooms.split(',').collect() };
    if rooms.iter().any(|room| !is_valid_name(room)) {
        return Err(ConfigError::new("rooms", format!("takes a comma-separated list of room names, each {names}")));
    }
    let tenant = args.tenant.as_deref().filter(|t| !t.is_empty());
    if tenant.is_some_and(|tenant| !is_valid_name(tenant)) {
        return Err(ConfigError::new("tenant", format!("a tenant name is {names}")));
    }
    let ttl = parse_duration(&args.ttl).map_err(|why| ConfigError::new("ttl", why))?;
    if ttl.as_secs() == 0 {
        return Err(ConfigError::new("ttl", "must be at least 1s (exp is in whole seconds)"));
    }
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    // Whole seconds, rounded up: the URL lives at least --ttl.
    let exp = now + ttl.as_millis().div_ceil(1000) as u64;
    let sig = signed::signature(&key, &args.user, &args.rooms, exp, tenant);

    let mut query = Vec::new();
    if !args.user.is_empty() {
        query.push(format!("user={}", encode(&args.user)));
    }
    if !rooms.is_empty() {
        let list: Vec<String> = rooms.iter().map(|room| encode(room)).collect();
        query.push(format!("rooms={}", list.join(",")));
    }
    query.push(format!("exp={exp}"));
    query.push(format!("sig={sig}"));
    let query = query.join("&");
    Ok(match args.base_url.as_deref().filter(|b| !b.is_empty()) {
        None => query,
        Some(base) if base.ends_with(['?', '&']) => format!("{base}{query}"),
        Some(base) if base.contains('?') => format!("{base}&{query}"),
        Some(base) => format!("{base}?{query}"),
    })
}

/// Percent-encodes all but RFC 3986's unreserved characters, so `+`, `&`,
/// `,` and spaces in a name survive any query decoder.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::{Credentials, Grant, Key, Rooms};
    use crate::http::query;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn args(user: &str, rooms: &str) -> SignArgs {
        SignArgs {
            user: user.into(),
            rooms: rooms.into(),
            ttl: "5m".into(),
            sign_secret: Some(SECRET.into()),
            tenant: None,
            base_url: None,
        }
    }

    #[test]
    fn minted_query_verifies() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let minted = url(&args("ä b+c", "lobby,r&d"), now).unwrap();
        assert!(minted.starts_with("user=%C3%A4%20b%2Bc&rooms=lobby,r%26d&exp=1800000300&sig="), "{minted}");
        let pairs = query::pairs(minted.as_bytes()).unwrap();
        let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let credentials = Credentials {
            user: get("user"),
            rooms: get("rooms"),
            exp: get("exp"),
            sig: get("sig"),
            ..Default::default()
        };
        let clock = crate::auth::Clock::new(now, Duration::ZERO);
        let grant = signed::verify(&Key::new(SECRET.as_bytes()), &credentials, clock).unwrap();
        assert_eq!(
            grant,
            Grant { user: Some("ä b+c".into()), rooms: Rooms::Only(vec!["lobby".into(), "r&d".into()]), tenant: None }
        );
    }

    #[test]
    fn a_tenant_is_signed_and_verifies_on_its_path_only() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut acme = args("alice", "lobby");
        acme.tenant = Some("acme".into());
        let minted = url(&acme, now).unwrap();
        assert!(minted.starts_with("user=alice&rooms=lobby&exp=1800000300&sig="), "no tenant in the query: {minted}");
        let pairs = query::pairs(minted.as_bytes()).unwrap();
        let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let on = |tenant: Option<&str>| {
            let credentials = Credentials {
                user: get("user"),
                rooms: get("rooms"),
                exp: get("exp"),
                sig: get("sig"),
                tenant,
                ..Default::default()
            };
            signed::verify(&Key::new(SECRET.as_bytes()), &credentials, crate::auth::Clock::new(now, Duration::ZERO))
        };
        assert_eq!(on(Some("acme")).unwrap().tenant.as_deref(), Some("acme"));
        assert!(on(None).is_err(), "not on /sse");
        assert!(on(Some("globex")).is_err(), "not on another tenant's path");
        acme.tenant = Some("a/b".into());
        assert!(url(&acme, now).unwrap_err().to_string().starts_with("--tenant:"));
    }

    #[test]
    fn base_url_and_anonymous() {
        let now = UNIX_EPOCH + Duration::from_secs(100);
        let mut anonymous = args("", "");
        anonymous.ttl = "1500ms".into();
        anonymous.base_url = Some("http://h:8080/sse".into());
        let minted = url(&anonymous, now).unwrap();
        assert!(minted.starts_with("http://h:8080/sse?exp=102&sig="), "{minted}");
        anonymous.base_url = Some("http://h/sse?lastEventId=x".into());
        assert!(url(&anonymous, now).unwrap().starts_with("http://h/sse?lastEventId=x&exp=102&sig="));
    }

    #[test]
    fn refusals_name_the_flag() {
        let now = SystemTime::now();
        let flag = |a: SignArgs| url(&a, now).unwrap_err().to_string();
        assert!(flag(args("a/b", "")).starts_with("--user:"));
        assert!(flag(args("", "a,,b")).starts_with("--rooms:"));
        let mut short = args("a", "");
        short.sign_secret = Some("short".into());
        assert!(flag(short.clone()).starts_with("--sign-secret: must be at least 32 bytes (it is 5)"));
        short.sign_secret = None;
        assert!(flag(short).starts_with("--sign-secret: signing needs a secret"));
        let mut instant = args("a", "");
        instant.ttl = "500ms".into();
        assert!(flag(instant).starts_with("--ttl:"));
    }
}
