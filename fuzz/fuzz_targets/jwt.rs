//! A JWT comes from the subscriber (`Authorization: Bearer`, `?token=`):
//! `jwt::Verifier::verify` must never panic, whatever the bytes. A token signed with
//! the key never fails on its signature, and one it accepts is exactly
//! `<header>.<payload>.<signature>` in strict base64url, its header says
//! HS256, its `sub` is the granted user and its `exp` has not passed; the
//! same token with one signature bit flipped, or checked with another key,
//! is refused for its signature.
//!
//! Input: a mode byte, then: (0) a token as sent; (1) `<header>.<payload>`
//! segments, signed here; (2) header JSON, LF, payload JSON, encoded and
//! signed here (so the claims are reached without a valid signature to find).
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use ssekify::auth::jwt::Verifier;
use ssekify::auth::{base64url, Clock, Denied, Key, Kind};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const NOW: u64 = 1_800_000_000;
const LEEWAY: u64 = 30;

/// `signed` followed by a dot and its HS256 signature.
fn sign(key: &Key, signed: &[u8]) -> Vec<u8> {
    let mut token = signed.to_vec();
    token.push(b'.');
    token.extend_from_slice(base64url::encode(&key.sign(signed)).as_bytes());
    token
}

fn json(segment: &[u8]) -> Value {
    serde_json::from_slice(&base64url::decode(segment).expect("an accepted segment is base64url"))
        .expect("an accepted segment is JSON")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let key = Key::new(SECRET);
    let clock = Clock::new(UNIX_EPOCH + Duration::from_secs(NOW), Duration::from_secs(LEEWAY));
    let (token, signed_here) = match mode % 3 {
        0 => (rest.to_vec(), false),
        1 => (sign(&key, rest), true),
        _ => {
            let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let (header, payload) = (&rest[..split], rest.get(split + 1..).unwrap_or_default());
            (sign(&key, format!("{}.{}", base64url::encode(header), base64url::encode(payload)).as_bytes()), true)
        }
    };
    let verifier = |key: &Key| Verifier { secret: Some(key.clone()), ..Verifier::default() };
    let result = verifier(&key).verify(&token, clock);
    if signed_here {
        assert_ne!(result, Err(Denied::Signature(Kind::Token)), "signed with the key");
    }
    let Ok(grant) = result else { return };

    let parts: Vec<&[u8]> = token.split(|&b| b == b'.').collect();
    let [header, payload, signature] = parts[..] else { panic!("accepted a token of {} parts", parts.len()) };
    for segment in [header, payload, signature] {
        let decoded = base64url::decode(segment).expect("an accepted segment is base64url");
        assert_eq!(base64url::encode(&decoded).as_bytes(), segment, "one spelling per segment");
    }
    assert_eq!(json(header)["alg"], "HS256");
    let claims = json(payload);
    assert_eq!(claims["sub"].as_str(), grant.user.as_deref(), "the granted user is sub");
    let exp = claims["exp"].as_f64().expect("an accepted token has a numeric exp");
    assert!(exp + LEEWAY as f64 > NOW as f64, "accepted after exp");

    let mut tag = base64url::decode(signature).unwrap();
    tag[0] ^= 1;
    let mut forged = token[..=header.len() + payload.len() + 1].to_vec();
    forged.extend_from_slice(base64url::encode(&tag).as_bytes());
    assert_eq!(verifier(&key).verify(&forged, clock), Err(Denied::Signature(Kind::Token)), "a flipped signature bit");
    let other = Key::new(b"another secret, 32 bytes or more");
    assert_eq!(verifier(&other).verify(&token, clock), Err(Denied::Signature(Kind::Token)), "another key");
});
