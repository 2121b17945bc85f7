//! Which log entries to apply, in what order, and when something was lost:
//! the receiving side of the bus log, with no I/O (the bus thread feeds it
//! what Redis says and carries out the [`Action`]s it returns).
//!
//! Per partition it keeps the log's epoch and the last sequence applied.
//! Notifications arrive in log order while the subscription holds; a
//! sequence number past the next one means notifications were lost, so the
//! missing range is read from the stream ([`Action::Fetch`]) and applied
//! before anything newer. After a reconnect every partition is synced
//! ([`Sequencer::on_state`]) before its notifications count. What the stream
//! no longer holds (trimmed, or a log that started over under a new epoch)
//! becomes one [`Action::Gap`] for the partition, then the log goes on from
//! what exists.
//!
//! A log that went back under the same epoch (Redis restored from an older
//! snapshot, a failover to a replica without the tail) would give out
//! sequence numbers again that instances already applied: the first instance
//! to see it asks for a new epoch starting at the log's next sequence
//! ([`Action::Rebase`]), so every instance, however late it reconnects, sees
//! an epoch change instead of numbers it mistakes for old news. An epoch
//! change starts from the log's `base`, its first sequence under that epoch.

use std::collections::BTreeMap;

use bytes::Bytes;

/// Notifications kept while a partition waits for a fetch; beyond this the
/// oldest held ones are dropped and fetched again from the stream.
const HELD_MAX: usize = 4096;

/// What the bus thread must do next, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Apply this entry (decode and deliver), then go on.
    Apply {
        /// Partition.
        partition: u16,
        /// Its sequence number.
        seq: u64,
        /// The entry's bytes.
        entry: Bytes,
    },
    /// Read the partition's stream from `from` on and report it with
    /// [`Sequencer::on_range`].
    Fetch {
        /// Partition.
        partition: u16,
        /// First sequence wanted.
        from: u64,
    },
    /// Messages of the partition were lost: tell the subscribers who may have missed one.
    Gap {
        /// Partition.
        partition: u16,
    },
    /// Read the partition's log state again and report it with
    /// [`Sequencer::on_state`] (a notification named an epoch this instance
    /// does not know).
    Sync {
        /// Partition.
        partition: u16,
    },
    /// The log went back under `epoch`: start a new epoch at its next
    /// sequence (if it is still `epoch`) and report the state it then has
    /// with [`Sequencer::on_state`].
    Rebase {
        /// Partition.
        partition: u16,
        /// The epoch that went back.
        epoch: String,
    },
}

#[derive(Debug, Default)]
struct Partition {
    /// The log's epoch as last seen; `None` before the log existed.
    epoch: Option<String>,
    /// Last sequence applied.
    applied: u64,
    /// Synced with the log since the last (re)connect.
    synced: bool,
    /// Synced at least once: a later sync compares, the first starts from "now".
    ever_synced: bool,
    /// A fetch is outstanding.
    fetching: bool,
    /// A gap was just announced for a reset log: its trimmed start is not a second gap.
    reset_announced: bool,
    /// Notifications past `applied + 1`, or before the sync; `None`: not inline.
    held: BTreeMap<u64, Option<Bytes>>,
    /// Notifications that came before the sync, with their epochs.
    early: Vec<(String, u64, Option<Bytes>)>,
    /// Highest sequence heard of (for the lag).
    newest: u64,
}

/// Per-partition position in the bus log.
#[derive(Debug)]
pub struct Sequencer {
    partitions: Vec<Partition>,
}

/// A partition's position, for stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Last sequence applied.
    pub applied: u64,
    /// Entries heard of but not yet applied.
    pub lag: u64,
    /// The log's epoch, once known.
    pub epoch: Option<String>,
}

impl Sequencer {
    /// A sequencer for `count` partitions, none synced.
    pub fn new(count: u16) -> Self {
        Sequencer { partitions: (0..count).map(|_| Partition::default()).collect() }
    }

    /// Number of partitions.
    pub fn len(&self) -> u16 {
        self.partitions.len() as u16
    }

    /// Always false: a bus has at least one partition.
    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }

    /// Where partition `p` stands.
    pub fn position(&self, p: u16) -> Position {
        let part = &self.partitions[p as usize];
        Position { applied: part.applied, lag: part.newest.saturating_sub(part.applied), epoch: part.epoch.clone() }
    }

    /// The publisher's own entry `seq` of `p` was acknowledged a while ago
    /// and its notification has not come: read it from the stream.
    pub fn expect(&mut self, p: u16, seq: u64, out: &mut Vec<Action>) {
        let part = &mut self.partitions[p as usize];
        part.newest = part.newest.max(seq);
        if part.synced && !part.fetching && seq > part.applied {
            part.fetching = true;
            out.push(Action::Fetch { partition: p, from: part.applied + 1 });
        }
    }

    /// The connection to Redis was lost: every partition must sync again.
    pub fn disconnected(&mut self) {
        for part in &mut self.partitions {
            part.synced = false;
            part.fetching = false;
            part.held.clear();
            part.early.clear();
        }
    }

    /// True once every partition was synced since the last (re)connect:
    /// before that, a publish could be given a sequence that a log which went
    /// back reuses, so the bus is not live yet.
    pub fn all_synced(&self) -> bool {
        self.partitions.iter().all(|part| part.synced)
    }

    /// The log of `p` stands at `epoch`/`seq`, its first sequence under that
    /// epoch being `base` (read after subscribing, or after a rebase).
    pub fn on_state(&mut self, p: u16, epoch: Option<String>, seq: u64, base: u64, out: &mut Vec<Action>) {
        let part = &mut self.partitions[p as usize];
        part.newest = part.newest.max(seq);
        let before_base = base.max(1) - 1;
        if !part.ever_synced {
            // A new instance owes its subscribers nothing from before it started.
            part.ever_synced = true;
            part.epoch = epoch;
            part.applied = seq;
        } else {
            match (&part.epoch, epoch) {
                (Some(known), Some(now)) if *known == now => {
                    if seq < part.applied {
                        // The log went back: until it has a new epoch, this
                        // partition waits (its notifications are held).
                        part.synced = false;
                        out.push(Action::Rebase { partition: p, epoch: now });
                        return;
                    }
                    if seq > part.applied {
                        part.fetching = true;
                        out.push(Action::Fetch { partition: p, from: part.applied + 1 });
                    }
                }
                (None, None) => {}
                (None, Some(now)) => {
                    // The log was created while we were away: all of it is new.
                    part.epoch = Some(now);
                    part.applied = before_base;
                    if seq > part.applied {
                        part.fetching = true;
                        out.push(Action::Fetch { partition: p, from: part.applied + 1 });
                    }
                }
                (Some(_), now) => {
                    out.push(Action::Gap { partition: p });
                    part.reset_announced = true;
                    part.epoch = now;
                    part.applied = before_base;
                    part.newest = seq;
                    part.held.clear();
                    if seq > part.applied {
                        part.fetching = true;
                        out.push(Action::Fetch { partition: p, from: part.applied + 1 });
                    }
                }
            }
        }
        part.synced = true;
        for (epoch, seq, entry) in std::mem::take(&mut part.early) {
            self.on_notice(p, &epoch, seq, entry, out);
        }
    }

    /// A notification of entry `seq` of `p` under `epoch` arrived.
    pub fn on_notice(&mut self, p: u16, epoch: &str, seq: u64, entry: Option<Bytes>, out: &mut Vec<Action>) {
        let part = &mut self.partitions[p as usize];
        if !part.synced {
            part.early.push((epoch.to_owned(), seq, entry));
            return;
        }
        match &part.epoch {
            None => part.epoch = Some(epoch.to_owned()),
            Some(known) if known != epoch => {
                // Where does the new epoch start? The log's state says.
                part.synced = false;
                part.early.push((epoch.to_owned(), seq, entry));
                out.push(Action::Sync { partition: p });
                return;
            }
            Some(_) => {}
        }
        part.newest = part.newest.max(seq);
        if seq <= part.applied {
            return;
        }
        if seq == part.applied + 1 && !part.fetching && part.held.is_empty() {
            if let Some(entry) = entry {
                // The next one, with nothing held: applied without a stay in `held`.
                return Self::apply_next(p, part, seq, entry, out);
            }
        }
        part.held.insert(seq, entry);
        while part.held.len() > HELD_MAX {
            part.held.pop_first();
        }
        Self::advance(p, part, out);
    }

    /// The stream of `p` from the last fetch's `from` on: `entries` as read;
    /// `full` when the read brought as many as it asked for (there may be more).
    pub fn on_range(&mut self, p: u16, entries: Vec<(u64, Bytes)>, full: bool, out: &mut Vec<Action>) {
        let part = &mut self.partitions[p as usize];
        if !part.fetching {
            // Not asked for (a reply to a fetch from before a reset): ignore.
            return;
        }
        part.fetching = false;
        for (seq, entry) in entries {
            if seq <= part.applied {
                continue;
            }
            if seq > part.applied + 1 {
                Self::lost_before(p, part, seq, out);
            }
            part.held.remove(&seq);
            part.applied = seq;
            part.newest = part.newest.max(seq);
            out.push(Action::Apply { partition: p, seq, entry });
        }
        part.reset_announced = false;
        if full {
            part.fetching = true;
            out.push(Action::Fetch { partition: p, from: part.applied + 1 });
            return;
        }
        // The stream has nothing more: what is still missing is gone from it.
        if let Some(&first) = part.held.keys().next() {
            if first > part.applied + 1 {
                Self::lost_before(p, part, first, out);
            }
        }
        Self::advance(p, part, out);
    }

    /// Entries before `seq` (after `applied`) are not in the stream.
    fn lost_before(p: u16, part: &mut Partition, seq: u64, out: &mut Vec<Action>) {
        if !part.reset_announced {
            out.push(Action::Gap { partition: p });
        }
        part.applied = seq - 1;
    }

    /// Applies held notifications that are next in order; fetches when one is missing.
    fn advance(p: u16, part: &mut Partition, out: &mut Vec<Action>) {
        if part.fetching {
            return;
        }
        while let Some(entry) = part.held.first_entry() {
            if *entry.key() <= part.applied {
                entry.remove();
                continue;
            }
            if *entry.key() != part.applied + 1 || entry.get().is_none() {
                part.fetching = true;
                out.push(Action::Fetch { partition: p, from: part.applied + 1 });
                return;
            }
            let (seq, entry) = entry.remove_entry();
            Self::apply_next(p, part, seq, entry.expect("checked inline"), out);
        }
    }

    /// Applies `entry`, the one after `part.applied`.
    fn apply_next(p: u16, part: &mut Partition, seq: u64, entry: Bytes, out: &mut Vec<Action>) {
        part.applied = seq;
        part.reset_announced = false;
        out.push(Action::Apply { partition: p, seq, entry });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> Option<Bytes> {
        Some(Bytes::from(format!("entry {seq}")))
    }

    fn apply(seq: u64) -> Action {
        Action::Apply { partition: 0, seq, entry: entry(seq).unwrap() }
    }

    fn notice(s: &mut Sequencer, epoch: &str, seq: u64) -> Vec<Action> {
        let mut out = Vec::new();
        s.on_notice(0, epoch, seq, entry(seq), &mut out);
        out
    }

    fn state(s: &mut Sequencer, epoch: Option<&str>, seq: u64) -> Vec<Action> {
        based(s, epoch, seq, 1)
    }

    fn based(s: &mut Sequencer, epoch: Option<&str>, seq: u64, base: u64) -> Vec<Action> {
        let mut out = Vec::new();
        s.on_state(0, epoch.map(str::to_owned), seq, base, &mut out);
        out
    }

    /// A read of up to [`super::super::log::RANGE_COUNT`] entries brought `seqs`.
    fn range(s: &mut Sequencer, seqs: impl IntoIterator<Item = u64>) -> Vec<Action> {
        let mut out = Vec::new();
        let entries: Vec<(u64, Bytes)> = seqs.into_iter().map(|q| (q, entry(q).unwrap())).collect();
        let full = entries.len() >= super::super::log::RANGE_COUNT;
        s.on_range(0, entries, full, &mut out);
        out
    }

    fn synced(epoch: &str, seq: u64) -> Sequencer {
        let mut s = Sequencer::new(1);
        assert_eq!(state(&mut s, Some(epoch), seq), vec![], "a new instance starts at the log's end");
        s
    }

    #[test]
    fn in_order_notices_apply_at_once_and_repeats_are_dropped() {
        let mut s = synced("e", 4);
        assert_eq!(notice(&mut s, "e", 5), vec![apply(5)]);
        assert_eq!(notice(&mut s, "e", 6), vec![apply(6)]);
        assert_eq!(notice(&mut s, "e", 6), vec![], "a repeat");
        assert_eq!(notice(&mut s, "e", 3), vec![], "older than the start");
        assert_eq!(s.position(0), Position { applied: 6, lag: 0, epoch: Some("e".into()) });
    }

    #[test]
    fn a_missed_notice_is_fetched_before_anything_newer() {
        let mut s = synced("e", 0);
        assert_eq!(notice(&mut s, "e", 1), vec![apply(1)]);
        assert_eq!(notice(&mut s, "e", 3), vec![Action::Fetch { partition: 0, from: 2 }]);
        assert_eq!(notice(&mut s, "e", 4), vec![], "held while fetching");
        assert_eq!(s.position(0).lag, 3);
        assert_eq!(range(&mut s, [2, 3, 4]), vec![apply(2), apply(3), apply(4)]);
        assert_eq!(notice(&mut s, "e", 5), vec![apply(5)]);
    }

    #[test]
    fn entries_too_large_to_notify_are_fetched() {
        let mut s = synced("e", 0);
        let mut out = Vec::new();
        s.on_notice(0, "e", 1, None, &mut out);
        assert_eq!(out, vec![Action::Fetch { partition: 0, from: 1 }]);
        assert_eq!(range(&mut s, [1]), vec![apply(1)]);
    }

    #[test]
    fn a_reconnect_catches_up_and_notices_before_the_sync_wait() {
        let mut s = synced("e", 2);
        s.disconnected();
        assert_eq!(notice(&mut s, "e", 6), vec![], "not synced yet");
        assert_eq!(state(&mut s, Some("e"), 6), vec![Action::Fetch { partition: 0, from: 3 }]);
        assert_eq!(range(&mut s, 3..=6), vec![apply(3), apply(4), apply(5), apply(6)]);
        assert_eq!(notice(&mut s, "e", 7), vec![apply(7)]);
    }

    #[test]
    fn long_catch_ups_read_page_after_page() {
        let mut s = synced("e", 0);
        s.disconnected();
        assert_eq!(state(&mut s, Some("e"), 100), vec![Action::Fetch { partition: 0, from: 1 }]);
        let page = range(&mut s, 1..=64);
        assert_eq!(page.len(), 65);
        assert_eq!(page.last(), Some(&Action::Fetch { partition: 0, from: 65 }));
        assert_eq!(range(&mut s, 65..=100).len(), 36);
    }

    #[test]
    fn a_trimmed_stream_is_one_gap_then_what_remains() {
        let mut s = synced("e", 1);
        s.disconnected();
        assert_eq!(state(&mut s, Some("e"), 10), vec![Action::Fetch { partition: 0, from: 2 }]);
        assert_eq!(range(&mut s, [8, 9, 10]), vec![Action::Gap { partition: 0 }, apply(8), apply(9), apply(10)]);
    }

    #[test]
    fn a_notice_the_stream_no_longer_has_before_it_is_a_gap() {
        let mut s = synced("e", 1);
        assert_eq!(notice(&mut s, "e", 5), vec![Action::Fetch { partition: 0, from: 2 }]);
        assert_eq!(range(&mut s, []), vec![Action::Gap { partition: 0 }, apply(5)]);
    }

    #[test]
    fn a_new_epoch_is_one_gap_and_the_new_log_from_its_start() {
        let mut s = synced("old", 7);
        s.disconnected();
        assert_eq!(
            state(&mut s, Some("new"), 3),
            vec![Action::Gap { partition: 0 }, Action::Fetch { partition: 0, from: 1 }]
        );
        assert_eq!(range(&mut s, [2, 3]), vec![apply(2), apply(3)], "its trimmed start is the same gap");
        assert_eq!(notice(&mut s, "new", 4), vec![apply(4)]);
        assert_eq!(notice(&mut s, "newer", 1), vec![Action::Sync { partition: 0 }], "seen live: where does it start?");
        assert_eq!(notice(&mut s, "newer", 2), vec![], "held until the state is read");
        assert_eq!(
            state(&mut s, Some("newer"), 2),
            vec![Action::Gap { partition: 0 }, Action::Fetch { partition: 0, from: 1 }]
        );
        assert_eq!(range(&mut s, [1, 2]), vec![apply(1), apply(2)]);
    }

    #[test]
    fn a_log_gone_entirely_is_a_gap_and_a_log_made_later_is_read_whole() {
        let mut s = synced("e", 5);
        s.disconnected();
        assert_eq!(state(&mut s, None, 0), vec![Action::Gap { partition: 0 }]);
        assert_eq!(notice(&mut s, "f", 2), vec![Action::Fetch { partition: 0, from: 1 }]);
        assert_eq!(range(&mut s, [1, 2]), vec![apply(1), apply(2)]);

        let mut fresh = synced("x", 0);
        fresh.partitions[0].epoch = None;
        fresh.disconnected();
        assert_eq!(state(&mut fresh, Some("y"), 2), vec![Action::Fetch { partition: 0, from: 1 }], "no gap");
    }

    #[test]
    fn a_log_that_went_back_gets_a_new_epoch_from_its_next_sequence() {
        let mut s = synced("e", 9);
        s.disconnected();
        let rebase = vec![Action::Rebase { partition: 0, epoch: "e".into() }];
        assert_eq!(state(&mut s, Some("e"), 6), rebase, "the log is behind what was applied");
        assert!(!s.all_synced(), "not live until rebased");
        assert_eq!(notice(&mut s, "e2", 7), vec![], "held meanwhile");
        assert_eq!(
            based(&mut s, Some("e2"), 7, 7),
            vec![Action::Gap { partition: 0 }, Action::Fetch { partition: 0, from: 7 }],
            "the new epoch from its base: 7 is new, not an old 7"
        );
        assert_eq!(range(&mut s, [7]), vec![apply(7)]);
        assert!(s.all_synced());
    }

    #[test]
    fn a_late_instance_sees_the_new_epoch_and_misses_nothing_silently() {
        // Applied 100 before Redis was restored at 90 and another instance
        // rebased (base 91) and published up to 105 before this one came back.
        let mut s = synced("e", 100);
        s.disconnected();
        assert_eq!(
            based(&mut s, Some("e2"), 105, 91),
            vec![Action::Gap { partition: 0 }, Action::Fetch { partition: 0, from: 91 }]
        );
        assert_eq!(range(&mut s, 91..=105).len(), 15, "every entry of the new epoch, 91 to 100 included");
    }
}
