//! The bounded queue of frames waiting to be written to one connection.
//!
//! Frames are shared `Bytes`, so a push is a reference count and a slot: the
//! oldest frame in the connection's own record, the others in a ring that
//! keeps its capacity, so no allocation per recipient once warm, and a
//! connection that keeps up (one frame at a time) never allocates one. The
//! bounds count everything accepted and not yet written; a frame the socket
//! took part of stays first and is never dropped, so a frame is never cut.
//!
//! What the policy drops is told to the stream: the next send starts, after
//! a frame it finishes, with one `ssekify.gap` notice (`"reason":"slow"`,
//! the count of messages dropped since the last one), so a client is never
//! silently short of messages and a slow one gets no flood of notices. The
//! policy drops messages and heartbeats, never a notice of another loss (a
//! bus gap, a resume's gap, the shutdown announcement).

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

use crate::config::DropPolicy;

/// How a drop notice starts (an `ssekify.gap` control frame, no `id:`
/// line); the count and [`NOTICE_TAIL`] follow.
const NOTICE_HEAD: &str = "event: ssekify.gap\ndata: {\"reason\":\"slow\",\"dropped\":";
const NOTICE_TAIL: &str = "}\n\n";

/// Ring capacity kept after a burst drains; larger rings are released so an
/// idle connection does not keep the memory of its busiest moment.
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
    /// Whether drops are told to the stream (a drop notice): subscribers'
    /// queues; not the lifecycle events listeners', whose stream the
    /// contract keeps to events.
    pub notice: bool,
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
    frames: Frames,
    bytes: usize,
    /// The socket took part of the first frame: the rest must follow it.
    started: bool,
    /// Messages dropped and not yet told: a notice goes out with the next send.
    untold: u32,
}

impl FrameQueue {
    /// Frames accepted and not yet written.
    pub fn items(&self) -> usize {
        self.frames.len()
    }

    /// Bytes accepted and not yet written.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// True when frames wait to be written.
    pub fn has_waiting(&self) -> bool {
        !self.frames.is_empty()
    }

    /// True when nothing waits to be written.
    pub fn is_idle(&self) -> bool {
        self.frames.is_empty()
    }

    /// Queues a message frame under the limits. An empty queue always accepts,
    /// so a message larger than `max_bytes` (but within `--max-payload`) still
    /// reaches a connection that keeps up.
    pub fn push(&mut self, frame: Bytes, limits: &QueueLimits) -> Pushed {
        let fits = |q: &Self| q.fits(frame.len(), limits);
        if fits(self) {
            self.push_unbounded(frame);
            return Pushed::Queued { dropped_oldest: 0 };
        }
        match limits.policy {
            DropPolicy::Newest => {
                self.count_untold(1, limits);
                Pushed::DroppedNewest
            }
            DropPolicy::Disconnect => Pushed::Overflow,
            DropPolicy::Oldest => {
                let (mut dropped, mut messages) = (0, 0);
                // A started frame stays: the oldest one that may go is after it.
                let mut at = usize::from(self.started);
                while !fits(self) {
                    let Some(old) = self.frames.get(at) else {
                        break;
                    };
                    // Where drops are told, a notice of a loss (a bus gap,
                    // a resume's gap, the shutdown announcement) stays:
                    // dropped, that news would be lost without a word. A
                    // drop notice that had not gone out yet goes, and is
                    // told again with these. (A listener's frames are all
                    // `event:` lines: there every frame may go.)
                    let told = notice_count(old);
                    if limits.notice && told.is_none() && old.starts_with(b"event:") {
                        at += 1;
                        continue;
                    }
                    let old = self.frames.remove(at).expect("the frame just read");
                    self.bytes -= old.len();
                    match told {
                        Some(told) => self.untold = self.untold.saturating_add(told),
                        None => {
                            dropped += 1;
                            // A message starts with its `id:` line; a heartbeat is no message lost.
                            messages += u32::from(old.starts_with(b"id:"));
                        }
                    }
                }
                self.count_untold(messages, limits);
                if fits(self) {
                    self.push_unbounded(frame);
                    Pushed::Queued { dropped_oldest: dropped }
                } else {
                    // Only the started frame (and notices of losses) is left
                    // and the frame still does not fit beside it: the frame
                    // is the one dropped.
                    self.count_untold(1, limits);
                    Pushed::DroppedNewest
                }
            }
        }
    }

    /// True when a frame of `len` bytes can be queued within `limits`
    /// without dropping anything.
    pub fn fits(&self, len: usize, limits: &QueueLimits) -> bool {
        self.is_idle() || (self.items() < limits.max_items && self.bytes() + len <= limits.max_bytes)
    }

    /// Counts `dropped` frames for the next notice, where drops are told.
    fn count_untold(&mut self, dropped: u32, limits: &QueueLimits) {
        if limits.notice {
            self.untold = self.untold.saturating_add(dropped);
        }
    }

    /// Queues a control frame (preamble, heartbeat, shutdown notice) outside the limits.
    pub fn push_unbounded(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Describes up to `max` of the oldest frames in `iovecs` for one send;
    /// returns their length in bytes. Drops not yet told are told first
    /// (after a started frame): their notice is queued here.
    pub fn describe(&mut self, iovecs: &mut impl Extend<libc::iovec>, max: usize) -> usize {
        if self.untold > 0 {
            self.queue_notice();
        }
        let mut total = 0;
        iovecs.extend(self.frames.iter().take(max).map(|frame| {
            total += frame.len();
            libc::iovec { iov_base: frame.as_ptr().cast_mut().cast(), iov_len: frame.len() }
        }));
        total
    }

    /// Puts the notice of the untold drops where they were: before the
    /// oldest frame not started, after the notices of other losses the
    /// policy kept there.
    #[cold]
    fn queue_notice(&mut self) {
        let notice = Bytes::from(format!("{NOTICE_HEAD}{}{NOTICE_TAIL}", self.untold));
        self.untold = 0;
        self.bytes += notice.len();
        let mut at = usize::from(self.started);
        while self.frames.get(at).is_some_and(|frame| frame.starts_with(b"event:")) {
            at += 1;
        }
        self.frames.insert(at, notice);
    }

    /// Forgets the `written` bytes the socket took: whole frames leave, a
    /// frame taken in part keeps its rest first. Returns the whole frames.
    pub fn consume(&mut self, mut written: usize) -> usize {
        self.bytes -= written;
        let mut done = 0;
        while let Some(frame) = self.frames.front_mut() {
            if written < frame.len() {
                frame.advance(written);
                self.started = written > 0 || self.started;
                break;
            }
            written -= frame.len();
            self.frames.pop_front();
            self.started = false;
            done += 1;
        }
        self.frames.release_burst();
        done
    }
}

/// Frames in order: the oldest inline, the others in a ring that is
/// allocated only when a second frame waits.
#[derive(Debug, Default)]
struct Frames {
    oldest: Option<Bytes>,
    others: VecDeque<Bytes>,
}

impl Frames {
    fn len(&self) -> usize {
        usize::from(self.oldest.is_some()) + self.others.len()
    }

    fn is_empty(&self) -> bool {
        self.oldest.is_none()
    }

    fn push_back(&mut self, frame: Bytes) {
        match self.oldest {
            None => self.oldest = Some(frame),
            Some(_) => self.others.push_back(frame),
        }
    }

    fn pop_front(&mut self) -> Option<Bytes> {
        let oldest = self.oldest.take()?;
        self.oldest = self.others.pop_front();
        Some(oldest)
    }

    fn front_mut(&mut self) -> Option<&mut Bytes> {
        self.oldest.as_mut()
    }

    fn remove(&mut self, index: usize) -> Option<Bytes> {
        match index {
            0 => self.pop_front(),
            _ => self.others.remove(index - 1),
        }
    }

    fn get(&self, index: usize) -> Option<&Bytes> {
        match index {
            0 => self.oldest.as_ref(),
            _ => self.others.get(index - 1),
        }
    }

    /// Puts `frame` at `index` (at most the length), the frames from there on after it.
    fn insert(&mut self, index: usize, frame: Bytes) {
        match (index, self.oldest.take()) {
            (0, Some(oldest)) => {
                self.others.push_front(oldest);
                self.oldest = Some(frame);
            }
            (_, None) => self.oldest = Some(frame),
            (_, oldest) => {
                self.oldest = oldest;
                self.others.insert(index - 1, frame);
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.oldest.iter().chain(&self.others)
    }

    /// Gives back a drained ring larger than [`RETAINED_CAPACITY`].
    fn release_burst(&mut self) {
        if self.others.is_empty() && self.others.capacity() > RETAINED_CAPACITY {
            self.others.shrink_to(RETAINED_CAPACITY);
        }
    }
}

/// The count a drop notice carries; `None` for any other frame (a message
/// frame starts with its `id:` line, so it is never taken for one).
fn notice_count(frame: &Bytes) -> Option<u32> {
    let digits = frame.strip_prefix(NOTICE_HEAD.as_bytes())?.strip_suffix(NOTICE_TAIL.as_bytes())?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(policy: DropPolicy) -> QueueLimits {
        QueueLimits { max_items: 3, max_bytes: 10, policy, notice: false }
    }

    fn frame(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    /// What one send of `take` bytes would carry, then consumed.
    fn send(queue: &mut FrameQueue, take: usize) -> Vec<u8> {
        let mut iovecs = Vec::new();
        queue.describe(&mut iovecs, usize::MAX);
        let mut sent = Vec::new();
        for iovec in iovecs {
            // SAFETY: the iovec describes a frame the queue holds.
            let bytes = unsafe { std::slice::from_raw_parts(iovec.iov_base as *const u8, iovec.iov_len) };
            sent.extend_from_slice(bytes);
        }
        sent.truncate(take);
        queue.consume(sent.len());
        sent
    }

    fn drain(queue: &mut FrameQueue) -> Vec<u8> {
        send(queue, usize::MAX)
    }

    #[test]
    fn oldest_policy_drops_from_the_front() {
        let mut queue = FrameQueue::default();
        for f in ["a", "b", "c"] {
            assert_eq!(queue.push(frame(f), &limits(DropPolicy::Oldest)), Pushed::Queued { dropped_oldest: 0 });
        }
        assert_eq!(queue.push(frame("d"), &limits(DropPolicy::Oldest)), Pushed::Queued { dropped_oldest: 1 });
        assert_eq!(drain(&mut queue), b"bcd");
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
        assert_eq!(drain(&mut queue), b"abc");
    }

    #[test]
    fn a_partly_sent_frame_is_finished_never_dropped() {
        let mut queue = FrameQueue::default();
        for f in ["abcd", "ef", "gh"] {
            queue.push(frame(f), &limits(DropPolicy::Oldest));
        }
        assert_eq!(send(&mut queue, 2), b"ab");
        assert_eq!((queue.items(), queue.bytes()), (3, 6));
        // Full by count: "ef" (the oldest not started) goes, "cd" stays first.
        assert_eq!(queue.push(frame("ij"), &limits(DropPolicy::Oldest)), Pushed::Queued { dropped_oldest: 1 });
        assert_eq!(drain(&mut queue), b"cdghij");
        assert!(queue.is_idle());
    }

    #[test]
    fn a_started_frame_alone_is_kept_and_the_new_one_dropped() {
        let mut queue = FrameQueue::default();
        queue.push(frame("0123456789"), &limits(DropPolicy::Oldest));
        assert_eq!(send(&mut queue, 1), b"0");
        assert_eq!(queue.push(frame("xy"), &limits(DropPolicy::Oldest)), Pushed::DroppedNewest);
        assert_eq!(drain(&mut queue), b"123456789");
    }

    #[test]
    fn an_oversized_frame_reaches_an_idle_connection() {
        let mut queue = FrameQueue::default();
        let big = frame("0123456789abcdef");
        assert_eq!(queue.push(big.clone(), &limits(DropPolicy::Newest)), Pushed::Queued { dropped_oldest: 0 });
        assert_eq!(queue.push(frame("x"), &limits(DropPolicy::Newest)), Pushed::DroppedNewest);
    }

    /// Limits where drops are told, with room for three messages.
    fn told(policy: DropPolicy) -> QueueLimits {
        QueueLimits { max_items: 3, max_bytes: 100, policy, notice: true }
    }

    /// A message frame (it starts with its `id:` line).
    fn msg(id: &'static str) -> Bytes {
        Bytes::from(format!("id:{id};"))
    }

    fn notice(dropped: u32) -> String {
        format!("event: ssekify.gap\ndata: {{\"reason\":\"slow\",\"dropped\":{dropped}}}\n\n")
    }

    fn text(queue: &mut FrameQueue, take: usize) -> String {
        String::from_utf8(send(queue, take)).unwrap()
    }

    #[test]
    fn drops_are_told_once_where_the_messages_were() {
        let mut queue = FrameQueue::default();
        for id in ["a", "b", "c", "d", "e"] {
            queue.push(msg(id), &told(DropPolicy::Oldest));
        }
        assert_eq!(text(&mut queue, usize::MAX), notice(2) + "id:c;id:d;id:e;");
        // Told: the next drops are news again.
        for id in ["f", "g", "h", "i"] {
            queue.push(msg(id), &told(DropPolicy::Oldest));
        }
        assert_eq!(text(&mut queue, usize::MAX), notice(1) + "id:g;id:h;id:i;");
        assert!(queue.is_idle());
    }

    #[test]
    fn a_notice_waiting_for_room_counts_the_drops_after_it() {
        let mut queue = FrameQueue::default();
        for id in ["a", "b"] {
            queue.push(msg(id), &told(DropPolicy::Oldest));
        }
        // The socket takes part of the first frame, which stays first.
        assert_eq!(text(&mut queue, 2), "id");
        for id in ["c", "d"] {
            queue.push(msg(id), &told(DropPolicy::Oldest));
        }
        // A send the socket takes nothing of: the notice of "b" now waits after "a".
        assert_eq!(text(&mut queue, 0), "");
        // Dropped with "c", that notice is told again, counting both.
        queue.push(msg("e"), &told(DropPolicy::Oldest));
        assert_eq!(text(&mut queue, usize::MAX), ":a;".to_owned() + &notice(2) + "id:d;id:e;");
    }

    #[test]
    fn a_dropped_heartbeat_is_no_message_lost() {
        let mut queue = FrameQueue::default();
        queue.push_unbounded(frame(": ping\n\n"));
        for id in ["a", "b", "c"] {
            queue.push(msg(id), &told(DropPolicy::Oldest));
        }
        assert_eq!(text(&mut queue, usize::MAX), "id:a;id:b;id:c;", "a ping alone dropped: nothing to tell");
    }

    #[test]
    fn newest_policy_tells_its_drops_before_what_is_queued() {
        let mut queue = FrameQueue::default();
        for id in ["a", "b", "c", "d", "e"] {
            queue.push(msg(id), &told(DropPolicy::Newest));
        }
        assert_eq!(text(&mut queue, usize::MAX), notice(2) + "id:a;id:b;id:c;");
    }

    #[test]
    fn no_notice_where_drops_are_not_told_nor_for_a_disconnect() {
        let mut queue = FrameQueue::default();
        for id in ["a", "b", "c", "d"] {
            queue.push(msg(id), &QueueLimits { notice: false, ..told(DropPolicy::Oldest) });
        }
        queue.push(msg("e"), &told(DropPolicy::Disconnect));
        assert_eq!(text(&mut queue, usize::MAX), "id:b;id:c;id:d;");
    }

    #[test]
    fn only_a_notice_is_read_as_one() {
        assert_eq!(notice_count(&Bytes::from(notice(17))), Some(17));
        assert_eq!(notice_count(&frame("id: 1\ndata: x\n\n")), None);
        assert_eq!(
            notice_count(&frame("event: ssekify.gap\ndata: {\"lastEventId\":null,\"reason\":\"bus\"}\n\n")),
            None
        );
    }

    #[test]
    fn a_notice_of_another_loss_is_kept_when_messages_are_dropped() {
        let mut queue = FrameQueue::default();
        let bus_gap = "event: ssekify.gap\ndata: {\"lastEventId\":null,\"reason\":\"bus\"}\n\n";
        queue.push_unbounded(Bytes::from_static(bus_gap.as_bytes()));
        for id in ["a", "b", "c"] {
            queue.push(msg(id), &QueueLimits { max_bytes: 1000, ..told(DropPolicy::Oldest) });
        }
        // Full by count: "a" goes, the bus gap's notice stays first.
        assert_eq!(text(&mut queue, usize::MAX), bus_gap.to_owned() + &notice(1) + "id:b;id:c;");
    }

    #[test]
    fn where_drops_are_not_told_every_frame_may_go() {
        // A lifecycle events listener's frames: `event:` lines, no id.
        let mut queue = FrameQueue::default();
        let limits = QueueLimits { max_items: 2, max_bytes: 1000, policy: DropPolicy::Oldest, notice: false };
        for kind in ["event: a\n\n", "event: b\n\n", "event: c\n\n"] {
            queue.push(frame(kind), &limits);
        }
        assert_eq!(text(&mut queue, usize::MAX), "event: b\n\nevent: c\n\n");
    }
}
