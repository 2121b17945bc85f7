//! Turning log entries into deliveries on this instance's shards, and
//! answering the publishers who wait for their own.
//!
//! The bus thread is the one place where an instance applies the log, in
//! log order: entries from other instances and its own alike, so every
//! instance's replay rings hold each user's, room's and broadcast's messages
//! in the same order. An instance's own entry is applied with the frames its
//! publisher already encoded ([`Append::deliveries`]); the shards count the
//! recipients straight to the publisher's waiting slots.

use std::sync::Arc;

use ahash::AHashMap;
use bytes::Bytes;
use smallvec::SmallVec;

use super::log::AppendItem;
use super::wire::{self, WireMessage, HEADER_LEN};
use super::Bus;
use crate::namespace::tenant_of_key;
use crate::shard::envelope::{Answer, Delivery, Envelope, PackedAt, ReplyTo, Target};
use crate::shard::interest::Probe;
use crate::shard::Shared;

/// One wire entry a publisher hands to the bus thread.
#[derive(Debug)]
pub struct Append {
    /// Its partition.
    pub partition: u16,
    /// Matches the entry to this publish when it comes back from the log.
    pub token: u64,
    /// The messages, encoded for the log.
    pub items: Vec<AppendItem>,
    /// The same messages as local deliveries (frames encoded once, by the publisher).
    pub deliveries: Vec<Delivery>,
    /// Where the acknowledgement goes: `[0, receivers, duplicate indexes…]`
    /// (body: the duplicates' first ids, one per line) or `[1]` (not acknowledged).
    pub ack: ReplyTo,
    /// Per shard that queues some of the deliveries, where its counts go.
    pub local: Vec<(usize, ReplyTo)>,
    /// After this the publisher has given up: do not send it.
    pub deadline: std::time::Instant,
}

impl Append {
    /// True when some message may be dropped as a duplicate by the log.
    fn deduplicated(&self) -> bool {
        self.items.iter().any(|item| item.dedupe.is_some())
    }
}

/// Publishes that are on their way to the log or back, by token.
#[derive(Debug, Default)]
pub struct OwnAppends {
    by_token: AHashMap<u64, Pending>,
    /// Own entries applied before their append's reply was handled (the
    /// notice was read first): where the acknowledgement goes, and how many
    /// messages the append carried. The reply answers the publisher.
    applied_early: AHashMap<u64, (ReplyTo, usize)>,
}

#[derive(Debug)]
struct Pending {
    append: Append,
    /// The sequence the log gave it, once acknowledged.
    seq: Option<u64>,
    /// When it was acknowledged.
    acked_at: Option<std::time::Instant>,
}

impl OwnAppends {
    /// Remembers a publish sent to Redis.
    pub fn insert(&mut self, append: Append) {
        self.by_token.insert(append.token, Pending { append, seq: None, acked_at: None });
    }

    /// The append of `token`, for a resend.
    pub fn get(&self, token: u64) -> Option<&Append> {
        self.by_token.get(&token).map(|p| &p.append)
    }

    /// How many messages the append of `token` carried, applied or not.
    pub fn messages(&self, token: u64) -> Option<usize> {
        match self.by_token.get(&token) {
            Some(pending) => Some(pending.append.items.len()),
            None => self.applied_early.get(&token).map(|(_, messages)| *messages),
        }
    }

    /// Answers the publisher of `token`: acknowledged as `seq` (0: every
    /// message was a duplicate, nothing to apply).
    pub fn acknowledged(
        &mut self,
        shared: &Shared,
        token: u64,
        appended: &super::log::Appended,
        now: std::time::Instant,
    ) {
        let mut values = vec![0, appended.receivers];
        values.extend(appended.duplicates.iter().map(|(index, _)| *index as u64));
        let body = (!appended.duplicates.is_empty())
            .then(|| Bytes::from(appended.duplicates.iter().map(|(_, id)| id.as_str()).collect::<Vec<_>>().join("\n")));
        let Some(pending) = self.by_token.get_mut(&token) else {
            if let Some((ack, _)) = self.applied_early.remove(&token) {
                answer(shared, ack, Answer { values, body });
            }
            return;
        };
        answer(shared, pending.append.ack, Answer { values, body });
        if appended.seq == 0 {
            let pending = self.by_token.remove(&token).expect("present");
            answer_locals(shared, &pending.append, |count| vec![0; count]);
        } else {
            pending.seq = Some(appended.seq);
            pending.acked_at = Some(now);
        }
    }

    /// The publish of `token` was not acknowledged (refused, or its outcome
    /// unknown): the publisher gets a 503. Should the entry be in the log
    /// after all, it is applied from there like another instance's.
    pub fn failed(&mut self, shared: &Shared, token: u64) {
        if let Some(pending) = self.by_token.remove(&token) {
            refuse(shared, pending.append);
        } else if let Some((ack, _)) = self.applied_early.remove(&token) {
            // Applied already: only the acknowledgement is left to refuse.
            unavailable(shared, ack);
        }
    }

    /// Every publish not yet acknowledged fails (the connection is gone).
    pub fn fail_unacknowledged(&mut self, shared: &Shared) {
        let tokens: Vec<u64> = self
            .by_token
            .iter()
            .filter(|(_, p)| p.seq.is_none())
            .map(|(t, _)| *t)
            .chain(self.applied_early.keys().copied())
            .collect();
        for token in tokens {
            self.failed(shared, token);
        }
    }

    /// Acknowledged publishes of `partition` whose entries the log lost
    /// (sequence at or below `applied`, never applied): their publishers
    /// stop waiting for counts.
    pub fn forget_lost(&mut self, shared: &Shared, partition: u16, applied: u64) {
        let lost: Vec<u64> = self
            .by_token
            .iter()
            .filter(|(_, p)| p.append.partition == partition && p.seq.is_some_and(|seq| seq <= applied))
            .map(|(t, _)| *t)
            .collect();
        for token in lost {
            let pending = self.by_token.remove(&token).expect("present");
            answer_locals(shared, &pending.append, |_| Vec::new());
        }
    }

    /// Acknowledged publishes whose notification is overdue: `(partition, seq)`.
    pub fn overdue(&self, acked_before: std::time::Instant) -> Vec<(u16, u64)> {
        self.by_token
            .values()
            .filter(|p| p.acked_at.is_some_and(|at| at < acked_before))
            .filter_map(|p| p.seq.map(|seq| (p.append.partition, seq)))
            .collect()
    }

    /// Takes this instance's publish of `token`, if it is still waiting;
    /// one not yet acknowledged leaves where its acknowledgement goes.
    fn take(&mut self, token: u64) -> Option<Append> {
        let pending = self.by_token.remove(&token)?;
        if pending.seq.is_none() {
            self.applied_early.insert(token, (pending.append.ack, pending.append.items.len()));
        }
        Some(pending.append)
    }
}

/// Applies one log entry: this instance's own publish with its publisher's
/// frames, anything else decoded from the entry. An entry that cannot be
/// read (corrupt, or from a build with another wire version) applies
/// nothing and comes back as the error: its messages are lost here.
///
/// An own entry's notice may be read before its append's reply (Redis
/// writes the reply first, but the two connections are read apart): it is
/// applied at once, in log order, and the reply still answers the publisher
/// ([`OwnAppends::acknowledged`]). Before that was so, a session loop that
/// read the subscription itself got notices first under the bus tests' load
/// and left 5 to 9 of their 18 tests' publishers with a 503.
pub fn apply(shared: &Arc<Shared>, bus: &Bus, own: &mut OwnAppends, entry: Bytes) -> Result<(), wire::WireError> {
    if entry.len() >= HEADER_LEN {
        let instance = u32::from_be_bytes(entry[1..5].try_into().expect("4 bytes"));
        let token = u64::from_be_bytes(entry[5..13].try_into().expect("8 bytes"));
        if instance == bus.instance {
            if let Some(append) = own.take(token) {
                apply_own(shared, append, entry);
                return Ok(());
            }
        }
    }
    let listed = |target: &Target| match &bus.tenants {
        Some(list) => tenant_of(target).is_none_or(|tenant| list.iter().any(|t| &**t == tenant)),
        None => true,
    };
    let deliveries = deliveries_of(&entry, listed)?;
    bus.count_received(deliveries.len() as u64);
    if let Some(shard) = one_shard(shared, &deliveries) {
        // Most entries: one message, or a run to one user, for one shard
        // (the user's), handed on as they are.
        hand_on(shared, shard, deliveries, entry);
        return Ok(());
    }
    for (shard, deliveries) in shared.route(deliveries).0.into_iter().enumerate() {
        if !deliveries.is_empty() {
            hand_on(shared, shard, deliveries, entry.clone());
        }
    }
    Ok(())
}

/// Another instance's `entry` as deliveries: its messages for `listed`
/// targets, each checked as it is read, in a list sized up front; nothing
/// when any message is undecodable.
fn deliveries_of(entry: &Bytes, listed: impl Fn(&Target) -> bool) -> Result<Vec<Delivery>, wire::WireError> {
    let messages = wire::messages(entry)?;
    let mut deliveries = Vec::with_capacity(messages.count_ahead());
    for message in messages {
        let WireMessage { target, packed, room_change, .. } = message?;
        if !listed(&target) {
            continue;
        }
        deliveries.push(match room_change {
            Some(change) => Delivery::room_change(target, change),
            None => Delivery::packed(target, PackedAt::within(entry, packed).expect("read from the entry")),
        });
    }
    Ok(deliveries)
}

/// The shard that queues every one of `deliveries`, if one does: a user's
/// messages (a run of them shares its target, compared in a few words).
fn one_shard(shared: &Shared, deliveries: &[Delivery]) -> Option<usize> {
    let first = &deliveries.first()?.target;
    let shards = shared.shards_for(first);
    let alone = shards.len() == 1
        && deliveries[1..].iter().all(|d| d.target == *first || shared.shards_for(&d.target) == shards);
    alone.then_some(shards.start)
}

/// Hands `shard` what it must apply of another instance's `entry`. Messages
/// for nobody there wait for its next wake; a membership change is the
/// shard's business now.
fn hand_on(shared: &Shared, shard: usize, deliveries: Vec<Delivery>, entry: Bytes) {
    let interest = &shared.lanes[shard].interest;
    let mut probes: SmallVec<[Probe; 4]> = SmallVec::new();
    for (at, delivery) in deliveries.iter().enumerate() {
        match delivery.room_change {
            Some(_) => probes.push(Probe::Always),
            // A run to one target is probed once.
            None if at > 0 && deliveries[at - 1].target == delivery.target => {}
            None => probes.push(interest.probe(&delivery.target)),
        }
    }
    shared.send_from_bus(shard, Envelope::Deliver { deliveries, reply: None, entry }, &probes);
}

/// Delivers an own entry with the publisher's frames; messages the log
/// dropped as duplicates get an empty frame, which delivers nothing.
fn apply_own(shared: &Shared, mut append: Append, entry: Bytes) {
    if append.deduplicated() {
        let kept = wire::decode(&entry).map(|e| e.messages).unwrap_or_default();
        let mut kept = kept.iter().peekable();
        for (item, delivery) in append.items.iter().zip(&mut append.deliveries) {
            let same = kept.peek().is_some_and(|m| m.id.as_bytes() == &item.id[..] && m.target == delivery.target);
            if same {
                kept.next();
            } else {
                delivery.frame = Bytes::new();
            }
        }
    }
    let (mut per_shard, _) = shared.route(std::mem::take(&mut append.deliveries));
    for (shard, reply) in append.local {
        let deliveries = std::mem::take(&mut per_shard[shard]);
        let envelope = Envelope::Deliver { deliveries, reply: Some(reply), entry: Bytes::new() };
        shared.send_from_bus(shard, envelope, Probe::NOW);
    }
}

/// Answers a publish that will not be applied: 503 to its publisher.
pub fn refuse(shared: &Shared, append: Append) {
    unavailable(shared, append.ack);
    answer_locals(shared, &append, |_| Vec::new());
}

/// Tells the publisher waiting at `ack` that the bus could not take its publish.
fn unavailable(shared: &Shared, ack: ReplyTo) {
    answer(shared, ack, Answer { values: vec![1], body: None });
}

/// Answers every shard slot of `append` with `counts(deliveries routed there)`.
fn answer_locals(shared: &Shared, append: &Append, counts: impl Fn(usize) -> Vec<u64>) {
    let routed = shared.route_indexes(&append.deliveries);
    for &(shard, reply) in &append.local {
        answer(shared, reply, Answer { values: counts(routed[shard].len()), body: None });
    }
}

fn answer(shared: &Shared, to: ReplyTo, answer: Answer) {
    shared.send_from_bus(to.shard, Envelope::Reply { to, answer }, Probe::NOW);
}

/// The tenant a target belongs to (`None`: the default namespace).
fn tenant_of(target: &Target) -> Option<&str> {
    match target {
        Target::All => None,
        Target::Tenant(tenant) => Some(tenant),
        Target::User(key) | Target::Room(key) => tenant_of_key(key),
        // Its shard checks the tenant against the room's.
        Target::Connection(_) => None,
    }
}
