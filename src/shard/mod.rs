//! Shards: one thread, one runtime, and the connections, users and rooms it owns.
//!
//! Parts: [`conn`] (a subscriber's state), [`queue`] (its bounded frame queue),
//! [`registry`] (user and room indexes), [`writer`] (the task draining a queue
//! into its socket), [`heartbeat`] (the paced ping sweep), [`inbox`] (the
//! cross-shard channels) and [`envelope`] (what travels over them). This module
//! ties them into [`ShardCtx`], the state of one shard, and [`Shared`], the
//! read-mostly state every thread sees. Shard state is `!Send`, lives in a
//! `RefCell` on its thread, and is never borrowed across an `.await`.

pub mod conn;
pub mod envelope;
pub mod heartbeat;
pub mod idempotency;
pub mod inbox;
mod listeners;
pub mod presence;
pub mod queue;
pub mod registry;
mod requests;
mod rooms;
mod shared;
mod shutdown;
mod tenants;

pub use shared::{LifecycleEvent, Phase, Shared, ShutdownOrder, INBOX_CAPACITY};
pub use tenants::{ShardTenants, TenantFigures};
pub mod replay;
pub mod writer;
pub mod yielding;

use std::cell::{Cell, RefCell};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use monoio::net::TcpStream;
use slab::Slab;
use smallvec::SmallVec;

use crate::config::UserLimitPolicy;
use crate::http::response::Response;
use crate::metrics::ShardStats;
use conn::{CloseReason, Closing, Conn};
use envelope::{Answer, Delivery, Envelope, Selection, Subscription, Target};
use idempotency::{Claim, IdempotencyLimits, IdempotencyTable, Ticket};
use queue::{Pushed, QueueLimits};
use registry::Registry;
use replay::{ReplayLimits, ReplayStore, Stream, TenantBudgets};
use writer::FrameBatch;

/// Batch buffers kept for reuse; beyond this many concurrent writers, buffers are freed after use.
const BATCH_POOL_MAX: usize = 4096;

/// Deliveries in one envelope to another shard: a large publish reaches
/// them in several, each handled in one turn, so that shard's own streams
/// run between them (a few milliseconds of work each at most).
const DELIVERIES_PER_ENVELOPE: usize = 1024;

/// Deliveries a publish routes at once: a few milliseconds of routing.
const PUBLISH_CHUNK: usize = 16 * 1024;

/// The mutable state of one shard.
pub struct ShardState {
    /// Subscribers by slab key.
    pub conns: Slab<Conn>,
    /// User and room indexes.
    pub registry: Registry,
    /// Replay rings for `Last-Event-ID` resume.
    pub replay: ReplayStore,
    /// Idempotency keys owned by this shard.
    pub idempotency: IdempotencyTable,
    /// Slots of the lifecycle event listeners among `conns`.
    listeners: Vec<usize>,
    batches: Vec<FrameBatch>,
    queue_items_max: usize,
    queue_bytes_max: usize,
}

/// One shard: its id, its state, and the means to reach the others.
pub struct ShardCtx {
    /// Shard id (index into `Shared::inboxes` and `Shared::stats`).
    pub id: usize,
    /// State shared with all threads.
    pub shared: Arc<Shared>,
    /// This shard's connections and indexes; never borrowed across `.await`.
    pub state: RefCell<ShardState>,
    limits: QueueLimits,
    pending: RefCell<Slab<requests::Pending>>,
    generation: Cell<u64>,
    started: Instant,
    clock_ms: Cell<u64>,
    /// Publish body bytes this shard's connections are reading or holding
    /// (bounded by `--body-budget`).
    pub body_bytes_in_flight: Cell<usize>,
    /// Api requests between their head and their answer: a shutdown waits
    /// for them before the process exits.
    pub requests_in_flight: Cell<usize>,
    /// Subscribers registered here so far: each one's serial in its [`ConnId`](envelope::ConnId).
    registrations: Cell<u64>,
    /// The tenant config in force here and the per-tenant counters.
    tenants: RefCell<ShardTenants>,
}

impl ShardCtx {
    /// The context of shard `id`.
    pub fn new(id: usize, shared: Arc<Shared>) -> Rc<Self> {
        let config = &shared.config;
        let share = |total: usize| total.div_ceil(shared.shard_count()).max(1);
        let mut replay = ReplayStore::new(ReplayLimits {
            entries: config.recent_buffer,
            ttl_ms: config.recent_ttl.as_millis() as u64,
            max_users: share(config.recent_max_users),
            max_rooms: share(config.recent_max_rooms),
            max_bytes: share(config.recent_max_bytes),
        });
        let tenant_config = shared.tenant_config.clone().unwrap_or_default();
        replay.set_budgets(TenantBudgets { config: Some(tenant_config.clone()), shards: shared.shard_count() });
        let limits = QueueLimits {
            max_items: config.max_queue_items.get(),
            max_bytes: config.max_queue_bytes.get(),
            policy: config.drop_policy,
        };
        Rc::new(ShardCtx {
            id,
            limits,
            state: RefCell::new(ShardState {
                conns: Slab::new(),
                registry: Registry::default(),
                replay,
                idempotency: IdempotencyTable::new(IdempotencyLimits {
                    window_ms: config.idempotency_window.as_millis() as u64,
                    max_keys: share(config.idempotency_max_keys),
                    max_bytes: share(config.idempotency_max_bytes),
                }),
                listeners: Vec::new(),
                batches: Vec::new(),
                queue_items_max: 0,
                queue_bytes_max: 0,
            }),
            shared,
            pending: RefCell::new(Slab::new()),
            generation: Cell::new(0),
            started: Instant::now(),
            clock_ms: Cell::new(0),
            body_bytes_in_flight: Cell::new(0),
            requests_in_flight: Cell::new(0),
            registrations: Cell::new(0),
            tenants: RefCell::new(ShardTenants::new(tenant_config)),
        })
    }

    /// This shard's counters.
    pub fn stats(&self) -> &ShardStats {
        &self.shared.stats[self.id]
    }

    /// Milliseconds since the shard started, as of the last heartbeat tick.
    pub fn now_ms(&self) -> u64 {
        self.clock_ms.get()
    }

    /// Advances the coarse clock (once per heartbeat tick, not per write).
    pub fn tick_clock(&self) -> u64 {
        let now = self.started.elapsed().as_millis() as u64;
        self.clock_ms.set(now);
        now
    }

    /// Takes a subscriber whose request was accepted: registers it here when
    /// this shard owns its user (or it is anonymous), else moves the socket
    /// and the request to the owner's inbox.
    pub async fn subscribe(self: &Rc<Self>, stream: TcpStream, subscription: Subscription) {
        let owner = subscription.user.as_deref().map_or(self.id, |user| self.shared.owner(user));
        if owner == self.id {
            self.register(stream, subscription);
            return;
        }
        let fd = unsafe { OwnedFd::from_raw_fd(stream.into_raw_fd()) };
        self.send(owner, Envelope::Subscriber { fd, subscription }).await;
    }

    /// Registers a subscriber on its owning shard and starts its writer.
    fn register(self: &Rc<Self>, stream: TcpStream, subscription: Subscription) {
        if let Some(types) = subscription.events {
            return self.register_listener(stream, subscription, types);
        }
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        if let (Some(limit), Some(user)) = (self.shared.config.max_connections_per_user, &subscription.user) {
            // Connections already closing (an eviction's) no longer count.
            let open: SmallVec<[usize; 4]> =
                state.registry.user(user).iter().copied().filter(|&key| state.conns[key].closing.is_none()).collect();
            if open.len() >= limit.get() && self.shared.config.user_limit_policy == UserLimitPolicy::EvictOldest {
                let excess = open.len() + 1 - limit.get();
                let mut oldest = open;
                oldest.sort_unstable_by_key(|&key| state.conns[key].serial);
                for &key in &oldest[..excess] {
                    let conn = &mut state.conns[key];
                    conn.push_control(evicted_frame());
                    conn.close(Closing::AfterFlush, CloseReason::Evicted);
                }
            } else if open.len() >= limit.get() {
                crate::log!(
                    Debug,
                    "subscriber refused",
                    shard = self.id,
                    user = crate::namespace::plain_name(user),
                    tenant = subscription.namespace.tenant_name(),
                    reason = "too_many_connections",
                );
                drop_connection_slot(&self.shared, subscription.namespace.tenant_name());
                ShardStats::add(&self.stats().errors, 1);
                let refusal = Response::error(
                    429,
                    "too_many_connections",
                    format!("user already holds {limit} connections (--max-connections-per-user)"),
                );
                monoio::spawn(writer::answer_and_close(stream, refusal));
                return;
            }
        }
        let entry = state.conns.vacant_entry();
        let key = entry.key();
        let tenant = subscription.namespace.tenant_name().map(|tenant| state.registry.add_tenant_member(tenant, key));
        let user = subscription.user.as_deref().map(|user| state.registry.add_user(user, key));
        if let Some(user) = user.as_ref().filter(|user| state.registry.user(user).len() == 1) {
            state.replay.pin_user(user);
        }
        let rooms = subscription.rooms.iter().map(|room| state.registry.add_member(room, key)).collect();
        let serial = self.registrations.get() + 1;
        self.registrations.set(serial);
        let conn = entry.insert(Conn::new(tenant, user, rooms, serial, self.now_ms()));
        conn.push_control(subscription.preamble);
        // Same turn of the shard as the registration: nothing published
        // meanwhile can fall between the replayed part and the live part.
        let replay = state.replay.replay(
            conn.user.as_deref(),
            &conn.rooms,
            conn.tenant.as_deref(),
            subscription.last_event_id.as_deref(),
        );
        if replay.gap {
            conn.push_control(replay::gap_frame(subscription.last_event_id.as_deref().unwrap_or_default()));
        }
        let replayed = replay.frames.len() as u64;
        for frame in replay.frames {
            conn.push_control(frame);
        }
        conn.sent = replayed;
        crate::log!(
            Debug,
            "subscriber connected",
            shard = self.id,
            conn = self.conn_id(key, conn),
            user = conn.user.as_deref().map(crate::namespace::plain_name),
            tenant = conn.tenant,
            rooms = conn.rooms.len(),
            resumed = subscription.last_event_id.is_some(),
            replayed = replayed,
            gap = replay.gap,
        );
        let connect = self.shared.events.active().then(|| self.connect_event(key, conn));
        let stats = self.stats();
        ShardStats::add(&stats.sent, replayed);
        ShardStats::add(&stats.subscribes, 1);
        self.count_tenant_sent(conn.tenant.as_deref(), replayed);
        stats.connections.store((state.conns.len() - state.listeners.len()) as u64, Ordering::Relaxed);
        stats.users.store(state.registry.user_count() as u64, Ordering::Relaxed);
        stats.rooms.store(state.registry.room_count() as u64, Ordering::Relaxed);
        drop(guard);
        monoio::spawn(writer::serve(self.clone(), key, stream));
        if let Some(event) = connect {
            self.emit(event);
        }
    }

    /// Forgets a connection whose writer ended for `reason`.
    pub(crate) fn unregister(&self, key: usize, reason: CloseReason) {
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        let conn = state.conns.remove(key);
        if conn.listener.is_some() {
            return self.unregister_listener(state, key);
        }
        crate::log!(
            Debug,
            "subscriber disconnected",
            shard = self.id,
            conn = self.conn_id(key, &conn),
            user = conn.user.as_deref().map(crate::namespace::plain_name),
            tenant = conn.tenant,
            reason = reason.name(),
        );
        if let Some(user) = &conn.user {
            state.registry.remove_user(user, key);
            if state.registry.user(user).is_empty() {
                state.replay.unpin_user(user, self.now_ms());
                self.report_replay(&state.replay);
            }
        }
        for room in &conn.rooms {
            state.registry.remove_member(room, key);
        }
        if let Some(tenant) = &conn.tenant {
            state.registry.remove_tenant_member(tenant, key);
        }
        drop_connection_slot(&self.shared, conn.tenant.as_deref());
        let stats = self.stats();
        stats.connections.store((state.conns.len() - state.listeners.len()) as u64, Ordering::Relaxed);
        stats.users.store(state.registry.user_count() as u64, Ordering::Relaxed);
        stats.rooms.store(state.registry.room_count() as u64, Ordering::Relaxed);
        if self.shared.events.active() {
            let event = self.disconnect_event(key, &conn, reason);
            drop(guard);
            self.emit(event);
        }
    }

    /// Publishes frames in order and returns, per delivery, the number of
    /// connections it was queued to across all shards. A large publish goes
    /// [`PUBLISH_CHUNK`] deliveries at a time, so no step of it (routing,
    /// delivering, freeing) holds the shard for long.
    pub async fn publish(self: &Rc<Self>, deliveries: impl IntoIterator<Item = Delivery>) -> Vec<u64> {
        let mut rest = deliveries.into_iter().peekable();
        let mut totals = Vec::with_capacity(rest.size_hint().0);
        let mut budget = yielding::Budget::default();
        while rest.peek().is_some() {
            let chunk: Vec<Delivery> = rest.by_ref().take(PUBLISH_CHUNK).collect();
            totals.extend(self.publish_chunk(chunk, &mut budget).await);
        }
        totals
    }

    /// One chunk of [`ShardCtx::publish`].
    async fn publish_chunk(self: &Rc<Self>, deliveries: Vec<Delivery>, budget: &mut yielding::Budget) -> Vec<u64> {
        if budget.overdue() {
            yielding::yield_now().await;
        }
        let shards = self.shared.shard_count();
        let mut totals = vec![0u64; deliveries.len()];
        let (mut per_shard, routes) = self.shared.route(deliveries);
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
        let targets: Vec<usize> = envelopes.iter().map(|(shard, _)| *shard).collect();
        let mut parts = envelopes.into_iter().map(|(_, part)| part);
        let replies = async {
            if targets.is_empty() {
                return Vec::new();
            }
            self.ask(&targets, |_, reply| Envelope::Deliver {
                deliveries: parts.next().expect("one part per target"),
                reply: Some(reply),
            })
            .await
        };
        let local = std::mem::take(&mut per_shard[self.id]);
        // By value: each delivery is freed as it is done, not all at the end.
        for (delivery, &index) in local.into_iter().zip(&routes[self.id]) {
            if budget.spent() {
                yielding::yield_now().await;
            }
            totals[index] += self.deliver(&delivery);
        }
        let mut offsets = vec![0usize; shards];
        for (shard, answer) in targets.iter().zip(replies.await) {
            let indexes = &routes[*shard][offsets[*shard]..];
            offsets[*shard] += answer.values.len();
            for (&index, count) in indexes.iter().zip(answer.values) {
                totals[index] += count;
            }
        }
        totals
    }

    /// Queues `frame` to the local connections `target` names; returns how many.
    pub fn deliver(&self, delivery: &Delivery) -> u64 {
        let (target, frame) = (&delivery.target, &delivery.frame);
        if let Some(change) = &delivery.room_change {
            return self.change_rooms(target, change).pack();
        }
        if frame.is_empty() {
            return 0;
        }
        let mut state = self.state.borrow_mut();
        let ShardState { conns, registry, replay, listeners, queue_items_max, queue_bytes_max, .. } = &mut *state;
        let stream = match target {
            Target::User(user) => Stream::User(user),
            Target::Room(room) => Stream::Room(room),
            Target::All => Stream::All,
            Target::Tenant(tenant) => Stream::Tenant(tenant),
            // Only room changes address one connection.
            Target::Connection(_) => return 0,
        };
        if delivery.skip_known_id && replay.knows(stream, frame) {
            return 0;
        }
        replay.record(stream, frame, self.clock_ms.get());
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
                    conn.notify();
                    if conn.queue.items() > *queue_items_max || conn.queue.bytes() > *queue_bytes_max {
                        *queue_items_max = (*queue_items_max).max(conn.queue.items());
                        *queue_bytes_max = (*queue_bytes_max).max(conn.queue.bytes());
                        tally.raised_marks = true;
                    }
                }
                Pushed::DroppedNewest => tally.dropped_newest += 1,
                Pushed::Overflow => {
                    tally.overflowed += 1;
                    conn.close(Closing::Now, CloseReason::Backpressure);
                }
            }
        };
        match target {
            Target::User(user) => {
                for &key in registry.user(user) {
                    push(&mut conns[key]);
                }
            }
            Target::Room(room) => {
                for &key in registry.room(room).into_iter().flatten() {
                    push(&mut conns[key]);
                }
            }
            // The default namespace: the whole slab, skipping tenants'
            // connections and event listeners only when this shard has any
            // (so without them the loop is what it always was).
            Target::All if registry.has_tenants() || !listeners.is_empty() => {
                for (_, conn) in conns.iter_mut() {
                    if conn.tenant.is_none() && conn.listener.is_none() {
                        push(conn);
                    }
                }
            }
            Target::All => {
                for (_, conn) in conns.iter_mut() {
                    push(conn);
                }
            }
            Target::Tenant(tenant) => {
                for &key in registry.tenant(tenant).into_iter().flatten() {
                    push(&mut conns[key]);
                }
            }
            Target::Connection(_) => {}
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
        self.count_tenant_sent(Self::tenant_of_target(target), tally.queued);
        tally.queued
    }

    /// Closes the selected local connections for `reason` after their
    /// queues flush; returns how many.
    pub fn close_local(&self, which: &Selection, reason: CloseReason) -> u64 {
        let mut state = self.state.borrow_mut();
        let ShardState { conns, registry, .. } = &mut *state;
        let keys: SmallVec<[usize; 4]> = match which {
            Selection::User(user) => registry.user(user).iter().copied().collect(),
            Selection::Namespace(namespace) => match namespace.tenant_name() {
                Some(tenant) => registry.tenant(tenant).into_iter().flatten().copied().collect(),
                None => conns
                    .iter()
                    .filter(|(_, conn)| conn.tenant.is_none() && conn.listener.is_none())
                    .map(|(key, _)| key)
                    .collect(),
            },
            Selection::Everything => conns.iter().map(|(key, _)| key).collect(),
        };
        for &key in &keys {
            conns[key].close(Closing::AfterFlush, reason);
        }
        keys.len() as u64
    }

    /// Publishes the replay store's usage to this shard's gauges.
    pub fn report_replay(&self, replay: &ReplayStore) {
        let usage = replay.usage();
        let stats = self.stats();
        stats.replay_users.store(usage.users as u64, Ordering::Relaxed);
        stats.replay_rooms.store(usage.rooms as u64, Ordering::Relaxed);
        stats.replay_entries.store(usage.entries as u64, Ordering::Relaxed);
        stats.replay_bytes.store(usage.bytes as u64, Ordering::Relaxed);
    }

    /// Drops the selected local replay rings.
    pub fn clear_recent_local(&self, which: &Selection) {
        let mut state = self.state.borrow_mut();
        match which {
            Selection::User(user) => state.replay.clear_user(user),
            Selection::Namespace(namespace) => state.replay.clear_namespace(namespace),
            Selection::Everything => state.replay.clear_all(),
        }
        self.report_replay(&state.replay);
    }

    /// The shards holding what `which` selects: a user's owner, or all.
    fn shards_of(&self, which: &Selection) -> Vec<usize> {
        match which {
            Selection::User(user) => vec![self.shared.owner(user)],
            Selection::Namespace(_) | Selection::Everything => (0..self.shared.shard_count()).collect(),
        }
    }

    /// Clears the selected replay rings on the shards holding them.
    pub async fn clear_recent(self: &Rc<Self>, which: Selection) {
        let shards = self.shards_of(&which);
        self.ask(&shards, |_, reply| Envelope::ClearRecent { which: which.clone(), reply }).await;
    }

    /// Closes the selected connections on the shards holding them (the
    /// admin routes).
    pub async fn close(self: &Rc<Self>, which: Selection) -> u64 {
        let shards = self.shards_of(&which);
        let mut closed = 0;
        let remote: Vec<usize> = shards.iter().copied().filter(|&s| s != self.id).collect();
        if shards.contains(&self.id) {
            closed += self.close_local(&which, CloseReason::AdminClose);
        }
        if !remote.is_empty() {
            let replies = self.ask(&remote, |_, reply| Envelope::Close { which: which.clone(), reply }).await;
            closed += replies.iter().flat_map(|a| &a.values).sum::<u64>();
        }
        closed
    }

    /// Looks up or claims an idempotency key on the shard that owns it.
    pub async fn claim_idempotency_key(self: &Rc<Self>, key: &str) -> Claim {
        let owner = self.shared.owner(key);
        if owner == self.id {
            return self.state.borrow_mut().idempotency.claim(key, self.now_ms());
        }
        let answers = self.ask(&[owner], |_, reply| Envelope::IdempotencyClaim { key: key.into(), reply }).await;
        let answer = answers.into_iter().next().unwrap_or_default();
        match (&answer.values[..], answer.body) {
            ([2], Some(body)) => Claim::Done(body),
            ([1], _) => Claim::InProgress,
            ([0, ticket], _) => Claim::Claimed(Ticket(*ticket)),
            // Not an owner's answer (claim_answer makes those): publish, holding no claim.
            _ => Claim::Claimed(Ticket::NONE),
        }
    }

    /// Stores (or, with `None`, releases) the answer of the claim `ticket` of a key.
    pub fn finish_idempotency_key(self: &Rc<Self>, key: &str, ticket: Ticket, answer: Option<Bytes>) {
        let owner = self.shared.owner(key);
        if owner == self.id {
            self.state.borrow_mut().idempotency.finish(key, ticket, answer.as_deref());
            return;
        }
        let ctx = self.clone();
        let envelope = Envelope::IdempotencyFinish { key: key.into(), ticket, answer };
        monoio::spawn(async move { ctx.send(owner, envelope).await });
    }

    /// Distinct rooms with members on any shard (each shard sends its names' hashes).
    pub async fn distinct_rooms(self: &Rc<Self>) -> u64 {
        let all: Vec<usize> = (0..self.shared.shard_count()).collect();
        let replies = self.ask(&all, |_, reply| Envelope::RoomHashes { reply }).await;
        let mut seen = ahash::AHashSet::new();
        seen.extend(replies.into_iter().flat_map(|a| a.values));
        seen.len() as u64
    }

    /// Hashes of the room names with members here.
    fn room_hashes(&self) -> Vec<u64> {
        let state = self.state.borrow();
        state.registry.room_names().map(|name| self.shared.owner_hasher.hash_one(&**name)).collect()
    }

    /// Handles one envelope from the inbox.
    pub fn handle(self: &Rc<Self>, envelope: Envelope) {
        match envelope {
            Envelope::Subscriber { fd, subscription } => {
                ShardStats::add(&self.stats().moved_in, 1);
                match TcpStream::from_std(std::net::TcpStream::from(fd)) {
                    Ok(stream) => self.register(stream, subscription),
                    Err(error) => {
                        drop_connection_slot(&self.shared, subscription.namespace.tenant_name());
                        ShardStats::add(&self.stats().errors, 1);
                        crate::log!(Warn, "could not adopt a moved subscriber", error = error);
                    }
                }
            }
            Envelope::Deliver { deliveries, reply } => {
                let counts = deliveries.iter().map(|d| self.deliver(d)).collect();
                if let Some(reply) = reply {
                    self.reply(reply, counts);
                }
            }
            Envelope::Close { which, reply } => {
                let closed = self.close_local(&which, CloseReason::AdminClose);
                self.reply(reply, vec![closed]);
            }
            Envelope::IdempotencyClaim { key, reply } => {
                let claim = self.state.borrow_mut().idempotency.claim(&key, self.now_ms());
                self.answer(reply, claim_answer(claim));
            }
            Envelope::IdempotencyFinish { key, ticket, answer } => {
                self.state.borrow_mut().idempotency.finish(&key, ticket, answer.as_deref())
            }
            Envelope::ClearRecent { which, reply } => {
                self.clear_recent_local(&which);
                self.reply(reply, Vec::new());
            }
            Envelope::UserPresence { user, list, reply } => {
                let (count, lines) = self.local_user_connections(&user, list);
                self.answer(reply, Answer { values: vec![count], body: Some(Bytes::from(lines.join("\n"))) });
            }
            Envelope::RoomPresence { room, list_max, reply } => {
                let answer = self.local_room_presence(&room, list_max);
                self.answer(reply, answer);
            }
            Envelope::RoomHashes { reply } => {
                let hashes = self.room_hashes();
                self.reply(reply, hashes);
            }
            Envelope::TenantCounts { tenant, reply } => {
                let values = self.tenant_counts_local(&tenant);
                self.reply(reply, values);
            }
            Envelope::Question { question, answer } => self.answer_question(question, answer),
            Envelope::Evict { id } => self.evict(&id),
            Envelope::TenantReport { labels, reply } => {
                let values = self.tenant_report_local(&labels);
                self.reply(reply, values);
            }
            Envelope::TenantConfig(config) => self.apply_tenant_config(config),
            Envelope::BusGap { lost, partitions } => self.bus_gap(&lost, partitions),
            Envelope::Event(event) => self.deliver_event(&event),
            Envelope::Shutdown { grace, announce } => self.shutdown(grace, announce),
            Envelope::Reply { to, answer } => {
                let mut pending = self.pending.borrow_mut();
                if let Some(entry) = pending.get_mut(to.slot).filter(|e| e.generation == to.generation) {
                    entry.answers[to.position] = answer;
                    entry.remaining -= 1;
                    if entry.remaining == 0 {
                        if let Some(waker) = entry.waker.take() {
                            waker.wake();
                        }
                    }
                }
            }
        }
    }

    /// The bus lost messages of the `lost` partitions: every local
    /// connection with a user, room or broadcast in one gets one
    /// `ssekify.gap` (reason `bus`), and their rings stop resuming across the loss.
    fn bus_gap(&self, lost: &[u16], partitions: u16) {
        let in_partition = |target: &Target| lost.contains(&target.partition(partitions));
        let mut state = self.state.borrow_mut();
        let ShardState { conns, replay, .. } = &mut *state;
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
                conn.push_control(replay::bus_gap_frame(last.as_deref()));
                conn.told_bus_gap = true;
                told += 1;
            }
        }
        replay.mark_lost(|stream| {
            in_partition(&match stream {
                replay::Stream::User(key) => Target::User(key.into()),
                replay::Stream::Room(key) => Target::Room(key.into()),
                replay::Stream::All => Target::All,
                replay::Stream::Tenant(name) => Target::Tenant(name.into()),
            })
        });
        crate::log!(Warn, "told subscribers of a bus gap", connections = told);
    }

    /// A batch buffer from the pool (writers hold one only while writing).
    pub(crate) fn take_batch(&self) -> FrameBatch {
        self.state.borrow_mut().batches.pop().unwrap_or_default()
    }

    /// Returns a drained batch buffer to the pool.
    pub(crate) fn return_batch(&self, mut batch: FrameBatch) {
        batch.clear();
        let mut state = self.state.borrow_mut();
        if state.batches.len() < BATCH_POOL_MAX {
            state.batches.push(batch);
        }
    }
}

fn claim_answer(claim: Claim) -> Answer {
    match claim {
        Claim::Claimed(ticket) => Answer { values: vec![0, ticket.0], body: None },
        Claim::InProgress => Answer { values: vec![1], body: None },
        Claim::Done(body) => Answer { values: vec![2], body: Some(body) },
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

/// Event name of the notice a connection gets when a newer one of its user
/// takes its place.
pub const EVICTED_EVENT: &str = "ssekify.evicted";

/// The `ssekify.evicted` frame (no id: the client's last id stays put).
pub(crate) fn evicted_frame() -> Bytes {
    crate::sse::frame::encode_control(EVICTED_EVENT, br#"{"reason":"max_connections_per_user"}"#)
}

/// Gives back the places a subscriber held under `--max-connections` and,
/// in a tenant, under its `maxConnections`.
fn drop_connection_slot(shared: &Shared, tenant: Option<&str>) {
    shared.connections.fetch_sub(1, Ordering::AcqRel);
    if let (Some(quotas), Some(tenant)) = (&shared.tenant_quotas, tenant) {
        quotas.release_connection(tenant);
    }
}
