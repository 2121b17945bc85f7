//! `--auth jwt` with public keys, end to end: RS256 and ES256 tokens from
//! keys `openssl` generates here, a PEM key (`--jwt-public-key`), a JWKS
//! file chosen by `kid` and rotated with `SIGHUP`, a JWKS URL served by a
//! small HTTP server in this file (fetched on an unknown `kid`, periodically,
//! and served stale with `jwksFetchErrors` counting once the server is gone),
//! `--jwt-issuer` and `--jwt-audience`, and the refusals that matter: `alg`
//! confusion (an HS256 token keyed with the RSA public key's PEM), `none`,
//! a DER ECDSA signature, an expired token.
//!
//! Tokens are signed with `openssl dgst -sha256 -sign` and encoded by this
//! file, independently of the server's code; a key's JWK is read from
//! `openssl`'s own DER output. Tests skip (with a line saying so) when
//! `openssl` is missing, except under CI=true, where they fail.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const SECRET: &str = "tests-jwt-secret-0123456789abcdef0123";
const ISSUER: &str = "https://idp.test/realms/demo";
const AUDIENCE: &str = "ssekify";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// RFC 4648 §5 without padding, written independently of the server's decoder.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A directory of its own for one test's keys and files, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ssekify-auth-keys-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs openssl with `args` and `input` on its stdin; its stdout.
fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

/// False (and a line on stderr) when openssl is missing outside CI.
fn have_openssl() -> bool {
    if Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    assert!(std::env::var("CI").is_err(), "openssl is needed for the RS256/ES256 tests");
    eprintln!("SKIPPED: openssl is not installed");
    false
}

/// A key pair made by openssl: the private key file, the public key's PEM, its JWK members.
struct TestKey {
    private: PathBuf,
    public_pem: PathBuf,
    alg: &'static str,
    jwk: Value,
}

impl TestKey {
    fn rsa(scratch: &Scratch, name: &str) -> TestKey {
        TestKey::generate(scratch, name, &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"], "RS256")
    }

    fn ec(scratch: &Scratch, name: &str) -> TestKey {
        TestKey::generate(scratch, name, &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"], "ES256")
    }

    fn generate(scratch: &Scratch, name: &str, params: &[&str], alg: &'static str) -> TestKey {
        let private = scratch.path(&format!("{name}.pem"));
        let public_pem = scratch.path(&format!("{name}.pub.pem"));
        let mut args = vec!["genpkey"];
        args.extend_from_slice(params);
        args.extend(["-out", private.to_str().unwrap()]);
        openssl(&args, b"");
        openssl(&["pkey", "-in", private.to_str().unwrap(), "-pubout", "-out", public_pem.to_str().unwrap()], b"");
        let der = openssl(&["pkey", "-pubin", "-in", public_pem.to_str().unwrap(), "-outform", "DER"], b"");
        let jwk = if alg == "ES256" {
            // A P-256 SubjectPublicKeyInfo ends with the point 04 || x || y.
            let point = &der[der.len() - 65..];
            assert_eq!(point[0], 4);
            json!({"kty": "EC", "crv": "P-256", "x": b64url(&point[1..33]), "y": b64url(&point[33..])})
        } else {
            let modulus = openssl(&["rsa", "-pubin", "-in", public_pem.to_str().unwrap(), "-noout", "-modulus"], b"");
            let hex = String::from_utf8(modulus).unwrap().trim().strip_prefix("Modulus=").unwrap().to_owned();
            let n: Vec<u8> =
                (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
            json!({"kty": "RSA", "n": b64url(&n), "e": "AQAB"})
        };
        TestKey { private, public_pem, alg, jwk }
    }

    /// The JWK with `kid` (and `use`/`alg`, as identity providers publish them).
    fn jwk(&self, kid: &str) -> Value {
        let mut jwk = self.jwk.clone();
        jwk["kid"] = kid.into();
        jwk["use"] = "sig".into();
        jwk["alg"] = self.alg.into();
        jwk
    }

    /// A token signed with this key, the header's `kid` when given.
    fn token(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = json!({"alg": self.alg, "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = kid.into();
        }
        let signed = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
        let signature = self.sign_der(signed.as_bytes());
        let signature = if self.alg == "ES256" { jose_signature(&signature) } else { signature };
        format!("{signed}.{}", b64url(&signature))
    }

    /// openssl's signature: PKCS #1 v1.5 for RSA, a DER ECDSA-Sig-Value for EC.
    fn sign_der(&self, message: &[u8]) -> Vec<u8> {
        openssl(&["dgst", "-sha256", "-sign", self.private.to_str().unwrap()], message)
    }

    /// An ES256 token whose signature is left in openssl's DER form.
    fn token_with_der_signature(&self, claims: &Value) -> String {
        let header = json!({"alg": self.alg});
        let signed = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
        format!("{signed}.{}", b64url(&self.sign_der(signed.as_bytes())))
    }
}

/// DER `SEQUENCE { INTEGER r, INTEGER s }` → JOSE's `r || s`, 32 bytes each (RFC 7518 §3.4).
fn jose_signature(der: &[u8]) -> Vec<u8> {
    assert_eq!(der[0], 0x30);
    let mut rest = &der[2..];
    let mut out = Vec::new();
    for _ in 0..2 {
        assert_eq!(rest[0], 0x02);
        let len = usize::from(rest[1]);
        let integer = &rest[2..2 + len];
        let integer = &integer[integer.len().saturating_sub(32)..];
        out.extend(std::iter::repeat_n(0u8, 32 - integer.len()));
        out.extend_from_slice(integer);
        rest = &rest[2 + len..];
    }
    out
}

/// An HS256 token keyed with `secret`.
fn hs256(secret: &[u8], claims: &Value) -> String {
    let header = b64url(br#"{"alg":"HS256","typ":"JWT"}"#);
    let signed = format!("{header}.{}", b64url(claims.to_string().as_bytes()));
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap();
    mac.update(signed.as_bytes());
    format!("{signed}.{}", b64url(&mac.finalize().into_bytes()))
}

fn claims(user: &str) -> Value {
    json!({"sub": user, "rooms": ["news"], "exp": now() + 300, "iss": ISSUER, "aud": AUDIENCE})
}

/// Opens `/sse?token=` and asserts it is accepted.
fn accepted(server: &Server, token: &str) {
    SseClient::open_ready_with(server.public, &format!("/sse?token={token}&rooms=news"), &[]);
}

/// Opens `/sse?token=`, asserts `401`, returns the message.
fn refused(server: &Server, token: &str) -> String {
    let client = SseClient::connect(server.public, &format!("/sse?token={token}"), &[]);
    client.assert_error(401, "unauthorized");
    client.error_json()["message"].as_str().unwrap().to_owned()
}

fn fetch_errors(server: &Server) -> u64 {
    stat(&server.stats(), "jwksFetchErrors")
}

/// Waits until `count` reads or fetches have failed and their log lines have
/// come through: the server counts a failure before it logs it, so the count
/// alone can be seen before the line.
fn failures_counted_and_logged(server: &Server, count: u64) -> bool {
    wait_until(Duration::from_secs(10), || {
        fetch_errors(server) == count
            && server.logs().matches("JWKS not loaded; keeping the keys in use").count() as u64 == count
    })
}

#[test]
fn rs256_and_es256_with_pem_public_keys() {
    if !have_openssl() {
        return;
    }
    let scratch = Scratch::new("pem");
    let rsa = TestKey::rsa(&scratch, "rsa");
    let ec = TestKey::ec(&scratch, "ec");
    let rsa_pem = rsa.public_pem.to_str().unwrap();
    let server = Server::start(&[
        "--auth",
        "jwt",
        "--jwt-secret",
        SECRET,
        "--jwt-public-key",
        rsa_pem,
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
    ]);

    let mut alice = SseClient::open_ready_with(
        server.public,
        &format!("/sse?token={}&rooms=news", rsa.token(Some("any-kid"), &claims("alice"))),
        &[],
    );
    accepted(&server, &rsa.token(None, &claims("bob")));
    accepted(&server, &hs256(SECRET.as_bytes(), &claims("carol")));
    let mut array_aud = claims("dave");
    array_aud["aud"] = json!(["account", AUDIENCE]);
    accepted(&server, &rsa.token(None, &array_aud));
    assert_eq!(delivered(publish_user(server.api, "alice", "to alice", "")), 1);
    assert_eq!(alice.expect_event("alice's frame").data, "to alice");

    // Algorithm confusion: HS256 keyed with the RSA public key's own PEM.
    let pem = std::fs::read(&rsa.public_pem).unwrap();
    let message = refused(&server, &hs256(&pem, &claims("mallory")));
    assert!(message.contains("signature"), "{message}");
    let unsigned =
        format!("{}.{}.", b64url(br#"{"alg":"none","typ":"JWT"}"#), b64url(claims("mallory").to_string().as_bytes()));
    assert!(refused(&server, &unsigned).contains("alg"));
    // No EC key here: an ES256 token is not verified by anything.
    assert!(refused(&server, &ec.token(None, &claims("mallory"))).contains("no key"));
    let mut expired = claims("alice");
    expired["exp"] = (now() - 3600).into();
    assert!(refused(&server, &rsa.token(None, &expired)).contains("expired"));
    let mut other_issuer = claims("alice");
    other_issuer["iss"] = "https://evil.test/realms/demo".into();
    assert!(refused(&server, &rsa.token(None, &other_issuer)).contains("issuer"));
    let mut other_audience = claims("alice");
    other_audience["aud"] = json!(["account", "another-app"]);
    assert!(refused(&server, &rsa.token(None, &other_audience)).contains("aud"));
    let mut no_audience = claims("alice");
    no_audience.as_object_mut().unwrap().remove("aud");
    refused(&server, &rsa.token(None, &no_audience));
    let mut tampered = rsa.token(None, &claims("alice"));
    tampered.replace_range(tampered.len() - 4.., "AAAA");
    refused(&server, &tampered);

    // Only a public key (no secret): HS256 is refused whatever it is keyed with.
    let ec_only = Server::start(&["--auth", "jwt", "--jwt-public-key", ec.public_pem.to_str().unwrap()]);
    accepted(&ec_only, &ec.token(None, &claims("erin")));
    assert!(refused(&ec_only, &hs256(&std::fs::read(&ec.public_pem).unwrap(), &claims("m"))).contains("HS256"));
    assert!(refused(&ec_only, &ec.token_with_der_signature(&claims("erin"))).contains("signature"), "DER is not JOSE");
    assert!(refused(&ec_only, &rsa.token(None, &claims("erin"))).contains("no key"));
    let logs = ec_only.logs();
    assert!(logs.contains("without --jwt-audience"), "the warning: {logs}");
}

/// A JWKS document of these (kid, key) pairs.
fn jwks(keys: &[(&str, &TestKey)]) -> String {
    json!({"keys": keys.iter().map(|(kid, key)| key.jwk(kid)).collect::<Vec<_>>()}).to_string()
}

#[test]
fn jwks_file_chooses_by_kid_and_rotates_on_sighup() {
    if !have_openssl() {
        return;
    }
    let scratch = Scratch::new("file");
    let (r1, r2, e1) = (TestKey::rsa(&scratch, "r1"), TestKey::rsa(&scratch, "r2"), TestKey::ec(&scratch, "e1"));
    let file = scratch.path("jwks.json");
    std::fs::write(&file, jwks(&[("r1", &r1), ("e1", &e1)])).unwrap();
    let server = Server::start(&["--auth", "jwt", "--jwks-file", file.to_str().unwrap(), "--jwt-audience", AUDIENCE]);
    assert!(server.logs().contains("JWKS loaded"), "{}", server.logs());
    assert_eq!(stat(&server.stats(), "jwksKeys"), 2);

    accepted(&server, &r1.token(Some("r1"), &claims("alice")));
    accepted(&server, &e1.token(Some("e1"), &claims("alice")));
    accepted(&server, &r1.token(None, &claims("alice")));
    assert!(refused(&server, &r2.token(Some("r2"), &claims("alice"))).contains("kid"));
    assert!(refused(&server, &r1.token(Some("e1"), &claims("alice"))).contains("another type"));
    refused(&server, &r2.token(Some("r1"), &claims("alice")));

    // Rotation: r2 replaces r1; SIGHUP re-reads the file.
    let mut streaming = SseClient::open_ready_with(
        server.public,
        &format!("/sse?token={}&rooms=news", r1.token(Some("r1"), &claims("alice"))),
        &[],
    );
    std::fs::write(&file, jwks(&[("r2", &r2), ("e1", &e1)])).unwrap();
    server.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || server.logs().matches("JWKS loaded").count() == 2),
        "{}",
        server.logs()
    );
    accepted(&server, &r2.token(Some("r2"), &claims("alice")));
    refused(&server, &r1.token(Some("r1"), &claims("alice")));
    assert_eq!(delivered(publish_user(server.api, "alice", "still here", "")), 1, "an open stream stays");
    assert_eq!(streaming.expect_event("after the reload").data, "still here");

    // A broken file is refused with a log line; the keys in use stay.
    std::fs::write(&file, "{\"keys\": [").unwrap();
    server.signal("HUP");
    assert!(failures_counted_and_logged(&server, 1), "{}", server.logs());
    accepted(&server, &r2.token(Some("r2"), &claims("alice")));
    assert_eq!(stat(&server.stats(), "jwksKeys"), 2);
    let metrics = http(server.api, "GET", "/metrics", &[], b"").text();
    assert!(metrics.contains("ssekify_jwks_fetch_errors_total 1\n"), "{metrics}");
    assert!(metrics.contains("ssekify_jwks_keys 2\n"), "{metrics}");
}

/// A JWKS endpoint on a loopback port: serves `document`, counts requests,
/// and can go away (its port then refuses connections).
struct JwksServer {
    url: String,
    document: Arc<Mutex<String>>,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl JwksServer {
    fn start(document: String) -> JwksServer {
        JwksServer::start_with(document, None)
    }

    /// Serves over TLS with `tls` (a certificate for 127.0.0.1) when given.
    fn start_with(document: String, tls: Option<Arc<rustls::ServerConfig>>) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let address = listener.local_addr().unwrap();
        let url = format!("{scheme}://{address}/realms/demo/protocol/openid-connect/certs");
        let document = Arc::new(Mutex::new(document));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (served, count, stopped) = (document.clone(), requests.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                let Ok((socket, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                socket.set_nonblocking(false).unwrap();
                socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                let body = served.lock().unwrap().clone();
                let answered = match &tls {
                    Some(config) => {
                        let session = rustls::ServerConnection::new(config.clone()).unwrap();
                        let mut stream = rustls::StreamOwned::new(session, socket);
                        let answered = answer(&mut stream, &body);
                        stream.conn.send_close_notify();
                        let _ = stream.flush();
                        answered
                    }
                    None => answer(&mut { socket }, &body),
                };
                if answered {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        JwksServer { url, document, requests, stop, thread: Some(thread) }
    }

    fn serve(&self, document: String) {
        *self.document.lock().unwrap() = document;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Stops answering: the listener is closed.
    fn go_away(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

/// Reads one GET of the JWKS path and answers `body`; false when no such
/// request came (a TLS handshake the client gave up on).
fn answer(stream: &mut (impl Read + Write), body: &str) -> bool {
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => request.extend_from_slice(&chunk[..n]),
        }
    }
    assert!(request.starts_with(b"GET /realms/demo/protocol/openid-connect/certs HTTP/1.1\r\n"));
    let answer =
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(answer.as_bytes()).is_ok()
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.go_away();
    }
}

#[test]
fn jwks_url_is_fetched_on_an_unknown_kid_and_served_stale_when_gone() {
    if !have_openssl() {
        return;
    }
    let scratch = Scratch::new("url");
    let (r1, r2, e1) = (TestKey::rsa(&scratch, "r1"), TestKey::rsa(&scratch, "r2"), TestKey::ec(&scratch, "e1"));
    let mut idp = JwksServer::start(jwks(&[("r1", &r1)]));
    let server = Server::start(&[
        "--auth",
        "jwt",
        "--jwks-url",
        &idp.url,
        "--jwks-refresh",
        "1h",
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
    ]);
    assert!(wait_until(Duration::from_secs(10), || stat(&server.stats(), "jwksLoads") == 1), "{}", server.logs());
    assert_eq!(idp.requests(), 1, "fetched once at start");
    accepted(&server, &r1.token(Some("r1"), &claims("alice")));

    // The provider adds r2 and e1; the first token with kid r2 fetches the set and is accepted.
    idp.serve(jwks(&[("r1", &r1), ("r2", &r2), ("e1", &e1)]));
    accepted(&server, &r2.token(Some("r2"), &claims("bob")));
    assert_eq!(idp.requests(), 2, "one fetch for the unknown kid");
    accepted(&server, &e1.token(Some("e1"), &claims("bob")));
    // Another unknown kid within 30 s is refused without a fetch.
    let message = refused(&server, &r2.token(Some("r3"), &claims("mallory")));
    assert!(message.contains("kid"), "{message}");
    assert_eq!(idp.requests(), 2, "rate-limited");
    assert_eq!(stat(&server.stats(), "jwksKeys"), 3);

    // The provider goes away: SIGHUP's fetch fails, the keys in use stay.
    idp.go_away();
    server.signal("HUP");
    assert!(failures_counted_and_logged(&server, 1), "{}", server.logs());
    accepted(&server, &r1.token(Some("r1"), &claims("alice")));
    accepted(&server, &r2.token(Some("r2"), &claims("alice")));
}

#[test]
fn jwks_url_is_refreshed_periodically() {
    if !have_openssl() {
        return;
    }
    let scratch = Scratch::new("periodic");
    let (r1, r2) = (TestKey::rsa(&scratch, "r1"), TestKey::rsa(&scratch, "r2"));
    let idp = JwksServer::start(jwks(&[("r1", &r1)]));
    let server = Server::start(&["--auth", "jwt", "--jwks-url", &idp.url, "--jwks-refresh", "1s"]);
    assert!(wait_until(Duration::from_secs(10), || idp.requests() >= 1));
    idp.serve(jwks(&[("r2", &r2)]));
    // Every request counted from here on was answered with the new set.
    let fetched = idp.requests();
    let loads = || stat(&server.stats(), "jwksLoads") as usize;
    assert!(wait_until(Duration::from_secs(10), || loads() > fetched), "a periodic fetch: {}", server.logs());
    // The rotated set is in use without a token asking for it; r1 is gone.
    let mut claims = claims("alice");
    claims.as_object_mut().unwrap().remove("aud");
    accepted(&server, &r2.token(None, &claims));
    refused(&server, &r1.token(Some("r1"), &claims));
    assert!(server.logs().contains("kids=r2"), "{}", server.logs());
}

/// A throwaway CA (its PEM file in `scratch`) and a server certificate it
/// signed for 127.0.0.1, as the TLS settings of a test server.
fn test_pki(scratch: &Scratch) -> (PathBuf, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".into()]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
    let ca_path = scratch.path("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    (ca_path, Arc::new(config))
}

#[test]
fn jwks_url_over_https_checks_the_certificate() {
    if !have_openssl() {
        return;
    }
    let scratch = Scratch::new("https");
    let (ca, tls) = test_pki(&scratch);
    let key = TestKey::ec(&scratch, "e1");
    let idp = JwksServer::start_with(jwks(&[("e1", &key)]), Some(tls));
    assert!(idp.url.starts_with("https://127.0.0.1:"));
    let trusted = Server::start(&["--auth", "jwt", "--jwks-url", &idp.url, "--jwks-ca", ca.to_str().unwrap()]);
    assert!(wait_until(Duration::from_secs(10), || stat(&trusted.stats(), "jwksLoads") == 1), "{}", trusted.logs());
    let mut claims = claims("alice");
    claims.as_object_mut().unwrap().remove("aud");
    accepted(&trusted, &key.token(Some("e1"), &claims));

    // Without --jwks-ca the private CA is not trusted: no keys, a counted error.
    let untrusted = Server::start(&["--auth", "jwt", "--jwks-url", &idp.url]);
    assert!(failures_counted_and_logged(&untrusted, 1), "{}", untrusted.logs());
    assert!(untrusted.logs().contains("certificate"), "{}", untrusted.logs());
    refused(&untrusted, &key.token(Some("e1"), &claims));
    assert_eq!(stat(&untrusted.stats(), "jwksLoads"), 0);
}

#[test]
fn key_flags_are_checked_at_start() {
    let scratch = Scratch::new("flags");
    let bad = scratch.path("bad.json");
    std::fs::write(&bad, "{\"keys\": []}").unwrap();
    let not_pem = scratch.path("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let missing = scratch.path("missing.pem");
    let cases: [(&[&str], &str); 8] = [
        (&["--auth", "jwt", "--jwks-file", bad.to_str().unwrap()], "--jwks-file: "),
        (&["--auth", "jwt", "--jwt-public-key", not_pem.to_str().unwrap()], "--jwt-public-key: "),
        (&["--auth", "jwt", "--jwt-public-key", missing.to_str().unwrap()], "--jwt-public-key: "),
        (&["--auth", "jwt", "--jwks-url", "ftp://idp/certs"], "--jwks-url: `ftp://idp/certs` must start with"),
        (&["--auth", "jwt", "--jwks-url", "http://idp/certs", "--jwks-file", "x"], "--jwks-url: "),
        (&["--jwks-url", "http://idp/certs"], "--jwks-url: is for --auth jwt"),
        (&["--auth", "jwt", "--jwks-url", "http://idp/certs", "--jwks-ca", "ca.pem"], "--jwks-ca: is for an https://"),
        (&["--auth", "jwt", "--jwks-url", "https://idp/certs", "--jwks-ca", missing.to_str().unwrap()], "--jwks-ca: "),
    ];
    for (args, expected) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_ssekify"))
            .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("SSEKIFY_JWT_SECRET")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with(&format!("ssekify: {expected}")), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one sentence: {stderr}");
    }
}
