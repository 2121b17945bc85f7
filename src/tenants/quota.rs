//! The live counts a tenant's limits are compared against on this
//! instance: its subscribers, and its publish bucket.
//!
//! Why maps under striped mutexes and not an atomic per configured tenant:
//! tenants the file does not list get `defaults` and must be counted
//! exactly too, one count per name, and names are open-ended (any valid
//! name is a tenant); and counts must survive a reload that adds a tenant to
//! the file or removes it, with its connections open. A map keyed by name,
//! holding only tenants with a connection (or a bucket not yet full), is
//! exact and bounded by what is connected (or publishing). These maps are
//! touched on subscriber connect and disconnect and on publish admission,
//! never on the delivery path; each lock is held for one map operation, and
//! [`STRIPES`] of them, picked by the name's hash, keep shards from meeting
//! on one lock. Only a `--tenant-config` instance keeps them at all.

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use ahash::AHashMap;

use super::bucket::{Rate, Taken};

/// Locks the counts are spread over; more than shards ever collide on.
pub const STRIPES: usize = 32;

/// Buckets one stripe keeps before it drops those that are full again (a
/// full bucket is the same as none, so dropping it loses nothing); bounds
/// the map by the tenants that published within one burst's refill time.
pub const BUCKET_SWEEP_AT: usize = 1024;

/// Why a publish of a tenant is refused by its rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateRefusal {
    /// Out of tokens: `Retry-After` this many whole seconds (at least 1).
    Wait(u64),
    /// The batch holds more messages than `publishBurst`: it can never pass.
    OverBurst(u64),
}

/// Per-tenant counts of this instance (in `Shared`, one per process).
#[derive(Debug)]
pub struct TenantQuotas {
    started: Instant,
    hasher: ahash::RandomState,
    connections: Vec<Mutex<AHashMap<Box<str>, u64>>>,
    /// Subscribers per tenant on the other instances, as their last
    /// heartbeats over the bus said (empty without a bus), by the same stripes.
    elsewhere: Vec<Mutex<AHashMap<Box<str>, u64>>>,
    buckets: Vec<Mutex<AHashMap<Box<str>, u64>>>,
}

impl Default for TenantQuotas {
    fn default() -> Self {
        TenantQuotas {
            started: Instant::now(),
            hasher: ahash::RandomState::new(),
            connections: (0..STRIPES).map(|_| Mutex::default()).collect(),
            elsewhere: (0..STRIPES).map(|_| Mutex::default()).collect(),
            buckets: (0..STRIPES).map(|_| Mutex::default()).collect(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere never leaves a count half-written (one map operation).
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl TenantQuotas {
    fn stripe(&self, tenant: &str) -> usize {
        (self.hasher.hash_one(tenant) % STRIPES as u64) as usize
    }

    /// The tenant's subscribers on this instance: counted from admission
    /// ([`TenantQuotas::admit_connection`]) to [`TenantQuotas::release_connection`]
    /// when it unregisters (lifecycle event listeners are not subscribers).
    pub fn connections(&self, tenant: &str) -> u64 {
        connections_in(&lock(&self.connections[self.stripe(tenant)]), tenant)
    }

    /// The tenant's subscribers on the other instances, as last heard.
    pub fn connections_elsewhere(&self, tenant: &str) -> u64 {
        connections_in(&lock(&self.elsewhere[self.stripe(tenant)]), tenant)
    }

    /// Replaces the other instances' counts (the bus, once per heartbeat).
    pub fn set_elsewhere(&self, counts: AHashMap<Box<str>, u64>) {
        let mut stripes: Vec<AHashMap<Box<str>, u64>> = (0..STRIPES).map(|_| AHashMap::new()).collect();
        for (tenant, count) in counts {
            stripes[self.stripe(&tenant)].insert(tenant, count);
        }
        for (stripe, counts) in self.elsewhere.iter().zip(stripes) {
            *lock(stripe) = counts;
        }
    }

    /// Counts one more subscriber of `tenant` unless that would take it
    /// over `limit`; `Err(limit)` then, and nothing is counted. This is the
    /// one place a tenant's connections meet its `maxConnections`: this
    /// instance's subscribers and the other instances' (as their last
    /// heartbeats said, at most a second old). Check and count happen under
    /// one lock, so two shards admitting at once cannot both take the last
    /// place here; two instances admitting within one heartbeat can (see
    /// "Tenants" in the README).
    pub fn admit_connection(&self, tenant: &str, limit: Option<u64>) -> Result<(), u64> {
        let elsewhere = if limit.is_some() { self.connections_elsewhere(tenant) } else { 0 };
        let mut counts = lock(&self.connections[self.stripe(tenant)]);
        if let Some(limit) = limit.filter(|&limit| connections_in(&counts, tenant) + elsewhere >= limit) {
            return Err(limit);
        }
        match counts.get_mut(tenant) {
            Some(count) => *count += 1,
            None => {
                counts.insert(tenant.into(), 1);
            }
        }
        Ok(())
    }

    /// Forgets one subscriber of `tenant` (admitted earlier).
    pub fn release_connection(&self, tenant: &str) {
        let mut counts = lock(&self.connections[self.stripe(tenant)]);
        if let Some(count) = counts.get_mut(tenant) {
            *count -= 1;
            if *count == 0 {
                counts.remove(tenant);
            }
        }
    }

    /// Every tenant with subscribers here and their counts (for metrics).
    pub fn all_connections(&self) -> Vec<(Box<str>, u64)> {
        self.connections
            .iter()
            .flat_map(|stripe| lock(stripe).iter().map(|(k, &v)| (k.clone(), v)).collect::<Vec<_>>())
            .collect()
    }

    /// Takes `messages` tokens from `tenant`'s bucket of this instance.
    pub fn take_publish(&self, tenant: &str, rate: Rate, messages: u64) -> Result<(), RateRefusal> {
        let now = self.started.elapsed().as_nanos() as u64;
        let mut buckets = lock(&self.buckets[self.stripe(tenant)]);
        let tat = buckets.get(tenant).copied().unwrap_or(0);
        match rate.take(tat, now, messages) {
            Taken::Allowed { tat } => {
                match buckets.get_mut(tenant) {
                    Some(state) => *state = tat,
                    None => {
                        if buckets.len() >= BUCKET_SWEEP_AT {
                            buckets.retain(|_, tat| *tat > now);
                        }
                        buckets.insert(tenant.into(), tat);
                    }
                }
                Ok(())
            }
            Taken::Wait(wait) => Err(RateRefusal::Wait(super::bucket::retry_after_seconds(wait))),
            Taken::OverBurst => Err(RateRefusal::OverBurst(rate.burst)),
        }
    }
}

fn connections_in(counts: &AHashMap<Box<str>, u64>, tenant: &str) -> u64 {
    counts.get(tenant).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_counted_per_tenant_up_to_the_limit() {
        let quotas = TenantQuotas::default();
        assert_eq!(quotas.admit_connection("acme", Some(2)), Ok(()));
        assert_eq!(quotas.admit_connection("acme", Some(2)), Ok(()));
        assert_eq!(quotas.admit_connection("acme", Some(2)), Err(2));
        assert_eq!(quotas.admit_connection("globex", Some(2)), Ok(()), "another tenant's count");
        assert_eq!(quotas.connections("acme"), 2);
        quotas.release_connection("acme");
        assert_eq!(quotas.admit_connection("acme", Some(2)), Ok(()), "a freed place is reusable");
        assert_eq!(quotas.admit_connection("acme", None), Ok(()), "no limit: counted anyway");
        assert_eq!(quotas.connections("acme"), 3);
        assert_eq!(quotas.admit_connection("acme", Some(1)), Err(1), "a lowered limit refuses new ones only");
        for _ in 0..3 {
            quotas.release_connection("acme");
        }
        quotas.release_connection("globex");
        assert!(quotas.all_connections().is_empty(), "tenants without connections are forgotten");
    }

    #[test]
    fn other_instances_count_against_the_limit() {
        let quotas = TenantQuotas::default();
        quotas.set_elsewhere([("acme".into(), 2)].into_iter().collect());
        assert_eq!(quotas.admit_connection("acme", Some(3)), Ok(()));
        assert_eq!(quotas.admit_connection("acme", Some(3)), Err(3), "1 here and 2 elsewhere");
        assert_eq!(quotas.admit_connection("globex", Some(1)), Ok(()));
        quotas.set_elsewhere(AHashMap::new());
        assert_eq!(quotas.admit_connection("acme", Some(3)), Ok(()), "the other instance went away");
    }

    #[test]
    fn publishes_take_from_the_tenants_own_bucket() {
        let quotas = TenantQuotas::default();
        let rate = Rate::new(1.0, Some(3));
        assert_eq!(quotas.take_publish("acme", rate, 3), Ok(()));
        assert!(matches!(quotas.take_publish("acme", rate, 1), Err(RateRefusal::Wait(1))));
        assert_eq!(quotas.take_publish("globex", rate, 3), Ok(()), "its own bucket");
        assert_eq!(quotas.take_publish("acme", rate, 4), Err(RateRefusal::OverBurst(3)));
    }
}
