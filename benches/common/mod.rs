//! Shared timing helper for the `harness = false` benches (no bench crate).
//!
//! `measure` warms up with one untimed round, then runs [`ROUNDS`] timed rounds
//! of `iterations` calls each and prints one fixed-width row: the median time
//! per operation, the matching operations per second, and the spread of the
//! rounds (min and max relative to the median) so a noisy run is visible.
#![allow(dead_code)]

use std::hint::black_box;
use std::time::Instant;

/// Timed rounds per case; the median is reported.
pub const ROUNDS: usize = 7;

/// Result of one measured case.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// Median nanoseconds per operation.
    pub ns_per_op: f64,
    /// Operations per second at the median.
    pub ops_per_sec: f64,
}

/// Prints a section title and the table header; `unit` names one operation
/// (`op`, `recipient`, `message`).
pub fn header(title: &str, unit: &str) {
    println!();
    println!("{title}");
    println!("{:<48} {:>14} {:>16} {:>17}", "case", format!("ns/{unit}"), format!("{unit}s/s"), "spread (min/max)");
    println!("{}", "-".repeat(48 + 1 + 14 + 1 + 16 + 1 + 17));
}

/// Times `f`, one call per operation.
pub fn measure<R, F: FnMut() -> R>(name: &str, iterations: u64, f: F) -> Stats {
    measure_per(name, iterations, 1, f)
}

/// Times `f`, where one call performs `ops_per_call` operations (recipients of
/// a fan-out, messages of a channel run); reported per operation.
pub fn measure_per<R, F: FnMut() -> R>(name: &str, iterations: u64, ops_per_call: u64, mut f: F) -> Stats {
    assert!(iterations > 0 && ops_per_call > 0);
    // Warm-up: caches, branch predictors, allocator free lists, lazily grown buffers.
    for _ in 0..iterations {
        black_box(f());
    }
    let mut samples = [0f64; ROUNDS];
    for sample in &mut samples {
        let start = Instant::now();
        for _ in 0..iterations {
            black_box(f());
        }
        let elapsed = start.elapsed().as_nanos() as f64;
        *sample = elapsed / (iterations * ops_per_call) as f64;
    }
    samples.sort_by(f64::total_cmp);
    let median = samples[ROUNDS / 2];
    let stats = Stats { ns_per_op: median, ops_per_sec: 1e9 / median };
    let spread =
        format!("-{:.0}% / +{:.0}%", (1.0 - samples[0] / median) * 100.0, (samples[ROUNDS - 1] / median - 1.0) * 100.0);
    println!("{:<48} {:>14} {:>16} {:>17}", name, format_ns(median), format_rate(stats.ops_per_sec), spread);
    stats
}

/// Prints how `measured` compares with `baseline` measured in the same run.
pub fn ratio(what: &str, measured: Stats, baseline: Stats) {
    let r = baseline.ns_per_op / measured.ns_per_op;
    if r >= 1.0 {
        println!("  => {what}: {r:.2}x faster than the baseline (baseline ns / measured ns = {r:.2})");
    } else {
        println!("  => {what}: {:.2}x slower than the baseline (baseline ns / measured ns = {r:.2})", 1.0 / r);
    }
}

fn format_ns(ns: f64) -> String {
    if ns >= 100.0 {
        format!("{ns:.0}")
    } else if ns >= 10.0 {
        format!("{ns:.1}")
    } else {
        format!("{ns:.2}")
    }
}

fn format_rate(per_sec: f64) -> String {
    if per_sec >= 1e9 {
        format!("{:.2} G", per_sec / 1e9)
    } else if per_sec >= 1e6 {
        format!("{:.2} M", per_sec / 1e6)
    } else if per_sec >= 1e3 {
        format!("{:.2} k", per_sec / 1e3)
    } else {
        format!("{per_sec:.1}")
    }
}
