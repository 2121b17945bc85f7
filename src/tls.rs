//! What a TLS client trusts and presents: rustls settings built once at
//! start-up, for the bus's `rediss://` connections (`--redis-ca`,
//! `--redis-cert`, `--redis-key`) and the JWKS fetch over https
//! (`--jwks-ca`). Server certificates are checked against Mozilla's roots
//! (`webpki-roots`) plus, when given, a private CA. There is no way to skip
//! the check.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::{Error as PemError, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// What a TLS client connection trusts and presents. Cheap to clone (one
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
