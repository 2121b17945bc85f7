//! Frames into queues: a publish routed to the shards that hold its
//! recipients (a large one in chunks, giving way), and on each shard the
//! recipients' queues, the replay ring and the gap notices of a bus loss.

use std::cell::Cell;
use std::rc::Rc;

use ahash::AHashSet;
use bytes::Bytes;
use slab::Slab;
use smallvec::{smallvec, SmallVec};

use super::conn::{CloseReason, Closing, Conn};
use super::envelope::{Delivery, Envelope, Target};
use super::queue::Pushed;
use super::replay::{self, Ahead, Stream};
use super::{writer, yielding, ShardCtx, ShardState};
use crate::metrics::ShardStats;
use crate::sse::frame;

/// Deliveries in one envelope to another shard: a large publish reaches
/// them in several, each handled in one turn, so that shard's own streams
/// run between them (a few milliseconds of work each at most).
const DELIVERIES_PER_ENVELOPE: usize = 1024;

/// Deliveries a publish routes at once: a few milliseconds of routing.
const PUBLISH_CHUNK: usize = 16 * 1024;

/// How many deliveries ahead of the one being made its user's ring is
/// asked for, and how many ahead that ring's oldest frame (by then the
/// ring's line, which holds the frame's address, has arrived); see
/// [`ShardCtx::take_next`]. A batch message takes about a microsecond,
/// memory a tenth of that: a few suffice.
const RING_AHEAD: usize = 6;
const FRAME_AHEAD: usize = 2;

/// The rings of this many deliveries are asked for together, one after the
/// other: finding a ring by its user's name waits for the name table's
/// lines, and lookups made back to back wait for their misses together,
/// where one made between two messages' work waits alone.
const RINGS_AT_ONCE: usize = 4;

/// How many deliveries ahead the name table's slot of a user's entry is
/// asked for ([`ShardCtx::prefetch_slot`]): by the time its lookup is made,
/// [`RINGS_AT_ONCE`] deliveries later, the slot has arrived.
const SLOT_AHEAD: usize = RING_AHEAD + RINGS_AT_ONCE;

/// Deliveries in order whose targets further on can be read before they are
/// taken, so that their replay state is asked for ahead of their turn: a
/// list's own iterator, or a caller's that encodes each frame as it is
/// taken (`api::publish`).
pub trait Upcoming: Iterator<Item = Delivery> {
    /// The target of the delivery `n` places after the next one.
    fn target_after(&self, n: usize) -> Option<&Target>;
}

impl Upcoming for std::vec::IntoIter<Delivery> {
    fn target_after(&self, n: usize) -> Option<&Target> {
        self.as_slice().get(n).map(|d| &d.target)
    }
}

impl<const N: usize> Upcoming for std::array::IntoIter<Delivery, N> {
    fn target_after(&self, n: usize) -> Option<&Target> {
        self.as_slice().get(n).map(|d| &d.target)
    }
}

impl Upcoming for smallvec::IntoIter<[Delivery; 1]> {
    fn target_after(&self, n: usize) -> Option<&Target> {
        self.as_slice().get(n).map(|d| &d.target)
    }
}

/// What was found of the next deliveries' users as they were asked for
/// ([`ShardCtx::take_next`]), each at its place in the publish modulo the
/// array's length (more than [`RING_AHEAD`] + [`RINGS_AT_ONCE`], so no two
/// waiting share one).
#[derive(Default)]
pub(super) struct RingsAhead {
    found: [FoundCells; 16],
    taken: usize,
    /// The last user looked up had no connection here: the next one's ring
    /// is looked up first, and one not pinned spares the registry's lookup
    /// (a run to users connected elsewhere, most of what a bus brings, costs
    /// one lookup of each name, not two).
    nobody_last: Cell<bool>,
}

/// One place of [`RingsAhead`], filled as its delivery's user is asked for.
#[derive(Default)]
struct FoundCells {
    ring: Cell<Option<u32>>,
    no_entry_as_of: Cell<Option<u64>>,
}

/// What [`ShardCtx::take_next`] found of a delivery's user ahead of its
/// turn, so that its delivery need not look again.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Found {
    /// Where its replay ring was.
    ring: Option<u32>,
    /// The registry's [`Registry::users_added`](super::registry::Registry::users_added)
    /// when it had no entry for the user: while that count stands the user
    /// still has none (a message to nobody here, most of what a bus
    /// brings, looked its user up twice, ~50 instructions the second time).
    no_entry_as_of: Option<u64>,
}

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
    pub async fn publish(self: &Rc<Self>, deliveries: impl IntoIterator<IntoIter: Upcoming>) -> Totals {
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
        deliveries: impl IntoIterator<IntoIter: Upcoming>,
        budget: &mut yielding::Budget,
    ) -> Totals {
        let mut rest = deliveries.into_iter();
        let mut totals = Totals::with_capacity(rest.size_hint().0);
        let (mut rings, mut tally) = (RingsAhead::default(), Tally::default());
        while let Some((delivery, found)) = self.take_next(&mut rest, &mut rings) {
            totals.push(self.deliver_from_entry(delivery, &[], found, &mut tally));
            // Given way after a delivery, not before: one taken before a
            // yield lives across it, in the future's state, and was copied
            // there and back (~45 instructions a message).
            if budget.spent() {
                self.report(std::mem::take(&mut tally));
                yielding::yield_now().await;
            }
        }
        self.report(tally);
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
        let (mut rest, mut rings, mut tally) = (local.into_iter(), RingsAhead::default(), Tally::default());
        let mut indexes = routes[self.id].iter();
        while let Some((delivery, found)) = self.take_next(&mut rest, &mut rings) {
            let index = *indexes.next().expect("a route per local delivery");
            totals[index] += self.deliver_from_entry(delivery, &[], found, &mut tally);
            // After the delivery, as in `deliver_each`.
            if budget.spent() {
                self.report(std::mem::take(&mut tally));
                yielding::yield_now().await;
            }
        }
        self.report(tally);
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

    /// Takes the next of `rest`, with where its user's ring was found if it
    /// was asked for ahead; first asks, every [`RINGS_AT_ONCE`] deliveries,
    /// for the rings (and the connections) of that many from [`RING_AHEAD`]
    /// after it on, and for the oldest frame of the one [`FRAME_AHEAD`]
    /// after it ([`crate::prefetch`]). A batch to 10,000
    /// users touches ~43 MB of rings and their connections' records, which
    /// no cache holds; asked for ahead, they arrive while the messages
    /// before them are made.
    pub(super) fn take_next(&self, rest: &mut impl Upcoming, rings: &mut RingsAhead) -> Option<(Delivery, Found)> {
        let slots = rings.found.len();
        let index = rings.taken;
        // A run of messages to one user (a batch to one user, a bus entry of
        // one partition) finds its ring warm: asked for once, at its first.
        if index % RINGS_AT_ONCE == 0 {
            for ahead in SLOT_AHEAD..SLOT_AHEAD + RINGS_AT_ONCE {
                let Some(target) = rest.target_after(ahead) else { break };
                if rest.target_after(ahead - 1) != Some(target) {
                    self.prefetch_slot(target, rings.nobody_last.get());
                }
            }
            for ahead in RING_AHEAD..RING_AHEAD + RINGS_AT_ONCE {
                let Some(target) = rest.target_after(ahead) else { break };
                if rest.target_after(ahead - 1) != Some(target) {
                    self.prefetch_ring(target, &rings.found[(index + ahead) % slots], &rings.nobody_last);
                }
            }
        }
        if let Some(Target::User(user)) = rest.target_after(FRAME_AHEAD) {
            let found = &rings.found[(index + FRAME_AHEAD) % slots];
            self.state.borrow().replay.prefetch_user(user, &found.ring, Ahead::Frame);
        }
        let delivery = rest.next()?;
        rings.taken += 1;
        let cells = &rings.found[index % slots];
        Some((delivery, Found { ring: cells.ring.take(), no_entry_as_of: cells.no_entry_as_of.take() }))
    }

    /// Asks for the slot of the name table [`ShardCtx::prefetch_ring`] will
    /// look `target` up in first, when it is a user's: the replay rings' after
    /// a user with no connection here (`nobody_last`), else the registry's.
    fn prefetch_slot(&self, target: &Target, nobody_last: bool) {
        let Target::User(user) = target else { return };
        let state = self.state.borrow();
        if nobody_last {
            state.replay.prefetch_ring_slot(user);
        } else {
            state.registry.prefetch_user_slot(user);
        }
    }

    /// Asks for what delivering a frame to `target` will touch, when it is
    /// a user's (rooms and broadcasts have fewer rings and connections
    /// that stay in the caches): the replay ring, and first, for a user
    /// with connections here, its registry entry (read now: ~4 % of a
    /// delivered batch message's time was the miss on its key) and the
    /// connections the frame is queued to; `found` keeps where the ring is,
    /// taken from the entry when it has it (no lookup by name), or that
    /// there is no entry. After a user without connections here
    /// (`nobody_last`), the ring is looked up first: one not pinned says
    /// there is no entry without the registry's lookup (~60 instructions).
    fn prefetch_ring(&self, target: &Target, found: &FoundCells, nobody_last: &Cell<bool>) {
        let Target::User(user) = target else { return };
        let state = self.state.borrow();
        // `Some(None)`: looked up first, and the user has no ring.
        let ring_first = nobody_last.get().then(|| state.replay.user_ring(user));
        if let Some(Some((slot, false))) = ring_first {
            found.ring.set(Some(slot));
            found.no_entry_as_of.set(Some(state.registry.users_added()));
        } else {
            match state.registry.user_entry(user) {
                Some(entry) => {
                    nobody_last.set(false);
                    found.ring.set(entry.ring_slot.get());
                    for conn in entry.conns.iter().filter_map(|&key| state.conns.get(key)) {
                        crate::prefetch::lines((conn as *const Conn).cast(), std::mem::size_of::<Conn>());
                    }
                }
                None => {
                    nobody_last.set(true);
                    found.no_entry_as_of.set(Some(state.registry.users_added()));
                }
            }
            match ring_first {
                Some(Some((slot, _))) => found.ring.set(Some(slot)),
                Some(None) => return,
                None => {}
            }
        }
        state.replay.prefetch_user(user, &found.ring, Ahead::Ring);
    }

    /// Queues an encoded frame (a local publish's) to the local connections
    /// its target names; returns how many.
    pub fn deliver(&self, delivery: Delivery) -> u64 {
        debug_assert!(delivery.packed.is_none(), "a packed delivery needs its entry: deliver_from_entry");
        let mut tally = Tally::default();
        let queued = self.deliver_from_entry(delivery, &[], Found::default(), &mut tally);
        self.report(tally);
        queued
    }

    /// Queues a frame to the local connections its target names, encoding
    /// it first from the bus log `entry` it came in when it is packed;
    /// returns how many, and counts what happened in `tally`, the run's
    /// ([`ShardCtx::report`] once it ends). `found`: what was found of a
    /// user ahead (`ShardCtx::take_next`), if it was asked for.
    pub(super) fn deliver_from_entry(&self, delivery: Delivery, entry: &[u8], found: Found, tally: &mut Tally) -> u64 {
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
        let ring_found = Cell::new(found.ring);
        let mut state = self.state.borrow_mut();
        let ShardState { conns, registry, replay, listeners, ready, queue_items_max, queue_bytes_max, .. } =
            &mut *state;
        let (stream, recipients) = match &target {
            Target::User(user) => {
                let entry = match found.no_entry_as_of {
                    Some(added) if added == registry.users_added() => None,
                    _ => registry.user_entry(user),
                };
                match entry {
                    Some(entry) => (Stream::UserAt(user, &entry.ring_slot), Recipients::Listed(&entry.conns)),
                    None => (Stream::UserAt(user, &ring_found), Recipients::Listed(&[])),
                }
            }
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
        let Some(frame) = queued_frame else { return 0 };
        let mut queued = 0;
        let now_ms = self.clock_ms.get();
        let mut push = |conn: &mut Conn| {
            if conn.closing.is_some() {
                return;
            }
            match writer::offer(conn, frame.clone(), &self.limits, now_ms) {
                Pushed::Queued { dropped_oldest } => {
                    conn.told_bus_gap = false;
                    conn.sent += 1;
                    queued += 1;
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
        tally.queued += queued;
        if queued > 0 {
            self.count_tenant_sent(Self::tenant_of_target(&target), queued);
        }
        queued
    }

    /// Adds a run of deliveries' counts to the shard's counters and
    /// publishes its replay gauges: once a run (a publish, an envelope, a
    /// stretch between two turns given away), where once a delivery they
    /// were an atomic addition and four stores a message.
    pub(super) fn report(&self, tally: Tally) {
        let stats = self.stats();
        ShardStats::add(&stats.sent, tally.queued);
        ShardStats::add(&stats.dropped_oldest, tally.dropped_oldest);
        ShardStats::add(&stats.dropped_newest, tally.dropped_newest);
        ShardStats::add(&stats.disconnected_by_backpressure, tally.overflowed);
        let state = self.state.borrow();
        if tally.raised_marks {
            ShardStats::raise(&stats.queue_items_max, state.queue_items_max as u64);
            ShardStats::raise(&stats.queue_bytes_max, state.queue_bytes_max as u64);
        }
        self.report_replay(&state.replay);
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

/// Counts of a run of deliveries, added to the shard's counters once at
/// its end ([`ShardCtx::report`]).
#[derive(Default)]
pub(super) struct Tally {
    queued: u64,
    dropped_oldest: u64,
    dropped_newest: u64,
    overflowed: u64,
    raised_marks: bool,
}

#[cfg(test)]
mod tests {
    use std::sync::{mpsc, Arc};

    use clap::Parser;

    use super::*;
    use crate::auth::Authenticator;
    use crate::config::{Cli, Config};
    use crate::shard::inbox::{inbox, INBOX_CAPACITY};
    use crate::shard::key::Key;
    use crate::shard::Shared;

    /// A one-shard context keeping replay rings for at most `users` users
    /// without a connection.
    fn shard(users: &str) -> Rc<ShardCtx> {
        let cli = Cli::parse_from(["ssekify", "--shards", "1", "--recent-max-users", users, "--recent-buffer", "4"]);
        let config = Config::try_from(&cli.server).expect("valid flags");
        let (shared_inbox, _local) = inbox(INBOX_CAPACITY);
        let (lifecycle, _) = mpsc::channel();
        let shared = Shared::new(config, Authenticator::None, None, |_| Bytes::new(), vec![shared_inbox], 1, lifecycle);
        ShardCtx::new(0, Arc::new(shared), None).expect("an epoll set")
    }

    /// The ids `user`'s ring holds, oldest first.
    fn ring_of(ctx: &ShardCtx, user: &str) -> Vec<String> {
        let replay = ctx.state.borrow().replay.replay(Some(user), &[], None, Some("unknown"));
        replay
            .frames
            .iter()
            .map(|f| String::from_utf8_lossy(&f[4..f.iter().position(|&b| b == b'\n').unwrap()]).into())
            .collect()
    }

    /// Delivers `count` messages to `users` users `{prefix}0`… in turn, each
    /// with id `{user}-{i}`, taken as a batch's are ([`ShardCtx::take_next`]);
    /// returns how many were taken.
    fn deliver_in_turn(ctx: &ShardCtx, prefix: &str, users: usize, count: usize) -> usize {
        let deliveries: Vec<Delivery> = (0..count)
            .map(|i| {
                let user = format!("{prefix}{}", i % users);
                let frame = frame::encode(&format!("{user}-{i}"), None, b"{}");
                Delivery::message(Target::User(user.as_str().into()), frame, false)
            })
            .collect();
        let (mut rest, mut rings) = (deliveries.into_iter(), RingsAhead::default());
        let mut made = 0;
        while let Some((delivery, found)) = ctx.take_next(&mut rest, &mut rings) {
            ctx.deliver_from_entry(delivery, &[], found, &mut Tally::default());
            made += 1;
        }
        made
    }

    #[test]
    fn a_user_connecting_after_its_messages_were_looked_ahead_at_gets_them() {
        // Seven users without connections in turn; w3 connects right before
        // message 10 (its own) is delivered, after take_next found it had no
        // entry: that message and w3's after it reach the connection.
        let ctx = shard("10");
        let deliveries: Vec<Delivery> = (0..40)
            .map(|i| {
                let user = format!("w{}", i % 7);
                Delivery::message(
                    Target::User(user.as_str().into()),
                    frame::encode(&format!("{user}-{i}"), None, b"{}"),
                    false,
                )
            })
            .collect();
        let (mut rest, mut rings) = (deliveries.into_iter(), RingsAhead::default());
        let (mut taken, mut conn) = (0, None);
        while let Some((delivery, found)) = ctx.take_next(&mut rest, &mut rings) {
            if taken == 10 {
                assert!(found.no_entry_as_of.is_some(), "w3 was looked up ahead and had no entry");
                conn = Some(connect(&ctx, "w3"));
            }
            ctx.deliver_from_entry(delivery, &[], found, &mut Tally::default());
            taken += 1;
        }
        let sent = (10..40).filter(|i| i % 7 == 3).count() as u64;
        assert_eq!(ctx.state.borrow().conns[conn.expect("connected")].sent, sent);
    }

    #[test]
    fn rings_found_ahead_take_each_message_into_its_own_users_ring() {
        // Seven users in turn with room for three rings: the ring of the
        // message six ahead (the user just before) is evicted two messages
        // later and its slot taken by the next new ring, another user's, which
        // still holds it when the message six ahead is recorded there.
        let ctx = shard("3");
        assert_eq!(deliver_in_turn(&ctx, "u", 7, 40), 40, "every delivery is taken once");
        assert_eq!(ring_of(&ctx, "u4"), ["u4-39"]);
        assert_eq!(ring_of(&ctx, "u3"), ["u3-38"]);
        assert_eq!(ring_of(&ctx, "u2"), ["u2-37"]);
        assert!(ring_of(&ctx, "u1").is_empty(), "evicted");

        // Rings that stay: each of three users gets its own four messages.
        let ctx = shard("3");
        assert_eq!(deliver_in_turn(&ctx, "v", 3, 30), 30);
        assert_eq!(ring_of(&ctx, "v0"), ["v0-18", "v0-21", "v0-24", "v0-27"]);
        assert_eq!(ring_of(&ctx, "v1"), ["v1-19", "v1-22", "v1-25", "v1-28"]);
        assert_eq!(ring_of(&ctx, "v2"), ["v2-20", "v2-23", "v2-26", "v2-29"]);
    }

    /// Registers a connection (no socket: the write loop does not run) of
    /// `user`, whose ring is pinned as a subscriber's is; returns its key.
    fn connect(ctx: &ShardCtx, user: &str) -> usize {
        let mut guard = ctx.state.borrow_mut();
        let state = &mut *guard;
        let user = Key::from(user);
        let key = state.conns.vacant_key();
        state.conns.insert(Conn::new(-1, key, None, Some(user.clone()), Default::default(), 0, 0));
        state.registry.add_user(&user, key);
        state.replay.pin_user(&user);
        key
    }

    #[test]
    fn a_user_connecting_between_runs_gets_its_messages_though_rings_are_looked_up_first() {
        // A run to users with no connection here has the look-ahead find
        // rings first (none pinned: no registry lookup); x2 connects after
        // its ring was made, which pins it, and x4 has no ring until its
        // connection: both get every message of the next run, the others none.
        let ctx = shard("10");
        assert_eq!(deliver_in_turn(&ctx, "x", 4, 20), 20);
        let conns: Vec<(usize, usize)> = [2, 4].map(|n| (n, connect(&ctx, &format!("x{n}")))).into();
        assert_eq!(deliver_in_turn(&ctx, "x", 5, 40), 40);
        for (n, key) in conns {
            let conn = &ctx.state.borrow().conns[key];
            assert_eq!(conn.sent, (0..40).filter(|i| i % 5 == n).count() as u64, "x{n}'s connection");
        }
        assert_eq!(ctx.state.borrow().conns.len(), 2);
        assert_eq!(ring_of(&ctx, "x3"), ["x3-23", "x3-28", "x3-33", "x3-38"]);
    }

    #[test]
    fn connections_found_ahead_get_their_own_users_messages() {
        // Users with connections (u0, u2, u4: their rings' slots come from
        // the registry) between users without, whose three rings' slots
        // change hands as in the test above.
        let ctx = shard("3");
        let conns: Vec<(usize, usize)> = [0, 2, 4].map(|n| (n, connect(&ctx, &format!("u{n}")))).into();
        assert_eq!(deliver_in_turn(&ctx, "u", 7, 40), 40);
        for (n, key) in conns {
            let sent = (0..40).filter(|i| i % 7 == n).count();
            let conn = &ctx.state.borrow().conns[key];
            assert_eq!((conn.sent, conn.queue.items()), (sent as u64, sent), "u{n}'s connection got its messages");
            let ids: Vec<String> = (0..40).filter(|i| i % 7 == n).map(|i| format!("u{n}-{i}")).collect();
            assert_eq!(ring_of(&ctx, &format!("u{n}")), ids[ids.len() - 4..], "u{n}'s ring");
        }
        assert_eq!(ring_of(&ctx, "u3"), ["u3-38"]);
        assert_eq!(ring_of(&ctx, "u1"), ["u1-36"]);
        assert_eq!(ring_of(&ctx, "u6"), ["u6-34"]);
        assert!(ring_of(&ctx, "u5").is_empty(), "evicted");
    }
}
