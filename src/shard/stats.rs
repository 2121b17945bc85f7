//! Figures a shard publishes or is asked for: its replay gauges, and the
//! room hashes that make an instance-wide count of distinct rooms.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use super::envelope::Envelope;
use super::replay::ReplayStore;
use super::ShardCtx;

impl ShardCtx {
    /// Publishes the replay store's usage to this shard's gauges.
    pub fn report_replay(&self, replay: &ReplayStore) {
        let usage = replay.usage();
        let stats = self.stats();
        stats.replay_users.store(usage.users as u64, Ordering::Relaxed);
        stats.replay_rooms.store(usage.rooms as u64, Ordering::Relaxed);
        stats.replay_entries.store(usage.entries as u64, Ordering::Relaxed);
        stats.replay_bytes.store(usage.bytes as u64, Ordering::Relaxed);
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
    pub(super) fn room_hashes(&self) -> Vec<u64> {
        let state = self.state.borrow();
        state.registry.room_names().map(|name| self.shared.owner_hasher.hash_one(&**name)).collect()
    }
}
