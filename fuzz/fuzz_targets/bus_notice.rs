//! Notifications and log reads come from Redis: parsing them must never
//! panic, whatever the bytes, and the sequencer fed with them must keep its
//! promise: within one run of a partition's log (between gaps) it applies
//! each sequence at most once, in increasing order.
//!
//! Input: lines, each for partition `line number % 2`: `r<bytes>` answers
//! the partition's outstanding fetch (entries from the fetch's start plus a
//! trimmed prefix, spaced by the bytes), `d` drops the connection,
//! `s<seq><epoch><base>` reports the log state (after a Sync or Rebase, or
//! out of the blue), anything else is parsed as a notification.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ssekify::bus::log;
use ssekify::bus::sequencer::{Action, Sequencer};

fuzz_target!(|data: &[u8]| {
    let mut sequencer = Sequencer::new(2);
    let mut actions = Vec::new();
    sequencer.on_state(0, Some("e".into()), 0, 1, &mut actions);
    sequencer.on_state(1, None, 0, 1, &mut actions);
    let mut applied: [Option<u64>; 2] = [None, None];
    let mut fetch: [Option<u64>; 2] = [None, None];
    for (n, line) in data.split(|&b| b == b'\n').enumerate() {
        let partition = (n % 2) as u16;
        match line.first() {
            Some(b'r') => {
                let Some(from) = fetch[partition as usize].take() else { continue };
                let mut seq = from + u64::from(line.get(1).copied().unwrap_or(0) % 3);
                let entries = line.iter().skip(2).map(|b| {
                    let entry = (seq, Bytes::from_static(b"x"));
                    seq += u64::from(*b % 2) + 1;
                    entry
                });
                let entries: Vec<(u64, Bytes)> = entries.collect();
                // A read of up to four entries: as many as that may leave more.
                let full = entries.len() >= 4;
                sequencer.on_range(partition, entries, full, &mut actions);
            }
            Some(b'd') => {
                sequencer.disconnected();
                fetch = [None, None];
            }
            Some(b's') => {
                // A log state: epoch `e` or `f`, a sequence, a base at or below it.
                let seq: u64 = line.get(1).copied().unwrap_or(0).into();
                let epoch = if line.get(2).is_some_and(|b| b % 2 == 1) { "f" } else { "e" };
                let base = line.get(3).map_or(1, |b| u64::from(*b).min(seq).max(1));
                sequencer.on_state(partition, Some(epoch.into()), seq, base, &mut actions);
            }
            _ => {
                let payload = Bytes::copy_from_slice(line);
                if let Some(notice) = log::parse_notice(&payload) {
                    sequencer.on_notice(partition, notice.epoch, notice.seq, notice.entry, &mut actions);
                }
            }
        }
        for action in actions.drain(..) {
            match action {
                Action::Apply { partition, seq, .. } => {
                    let last = &mut applied[partition as usize];
                    assert!(last.is_none_or(|last| seq > last), "applied {seq} after {last:?}");
                    *last = Some(seq);
                }
                Action::Gap { partition } => applied[partition as usize] = None,
                Action::Fetch { partition, from } => fetch[partition as usize] = Some(from),
                Action::Sync { .. } | Action::Rebase { .. } => {}
            }
        }
    }
});
