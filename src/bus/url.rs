//! `--redis` addresses: a single server, Sentinel, or a Cluster seed list.
//!
//! ```text
//! redis://[user:pass@]host:port[/db][?protocol=resp3]
//! rediss://…                       the same over TLS
//! redis-sentinel://[user:pass@]h1:26379,h2:26379/<master>[/db][?protocol=resp3]
//! rediss-sentinel://…              the same over TLS (Sentinels and master)
//! redis-cluster://[user:pass@]h1:7000,h2:7001[?protocol=resp3]
//! rediss-cluster://…               the same over TLS (every node)
//! ```
//! Credentials in a sentinel address authenticate to the master (Sentinels
//! are contacted without credentials).
//! A TLS address trusts Mozilla's roots until the configuration adds
//! `--redis-ca` and a client certificate ([`Tls::load`]).

use std::fmt;

use crate::tls::Tls;

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server.
    Single(String),
    /// Sentinels that name the master.
    Sentinel {
        /// `host:port` of each Sentinel.
        sentinels: Vec<String>,
        /// Master group name.
        master: String,
    },
    /// Cluster nodes to start from.
    Cluster(Vec<String>),
}

/// A parsed `--redis` value.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// Where to connect.
    pub topology: Topology,
    /// ACL user (with `password`).
    pub username: Option<String>,
    /// Password for AUTH.
    pub password: Option<String>,
    /// Database for SELECT (single and sentinel only).
    pub db: u32,
    /// Speak RESP3 (`HELLO 3`) instead of RESP2.
    pub resp3: bool,
    /// TLS settings, for `rediss://`, `rediss-sentinel://` and `rediss-cluster://`.
    pub tls: Option<Tls>,
}

/// The address with the password hidden, for logs.
impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.tls.is_some() { "s" } else { "" };
        let nodes = match &self.topology {
            Topology::Single(node) => format!("redis{s}://{node}"),
            Topology::Sentinel { sentinels, master } => format!("redis{s}-sentinel://{}/{master}", sentinels.join(",")),
            Topology::Cluster(nodes) => format!("redis{s}-cluster://{}", nodes.join(",")),
        };
        let auth = if self.password.is_some() { " (with password)" } else { "" };
        write!(f, "{nodes}{auth}")
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Parses a `--redis` value; the error is a sentence for the flag's message.
pub fn parse(text: &str) -> Result<RedisUrl, String> {
    let (scheme, rest) =
        text.split_once("://").ok_or("expected redis[s]://, redis[s]-sentinel:// or redis[s]-cluster://")?;
    let (scheme, tls) = match scheme {
        "rediss" => ("redis", true),
        "rediss-cluster" => ("redis-cluster", true),
        "rediss-sentinel" => ("redis-sentinel", true),
        other => (other, false),
    };
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let resp3 = match query {
        "" | "protocol=resp2" => false,
        "protocol=resp3" => true,
        other => return Err(format!("unknown option `{other}`; only protocol=resp2|resp3")),
    };
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((auth, rest)) => (Some(auth), rest),
        None => (None, rest),
    };
    let (username, password) = match auth {
        None => (None, None),
        Some(auth) => match auth.split_once(':') {
            Some(("", pass)) => (None, Some(pass.to_owned())),
            Some((user, pass)) => (Some(user.to_owned()), Some(pass.to_owned())),
            None => (None, Some(auth.to_owned())),
        },
    };
    let mut parts = rest.split('/');
    let hosts: Vec<String> =
        parts.next().unwrap_or_default().split(',').filter(|h| !h.is_empty()).map(with_port).collect();
    if hosts.is_empty() {
        return Err("no host given".into());
    }
    let db = |part: Option<&str>| -> Result<u32, String> {
        match part {
            None | Some("") => Ok(0),
            Some(db) => db.parse().map_err(|_| format!("`{db}` is not a database number")),
        }
    };
    let topology = match scheme {
        "redis" if hosts.len() == 1 => Topology::Single(hosts[0].clone()),
        "redis" => return Err("several hosts need redis[s]-sentinel:// or redis[s]-cluster://".into()),
        "redis-sentinel" => {
            let master = parts.next().filter(|m| !m.is_empty()).ok_or("redis-sentinel:// needs /<master name>")?;
            Topology::Sentinel { sentinels: hosts, master: master.to_owned() }
        }
        "redis-cluster" => Topology::Cluster(hosts),
        other => return Err(format!("unknown scheme `{other}`")),
    };
    let db = match &topology {
        Topology::Cluster(_) => 0,
        _ => db(parts.next())?,
    };
    let tls = tls.then(Tls::public_roots);
    Ok(RedisUrl { topology, username, password, db, resp3, tls })
}

/// `host:port` as given, or with Redis's default port (IPv6 needs brackets).
fn with_port(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() && (!h.contains(':') || h.starts_with('[')) => {
            host.to_owned()
        }
        _ => format!("{host}:6379"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_with_auth_and_db() {
        let url = parse("redis://app:secret@10.0.0.5:6380/2").unwrap();
        assert_eq!(url.topology, Topology::Single("10.0.0.5:6380".into()));
        assert_eq!((url.username.as_deref(), url.password.as_deref(), url.db), (Some("app"), Some("secret"), 2));
        assert!(!format!("{url}").contains("secret"));
        assert_eq!(parse("redis://localhost").unwrap().topology, Topology::Single("localhost:6379".into()));
        assert_eq!(parse("redis://:pw@h:1").unwrap().password.as_deref(), Some("pw"));
        assert!(parse("redis://h:1?protocol=resp3").unwrap().resp3);
    }

    #[test]
    fn sentinel_and_cluster() {
        let url = parse("redis-sentinel://s1:26379,s2:26380/mymaster/1").unwrap();
        assert_eq!(
            url.topology,
            Topology::Sentinel { sentinels: vec!["s1:26379".into(), "s2:26380".into()], master: "mymaster".into() }
        );
        assert_eq!(url.db, 1);
        let cluster = parse("redis-cluster://a:7000,b:7001").unwrap();
        assert_eq!(cluster.topology, Topology::Cluster(vec!["a:7000".into(), "b:7001".into()]));
    }

    #[test]
    fn tls_schemes() {
        let url = parse("rediss://app:secret@redis.internal:6380/1").unwrap();
        assert_eq!(url.topology, Topology::Single("redis.internal:6380".into()));
        assert!(url.tls.is_some());
        assert_eq!(format!("{url}"), "rediss://redis.internal:6380 (with password)");
        assert!(parse("redis://h:1").unwrap().tls.is_none());
        let cluster = parse("rediss-cluster://a:7000,b:7001").unwrap();
        assert_eq!(cluster.topology, Topology::Cluster(vec!["a:7000".into(), "b:7001".into()]));
        assert!(cluster.tls.is_some());
        assert_eq!(format!("{cluster}"), "rediss-cluster://a:7000,b:7001");
        let sentinel = parse("rediss-sentinel://s1:26379,s2:26380/m/2").unwrap();
        assert!(sentinel.tls.is_some());
        assert_eq!((format!("{sentinel}"), sentinel.db), ("rediss-sentinel://s1:26379,s2:26380/m".into(), 2));
        assert!(parse("rediss://a:1,b:2").is_err());
    }

    #[test]
    fn refusals() {
        assert!(parse("redis-sentinel://s1:1").is_err());
        assert!(parse("redis://a:1,b:2").is_err());
        assert!(parse("http://x").is_err());
        assert!(parse("redis://h:1/x").is_err());
    }
}
