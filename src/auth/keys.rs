//! Public keys for RS256 and ES256 tokens: [`PublicKey`] read from a PEM file
//! (`--jwt-public-key`) or from a JSON Web Key Set ([`parse_jwks`], RFC 7517),
//! and the [`KeySet`] a token's `kid` selects from.
//!
//! The verification itself is `ring`'s (RSASSA-PKCS1-v1_5 with SHA-256 for
//! 2048 to 8192-bit moduli, ECDSA P-256 with SHA-256 over JOSE's fixed-size
//! `r || s`). What is written here is only the unwrapping of the key
//! containers: the few DER elements of a SubjectPublicKeyInfo (RFC 5280
//! §4.1.2.7) or a PKCS #1 `RSAPublicKey` (RFC 8017 §A.1.1), and the JWK
//! members of RFC 7518 §6. No arithmetic on the key happens here.
//!
//! A key's type decides the only algorithm it verifies, so a token's `alg`
//! never turns a public key into an HMAC secret (the classic RS/HS
//! confusion); symmetric JWKs (`oct`) are never loaded.

use std::fmt;

use ring::signature::{RsaPublicKeyComponents, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::SubjectPublicKeyInfoDer;
use serde_json::{Map, Value};

use super::base64url;

/// Most keys one JWKS document may hold: identity providers publish two to
/// a dozen (current, next, an encryption key); hundreds are a mistake or an
/// attack on the linear `kid` lookup, and the document is refused.
pub const MAX_JWKS_KEYS: usize = 100;

/// Largest JWKS document read, from a file or a URL: a dozen RSA keys with
/// their certificate chains (`x5c`) take tens of KiB.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Largest PEM file read for `--jwt-public-key`: an 8192-bit RSA key is
/// about 1.4 KiB of PEM; this leaves room for comments around it.
const MAX_PEM_BYTES: usize = 64 * 1024;

/// RSA moduli ring verifies for RS256 (RFC 7518 §3.3 requires 2048 bits at least).
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// DER tags used below (X.690 §8).
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const NULL: u8 = 0x05;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
/// rsaEncryption, 1.2.840.113549.1.1.1 (RFC 8017 §A.1).
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// id-ecPublicKey, 1.2.840.10045.2.1 (RFC 5480 §2.1.1).
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// secp256r1 (P-256), 1.2.840.10045.3.1.7 (RFC 5480 §2.1.1.1).
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// The JWS algorithms ssekify verifies (RFC 7518 §3.1); anything else,
/// `none` included, is refused before any key is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// HMAC-SHA256 with `--jwt-secret`.
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, with an RSA public key.
    Rs256,
    /// ECDSA P-256 with SHA-256, with an EC P-256 public key.
    Es256,
}

impl Alg {
    /// The algorithm a token's `alg` names; exact and case-sensitive (RFC 7515 §4.1.1).
    pub fn from_header(alg: &str) -> Option<Alg> {
        match alg {
            "HS256" => Some(Alg::Hs256),
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            _ => None,
        }
    }

    /// The `alg` value, for logs and messages.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }
}

/// A public key that verifies exactly one algorithm, its [`PublicKey::alg`].
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// RS256: modulus and public exponent, big-endian without leading zeros (as ring takes them).
    Rsa {
        /// The modulus.
        n: Vec<u8>,
        /// The public exponent.
        e: Vec<u8>,
    },
    /// ES256: the uncompressed P-256 point `04 || x || y` (SEC 1 §2.3.3).
    EcP256 {
        /// 65 bytes.
        point: Vec<u8>,
    },
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublicKey::Rsa { n, .. } => write!(f, "RSA {}-bit", bits(n)),
            PublicKey::EcP256 { .. } => f.write_str("EC P-256"),
        }
    }
}

/// Significant bits of a big-endian number without leading zero bytes.
fn bits(n: &[u8]) -> usize {
    n.first().map_or(0, |first| n.len() * 8 - first.leading_zeros() as usize)
}

/// `bytes` without its leading zero bytes (DER integers carry one when the
/// top bit is set; some JWKS writers do too).
fn unsigned(bytes: &[u8]) -> &[u8] {
    &bytes[bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len())..]
}

impl PublicKey {
    /// The only algorithm this key verifies.
    pub fn alg(&self) -> Alg {
        match self {
            PublicKey::Rsa { .. } => Alg::Rs256,
            PublicKey::EcP256 { .. } => Alg::Es256,
        }
    }

    /// True when `signature` is this key's signature of `message`: PKCS #1
    /// v1.5 for RSA, the 64-byte `r || s` of RFC 7518 §3.4 for P-256 (a DER
    /// `ECDSA-Sig-Value` is not a JWS signature and does not verify).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            PublicKey::Rsa { n, e } => {
                RsaPublicKeyComponents { n, e }.verify(&RSA_PKCS1_2048_8192_SHA256, message, signature).is_ok()
            }
            PublicKey::EcP256 { point } => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).verify(message, signature).is_ok()
            }
        }
    }

    /// An RSA key from its modulus and exponent, refused unless RS256 may
    /// use it (2048 to 8192 bits, an odd exponent of at least 3).
    fn rsa(n: &[u8], e: &[u8]) -> Result<PublicKey, String> {
        let (n, e) = (unsigned(n), unsigned(e));
        if !RSA_BITS.contains(&bits(n)) {
            return Err(format!("an RSA modulus of {} bits (RS256 takes 2048 to 8192)", bits(n)));
        }
        let odd = e.last().is_some_and(|last| last & 1 == 1);
        if !odd || e.len() > 4 || (e.len() == 1 && e[0] < 3) {
            return Err("an RSA public exponent that is not an odd number from 3 to 2^32".into());
        }
        Ok(PublicKey::Rsa { n: n.to_vec(), e: e.to_vec() })
    }

    /// A P-256 key from its coordinates, each 32 bytes (RFC 7518 §6.2.1.2).
    fn p256(x: &[u8], y: &[u8]) -> Result<PublicKey, String> {
        if x.len() != 32 || y.len() != 32 {
            return Err("P-256 coordinates x and y must be 32 bytes each".into());
        }
        let mut point = Vec::with_capacity(65);
        point.push(0x04);
        point.extend_from_slice(x);
        point.extend_from_slice(y);
        Ok(PublicKey::EcP256 { point })
    }

    /// The key of a PEM text: a SubjectPublicKeyInfo (`BEGIN PUBLIC KEY`,
    /// what `openssl pkey -pubout` writes) of an RSA or P-256 key, or a
    /// PKCS #1 `BEGIN RSA PUBLIC KEY`.
    pub fn from_pem(pem: &[u8]) -> Result<PublicKey, String> {
        if pem.len() > MAX_PEM_BYTES {
            return Err(format!("is over {MAX_PEM_BYTES} bytes, too large for a public key"));
        }
        // rustls' PEM reader decodes SubjectPublicKeyInfo sections only; the
        // PKCS #1 label is renamed so it decodes the same base64 body.
        let text = String::from_utf8_lossy(pem);
        let pkcs1 = text.contains("-----BEGIN RSA PUBLIC KEY-----");
        let text = if pkcs1 { text.replace("RSA PUBLIC KEY-----", "PUBLIC KEY-----") } else { text.into_owned() };
        let der = SubjectPublicKeyInfoDer::from_pem_slice(text.as_bytes()).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no PEM public key (BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY)".to_owned()
            }
            other => format!("is not valid PEM ({other})"),
        })?;
        if pkcs1 {
            rsa_public_key(der.as_ref())
        } else {
            spki(der.as_ref())
        }
    }
}

/// One DER element at the start of `input`: (tag, contents, what follows).
/// Definite lengths up to 64 KiB in their shortest form only (DER, X.690 §10.1).
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81 => {
            let (&len, rest) = rest.split_first()?;
            (len >= 0x80).then_some((usize::from(len), rest))?
        }
        0x82 => {
            let len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
            (len >= 0x100).then_some((len, &rest[2..]))?
        }
        _ => return None,
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The contents of the element at the start of `input` if it has `tag`.
fn expect(tag: u8, input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (found, contents, rest) = element(input)?;
    (found == tag).then_some((contents, rest))
}

/// SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey BIT STRING }
fn spki(der: &[u8]) -> Result<PublicKey, String> {
    let malformed = || "is not a DER SubjectPublicKeyInfo".to_owned();
    let (info, rest) = expect(SEQUENCE, der).ok_or_else(malformed)?;
    let (algorithm, info) = expect(SEQUENCE, info).ok_or_else(malformed)?;
    let (bits, tail) = expect(BIT_STRING, info).ok_or_else(malformed)?;
    if !rest.is_empty() || !tail.is_empty() {
        return Err(malformed());
    }
    // The key's bytes follow the count of unused bits, which is 0 for both kinds.
    let key = match bits.split_first() {
        Some((0, key)) => key,
        _ => return Err(malformed()),
    };
    let (oid, parameters) = expect(OID, algorithm).ok_or_else(malformed)?;
    match oid {
        OID_RSA if matches!(expect(NULL, parameters), Some((&[], &[]))) || parameters.is_empty() => rsa_public_key(key),
        OID_EC => match expect(OID, parameters) {
            Some((OID_P256, &[])) => match key {
                [0x04, xy @ ..] if xy.len() == 64 => PublicKey::p256(&xy[..32], &xy[32..]),
                _ => Err("holds a P-256 point that is not uncompressed (04 || x || y)".into()),
            },
            _ => Err("holds an EC key on another curve than P-256 (ES256 is P-256 only)".into()),
        },
        _ => Err("holds a key that is neither RSA nor EC (RS256 and ES256 are supported)".into()),
    }
}

/// RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
fn rsa_public_key(der: &[u8]) -> Result<PublicKey, String> {
    let malformed = || "is not a DER RSA public key".to_owned();
    let (sequence, rest) = expect(SEQUENCE, der).ok_or_else(malformed)?;
    let (n, sequence) = expect(INTEGER, sequence).ok_or_else(malformed)?;
    let (e, tail) = expect(INTEGER, sequence).ok_or_else(malformed)?;
    if !rest.is_empty() || !tail.is_empty() {
        return Err(malformed());
    }
    PublicKey::rsa(n, e).map_err(|why| format!("holds {why}"))
}

/// A key of a key set, with the `kid` tokens name it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The JWK's `kid`, if it has one.
    pub kid: Option<String>,
    /// The key.
    pub key: PublicKey,
}

/// The keys of one JWKS document, in its order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    /// At most [`MAX_JWKS_KEYS`].
    pub keys: Vec<Entry>,
}

/// A JWKS document read: its usable keys, and why the others were left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The signing keys ssekify can use.
    pub set: KeySet,
    /// One line per JWK left out (an encryption key, another algorithm or
    /// curve, a broken member), for the log: an identity provider's set
    /// often holds such keys beside the signing key, and they must not
    /// make the whole set unusable.
    pub skipped: Vec<String>,
}

impl KeySet {
    /// The key named `kid`, whatever its type.
    pub fn by_kid(&self, kid: &str) -> Option<&PublicKey> {
        self.keys.iter().find(|entry| entry.kid.as_deref() == Some(kid)).map(|entry| &entry.key)
    }

    /// The keys that verify `alg`.
    pub fn for_alg(&self, alg: Alg) -> impl Iterator<Item = &PublicKey> {
        self.keys.iter().map(|entry| &entry.key).filter(move |key| key.alg() == alg)
    }

    /// The `kid`s, for the log line of a load (`-` for a key without one).
    pub fn kids(&self) -> String {
        let kids: Vec<&str> = self.keys.iter().map(|entry| entry.kid.as_deref().unwrap_or("-")).collect();
        kids.join(",")
    }
}

/// Reads a JWKS document (RFC 7517 §5): `{"keys": [JWK, …]}`. RSA keys
/// (`kty` `RSA`, `n` and `e`) and P-256 keys (`kty` `EC`, `crv` `P-256`,
/// `x` and `y`), all base64url, are kept when they are for signatures (`use`
/// absent or `sig`) with `alg` absent or the one their type verifies; other
/// keys are skipped with a reason. A document that is not such JSON, holds
/// more than [`MAX_JWKS_KEYS`] keys or no usable key at all is refused:
/// whoever loads it keeps the keys it had.
pub fn parse_jwks(document: &[u8]) -> Result<Parsed, String> {
    if document.len() > MAX_JWKS_BYTES {
        return Err(format!("the document is over {MAX_JWKS_BYTES} bytes"));
    }
    let Ok(Value::Object(mut document)) = serde_json::from_slice::<Value>(document) else {
        return Err("the document is not a JSON object".into());
    };
    let Some(Value::Array(jwks)) = document.remove("keys") else {
        return Err("the document has no \"keys\" array".into());
    };
    if jwks.len() > MAX_JWKS_KEYS {
        return Err(format!("the document has {} keys, more than the {MAX_JWKS_KEYS} accepted", jwks.len()));
    }
    let mut parsed = Parsed { set: KeySet::default(), skipped: Vec::new() };
    for (index, jwk) in jwks.iter().enumerate() {
        let Value::Object(jwk) = jwk else {
            return Err(format!("key {index} is not a JSON object"));
        };
        let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_owned);
        let name = kid.as_deref().map_or_else(|| format!("key {index}"), |kid| format!("key `{kid}`"));
        match jwk_key(jwk) {
            Ok(_) if kid.is_some() && parsed.set.by_kid(kid.as_deref().unwrap_or_default()).is_some() => {
                parsed.skipped.push(format!("{name}: a second key with this kid"));
            }
            Ok(key) => parsed.set.keys.push(Entry { kid, key }),
            Err(why) => parsed.skipped.push(format!("{name}: {why}")),
        }
    }
    if parsed.set.keys.is_empty() {
        let why = parsed.skipped.first().map_or_else(String::new, |first| format!(" ({first})"));
        return Err(format!("the document has no RS256 or ES256 signing key{why}"));
    }
    Ok(parsed)
}

/// The key of one JWK, or why it is not used.
fn jwk_key(jwk: &Map<String, Value>) -> Result<PublicKey, String> {
    let text = |member: &str| -> Result<Option<&str>, String> {
        match jwk.get(member) {
            None => Ok(None),
            Some(Value::String(value)) => Ok(Some(value)),
            Some(_) => Err(format!("{member} is not a string")),
        }
    };
    let bytes = |member: &str| -> Result<Vec<u8>, String> {
        let value = text(member)?.ok_or_else(|| format!("no {member}"))?;
        base64url::decode(value.as_bytes()).map_err(|_| format!("{member} is not unpadded base64url"))
    };
    if text("kid").is_err() {
        return Err("kid is not a string".into());
    }
    if let Some(usage) = text("use")?.filter(|usage| *usage != "sig") {
        return Err(format!("for use `{usage}`, not signatures"));
    }
    let alg = text("alg")?;
    let key = match text("kty")? {
        Some("RSA") => PublicKey::rsa(&bytes("n")?, &bytes("e")?)?,
        Some("EC") => match text("crv")? {
            Some("P-256") => PublicKey::p256(&bytes("x")?, &bytes("y")?)?,
            other => return Err(format!("an EC key on curve {} (ES256 is P-256 only)", other.unwrap_or("(none)"))),
        },
        Some(other) => return Err(format!("kty `{other}` (RSA and EC keys are used)")),
        None => return Err("no kty".into()),
    };
    match alg {
        Some(alg) if alg != key.alg().name() => {
            Err(format!("for alg `{alg}` (its type verifies {})", key.alg().name()))
        }
        _ => Ok(key),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The RSA key of RFC 7515 Appendix A.2 (JWS with RS256): a 2048-bit modulus.
    const N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
    /// Its signature of [`A2_SIGNED`].
    const A2_SIGNATURE: &str = "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
    /// `<header>.<payload>` of RFC 7515 A.2.
    const A2_SIGNED: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
    /// The P-256 key of RFC 7515 Appendix A.3 (JWS with ES256).
    const X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    fn rsa_jwk(kid: &str) -> Value {
        json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": N, "e": "AQAB"})
    }

    fn ec_jwk(kid: &str) -> Value {
        json!({"kty": "EC", "kid": kid, "crv": "P-256", "x": X, "y": Y})
    }

    fn parse(document: Value) -> Result<Parsed, String> {
        parse_jwks(document.to_string().as_bytes())
    }

    #[test]
    fn jwks_rsa_n_and_e_are_base64url_big_endian() {
        let parsed = parse(json!({"keys": [rsa_jwk("r1")]})).unwrap();
        let PublicKey::Rsa { n, e } = &parsed.set.keys[0].key else { panic!("{parsed:?}") };
        assert_eq!(*n, base64url::decode(N.as_bytes()).unwrap());
        assert_eq!(e, &[1, 0, 1], "AQAB is 65537");
        assert_eq!(format!("{:?}", parsed.set.keys[0].key), "RSA 2048-bit");
        // A leading zero byte (a signed-integer habit of some writers) is dropped.
        let padded = base64url::encode(&[[0u8].as_slice(), n].concat());
        let parsed = parse(json!({"keys": [{"kty": "RSA", "kid": "z", "n": padded, "e": "AQAB"}]})).unwrap();
        assert_eq!(parsed.set.keys[0].key, PublicKey::Rsa { n: n.clone(), e: e.clone() });
    }

    #[test]
    fn rs256_verifies_the_rfc_7515_vector() {
        let key = parse(json!({"keys": [rsa_jwk("r")]})).unwrap().set.keys.remove(0).key;
        let signature = base64url::decode(A2_SIGNATURE.as_bytes()).unwrap();
        assert!(key.verify(A2_SIGNED.as_bytes(), &signature));
        assert!(!key.verify(A3_SIGNED.as_bytes(), &signature), "another message");
        let mut flipped = signature.clone();
        flipped[10] ^= 1;
        assert!(!key.verify(A2_SIGNED.as_bytes(), &flipped));
    }

    #[test]
    fn jwks_ec_x_and_y_on_p256_make_an_uncompressed_point() {
        let parsed = parse(json!({"keys": [ec_jwk("e1")]})).unwrap();
        let PublicKey::EcP256 { point } = &parsed.set.keys[0].key else { panic!("{parsed:?}") };
        assert_eq!(point.len(), 65);
        assert_eq!(point[0], 0x04);
        assert_eq!(point[1..33], base64url::decode(X.as_bytes()).unwrap());
        assert_eq!(point[33..], base64url::decode(Y.as_bytes()).unwrap());
        assert_eq!(parsed.set.keys[0].key.alg(), Alg::Es256);
    }

    #[test]
    fn jwks_keeps_signing_keys_and_skips_the_rest_with_a_reason() {
        let document = json!({"keys": [
            rsa_jwk("sig"),
            {"kty": "RSA", "kid": "enc", "use": "enc", "alg": "RSA-OAEP", "n": N, "e": "AQAB"},
            {"kty": "RSA", "kid": "rs512", "alg": "RS512", "n": N, "e": "AQAB"},
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": X, "y": Y},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "short", "crv": "P-256", "x": "AAAA", "y": Y},
            {"kty": "RSA", "kid": "small", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "padded", "n": format!("{N}=="), "e": "AQAB"},
            ec_jwk("sig"),
            ec_jwk("ec"),
            {"kty": "EC", "crv": "P-256", "x": X, "y": Y, "alg": "ES256"},
        ]});
        let parsed = parse(document).unwrap();
        assert_eq!(parsed.set.kids(), "sig,ec,-");
        assert_eq!(parsed.skipped.len(), 8, "{:?}", parsed.skipped);
        let skipped = parsed.skipped.join("\n");
        for reason in
            ["`enc`: for use `enc`", "RS512", "P-384", "kty `oct`", "32 bytes", "bits", "base64url", "second key"]
        {
            assert!(skipped.contains(reason), "{reason}: {skipped}");
        }
        assert_eq!(parsed.set.by_kid("sig").map(PublicKey::alg), Some(Alg::Rs256), "the first of a kid wins");
        assert_eq!(parsed.set.for_alg(Alg::Es256).count(), 2);
    }

    #[test]
    fn jwks_documents_that_are_refused() {
        for (document, why) in [
            (json!([]), "not a JSON object"),
            (json!({"keys": {}}), "no \"keys\" array"),
            (json!({"keys": []}), "no RS256 or ES256"),
            (json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}), "no RS256 or ES256"),
            (json!({"keys": ["RSA"]}), "not a JSON object"),
            (json!({"keys": vec![ec_jwk("k"); MAX_JWKS_KEYS + 1]}), "more than the 100"),
        ] {
            let err = parse(document).unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
        }
        assert!(parse_jwks(&vec![b' '; MAX_JWKS_BYTES + 1]).unwrap_err().contains("over"));
    }

    /// `<header>.<payload>` of RFC 7515 Appendix A.3 (JWS with ES256).
    const A3_SIGNED: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
    const A3_SIGNATURE: &str = "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";

    #[test]
    fn es256_signatures_are_jose_r_and_s_not_der() {
        let key = PublicKey::p256(&base64url::decode(X.as_bytes()).unwrap(), &base64url::decode(Y.as_bytes()).unwrap())
            .unwrap();
        let signature = base64url::decode(A3_SIGNATURE.as_bytes()).unwrap();
        assert_eq!(signature.len(), 64, "r || s, 32 bytes each");
        assert!(key.verify(A3_SIGNED.as_bytes(), &signature));
        assert!(!key.verify(b"another message", &signature));
        // The same (r, s) as a DER ECDSA-Sig-Value (what openssl dgst writes) is not a JWS signature.
        let integer = |half: &[u8]| {
            let half = unsigned(half);
            let pad = half[0] >= 0x80;
            let mut out = vec![INTEGER, (half.len() + usize::from(pad)) as u8];
            out.extend(pad.then_some(0));
            out.extend_from_slice(half);
            out
        };
        let body = [integer(&signature[..32]), integer(&signature[32..])].concat();
        let der = [vec![SEQUENCE, body.len() as u8], body].concat();
        assert!(!key.verify(A3_SIGNED.as_bytes(), &der));
    }

    /// The RFC 7515 A.3 key as `openssl pkey -pubout` writes it.
    const EC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEf83OJ3D2xF1Bg8vub9tLe1gHMzV7
6e8Tus9uPHvRVEXH8UTNG72bfocs3+257rn0s2ldbqkLJK2KRiMohYjlrQ==
-----END PUBLIC KEY-----
";

    #[test]
    fn pem_spki_of_an_ec_key() {
        let key = PublicKey::from_pem(EC_PEM.as_bytes()).unwrap();
        let jwk = parse(json!({"keys": [ec_jwk("e")]})).unwrap().set.keys.remove(0).key;
        assert_eq!(key, jwk, "the PEM and the JWK of one key");
        let signature = base64url::decode(A3_SIGNATURE.as_bytes()).unwrap();
        assert!(key.verify(A3_SIGNED.as_bytes(), &signature));
    }

    #[test]
    fn pem_spki_and_pkcs1_of_an_rsa_key() {
        let n = base64url::decode(N.as_bytes()).unwrap();
        let integer = |bytes: &[u8]| {
            let body = if bytes[0] >= 0x80 { [&[0u8][..], bytes].concat() } else { bytes.to_vec() };
            der(INTEGER, &body)
        };
        let pkcs1 = der(SEQUENCE, &[integer(&n), integer(&[1, 0, 1])].concat());
        let algorithm = der(SEQUENCE, &[der(OID, OID_RSA), der(NULL, &[])].concat());
        let spki = der(SEQUENCE, &[algorithm, der(BIT_STRING, &[&[0u8][..], &pkcs1].concat())].concat());
        let expected = PublicKey::Rsa { n: n.clone(), e: vec![1, 0, 1] };
        assert_eq!(PublicKey::from_pem(pem("PUBLIC KEY", &spki).as_bytes()), Ok(expected.clone()));
        assert_eq!(PublicKey::from_pem(pem("RSA PUBLIC KEY", &pkcs1).as_bytes()), Ok(expected));
        let err = PublicKey::from_pem(pem("PUBLIC KEY", &pkcs1).as_bytes()).unwrap_err();
        assert!(err.contains("SubjectPublicKeyInfo"), "{err}");
        let err = PublicKey::from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap_err();
        assert!(err.contains("no PEM public key"), "{err}");
        let small = der(SEQUENCE, &[integer(&n[..128]), integer(&[1, 0, 1])].concat());
        let err = PublicKey::from_pem(pem("RSA PUBLIC KEY", &small).as_bytes()).unwrap_err();
        assert!(err.contains("1024 bits"), "{err}");
    }

    #[test]
    fn der_lengths_are_definite_and_shortest() {
        assert_eq!(element(&[0x30, 0x01, 0xaa, 0xbb]), Some((0x30, &[0xaa][..], &[0xbb][..])));
        assert_eq!(element(&[0x30, 0x81, 0x7f]), None, "long form for a short length");
        assert_eq!(element(&[0x30, 0x80, 0x00, 0x00]), None, "indefinite length");
        assert_eq!(element(&[0x30, 0x02, 0xaa]), None, "past the end");
        assert_eq!(element(&[0x30, 0x83, 0, 0, 1, 0]), None, "over 64 KiB");
    }

    fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match contents.len() {
            len @ 0..=0x7f => out.push(len as u8),
            len @ 0x80..=0xff => out.extend([0x81, len as u8]),
            len => out.extend([0x82, (len >> 8) as u8, len as u8]),
        }
        out.extend_from_slice(contents);
        out
    }

    fn pem(label: &str, der: &[u8]) -> String {
        let body = base64url::encode(der).replace('-', "+").replace('_', "/");
        let padding = "=".repeat((4 - body.len() % 4) % 4);
        format!("-----BEGIN {label}-----\n{body}{padding}\n-----END {label}-----\n")
    }
}
