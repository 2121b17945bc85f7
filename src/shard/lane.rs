//! The bus thread's lane into one shard: what the bus hands the shard, in
//! the bus's order, beside the shard's inbox.
//!
//! The bus applies every instance's log, so most of what an instance
//! receives concerns nobody on a given shard, yet every message must reach
//! the shard's replay rings (a subscriber may resume here). The lane lets
//! those wait: the bus rings the shard's doorbell (an envelope in its inbox)
//! only when it queued something somebody there may want
//! ([`super::interest`]), when [`RING_AFTER`] quiet ones wait, or on its
//! tick. The shard takes the lane before each batch of its inbox and around
//! each subscriber's registration, so a resume reads complete rings and the
//! live messages follow the replayed ones.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use super::envelope::Envelope;
use super::interest::{Interest, Probe};

/// Envelopes a lane holds before the bus waits (as many as an inbox).
pub const LANE_CAPACITY: usize = super::inbox::INBOX_CAPACITY;

/// Quiet envelopes after which the bus wakes the shard anyway: bounds the
/// work a wake finds, and the bus's tick bounds how late a ring is written.
const RING_AFTER: usize = 512;

/// The bus thread's end of a lane.
#[derive(Debug)]
pub struct SharedLane {
    tx: SyncSender<Envelope>,
    /// A doorbell is in the shard's inbox, not yet answered.
    rung: AtomicBool,
    /// Envelopes queued since the last doorbell (written by the bus thread).
    quiet: AtomicUsize,
    /// Who is connected on the shard, as far as the bus needs to know.
    pub interest: Arc<Interest>,
}

/// The shard's end of a lane.
#[derive(Debug)]
pub struct LocalLane {
    rx: Receiver<Envelope>,
    shared: Arc<SharedLane>,
}

/// A new lane holding at most [`LANE_CAPACITY`] envelopes.
pub fn lane() -> (Arc<SharedLane>, LocalLane) {
    let (tx, rx) = sync_channel(LANE_CAPACITY);
    let shared = Arc::new(SharedLane {
        tx,
        rung: AtomicBool::new(false),
        quiet: AtomicUsize::new(0),
        interest: Arc::new(Interest::default()),
    });
    (shared.clone(), LocalLane { rx, shared })
}

impl SharedLane {
    /// Queues `envelope` without waking the shard; gives it back when the
    /// lane is full or the shard is gone (by value, as the inbox does: the
    /// caller retries with it).
    #[allow(clippy::result_large_err)]
    pub fn push(&self, envelope: Envelope) -> Result<(), Envelope> {
        self.tx
            .try_send(envelope)
            .map_err(|(TrySendError::Full(envelope) | TrySendError::Disconnected(envelope))| envelope)
    }

    /// After a push: true when the shard must be woken for it, because
    /// somebody there may want what `probes` were found for (the shard having
    /// `connections` open), or enough waits.
    pub fn must_ring(&self, probes: &[Probe], connections: &AtomicU64) -> bool {
        // Pairs with the fence in `LocalLane::begin`: a target that just
        // gained a connection is seen here, or the shard finds this envelope.
        fence(Ordering::SeqCst);
        probes.iter().any(|&probe| self.interest.wanted(probe, connections))
            || self.quiet.fetch_add(1, Ordering::Relaxed) + 1 >= RING_AFTER
    }

    /// True when envelopes were queued since the last doorbell.
    pub fn waiting(&self) -> bool {
        self.quiet.load(Ordering::Relaxed) != 0
    }

    /// Claims the doorbell: true when the caller must put one in the
    /// shard's inbox (none is on its way).
    pub fn claim_doorbell(&self) -> bool {
        self.quiet.store(0, Ordering::Relaxed);
        !self.rung.swap(true, Ordering::AcqRel)
    }

    /// The doorbell claimed could not be sent (the inbox is full, so the
    /// shard is awake and takes the lane before its next batch).
    pub fn release_doorbell(&self) {
        self.rung.store(false, Ordering::Release);
    }
}

impl LocalLane {
    /// Starts a pass over the lane: the bus may ring again, and what the
    /// shard changed in its interest before is visible to the bus's next check.
    pub fn begin(&self) {
        self.shared.rung.store(false, Ordering::Release);
        fence(Ordering::SeqCst);
    }

    /// The next envelope, in the bus's order.
    pub fn next(&self) -> Option<Envelope> {
        self.rx.try_recv().ok()
    }

    /// The interest filter the bus reads for this shard.
    pub fn interest(&self) -> &Arc<Interest> {
        &self.shared.interest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::envelope::Target;
    use crate::shard::interest::Kind;

    fn deliver() -> Envelope {
        Envelope::Deliver { deliveries: Vec::new(), reply: None, entry: bytes::Bytes::new() }
    }

    #[test]
    fn the_bus_rings_for_a_wanted_target_or_a_backlog() {
        let (shared, local) = lane();
        let none = AtomicU64::new(0);
        let bob = shared.interest.probe(&Target::User("bob".into()));
        assert!(shared.push(deliver()).is_ok());
        assert!(!shared.must_ring(&[bob], &none), "nobody wants bob's message here");
        assert!(shared.waiting());
        local.interest().add(Kind::User, "bob");
        assert!(shared.push(deliver()).is_ok());
        assert!(shared.must_ring(&[bob], &none));
        assert!(shared.claim_doorbell());
        assert!(!shared.claim_doorbell(), "one doorbell on its way at a time");
        assert!(!shared.waiting());
        local.begin();
        assert!(local.next().is_some() && local.next().is_some() && local.next().is_none());
        assert!(shared.claim_doorbell(), "answered: it may ring again");
        let nobody = shared.interest.probe(&Target::User("carol".into()));
        let rings =
            (0..RING_AFTER).filter(|_| shared.push(deliver()).is_ok() && shared.must_ring(&[nobody], &none)).count();
        assert_eq!(rings, 1, "a backlog of quiet envelopes rings once");
    }
}
