//! Minimal structured logging to stderr, text or JSON lines.
//!
//! The process logs rarely (start-up, state changes, errors), so one formatted
//! `write` per line under stderr's own lock is enough; hot paths count in
//! metrics instead of logging.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{LogFormat, LogLevel};

static THRESHOLD: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Sets the threshold and format once at start-up.
pub fn init(level: LogLevel, format: LogFormat) {
    THRESHOLD.store(level as u8, Ordering::Relaxed);
    let _ = FORMAT.set(format);
}

/// True when a line at `level` would be written (lets callers skip formatting).
pub fn enabled(level: LogLevel) -> bool {
    level as u8 >= THRESHOLD.load(Ordering::Relaxed)
}

/// Writes one line: a message plus `key=value` fields.
pub fn write(level: LogLevel, message: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    if !enabled(level) {
        return;
    }
    let level_name = match level {
        LogLevel::Debug => "DEBUG",
        LogLevel::Info => "INFO",
        LogLevel::Warn => "WARN",
        LogLevel::Error => "ERROR",
    };
    let timestamp = rfc3339_now();
    let line = match FORMAT.get().copied().unwrap_or(LogFormat::Text) {
        LogFormat::Text => {
            let mut line = format!("{timestamp} {level_name} {message}");
            for (key, value) in fields {
                line.push_str(&format!(" {key}={value}"));
            }
            line
        }
        LogFormat::Json => {
            let mut object = serde_json::Map::new();
            object.insert("ts".into(), timestamp.into());
            object.insert("level".into(), level_name.into());
            object.insert("msg".into(), message.into());
            for (key, value) in fields {
                object.insert((*key).into(), value.to_string().into());
            }
            serde_json::Value::Object(object).to_string()
        }
    };
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{line}");
}

/// Logs at a level: `log!(Info, "message", key = value, ...)`.
#[macro_export]
macro_rules! log {
    ($level:ident, $message:expr $(, $key:ident = $value:expr)* $(,)?) => {
        if $crate::log::enabled($crate::config::LogLevel::$level) {
            $crate::log::write(
                $crate::config::LogLevel::$level,
                &$message,
                &[$((stringify!($key), &$value as &dyn ::std::fmt::Display)),*],
            );
        }
    };
}

fn rfc3339_now() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day); Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_416), (2025, 11, 24));
    }
}
