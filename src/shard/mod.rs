//! Shards: one thread, one runtime, and the connections, users and rooms it owns.
//!
//! Parts: [`conn`] (a subscriber's state), [`queue`] (its bounded frame queue),
//! [`registry`] (user and room indexes), [`writer`] (the write loop draining
//! the queues into their sockets), [`socket`] (those sockets' system calls
//! and epoll set), [`watcher`] (hang-ups and room again, from that set),
//! [`heartbeat`] (the paced ping sweep), [`inbox`] (the
//! cross-shard channels), [`envelope`] (what travels over them), [`lane`]
//! (the bus thread's ordered queue into a shard) and [`interest`] (whom a
//! bus message may concern there, read by the bus); what a
//! shard does, by concern: `registration` (subscribers arriving and leaving),
//! `delivery` (publishes into queues and rings), `admin` (closes and ring
//! clears), `claims` (idempotency keys on their owner shard), `stats`,
//! [`presence`], `rooms`, `listeners`, `shutdown`, `tenants`, `requests`
//! (asking other shards), [`yielding`] (long loops giving way). This module
//! ties them into [`ShardCtx`], the state of one shard, and dispatches the
//! envelopes of its inbox; [`Shared`] is the read-mostly state every thread
//! sees. Shard state is `!Send`, lives in a `RefCell` on its thread, and is
//! never borrowed across an `.await`.

mod activity;
mod admin;
mod claims;
pub mod conn;
mod delivery;
pub mod envelope;
pub mod heartbeat;
pub mod idempotency;
pub mod inbox;
pub mod interest;
pub mod key;
pub mod lane;
mod listeners;
pub mod presence;
pub mod queue;
mod registration;
pub mod registry;
mod requests;
mod rooms;
mod shared;
mod shutdown;
mod stats;
mod tenants;

use claims::claim_answer;
pub use delivery::Upcoming;
use delivery::{RingsAhead, Tally};
pub use inbox::INBOX_CAPACITY;
pub use registration::EVICTED_EVENT;
pub use shared::{LifecycleEvent, Phase, Shared, ShutdownOrder};
pub use tenants::{ShardTenants, TenantFigures};
pub mod replay;
pub mod socket;
pub mod watcher;
pub mod writer;
pub mod yielding;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use slab::Slab;

use crate::metrics::ShardStats;
use crate::sse::id::IdGenerator;
use conn::{CloseReason, Conn, ReadyList};
use envelope::{Answer, Envelope};
use idempotency::{IdempotencyLimits, IdempotencyTable};
use lane::LocalLane;
use queue::QueueLimits;
use registry::Registry;
use replay::{ReplayLimits, ReplayStore, TenantBudgets};
use socket::{SendRing, Watchlist};

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
    /// Connections with something for the write loop to do.
    pub ready: ReadyList,
    /// Slots of the lifecycle event listeners among `conns`.
    listeners: Vec<usize>,
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
    /// The epoll set of this shard's subscriber sockets.
    pub sockets: Watchlist,
    /// The write loop's ring for sends (io_uring driver), here so that
    /// [`ShardCtx::unregister`] can take a socket out of its table.
    pub(super) send_ring: RefCell<Option<SendRing>>,
    /// Ids of the messages published through this shard without one.
    pub ids: IdGenerator,
    /// What the bus thread hands this shard (with a bus).
    lane: Option<LocalLane>,
}

impl ShardCtx {
    /// The context of shard `id`, taking what the bus hands it from `lane`
    /// (with a bus); fails only when the kernel refuses an epoll set.
    pub fn new(id: usize, shared: Arc<Shared>, lane: Option<LocalLane>) -> std::io::Result<Rc<Self>> {
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
            notice: true,
        };
        let sockets = Watchlist::new()?;
        let ids = IdGenerator::new(shared.instance, id);
        Ok(Rc::new(ShardCtx {
            id,
            limits,
            state: RefCell::new(ShardState {
                conns: Slab::new(),
                registry: Registry::new(lane.as_ref().map(|lane| lane.interest().clone())),
                replay,
                idempotency: IdempotencyTable::new(IdempotencyLimits {
                    window_ms: config.idempotency_window.as_millis() as u64,
                    max_keys: share(config.idempotency_max_keys),
                    max_bytes: share(config.idempotency_max_bytes),
                }),
                ready: ReadyList::default(),
                listeners: Vec::new(),
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
            sockets,
            ids,
            lane,
            send_ring: RefCell::new(None),
        }))
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

    /// Handles what waits in the bus's lane, in order, for up to `limit`
    /// steps; true when it stopped there (more may wait). Ends on an empty lane read after a
    /// fence, so what this shard's interest gained meanwhile is seen by the
    /// bus, or what the bus queued is found here.
    pub fn take_lane(self: &Rc<Self>, limit: usize) -> bool {
        let Some(lane) = &self.lane else { return false };
        lane.begin();
        let mut fenced = true;
        for _ in 0..limit {
            match lane.next() {
                Some(envelope) => {
                    self.handle(envelope);
                    fenced = false;
                }
                None if fenced => return false,
                None => {
                    lane.begin();
                    fenced = true;
                }
            }
        }
        true
    }

    /// Handles one envelope from the inbox.
    pub fn handle(self: &Rc<Self>, envelope: Envelope) {
        match envelope {
            Envelope::Subscriber { fd, subscription } => {
                ShardStats::add(&self.stats().moved_in, 1);
                self.register(fd, subscription);
            }
            Envelope::Deliver { deliveries, reply, entry } => {
                let (mut rest, mut rings, mut tally) =
                    (deliveries.into_iter(), RingsAhead::default(), Tally::default());
                let counts = std::iter::from_fn(|| {
                    let (delivery, found) = self.take_next(&mut rest, &mut rings)?;
                    Some(self.deliver_from_entry(delivery, &entry, found, &mut tally))
                });
                // Counted only for someone waiting (most of what the bus
                // brings has nobody): no list allocated otherwise.
                match reply {
                    Some(reply) => self.reply(reply, counts.collect()),
                    None => counts.for_each(drop),
                }
                self.report(tally);
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
            // The inbox's batch comes after the lane is taken.
            Envelope::BusDoorbell => {}
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
}
