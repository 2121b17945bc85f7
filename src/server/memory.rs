//! Gives freed heap memory back to the system after load peaks.
//!
//! glibc's allocator keeps the pages it frees inside its arenas (one per
//! shard thread), fragmented by the long-lived state of the streams that
//! stayed: after 19,000 subscribers in 64 rooms each had left, an instance
//! kept 342 MiB against 9 MiB idle. `malloc_trim(0)` hands every whole free
//! page of every arena back. It walks and locks each arena (10–90 ms after
//! that flood), so it runs on its own thread, once the number of subscribers
//! has fallen well below its peak, never periodically on a steady instance.
//! With both, RSS was back to 16.8 MiB (1.8× idle) within 5 s.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::shard::Shared;

/// How often the subscriber count is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// A fall smaller than this many subscribers is not worth a trim.
const MIN_FALL: usize = 1024;

/// Longest wait for the count to hold still before trimming anyway.
const MAX_WAIT: Duration = Duration::from_secs(20);

/// Starts the thread that trims after peaks.
pub fn spawn_trimmer(shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new().name("memory".into()).spawn(move || trim_after_peaks(&shared)).map(drop)
}

/// Trims once the subscribers fell by a quarter of their peak (and at least
/// [`MIN_FALL`]) since the last trim and have held still for a sample (the
/// streams that left have then freed what they held), or have kept falling
/// for [`MAX_WAIT`]; runs for the life of the instance.
fn trim_after_peaks(shared: &Shared) -> ! {
    let mut peak = 0;
    let mut previous = 0;
    let mut fallen_since: Option<Instant> = None;
    loop {
        std::thread::sleep(SAMPLE_EVERY);
        let now = shared.connections.load(Ordering::Relaxed);
        // The most open since the last sample: a burst that came and went
        // between two samples is a peak too.
        let high = shared.connections_high.swap(now, Ordering::Relaxed).max(now);
        peak = peak.max(high);
        let still = now == previous && high == now;
        let fallen = peak - now >= (peak / 4).max(MIN_FALL);
        let since = *fallen_since.get_or_insert_with(Instant::now);
        if !fallen {
            fallen_since = None;
        } else if still || since.elapsed() >= MAX_WAIT {
            let started = Instant::now();
            release_free_pages();
            crate::log!(
                Debug,
                "returned freed memory to the system",
                subscribers_peak = peak,
                subscribers = now,
                took_us = started.elapsed().as_micros(),
            );
            peak = now;
            fallen_since = None;
        }
        previous = now;
    }
}

/// Fixes glibc's thresholds at start. By default each free of a large
/// mapped block (a rooms index after a flood) raises the mmap threshold up
/// to 32 MiB and the trim threshold to twice that, after which freed memory
/// at the top of a shard's arena — where malloc_trim does not reach — stays
/// resident: 70 MiB of 79 after the flood. Fixed thresholds keep large
/// blocks mapped (given back on free) and arena tops trimmed past 1 MiB.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn fix_allocator_thresholds() {
    // SAFETY: mallopt only sets allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024);
    }
}

/// Other allocators need no tuning.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn fix_allocator_thresholds() {}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_pages() {
    // SAFETY: malloc_trim takes no pointers; glibc locks each arena itself.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators (musl's) return freed pages on their own.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_pages() {}
