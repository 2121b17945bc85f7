//! The checker: for each logical subscriber, which acknowledged messages it
//! had to receive, and what became of each one. Pure logic over the
//! publishers' ledger and what the subscribers saw; no I/O.
//!
//! Definitions (times are the generator's wall clock):
//! - **expected**: acknowledged (`200`), addressed to the subscriber (its
//!   user, one of its rooms, or everyone), first sent after its first stream
//!   was open, and acknowledged by the window's end (end of publishing minus
//!   the settle time) — except what may have been published while it was
//!   away with nothing to resume from: a stream that ends before any message
//!   arrived leaves no `Last-Event-ID`, and the next one starts from live
//!   messages, as a browser's would. Those are the messages acknowledged
//!   after the stream before ended (less the order tolerance: one
//!   acknowledged earlier had time to arrive) and first sent before the new
//!   one opened.
//! - **delivered once**: received exactly once across its connections.
//! - **gap-announced**: never received, but an `ssekify.gap` notice covers it.
//!   A notice covers what could have followed, in the bus's order, the last
//!   message received before it (`p`) and preceded the notice: messages
//!   acknowledged after `p` was first sent and first sent before the notice
//!   arrived. (With acknowledgements as quick as sends this is "acknowledged
//!   between `p` and the notice"; the send/acknowledge split keeps a slow
//!   answer or a retry from turning an announced miss into a loss.)
//! - **lost**: expected, never received, not covered.
//! - **duplicated**: any message received more than once by one subscriber,
//!   unless every repeat is **re-sent after a gap**: the contract answers a
//!   resume whose id it cannot place with the notice and then every buffered
//!   frame, so a copy counts as announced when it is part of that replay —
//!   it arrived after a gap notice that came after the first copy, before
//!   any message first sent after the notice (live traffic) arrived.
//! - **out of order**: within one stream (one user, one room, or broadcast), a
//!   message received after one that was first sent more than the tolerance
//!   after the former was acknowledged — so the former was surely earlier
//!   in the bus's order. Acknowledgement times alone would flag messages
//!   whose answers were merely slow.
//! - **unexpected**: received, never acknowledged (e.g. a `503` that still
//!   got through); reported, not an error. **misrouted**: received by a
//!   subscriber it was not addressed to.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::plan::{Cast, Target};
use super::seen::Seen;

/// One message as the publishers recorded it.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    /// Who it went to.
    pub target: Target,
    /// When its first attempt was written (0: never sent).
    pub first_sent_ns: u64,
    /// When a `200` for it arrived, if one did.
    pub acked_ns: Option<u64>,
}

/// The window and tolerances of one run.
#[derive(Clone, Copy)]
pub struct Rules {
    /// Start of publishing: the timelines count seconds from here.
    pub origin_ns: u64,
    /// Messages acknowledged after this are not expected.
    pub window_end_ns: u64,
    /// See "out of order" in the module docs; also how long a message may
    /// still be on its way after its acknowledgement (see "expected").
    pub order_tolerance_ns: u64,
}

/// Counts over every subscriber.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Subscribers whose first stream opened.
    pub subscribers_checked: u64,
    /// Subscribers that never got a stream.
    pub never_connected: u64,
    /// Deliveries that had to happen.
    pub expected: u64,
    /// Expected and received exactly once.
    pub delivered_once: u64,
    /// Expected and received more than once.
    pub delivered_repeatedly: u64,
    /// Expected, missed, announced by a gap notice.
    pub gap_announced: u64,
    /// Expected, missed, unannounced.
    pub lost: u64,
    /// Lost, by target kind: users, rooms, broadcast.
    pub lost_by_kind: [u64; 3],
    /// Lost, by second of acknowledgement since the origin.
    pub lost_by_second: BTreeMap<u64, u64>,
    /// (subscriber, message) pairs received more than once, expected or not,
    /// with at least one repeat no gap notice announced.
    pub duplicated: u64,
    /// Unannounced copies beyond the first of those.
    pub duplicate_copies: u64,
    /// (subscriber, message) pairs whose every repeat followed a gap notice.
    pub resent_after_gap: u64,
    /// Duplicated, by second of first send since the origin.
    pub duplicated_by_second: BTreeMap<u64, u64>,
    /// Received after a message that surely followed them in their stream.
    pub out_of_order: u64,
    /// The same, inside the resend that follows a gap notice (the server
    /// sends what it has buffered, older messages the subscriber missed
    /// included): what the contract says a gap is, not a broken order.
    pub late_in_gap_resend: u64,
    /// Received, never acknowledged.
    pub unexpected: u64,
    /// Received by a subscriber they were not addressed to.
    pub misrouted: u64,
    /// Received, acknowledged and addressed, but outside the subscriber's
    /// window (sent before it first connected, or acknowledged after the end).
    pub outside_window: u64,
    /// Gap notices received.
    pub gap_notices: u64,
}

/// Lost messages described on stderr when `CHAOS_SHOW_LOST` is set.
const EXAMPLES_SHOWN: u64 = 10;

/// Classifies what every subscriber saw; `seen[i]` is subscriber `i`.
pub fn check(cast: &Cast, sent: &[Sent], seen: &[Seen], rules: &Rules) -> Tally {
    let mut by_user = vec![Vec::new(); cast.subscribers];
    let mut by_room = vec![Vec::new(); cast.rooms];
    let mut broadcast = Vec::new();
    for (seq, message) in sent.iter().enumerate() {
        match message.target {
            Target::User(u) => by_user.get_mut(u as usize).map_or((), |list| list.push(seq as u32)),
            Target::Room(r) => by_room.get_mut(r as usize).map_or((), |list| list.push(seq as u32)),
            Target::All => broadcast.push(seq as u32),
        }
    }
    let mut tally = Tally::default();
    for (i, seen) in seen.iter().enumerate() {
        let Some(connected_ns) = seen.first_connected_ns else {
            tally.never_connected += 1;
            continue;
        };
        tally.subscribers_checked += 1;
        tally.gap_notices += seen.gaps.len() as u64;
        let away = |m: &Sent, acked: u64| {
            seen.fresh_starts.iter().any(|fresh| {
                acked > fresh.closed_ns.saturating_sub(rules.order_tolerance_ns) && m.first_sent_ns < fresh.opened_ns
            })
        };
        let expected = |seq: u32| {
            let m = &sent[seq as usize];
            m.first_sent_ns >= connected_ns
                && m.acked_ns.is_some_and(|acked| acked <= rules.window_end_ns && !away(m, acked))
        };
        let mut sorted = seen.received.clone();
        sorted.sort_unstable();
        let copies = |seq: u32| sorted.partition_point(|&s| s <= seq) - sorted.partition_point(|&s| s < seq);
        let repeats = repeats(seen, sorted.chunk_by(|a, b| a == b).filter(|run| run.len() > 1).map(|run| run[0]));
        let replays = if repeats.is_empty() { Vec::new() } else { replays_of(seen, sent) };
        for (seq, positions) in &repeats {
            let announced =
                |&at: &u32| replays.iter().any(|&(from, to)| positions[0] < from && (from..to).contains(&at));
            let silent = positions[1..].iter().filter(|at| !announced(at)).count() as u64;
            if silent == 0 {
                tally.resent_after_gap += 1;
                continue;
            }
            tally.duplicated += 1;
            tally.duplicate_copies += silent;
            if let Some(m) = sent.get(*seq as usize) {
                *tally.duplicated_by_second.entry(second(rules, m.first_sent_ns)).or_default() += 1;
            }
        }
        for run in sorted.chunk_by(|a, b| a == b) {
            let seq = run[0];
            match sent.get(seq as usize) {
                Some(m) if m.acked_ns.is_some() && !cast.addressed(i, m.target) => tally.misrouted += 1,
                Some(m) if m.acked_ns.is_some() => tally.outside_window += u64::from(!expected(seq)),
                Some(m) if !cast.addressed(i, m.target) => {
                    tally.unexpected += 1;
                    tally.misrouted += 1;
                }
                _ => tally.unexpected += 1,
            }
        }
        // A gap notice after `p` covers [first send of p, its arrival).
        let covers: Vec<(u64, u64)> = seen
            .gaps
            .iter()
            .map(|gap| {
                let before = gap.after.checked_sub(1).and_then(|k| seen.received.get(k as usize));
                let from = before.and_then(|&p| sent.get(p as usize)).map_or(0, |p| p.first_sent_ns);
                (from, gap.at_ns)
            })
            .collect();
        let rooms = cast.rooms_of(i);
        let lists = [
            (0, by_user.get(i).map_or(&[][..], Vec::as_slice)),
            (1, &by_room[rooms.0 as usize][..]),
            (1, rooms.1.map_or(&[][..], |r| &by_room[r as usize][..])),
            (2, &broadcast[..]),
        ];
        for (kind, list) in lists {
            for &seq in list.iter().filter(|&&seq| expected(seq)) {
                tally.expected += 1;
                match copies(seq) {
                    1 => tally.delivered_once += 1,
                    0 => {
                        let m = &sent[seq as usize];
                        let acked = m.acked_ns.unwrap_or(0);
                        if covers.iter().any(|&(from, to)| acked > from && m.first_sent_ns < to) {
                            tally.gap_announced += 1;
                        } else {
                            if tally.lost < EXAMPLES_SHOWN && std::env::var_os("CHAOS_SHOW_LOST").is_some() {
                                let rel = |ns: u64| ns.saturating_sub(rules.origin_ns) as f64 / 1e6;
                                eprintln!(
                                    "lost: subscriber {i} message {seq} kind {kind} first sent {:.1} ms acked {:.1} ms; \
                                     subscriber connected {:.1} ms, {} connects, {} received, gaps {:?}",
                                    rel(m.first_sent_ns),
                                    rel(acked),
                                    rel(connected_ns),
                                    seen.connects,
                                    seen.received.len(),
                                    seen.gaps.iter().map(|g| (g.after, rel(g.at_ns))).collect::<Vec<_>>(),
                                );
                            }
                            tally.lost += 1;
                            tally.lost_by_kind[kind] += 1;
                            *tally.lost_by_second.entry(second(rules, acked)).or_default() += 1;
                        }
                    }
                    _ => tally.delivered_repeatedly += 1,
                }
            }
        }
        let spans = if repeats.is_empty() && !seen.gaps.is_empty() { replays_of(seen, sent) } else { replays };
        let (late, late_in_resend) =
            out_of_order(cast, i, sent, &seen.received, !repeats.is_empty(), &spans, rules.order_tolerance_ns);
        tally.out_of_order += late;
        tally.late_in_gap_resend += late_in_resend;
    }
    tally
}

/// Per gap notice: the positions `[from, to)` of the replay that followed it,
/// up to the first message first sent after the notice arrived.
fn replays_of(seen: &Seen, sent: &[Sent]) -> Vec<(u32, u32)> {
    seen.gaps
        .iter()
        .map(|gap| {
            let live = seen
                .received
                .get(gap.after as usize..)
                .unwrap_or_default()
                .iter()
                .position(|&seq| sent.get(seq as usize).is_some_and(|m| m.first_sent_ns > gap.at_ns));
            (gap.after, live.map_or(seen.received.len() as u32, |n| gap.after + n as u32))
        })
        .collect()
}

/// For each of `seqs` (received more than once): the positions of its copies
/// in arrival order.
fn repeats(seen: &Seen, seqs: impl Iterator<Item = u32>) -> HashMap<u32, Vec<u32>> {
    let mut positions: HashMap<u32, Vec<u32>> = seqs.map(|seq| (seq, Vec::new())).collect();
    if !positions.is_empty() {
        for (at, seq) in seen.received.iter().enumerate() {
            if let Some(list) = positions.get_mut(seq) {
                list.push(at as u32);
            }
        }
    }
    positions
}

/// Messages of subscriber `i` received after one that was first sent more
/// than `tolerance` after they were acknowledged, within the same stream:
/// `(outside, inside)` the resends (`spans`) that follow gap notices.
fn out_of_order(
    cast: &Cast,
    i: usize,
    sent: &[Sent],
    received: &[u32],
    repeated: bool,
    spans: &[(u32, u32)],
    tolerance: u64,
) -> (u64, u64) {
    // Per stream: the latest first-send time among the messages received so far.
    let mut latest: Vec<(Target, u64)> = Vec::with_capacity(4);
    let mut first_copies = HashSet::new();
    let (mut count, mut in_resend) = (0, 0);
    for (position, &seq) in received.iter().enumerate() {
        if repeated && !first_copies.insert(seq) {
            continue;
        }
        let Some(m) = sent.get(seq as usize).filter(|m| cast.addressed(i, m.target)) else { continue };
        let slot = match latest.iter().position(|(t, _)| *t == m.target) {
            Some(slot) => slot,
            None => {
                latest.push((m.target, 0));
                latest.len() - 1
            }
        };
        if m.acked_ns.is_some_and(|acked| latest[slot].1 > acked + tolerance) {
            let position = position as u32;
            if spans.iter().any(|&(from, to)| (from..to).contains(&position)) {
                in_resend += 1;
            } else {
                if count == 0 && std::env::var_os("CHAOS_SHOW_LOST").is_some() {
                    eprintln!(
                        "out of order: subscriber {i} message {seq} ({:?}) at position {position}: first sent {} \
                         acked {:?}, after one first sent {} (ns)",
                        m.target, m.first_sent_ns, m.acked_ns, latest[slot].1
                    );
                }
                count += 1;
            }
        }
        latest[slot].1 = latest[slot].1.max(m.first_sent_ns);
    }
    (count, in_resend)
}

fn second(rules: &Rules, ns: u64) -> u64 {
    ns.saturating_sub(rules.origin_ns) / 1_000_000_000
}

#[cfg(test)]
mod tests {
    use super::super::seen::{FreshStart, Gap};
    use super::*;

    const MS: u64 = 1_000_000;

    /// Two subscribers over two rooms; message k is sent at k·100 ms and
    /// acknowledged 5 ms later, to the target given.
    fn ledger(targets: &[Target]) -> Vec<Sent> {
        targets
            .iter()
            .enumerate()
            .map(|(k, &target)| {
                let at = 1_000 * MS + k as u64 * 100 * MS;
                Sent { target, first_sent_ns: at, acked_ns: Some(at + 5 * MS) }
            })
            .collect()
    }

    fn rules() -> Rules {
        Rules { origin_ns: 1_000 * MS, window_end_ns: 100_000 * MS, order_tolerance_ns: 50 * MS }
    }

    fn connected(received: &[u32], gaps: &[Gap]) -> Seen {
        Seen { first_connected_ns: Some(900 * MS), received: received.to_vec(), gaps: gaps.to_vec(), ..Seen::default() }
    }

    #[test]
    fn once_lost_duplicated_and_unexpected_are_told_apart() {
        let cast = Cast::new(2, 2, 0);
        let mut sent = ledger(&[Target::All, Target::User(0), Target::All, Target::User(1), Target::All]);
        sent[4].acked_ns = None; // refused, yet delivered
        let seen = [connected(&[0, 2, 2, 4], &[]), connected(&[0, 1, 2, 3], &[])];
        let tally = check(&cast, &sent, &seen, &rules());
        // Subscriber 0: 0 once, 1 lost, 2 twice, 4 unexpected.
        // Subscriber 1: 0, 2, 3 once; 1 misrouted (to user 0).
        assert_eq!(tally.expected, 3 + 3);
        assert_eq!(tally.delivered_once, 1 + 3);
        assert_eq!(tally.delivered_repeatedly, 1);
        assert_eq!((tally.lost, tally.lost_by_kind), (1, [1, 0, 0]));
        assert_eq!((tally.duplicated, tally.duplicate_copies), (1, 1));
        assert_eq!((tally.unexpected, tally.misrouted), (1, 1));
        assert_eq!(tally.lost_by_second.get(&0), Some(&1));
    }

    #[test]
    fn a_gap_covers_what_followed_the_last_message_until_it_arrived() {
        let cast = Cast::new(1, 1, 0);
        let sent = ledger(&[Target::All; 6]);
        // Received 0 and 1, a gap at 350 ms (after 2 and 3 were sent), then 5.
        // 2 and 3 are announced; 4 (sent after the gap) is lost.
        let gap = Gap { after: 2, at_ns: 1_350 * MS };
        let tally = check(&cast, &sent, &[connected(&[0, 1, 5], &[gap])], &rules());
        assert_eq!((tally.expected, tally.delivered_once), (6, 3));
        assert_eq!((tally.gap_announced, tally.lost), (2, 1));
        assert_eq!(tally.gap_notices, 1);
    }

    #[test]
    fn a_replay_after_a_gap_notice_is_not_a_silent_duplicate() {
        let cast = Cast::new(1, 1, 0);
        let sent = ledger(&[Target::All; 4]);
        // 0 and 1 arrive, a gap notice at 250 ms is followed by the whole
        // buffer (0, 1, 2), then 3; later 1 comes a third time, unannounced.
        let gap = Gap { after: 2, at_ns: 1_250 * MS };
        let tally = check(&cast, &sent, &[connected(&[0, 1, 0, 1, 2, 3], &[gap])], &rules());
        assert_eq!((tally.resent_after_gap, tally.duplicated), (2, 0));
        let tally = check(&cast, &sent, &[connected(&[0, 1, 0, 1, 2, 3, 1], &[gap])], &rules());
        assert_eq!((tally.resent_after_gap, tally.duplicated, tally.duplicate_copies), (1, 1, 1));
        assert_eq!(tally.delivered_repeatedly, 2);
    }

    #[test]
    fn the_window_excludes_messages_before_the_first_stream_and_after_the_end() {
        let cast = Cast::new(1, 1, 0);
        let sent = ledger(&[Target::All; 4]);
        let mut seen = connected(&[1, 2, 0], &[]);
        seen.first_connected_ns = Some(1_050 * MS); // after message 0 was sent
        let rules = Rules { window_end_ns: 1_250 * MS, ..rules() }; // message 3 acked at 1,305 ms
        let tally = check(&cast, &sent, &[seen], &rules);
        assert_eq!((tally.expected, tally.delivered_once, tally.lost), (2, 2, 0));
        assert_eq!(tally.outside_window, 1);
    }

    /// The chaos run's early subscribers: the first stream of one that
    /// connects during the ramp may end before publishing starts, having
    /// received nothing; it reconnects after `retry:` without an id.
    #[test]
    fn nothing_is_owed_while_away_with_no_id_to_resume_from() {
        let cast = Cast::new(1, 1, 0);
        let sent = ledger(&[Target::All; 6]);
        let mut seen = connected(&[3, 4, 5], &[]);
        // Closed at 990 ms, reopened without Last-Event-ID at 1,250 ms: 0-2
        // (sent 1,000-1,200 ms) went out while it was away.
        seen.fresh_starts = vec![FreshStart { closed_ns: 990 * MS, opened_ns: 1_250 * MS }];
        let tally = check(&cast, &sent, &[seen.clone()], &rules());
        assert_eq!((tally.expected, tally.delivered_once, tally.lost), (3, 3, 0));
        // Closed at 1,130 ms: 0 (acknowledged at 1,005 ms) had time to arrive
        // on the stream before, which got nothing: lost. 1 (at 1,105 ms) was
        // within the tolerance of the close.
        seen.fresh_starts = vec![FreshStart { closed_ns: 1_130 * MS, opened_ns: 1_250 * MS }];
        let tally = check(&cast, &sent, &[seen], &rules());
        assert_eq!((tally.expected, tally.delivered_once, tally.lost), (4, 3, 1));
    }

    #[test]
    fn order_is_judged_per_stream_and_beyond_the_tolerance() {
        let cast = Cast::new(1, 1, 0);
        let mut sent = ledger(&[Target::All, Target::All, Target::Room(0), Target::All]);
        // 3 is sent only 20 ms after 2 was acknowledged: too close to order.
        sent[3].first_sent_ns = sent[1].acked_ns.unwrap() + 20 * MS;
        // 2 (a room) before 0 (broadcast) is fine: different streams. 1 after
        // 3 is within the tolerance; 0 after 3 is not.
        let tally = check(&cast, &sent, &[connected(&[2, 3, 1, 0], &[])], &rules());
        assert_eq!(tally.out_of_order, 1);
    }

    #[test]
    fn an_older_message_in_the_resend_after_a_gap_is_counted_apart() {
        let cast = Cast::new(1, 1, 0);
        let sent = ledger(&[Target::All, Target::All, Target::All]);
        // 2 arrives, then a gap notice (at 1.5 s, before 3 would be sent) and
        // the resend of what is buffered: 1, which this subscriber missed.
        let gap = Gap { after: 1, at_ns: 1_500 * MS };
        let tally = check(&cast, &sent, &[connected(&[0, 2, 1], &[gap])], &rules());
        assert_eq!((tally.out_of_order, tally.late_in_gap_resend), (0, 1));
        let tally = check(&cast, &sent, &[connected(&[0, 2, 1], &[])], &rules());
        assert_eq!((tally.out_of_order, tally.late_in_gap_resend), (1, 0), "without the notice it is out of order");
    }
}
