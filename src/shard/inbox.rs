//! Cross-shard channels: one bounded, lock-free inbox per shard.
//!
//! Built on std's bounded `sync_channel` (a lock-free array queue) plus a
//! "receiver is parked" flag, so a burst of sends costs one wake-up of the
//! receiving runtime, not one per message. A full inbox hands the item back
//! to the sender, which decides how to wait.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock};
use std::task::{Poll, Waker};

/// Envelopes a shard's inbox holds before senders must wait: a few
/// milliseconds of traffic at full speed, bounded so a stalled shard cannot
/// grow memory.
pub const INBOX_CAPACITY: usize = 16 * 1024;

/// The sending side, shared by every thread (`Shared*` in the naming rule).
pub struct SharedInbox<T> {
    tx: SyncSender<T>,
    parked: AtomicBool,
    waker: OnceLock<Waker>,
}

/// The receiving side, owned by the shard's inbox task (`Local*`).
pub struct LocalInbox<T> {
    rx: Receiver<T>,
    shared: Arc<SharedInbox<T>>,
}

/// A new inbox holding at most `capacity` items in flight.
pub fn inbox<T>(capacity: usize) -> (Arc<SharedInbox<T>>, LocalInbox<T>) {
    let (tx, rx) = sync_channel(capacity);
    let shared = Arc::new(SharedInbox { tx, parked: AtomicBool::new(false), waker: OnceLock::new() });
    (shared.clone(), LocalInbox { rx, shared })
}

impl<T> SharedInbox<T> {
    /// Queues `item`, waking the receiver if it sleeps; gives `item` back when
    /// the inbox is full or its shard is gone.
    pub fn try_send(&self, item: T) -> Result<(), T> {
        match self.tx.try_send(item) {
            Ok(()) => {
                // Pairs with the fence in `recv_batch`: either the receiver sees
                // this item on its re-check, or this load sees `parked`.
                fence(Ordering::SeqCst);
                if self.parked.load(Ordering::Relaxed) && self.parked.swap(false, Ordering::AcqRel) {
                    if let Some(waker) = self.waker.get() {
                        waker.wake_by_ref();
                    }
                }
                Ok(())
            }
            Err(TrySendError::Full(item)) | Err(TrySendError::Disconnected(item)) => Err(item),
        }
    }
}

impl<T> LocalInbox<T> {
    /// Takes what is there, up to `max` items in `out`, without waiting.
    pub fn take_ready(&mut self, out: &mut Vec<T>, max: usize) {
        while out.len() < max {
            match self.rx.try_recv() {
                Ok(item) => out.push(item),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            }
        }
    }

    /// Waits for at least one item, then takes up to `max` into `out`.
    pub async fn recv_batch(&mut self, out: &mut Vec<T>, max: usize) {
        loop {
            self.take_ready(out, max);
            if !out.is_empty() {
                return;
            }
            let shared = &self.shared;
            std::future::poll_fn(|cx| {
                let _ = shared.waker.get_or_init(|| cx.waker().clone());
                Poll::Ready(())
            })
            .await;
            shared.parked.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if let Ok(item) = self.rx.try_recv() {
                shared.parked.store(false, Ordering::Relaxed);
                out.push(item);
                continue;
            }
            std::future::poll_fn(
                |_| {
                    if shared.parked.load(Ordering::Acquire) {
                        Poll::Pending
                    } else {
                        Poll::Ready(())
                    }
                },
            )
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_inbox_hands_the_item_back() {
        let (shared, _local) = inbox::<u32>(2);
        assert!(shared.try_send(1).is_ok());
        assert!(shared.try_send(2).is_ok());
        assert_eq!(shared.try_send(3), Err(3));
    }

    #[monoio::test_all(timer_enabled = true)]
    async fn items_from_other_threads_wake_the_receiver_in_order() {
        let (shared, mut local) = inbox::<u64>(64);
        let producers: Vec<_> = (0..3u64)
            .map(|p| {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        let mut item = p << 32 | i;
                        while let Err(back) = shared.try_send(item) {
                            item = back;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut next = [0u64; 3];
        let mut batch = Vec::new();
        while next.iter().sum::<u64>() < 30_000 {
            batch.clear();
            local.recv_batch(&mut batch, 256).await;
            for item in &batch {
                let producer = (item >> 32) as usize;
                assert_eq!(item & 0xffff_ffff, next[producer], "per-producer order is kept");
                next[producer] += 1;
            }
        }
        for producer in producers {
            producer.join().unwrap();
        }
    }
}
