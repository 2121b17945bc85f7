//! State every thread sees: configuration, the shards' inboxes and counters,
//! the id source, the lifecycle phase, and the rule that assigns users to shards.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bytes::Bytes;

use super::envelope::{Delivery, Envelope, Refusal, Target};
use super::inbox::SharedInbox;
use super::interest::Probe;
use super::lane::{self, LocalLane, SharedLane};
use crate::auth::Authenticator;
use crate::config::Config;
use crate::events::{Event, EventHub};
use crate::metrics::ShardStats;
use crate::tenants::quota::TenantQuotas;
use crate::tenants::TenantConfig;

/// Lifecycle of the whole instance; it only moves forward ([`Shared::advance_phase`]),
/// driven by the signal thread and the admin routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Accepting subscribers.
    Running = 0,
    /// Refusing new subscribers (stop-accepting); existing streams go on.
    Draining = 1,
    /// Shutting down: announce sent, closes spread over the grace period.
    Closing = 2,
}

/// What shards report to the main thread.
#[derive(Debug)]
pub enum LifecycleEvent {
    /// The shard has bound its listeners and serves.
    Ready {
        /// Public listener address actually bound.
        public: std::net::SocketAddr,
        /// Api listener address actually bound.
        api: std::net::SocketAddr,
        /// "uring" or "epoll".
        driver: &'static str,
    },
    /// The shard could not start.
    Failed(String),
    /// The bus is live for the first time (with `--redis`, the instance is
    /// ready only from then on).
    BusLive,
    /// The shard closed all its connections after a shutdown.
    Drained,
    /// Exit now with this status (second signal).
    Exit(i32),
}

/// State visible to every thread.
pub struct Shared {
    /// Validated configuration.
    pub config: Config,
    /// Subscriber auth mode and its key.
    pub auth: Authenticator,
    /// Tenant quotas and keys as loaded at start (`None`: no
    /// `--tenant-config`); SIGHUP re-reads its file, and the shards swap
    /// theirs (each holds the one in force).
    pub tenant_config: Option<Arc<TenantConfig>>,
    /// The api layer's words for a shard's [`Refusal`]: the whole HTTP
    /// answer, `Connection: close` included.
    pub render_refusal: fn(&Refusal) -> Bytes,
    /// Inbox of each shard, by shard id.
    pub inboxes: Vec<Arc<SharedInbox<Envelope>>>,
    /// The bus thread's lane into each shard, by shard id (none without a bus).
    pub lanes: Vec<Arc<SharedLane>>,
    /// Counters of each shard, by shard id.
    pub stats: Vec<ShardStats>,
    /// This process's id on the bus (in event and connection ids).
    pub instance: u32,
    /// Subscribers open on the whole instance (for `--max-connections`).
    pub connections: AtomicUsize,
    /// The most `connections` since the memory thread last looked (it
    /// resets it), so that a burst between two of its samples is seen.
    pub connections_high: AtomicUsize,
    /// Public-listener sockets not yet streams (with `connections`, bounded
    /// by `--max-connections`).
    pub public_pending: AtomicUsize,
    /// Channel to the main thread.
    pub lifecycle: mpsc::Sender<LifecycleEvent>,
    /// Who listens to lifecycle events (`GET /v1/events`), and what they lost.
    pub events: EventHub,
    /// Tenants' subscribers and publish buckets on this instance, kept when
    /// `--tenant-config` is given (their limits come from the shards' configs).
    pub tenant_quotas: Option<TenantQuotas>,
    phase: AtomicU8,
    pub(super) owner_hasher: ahash::RandomState,
}

impl Shared {
    /// Shared state for `config.shards` shards with the given inboxes.
    pub fn new(
        config: Config,
        auth: Authenticator,
        tenant_config: Option<Arc<TenantConfig>>,
        render_refusal: fn(&Refusal) -> Bytes,
        inboxes: Vec<Arc<SharedInbox<Envelope>>>,
        instance: u32,
        lifecycle: mpsc::Sender<LifecycleEvent>,
    ) -> Self {
        let stats = (0..inboxes.len()).map(|_| ShardStats::default()).collect();
        let events = EventHub::new(inboxes.len());
        let tenant_quotas = tenant_config.as_ref().map(|_| TenantQuotas::default());
        Shared {
            config,
            auth,
            tenant_config,
            render_refusal,
            inboxes,
            lanes: Vec::new(),
            stats,
            instance,
            connections: AtomicUsize::new(0),
            connections_high: AtomicUsize::new(0),
            public_pending: AtomicUsize::new(0),
            events,
            tenant_quotas,
            lifecycle,
            phase: AtomicU8::new(Phase::Running as u8),
            // Fixed keys: every thread must agree on a user's owner.
            owner_hasher: ahash::RandomState::with_seeds(0x5e5e, 0xf1f1, 0x0a0a, 0x3c3c),
        }
    }

    /// Opens the bus thread's lanes into the shards (with a bus only);
    /// returns each shard's end, by shard id.
    pub fn open_bus_lanes(&mut self) -> Vec<LocalLane> {
        let (shared, local) = (0..self.shard_count()).map(|_| lane::lane()).unzip();
        self.lanes = shared;
        local
    }

    /// Hands `envelope` to `shard` from the bus thread, after everything the
    /// bus handed it before. The shard is woken now unless `probes` show
    /// that nobody there wants it: then it waits for the shard's next wake
    /// (at the latest [`Shared::ring_waiting_lanes`] on the bus's tick).
    pub fn send_from_bus(&self, shard: usize, mut envelope: Envelope, probes: &[Probe]) {
        let lane = &self.lanes[shard];
        while let Err(back) = lane.push(envelope) {
            envelope = back;
            self.ring(shard);
            // The bus thread's runtime has no timer (`bus::clock`): the
            // thread itself waits while the woken shard takes from its lane.
            std::thread::sleep(Duration::from_millis(1));
        }
        if lane.must_ring(probes, &self.stats[shard].connections) {
            self.ring(shard);
        }
    }

    /// Wakes every shard whose lane holds envelopes it was not woken for.
    pub fn ring_waiting_lanes(&self) {
        for shard in 0..self.lanes.len() {
            if self.lanes[shard].waiting() {
                self.ring(shard);
            }
        }
    }

    /// Puts a doorbell in `shard`'s inbox unless one is on its way.
    fn ring(&self, shard: usize) {
        let lane = &self.lanes[shard];
        if lane.claim_doorbell() && self.inboxes[shard].try_send(Envelope::BusDoorbell).is_err() {
            lane.release_doorbell();
        }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.inboxes.len()
    }

    /// The shard owning `user`: its connections, counters and limits live there.
    pub fn owner(&self, user: &str) -> usize {
        (self.owner_hasher.hash_one(user) % self.inboxes.len() as u64) as usize
    }

    /// Current lifecycle phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Running,
            1 => Phase::Draining,
            _ => Phase::Closing,
        }
    }

    /// Moves the phase forward (never back); true when it changed.
    pub fn advance_phase(&self, to: Phase) -> bool {
        self.phase.fetch_max(to as u8, Ordering::AcqRel) < to as u8
    }

    /// Enters `Closing` once; returns the order every shard must get (the
    /// announcement is encoded here, once, for every recipient; it is a
    /// control frame without an id, so clients resume from their last message).
    pub fn begin_shutdown(&self, grace: Duration, announce: Option<&str>) -> Option<ShutdownOrder> {
        if !self.advance_phase(Phase::Closing) {
            return None;
        }
        let announce = announce.map(|event| {
            let data = format!("{{\"graceMs\":{}}}", grace.as_millis());
            crate::sse::frame::encode_control(event, data.as_bytes())
        });
        Some(ShutdownOrder { grace, announce })
    }

    /// Sends from a runtime thread (a shard or the bus), waiting while the
    /// inbox is full without blocking the thread. The wait's timer entry
    /// (768 bytes) is boxed: an inbox is rarely full, and inline it would
    /// enlarge every future that sends (each publish's among them).
    pub async fn send(&self, shard: usize, mut envelope: Envelope) {
        while let Err(back) = self.inboxes[shard].try_send(envelope) {
            envelope = back;
            Box::pin(monoio::time::sleep(Duration::from_millis(1))).await;
        }
    }

    /// Splits deliveries by the shard that must queue them, keeping their
    /// order: a user's go to its owner, a room's and a broadcast's (of any
    /// namespace) to every shard (the frame is shared, not copied). Also
    /// returns, per shard, the index each of its deliveries had in `deliveries`.
    pub fn route(&self, deliveries: Vec<Delivery>) -> (Vec<Vec<Delivery>>, Vec<Vec<usize>>) {
        // Each shard's lists sized first, not regrown push by push.
        let owners: Vec<std::ops::Range<usize>> = deliveries.iter().map(|d| self.shards_for(&d.target)).collect();
        let mut counts = vec![0usize; self.shard_count()];
        for shard in owners.iter().flat_map(Clone::clone) {
            counts[shard] += 1;
        }
        let mut per_shard: Vec<Vec<Delivery>> = counts.iter().map(|&count| Vec::with_capacity(count)).collect();
        let mut indexes: Vec<Vec<usize>> = counts.iter().map(|&count| Vec::with_capacity(count)).collect();
        for ((index, delivery), targets) in deliveries.into_iter().enumerate().zip(owners) {
            let last = targets.end - 1;
            for shard in targets.start..last {
                indexes[shard].push(index);
                per_shard[shard].push(delivery.clone());
            }
            indexes[last].push(index);
            per_shard[last].push(delivery);
        }
        (per_shard, indexes)
    }

    /// Per shard, the indexes of the `deliveries` it must queue, in order
    /// (what [`Shared::route`] returns beside the deliveries, for a publisher
    /// that must know which shards will answer before it hands them on).
    pub fn route_indexes(&self, deliveries: &[Delivery]) -> Vec<Vec<usize>> {
        let mut indexes: Vec<Vec<usize>> = (0..self.shard_count()).map(|_| Vec::new()).collect();
        for (index, delivery) in deliveries.iter().enumerate() {
            for shard in self.shards_for(&delivery.target) {
                indexes[shard].push(index);
            }
        }
        indexes
    }

    /// The shards that queue a delivery to `target`: a user's owner, a
    /// connection's shard, or every shard for a room's or a broadcast (of
    /// any namespace).
    pub fn shards_for(&self, target: &Target) -> std::ops::Range<usize> {
        match target {
            Target::User(user) => {
                let owner = self.owner(user);
                owner..owner + 1
            }
            Target::Room(_) | Target::All | Target::Tenant(_) => 0..self.shard_count(),
            // On another instance the shard finds no such connection.
            Target::Connection(id) => {
                let shard = usize::from(id.shard) % self.shard_count();
                shard..shard + 1
            }
        }
    }

    /// Hands `event` to every shard with listeners, from a thread that is
    /// not a shard (the bus); a full inbox drops it (counted).
    pub fn emit(&self, event: Event) {
        self.events.to_sink(&event);
        for shard in self.events.listening_shards() {
            if self.inboxes[shard].try_send(Envelope::Event(event.clone())).is_err() {
                self.events.count_dropped(1);
            }
        }
    }

    /// Sends from a thread that may block briefly (signal thread, start-up).
    pub fn send_blocking(&self, shard: usize, mut envelope: Envelope) {
        while let Err(back) = self.inboxes[shard].try_send(envelope) {
            envelope = back;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// What every shard must do to shut down.
#[derive(Debug, Clone)]
pub struct ShutdownOrder {
    grace: Duration,
    announce: Option<Bytes>,
}

impl ShutdownOrder {
    /// The envelope carrying this order to one shard.
    pub fn envelope(&self) -> Envelope {
        Envelope::Shutdown { grace: self.grace, announce: self.announce.clone() }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::Cli;
    use crate::shard::inbox::{inbox, INBOX_CAPACITY};
    use crate::shard::lane::LANE_CAPACITY;

    fn marked(n: u8) -> Envelope {
        Envelope::Deliver { deliveries: Vec::new(), reply: None, entry: Bytes::from(vec![n]) }
    }

    #[test]
    fn the_bus_waits_at_a_full_lane_until_its_shard_takes_from_it_and_keeps_the_order() {
        let config = Config::try_from(&Cli::parse_from(["ssekify", "--shards", "1"]).server).expect("defaults");
        let (shared_inbox, mut shard_inbox) = inbox(INBOX_CAPACITY);
        let (lifecycle, _) = mpsc::channel();
        let refusal = |_: &Refusal| Bytes::new();
        let mut shared = Shared::new(config, Authenticator::None, None, refusal, vec![shared_inbox], 1, lifecycle);
        let lane = shared.open_bus_lanes().pop().expect("one shard");
        for _ in 0..LANE_CAPACITY {
            assert!(shared.lanes[0].push(marked(0)).is_ok());
        }
        // The shard: waits for the doorbell the full lane makes the bus ring,
        // then takes everything the lane holds until the bus's last envelope.
        let shard = std::thread::spawn(move || {
            let give_up = std::time::Instant::now() + Duration::from_secs(10);
            let mut rung = Vec::new();
            while rung.is_empty() && std::time::Instant::now() < give_up {
                shard_inbox.take_ready(&mut rung, 1);
                std::thread::yield_now();
            }
            let mut taken = Vec::new();
            while !rung.is_empty() && taken.last() != Some(&1) && std::time::Instant::now() < give_up {
                lane.begin();
                while let Some(Envelope::Deliver { entry, .. }) = lane.next() {
                    taken.push(entry[0]);
                }
            }
            (matches!(rung.first(), Some(Envelope::BusDoorbell)), taken)
        });
        shared.send_from_bus(0, marked(1), Probe::NOW);
        let (doorbell, taken) = shard.join().expect("the shard thread");
        assert!(doorbell, "the bus rang the shard");
        assert_eq!(taken.len(), LANE_CAPACITY + 1, "nothing dropped");
        assert_eq!(taken.last(), Some(&1), "the waiting envelope after the ones before it");
    }
}
