//! Presigned subscribe URLs (the seed's "预签名 URL"): a backend that knows
//! `--sign-secret` hands a browser `/sse?user=&rooms=&exp=&sig=`, and
//! `EventSource`, which cannot send headers, opens it as is.
//!
//! `sig` is the unpadded base64url HMAC-SHA256 of the [`canonical`] string:
//!
//! ```text
//! ssekify-sign-v1 LF <user> LF <rooms> LF <exp>
//! ```
//!
//! over the query parameters' decoded values (what `URLSearchParams.get`
//! returns), a missing `user` or `rooms` being empty. The rooms are signed as
//! one comma list, so the signed rooms are exactly the rooms joined: changing,
//! adding or reordering any of them breaks the signature. Names cannot hold
//! a line feed (API.md "Names") and `exp` is digits, so the string is
//! unambiguous.
//!
//! A URL for a tenant's path (`/t/{tenant}/sse`) signs the tenant too, as a
//! fifth line (the decoded path segment):
//!
//! ```text
//! ssekify-sign-v1 LF <user> LF <rooms> LF <exp> LF <tenant>
//! ```
//!
//! The tenant comes from the path, not from the query, so a URL signed for
//! one tenant verifies on that tenant's path only, and one signed without a
//! tenant (four lines, as before tenants existed) on `/sse` only: a four-line
//! string never equals a five-line one, since no field holds a line feed.

use super::{base64url, Clock, Credentials, Denied, Grant, Key, Kind, Rooms};

/// First line of the canonical string: names the scheme, so a signature made
/// for another purpose with the same secret never verifies here, and a later
/// scheme can change the fields.
pub const VERSION: &str = "ssekify-sign-v1";

/// The signed string: version, user, rooms, exp, and the tenant of a
/// tenant's path, joined by `\n`.
pub fn canonical(user: &str, rooms: &str, exp: &str, tenant: Option<&str>) -> String {
    match tenant {
        None => format!("{VERSION}\n{user}\n{rooms}\n{exp}"),
        Some(tenant) => format!("{VERSION}\n{user}\n{rooms}\n{exp}\n{tenant}"),
    }
}

/// `sig` for these fields: unpadded base64url of HMAC-SHA256(secret, canonical).
pub fn signature(key: &Key, user: &str, rooms: &str, exp: u64, tenant: Option<&str>) -> String {
    base64url::encode(&key.sign(canonical(user, rooms, &exp.to_string(), tenant).as_bytes()))
}

fn malformed(why: &'static str) -> Denied {
    Denied::Malformed(Kind::SignedUrl, why)
}

/// Verifies a signed URL's fields at `clock`: signature first, then `exp`.
pub fn verify(key: &Key, credentials: &Credentials<'_>, clock: Clock) -> Result<Grant, Denied> {
    let sig = credentials.sig.filter(|s| !s.is_empty()).ok_or(Denied::Missing(Kind::SignedUrl))?;
    let exp_text = credentials.exp.filter(|e| !e.is_empty()).ok_or(malformed("exp is required"))?;
    let exp: u64 = exp_text
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| exp_text.parse().ok())
        .flatten()
        .ok_or(malformed("exp must be a Unix time in whole seconds"))?;
    let tag = base64url::decode(sig.as_bytes()).map_err(|_| malformed("sig is not unpadded base64url"))?;
    let user = credentials.user.unwrap_or_default();
    let rooms = credentials.rooms.unwrap_or_default();
    if !key.verify(canonical(user, rooms, exp_text, credentials.tenant).as_bytes(), &tag) {
        return Err(Denied::Signature(Kind::SignedUrl));
    }
    if clock.expired(exp as f64) {
        return Err(Denied::Expired(Kind::SignedUrl));
    }
    Ok(Grant {
        user: (!user.is_empty()).then(|| user.to_owned()),
        rooms: Rooms::Only(rooms.split(',').filter(|r| !r.is_empty()).map(str::to_owned).collect()),
        tenant: credentials.tenant.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn key() -> Key {
        Key::new(b"0123456789abcdef0123456789abcdef")
    }

    fn clock() -> Clock {
        Clock::new(UNIX_EPOCH + Duration::from_secs(NOW), Duration::from_secs(30))
    }

    fn check(user: Option<&str>, rooms: Option<&str>, exp: &str, sig: &str) -> Result<Grant, Denied> {
        let credentials = Credentials { user, rooms, exp: Some(exp), sig: Some(sig), ..Credentials::default() };
        verify(&key(), &credentials, clock())
    }

    /// From the `signed_url` fuzzer: the largest `exp` there is, spelled
    /// with leading zeros, is a far future, not an overflow.
    #[test]
    fn the_largest_exp_is_a_far_future() {
        let exp = format!("000000{}", u64::MAX);
        let sig = base64url::encode(&key().sign(canonical("", "lobby", &exp, None).as_bytes()));
        let grant = check(None, Some("lobby"), &exp, &sig).unwrap();
        assert_eq!(grant.rooms, Rooms::Only(vec!["lobby".into()]));
    }

    #[test]
    fn canonical_string() {
        assert_eq!(canonical("alice", "a,b", "1800000000", None), "ssekify-sign-v1\nalice\na,b\n1800000000");
        assert_eq!(canonical("", "", "1", None), "ssekify-sign-v1\n\n\n1");
        assert_eq!(
            canonical("alice", "a,b", "1800000000", Some("acme")),
            "ssekify-sign-v1\nalice\na,b\n1800000000\nacme"
        );
    }

    #[test]
    fn signed_fields_are_granted() {
        let exp = NOW + 300;
        let sig = signature(&key(), "alice", "a,b", exp, None);
        assert_eq!(sig.len(), 43, "32 bytes, unpadded");
        let grant = check(Some("alice"), Some("a,b"), &exp.to_string(), &sig).unwrap();
        assert_eq!(
            grant,
            Grant { user: Some("alice".into()), rooms: Rooms::Only(vec!["a".into(), "b".into()]), tenant: None }
        );
        let anonymous = signature(&key(), "", "", exp, None);
        let grant = check(None, None, &exp.to_string(), &anonymous).unwrap();
        assert_eq!(grant, Grant { user: None, rooms: Rooms::Only(Vec::new()), tenant: None });
        assert!(check(Some(""), Some(""), &exp.to_string(), &anonymous).is_ok(), "absent and empty are the same");
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let exp = NOW + 300;
        let sig = signature(&key(), "alice", "a,b", exp, None);
        let bad = Err(Denied::Signature(Kind::SignedUrl));
        assert_eq!(check(Some("mallory"), Some("a,b"), &exp.to_string(), &sig), bad);
        assert_eq!(check(Some("alice"), Some("a,b,c"), &exp.to_string(), &sig), bad);
        assert_eq!(check(Some("alice"), Some("b,a"), &exp.to_string(), &sig), bad);
        assert_eq!(check(Some("alice"), None, &exp.to_string(), &sig), bad);
        assert_eq!(check(Some("alice"), Some("a,b"), &(exp + 1).to_string(), &sig), bad);
        assert_eq!(check(Some("alice"), Some("a,b"), &format!("0{exp}"), &sig), bad);
        assert_eq!(check(Some("alice\na,b"), Some(""), &exp.to_string(), &sig), bad);
    }

    #[test]
    fn a_tenant_url_opens_that_tenants_path_only() {
        let exp = NOW + 300;
        let exp_text = exp.to_string();
        let at = |sig: &str, tenant: Option<&str>| {
            let credentials = Credentials {
                user: Some("alice"),
                rooms: Some("a"),
                exp: Some(&exp_text),
                sig: Some(sig),
                tenant,
                ..Credentials::default()
            };
            verify(&key(), &credentials, clock())
        };
        let acme = signature(&key(), "alice", "a", exp, Some("acme"));
        assert_eq!(at(&acme, Some("acme")).unwrap().tenant.as_deref(), Some("acme"));
        let bad = Err(Denied::Signature(Kind::SignedUrl));
        assert_eq!(at(&acme, Some("globex")), bad, "another tenant's path");
        assert_eq!(at(&acme, None), bad, "the default namespace's path");
        let plain = signature(&key(), "alice", "a", exp, None);
        assert_eq!(at(&plain, None).unwrap().tenant, None, "URLs signed before tenants keep working on /sse");
        assert_eq!(at(&plain, Some("acme")), bad, "and only there");
    }

    #[test]
    fn expiry_with_leeway() {
        let at = |exp: u64| check(None, None, &exp.to_string(), &signature(&key(), "", "", exp, None));
        assert!(at(NOW - 29).is_ok(), "within the 30 s leeway");
        assert_eq!(at(NOW - 30), Err(Denied::Expired(Kind::SignedUrl)));
        assert_eq!(at(0), Err(Denied::Expired(Kind::SignedUrl)));
    }

    #[test]
    fn malformed_fields() {
        let credentials = Credentials { user: Some("alice"), exp: Some("1"), ..Credentials::default() };
        assert_eq!(verify(&key(), &credentials, clock()), Err(Denied::Missing(Kind::SignedUrl)));
        let sig = signature(&key(), "", "", NOW, None);
        for exp in ["", "-1", "+5", "1e9", "soon", "99999999999999999999999"] {
            assert!(matches!(check(None, None, exp, &sig), Err(Denied::Malformed(..))), "exp {exp:?}");
        }
        assert!(matches!(check(None, None, "1", &format!("{sig}=")), Err(Denied::Malformed(..))), "padding");
        assert!(matches!(check(None, None, "1", "a+b/"), Err(Denied::Malformed(..))), "standard alphabet");
    }
}
