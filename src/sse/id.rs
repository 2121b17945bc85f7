//! Event ids the server assigns when a publisher gives none.
//!
//! Format `<unix-ms:13 digits>-<instance:8 hex>-<sequence:8 hex>`, 31 bytes:
//! fixed width, so ids sort by time as plain strings across instances; the
//! instance part keeps two instances apart within one millisecond. Each
//! shard has its own generator (no atomic shared by the shards). The
//! sequence is, from its top bits: the microsecond within the millisecond
//! (10 bits), a count within that microsecond (12 bits) and the shard (10
//! bits, at most 1,024 shards as `--shards` allows). So one instance's ids
//! are unique, each shard's are ordered, and a publish that follows another
//! one's answer gets a later id whichever shards took the two.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

/// Length of every generated id.
pub const ID_LEN: usize = 31;

/// Bits of the sequence below the microsecond: the count, then the shard.
const COUNT_BITS: u32 = 12;
const SHARD_BITS: u32 = 10;

/// A generated id, held inline (no allocation per message).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GeneratedId([u8; ID_LEN]);

impl GeneratedId {
    /// The id's text.
    pub fn as_str(&self) -> &str {
        // SAFETY: only `format_id` makes one, of ASCII digits, hex and dashes
        // (checked by the tests), which is UTF-8; read for every message
        // twice, where validating it cost a tenth of a batch message.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
}

impl std::fmt::Debug for GeneratedId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Hands out one shard's ids; owned by that shard's thread.
pub struct IdGenerator {
    instance: u32,
    shard: u32,
    /// Microseconds since the epoch of the last id.
    last_micros: Cell<u64>,
    /// Ids handed out in that microsecond, less one.
    count: Cell<u32>,
    /// The last id: its millisecond and instance parts are written again
    /// only when the millisecond changes.
    last: Cell<GeneratedId>,
}

impl IdGenerator {
    /// The generator of shard `shard`; `instance` distinguishes this
    /// process from others on the same bus.
    pub fn new(instance: u32, shard: usize) -> Self {
        let shard = u32::try_from(shard).ok().filter(|s| *s < 1 << SHARD_BITS).expect("at most 1,024 shards");
        IdGenerator {
            instance,
            shard,
            last_micros: Cell::new(0),
            count: Cell::new(0),
            last: Cell::new(format_id(0, instance, 0)),
        }
    }

    /// A fresh id as of now.
    pub fn next(&self) -> GeneratedId {
        self.next_at(now_micros())
    }

    /// A fresh id as of `now` ([`now_micros`], read once by a caller that
    /// takes many ids in a row: reading the clock was half an id's cost).
    /// Time never goes backwards here (a wall-clock step back, or a `now`
    /// read before the last id, reuses the last value), and a shard that
    /// used up a microsecond's counts takes the next microsecond early, so
    /// its ids stay ordered.
    pub fn next_at(&self, now: u64) -> GeneratedId {
        let (last, count) = (self.last_micros.get(), self.count.get());
        let (micros, count) = match now > last {
            true => (now, 0),
            false if count + 1 < 1 << COUNT_BITS => (last, count + 1),
            false => (last + 1, 0),
        };
        self.last_micros.set(micros);
        self.count.set(count);
        let sequence = ((micros % 1000) as u32) << (COUNT_BITS + SHARD_BITS) | count << SHARD_BITS | self.shard;
        let id = match micros / 1000 == last / 1000 {
            true => self.last.get().with_sequence(sequence),
            false => format_id(micros / 1000, self.instance, sequence),
        };
        self.last.set(id);
        id
    }
}

/// Microseconds since the epoch, as ids count time.
pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// `<millis:013>-<instance:08x>-<sequence:08x>`, written digit by digit:
/// the formatting machinery cost ten times as much per message.
fn format_id(millis: u64, instance: u32, sequence: u32) -> GeneratedId {
    let mut out = [b'-'; ID_LEN];
    let mut rest = millis;
    for digit in out[..13].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    put_hex(&mut out[14..22], instance);
    GeneratedId(out).with_sequence(sequence)
}

/// `value` as eight lower-case hex digits, all eight made at once in one
/// word (a digit at a time was ~50 of a batch message's instructions).
fn put_hex(out: &mut [u8], value: u32) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    // Each nibble into a byte of its own, the lowest nibble in the lowest byte.
    let mut x = u64::from(value);
    x = (x | x << 16) & 0x0000_ffff_0000_ffff;
    x = (x | x << 8) & 0x00ff_00ff_00ff_00ff;
    x = (x | x << 4) & 0x0f0f_0f0f_0f0f_0f0f;
    // 1 in each byte whose nibble is 10 or more (no byte carries into the next).
    let letters = ((x + 6 * ONES) >> 4) & ONES;
    let digits = x + u64::from(b'0') * ONES + letters * u64::from(b'a' - b'0' - 10);
    out.copy_from_slice(&digits.to_be_bytes());
}

impl GeneratedId {
    /// The same id with another sequence part.
    fn with_sequence(mut self, sequence: u32) -> GeneratedId {
        put_hex(&mut self.0[23..], sequence);
        self
    }
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
        let ids = IdGenerator::new(0xabcdef01, 3);
        let first = ids.next();
        let second = ids.next();
        assert!(first.as_str() < second.as_str(), "{first:?} < {second:?}");
        assert_eq!(&first.as_str()[14..22], "abcdef01");
        let sequence = u32::from_str_radix(&first.as_str()[23..], 16).unwrap();
        assert_eq!(sequence & 0x3ff, 3, "the shard in the low 10 bits");
    }

    #[test]
    fn hex_digits_are_the_standard_formatting() {
        let samples = [0, 1, 9, 10, 15, 16, 0x0a0b_0c0d, 0x9fa0_09af, 0xabcd_ef01, 0x1234_5678, u32::MAX];
        let spread = (0..64).map(|i| 0x9e37_79b9u32.wrapping_mul(i).rotate_left(i));
        for value in samples.into_iter().chain(spread) {
            let mut out = [0; 8];
            put_hex(&mut out, value);
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{value:08x}"));
        }
    }

    #[test]
    fn shards_never_hand_out_the_same_id() {
        let (a, b) = (IdGenerator::new(7, 0), IdGenerator::new(7, 1));
        let ids: std::collections::HashSet<GeneratedId> = (0..1000).flat_map(|_| [a.next(), b.next()]).collect();
        assert_eq!(ids.len(), 2000);
    }

    #[test]
    fn an_id_after_another_shards_is_later() {
        let shards: Vec<IdGenerator> = (0..4).map(|shard| IdGenerator::new(7, shard)).collect();
        let mut last = shards[3].next();
        let micros = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros();
        for round in 0..200 {
            // A publish that follows another's answer starts at least a
            // microsecond later.
            let answered = micros();
            while micros() <= answered {}
            let next = shards[round % 4].next();
            assert!(last.as_str() < next.as_str(), "{last:?} then {next:?}");
            last = next;
        }
    }

    #[test]
    fn a_full_microsecond_moves_on_to_the_next() {
        let ids = IdGenerator::new(7, 1);
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let far = (now_ms + 60_000) * 1000 + 999;
        ids.last_micros.set(far);
        ids.last.set(format_id(far / 1000, 7, 0));
        ids.count.set((1 << COUNT_BITS) - 2);
        let (last_count, next_microsecond) = (ids.next(), ids.next());
        assert_eq!(&last_count.as_str()[..13], format!("{:013}", far / 1000));
        assert_eq!(&next_microsecond.as_str()[..13], format!("{:013}", far / 1000 + 1), "999 µs, then the next ms");
        assert!(last_count.as_str() < next_microsecond.as_str());
    }

    #[test]
    fn ids_from_one_reading_of_the_clock_stay_ordered_after_a_later_one() {
        let ids = IdGenerator::new(7, 2);
        let read = now_micros();
        let mut last = ids.next_at(read + 5);
        for _ in 0..10_000 {
            let id = ids.next_at(read);
            assert!(last.as_str() < id.as_str(), "{last:?} < {id:?}");
            last = id;
        }
        assert!(last.as_str() < ids.next().as_str());
    }

    #[test]
    fn ids_read_as_the_format_says() {
        for (millis, instance, sequence) in [
            (0, 0, 0),
            (1_764_633_600_123, 0x0abc_def0, 7),
            (9_999_999_999_999, u32::MAX, u32::MAX),
            (42, 1, 0x8000_0000),
        ] {
            assert_eq!(
                format_id(millis, instance, sequence).as_str(),
                format!("{millis:013}-{instance:08x}-{sequence:08x}")
            );
        }
    }
}
