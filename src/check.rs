//! `ssekify check-config`: the server's flags and environment validated
//! exactly as a start validates them (the files they name read, the auth
//! webhook's host resolved), then the settings in force printed without a
//! secret, so a deploy can be checked before it replaces a running instance
//! and an operator can see what defaults and environment add up to.
//!
//! ```text
//! SSEKIFY_REDIS=redis://:pw@redis:6379 ssekify check-config --auth jwt
//! ```

use std::fmt::Write as _;
use std::time::Duration;

use crate::auth::Authenticator;
use crate::config::VERSION;
use crate::setup::Setup;

/// The report `check-config` prints for a valid `setup`: one `flag  value`
/// line per setting, secrets shown only as set, then notes on what the
/// server would warn about at start.
pub fn report(setup: &Setup) -> String {
    let mut out = format!("ssekify {VERSION}: the configuration is valid\n");
    let settings = settings(setup);
    let width = settings.iter().map(|(flag, _)| flag.len()).max().unwrap_or(0) + 2;
    for (flag, value) in &settings {
        let _ = writeln!(out, "  --{flag:<width$}{value}");
    }
    for note in notes(setup) {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

/// Every setting in `--help` order, as the server will use it.
fn settings(setup: &Setup) -> Vec<(&'static str, String)> {
    let config = &setup.config;
    let set = |secret: bool| if secret { "(set)".to_owned() } else { "none".to_owned() };
    let mut out = vec![
        ("listen", config.listen.to_string()),
        ("api-listen", config.api_listen.to_string()),
        ("api-key", set(config.api_key.is_some())),
        ("shards", config.shards.to_string()),
        ("pin-cores", config.pin_cores.to_string()),
        ("auth", setup.auth.mode().to_owned()),
    ];
    match &setup.auth {
        Authenticator::None => {}
        Authenticator::Jwt(verifier) => {
            let none = || "none".to_owned();
            out.push(("jwt-secret", set(verifier.secret.is_some())));
            out.push(("jwt-public-key", verifier.public_key.as_ref().map_or_else(none, |key| format!("{key:?}"))));
            match (&verifier.jwks, verifier.jwks.as_ref().and_then(|jwks| jwks.refresh_every())) {
                (Some(jwks), Some(every)) => {
                    out.push(("jwks-url", jwks.shown()));
                    out.push(("jwks-refresh", duration(every)));
                }
                (Some(jwks), None) => {
                    let keys = jwks.keys();
                    out.push(("jwks-file", format!("{} ({} keys: {})", jwks.shown(), keys.keys.len(), keys.kids())));
                }
                (None, _) => out.push(("jwks-file", none())),
            }
            out.push(("jwt-issuer", verifier.issuer.clone().unwrap_or_else(none)));
            out.push(("jwt-audience", verifier.audience.clone().unwrap_or_else(none)));
            out.push(("auth-leeway", duration(verifier.leeway)));
        }
        Authenticator::Signed { leeway, .. } => {
            out.push(("sign-secret", set(true)));
            out.push(("auth-leeway", duration(*leeway)));
        }
        Authenticator::Webhook(hook) => {
            out.push(("auth-url", hook.shown_url()));
            out.push(("auth-timeout", duration(hook.timeout)));
            out.push(("auth-cache-ttl", duration(hook.cache_ttl)));
            out.push(("auth-cache-max", hook.cache_max.to_string()));
        }
    }
    out.extend([
        ("cors-origin", config.cors_origin.clone().unwrap_or_else(|| "none".into())),
        ("demo", config.demo.to_string()),
        ("keep-alive", duration(config.keep_alive)),
        ("retry", duration(config.retry)),
        ("max-payload", size(config.max_payload)),
        ("max-batch-body", size(config.max_batch_body)),
        ("body-budget", size(config.body_budget)),
        ("recent-buffer", config.recent_buffer.to_string()),
        ("recent-ttl", duration(config.recent_ttl)),
        ("recent-max-users", config.recent_max_users.to_string()),
        ("recent-max-rooms", config.recent_max_rooms.to_string()),
        ("recent-max-bytes", size(config.recent_max_bytes)),
        ("idempotency-window", duration(config.idempotency_window)),
        ("idempotency-max-keys", config.idempotency_max_keys.to_string()),
        ("idempotency-max-bytes", size(config.idempotency_max_bytes)),
        // The address's Display hides the user and password.
        ("redis", setup.redis.as_ref().map_or_else(|| "none (one instance, no bus)".into(), |url| url.to_string())),
    ]);
    if setup.redis.is_some() {
        out.extend([
            ("channel", config.channel.clone()),
            ("bus-partitions", config.bus_partitions.to_string()),
            ("bus-history", config.bus_history.to_string()),
            ("bus-timeout", duration(config.bus_timeout)),
        ]);
    }
    out.extend([
        ("tenants", config.tenants.as_ref().map_or_else(|| "any".into(), |names| names.join(","))),
        ("tenant-config", setup.tenant_config.as_ref().map_or_else(|| "none".into(), |tenants| tenants.summary())),
        ("max-queue-items", config.max_queue_items.to_string()),
        ("max-queue-bytes", size(config.max_queue_bytes.get())),
        ("drop-policy", format!("{:?}", config.drop_policy).to_ascii_lowercase()),
        (
            "max-connections",
            config.max_connections.map_or_else(
                || "0 (derived at start from the open-file limit; the start-up line shows it)".into(),
                |n| n.to_string(),
            ),
        ),
        (
            "max-connections-per-user",
            config.max_connections_per_user.map_or_else(|| "0 (none)".into(), |n| n.to_string()),
        ),
        ("user-limit-policy", format!("{:?}", config.user_limit_policy).to_ascii_lowercase()),
        ("max-rooms-per-connection", config.max_rooms_per_connection.to_string()),
        ("presence-list-max", config.presence_list_max.to_string()),
        (
            "events-url",
            setup.events_url.as_ref().map_or_else(|| "none".into(), |url| crate::auth::webhook::shown_url(&url.url())),
        ),
        ("max-head", size(config.max_head)),
        ("max-headers", config.max_headers.to_string()),
        ("read-timeout", duration(config.read_timeout)),
        ("idle-timeout", duration(config.idle_timeout)),
        ("write-timeout", duration(config.write_timeout)),
        ("shutdown-grace", duration(config.shutdown_grace)),
        ("backlog", config.backlog.to_string()),
        ("io-driver", format!("{:?}", config.io_driver).to_ascii_lowercase()),
        ("log-format", format!("{:?}", config.log_format).to_ascii_lowercase()),
        ("log-level", format!("{:?}", config.log_level).to_ascii_lowercase()),
        ("access-log", config.access_log.to_string()),
    ]);
    out
}

/// What the server would point out at start, so a check does not hide it.
fn notes(setup: &Setup) -> Vec<String> {
    let config = &setup.config;
    let mut notes = Vec::new();
    if config.api_key.is_none() {
        notes.push(format!("the api listener ({}) has no --api-key: any local caller may publish", config.api_listen));
    }
    if matches!(setup.auth, Authenticator::None) {
        notes.push("subscriber auth is `none`: the userId query parameter is trusted (development mode)".into());
    }
    if let Some(warning) = match &setup.auth {
        Authenticator::Jwt(verifier) => verifier.warning(),
        _ => None,
    } {
        notes.push(warning.into());
    }
    notes
}

/// `1500ms`, `15s`, `30m`, `2h`: the largest unit that states it exactly,
/// as the flags take it.
fn duration(value: Duration) -> String {
    let ms = value.as_millis();
    match ms {
        0 => "0".into(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

/// `4096B`, `256KiB`, `1MiB`: the largest binary unit that states it exactly.
fn size(bytes: usize) -> String {
    match bytes {
        0 => "0".into(),
        b if b % (1 << 30) == 0 => format!("{}GiB", b >> 30),
        b if b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => format!("{b}B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cli;
    use clap::Parser;

    fn report_for(args: &[&str]) -> String {
        let mut argv = vec!["ssekify"];
        argv.extend_from_slice(args);
        report(&Setup::try_from(Cli::try_parse_from(argv).unwrap().server).unwrap())
    }

    #[test]
    fn units_read_back_as_the_flags_take_them() {
        assert_eq!(duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration(Duration::from_secs(90)), "90s");
        assert_eq!(duration(Duration::from_secs(1800)), "30m");
        assert_eq!(duration(Duration::ZERO), "0");
        assert_eq!(size(256 << 10), "256KiB");
        assert_eq!(size(1000), "1000B");
    }

    #[test]
    fn the_report_shows_settings_but_no_secret() {
        const SECRET: &str = "0123456789abcdef0123456789abcdef-jwt";
        let report = report_for(&[
            "--auth",
            "jwt",
            "--jwt-secret",
            SECRET,
            "--api-key",
            "k3y-not-shown",
            "--redis",
            "redis://app:pa55word@127.0.0.1:6379/2",
            "--shards",
            "3",
        ]);
        for secret in [SECRET, "k3y-not-shown", "pa55word", "app:"] {
            assert!(!report.contains(secret), "{secret} shown:\n{report}");
        }
        assert!(report.contains("  --shards "), "{report}");
        assert!(report.contains("redis://127.0.0.1:6379 (with password)"), "{report}");
        assert!(report.contains("--jwt-secret") && report.contains("(set)"), "{report}");
        assert!(!report.contains("note: the api listener"), "{report}");
    }
}
