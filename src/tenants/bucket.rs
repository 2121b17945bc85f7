//! The publish rate of one tenant as a token bucket, in the GCRA form
//! (generic cell rate algorithm): the whole state of a bucket is one number,
//! its *theoretical arrival time* (`tat`), the instant at which the bucket
//! would be full again. A bucket that is full holds `burst` tokens; a
//! message takes one; tokens come back at `per_second`. Pure arithmetic on a
//! caller's clock, so [`quota`](super::quota) keeps the state and tests
//! control time.

use std::time::Duration;

const NANOS_PER_SECOND: f64 = 1e9;

/// Messages per second and the burst a full bucket allows at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens that come back per second.
    pub per_second: f64,
    /// Tokens a full bucket holds: the largest batch that can ever pass.
    pub burst: u64,
}

/// What taking `n` tokens did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Allowed; the bucket's new state.
    Allowed {
        /// The new theoretical arrival time.
        tat: u64,
    },
    /// Not enough tokens now: retry after this long (the state is unchanged).
    Wait(Duration),
    /// More tokens than a full bucket holds: it never passes.
    OverBurst,
}

impl Rate {
    /// `per_second` with a burst of `burst`, by default one second of the
    /// rate (rounded up, at least one message).
    pub fn new(per_second: f64, burst: Option<u64>) -> Rate {
        Rate { per_second, burst: burst.unwrap_or_else(|| (per_second.ceil() as u64).max(1)) }
    }

    /// Takes `n` tokens from the bucket in state `tat` at `now` (nanoseconds
    /// on one monotonic clock; `tat` 0 is a bucket never used, full).
    pub fn take(&self, tat: u64, now: u64, n: u64) -> Taken {
        if n > self.burst {
            return Taken::OverBurst;
        }
        let interval = NANOS_PER_SECOND / self.per_second;
        // `as` saturates: absurd rates cannot wrap around.
        let cost = (interval * n as f64) as u64;
        let capacity = (interval * self.burst as f64) as u64;
        let new_tat = tat.max(now).saturating_add(cost);
        let full_at = now.saturating_add(capacity);
        if new_tat <= full_at {
            Taken::Allowed { tat: new_tat }
        } else {
            Taken::Wait(Duration::from_nanos(new_tat - full_at))
        }
    }
}

/// `Retry-After` for a wait: whole seconds, rounded up, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_nanos().div_ceil(1_000_000_000).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    /// Takes `n` at `now`, keeping the state when allowed.
    fn take(rate: &Rate, tat: &mut u64, now: u64, n: u64) -> Taken {
        let taken = rate.take(*tat, now, n);
        if let Taken::Allowed { tat: new } = taken {
            *tat = new;
        }
        taken
    }

    #[test]
    fn a_full_bucket_passes_its_burst_then_refills_at_the_rate() {
        let rate = Rate::new(10.0, Some(5));
        let mut tat = 0;
        let now = 100 * SECOND;
        for i in 0..5 {
            assert!(matches!(take(&rate, &mut tat, now, 1), Taken::Allowed { .. }), "message {i} of the burst");
        }
        assert_eq!(take(&rate, &mut tat, now, 1), Taken::Wait(Duration::from_millis(100)), "one token back in 1/10 s");
        assert!(matches!(take(&rate, &mut tat, now + SECOND / 10, 1), Taken::Allowed { .. }));
        assert!(matches!(take(&rate, &mut tat, now + SECOND / 10, 1), Taken::Wait(_)));
        // Idle for long enough: full again, never more than full.
        let later = now + 60 * SECOND;
        assert!(matches!(take(&rate, &mut tat, later, 5), Taken::Allowed { .. }));
        assert!(matches!(take(&rate, &mut tat, later, 1), Taken::Wait(_)));
    }

    #[test]
    fn a_batch_takes_one_token_per_message() {
        let rate = Rate::new(2.0, Some(4));
        let mut tat = 0;
        let now = SECOND;
        assert!(matches!(take(&rate, &mut tat, now, 3), Taken::Allowed { .. }));
        assert_eq!(take(&rate, &mut tat, now, 2), Taken::Wait(Duration::from_millis(500)), "one token short");
        assert!(matches!(take(&rate, &mut tat, now, 1), Taken::Allowed { .. }), "a refusal took nothing");
        assert_eq!(take(&rate, &mut tat, now, 5), Taken::OverBurst, "larger than the bucket: never");
        assert_eq!(
            take(&rate, &mut tat, now, 4),
            Taken::Wait(Duration::from_secs(2)),
            "a whole bucket: 4 tokens at 2/s"
        );
    }

    #[test]
    fn the_default_burst_is_one_second_of_the_rate() {
        assert_eq!(Rate::new(1000.0, None).burst, 1000);
        assert_eq!(Rate::new(0.5, None).burst, 1);
        assert_eq!(Rate::new(2.5, None).burst, 3);
    }

    #[test]
    fn retry_after_is_whole_seconds_at_least_one() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
    }
}
