//! Event ids the server assigns when a publisher gives none.
//!
//! Format `<unix-ms:13 digits>-<instance:8 hex>-<sequence:8 hex>`, 31 bytes:
//! fixed width, so ids sort by time as plain strings across instances; the
//! instance part keeps two instances apart within one millisecond and the
//! process-wide sequence keeps one instance's ids unique and ordered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Length of every generated id.
pub const ID_LEN: usize = 31;

/// Hands out ids; shared by every shard (one atomic increment per message).
pub struct IdGenerator {
    instance: u32,
    sequence: AtomicU64,
    last_millis: AtomicU64,
}

impl IdGenerator {
    /// `instance` distinguishes this process from others on the same bus.
    pub fn new(instance: u32) -> Self {
        IdGenerator { instance, sequence: AtomicU64::new(0), last_millis: AtomicU64::new(0) }
    }

    /// The instance id as it appears in ids and logs.
    pub fn instance(&self) -> u32 {
        self.instance
    }

    /// A fresh id. The millisecond part never goes backwards within the process
    /// (a wall-clock step back reuses the last value), so ids stay ordered.
    pub fn next(&self) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let millis = self.last_millis.fetch_max(now, Ordering::AcqRel).max(now);
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) as u32;
        format_id(millis, self.instance, sequence)
    }
}

/// `<millis:013>-<instance:08x>-<sequence:08x>`, written digit by digit into
/// one buffer: the formatting machinery cost ten times as much per message.
fn format_id(millis: u64, instance: u32, sequence: u32) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; ID_LEN];
    let mut rest = millis;
    for digit in out[..13].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    for (i, digit) in out[14..22].iter_mut().enumerate() {
        *digit = HEX[((instance >> (28 - 4 * i)) & 0xf) as usize];
    }
    for (i, digit) in out[23..].iter_mut().enumerate() {
        *digit = HEX[((sequence >> (28 - 4 * i)) & 0xf) as usize];
    }
    String::from_utf8(out.to_vec()).expect("digits and dashes are ASCII")
}

/// A random-enough instance id from the clock, the pid and ahash's per-process keys.
pub fn random_instance() -> u32 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    ahash::RandomState::new().hash_one((nanos, std::process::id())) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_fixed_width_and_ordered() {
        let ids = IdGenerator::new(0xabcdef01);
        let first = ids.next();
        let second = ids.next();
        assert_eq!(first.len(), ID_LEN);
        assert_eq!(second.len(), ID_LEN);
        assert!(first < second, "{first} < {second}");
        assert_eq!(&first[14..22], "abcdef01");
    }

    #[test]
    fn ids_read_as_the_format_says() {
        for (millis, instance, sequence) in [
            (0, 0, 0),
            (1_764_633_600_123, 0x0abc_def0, 7),
            (9_999_999_999_999, u32::MAX, u32::MAX),
            (42, 1, 0x8000_0000),
        ] {
            assert_eq!(format_id(millis, instance, sequence), format!("{millis:013}-{instance:08x}-{sequence:08x}"));
        }
    }
}
