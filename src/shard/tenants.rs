//! A shard's view of the tenant config and its per-tenant counters.
//!
//! Every shard holds the [`TenantConfig`] in force as an `Arc` of its own,
//! swapped when a reload's envelope arrives ([`ShardCtx::apply_tenant_config`]),
//! so admission reads it without a lock and the delivery path never looks at
//! it. The counters (published, sent, rejected by reason) are plain numbers
//! in this shard's [`Tally`]s, one per metrics label — each listed tenant,
//! and `_other` for the rest — found by the config's slot (one hash lookup
//! per publish or delivery, none per recipient), and summed over shards when
//! metrics or stats ask ([`ShardCtx::tenant_report`]). A reload carries each
//! label's counts over to its new slot; a tenant leaving the file adds its
//! counts to `_other`.

use std::rc::Rc;
use std::sync::Arc;

use ahash::AHashSet;

use super::envelope::{Envelope, Target};
use super::replay::TenantBudgets;
use super::ShardCtx;
use crate::metrics::Rejection;
use crate::namespace::tenant_of_key;
use crate::tenants::{TenantConfig, OTHER};

/// Counters of one metrics label on one shard.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Messages accepted by its publish routes.
    pub published: u64,
    /// Message frames handed to its connections (replays included).
    pub sent: u64,
    /// Refusals, in the order of [`Rejection::PER_TENANT`].
    pub rejected: [u64; Rejection::PER_TENANT.len()],
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.published += other.published;
        self.sent += other.sent;
        for (mine, theirs) in self.rejected.iter_mut().zip(other.rejected) {
            *mine += theirs;
        }
    }
}

/// The tenant config in force on this shard and its counters by slot.
#[derive(Debug)]
pub struct ShardTenants {
    config: Arc<TenantConfig>,
    tallies: Vec<Tally>,
}

impl ShardTenants {
    /// Counters at zero for `config`'s labels.
    pub fn new(config: Arc<TenantConfig>) -> Self {
        let tallies = vec![Tally::default(); config.slots()];
        ShardTenants { config, tallies }
    }

    /// Puts `config` in force, carrying each label's counts to its new slot.
    fn swap(&mut self, config: Arc<TenantConfig>) {
        let mut tallies = vec![Tally::default(); config.slots()];
        for (slot, tally) in self.tallies.iter().enumerate() {
            tallies[config.slot(self.config.label(slot))].add(tally);
        }
        self.config = config;
        self.tallies = tallies;
    }

    fn tally(&mut self, tenant: &str) -> &mut Tally {
        &mut self.tallies[self.config.slot(tenant)]
    }
}

/// One label's figures, summed over shards.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TenantFigures {
    /// Open connections.
    pub connections: u64,
    /// Distinct named users with a connection.
    pub users: u64,
    /// Distinct rooms with members.
    pub rooms: u64,
    /// Frame bytes its replay rings reference.
    pub replay_bytes: u64,
    /// Counters (published, sent, rejected).
    pub tally: Tally,
}

/// What one shard knows of one label before the sum: user and room hashes,
/// so that a user's connections count once, and rooms spanning shards too.
#[derive(Default)]
struct Partial {
    connections: u64,
    users: AHashSet<u64>,
    rooms: AHashSet<u64>,
    replay_bytes: u64,
    tally: Tally,
}

/// Values per label on the wire: connections, users, replay bytes,
/// published, sent, the rejections, then the number of room hashes and the hashes.
const FIXED: usize = 5 + Rejection::PER_TENANT.len();

impl Partial {
    fn encode(&self, out: &mut Vec<u64>) {
        out.extend([
            self.connections,
            self.users.len() as u64,
            self.replay_bytes,
            self.tally.published,
            self.tally.sent,
        ]);
        out.extend(self.tally.rejected);
        out.push(self.rooms.len() as u64);
        out.extend(self.rooms.iter().copied());
    }
}

impl ShardCtx {
    /// The tenant config in force on this shard.
    pub fn tenant_config(&self) -> Arc<TenantConfig> {
        self.tenants.borrow().config.clone()
    }

    /// Puts a reloaded tenant config in force on this shard: admission and
    /// replay budgets use it from now on; nothing connected is touched.
    pub fn apply_tenant_config(&self, config: Arc<TenantConfig>) {
        let shards = self.shared.shard_count();
        self.state.borrow_mut().replay.set_budgets(TenantBudgets { config: Some(config.clone()), shards });
        self.tenants.borrow_mut().swap(config);
    }

    /// Counts `messages` accepted by `tenant`'s publish routes.
    pub fn count_tenant_published(&self, tenant: &str, messages: u64) {
        self.tenants.borrow_mut().tally(tenant).published += messages;
    }

    /// Counts a refusal of `tenant`'s request, here and in the instance's `rejected`.
    pub fn count_tenant_rejection(&self, tenant: Option<&str>, reason: Rejection) {
        self.stats().rejected.count(reason);
        let Some(tenant) = tenant else { return };
        if let Some(slot) = Rejection::PER_TENANT.iter().position(|&r| r == reason) {
            self.tenants.borrow_mut().tally(tenant).rejected[slot] += 1;
        }
    }

    /// Counts frames handed to connections of `tenant` (`None`: the default
    /// namespace, not counted per tenant).
    pub(super) fn count_tenant_sent(&self, tenant: Option<&str>, frames: u64) {
        if let (Some(tenant), true) = (tenant, frames > 0) {
            self.tenants.borrow_mut().tally(tenant).sent += frames;
        }
    }

    /// The tenant of a delivery's recipients (`None`: the default namespace).
    pub(super) fn tenant_of_target(target: &Target) -> Option<&str> {
        match target {
            Target::User(key) | Target::Room(key) => tenant_of_key(key),
            Target::Tenant(tenant) => Some(tenant),
            Target::All | Target::Connection(_) => None,
        }
    }

    /// One tenant's figures over every shard (`GET /v1/t/{tenant}/stats`);
    /// the counters are those of its metrics label (its own when the file
    /// lists it, `_other`'s otherwise).
    pub async fn tenant_counts(self: &Rc<Self>, tenant: &str) -> TenantFigures {
        let figures = self.gather_figures(|reply| Envelope::TenantCounts { tenant: tenant.into(), reply }, 1).await;
        figures.into_iter().next().unwrap_or_default()
    }

    /// Every label's figures over every shard, in the order of `labels`' slots.
    pub async fn tenant_report(self: &Rc<Self>, labels: Arc<TenantConfig>) -> Vec<TenantFigures> {
        let slots = labels.slots();
        self.gather_figures(|reply| Envelope::TenantReport { labels: labels.clone(), reply }, slots).await
    }

    async fn gather_figures(
        self: &Rc<Self>,
        mut request: impl FnMut(super::envelope::ReplyTo) -> Envelope,
        labels: usize,
    ) -> Vec<TenantFigures> {
        let all: Vec<usize> = (0..self.shared.shard_count()).collect();
        let replies = self.ask(&all, |_, reply| request(reply)).await;
        let mut figures = vec![TenantFigures::default(); labels];
        let mut rooms: Vec<AHashSet<u64>> = vec![AHashSet::new(); labels];
        for answer in replies {
            let mut values = answer.values.as_slice();
            for (figure, rooms) in figures.iter_mut().zip(&mut rooms) {
                let Some((fixed, rest)) = values.split_first_chunk::<FIXED>() else { break };
                let Some((&count, rest)) = rest.split_first() else { break };
                let count = (count as usize).min(rest.len());
                figure.connections += fixed[0];
                figure.users += fixed[1];
                figure.replay_bytes += fixed[2];
                figure.tally.published += fixed[3];
                figure.tally.sent += fixed[4];
                for (total, value) in figure.tally.rejected.iter_mut().zip(&fixed[5..]) {
                    *total += value;
                }
                rooms.extend(rest[..count].iter().copied());
                values = &rest[count..];
            }
        }
        for (figure, rooms) in figures.iter_mut().zip(rooms) {
            figure.rooms = rooms.len() as u64;
        }
        figures
    }

    /// This shard's part of one tenant's figures (see [`ShardCtx::tenant_counts`]).
    pub(super) fn tenant_counts_local(&self, tenant: &str) -> Vec<u64> {
        let mut partial = Partial::default();
        {
            let state = self.state.borrow();
            for &key in state.registry.tenant(tenant).into_iter().flatten() {
                self.add_conn(&mut partial, &state.conns[key]);
            }
            partial.replay_bytes = state.replay.tenant_bytes(tenant) as u64;
        }
        partial.tally = *self.tenants.borrow_mut().tally(tenant);
        let mut values = Vec::new();
        partial.encode(&mut values);
        values
    }

    /// This shard's part of every label of `labels` (see [`ShardCtx::tenant_report`]).
    pub(super) fn tenant_report_local(&self, labels: &TenantConfig) -> Vec<u64> {
        let mut partials: Vec<Partial> = (0..labels.slots()).map(|_| Partial::default()).collect();
        {
            let state = self.state.borrow();
            for (tenant, members) in state.registry.tenants() {
                let partial = &mut partials[labels.slot(tenant)];
                for &key in members {
                    self.add_conn(partial, &state.conns[key]);
                }
            }
            for (tenant, bytes) in state.replay.tenants_bytes() {
                partials[labels.slot(tenant)].replay_bytes += bytes as u64;
            }
        }
        let tenants = self.tenants.borrow();
        for (slot, tally) in tenants.tallies.iter().enumerate() {
            let label = tenants.config.label(slot);
            let to = if label == OTHER { 0 } else { labels.slot(label) };
            partials[to].tally.add(tally);
        }
        let mut values = Vec::new();
        for partial in &partials {
            partial.encode(&mut values);
        }
        values
    }

    fn add_conn(&self, partial: &mut Partial, conn: &super::conn::Conn) {
        partial.connections += 1;
        if let Some(user) = &conn.user {
            partial.users.insert(self.shared.owner_hasher.hash_one(&**user));
        }
        partial.rooms.extend(conn.rooms.iter().map(|room| self.shared.owner_hasher.hash_one(&**room)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Arc<TenantConfig> {
        Arc::new(TenantConfig::parse(text.as_bytes(), None).unwrap())
    }

    #[test]
    fn a_reload_carries_counts_to_the_labels_new_slots() {
        let mut tenants = ShardTenants::new(config(r#"{"tenants": {"acme": {}, "globex": {}}}"#));
        tenants.tally("acme").sent = 5;
        tenants.tally("globex").sent = 7;
        tenants.tally("initech").sent = 1;
        tenants.swap(config(r#"{"tenants": {"aardvark": {}, "acme": {}}}"#));
        assert_eq!(tenants.tally("acme").sent, 5, "acme kept its counts in its new slot");
        assert_eq!(tenants.tally("aardvark").sent, 0, "a new label starts at zero");
        assert_eq!(tenants.tally("globex").sent, 8, "globex left the file: its counts join _other's");
    }
}
