//! JSON Web Tokens (RFC 7519) signed with HS256 (RFC 7518 §3.2), the only
//! algorithm accepted: a token's own `alg` never chooses how it is checked,
//! so `none` and algorithm-confusion tokens are refused outright.
//!
//! Claims read: `sub` (the user, required), `rooms` (allowed rooms, `"*"` for
//! any; absent allows none), `tenant` (the namespace the token is for; absent
//! or null: the default namespace only), `exp` (required), `nbf` (honoured
//! when present). Anything else is ignored.

use serde_json::{Map, Value};

use super::{base64url, Clock, Denied, Grant, Key, Kind, Rooms};

fn malformed(why: &'static str) -> Denied {
    Denied::Malformed(Kind::Token, why)
}

/// Verifies a compact-serialised token at `clock`: structure, algorithm and
/// signature first, then the claims.
pub fn verify(key: &Key, token: &[u8], clock: Clock) -> Result<Grant, Denied> {
    let mut parts = token.split(|&b| b == b'.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("a JWT has three parts separated by dots"));
    };
    let header = object(header, "the header is not base64url-encoded JSON object")?;
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err(Denied::Algorithm);
    }
    // RFC 7515 §4.1.11: extensions listed in `crit` must be understood; none are.
    if header.contains_key("crit") {
        return Err(malformed("no crit header extensions are supported"));
    }
    let signature = base64url::decode(signature).map_err(|_| malformed("the signature is not base64url"))?;
    let signed = &token[..header_and_payload_len(token)];
    if !key.verify(signed, &signature) {
        return Err(Denied::Signature(Kind::Token));
    }
    let claims = object(payload, "the payload is not base64url-encoded JSON object")?;
    grant(&claims, clock)
}

/// Length of `<header>.<payload>`, the signed part: up to the last dot.
fn header_and_payload_len(token: &[u8]) -> usize {
    token.iter().rposition(|&b| b == b'.').unwrap_or(token.len())
}

fn object(segment: &[u8], why: &'static str) -> Result<Map<String, Value>, Denied> {
    let json = base64url::decode(segment).map_err(|_| malformed(why))?;
    match serde_json::from_slice(&json) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(malformed(why)),
    }
}

/// The claims of a token whose signature verified.
fn grant(claims: &Map<String, Value>, clock: Clock) -> Result<Grant, Denied> {
    let exp = match claims.get("exp") {
        None => return Err(malformed("the exp claim is required")),
        Some(exp) => exp.as_f64().ok_or(malformed("exp must be a number of seconds since the epoch"))?,
    };
    let nbf = match claims.get("nbf") {
        None => None,
        Some(nbf) => Some(nbf.as_f64().ok_or(malformed("nbf must be a number of seconds since the epoch"))?),
    };
    if clock.expired(exp) {
        return Err(Denied::Expired(Kind::Token));
    }
    if nbf.is_some_and(|nbf| clock.before(nbf)) {
        return Err(Denied::NotYetValid);
    }
    let user = match claims.get("sub") {
        Some(Value::String(sub)) => sub.clone(),
        Some(_) => return Err(malformed("sub must be a string")),
        None => return Err(malformed("the sub claim (the user) is required")),
    };
    let rooms = match claims.get("rooms") {
        None => Rooms::Only(Vec::new()),
        Some(Value::Array(list)) => Rooms::from_names(list).ok_or(malformed("rooms must be an array of strings"))?,
        Some(_) => return Err(malformed("rooms must be an array of strings")),
    };
    let tenant = match claims.get("tenant") {
        None | Some(Value::Null) => None,
        Some(Value::String(tenant)) => Some(tenant.clone()),
        Some(_) => return Err(malformed("tenant must be a string")),
    };
    Ok(Grant { user: Some(user), rooms, tenant })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn clock() -> Clock {
        Clock::new(UNIX_EPOCH + Duration::from_secs(NOW), Duration::from_secs(30))
    }

    fn segment(value: &Value) -> String {
        base64url::encode(value.to_string().as_bytes())
    }

    /// `<header>.<payload>.<HS256 signature>` from raw segments.
    fn sign(header: &str, payload: &str) -> String {
        let signed = format!("{header}.{payload}");
        let tag = Key::new(SECRET).sign(signed.as_bytes());
        format!("{signed}.{}", base64url::encode(&tag))
    }

    fn token(claims: Value) -> String {
        sign(&segment(&json!({"alg": "HS256", "typ": "JWT"})), &segment(&claims))
    }

    fn check(token: &str) -> Result<Grant, Denied> {
        verify(&Key::new(SECRET), token.as_bytes(), clock())
    }

    #[test]
    fn valid_token_grants_sub_and_rooms() {
        let grant = check(&token(json!({"sub": "alice", "rooms": ["a", "b"], "exp": NOW + 60}))).unwrap();
        assert_eq!(
            grant,
            Grant { user: Some("alice".into()), rooms: Rooms::Only(vec!["a".into(), "b".into()]), tenant: None }
        );
        let grant = check(&token(json!({"sub": "bob", "rooms": ["*"], "exp": NOW + 60, "tenant": "t1"}))).unwrap();
        assert_eq!(grant.rooms, Rooms::Any);
        assert_eq!(grant.tenant.as_deref(), Some("t1"));
        let grant = check(&token(json!({"sub": "bob", "exp": NOW + 60, "tenant": null}))).unwrap();
        assert_eq!(grant.tenant, None, "null is the default namespace");
        let grant = check(&token(json!({"sub": "carol", "exp": (NOW + 60) as f64 + 0.5}))).unwrap();
        assert_eq!(grant.rooms, Rooms::Only(Vec::new()), "no rooms claim allows no rooms");
    }

    #[test]
    fn wrong_segment_count() {
        let good = token(json!({"sub": "a", "exp": NOW + 60}));
        for bad in ["", "abc", "a.b", "a.b.c.d", &format!("{good}.")] {
            assert_eq!(check(bad), Err(malformed("a JWT has three parts separated by dots")), "{bad:?}");
        }
    }

    #[test]
    fn bad_base64_and_bad_json() {
        let payload = segment(&json!({"sub": "a", "exp": NOW + 60}));
        let header = segment(&json!({"alg": "HS256"}));
        assert!(matches!(check(&sign("e30=", &payload)), Err(Denied::Malformed(..))), "padded header");
        assert!(matches!(check(&sign("not json", &payload)), Err(Denied::Malformed(..))));
        assert!(matches!(check(&sign(&base64url::encode(b"{\"alg\":"), &payload)), Err(Denied::Malformed(..))));
        assert!(matches!(check(&sign(&base64url::encode(b"[\"HS256\"]"), &payload)), Err(Denied::Malformed(..))));
        assert!(matches!(check(&sign(&header, "%%%")), Err(Denied::Malformed(..))));
        assert!(matches!(check(&sign(&header, &base64url::encode(b"{\"sub\":\"a\""))), Err(Denied::Malformed(..))));
        assert!(matches!(check(&sign(&header, &base64url::encode(b"\"a string\""))), Err(Denied::Malformed(..))));
        let good = token(json!({"sub": "a", "exp": NOW + 60}));
        let bad_signature = format!("{}.!!!", &good[..good.rfind('.').unwrap()]);
        assert_eq!(check(&bad_signature), Err(malformed("the signature is not base64url")));
    }

    #[test]
    fn claims_of_the_wrong_type() {
        assert!(matches!(check(&token(json!({"sub": "a", "exp": "1900000000"}))), Err(Denied::Malformed(..))));
        assert!(matches!(check(&token(json!({"sub": "a", "exp": null}))), Err(Denied::Malformed(..))));
        assert!(matches!(check(&token(json!({"sub": "a"}))), Err(Denied::Malformed(..))));
        assert!(matches!(check(&token(json!({"sub": "a", "exp": NOW + 60, "nbf": "x"}))), Err(Denied::Malformed(..))));
        assert!(matches!(check(&token(json!({"sub": 7, "exp": NOW + 60}))), Err(Denied::Malformed(..))));
        assert!(matches!(check(&token(json!({"exp": NOW + 60}))), Err(Denied::Malformed(..))));
        assert!(matches!(
            check(&token(json!({"sub": "a", "exp": NOW + 60, "rooms": "a"}))),
            Err(Denied::Malformed(..))
        ));
        assert!(matches!(
            check(&token(json!({"sub": "a", "exp": NOW + 60, "rooms": [1]}))),
            Err(Denied::Malformed(..))
        ));
        assert_eq!(
            check(&token(json!({"sub": "a", "exp": NOW + 60, "tenant": ["t1"]}))),
            Err(malformed("tenant must be a string"))
        );
    }

    #[test]
    fn only_hs256() {
        let payload = segment(&json!({"sub": "a", "exp": NOW + 60}));
        let unsigned = format!("{}.{payload}.", segment(&json!({"alg": "none"})));
        assert_eq!(check(&unsigned), Err(Denied::Algorithm));
        for alg in [json!({"alg": "HS512"}), json!({"alg": "RS256"}), json!({"alg": "hs256"}), json!({"typ": "JWT"})] {
            assert_eq!(check(&sign(&segment(&alg), &payload)), Err(Denied::Algorithm), "{alg}");
        }
        let critical = segment(&json!({"alg": "HS256", "crit": ["exp"]}));
        assert!(matches!(check(&sign(&critical, &payload)), Err(Denied::Malformed(..))));
    }

    #[test]
    fn signature_covers_header_and_payload() {
        let good = token(json!({"sub": "alice", "exp": NOW + 60}));
        let (signed, tag) = good.rsplit_once('.').unwrap();
        let (header, _) = signed.split_once('.').unwrap();
        let forged = format!("{header}.{}.{tag}", segment(&json!({"sub": "mallory", "exp": NOW + 60})));
        assert_eq!(check(&forged), Err(Denied::Signature(Kind::Token)));
        let other_key = verify(&Key::new(b"another secret, also 32 bytes...."), good.as_bytes(), clock());
        assert_eq!(other_key, Err(Denied::Signature(Kind::Token)));
        assert_eq!(check(&format!("{signed}.")), Err(Denied::Signature(Kind::Token)), "empty signature");
    }

    #[test]
    fn exp_and_nbf_with_leeway() {
        assert!(check(&token(json!({"sub": "a", "exp": NOW - 29}))).is_ok(), "within the 30 s leeway");
        assert_eq!(check(&token(json!({"sub": "a", "exp": NOW - 30}))), Err(Denied::Expired(Kind::Token)));
        assert_eq!(check(&token(json!({"sub": "a", "exp": NOW - 3600}))), Err(Denied::Expired(Kind::Token)));
        assert!(check(&token(json!({"sub": "a", "exp": NOW + 60, "nbf": NOW + 30}))).is_ok(), "within the leeway");
        assert_eq!(check(&token(json!({"sub": "a", "exp": NOW + 600, "nbf": NOW + 31}))), Err(Denied::NotYetValid));
        let strict = Clock::new(UNIX_EPOCH + Duration::from_secs(NOW), Duration::ZERO);
        let expired = token(json!({"sub": "a", "exp": NOW}));
        assert_eq!(verify(&Key::new(SECRET), expired.as_bytes(), strict), Err(Denied::Expired(Kind::Token)));
    }
}
