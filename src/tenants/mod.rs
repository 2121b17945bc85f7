//! Tenant quotas and keys (API.md "Tenant quotas and keys"): the
//! `--tenant-config` file, validated into a [`TenantConfig`].
//!
//! Parts: this module reads and checks the file; [`bucket`] is the publish
//! rate's token bucket (pure arithmetic); [`quota`] holds the instance's
//! live counts (connections and buckets per tenant) that the limits are
//! compared against.
//!
//! ```json
//! { "defaults": {"maxConnections": 10000, "publishRate": 1000, "publishBurst": 2000, "recentMaxBytes": "64MiB"},
//!   "tenants": {"acme": {"apiKey": "…", "maxConnections": 50000, "publishRate": 5000}} }
//! ```
//!
//! Every field is optional; a listed tenant's missing limits come from
//! `defaults`, and a limit missing in both is no limit. Tenants the file
//! does not list get `defaults` and share the metrics label `_other`.
//! A [`TenantConfig`] is immutable: a reload builds a new one and the shards
//! swap their `Arc` (see `server::signals`), so nothing on the delivery path
//! ever waits for it.

pub mod bucket;
pub mod quota;

use std::fmt;
use std::path::{Path, PathBuf};

use ahash::AHashMap;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::namespace::valid_name;
use bucket::Rate;

/// The metrics label (and stats label) shared by tenants the file does not list.
pub const OTHER: &str = "_other";

/// Largest tenant config file read: far above any hand-written file, small
/// enough that a wrong path (a log, a device) cannot fill memory.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Slowest `publishRate`: one message in about 17 minutes; slower is a
/// tenant that should not publish at all (leave its key out instead).
pub const MIN_RATE: f64 = 0.001;
/// Fastest `publishRate`: far beyond what one instance delivers.
pub const MAX_RATE: f64 = 1e9;

/// One tenant's limits, each `None` when unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Subscribers on `/t/{tenant}/sse` (`429 tenant_quota` beyond).
    pub max_connections: Option<u64>,
    /// Messages per second and burst of its publishes, per instance.
    pub publish: Option<Rate>,
    /// Replay ring bytes it may hold on this instance.
    pub recent_max_bytes: Option<usize>,
}

/// A tenant the file lists.
#[derive(Clone, PartialEq)]
pub struct Tenant {
    /// Its name, as in `/t/{tenant}/…`.
    pub name: Box<str>,
    /// Its own api key: authorises its `/v1/t/{tenant}/…` routes only.
    pub api_key: Option<String>,
    /// Its limits, `defaults` filled in.
    pub limits: Limits,
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tenant")
            .field("name", &self.name)
            .field("api_key", &self.api_key.as_ref().map(|_| "(set)"))
            .field("limits", &self.limits)
            .finish()
    }
}

/// The validated file: defaults, the listed tenants (sorted by name) and
/// the lookups built once per load.
#[derive(Debug, Clone, Default)]
pub struct TenantConfig {
    /// Where it was read from (`None`: no file, every tenant unlimited).
    pub path: Option<PathBuf>,
    /// Limits of tenants the file does not list.
    pub defaults: Limits,
    tenants: Vec<Tenant>,
    /// Name → index in `tenants`.
    by_name: AHashMap<Box<str>, usize>,
    /// SHA-256 of each apiKey → index in `tenants` (see [`TenantConfig::key_owner`]).
    by_key_digest: AHashMap<[u8; 32], usize>,
}

/// What the file's fields are called, for errors and unknown-field checks.
const LIMIT_FIELDS: [&str; 4] = ["maxConnections", "publishRate", "publishBurst", "recentMaxBytes"];

impl TenantConfig {
    /// Reads and validates `path`; `instance_key` is `--api-key`, which no
    /// tenant key may repeat. Errors name the file and then the field.
    pub fn load(path: &Path, instance_key: Option<&str>) -> Result<TenantConfig, String> {
        let shown = path.display();
        let mut text = Vec::new();
        std::fs::File::open(path)
            .and_then(|file| std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_FILE_BYTES), &mut text))
            .map_err(|e| format!("{shown}: cannot be read ({e})"))?;
        let mut config = TenantConfig::parse(&text, instance_key).map_err(|why| format!("{shown}: {why}"))?;
        config.path = Some(path.to_owned());
        Ok(config)
    }

    /// Validates the file's text (see the module docs for the shape).
    pub fn parse(text: &[u8], instance_key: Option<&str>) -> Result<TenantConfig, String> {
        let top: Value = serde_json::from_slice(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let top = object(&top, "the file")?;
        refuse_unknown(top, &["defaults", "tenants"], "")?;
        let defaults = match top.get("defaults") {
            Some(value) => {
                let fields = object(value, "defaults")?;
                refuse_unknown(fields, &LIMIT_FIELDS, "defaults.")?;
                limits(fields, "defaults", &Limits::default(), true)?
            }
            None => Limits::default(),
        };
        let mut config = TenantConfig { defaults, ..TenantConfig::default() };
        let Some(listed) = top.get("tenants") else { return Ok(config) };
        let mut names: Vec<(&String, &Value)> = object(listed, "tenants")?.iter().collect();
        names.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (name, value) in names {
            let at = format!("tenants.{name}");
            if !valid_name(name) {
                return Err(format!("{at}: is not a tenant name (1-128 bytes without control characters, ',' or '/')"));
            }
            if name == OTHER {
                return Err(format!("{at}: `{OTHER}` is reserved (the metrics label of tenants not listed)"));
            }
            let fields = object(value, &at)?;
            let mut known = LIMIT_FIELDS.to_vec();
            known.push("apiKey");
            refuse_unknown(fields, &known, &format!("{at}."))?;
            let api_key = match fields.get("apiKey") {
                None => None,
                Some(Value::String(key)) if valid_key(key) => Some(key.clone()),
                Some(_) => return Err(format!("{at}.apiKey: must be a string of 1-256 visible ASCII characters")),
            };
            let index = config.tenants.len();
            if let Some(key) = &api_key {
                if instance_key == Some(key.as_str()) {
                    return Err(format!("{at}.apiKey: is the instance's --api-key; give the tenant a key of its own"));
                }
                if let Some(&other) = config.by_key_digest.get(&digest(key)) {
                    return Err(format!(
                        "{at}.apiKey: is also {}'s apiKey; every tenant needs its own",
                        config.tenants[other].name
                    ));
                }
                config.by_key_digest.insert(digest(key), index);
            }
            let limits = limits(fields, &at, &config.defaults, false)?;
            config.by_name.insert(name.as_str().into(), index);
            config.tenants.push(Tenant { name: name.as_str().into(), api_key, limits });
        }
        Ok(config)
    }

    /// The listed tenants, sorted by name.
    pub fn tenants(&self) -> &[Tenant] {
        &self.tenants
    }

    /// The limits that apply to `tenant` (its own, or `defaults` when unlisted).
    pub fn limits(&self, tenant: &str) -> &Limits {
        self.by_name.get(tenant).map_or(&self.defaults, |&index| &self.tenants[index].limits)
    }

    /// The metrics slot of `tenant`: `0` for [`OTHER`] (unlisted tenants),
    /// `1 + index` for a listed one. Slots index the shards' per-tenant
    /// counters; [`TenantConfig::label`] names them.
    pub fn slot(&self, tenant: &str) -> usize {
        self.by_name.get(tenant).map_or(0, |&index| index + 1)
    }

    /// Slots in use: [`OTHER`] and one per listed tenant.
    pub fn slots(&self) -> usize {
        self.tenants.len() + 1
    }

    /// The label of `slot` (see [`TenantConfig::slot`]).
    pub fn label(&self, slot: usize) -> &str {
        match slot {
            0 => OTHER,
            slot => &self.tenants[slot - 1].name,
        }
    }

    /// The listed tenant whose apiKey may be `given`, with that key, for
    /// the caller to confirm in constant time. The digest lookup reveals
    /// nothing about a key's bytes (finding a key from its SHA-256 is a
    /// preimage attack), so timing it tells an attacker nothing.
    /// Without tenant keys (or a key given) nothing is hashed: the api
    /// routes pay for the lookup only where it can find something.
    pub fn key_owner(&self, given: &[u8]) -> Option<(&str, &str)> {
        if self.by_key_digest.is_empty() || given.is_empty() {
            return None;
        }
        let &index = self.by_key_digest.get(&digest(given))?;
        let tenant = &self.tenants[index];
        Some((&*tenant.name, tenant.api_key.as_deref()?))
    }

    /// The apiKey of `tenant`, when the file gives it one.
    pub fn api_key(&self, tenant: &str) -> Option<&str> {
        self.by_name.get(tenant).and_then(|&index| self.tenants[index].api_key.as_deref())
    }

    /// A line for `check-config` and the start-up log: the file, the
    /// tenants, the defaults (never a key).
    pub fn summary(&self) -> String {
        let Some(path) = &self.path else { return "none".into() };
        let names: Vec<&str> = self.tenants.iter().map(|t| &*t.name).collect();
        let keys = self.tenants.iter().filter(|t| t.api_key.is_some()).count();
        format!(
            "{} ({} tenants: {}; {keys} with an apiKey; defaults: {})",
            path.display(),
            names.len(),
            if names.is_empty() { "none".into() } else { names.join(",") },
            describe(&self.defaults)
        )
    }
}

/// `maxConnections=…, publishRate=…/s burst …, recentMaxBytes=…`, or `none`.
fn describe(limits: &Limits) -> String {
    let mut parts = Vec::new();
    if let Some(n) = limits.max_connections {
        parts.push(format!("maxConnections={n}"));
    }
    if let Some(rate) = limits.publish {
        parts.push(format!("publishRate={}/s burst {}", rate.per_second, rate.burst));
    }
    if let Some(bytes) = limits.recent_max_bytes {
        parts.push(format!("recentMaxBytes={bytes}B"));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

fn digest(key: impl AsRef<[u8]>) -> [u8; 32] {
    Sha256::digest(key.as_ref()).into()
}

/// An apiKey travels in an `Authorization` header: visible ASCII, bounded.
fn valid_key(key: &str) -> bool {
    (1..=256).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

fn object<'a>(value: &'a Value, at: &str) -> Result<&'a Map<String, Value>, String> {
    value.as_object().ok_or_else(|| format!("{at}: must be a JSON object"))
}

fn refuse_unknown(fields: &Map<String, Value>, known: &[&str], prefix: &str) -> Result<(), String> {
    match fields.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => Err(format!("{prefix}{key}: unknown field (known: {})", known.join(", "))),
        None => Ok(()),
    }
}

/// The limits in `fields` (at `at`), missing ones taken from `inherited`.
/// `publishBurst` defaults to one second of `publishRate` (at least 1).
fn limits(fields: &Map<String, Value>, at: &str, inherited: &Limits, is_defaults: bool) -> Result<Limits, String> {
    let positive_integer = |name: &str| -> Result<Option<u64>, String> {
        match fields.get(name) {
            None => Ok(None),
            Some(value) => match value.as_u64() {
                Some(n) if n > 0 => Ok(Some(n)),
                _ => Err(format!("{at}.{name}: must be a positive integer (leave it out for no limit)")),
            },
        }
    };
    let max_connections = positive_integer("maxConnections")?.or(inherited.max_connections);
    let rate = match fields.get("publishRate") {
        None => None,
        Some(value) => match value.as_f64() {
            Some(rate) if (MIN_RATE..=MAX_RATE).contains(&rate) => Some(rate),
            _ => {
                return Err(format!(
                    "{at}.publishRate: must be a positive number (messages per second, {MIN_RATE} to {MAX_RATE})"
                ))
            }
        },
    };
    let burst = positive_integer("publishBurst")?;
    let publish = match (rate, burst) {
        (Some(rate), burst) => Some(Rate::new(rate, burst)),
        // A burst alone sharpens the inherited rate.
        (None, Some(burst)) => match inherited.publish {
            Some(inherited) => Some(Rate::new(inherited.per_second, Some(burst))),
            None if is_defaults => return Err(format!("{at}.publishBurst: needs publishRate")),
            None => return Err(format!("{at}.publishBurst: needs a publishRate (here or in defaults)")),
        },
        (None, None) => inherited.publish,
    };
    let recent_max_bytes = match fields.get("recentMaxBytes") {
        None => inherited.recent_max_bytes,
        Some(value) => {
            let bytes = match value {
                Value::String(text) => crate::units::parse_size(text).ok(),
                other => other.as_u64().and_then(|n| usize::try_from(n).ok()),
            };
            match bytes {
                Some(bytes) if bytes > 0 => Some(bytes),
                _ => {
                    return Err(format!(
                        "{at}.recentMaxBytes: must be a positive size such as 65536, \"256KiB\" or \"64MiB\""
                    ))
                }
            }
        }
    };
    Ok(Limits { max_connections, publish, recent_max_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TenantConfig, String> {
        TenantConfig::parse(text.as_bytes(), Some("instance-key"))
    }

    #[test]
    fn the_contracts_example_parses_and_fills_in_defaults() {
        let config = parse(
            r#"{ "defaults": {"maxConnections": 10000, "publishRate": 1000, "publishBurst": 2000, "recentMaxBytes": "64MiB"},
                 "tenants": {"acme": {"apiKey": "acme-key", "maxConnections": 50000, "publishRate": 5000},
                             "globex": {}} }"#,
        )
        .unwrap();
        let acme = config.limits("acme");
        assert_eq!(acme.max_connections, Some(50_000));
        assert_eq!(acme.publish, Some(Rate::new(5000.0, None)), "its own rate, a burst of one second of it");
        assert_eq!(acme.publish.unwrap().burst, 5000);
        assert_eq!(acme.recent_max_bytes, Some(64 << 20), "from defaults");
        assert_eq!(config.limits("globex"), &config.defaults);
        assert_eq!(config.limits("unlisted"), &config.defaults);
        assert_eq!(config.defaults.publish.unwrap().burst, 2000);
        assert_eq!((config.slot("acme"), config.slot("globex"), config.slot("initech")), (1, 2, 0));
        assert_eq!((config.label(0), config.label(1), config.slots()), (OTHER, "acme", 3));
        assert_eq!(config.key_owner(b"acme-key"), Some(("acme", "acme-key")));
        assert_eq!(config.key_owner(b"acme-kez"), None);
        assert_eq!(config.api_key("acme"), Some("acme-key"));
        assert_eq!(config.api_key("globex"), None);
        assert!(!format!("{config:?}").contains("acme-key"), "Debug hides keys");
    }

    #[test]
    fn everything_is_optional_and_missing_means_unlimited() {
        for text in ["{}", r#"{"defaults": {}}"#, r#"{"tenants": {"a": {}}}"#] {
            let config = parse(text).unwrap();
            assert_eq!(config.limits("a"), &Limits::default(), "{text}");
        }
        let config = parse(r#"{"defaults": {"publishRate": 2.5}, "tenants": {"a": {"publishBurst": 10}}}"#).unwrap();
        assert_eq!(config.limits("a").publish, Some(Rate::new(2.5, Some(10))), "a burst sharpens the default rate");
        assert_eq!(config.defaults.publish.unwrap().burst, 3, "one second of 2.5/s, rounded up");
        let config = parse(r#"{"defaults": {"recentMaxBytes": 4096}}"#).unwrap();
        assert_eq!(config.defaults.recent_max_bytes, Some(4096));
    }

    #[test]
    fn errors_name_the_tenant_and_the_field() {
        for (text, error) in [
            (r#"{"tenants": {"acme": {"publishRate": 0}}}"#, "tenants.acme.publishRate: must be a positive number"),
            (
                r#"{"tenants": {"acme": {"publishRate": "fast"}}}"#,
                "tenants.acme.publishRate: must be a positive number",
            ),
            (
                r#"{"tenants": {"acme": {"maxConnections": -1}}}"#,
                "tenants.acme.maxConnections: must be a positive integer",
            ),
            (
                r#"{"tenants": {"acme": {"maxConnections": 1.5}}}"#,
                "tenants.acme.maxConnections: must be a positive integer",
            ),
            (
                r#"{"tenants": {"acme": {"recentMaxBytes": "lots"}}}"#,
                "tenants.acme.recentMaxBytes: must be a positive size",
            ),
            (r#"{"tenants": {"acme": {"publishBurst": 5}}}"#, "tenants.acme.publishBurst: needs a publishRate"),
            (r#"{"defaults": {"publishBurst": 5}}"#, "defaults.publishBurst: needs publishRate"),
            (r#"{"tenants": {"acme": {"maxconnections": 5}}}"#, "tenants.acme.maxconnections: unknown field"),
            (r#"{"defaults": {"apiKey": "k"}}"#, "defaults.apiKey: unknown field"),
            (r#"{"tenant": {}}"#, "tenant: unknown field"),
            (r#"{"tenants": {"a/b": {}}}"#, "tenants.a/b: is not a tenant name"),
            (r#"{"tenants": {"": {}}}"#, "tenants.: is not a tenant name"),
            (r#"{"tenants": {"_other": {}}}"#, "tenants._other: `_other` is reserved"),
            (r#"{"tenants": {"acme": {"apiKey": ""}}}"#, "tenants.acme.apiKey: must be a string"),
            (r#"{"tenants": {"acme": {"apiKey": "with space"}}}"#, "tenants.acme.apiKey: must be a string"),
            (
                r#"{"tenants": {"acme": {"apiKey": "instance-key"}}}"#,
                "tenants.acme.apiKey: is the instance's --api-key",
            ),
            (
                r#"{"tenants": {"acme": {"apiKey": "same"}, "globex": {"apiKey": "same"}}}"#,
                "tenants.globex.apiKey: is also acme's apiKey",
            ),
            (r#"{"tenants": []}"#, "tenants: must be a JSON object"),
            (r#"{"tenants": {"acme": 5}}"#, "tenants.acme: must be a JSON object"),
            ("[]", "the file: must be a JSON object"),
            ("{", "not valid JSON"),
        ] {
            let got = parse(text).expect_err(text);
            assert!(got.starts_with(error), "{text}: {got}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let missing = TenantConfig::load(Path::new("/nonexistent/tenants.json"), None).unwrap_err();
        assert!(missing.starts_with("/nonexistent/tenants.json: cannot be read ("), "{missing}");
        let path = std::env::temp_dir().join(format!("ssekify-tenants-{}.json", std::process::id()));
        std::fs::write(&path, r#"{"tenants": {"acme": {"publishRate": -2}}}"#).unwrap();
        let bad = TenantConfig::load(&path, None).unwrap_err();
        assert_eq!(
            bad,
            format!(
                "{}: tenants.acme.publishRate: must be a positive number (messages per second, 0.001 to 1000000000)",
                path.display()
            )
        );
        std::fs::write(&path, r#"{"tenants": {"acme": {"maxConnections": 2}}}"#).unwrap();
        let good = TenantConfig::load(&path, None).unwrap();
        assert_eq!(good.path.as_deref(), Some(path.as_path()));
        assert!(good.summary().contains("1 tenants: acme"), "{}", good.summary());
        std::fs::remove_file(&path).unwrap();
    }
}
