//! Long loops on a shard give way: a 16 MiB batch is ~500,000 messages to
//! parse, encode and deliver, and done in one go it would hold every other
//! stream and request of the shard for a second. Such loops keep a
//! [`Budget`] and call [`yield_now`] once they have run [`SLICE_TIME`], so
//! the shard's writers, readers and inbox run in between.

use std::time::{Duration, Instant};

/// How long a loop runs before it gives way: what another stream of the
/// shard may wait at most because of it (plus one turn of the others).
pub const SLICE_TIME: Duration = Duration::from_millis(5);

/// Items between two looks at the clock.
const CHECK_EVERY: u32 = 256;

/// Lets the shard's other work run before going on: every task that is
/// ready, and the kernel's completions. A task that only woke itself would
/// let the other tasks run, but not the completions: with io_uring's
/// deferred task work they are reaped only when the runtime parks, which it
/// does once no task is ready. A zero sleep leaves no task ready, so the
/// runtime parks, reaps, and wakes this one at the timer's next tick (at
/// most a millisecond later). The timer entry (768 bytes) is boxed: it is
/// needed once in many milliseconds, and inline it would enlarge, and make
/// every publish copy, each future that may yield.
pub async fn yield_now() {
    Box::pin(monoio::time::sleep(Duration::ZERO)).await
}

/// How long a loop has run since it last gave way.
pub struct Budget {
    since: Instant,
    items: u32,
}

impl Default for Budget {
    fn default() -> Self {
        Budget { since: Instant::now(), items: 0 }
    }
}

impl Budget {
    /// Counts one item; true once the loop has run [`SLICE_TIME`] (the
    /// caller then yields, and the clock starts again).
    pub fn spent(&mut self) -> bool {
        self.items += 1;
        self.items % CHECK_EVERY == 0 && self.overdue()
    }

    /// True once the loop has run [`SLICE_TIME`], whatever it counted; the
    /// clock starts again then.
    pub fn overdue(&mut self) -> bool {
        let overdue = self.since.elapsed() >= SLICE_TIME;
        if overdue {
            self.reset();
        }
        overdue
    }

    /// The loop waited anyway (its queue ran dry): the clock starts again.
    pub fn reset(&mut self) {
        self.since = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_spent_after_its_slice_of_time_only() {
        let mut budget = Budget::default();
        assert!(!(0..CHECK_EVERY * 4).any(|_| budget.spent()), "well within the slice");
        std::thread::sleep(SLICE_TIME);
        assert!((0..CHECK_EVERY).any(|_| budget.spent()), "looked at the clock within CHECK_EVERY items");
        assert!(!budget.overdue(), "the clock started again");
    }
}
