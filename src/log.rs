//! Minimal structured logging to stderr, text or JSON lines.
//!
//! The process logs rarely (start-up, state changes, errors; per connection
//! and per api request only when asked), so one formatted `write` per line
//! under stderr's own lock is enough; hot paths count in metrics instead.
//!
//! A field keeps its type in JSON lines: integers are JSON numbers, `bool`s
//! booleans, text strings, `None` leaves the field out, and anything else
//! that is `Display` is written as its text. [`log!`](crate::log!) picks
//! that at the call site from the value's Rust type ([`Typed`] first, else
//! `Display`), so call sites write `key = value` whatever the type. Text
//! lines are `key=value`, quoting (with escapes) a string that holds a
//! space, a quote, `=` or a control character, so one line stays one line and
//! its fields stay apart.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::ValueEnum;

/// How the process logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `2026-11-24T10:00:00.000Z INFO message key=value`
    Text,
    /// One JSON object per line.
    Json,
}

/// Lowest level that is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum LogLevel {
    /// Everything, including per-connection events.
    Debug,
    /// Start-up, shutdown and state changes.
    Info,
    /// Recoverable trouble.
    Warn,
    /// Failures.
    Error,
}

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

/// A field's value as written: its JSON type is kept in JSON lines, so log
/// pipelines can compare and sum numbers without parsing strings.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// A signed integer (JSON number).
    Int(i64),
    /// An unsigned integer (JSON number).
    Uint(u64),
    /// A float (JSON number; `null` when not finite, which JSON cannot write).
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// Text.
    Str(Cow<'a, str>),
    /// No value (`None`): the field is left out of the line.
    Absent,
}

/// Types whose log value has a JSON type of its own. Everything else a
/// [`log!`](crate::log!) call is given must be `Display`, and is a string.
pub trait Typed {
    /// The value to write.
    fn log_value(&self) -> Value<'_>;
}

macro_rules! typed_ints {
    ($variant:ident as $wide:ty: $($t:ty),*) => {
        $(impl Typed for $t {
            fn log_value(&self) -> Value<'_> {
                Value::$variant(*self as $wide)
            }
        })*
    };
}
typed_ints!(Int as i64: i8, i16, i32, i64, isize);
typed_ints!(Uint as u64: u8, u16, u32, u64, usize);

impl Typed for u128 {
    /// Saturates: durations in milliseconds (`as_millis()`) never reach it.
    fn log_value(&self) -> Value<'_> {
        Value::Uint(u64::try_from(*self).unwrap_or(u64::MAX))
    }
}

impl Typed for f64 {
    fn log_value(&self) -> Value<'_> {
        Value::Float(*self)
    }
}

impl Typed for bool {
    fn log_value(&self) -> Value<'_> {
        Value::Bool(*self)
    }
}

impl Typed for str {
    fn log_value(&self) -> Value<'_> {
        Value::Str(Cow::Borrowed(self))
    }
}

macro_rules! typed_text {
    ($($t:ty),*) => {
        $(impl Typed for $t {
            fn log_value(&self) -> Value<'_> {
                Value::Str(Cow::Borrowed(&**self))
            }
        })*
    };
}
typed_text!(String, Box<str>, Rc<str>, Arc<str>, Cow<'_, str>);

impl<T: Typed + ?Sized> Typed for &T {
    fn log_value(&self) -> Value<'_> {
        (**self).log_value()
    }
}

impl<T: Typed> Typed for Option<T> {
    fn log_value(&self) -> Value<'_> {
        self.as_ref().map_or(Value::Absent, T::log_value)
    }
}

/// A value handed to [`log!`](crate::log!), which chooses how to write it
/// by method resolution on `&&Field`: [`ViaTyped`] (a [`Typed`] value)
/// matches without a dereference and wins; [`ViaDisplay`] is the fallback.
pub struct Field<'a, T: ?Sized>(pub &'a T);

/// [`log!`](crate::log!)'s choice for [`Typed`] values.
pub trait ViaTyped {
    /// The value with its own type.
    fn log_value(&self) -> Value<'_>;
}

impl<T: Typed + ?Sized> ViaTyped for &Field<'_, T> {
    fn log_value(&self) -> Value<'_> {
        self.0.log_value()
    }
}

/// [`log!`](crate::log!)'s fallback: any `Display` value, as a string.
pub trait ViaDisplay {
    /// The value's text.
    fn log_value(&self) -> Value<'_>;
}

impl<T: fmt::Display + ?Sized> ViaDisplay for Field<'_, T> {
    fn log_value(&self) -> Value<'_> {
        Value::Str(Cow::Owned(self.0.to_string()))
    }
}

/// Writes one line: a message plus fields (see [`Value`] for their types).
pub fn write(level: LogLevel, message: &str, fields: &[(&str, Value<'_>)]) {
    if !enabled(level) {
        return;
    }
    let format = FORMAT.get().copied().unwrap_or(LogFormat::Text);
    let line = format_line(format, &rfc3339_now(), level, message, fields);
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Logs at a level: `log!(Info, "message", key = value, ...)`. A value's
/// JSON type follows its Rust type (integers, floats, `bool`, text; `None`
/// leaves the field out); any other `Display` value is written as a string.
/// Nothing is evaluated or formatted when the level is off.
#[macro_export]
macro_rules! log {
    ($level:ident, $message:expr $(, $key:ident = $value:expr)* $(,)?) => {
        if $crate::log::enabled($crate::log::LogLevel::$level) {
            #[allow(unused_imports)]
            use $crate::log::{ViaDisplay as _, ViaTyped as _};
            $crate::log::write(
                $crate::log::LogLevel::$level,
                &$message,
                &[$((stringify!($key), (&&$crate::log::Field(&$value)).log_value())),*],
            );
        }
    };
}

/// One whole line, newline included.
fn format_line(format: LogFormat, timestamp: &str, level: LogLevel, message: &str, fields: &[(&str, Value)]) -> String {
    let level_name = match level {
        LogLevel::Debug => "DEBUG",
        LogLevel::Info => "INFO",
        LogLevel::Warn => "WARN",
        LogLevel::Error => "ERROR",
    };
    let mut line = String::with_capacity(96 + 24 * fields.len());
    let present = fields.iter().filter(|(_, value)| *value != Value::Absent);
    match format {
        LogFormat::Text => {
            let _ = write!(line, "{timestamp} {level_name} {message}");
            for (key, value) in present {
                let _ = write!(line, " {key}=");
                match value {
                    Value::Str(text) if needs_quotes(text) => {
                        let _ = write!(line, "{text:?}");
                    }
                    value => write_plain(&mut line, value),
                }
            }
        }
        LogFormat::Json => {
            line.push_str("{\"ts\":");
            json_string(&mut line, timestamp);
            line.push_str(",\"level\":");
            json_string(&mut line, level_name);
            line.push_str(",\"msg\":");
            json_string(&mut line, message);
            for (key, value) in present {
                line.push(',');
                json_string(&mut line, key);
                line.push(':');
                match value {
                    Value::Str(text) => json_string(&mut line, text),
                    Value::Float(x) if !x.is_finite() => line.push_str("null"),
                    value => write_plain(&mut line, value),
                }
            }
            line.push('}');
        }
    }
    line.push('\n');
    line
}

/// A value as it reads bare: the same in both formats for numbers and booleans.
fn write_plain(line: &mut String, value: &Value) {
    let _ = match value {
        Value::Int(n) => write!(line, "{n}"),
        Value::Uint(n) => write!(line, "{n}"),
        Value::Float(x) => write!(line, "{x}"),
        Value::Bool(b) => write!(line, "{b}"),
        Value::Str(text) => write!(line, "{text}"),
        Value::Absent => Ok(()),
    };
}

/// A text value that would not read back as one `key=value` token.
fn needs_quotes(text: &str) -> bool {
    text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=')
}

fn json_string(line: &mut String, text: &str) {
    line.push_str(&serde_json::to_string(text).unwrap_or_default());
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
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_416), (2025, 11, 24));
    }

    /// Asserts what `log!` would hand `write` for a value.
    macro_rules! assert_logged_as {
        ($value:expr, $expected:expr) => {{
            #[allow(unused_imports)]
            use super::{ViaDisplay as _, ViaTyped as _};
            assert_eq!((&&Field(&$value)).log_value(), $expected);
        }};
    }

    #[test]
    fn a_value_keeps_the_type_of_its_rust_type() {
        let address: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let missing: Option<&str> = None;
        assert_logged_as!(3usize, Value::Uint(3));
        assert_logged_as!(-2i32, Value::Int(-2));
        assert_logged_as!(7u128, Value::Uint(7));
        assert_logged_as!(u128::MAX, Value::Uint(u64::MAX));
        assert_logged_as!(0.5f64, Value::Float(0.5));
        assert_logged_as!(true, Value::Bool(true));
        assert_logged_as!("text", Value::Str("text".into()));
        assert_logged_as!(String::from("alice"), Value::Str("alice".into()));
        assert_logged_as!(Some(1u8), Value::Uint(1));
        assert_logged_as!(missing, Value::Absent);
        assert_logged_as!(address, Value::Str("127.0.0.1:8080".into()));
        assert_logged_as!(std::io::Error::other("gone"), Value::Str("gone".into()));
    }

    #[test]
    fn json_lines_are_typed_and_ordered() {
        let fields = [
            ("shard", Value::Uint(1)),
            ("delta", Value::Int(-4)),
            ("ok", Value::Bool(false)),
            ("ratio", Value::Float(f64::NAN)),
            ("user", Value::Absent),
            ("error", Value::Str("a \"quoted\"\nline".into())),
        ];
        let line = format_line(LogFormat::Json, "T", LogLevel::Warn, "bus down", &fields);
        assert_eq!(
            line,
            "{\"ts\":\"T\",\"level\":\"WARN\",\"msg\":\"bus down\",\"shard\":1,\"delta\":-4,\"ok\":false,\
             \"ratio\":null,\"error\":\"a \\\"quoted\\\"\\nline\"}\n"
        );
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["shard"], 1);
    }

    #[test]
    fn text_lines_quote_only_what_would_not_read_back() {
        let fields = [
            ("public", Value::Str("127.0.0.1:8080".into())),
            ("n", Value::Uint(3)),
            ("user", Value::Absent),
            ("error", Value::Str("connection refused".into())),
            ("empty", Value::Str("".into())),
            ("forged", Value::Str("x\n2026 ERROR fake".into())),
        ];
        let line = format_line(LogFormat::Text, "T", LogLevel::Info, "ssekify listening", &fields);
        assert_eq!(
            line,
            "T INFO ssekify listening public=127.0.0.1:8080 n=3 error=\"connection refused\" empty=\"\" \
             forged=\"x\\n2026 ERROR fake\"\n"
        );
    }
}
