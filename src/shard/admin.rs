//! What the admin routes do to a shard's connections and rings: close the
//! selected connections, drop the selected replay rings, here and on the
//! shards holding them.

use std::rc::Rc;

use smallvec::SmallVec;

use super::conn::{CloseReason, Closing};
use super::envelope::{Envelope, Selection};
use super::{ShardCtx, ShardState};

impl ShardCtx {
    /// Closes the selected local connections for `reason` after their
    /// queues flush; returns how many.
    pub fn close_local(&self, which: &Selection, reason: CloseReason) -> u64 {
        let mut state = self.state.borrow_mut();
        let ShardState { conns, registry, ready, .. } = &mut *state;
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
            conns[key].close(Closing::AfterFlush, reason, ready);
        }
        keys.len() as u64
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
    pub(super) fn shards_of(&self, which: &Selection) -> Vec<usize> {
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
}
