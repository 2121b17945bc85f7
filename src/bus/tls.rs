//! TLS for `rediss://`: rustls, driven by hand over monoio's `TcpStream`.
//!
//! Parts: [`Tls`] (what a connection trusts and presents, built once at
//! start-up from `--redis-ca`, `--redis-cert`, `--redis-key`), [`connect`]
//! (the handshake, bounded by the caller's timeout), and the two halves a
//! connection is split into for pipelining, [`TlsReader`] and [`TlsWriter`].
//!
//! rustls' buffered connection is a sans-IO core: ciphertext goes in with
//! `read_tls` + `process_new_packets`, plaintext comes out of `reader()`,
//! plaintext goes in through `writer()` and ciphertext out with `write_tls`.
//! This file is only the thin driver around it. The halves share one
//! `rustls::ClientConnection` as `Rc<RefCell<_>>` and every borrow ends before
//! an `.await`, so a read waiting on the socket never overlaps a write's use of
//! the TLS state. (monoio-rustls 0.4 fits monoio 0.2, but its split halves
//! alias the whole stream through an `UnsafeCell` while a read is pending.)
//!
//! Server certificates are checked against Mozilla's roots (`webpki-roots`)
//! plus, when given, a private CA; the name checked is the host of the address
//! being dialled, an IP address included. There is no way to skip the check.

use std::cell::RefCell;
use std::fmt;
use std::io::{Read, Write};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::tcp::{TcpOwnedReadHalf, TcpOwnedWriteHalf};
use monoio::net::TcpStream;
use rustls::pki_types::pem::{Error as PemError, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// Ciphertext bytes requested per socket read: one TLS record at most is
/// 16 KiB of plaintext plus its header and tag.
const CIPHERTEXT_CHUNK: usize = 17 * 1024;

/// What a `rediss://` connection trusts and presents. Cheap to clone (one
/// `Arc`); equal only to its own clones.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
}

impl PartialEq for Tls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config)
    }
}

impl Eq for Tls {}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let client_cert = if self.config.client_auth_cert_resolver.has_certs() { "yes" } else { "no" };
        write!(f, "Tls {{ client certificate: {client_cert} }}")
    }
}

/// The PEM files behind a [`Tls`], as given on the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsFiles<'a> {
    /// `--redis-ca`: certificates trusted besides Mozilla's roots.
    pub ca: Option<&'a Path>,
    /// `--redis-cert`: the client certificate chain.
    pub cert: Option<&'a Path>,
    /// `--redis-key`: the client certificate's private key.
    pub key: Option<&'a Path>,
}

/// A file behind [`Tls`] that cannot be used; start-up refuses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFileError {
    /// The flag (without dashes) that named the file.
    pub flag: &'static str,
    /// Why, as the end of a sentence.
    pub reason: String,
}

impl TlsFileError {
    fn new(flag: &'static str, path: &Path, reason: impl fmt::Display) -> Self {
        TlsFileError { flag, reason: format!("{}: {reason}", path.display()) }
    }
}

impl Tls {
    /// Mozilla's roots only, no client certificate.
    pub fn public_roots() -> Tls {
        Tls::build(mozilla_roots(), None).expect("the ring provider supports its default protocol versions")
    }

    /// Mozilla's roots plus the files given; a file that cannot be read or
    /// holds nothing usable is an error naming its flag.
    pub fn load(files: TlsFiles<'_>) -> Result<Tls, TlsFileError> {
        let mut roots = mozilla_roots();
        if let Some(path) = files.ca {
            add_ca(&mut roots, "redis-ca", path)?;
        }
        let identity = match (files.cert, files.key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(TlsFileError { flag: "redis-key", reason: "--redis-cert needs its private key too".into() })
            }
            (None, Some(_)) => {
                return Err(TlsFileError { flag: "redis-cert", reason: "--redis-key needs its certificate too".into() })
            }
            (Some(cert), Some(key)) => {
                let chain = certificates("redis-cert", cert)?;
                if chain.is_empty() {
                    return Err(TlsFileError::new("redis-cert", cert, "holds no PEM certificate"));
                }
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
                    PemError::NoItemsFound => TlsFileError::new("redis-key", key, "holds no PEM private key"),
                    other => TlsFileError::new("redis-key", key, pem_problem(other)),
                })?;
                Some((chain, key))
            }
        };
        Tls::build(roots, identity).map_err(|e| TlsFileError {
            flag: "redis-key",
            reason: format!("the key does not fit the certificate in --redis-cert: {e}"),
        })
    }

    /// Mozilla's roots plus the CA certificates in `path` (given to `flag`),
    /// no client certificate: for a JWKS endpoint behind a private CA.
    pub fn with_ca(flag: &'static str, path: &Path) -> Result<Tls, TlsFileError> {
        let mut roots = mozilla_roots();
        add_ca(&mut roots, flag, path)?;
        Ok(Tls::build(roots, None).expect("the ring provider supports its default protocol versions"))
    }

    /// The rustls settings, for a client that drives its own connection
    /// (the JWKS fetch of [`crate::auth::jwks`], over blocking sockets).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    fn build(
        roots: RootCertStore,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<Tls, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
            None => builder.with_no_client_auth(),
        };
        Ok(Tls { config: Arc::new(config) })
    }
}

/// Adds the certificates of the PEM file `path` (given to `flag`) to `roots`;
/// a file without one is an error.
fn add_ca(roots: &mut RootCertStore, flag: &'static str, path: &Path) -> Result<(), TlsFileError> {
    let mut added = 0;
    for cert in certificates(flag, path)? {
        roots.add(cert).map_err(|e| TlsFileError::new(flag, path, format!("not a CA certificate: {e}")))?;
        added += 1;
    }
    if added == 0 {
        return Err(TlsFileError::new(flag, path, "holds no PEM certificate"));
    }
    Ok(())
}

fn mozilla_roots() -> RootCertStore {
    RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }
}

fn certificates(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsFileError::new(flag, path, pem_problem(e)))
}

fn pem_problem(error: PemError) -> String {
    match error {
        PemError::Io(e) => format!("cannot be read ({e})"),
        PemError::NoItemsFound => "holds no usable PEM item".into(),
        other => format!("is not valid PEM ({other})"),
    }
}

/// The name a server's certificate must carry: the host of `host:port`
/// (IPv6 in brackets), a DNS name or an IP address.
pub fn server_name(address: &str) -> Result<ServerName<'static>, String> {
    let host = match address.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => address,
    };
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    ServerName::try_from(host.to_owned())
        .map_err(|_| format!("`{host}` is not a name TLS can check a certificate against"))
}

/// Runs the TLS handshake on `stream` (dialled to `address`) and splits the
/// result. The caller bounds it with its connect timeout.
pub async fn connect(stream: TcpStream, address: &str, tls: &Tls) -> Result<(TlsReader, TlsWriter), String> {
    let name = server_name(address)?;
    let mut session =
        ClientConnection::new(tls.config.clone(), name).map_err(|e| format!("TLS setup for {address} failed: {e}"))?;
    let (mut read_half, mut write_half) = stream.into_split();
    let failed = |e: &dyn fmt::Display| format!("TLS handshake with {address} failed: {e}");
    let mut scratch = Vec::with_capacity(CIPHERTEXT_CHUNK);
    loop {
        if session.wants_write() {
            let out = ciphertext(&mut session).map_err(|e| failed(&e))?;
            let (result, _) = write_half.write_all(out).await;
            result.map_err(|e| failed(&e))?;
            continue;
        }
        if !session.is_handshaking() {
            break;
        }
        scratch.clear();
        let (result, returned) = read_half.read(scratch).await;
        scratch = returned;
        match result {
            Ok(0) => return Err(failed(&"Redis closed the connection (is this port TLS?)")),
            Ok(_) => {}
            Err(e) => return Err(failed(&e)),
        }
        if let Err(error) = absorb(&mut session, &scratch, None) {
            // Tell Redis why (rustls queued an alert), then give up.
            if let Ok(alert) = ciphertext(&mut session) {
                let _ = write_half.write_all(alert).await;
            }
            return Err(failed(&error));
        }
    }
    let session = Rc::new(RefCell::new(session));
    let reader = TlsReader { half: read_half, session: session.clone(), scratch: Some(scratch) };
    Ok((reader, TlsWriter { half: write_half, session }))
}

/// Feeds ciphertext to rustls. With `plaintext`, decrypted bytes are moved
/// there as they come, so rustls' bounded plaintext buffer never fills;
/// during the handshake there is none (Redis speaks only when spoken to).
fn absorb(
    session: &mut ClientConnection,
    mut bytes: &[u8],
    mut plaintext: Option<&mut BytesMut>,
) -> Result<(), String> {
    while !bytes.is_empty() {
        match session.read_tls(&mut bytes) {
            Ok(0) => return Err("Redis sent data after closing the TLS session".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        session.process_new_packets().map_err(|e| e.to_string())?;
        if let Some(out) = plaintext.as_deref_mut() {
            drain_plaintext(session, out)?;
        }
    }
    Ok(())
}

/// Moves the plaintext rustls holds into `out`; `Ok(false)` once Redis has
/// closed the TLS session (close_notify) and nothing is left.
fn drain_plaintext(session: &mut ClientConnection, out: &mut BytesMut) -> Result<bool, String> {
    let mut chunk = [0u8; 4096];
    loop {
        match session.reader().read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The ciphertext rustls wants sent.
fn ciphertext(session: &mut ClientConnection) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while session.wants_write() {
        session.write_tls(&mut out)?;
    }
    Ok(out)
}

/// The reading half: ciphertext from the socket, plaintext to the caller.
///
/// A TLS message this side must answer (a TLS 1.3 KeyUpdate that requests
/// one back) is queued in the shared session and goes out with the next
/// write on the connection; the reader never writes.
pub struct TlsReader {
    half: TcpOwnedReadHalf,
    session: Rc<RefCell<ClientConnection>>,
    /// The read buffer, handed to the kernel and back.
    scratch: Option<Vec<u8>>,
}

impl TlsReader {
    /// Appends decrypted bytes to `out`; `Ok(0)` when Redis closed the
    /// connection.
    pub async fn read(&mut self, out: &mut BytesMut) -> Result<usize, String> {
        let before = out.len();
        loop {
            // The borrow ends before the await below.
            let open = drain_plaintext(&mut self.session.borrow_mut(), out).map_err(tls_error)?;
            if out.len() > before || !open {
                return Ok(out.len() - before);
            }
            let mut scratch = self.scratch.take().unwrap_or_else(|| Vec::with_capacity(CIPHERTEXT_CHUNK));
            scratch.clear();
            let (result, scratch) = self.half.read(scratch).await;
            let filled = match result {
                Ok(0) => return Ok(0),
                Ok(n) => n,
                Err(e) => return Err(format!("read from Redis failed: {e}")),
            };
            absorb(&mut self.session.borrow_mut(), &scratch[..filled], Some(out)).map_err(tls_error)?;
            self.scratch = Some(scratch);
            if out.len() > before {
                return Ok(out.len() - before);
            }
        }
    }
}

fn tls_error(error: String) -> String {
    format!("TLS error on the Redis connection: {error}")
}

/// The writing half: plaintext from the caller, ciphertext to the socket.
pub struct TlsWriter {
    half: TcpOwnedWriteHalf,
    session: Rc<RefCell<ClientConnection>>,
}

impl TlsWriter {
    /// Encrypts and sends all of `bytes` (rustls takes plaintext up to its
    /// buffer limit at a time, so a large write goes out in several rounds).
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), String> {
        let mut offset = 0;
        loop {
            let out = {
                // The borrow ends before the await below.
                let mut session = self.session.borrow_mut();
                offset += session.writer().write(&bytes[offset..]).map_err(|e| tls_error(e.to_string()))?;
                ciphertext(&mut session).map_err(|e| tls_error(e.to_string()))?
            };
            if out.is_empty() {
                if offset < bytes.len() {
                    return Err(tls_error("rustls accepted no more plaintext".into()));
                }
                return Ok(());
            }
            let (result, _) = self.half.write_all(out).await;
            result.map_err(|e| format!("write to Redis failed: {e}"))?;
            if offset == bytes.len() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_the_host_of_the_address() {
        assert_eq!(server_name("redis.internal:6380").unwrap(), ServerName::try_from("redis.internal").unwrap());
        assert_eq!(server_name("10.0.0.5:6379").unwrap(), ServerName::try_from("10.0.0.5").unwrap());
        assert_eq!(server_name("[::1]:6379").unwrap(), ServerName::try_from("::1").unwrap());
        assert!(server_name("bad name:6379").is_err());
    }

    #[test]
    fn unusable_files_name_their_flag() {
        let missing = Path::new("/nonexistent/ca.pem");
        let err = Tls::load(TlsFiles { ca: Some(missing), ..TlsFiles::default() }).unwrap_err();
        assert_eq!(err.flag, "redis-ca");
        assert!(err.reason.starts_with("/nonexistent/ca.pem: cannot be read ("), "{}", err.reason);
        let err = Tls::load(TlsFiles { cert: Some(missing), ..TlsFiles::default() }).unwrap_err();
        assert_eq!(err.flag, "redis-key");
        let empty = std::env::temp_dir().join(format!("ssekify-tls-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = Tls::load(TlsFiles { ca: Some(&empty), ..TlsFiles::default() }).unwrap_err();
        let _ = std::fs::remove_file(&empty);
        assert!(err.reason.ends_with("holds no PEM certificate"), "{}", err.reason);
        assert!(Tls::load(TlsFiles::default()).is_ok());
    }
}
