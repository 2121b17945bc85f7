//! A JWKS document comes from the identity provider's URL (`--jwks-url`),
//! a PEM key from a file: `keys::parse_jwks` and `PublicKey::from_pem` must
//! never panic, whatever the bytes. A set that is accepted holds 1 to
//! `MAX_JWKS_KEYS` keys, no two with one `kid`, each RSA key 2048 to 8192
//! bits and each P-256 point 65 bytes in uncompressed form; checking a
//! signature with any of them never panics either.
//!
//! Input: a mode byte, then (even) a JWKS document or (odd) a PEM text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssekify::auth::keys::{parse_jwks, PublicKey, MAX_JWKS_KEYS};

fn check(key: &PublicKey) {
    match key {
        PublicKey::Rsa { n, e } => {
            assert!(n.first().is_some_and(|&b| b != 0) && e.first().is_some_and(|&b| b != 0), "no leading zeros");
            assert!((256..=1024).contains(&n.len()), "{} modulus bytes", n.len());
        }
        PublicKey::EcP256 { point } => assert!(point.len() == 65 && point[0] == 4),
    }
    assert!(!key.verify(b"header.payload", &[0u8; 64]));
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 1 {
        if let Ok(key) = PublicKey::from_pem(rest) {
            check(&key);
        }
        return;
    }
    let Ok(parsed) = parse_jwks(rest) else { return };
    let keys = &parsed.set.keys;
    assert!((1..=MAX_JWKS_KEYS).contains(&keys.len()));
    for (i, entry) in keys.iter().enumerate() {
        check(&entry.key);
        if let Some(kid) = &entry.kid {
            assert!(keys[..i].iter().all(|other| other.kid.as_ref() != Some(kid)), "duplicate kid {kid}");
        }
    }
});
