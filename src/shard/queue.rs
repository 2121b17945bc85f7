//! The bounded queue of frames waiting to be written to one connection.
//!
//! Frames are shared `Bytes`, so a push is a reference count and a slot in a
//! ring that keeps its capacity: no allocation per recipient once warm. The
//! bounds count everything accepted and not yet written, including the batch
//! the writer has in flight; only frames still waiting can be dropped, so a
//! partly written frame is never cut.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::config::DropPolicy;

/// Capacity kept after a burst drains; larger rings are released so an idle
/// connection does not keep the memory of its busiest moment.
const RETAINED_CAPACITY: usize = 16;

/// Bounds and policy of every queue on a shard.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Most frames accepted and not yet written.
    pub max_items: usize,
    /// Most bytes accepted and not yet written.
    pub max_bytes: usize,
    /// What a frame that does not fit does.
    pub policy: DropPolicy,
}

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued, after dropping this many of the oldest waiting frames.
    Queued {
        /// Frames dropped to make room.
        dropped_oldest: usize,
    },
    /// Not queued: policy `newest`, or nothing waiting could be dropped.
    DroppedNewest,
    /// Not queued and the connection must close (policy `disconnect`).
    Overflow,
}

/// One connection's queue.
#[derive(Debug, Default)]
pub struct FrameQueue {
    waiting: VecDeque<Bytes>,
    waiting_bytes: usize,
    in_flight_items: usize,
    in_flight_bytes: usize,
}

impl FrameQueue {
    /// Frames accepted and not yet written.
    pub fn items(&self) -> usize {
        self.waiting.len() + self.in_flight_items
    }

    /// Bytes accepted and not yet written.
    pub fn bytes(&self) -> usize {
        self.waiting_bytes + self.in_flight_bytes
    }

    /// True when frames wait for the writer.
    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Frames waiting for the writer (not yet in flight).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// True when nothing is waiting or in flight.
    pub fn is_idle(&self) -> bool {
        self.items() == 0
    }

    /// Queues a message frame under the limits. An empty queue always accepts,
    /// so a message larger than `max_bytes` (but within `--max-payload`) still
    /// reaches a connection that keeps up.
    pub fn push(&mut self, frame: Bytes, limits: &QueueLimits) -> Pushed {
        let fits = |q: &Self| q.items() < limits.max_items && q.bytes() + frame.len() <= limits.max_bytes;
        if self.is_idle() || fits(self) {
            self.push_unbounded(frame);
            return Pushed::Queued { dropped_oldest: 0 };
        }
        match limits.policy {
            DropPolicy::Newest => Pushed::DroppedNewest,
            DropPolicy::Disconnect => Pushed::Overflow,
            DropPolicy::Oldest => {
                let mut dropped = 0;
                while !fits(self) {
                    let Some(old) = self.waiting.pop_front() else {
                        break;
                    };
                    self.waiting_bytes -= old.len();
                    dropped += 1;
                }
                if fits(self) || self.is_idle() {
                    self.push_unbounded(frame);
                    Pushed::Queued { dropped_oldest: dropped }
                } else {
                    // Only the in-flight batch is left and the frame still does
                    // not fit beside it: the frame is the one dropped.
                    Pushed::DroppedNewest
                }
            }
        }
    }

    /// Queues a control frame (preamble, heartbeat, shutdown notice) outside the limits.
    pub fn push_unbounded(&mut self, frame: Bytes) {
        self.waiting_bytes += frame.len();
        self.waiting.push_back(frame);
    }

    /// Moves up to `max` waiting frames into `batch` and marks them in flight.
    pub fn take_batch(&mut self, batch: &mut Vec<Bytes>, max: usize) {
        let take = self.waiting.len().min(max);
        for frame in self.waiting.drain(..take) {
            self.waiting_bytes -= frame.len();
            self.in_flight_items += 1;
            self.in_flight_bytes += frame.len();
            batch.push(frame);
        }
        if self.waiting.is_empty() && self.waiting.capacity() > RETAINED_CAPACITY {
            self.waiting.shrink_to(RETAINED_CAPACITY);
        }
    }

    /// Moves the oldest waiting frame in flight.
    pub fn take_one(&mut self) -> Option<Bytes> {
        let frame = self.waiting.pop_front()?;
        self.waiting_bytes -= frame.len();
        self.in_flight_items += 1;
        self.in_flight_bytes += frame.len();
        Some(frame)
    }

    /// Records that in-flight frames reached the socket.
    pub fn written(&mut self, items: usize, bytes: usize) {
        self.in_flight_items -= items;
        self.in_flight_bytes -= bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(policy: DropPolicy) -> QueueLimits {
        QueueLimits { max_items: 3, max_bytes: 10, policy }
    }

    fn frame(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    fn drain(queue: &mut FrameQueue) -> Vec<Bytes> {
        let mut batch = Vec::new();
        queue.take_batch(&mut batch, usize::MAX);
        let bytes = batch.iter().map(Bytes::len).sum();
        queue.written(batch.len(), bytes);
        batch
    }

    #[test]
    fn oldest_policy_drops_from_the_front() {
        let mut queue = FrameQueue::default();
        for f in ["a", "b", "c"] {
            assert_eq!(queue.push(frame(f), &limits(DropPolicy::Oldest)), Pushed::Queued { dropped_oldest: 0 });
        }
        assert_eq!(queue.push(frame("d"), &limits(DropPolicy::Oldest)), Pushed::Queued { dropped_oldest: 1 });
        assert_eq!(drain(&mut queue), vec![frame("b"), frame("c"), frame("d")]);
        assert!(queue.is_idle());
    }

    #[test]
    fn byte_bound_applies_too() {
        let mut queue = FrameQueue::default();
        queue.push(frame("123456"), &limits(DropPolicy::Oldest));
        assert_eq!(queue.push(frame("12345"), &limits(DropPolicy::Oldest)), Pushed::Queued { dropped_oldest: 1 });
        assert_eq!(queue.bytes(), 5);
    }

    #[test]
    fn newest_and_disconnect_policies() {
        let mut queue = FrameQueue::default();
        for f in ["a", "b", "c"] {
            queue.push(frame(f), &limits(DropPolicy::Newest));
        }
        assert_eq!(queue.push(frame("d"), &limits(DropPolicy::Newest)), Pushed::DroppedNewest);
        assert_eq!(queue.push(frame("d"), &limits(DropPolicy::Disconnect)), Pushed::Overflow);
        assert_eq!(drain(&mut queue), vec![frame("a"), frame("b"), frame("c")]);
    }

    #[test]
    fn in_flight_frames_count_but_are_never_dropped() {
        let mut queue = FrameQueue::default();
        let mut batch = Vec::new();
        for f in ["a", "b", "c"] {
            queue.push(frame(f), &limits(DropPolicy::Oldest));
        }
        queue.take_batch(&mut batch, 8);
        assert_eq!(queue.items(), 3);
        assert_eq!(queue.push(frame("d"), &limits(DropPolicy::Oldest)), Pushed::DroppedNewest);
        queue.written(3, 3);
        assert_eq!(queue.push(frame("d"), &limits(DropPolicy::Oldest)), Pushed::Queued { dropped_oldest: 0 });
    }

    #[test]
    fn an_oversized_frame_reaches_an_idle_connection() {
        let mut queue = FrameQueue::default();
        let big = frame("0123456789abcdef");
        assert_eq!(queue.push(big.clone(), &limits(DropPolicy::Newest)), Pushed::Queued { dropped_oldest: 0 });
        assert_eq!(queue.push(frame("x"), &limits(DropPolicy::Newest)), Pushed::DroppedNewest);
    }
}
