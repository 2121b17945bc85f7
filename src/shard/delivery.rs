//! Frames into queues: a publish routed to the shards that hold its
//! recipients (a large one in chunks, giving way), and on each shard the
//! recipients' queues, the replay ring and the gap notices of a bus loss.

use std::rc::Rc;

use ahash::AHashSet;
use bytes::Bytes;
use slab::Slab;
use smallvec::{smallvec, SmallVec};

use super::conn::{CloseReason, Closing, Conn};
use super::envelope::{Delivery, Envelope, Target};
use super::queue::Pushed;
use super::replay::{self, Stream};
use super::{yielding, ShardCtx, ShardState};
use crate::metrics::ShardStats;
use crate::sse::frame;

/// Deliveries in one envelope to another shard: a large publish reaches
/// them in several, each handled in one turn, so that shard's own streams
/// run between them (a few milliseconds of work each at most).
const DELIVERIES_PER_ENVELOPE: usize = 1024;

/// Deliveries a publish routes at once: a few milliseconds of routing.
const PUBLISH_CHUNK: usize = 16 * 1024;

/// Per delivery of a publish, the connections it was queued to; a lone
/// message's (every single publish's) held in place, not allocated.
pub type Totals = SmallVec<[u64; 1]>;

/// A chunk of a publish's deliveries, a lone one held in place.
type Chunk = SmallVec<[Delivery; 1]>;

impl ShardCtx {
    /// Publishes frames in order and returns, per delivery, the number of
    /// connections it was queued to across all shards. With one shard each
    /// delivery is made as it is taken; with more, a large publish goes
    /// `PUBLISH_CHUNK` deliveries at a time. Either way no step of it
    /// (routing, delivering, freeing) holds the shard for long.
    pub async fn publish(self: &Rc<Self>, deliveries: impl IntoIterator<Item = Delivery>) -> Totals {
        let mut budget = yielding::Budget::default();
        if self.shared.shard_count() == 1 {
            // Nothing to route: each delivery is taken from `deliveries` as
            // it is made (a caller's lazy encoding runs right before it).
            return self.deliver_each(deliveries, &mut budget).await;
        }
        let mut rest = deliveries.into_iter().peekable();
        let mut totals = Totals::with_capacity(rest.size_hint().0);
        while rest.peek().is_some() {
            let mut chunk = Chunk::with_capacity(rest.size_hint().0.min(PUBLISH_CHUNK));
            // Pushed from inside the iteration (`for_each`), which inlines
            // the caller's mapping; `collect` into a SmallVec called it per item.
            rest.by_ref().take(PUBLISH_CHUNK).for_each(|delivery| chunk.push(delivery));
            totals.extend(self.publish_chunk(chunk, &mut budget).await);
        }
        totals
    }

    /// Delivers `deliveries` on this shard, in order, each taken as it is
    /// delivered, giving way to the shard's other work when `budget` is spent.
    async fn deliver_each(
        self: &Rc<Self>,
        deliveries: impl IntoIterator<Item = Delivery>,
        budget: &mut yielding::Budget,
    ) -> Totals {
        let deliveries = deliveries.into_iter();
        let mut totals = Totals::with_capacity(deliveries.size_hint().0);
        for delivery in deliveries {
            if budget.spent() {
                yielding::yield_now().await;
            }
            totals.push(self.deliver(delivery));
        }
        totals
    }

    /// One chunk of [`ShardCtx::publish`] with more than one shard.
    pub(super) async fn publish_chunk(self: &Rc<Self>, deliveries: Chunk, budget: &mut yielding::Budget) -> Totals {
        if budget.overdue() {
            yielding::yield_now().await;
        }
        // A lone message to a user this shard owns: nothing to split by shard.
        if matches!(&deliveries[..], [lone] if self.shared.shards_for(&lone.target) == (self.id..self.id + 1)) {
            return self.deliver_each(deliveries, budget).await;
        }
        let shards = self.shared.shard_count();
        let mut totals: Totals = smallvec![0; deliveries.len()];
        let (mut per_shard, routes) = self.shared.route(deliveries.into_vec());
        // Other shards get their part in envelopes of at most
        // DELIVERIES_PER_ENVELOPE, each handled in one turn of theirs; this
        // shard delivers its own part giving way now and then (`yielding`).
        let mut envelopes: Vec<(usize, Vec<Delivery>)> = Vec::new();
        for shard in (0..shards).filter(|&s| s != self.id) {
            let mut rest = std::mem::take(&mut per_shard[shard]).into_iter().peekable();
            while rest.peek().is_some() {
                envelopes.push((shard, rest.by_ref().take(DELIVERIES_PER_ENVELOPE).collect()));
            }
        }
        let local = std::mem::take(&mut per_shard[self.id]);
        // By value: each delivery is freed as it is done, not all at the end.
        for (delivery, &index) in local.into_iter().zip(&routes[self.id]) {
            if budget.spent() {
                yielding::yield_now().await;
            }
            totals[index] += self.deliver(delivery);
        }
        // Asked after the local part (as before yielding came in), so the
        // wait for the other shards is not part of the loop's state: the
        // future of every publish stays small.
        let targets: Vec<usize> = envelopes.iter().map(|(shard, _)| *shard).collect();
        let mut parts = envelopes.into_iter().map(|(_, part)| part);
        let replies = if targets.is_empty() {
            Vec::new()
        } else {
            self.ask(&targets, |_, reply| Envelope::Deliver {
                deliveries: parts.next().expect("one part per target"),
                reply: Some(reply),
                entry: Bytes::new(),
            })
            .await
        };
        let mut offsets = vec![0usize; shards];
        for (shard, answer) in targets.iter().zip(replies) {
            let indexes = &routes[*shard][offsets[*shard]..];
            offsets[*shard] += answer.values.len();
            for (&index, count) in indexes.iter().zip(answer.values) {
                totals[index] += count;
            }
        }
        totals
    }

    /// Queues an encoded frame (a local publish's) to the local connections
    /// its target names; returns how many.
    pub fn deliver(&self, delivery: Delivery) -> u64 {
        debug_assert!(delivery.packed.is_none(), "a packed delivery needs its entry: deliver_from_entry");
        self.deliver_from_entry(delivery, &[])
    }

    /// Queues a frame to the local connections its target names, encoding
    /// it first from the bus log `entry` it came in when it is packed;
    /// returns how many.
    pub fn deliver_from_entry(&self, delivery: Delivery, entry: &[u8]) -> u64 {
        let Delivery { target, frame, skip_known_id, room_change, packed } = delivery;
        if let Some(change) = &room_change {
            return self.change_rooms(&target, change).pack();
        }
        let frame = match packed {
            Some(at) => at.of(entry).and_then(frame::encode_packed).unwrap_or_default(),
            None => frame,
        };
        if frame.is_empty() {
            return 0;
        }
        let mut state = self.state.borrow_mut();
        let ShardState { conns, registry, replay, listeners, ready, queue_items_max, queue_bytes_max, .. } =
            &mut *state;
        let (stream, recipients) = match &target {
            Target::User(user) => match registry.user_entry(user) {
                Some(entry) => (Stream::UserAt(user, &entry.ring_slot), Recipients::Listed(&entry.conns)),
                None => (Stream::User(user), Recipients::Listed(&[])),
            },
            Target::Room(room) => (Stream::Room(room), Recipients::Set(registry.room(room))),
            Target::All if registry.has_tenants() || !listeners.is_empty() => {
                (Stream::All, Recipients::DefaultNamespace)
            }
            Target::All => (Stream::All, Recipients::Everyone),
            Target::Tenant(tenant) => (Stream::Tenant(tenant), Recipients::Set(registry.tenant(tenant))),
            // Only room changes address one connection.
            Target::Connection(_) => return 0,
        };
        // The ring takes the frame itself when nobody here gets it (most of
        // what the bus brings): a frame of several lines or over 1 KiB has
        // no reference count until its first clone allocates one (one-line
        // frames up to 1 KiB carry theirs, `sse/one_allocation.rs`).
        let queued_frame = match recipients.none(conns) {
            true => None,
            false => Some(frame.clone()),
        };
        if !replay.record(stream, frame, self.clock_ms.get(), skip_known_id) {
            return 0;
        }
        let Some(frame) = queued_frame else {
            self.report_replay(replay);
            return 0;
        };
        let mut tally = Tally::default();
        let mut push = |conn: &mut Conn| {
            if conn.closing.is_some() {
                return;
            }
            match conn.queue.push(frame.clone(), &self.limits) {
                Pushed::Queued { dropped_oldest } => {
                    conn.told_bus_gap = false;
                    conn.sent += 1;
                    tally.queued += 1;
                    tally.dropped_oldest += dropped_oldest as u64;
                    ready.add(conn);
                    if conn.queue.items() > *queue_items_max || conn.queue.bytes() > *queue_bytes_max {
                        *queue_items_max = (*queue_items_max).max(conn.queue.items());
                        *queue_bytes_max = (*queue_bytes_max).max(conn.queue.bytes());
                        tally.raised_marks = true;
                    }
                }
                Pushed::DroppedNewest => tally.dropped_newest += 1,
                Pushed::Overflow => {
                    tally.overflowed += 1;
                    conn.close(Closing::Now, CloseReason::Backpressure, ready);
                }
            }
        };
        match recipients {
            Recipients::Listed(keys) => {
                for &key in keys {
                    push(&mut conns[key]);
                }
            }
            Recipients::Set(keys) => {
                for &key in keys.into_iter().flatten() {
                    push(&mut conns[key]);
                }
            }
            // The default namespace: the whole slab, skipping tenants'
            // connections and event listeners only when this shard has any
            // (so without them the loop is what it always was).
            Recipients::DefaultNamespace => {
                for (_, conn) in conns.iter_mut() {
                    if conn.tenant.is_none() && conn.listener.is_none() {
                        push(conn);
                    }
                }
            }
            Recipients::Everyone => {
                for (_, conn) in conns.iter_mut() {
                    push(conn);
                }
            }
        }
        let stats = self.stats();
        ShardStats::add(&stats.sent, tally.queued);
        ShardStats::add(&stats.dropped_oldest, tally.dropped_oldest);
        ShardStats::add(&stats.dropped_newest, tally.dropped_newest);
        ShardStats::add(&stats.disconnected_by_backpressure, tally.overflowed);
        if tally.raised_marks {
            ShardStats::raise(&stats.queue_items_max, *queue_items_max as u64);
            ShardStats::raise(&stats.queue_bytes_max, *queue_bytes_max as u64);
        }
        self.report_replay(replay);
        if tally.queued > 0 {
            self.count_tenant_sent(Self::tenant_of_target(&target), tally.queued);
        }
        tally.queued
    }

    /// The bus lost messages of the `lost` partitions: every local
    /// connection with a user, room or broadcast in one gets one
    /// `ssekify.gap` (reason `bus`), and their rings stop resuming across the loss.
    pub(super) fn bus_gap(&self, lost: &[u16], partitions: u16) {
        let in_partition = |target: &Target| lost.contains(&target.partition(partitions));
        let mut state = self.state.borrow_mut();
        let ShardState { conns, replay, ready, .. } = &mut *state;
        let mut told = 0;
        for (_, conn) in conns.iter_mut().filter(|(_, conn)| conn.listener.is_none()) {
            let broadcast = match &conn.tenant {
                Some(tenant) => Target::Tenant((**tenant).into()),
                None => Target::All,
            };
            let affected = in_partition(&broadcast)
                || conn.user.as_ref().is_some_and(|user| in_partition(&Target::User((**user).into())))
                || conn.rooms.iter().any(|room| in_partition(&Target::Room((**room).into())));
            if affected && conn.closing.is_none() && !conn.told_bus_gap {
                let last = replay.newest_id(conn.user.as_deref(), &conn.rooms, conn.tenant.as_deref());
                conn.push_control(replay::bus_gap_frame(last.as_deref()), ready);
                conn.told_bus_gap = true;
                told += 1;
            }
        }
        replay.mark_lost(|stream| {
            in_partition(&match stream {
                replay::Stream::User(key) | replay::Stream::UserAt(key, _) => Target::User(key.clone()),
                replay::Stream::Room(key) => Target::Room(key.clone()),
                replay::Stream::All => Target::All,
                replay::Stream::Tenant(name) => Target::Tenant(name.clone()),
            })
        });
        crate::log!(Warn, "told subscribers of a bus gap", connections = told);
    }
}

/// The local connections a delivery names, looked up once: to know whether
/// anyone here gets the frame before the ring takes it, then to queue it.
enum Recipients<'a> {
    /// A user's connections.
    Listed(&'a [usize]),
    /// A room's members or a tenant's connections, if any here.
    Set(Option<&'a AHashSet<usize>>),
    /// Every connection of the default namespace, among others.
    DefaultNamespace,
    /// Every connection here (all in the default namespace).
    Everyone,
}

impl Recipients<'_> {
    /// True when no connection here is named (a broadcast counts any).
    fn none(&self, conns: &Slab<Conn>) -> bool {
        match self {
            Recipients::Listed(keys) => keys.is_empty(),
            Recipients::Set(keys) => keys.is_none_or(|set| set.is_empty()),
            Recipients::DefaultNamespace | Recipients::Everyone => conns.is_empty(),
        }
    }
}

/// Counts of one fan-out, added to the shard's counters once at the end.
#[derive(Default)]
struct Tally {
    queued: u64,
    dropped_oldest: u64,
    dropped_newest: u64,
    overflowed: u64,
    raised_marks: bool,
}
