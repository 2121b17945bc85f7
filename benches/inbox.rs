//! Cross-thread throughput of a shard inbox: 1, 2 and 4 producer threads send
//! 2,000,000 `u64` in total into one `ssekify::shard::inbox` (capacity 16384,
//! the server's `INBOX_CAPACITY`) drained by a monoio runtime on the main thread
//! with `recv_batch(_, 256)`. A producer that finds the inbox full yields and
//! retries (the server sleeps 1 ms instead, which would measure the sleep).
//!
//! Baseline: `std::sync::mpsc::sync_channel(16384)`, producers calling the
//! blocking `send`, the main thread draining it with the blocking `recv`.
//!
//! An extra row, std's channel with `try_send`/`try_recv` and `yield_now` on
//! both sides (no sleeping, no wake-ups), shows what the inbox's wake-up
//! protocol (a SeqCst fence and a flag load per send) costs on top of the channel.
//!
//! The time of a run covers spawning the producers, sending and receiving
//! everything and joining; per message it is the run divided by 2,000,000.
//! With 2 cores, 2 and 4 producers oversubscribe the machine (consumer included).
//!
//! Run: `cargo bench --bench inbox`

mod common;

use std::sync::mpsc::{sync_channel, TryRecvError, TrySendError};
use std::thread;

use common::{header, measure_per, ratio};
use ssekify::shard::inbox::inbox;

const TOTAL: u64 = 2_000_000;
const CAPACITY: usize = 16 * 1024;
const BATCH: usize = 256;
/// Runs per timed round (each run sends `TOTAL` messages).
const RUNS: u64 = 3;

/// Sum of everything `producers` threads send (each sends `0..TOTAL/producers`).
fn expected_sum(producers: u64) -> u64 {
    let per = TOTAL / producers;
    producers * (per * (per - 1) / 2)
}

/// Starts `producers` threads, each sending `0..per` through its own clone of
/// `sender` with `send`; the original is dropped so the channel closes when
/// they finish.
fn spawn_producers<S: Clone + Send + 'static>(
    sender: S,
    producers: u64,
    per: u64,
    send: fn(&S, u64),
) -> Vec<thread::JoinHandle<()>> {
    (0..producers)
        .map(|_| {
            let sender = sender.clone();
            thread::spawn(move || (0..per).for_each(|item| send(&sender, item)))
        })
        .collect()
}

fn main() {
    let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build().unwrap();
    println!(
        "messages per run: {TOTAL}, capacity {CAPACITY}, recv_batch max {BATCH}, io_uring available: {}, cores: {}",
        monoio::utils::detect_uring(),
        thread::available_parallelism().map_or(0, |n| n.get())
    );

    header("Cross-thread inbox throughput, 2M u64 per run; op = one message", "message");
    for producers in [1u64, 2, 4] {
        let per = TOTAL / producers;
        let (mut runs, mut batches) = (0u64, 0u64);
        let ours = measure_per(&format!("ssekify inbox + monoio recv_batch, {producers} prod."), RUNS, TOTAL, || {
            let (shared, mut local) = inbox::<u64>(CAPACITY);
            let senders = spawn_producers(shared, producers, per, |shared, mut item| {
                while let Err(back) = shared.try_send(item) {
                    item = back;
                    thread::yield_now();
                }
            });
            let (sum, calls) = runtime.block_on(async move {
                let mut batch = Vec::with_capacity(BATCH);
                let (mut received, mut sum, mut calls) = (0u64, 0u64, 0u64);
                while received < TOTAL {
                    batch.clear();
                    local.recv_batch(&mut batch, BATCH).await;
                    calls += 1;
                    received += batch.len() as u64;
                    sum = batch.iter().fold(sum, |s, &x| s.wrapping_add(x));
                }
                (sum, calls)
            });
            runs += 1;
            batches += calls;
            for sender in senders {
                sender.join().unwrap();
            }
            assert_eq!(sum, expected_sum(producers));
        });
        let std = measure_per(&format!("baseline sync_channel + recv(), {producers} prod."), RUNS, TOTAL, || {
            let (tx, rx) = sync_channel::<u64>(CAPACITY);
            let senders = spawn_producers(tx, producers, per, |tx, item| tx.send(item).unwrap());
            let mut sum = 0u64;
            for _ in 0..TOTAL {
                sum = sum.wrapping_add(rx.recv().unwrap());
            }
            for sender in senders {
                sender.join().unwrap();
            }
            assert_eq!(sum, expected_sum(producers));
        });
        measure_per(&format!("  sync_channel try_send/try_recv, {producers} prod."), RUNS, TOTAL, || {
            let (tx, rx) = sync_channel::<u64>(CAPACITY);
            let senders = spawn_producers(tx, producers, per, |tx, mut item| {
                while let Err(TrySendError::Full(back)) = tx.try_send(item) {
                    item = back;
                    thread::yield_now();
                }
            });
            let (mut received, mut sum) = (0u64, 0u64);
            while received < TOTAL {
                match rx.try_recv() {
                    Ok(x) => {
                        received += 1;
                        sum = sum.wrapping_add(x);
                    }
                    Err(TryRecvError::Empty) => thread::yield_now(),
                    Err(TryRecvError::Disconnected) => unreachable!("all sent before the senders hang up"),
                }
            }
            for sender in senders {
                sender.join().unwrap();
            }
            assert_eq!(sum, expected_sum(producers));
        });
        println!(
            "  (inbox: {:.0} messages per recv_batch on average over {runs} runs; 256 = the consumer never waited)",
            (TOTAL * runs) as f64 / batches as f64
        );
        ratio(&format!("inbox, {producers} producer(s)"), ours, std);
    }
}
