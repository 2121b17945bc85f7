//! JSON Web Tokens (RFC 7519) signed with HS256 (RFC 7518 §3.2, with
//! `--jwt-secret`), RS256 (§3.3) or ES256 (§3.4) (with `--jwt-public-key`,
//! `--jwks-file` or `--jwks-url`).
//!
//! A token's `alg` only picks among the configured keys, and each key
//! verifies one algorithm ([`PublicKey::alg`]): HS256 only with the secret,
//! RS256 only with an RSA key, ES256 only with a P-256 key. `none` and every
//! other algorithm are refused before any key is looked at, so an HS256
//! token "signed" with the bytes of an RSA public key meets no key that
//! would take them as a secret (the RS/HS confusion of RFC 8725 §2.1).
//!
//! Which public key: a `kid` names a JWKS key, which must be of the type the
//! `alg` needs; a `kid` the set lacks is verified by `--jwt-public-key` if
//! that is of the right type, else it is unknown (and, with `--jwks-url`,
//! the set is fetched again, see [`super::jwks`]). A token without `kid` is
//! verified only when exactly one configured key has the right type. Keys
//! a token points at (`jku`, `x5u`, `jwk` headers) are never fetched or used.
//!
//! Claims read: `sub` (the user, required), `rooms` (allowed rooms, `"*"`
//! for any; absent allows none), `tenant` (the namespace the token is for;
//! absent or null: the default namespace only), `exp` (required), `nbf`
//! (honoured when present), and `iss` and `aud` (a string or an array of
//! strings) when `--jwt-issuer` and `--jwt-audience` are set. Anything else
//! is ignored.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use super::jwks::Jwks;
use super::keys::{Alg, KeySet, PublicKey};
use super::{base64url, Clock, Denied, Grant, Key, Kind, Rooms};

fn malformed(why: &'static str) -> Denied {
    Denied::Malformed(Kind::Token, why)
}

/// The keys and expectations `--auth jwt` verifies tokens with.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    /// `--jwt-secret`: the only key for HS256.
    pub secret: Option<Key>,
    /// `--jwt-public-key`: an RS256 or ES256 key, whatever the token's `kid`.
    pub public_key: Option<PublicKey>,
    /// `--jwks-file` or `--jwks-url`: keys chosen by `kid`.
    pub jwks: Option<Arc<Jwks>>,
    /// `--jwt-issuer`: the `iss` every token must carry.
    pub issuer: Option<String>,
    /// `--jwt-audience`: a value the token's `aud` must be or contain.
    pub audience: Option<String>,
    /// `--auth-leeway`: clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

impl Verifier {
    /// What start-up and `check-config` warn about: public keys without
    /// `--jwt-audience` accept a token the identity provider signed for any
    /// of its applications.
    pub fn warning(&self) -> Option<&'static str> {
        let public = self.public_key.is_some() || self.jwks.is_some();
        (public && self.audience.is_none()).then_some(
            "RS256/ES256 tokens are accepted without --jwt-audience: a token the identity provider issued \
             for any of its applications opens streams here",
        )
    }

    /// Verifies `token` at `now`; a `kid` unknown to a `--jwks-url` set has
    /// the set fetched again (rate-limited) and the token checked once more.
    pub async fn check(&self, token: &[u8], now: SystemTime) -> Result<Grant, Denied> {
        match self.verify(token, Clock::new(now, self.leeway)) {
            Err(Denied::UnknownKey(why)) => match &self.jwks {
                // Boxed: the wait would otherwise enlarge every connection's task.
                Some(jwks) if Box::pin(jwks.refresh_for_unknown_kid()).await => {
                    self.verify(token, Clock::new(SystemTime::now(), self.leeway))
                }
                _ => Err(Denied::UnknownKey(why)),
            },
            other => other,
        }
    }

    /// Verifies a compact-serialised token at `clock` with the keys in use
    /// now: structure, algorithm, key and signature first, then the claims.
    pub fn verify(&self, token: &[u8], clock: Clock) -> Result<Grant, Denied> {
        let mut parts = token.split(|&b| b == b'.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("a JWT has three parts separated by dots"));
        };
        let header = object(header, "the header is not base64url-encoded JSON object")?;
        let alg = header.get("alg").and_then(Value::as_str).and_then(Alg::from_header).ok_or(Denied::Algorithm)?;
        // RFC 7515 §4.1.11: extensions listed in `crit` must be understood; none are.
        if header.contains_key("crit") {
            return Err(malformed("no crit header extensions are supported"));
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(malformed("kid must be a string")),
        };
        let signature = base64url::decode(signature).map_err(|_| malformed("the signature is not base64url"))?;
        let signed = &token[..header_and_payload_len(token)];
        let verified = match alg {
            Alg::Hs256 => match &self.secret {
                Some(secret) => secret.verify(signed, &signature),
                None => return Err(Denied::NoKey("HS256 tokens need --jwt-secret, which this server does not have")),
            },
            Alg::Rs256 | Alg::Es256 => {
                let set = self.jwks.as_ref().map(|jwks| jwks.keys());
                select(alg, kid, set.as_deref(), self.public_key.as_ref())?.verify(signed, &signature)
            }
        };
        if !verified {
            return Err(Denied::Signature(Kind::Token));
        }
        let claims = object(payload, "the payload is not base64url-encoded JSON object")?;
        self.expected(&claims)?;
        grant(&claims, clock)
    }

    /// `--jwt-issuer` and `--jwt-audience`, when set (RFC 7519 §4.1.1, §4.1.3).
    fn expected(&self, claims: &Map<String, Value>) -> Result<(), Denied> {
        if let Some(issuer) = &self.issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
                return Err(Denied::Issuer);
            }
        }
        if let Some(audience) = &self.audience {
            let matches = match claims.get("aud") {
                Some(Value::String(aud)) => aud == audience,
                Some(Value::Array(list)) => list.iter().any(|aud| aud.as_str() == Some(audience)),
                _ => false,
            };
            if !matches {
                return Err(Denied::Audience);
            }
        }
        Ok(())
    }
}

/// The public key that may verify an RS256 or ES256 token with this `kid`.
fn select<'k>(
    alg: Alg,
    kid: Option<&str>,
    set: Option<&'k KeySet>,
    fixed: Option<&'k PublicKey>,
) -> Result<&'k PublicKey, Denied> {
    let fixed = fixed.filter(|key| key.alg() == alg);
    if let Some(kid) = kid {
        return match set.and_then(|set| set.by_kid(kid)) {
            Some(key) if key.alg() == alg => Ok(key),
            Some(_) => Err(Denied::NoKey("the token's kid names a key of another type than its alg")),
            None if set.is_some() => fixed.ok_or(Denied::UnknownKey("the token's kid names no key this server has")),
            None => fixed.ok_or(Denied::UnknownKey("this server has no key for the token's alg")),
        };
    }
    let mut candidates = set.into_iter().flat_map(|set| set.for_alg(alg)).chain(fixed);
    match (candidates.next(), candidates.next()) {
        (Some(key), None) => Ok(key),
        (None, _) => Err(Denied::UnknownKey("this server has no key for the token's alg")),
        (Some(_), Some(_)) => Err(Denied::NoKey("the token has no kid and several keys could verify it")),
    }
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

    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
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

    fn hs256(secret: &[u8]) -> Verifier {
        Verifier { secret: Some(Key::new(secret)), ..Verifier::default() }
    }

    fn check(token: &str) -> Result<Grant, Denied> {
        hs256(SECRET).verify(token.as_bytes(), clock())
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
    fn only_hs256_rs256_and_es256() {
        let payload = segment(&json!({"sub": "a", "exp": NOW + 60}));
        let unsigned = format!("{}.{payload}.", segment(&json!({"alg": "none"})));
        assert_eq!(check(&unsigned), Err(Denied::Algorithm));
        for alg in [json!({"alg": "HS512"}), json!({"alg": "PS256"}), json!({"alg": "hs256"}), json!({"typ": "JWT"})] {
            assert_eq!(check(&sign(&segment(&alg), &payload)), Err(Denied::Algorithm), "{alg}");
        }
        let rs256 = sign(&segment(&json!({"alg": "RS256"})), &payload);
        assert!(matches!(check(&rs256), Err(Denied::UnknownKey(_))), "no RSA key: never the secret");
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
        let other_key = hs256(b"another secret, also 32 bytes....").verify(good.as_bytes(), clock());
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
        assert_eq!(hs256(SECRET).verify(expired.as_bytes(), strict), Err(Denied::Expired(Kind::Token)));
    }

    /// A fresh P-256 key pair and its public key.
    fn es256_key() -> (EcdsaKeyPair, PublicKey) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        (pair, PublicKey::EcP256 { point })
    }

    /// An ES256 token with this `kid` (none when `None`).
    fn es256(pair: &EcdsaKeyPair, kid: Option<&str>, claims: Value) -> String {
        let mut header = json!({"alg": "ES256", "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = kid.into();
        }
        let signed = format!("{}.{}", segment(&header), segment(&claims));
        let signature = pair.sign(&SystemRandom::new(), signed.as_bytes()).unwrap();
        format!("{signed}.{}", base64url::encode(signature.as_ref()))
    }

    /// A verifier whose JWKS holds these keys, through a file as `--jwks-file` reads it.
    fn with_jwks(keys: &[(&str, &PublicKey)]) -> Verifier {
        let jwks: Vec<Value> = keys
            .iter()
            .map(|(kid, key)| match key {
                PublicKey::EcP256 { point } => json!({"kty": "EC", "crv": "P-256", "kid": kid,
                    "x": base64url::encode(&point[1..33]), "y": base64url::encode(&point[33..])}),
                PublicKey::Rsa { n, e } => {
                    json!({"kty": "RSA", "kid": kid, "n": base64url::encode(n), "e": base64url::encode(e)})
                }
            })
            .collect();
        let path = std::env::temp_dir().join(format!("ssekify-jwt-unit-{}-{}.json", std::process::id(), rand_suffix()));
        std::fs::write(&path, json!({ "keys": jwks }).to_string()).unwrap();
        let jwks = Jwks::file(path.clone()).unwrap();
        std::fs::remove_file(path).unwrap();
        Verifier { jwks: Some(Arc::new(jwks)), ..Verifier::default() }
    }

    fn rand_suffix() -> u64 {
        let mut bytes = [0u8; 8];
        ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut bytes).unwrap();
        u64::from_le_bytes(bytes)
    }

    /// The RSA key of RFC 7515 A.2 (nothing here can sign with it: it stands for "a key of another type").
    fn rsa_key() -> PublicKey {
        const N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
        PublicKey::Rsa { n: base64url::decode(N.as_bytes()).unwrap(), e: vec![1, 0, 1] }
    }

    #[test]
    fn es256_keys_are_chosen_by_kid() {
        let (first, first_key) = es256_key();
        let (second, second_key) = es256_key();
        let rsa = rsa_key();
        let verifier = with_jwks(&[("k1", &first_key), ("k2", &second_key), ("r1", &rsa)]);
        let claims = json!({"sub": "alice", "exp": NOW + 60});
        let check = |token: &str| verifier.verify(token.as_bytes(), clock());
        assert_eq!(check(&es256(&first, Some("k1"), claims.clone())).unwrap().user.as_deref(), Some("alice"));
        assert!(check(&es256(&second, Some("k2"), claims.clone())).is_ok());
        assert_eq!(check(&es256(&second, Some("k1"), claims.clone())), Err(Denied::Signature(Kind::Token)));
        assert!(matches!(check(&es256(&first, Some("k9"), claims.clone())), Err(Denied::UnknownKey(_))));
        assert!(matches!(check(&es256(&first, Some("r1"), claims.clone())), Err(Denied::NoKey(_))), "an RSA kid");
        let no_kid = es256(&first, None, claims.clone());
        assert!(matches!(check(&no_kid), Err(Denied::NoKey(why)) if why.contains("several")), "two EC keys");

        // One EC key beside the RSA one: a token without kid is its.
        let single = with_jwks(&[("k1", &first_key), ("r1", &rsa)]);
        assert!(single.verify(no_kid.as_bytes(), clock()).is_ok());
        // --jwt-public-key verifies whatever kid the set lacks.
        let fixed = Verifier { public_key: Some(second_key.clone()), ..with_jwks(&[("k1", &first_key)]) };
        assert!(fixed.verify(es256(&second, Some("rotated"), claims.clone()).as_bytes(), clock()).is_ok());
        assert_eq!(
            fixed.verify(es256(&second, Some("k1"), claims.clone()).as_bytes(), clock()),
            Err(Denied::Signature(Kind::Token)),
            "a kid in the set is that key"
        );
        let pem_only = Verifier { public_key: Some(first_key), ..Verifier::default() };
        assert!(pem_only.verify(es256(&first, None, claims.clone()).as_bytes(), clock()).is_ok());
        // A DER-encoded ECDSA signature is not ES256's r || s.
        let token = es256(&first, None, claims);
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let signature = base64url::decode(signature.as_bytes()).unwrap();
        let der = [&[0x30, 0x44, 0x02, 0x20][..], &signature[..32], &[0x02, 0x20], &signature[32..]].concat();
        let der_token = format!("{signed}.{}", base64url::encode(&der));
        assert_eq!(pem_only.verify(der_token.as_bytes(), clock()), Err(Denied::Signature(Kind::Token)));
    }

    #[test]
    fn hs256_never_uses_a_public_key_as_its_secret() {
        let (pair, ec) = es256_key();
        let rsa = rsa_key();
        let PublicKey::Rsa { n, .. } = &rsa else { unreachable!() };
        let claims = json!({"sub": "mallory", "rooms": ["*"], "exp": NOW + 60});
        let header = segment(&json!({"alg": "HS256"}));
        for material in [n.as_slice(), b"-----BEGIN PUBLIC KEY-----\n"] {
            let signed = format!("{header}.{}", segment(&claims));
            let token = format!("{signed}.{}", base64url::encode(&Key::new(material).sign(signed.as_bytes())));
            let public_only = Verifier { public_key: Some(rsa.clone()), ..with_jwks(&[("e", &ec)]) };
            assert!(matches!(public_only.verify(token.as_bytes(), clock()), Err(Denied::NoKey(_))));
            let with_secret = Verifier { secret: Some(Key::new(SECRET)), ..public_only };
            assert_eq!(with_secret.verify(token.as_bytes(), clock()), Err(Denied::Signature(Kind::Token)));
        }
        // And an ES256 token is not an HS256 one with the secret.
        let token = es256(&pair, None, claims);
        assert!(matches!(hs256(SECRET).verify(token.as_bytes(), clock()), Err(Denied::UnknownKey(_))));
    }

    #[test]
    fn issuer_and_audience_when_set() {
        let verifier = Verifier {
            issuer: Some("https://idp.example/realms/demo".into()),
            audience: Some("ssekify".into()),
            ..hs256(SECRET)
        };
        let check = |claims: Value| verifier.verify(token(claims).as_bytes(), clock());
        let iss = "https://idp.example/realms/demo";
        assert!(check(json!({"sub": "a", "exp": NOW + 60, "iss": iss, "aud": "ssekify"})).is_ok());
        assert!(check(json!({"sub": "a", "exp": NOW + 60, "iss": iss, "aud": ["account", "ssekify"]})).is_ok());
        for (claims, denied) in [
            (json!({"sub": "a", "exp": NOW + 60, "aud": "ssekify"}), Denied::Issuer),
            (json!({"sub": "a", "exp": NOW + 60, "iss": "https://evil.example", "aud": "ssekify"}), Denied::Issuer),
            (json!({"sub": "a", "exp": NOW + 60, "iss": iss}), Denied::Audience),
            (json!({"sub": "a", "exp": NOW + 60, "iss": iss, "aud": "account"}), Denied::Audience),
            (json!({"sub": "a", "exp": NOW + 60, "iss": iss, "aud": ["account", 7]}), Denied::Audience),
        ] {
            assert_eq!(check(claims.clone()), Err(denied), "{claims}");
        }
        // Unset, neither is looked at.
        assert!(check_unset(json!({"sub": "a", "exp": NOW + 60, "iss": 7, "aud": "other"})).is_ok());
    }

    fn check_unset(claims: Value) -> Result<Grant, Denied> {
        check(&token(claims))
    }
}
