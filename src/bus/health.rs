//! What the log says about the bus's link to Redis: a line when it goes
//! down, at most one summary every [`SUMMARY_EVERY`] while it stays down
//! (with the failed attempts so far), and a line when it is live again. The
//! thread retries every few seconds for as long as Redis is away, and a line
//! per attempt would bury everything else in the log.
//!
//! The first time the bus is live it also tells the main thread
//! ([`LifecycleEvent::BusLive`]), which prints `ssekify ready` then: an
//! instance with `--redis` is not ready before its bus is.

use std::time::{Duration, Instant};

use super::{Bus, BusState};
use crate::shard::{LifecycleEvent, Shared};

/// Least time between two "bus still down" lines.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// The bus thread's account of the link, kept across sessions.
#[derive(Debug, Default)]
pub struct Health {
    outage: Option<Outage>,
    was_live: bool,
}

/// The bus has been down since `since`.
#[derive(Debug, Clone, Copy)]
struct Outage {
    since: Instant,
    /// Sessions that failed (or could not open) since.
    attempts: u64,
    /// When the last line about it was written.
    logged_at: Instant,
}

/// What a failure is worth writing, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Report {
    /// The first failure of an outage.
    Down,
    /// A summary: the outage goes on.
    StillDown { attempts: u64, down_for: Duration },
}

impl Health {
    /// A session ended, or could not open, with `error`: publishes are
    /// refused until the next one is live.
    /// Lifecycle event listeners hear of it as the log does: once when the
    /// outage starts, then with each summary.
    pub fn failed(&mut self, shared: &Shared, bus: &Bus, error: &str) {
        bus.set_state(BusState::Down);
        bus.record_error(error);
        match self.report_failure(Instant::now()) {
            Some(Report::Down) => {
                crate::log!(Warn, "bus down: retrying", error = error);
                bus.report_error(shared, error);
            }
            Some(Report::StillDown { attempts, down_for }) => {
                crate::log!(
                    Warn,
                    "bus still down",
                    down_ms = down_for.as_millis(),
                    failed_attempts = attempts,
                    error = error,
                );
                bus.report_error(shared, error);
            }
            None => {}
        }
    }

    /// A session on `address` is synced and serving.
    pub fn live(&mut self, shared: &Shared, bus: &Bus, address: &str) {
        bus.set_state(BusState::Live);
        match self.outage.take() {
            Some(outage) => crate::log!(
                Info,
                "bus live",
                redis = address,
                down_ms = outage.since.elapsed().as_millis(),
                failed_attempts = outage.attempts,
            ),
            None => crate::log!(Info, "bus live", redis = address),
        }
        if !self.was_live {
            self.was_live = true;
            let _ = shared.lifecycle.send(LifecycleEvent::BusLive);
        }
    }

    /// Counts a failure at `now`; says which line it deserves.
    fn report_failure(&mut self, now: Instant) -> Option<Report> {
        let Some(outage) = &mut self.outage else {
            self.outage = Some(Outage { since: now, attempts: 1, logged_at: now });
            return Some(Report::Down);
        };
        outage.attempts += 1;
        if now.duration_since(outage.logged_at) < SUMMARY_EVERY {
            return None;
        }
        outage.logged_at = now;
        Some(Report::StillDown { attempts: outage.attempts, down_for: now.duration_since(outage.since) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_one_line_then_one_a_minute() {
        let mut health = Health::default();
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        assert_eq!(health.report_failure(at(0)), Some(Report::Down));
        let quiet: Vec<_> = (1..60).filter_map(|s| health.report_failure(at(s))).collect();
        assert_eq!(quiet, vec![], "nothing within the first minute");
        assert_eq!(
            health.report_failure(at(60)),
            Some(Report::StillDown { attempts: 61, down_for: Duration::from_secs(60) })
        );
        assert_eq!(health.report_failure(at(100)), None);
        assert_eq!(
            health.report_failure(at(121)),
            Some(Report::StillDown { attempts: 63, down_for: Duration::from_secs(121) })
        );
        // Back up: the next failure starts a new outage with its own first line.
        health.outage = None;
        assert_eq!(health.report_failure(at(200)), Some(Report::Down));
    }
}
