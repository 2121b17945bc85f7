//! The bus thread's clock: a ticker thread instead of the runtime's timer.
//!
//! monoio's timer driver reads its wheel and the clock around every wait of
//! its thread, whether a timer is set or not: ~0.5 µs of each wake on this
//! project's VM, ~6 % of what a lone bus message costs a receiving instance
//! (`loadtest/scenarios/bus_interleave.py`). The bus thread wakes once per
//! message it hears, and its time limits are all coarse (`--bus-timeout`,
//! the reconnect back-off), so its runtime runs without that driver. The
//! `bus-tick` thread keeps time for it instead: every [`TICK`] it puts a
//! [`BusCommand::Tick`] in the bus's inbox (the session's housekeeping) and
//! wakes each [`timeout`] whose deadline has passed, which therefore fires
//! up to one tick late.

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;

use super::{Bus, BusCommand};

/// Pace of the bus thread's housekeeping (deadlines, canary, overdue
/// notices) and the resolution of its time limits.
pub const TICK: Duration = Duration::from_millis(100);

/// Limits under way on the bus thread: when each ends, and what to wake then.
static WAITING: Mutex<Slab<(Instant, Waker)>> = Mutex::new(Slab::new());

/// A [`timeout`] ran out before its future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// Starts the `bus-tick` thread for `bus`; it lives as long as the process.
/// A full inbox drops the tick: the bus thread has work and turns anyway.
pub fn spawn_ticker(bus: Arc<Bus>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("bus-tick".into())
        .spawn(move || loop {
            std::thread::sleep(TICK);
            wake_expired(Instant::now());
            let _ = bus.inbox.try_send(BusCommand::Tick);
        })
        .map(drop)
}

/// Wakes every limit whose deadline is at or before `now`. The ticker calls
/// it; a woken [`timeout`] sees its deadline passed and ends.
pub fn wake_expired(now: Instant) {
    let waiting = WAITING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for (_, (deadline, waker)) in waiting.iter() {
        if *deadline <= now {
            waker.wake_by_ref();
        }
    }
}

/// `future`'s output, or [`Elapsed`] once `limit` has passed (noticed at the
/// ticker's next tick). For the bus thread, whose runtime has no timer.
pub async fn timeout<F: Future>(limit: Duration, future: F) -> Result<F::Output, Elapsed> {
    let deadline = Instant::now() + limit;
    let mut future = pin!(future);
    let mut entry = Entry(None);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        if Instant::now() >= deadline {
            return Poll::Ready(Err(Elapsed));
        }
        let mut waiting = WAITING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match entry.0 {
            Some(key) if waiting[key].1.will_wake(cx.waker()) => {}
            Some(key) => waiting[key].1 = cx.waker().clone(),
            None => entry.0 = Some(waiting.insert((deadline, cx.waker().clone()))),
        }
        Poll::Pending
    })
    .await
}

/// A limit's place in [`WAITING`], given back when the limit ends either way.
struct Entry(Option<usize>);

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(key) = self.0 {
            WAITING.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests share [`WAITING`]: one at a time.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

    fn waiting() -> usize {
        WAITING.lock().unwrap().len()
    }

    #[test]
    fn a_finished_future_is_its_output_and_leaves_nothing_waiting() {
        let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().build().unwrap();
        let output = runtime.block_on(timeout(Duration::from_secs(60), async { 7 }));
        assert_eq!(output, Ok(7));
        assert_eq!(waiting(), 0);
    }

    #[test]
    fn a_future_still_waiting_at_its_deadline_ends_when_the_ticker_wakes_it() {
        let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // No timer driver here, as on the bus thread: only the ticker's
        // wake-up (another thread) can end the wait.
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().build().unwrap();
        let limit = Duration::from_millis(30);
        let ticker = std::thread::spawn(move || {
            while waiting() == 0 {
                std::thread::yield_now();
            }
            std::thread::sleep(limit);
            wake_expired(Instant::now());
        });
        let started = Instant::now();
        let output = runtime.block_on(timeout(limit, std::future::pending::<()>()));
        assert_eq!(output, Err(Elapsed));
        assert!(started.elapsed() >= limit);
        ticker.join().unwrap();
        assert_eq!(waiting(), 0, "the ended limit gave its place back");
    }

    #[test]
    fn a_tick_before_the_deadline_leaves_the_wait_alone() {
        let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().build().unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let ticker = std::thread::spawn(move || {
            while waiting() == 0 {
                std::thread::yield_now();
            }
            wake_expired(Instant::now());
            // The wait is still registered after an early tick.
            std::thread::sleep(Duration::from_millis(20));
            let still = waiting();
            done_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            wake_expired(Instant::now());
            still
        });
        let output = runtime.block_on(timeout(Duration::from_millis(50), async {
            std::future::pending::<()>().await;
        }));
        assert_eq!(output, Err(Elapsed));
        done_rx.recv().unwrap();
        assert_eq!(ticker.join().unwrap(), 1);
    }
}
