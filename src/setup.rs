//! What the server runs with, built from the validated flags: the
//! subscriber authenticator (keys, files and JWKS loaded), the bus's Redis
//! address with its TLS files, the tenant file and the lifecycle events
//! endpoint. Kept apart from [`crate::config`], which only reads and checks
//! flags, so that `config` stays a leaf every layer may read, and the
//! modules that build these (auth, bus, tenants, http) stay below it.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::jwks::Jwks;
use crate::auth::jwt::Verifier;
use crate::auth::keys::PublicKey;
use crate::auth::webhook::{self, Webhook};
use crate::auth::{Authenticator, Key, MIN_SECRET_BYTES};
use crate::bus::url::RedisUrl;
use crate::config::{AuthMode, Config, ConfigError, ServerArgs, MIN_JWKS_REFRESH};
use crate::http::client::Endpoint;
use crate::tenants::TenantConfig;
use crate::tls::{Tls, TlsFiles};
use crate::units::parse_duration;

/// The validated flags and the objects built from them.
#[derive(Debug)]
pub struct Setup {
    /// Every plain setting.
    pub config: Config,
    /// Subscriber auth mode and its key.
    pub auth: Authenticator,
    /// The bus's Redis, when several instances share messages.
    pub redis: Option<RedisUrl>,
    /// Tenant quotas and keys as loaded at start (`None`: no `--tenant-config`;
    /// SIGHUP re-reads the file and the shards swap theirs).
    pub tenant_config: Option<Arc<TenantConfig>>,
    /// Where lifecycle events are POSTed (resolved at start).
    pub events_url: Option<Endpoint>,
}

impl TryFrom<ServerArgs> for Setup {
    type Error = ConfigError;

    fn try_from(cli: ServerArgs) -> Result<Self, ConfigError> {
        let config = Config::try_from(&cli)?;
        let auth = authenticator(&cli)?;
        let redis = redis(&cli)?;
        let tenant_config = match cli.tenant_config.as_deref().filter(|path| !path.as_os_str().is_empty()) {
            Some(path) => Some(Arc::new(
                TenantConfig::load(path, config.api_key.as_deref())
                    .map_err(|why| ConfigError::new("tenant-config", why))?,
            )),
            None => None,
        };
        let events_url = match cli.events_url.as_deref().filter(|url| !url.is_empty()) {
            Some(url) => Some(Endpoint::parse(url).map_err(|why| ConfigError::new("events-url", why))?),
            None => None,
        };
        Ok(Setup { config, auth, redis, tenant_config, events_url })
    }
}

fn duration(flag: &'static str, text: &str) -> Result<Duration, ConfigError> {
    parse_duration(text).map_err(|reason| ConfigError::new(flag, reason))
}

/// Keys HMAC-SHA256 with the secret given to `flag`, refusing a missing one
/// (`purpose` says what needs it) or one shorter than [`MIN_SECRET_BYTES`].
pub fn hmac_key(flag: &'static str, secret: Option<&str>, purpose: &str) -> Result<Key, ConfigError> {
    let env = format!("SSEKIFY_{}", flag.to_ascii_uppercase().replace('-', "_"));
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        return Err(ConfigError::new(flag, format!("{purpose} needs a secret: set --{flag} or {env}")));
    };
    if secret.len() < MIN_SECRET_BYTES {
        return Err(ConfigError::new(
            flag,
            format!(
                "must be at least {MIN_SECRET_BYTES} bytes (it is {}): an HMAC-SHA256 key shorter than the hash \
                 is easier to guess than a signature is to forge (RFC 7518 §3.2); `openssl rand -base64 32` makes one",
                secret.len()
            ),
        ));
    }
    Ok(Key::new(secret.as_bytes()))
}

/// `--auth jwt`'s keys and expectations: at least one key, one JWKS source.
fn jwt_verifier(cli: &ServerArgs, leeway: Duration) -> Result<Verifier, ConfigError> {
    let secret = match cli.jwt_secret.as_deref().filter(|s| !s.is_empty()) {
        Some(secret) => Some(hmac_key("jwt-secret", Some(secret), "--auth jwt")?),
        None => None,
    };
    let public_key = match &cli.jwt_public_key {
        Some(path) => {
            let why = |why: String| ConfigError::new("jwt-public-key", format!("{}: {why}", path.display()));
            let mut pem = Vec::new();
            std::fs::File::open(path)
                .and_then(|file| std::io::Read::read_to_end(&mut std::io::Read::take(file, 1 << 20), &mut pem))
                .map_err(|e| why(format!("cannot be read ({e})")))?;
            Some(PublicKey::from_pem(&pem).map_err(why)?)
        }
        None => None,
    };
    let jwks = match (&cli.jwks_file, cli.jwks_url.as_deref().filter(|url| !url.is_empty())) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new("jwks-url", "and --jwks-file both give the key set: choose one"));
        }
        (Some(path), None) => Some(Jwks::file(path.clone()).map_err(|why| ConfigError::new("jwks-file", why))?),
        (None, Some(url)) => {
            let every = duration("jwks-refresh", &cli.jwks_refresh)?;
            if every < MIN_JWKS_REFRESH {
                return Err(ConfigError::new("jwks-refresh", "must be at least 1s"));
            }
            let tls = match &cli.jwks_ca {
                Some(_) if !url.starts_with("https://") => {
                    return Err(ConfigError::new("jwks-ca", "is for an https:// --jwks-url"));
                }
                Some(ca) => Tls::with_ca("jwks-ca", ca).map_err(|e| ConfigError::new(e.flag, e.reason))?,
                None => Tls::public_roots(),
            };
            let jwks = Jwks::url(url, every, tls.client_config())
                .map_err(|why| ConfigError::new("jwks-url", format!("`{}` {why}", webhook::shown_url(url))))?;
            Some(jwks)
        }
        (None, None) => None,
    };
    if secret.is_none() && public_key.is_none() && jwks.is_none() {
        return Err(ConfigError::new(
            "jwt-secret",
            "--auth jwt needs a key: set --jwt-secret or SSEKIFY_JWT_SECRET (HS256), or --jwt-public-key, \
             --jwks-file or --jwks-url (RS256/ES256)",
        ));
    }
    let nonempty = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
    Ok(Verifier {
        secret,
        public_key,
        jwks: jwks.map(std::sync::Arc::new),
        issuer: nonempty(&cli.jwt_issuer),
        audience: nonempty(&cli.jwt_audience),
        leeway,
    })
}

fn authenticator(cli: &ServerArgs) -> Result<Authenticator, ConfigError> {
    let leeway = duration("auth-leeway", &cli.auth_leeway)?;
    // Keys for tokens without --auth jwt are a mistake to point out, not to
    // ignore: the operator meant to check tokens and the server would not.
    let token_flags = [
        ("jwt-public-key", cli.jwt_public_key.is_some()),
        ("jwks-file", cli.jwks_file.is_some()),
        ("jwks-url", cli.jwks_url.as_deref().is_some_and(|url| !url.is_empty())),
        ("jwks-ca", cli.jwks_ca.is_some()),
        ("jwt-issuer", cli.jwt_issuer.as_deref().is_some_and(|issuer| !issuer.is_empty())),
        ("jwt-audience", cli.jwt_audience.as_deref().is_some_and(|audience| !audience.is_empty())),
    ];
    if let Some((flag, _)) = token_flags.iter().find(|(_, given)| *given).filter(|_| cli.auth != AuthMode::Jwt) {
        return Err(ConfigError::new(flag, "is for --auth jwt, and --auth is not jwt"));
    }
    Ok(match cli.auth {
        AuthMode::None => Authenticator::None,
        AuthMode::Jwt => Authenticator::Jwt(Box::new(jwt_verifier(cli, leeway)?)),
        AuthMode::Signed => {
            Authenticator::Signed { key: hmac_key("sign-secret", cli.sign_secret.as_deref(), "--auth signed")?, leeway }
        }
        AuthMode::Webhook => {
            let url = cli.auth_url.as_deref().filter(|u| !u.is_empty()).ok_or_else(|| {
                ConfigError::new(
                    "auth-url",
                    "--auth webhook needs the application's URL: set --auth-url or SSEKIFY_AUTH_URL",
                )
            })?;
            let timeout = duration("auth-timeout", &cli.auth_timeout)?;
            if timeout.is_zero() {
                return Err(ConfigError::new("auth-timeout", "must be above zero"));
            }
            let ttl = duration("auth-cache-ttl", &cli.auth_cache_ttl)?;
            let hook = Webhook::new(url, timeout, ttl, cli.auth_cache_max)
                .map_err(|why| ConfigError::new("auth-url", format!("`{}` {why}", webhook::shown_url(url))))?;
            Authenticator::Webhook(Box::new(hook))
        }
    })
}

/// `--redis` with the TLS files applied; the files without a TLS address are
/// refused rather than ignored (the operator meant to encrypt).
fn redis(cli: &ServerArgs) -> Result<Option<RedisUrl>, ConfigError> {
    let files =
        TlsFiles { ca: cli.redis_ca.as_deref(), cert: cli.redis_cert.as_deref(), key: cli.redis_key.as_deref() };
    let given = [("redis-ca", files.ca), ("redis-cert", files.cert), ("redis-key", files.key)]
        .into_iter()
        .find_map(|(flag, path)| path.map(|_| flag));
    let Some(text) = cli.redis.as_deref().filter(|r| !r.is_empty()) else {
        return match given {
            Some(flag) => Err(ConfigError::new(flag, "is for a rediss:// address, and --redis is not set")),
            None => Ok(None),
        };
    };
    let mut url = crate::bus::url::parse(text).map_err(|why| ConfigError::new("redis", why))?;
    match (&mut url.tls, given) {
        (Some(tls), Some(_)) => *tls = Tls::load(files).map_err(|e| ConfigError::new(e.flag, e.reason))?,
        (None, Some(flag)) => {
            return Err(ConfigError::new(flag, "is for a rediss:// address; --redis is not TLS (use rediss://)"))
        }
        _ => {}
    }
    Ok(Some(url))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> ServerArgs {
        let mut argv = vec!["ssekify"];
        argv.extend_from_slice(args);
        crate::config::Cli::try_parse_from(argv).expect("arguments parse").server
    }

    #[test]
    fn auth_modes_need_a_long_enough_secret() {
        const SECRET: &str = "0123456789abcdef0123456789abcdef";
        assert!(matches!(Setup::try_from(cli(&[])).unwrap().auth, Authenticator::None));
        let err = Setup::try_from(cli(&["--auth", "jwt"])).unwrap_err().to_string();
        assert!(
            err.starts_with("--jwt-secret: --auth jwt needs a key: set --jwt-secret or SSEKIFY_JWT_SECRET"),
            "{err}"
        );
        let err = Setup::try_from(cli(&["--auth", "signed", "--sign-secret", &SECRET[1..]])).unwrap_err();
        assert!(err.to_string().starts_with("--sign-secret: must be at least 32 bytes (it is 31)"), "{err}");
        let setup = Setup::try_from(cli(&["--auth", "jwt", "--jwt-secret", SECRET, "--auth-leeway", "5s"])).unwrap();
        assert!(matches!(&setup.auth, Authenticator::Jwt(verifier) if verifier.leeway == Duration::from_secs(5)));
        assert!(!format!("{setup:?}").contains(SECRET), "Debug must not print the secret");
        let setup = Setup::try_from(cli(&["--auth", "signed", "--sign-secret", SECRET])).unwrap();
        assert!(matches!(setup.auth, Authenticator::Signed { leeway, .. } if leeway == Duration::from_secs(30)));
        let err = Setup::try_from(cli(&["--auth", "webhook"])).unwrap_err().to_string();
        assert_eq!(err, "--auth-url: --auth webhook needs the application's URL: set --auth-url or SSEKIFY_AUTH_URL");
        let err = Setup::try_from(cli(&["--auth", "webhook", "--auth-url", "https://app/auth"])).unwrap_err();
        assert!(err.to_string().starts_with("--auth-url: `https://app/auth` must start with http://"), "{err}");
        let setup = Setup::try_from(cli(&["--auth", "webhook", "--auth-url", "http://127.0.0.1:3000/auth"])).unwrap();
        assert!(matches!(setup.auth, Authenticator::Webhook(hook) if hook.timeout == Duration::from_secs(2)));
    }

    #[test]
    fn tls_files_need_a_tls_address() {
        let err = Setup::try_from(cli(&["--redis", "redis://h:1", "--redis-ca", "/x.pem"])).unwrap_err();
        assert!(err.to_string().starts_with("--redis-ca: is for a rediss:// address"), "{err}");
        let err = Setup::try_from(cli(&["--redis-cert", "/x.pem"])).unwrap_err();
        assert!(err.to_string().starts_with("--redis-cert:"), "{err}");
        let err = Setup::try_from(cli(&["--redis", "rediss://h:1", "--redis-ca", "/nonexistent.pem"])).unwrap_err();
        assert!(err.to_string().starts_with("--redis-ca: /nonexistent.pem: cannot be read ("), "{err}");
        let setup = Setup::try_from(cli(&["--redis", "rediss://h:1"])).unwrap();
        assert!(setup.redis.is_some_and(|url| url.tls.is_some()));
    }

    #[test]
    fn the_tenant_config_is_loaded_and_its_errors_name_the_flag_file_and_field() {
        assert!(Setup::try_from(cli(&[])).unwrap().tenant_config.is_none());
        let path = std::env::temp_dir().join(format!("ssekify-config-tenants-{}.json", std::process::id()));
        std::fs::write(&path, r#"{"tenants": {"acme": {"apiKey": "k"}}}"#).unwrap();
        let shown = path.display().to_string();
        let err = Setup::try_from(cli(&["--tenant-config", &shown, "--api-key", "k"])).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("--tenant-config: {shown}: tenants.acme.apiKey: is the instance's --api-key; give the tenant a key of its own")
        );
        let setup = Setup::try_from(cli(&["--tenant-config", &shown])).unwrap();
        assert_eq!(setup.tenant_config.unwrap().api_key("acme"), Some("k"));
        std::fs::remove_file(&path).unwrap();
    }
}
