//! Subscriber auth end to end: `--auth jwt` (HS256 tokens in the query or the
//! `Authorization` header) and `--auth signed` (presigned URLs, also minted by
//! the real `ssekify sign`), refusals with their status and code, start-up
//! checks of the secrets, that no credential reaches the logs, and that a
//! credential opens only its own namespace (a token's `tenant` claim, the
//! tenant a URL was signed for). RS256, ES256 and JWKS are in tests/auth_keys.rs.
//!
//! Tokens and signatures are minted here with HMAC-SHA256 (the `hmac` and
//! `sha2` crates) and a base64url encoder of this file's own, from the
//! documented formats, so the server's decoder is checked against an
//! independent encoder.

mod common;

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const JWT_SECRET: &str = "tests-jwt-secret-0123456789abcdef0123";
const SIGN_SECRET: &str = "tests-sign-secret-0123456789abcdef012";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// RFC 4648 §5 without padding, written independently of the server's decoder.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut held = 0;
    let mut out = String::new();
    for &byte in bytes {
        bits = (bits << 8) | u32::from(byte);
        held += 8;
        while held >= 6 {
            held -= 6;
            out.push(ALPHABET[((bits >> held) & 63) as usize] as char);
        }
    }
    if held > 0 {
        out.push(ALPHABET[((bits << (6 - held)) & 63) as usize] as char);
    }
    out
}

fn hmac_sha256(secret: &str, message: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// A compact JWT with this header and these claims, signed HS256 with `secret`.
fn jwt_with(secret: &str, header: &Value, claims: &Value) -> String {
    let signed = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
    let signature = b64url(&hmac_sha256(secret, &signed));
    format!("{signed}.{signature}")
}

/// A valid HS256 token for the test server.
fn jwt(claims: Value) -> String {
    jwt_with(JWT_SECRET, &json!({"alg": "HS256", "typ": "JWT"}), &claims)
}

/// `/sse?user=&rooms=&exp=&sig=` signed as README "Subscriber auth" says.
fn signed_path(user: &str, rooms: &str, exp: u64) -> String {
    let sig = b64url(&hmac_sha256(SIGN_SECRET, &format!("ssekify-sign-v1\n{user}\n{rooms}\n{exp}")));
    format!("/sse?user={}&rooms={rooms}&exp={exp}&sig={sig}", pct(user))
}

/// The query of a URL signed for `tenant`'s path: the tenant is a fifth line.
fn signed_tenant_query(tenant: &str, user: &str, rooms: &str, exp: u64) -> String {
    let canonical = format!("ssekify-sign-v1\n{user}\n{rooms}\n{exp}\n{tenant}");
    let sig = b64url(&hmac_sha256(SIGN_SECRET, &canonical));
    format!("user={}&rooms={rooms}&exp={exp}&sig={sig}", pct(user))
}

fn jwt_server() -> Server {
    Server::start(&["--auth", "jwt", "--jwt-secret", JWT_SECRET, "--log-level", "debug"])
}

fn signed_server() -> Server {
    Server::start(&["--auth", "signed", "--sign-secret", SIGN_SECRET, "--log-level", "debug"])
}

/// Runs the real `ssekify sign` with `args` for `route` on `server`; returns
/// the path and query it printed.
fn sign_path(server: &Server, route: &str, args: &[&str]) -> String {
    let base = format!("http://{}{route}", server.public);
    let output = Command::new(env!("CARGO_BIN_EXE_ssekify"))
        .arg("sign")
        .args(args)
        .args(["--base-url", &base])
        .env("SSEKIFY_SIGN_SECRET", SIGN_SECRET)
        .output()
        .expect("run ssekify sign");
    assert!(output.status.success(), "ssekify sign: {}", String::from_utf8_lossy(&output.stderr));
    let url = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    url.strip_prefix(&format!("http://{}", server.public)).unwrap_or_else(|| panic!("{url}")).to_owned()
}

/// Asserts a refusal and returns its message.
fn refused(server: &Server, path: &str, headers: &[(&str, &str)], status: u16, code: &str) -> String {
    let client = SseClient::connect(server.public, path, headers);
    client.assert_error(status, code);
    client.error_json()["message"].as_str().expect("message").to_owned()
}

#[test]
fn jwt_grants_its_sub_and_rooms_from_query_or_header() {
    let server = jwt_server();
    let token = jwt(json!({"sub": "alice", "rooms": ["news", "sports"], "exp": now() + 300}));
    // userId is ignored in jwt mode: the user is the token's sub.
    let mut by_query =
        SseClient::open_ready_with(server.public, &format!("/sse?token={token}&rooms=news&userId=mallory"), &[]);
    let bearer = format!("Bearer {token}");
    let mut by_header = SseClient::open_ready_with(server.public, "/sse?rooms=sports", &[("Authorization", &bearer)]);
    // The header wins over the query parameter.
    let mut both = SseClient::open_ready_with(server.public, "/sse?token=not-a-token", &[("Authorization", &bearer)]);
    let other = jwt(json!({"sub": "bob", "rooms": ["*"], "exp": now() + 300}));
    let mut any_room =
        SseClient::open_ready_with(server.public, &format!("/sse?token={other}&rooms=anything,news"), &[]);

    assert_eq!(delivered(publish_user(server.api, "mallory", "to mallory", "")), 0, "userId must not be trusted");
    assert_eq!(delivered(publish_user(server.api, "alice", "to alice", "")), 3);
    assert_eq!(delivered(publish_room(server.api, "news", "news", "")), 2);
    assert_eq!(delivered(publish_room(server.api, "sports", "sports", "")), 1);
    assert_eq!(delivered(publish_room(server.api, "anything", "anything", "")), 1);

    let data = |client: &mut SseClient| client.expect_event("a frame").data;
    assert_eq!([data(&mut by_query), data(&mut by_query)], ["to alice", "news"]);
    assert_eq!([data(&mut by_header), data(&mut by_header)], ["to alice", "sports"]);
    assert_eq!(data(&mut both), "to alice");
    assert_eq!([data(&mut any_room), data(&mut any_room)], ["news", "anything"]);

    let logs = server.logs();
    assert!(logs.contains("subscriber auth mode=jwt"), "{logs}");
    assert!(!logs.contains("trusted"), "the userId warning is for --auth none only: {logs}");
    for secret in [token.as_str(), other.as_str(), JWT_SECRET] {
        assert!(!logs.contains(secret), "a credential reached the logs: {logs}");
    }
}

#[test]
fn jwt_refusals() {
    let server = jwt_server();
    let exp = now() + 300;
    let auth = |token: &str| format!("Bearer {token}");

    let missing = SseClient::connect(server.public, "/sse?userId=alice", &[]);
    missing.assert_error(401, "unauthorized");
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    refused(&server, "/sse", &[("Authorization", "Basic YWxpY2U6c2VjcmV0")], 401, "unauthorized");

    let forged =
        jwt_with("another-secret-0123456789abcdef0123456", &json!({"alg": "HS256"}), &json!({"sub": "a", "exp": exp}));
    let message = refused(&server, &format!("/sse?token={forged}"), &[], 401, "unauthorized");
    assert!(message.contains("signature"), "{message}");
    refused(&server, "/sse", &[("Authorization", &auth(&forged))], 401, "unauthorized");

    let claims = json!({"sub": "a", "rooms": ["*"], "exp": exp});
    let unsigned = format!("{}.{}.", b64url(br#"{"alg":"none","typ":"JWT"}"#), b64url(claims.to_string().as_bytes()));
    let message = refused(&server, &format!("/sse?token={unsigned}"), &[], 401, "unauthorized");
    assert!(message.contains("HS256"), "{message}");
    let hs512 = jwt_with(JWT_SECRET, &json!({"alg": "HS512"}), &claims);
    refused(&server, &format!("/sse?token={hs512}"), &[], 401, "unauthorized");

    let expired = jwt(json!({"sub": "a", "exp": now() - 3600}));
    let message = refused(&server, &format!("/sse?token={expired}"), &[], 401, "unauthorized");
    assert!(message.contains("expired"), "{message}");
    let early = jwt(json!({"sub": "a", "exp": exp, "nbf": now() + 3600}));
    let message = refused(&server, &format!("/sse?token={early}"), &[], 401, "unauthorized");
    assert!(message.contains("not valid yet"), "{message}");
    for malformed in ["abc", "a.b.c", &jwt(json!({"sub": "a"})), &jwt(json!({"sub": "a", "exp": "soon"}))] {
        let message = refused(&server, &format!("/sse?token={malformed}"), &[], 401, "unauthorized");
        assert!(message.contains("malformed"), "{malformed}: {message}");
    }
    let bad_sub = jwt(json!({"sub": "a/b", "exp": exp}));
    refused(&server, &format!("/sse?token={bad_sub}"), &[], 401, "unauthorized");

    let limited = jwt(json!({"sub": "alice", "rooms": ["news"], "exp": exp}));
    let message = refused(&server, &format!("/sse?token={limited}&rooms=news,secret"), &[], 403, "forbidden");
    assert!(message.contains("`secret`"), "{message}");
    let roomless = jwt(json!({"sub": "alice", "exp": exp}));
    refused(&server, &format!("/sse?token={roomless}&rooms=news"), &[], 403, "forbidden");
    SseClient::open_ready_with(server.public, &format!("/sse?token={roomless}"), &[]);
    // A bad room name is still the query's fault.
    refused(&server, &format!("/sse?token={limited}&rooms=a%0Ab"), &[], 400, "invalid_request");

    let logs = server.logs();
    for token in [&forged, &unsigned, &expired, &early, &limited] {
        assert!(!logs.contains(token.as_str()), "a token reached the logs: {logs}");
    }
}

#[test]
fn signed_urls_grant_exactly_the_signed_user_and_rooms() {
    let server = signed_server();
    let exp = now() + 300;
    let mut alice = SseClient::open_ready_with(
        server.public,
        &format!("{}&userId=mallory", signed_path("alice", "news,sports", exp)),
        &[],
    );
    let mut anonymous = SseClient::open_ready_with(server.public, &signed_path("", "", exp), &[]);

    assert_eq!(delivered(publish_user(server.api, "mallory", "to mallory", "")), 0, "userId must not be trusted");
    assert_eq!(delivered(publish_user(server.api, "alice", "to alice", "")), 1);
    assert_eq!(delivered(publish_room(server.api, "news", "news", "")), 1);
    assert_eq!(delivered(publish_room(server.api, "sports", "sports", "")), 1);
    assert_eq!(delivered(broadcast(server.api, "everyone", "")), 2);
    let data = |client: &mut SseClient| client.expect_event("a frame").data;
    assert_eq!(
        [data(&mut alice), data(&mut alice), data(&mut alice), data(&mut alice)],
        ["to alice", "news", "sports", "everyone"]
    );
    assert_eq!(data(&mut anonymous), "everyone");
    let logs = server.logs();
    assert!(logs.contains("subscriber auth mode=signed"), "{logs}");
    assert!(!logs.contains("trusted"), "the userId warning is for --auth none only: {logs}");
}

#[test]
fn signed_url_refusals() {
    let server = signed_server();
    let exp = now() + 300;
    let good = signed_path("alice", "news", exp);
    let sig = good.rsplit_once("&sig=").unwrap().1;
    let tampered = [
        format!("/sse?user=mallory&rooms=news&exp={exp}&sig={sig}"),
        format!("/sse?user=alice&rooms=news,secret&exp={exp}&sig={sig}"),
        format!("/sse?user=alice&exp={exp}&sig={sig}"),
        format!("/sse?user=alice&rooms=news&exp={}&sig={sig}", exp + 3600),
    ];
    for path in &tampered {
        let message = refused(&server, path, &[], 401, "unauthorized");
        assert!(message.contains("signature"), "{path}: {message}");
    }
    let message = refused(&server, &signed_path("alice", "news", now() - 3600), &[], 401, "unauthorized");
    assert!(message.contains("expired"), "{message}");
    refused(&server, "/sse?userId=alice", &[], 401, "unauthorized");
    refused(&server, &format!("/sse?user=alice&exp={exp}"), &[], 401, "unauthorized");
    refused(&server, &format!("/sse?user=alice&exp=soon&sig={sig}"), &[], 401, "unauthorized");
    let logs = server.logs();
    assert!(!logs.contains(sig), "a signature reached the logs: {logs}");
    SseClient::open_ready_with(server.public, &good, &[]);
}

#[test]
fn a_tokens_tenant_claim_opens_that_tenants_path_only() {
    let server = jwt_server();
    let exp = now() + 300;
    let acme = jwt(json!({"sub": "alice", "rooms": ["news"], "exp": exp, "tenant": "acme"}));
    let plain = jwt(json!({"sub": "alice", "rooms": ["news"], "exp": exp}));
    let null = jwt(json!({"sub": "alice", "rooms": ["news"], "exp": exp, "tenant": null}));
    let mut in_acme = SseClient::open_ready_with(server.public, &format!("/t/acme/sse?token={acme}&rooms=news"), &[]);
    let mut in_default = SseClient::open_ready_with(server.public, &format!("/sse?token={plain}&rooms=news"), &[]);
    let bearer = format!("Bearer {null}");
    let mut null_default = SseClient::open_ready_with(server.public, "/sse", &[("Authorization", &bearer)]);

    // Mismatches: another tenant's path, the default path, a tenant path
    // without the claim (absent or null).
    for (path, token) in [("/t/globex/sse", &acme), ("/sse", &acme), ("/t/acme/sse", &plain), ("/t/acme/sse", &null)] {
        let message = refused(&server, &format!("{path}?token={token}"), &[], 403, "forbidden");
        assert!(message.contains("namespace"), "{path}: {message}");
    }
    let wrong_type = jwt(json!({"sub": "alice", "exp": exp, "tenant": 7}));
    refused(&server, &format!("/t/acme/sse?token={wrong_type}"), &[], 401, "unauthorized");

    // Delivery follows the namespace the token opened.
    assert_eq!(delivered(http(server.api, "POST", "/v1/t/acme/users/alice/events", &[], b"acme")), 1);
    assert_eq!(delivered(publish_user(server.api, "alice", "default", "")), 2);
    assert_eq!(in_acme.expect_event("acme's alice").data, "acme");
    assert_eq!(in_default.expect_event("default alice").data, "default");
    assert_eq!(null_default.expect_event("default alice").data, "default");
    in_acme.expect_no_event(std::time::Duration::from_millis(200));
}

#[test]
fn a_url_signed_for_a_tenant_opens_that_tenants_path_only() {
    let server = signed_server();
    let exp = now() + 300;
    let acme = signed_tenant_query("acme", "alice", "news", exp);
    let mut alice = SseClient::open_ready_with(server.public, &format!("/t/acme/sse?{acme}"), &[]);
    for path in ["/sse", "/t/globex/sse"] {
        let message = refused(&server, &format!("{path}?{acme}"), &[], 401, "unauthorized");
        assert!(message.contains("signature"), "{path}: {message}");
    }
    // A URL signed without a tenant (as before tenants) opens /sse only.
    let plain = signed_path("alice", "news", exp);
    SseClient::open_ready_with(server.public, &plain, &[]);
    let plain_query = plain.strip_prefix("/sse?").unwrap();
    refused(&server, &format!("/t/acme/sse?{plain_query}"), &[], 401, "unauthorized");

    // ssekify sign --tenant mints one.
    let path = sign_path(&server, "/t/globex/sse", &["--tenant", "globex", "--user", "bob"]);
    let mut bob = SseClient::open_ready_with(server.public, &path, &[]);
    refused(&server, &path.replace("/t/globex/", "/"), &[], 401, "unauthorized");

    assert_eq!(delivered(http(server.api, "POST", "/v1/t/acme/users/alice/events", &[], b"to acme alice")), 1);
    assert_eq!(delivered(http(server.api, "POST", "/v1/t/globex/users/bob/events", &[], b"to globex bob")), 1);
    assert_eq!(alice.expect_event("acme's alice").data, "to acme alice");
    assert_eq!(bob.expect_event("globex's bob").data, "to globex bob");
}

#[test]
fn ssekify_sign_mints_a_url_the_server_accepts() {
    let server = signed_server();
    let path = sign_path(&server, "/sse", &["--user", "carol", "--rooms", "ops,news", "--ttl", "2m"]);
    let mut carol = SseClient::open_ready_with(server.public, &path, &[]);
    assert_eq!(delivered(publish_user(server.api, "carol", "to carol", "")), 1);
    assert_eq!(delivered(publish_room(server.api, "ops", "ops", "")), 1);
    assert_eq!(carol.expect_event("user frame").data, "to carol");
    assert_eq!(carol.expect_event("room frame").data, "ops");

    // Without --base-url: the query string only; with a short secret: exit 2.
    let query = Command::new(env!("CARGO_BIN_EXE_ssekify"))
        .args(["sign", "--sign-secret", SIGN_SECRET])
        .env_remove("SSEKIFY_SIGN_SECRET")
        .output()
        .unwrap();
    let query = String::from_utf8(query.stdout).unwrap();
    assert!(query.starts_with("exp=") && query.contains("&sig="), "{query}");
    SseClient::open_ready_with(server.public, &format!("/sse?{}", query.trim()), &[]);
    let short = Command::new(env!("CARGO_BIN_EXE_ssekify")).args(["sign", "--sign-secret", "short"]).output().unwrap();
    assert_eq!(short.status.code(), Some(2));
}

#[test]
fn secrets_are_checked_at_start() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["--auth", "jwt"],
            "ssekify: --jwt-secret: --auth jwt needs a key: set --jwt-secret or SSEKIFY_JWT_SECRET (HS256), \
             or --jwt-public-key, --jwks-file or --jwks-url (RS256/ES256)",
        ),
        (&["--auth", "signed"], "ssekify: --sign-secret: --auth signed needs a secret"),
        (
            &["--auth", "jwt", "--jwt-secret", "only-twenty-bytes-xx"],
            "ssekify: --jwt-secret: must be at least 32 bytes (it is 20)",
        ),
        (
            &["--auth", "signed", "--sign-secret", &SIGN_SECRET[..31]],
            "ssekify: --sign-secret: must be at least 32 bytes (it is 31)",
        ),
    ];
    for (args, expected) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_ssekify"))
            .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("SSEKIFY_JWT_SECRET")
            .env_remove("SSEKIFY_SIGN_SECRET")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one sentence: {stderr}");
    }
    let server = Server::start(&[]);
    assert!(server.logs().contains("subscriber auth is `none`: the userId query parameter is trusted"));
}
