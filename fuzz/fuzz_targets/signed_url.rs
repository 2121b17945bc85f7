//! A presigned URL's fields come from the subscriber's query string, decoded
//! as the subscribe route decodes them (`query::pairs`, the last value of a
//! name wins): `signed::verify` must never panic. URL fields signed with the
//! key never fail on their signature; a grant is exactly the signed user,
//! rooms and tenant, and its `exp` has not passed. A signature opens only the
//! fields it was made for: whenever another set of fields verifies with it,
//! and their names are valid (as the route checks), the grants are the same.
//!
//! Input: one or two query strings separated by `#`, read with the fields
//! `user`, `rooms`, `exp`, `sig` and (standing in for the path's tenant)
//! `tenant`. Without a `sig`, the first is signed here; the second is
//! checked with the first's signature.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use ssekify::auth::{base64url, signed, Clock, Credentials, Denied, Grant, Key, Kind, Rooms};
use ssekify::http::query;
use ssekify::namespace::valid_name;

const NOW: u64 = 1_800_000_000;
const LEEWAY: u64 = 30;

/// The last value of `name`, as the routes read parameters.
fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn credentials<'a>(pairs: &'a [(String, String)], sig: Option<&'a str>) -> Credentials<'a> {
    Credentials {
        user: param(pairs, "user"),
        rooms: param(pairs, "rooms"),
        exp: param(pairs, "exp"),
        sig,
        tenant: param(pairs, "tenant"),
        ..Credentials::default()
    }
}

/// What the subscribe route would let through: valid user, room and tenant names.
fn valid(grant: &Grant) -> bool {
    let Rooms::Only(rooms) = &grant.rooms else { return false };
    grant.user.as_deref().is_none_or(valid_name)
        && rooms.iter().all(|room| valid_name(room))
        && grant.tenant.as_deref().is_none_or(valid_name)
}

fuzz_target!(|data: &[u8]| {
    let key = Key::new(b"0123456789abcdef0123456789abcdef");
    let clock = Clock::new(UNIX_EPOCH + Duration::from_secs(NOW), Duration::from_secs(LEEWAY));
    let (first, second) = match data.iter().position(|&b| b == b'#') {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let Ok(pairs) = query::pairs(first) else { return };
    let fields = credentials(&pairs, None);
    let user = fields.user.unwrap_or_default();
    let rooms = fields.rooms.unwrap_or_default();
    let exp = fields.exp.unwrap_or_default();
    let made_here = base64url::encode(&key.sign(signed::canonical(user, rooms, exp, fields.tenant).as_bytes()));
    let sig = param(&pairs, "sig").unwrap_or(&made_here);
    let result = signed::verify(&key, &Credentials { sig: Some(sig), ..fields }, clock);
    if sig == made_here {
        assert_ne!(result, Err(Denied::Signature(Kind::SignedUrl)), "signed with the key");
    }
    let Ok(grant) = result else { return };
    assert_eq!(grant.user.as_deref(), Some(user).filter(|u| !u.is_empty()), "the signed user");
    assert_eq!(grant.rooms, Rooms::Only(rooms.split(',').filter(|r| !r.is_empty()).map(str::to_owned).collect()));
    assert_eq!(grant.tenant.as_deref(), fields.tenant, "the signed tenant");
    let exp: u64 = exp.parse().expect("an accepted exp is a whole number");
    assert!(exp.saturating_add(LEEWAY) > NOW, "accepted after exp");

    let Some(Ok(other_pairs)) = second.map(query::pairs) else { return };
    let other = credentials(&other_pairs, Some(sig));
    if let Ok(other_grant) = signed::verify(&key, &other, clock) {
        if valid(&grant) && valid(&other_grant) {
            assert_eq!(other_grant, grant, "one signature, two sets of fields");
        }
    }
});
