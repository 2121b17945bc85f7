//! Live room membership: connections join and leave rooms without
//! reconnecting (`PUT`/`DELETE /v1/users/{user}/rooms/{room}` and
//! `/v1/connections/{connId}/rooms/{room}`), applied on the shard that holds
//! them, in order with the messages queued there.

use smallvec::SmallVec;
use std::sync::atomic::Ordering;

use super::conn::Conn;
use super::envelope::{ConnId, RoomChange, RoomChangeCount, Target};
use super::{ShardCtx, ShardState};
use crate::namespace::tenant_of_key;

impl ShardCtx {
    /// The cluster-wide id of the local connection in `slot`.
    pub fn conn_id(&self, slot: usize, conn: &Conn) -> ConnId {
        ConnId { instance: self.shared.instance, shard: self.id as u16, slot: slot as u32, serial: conn.serial }
    }

    /// Applies a room change to the connections `target` names here.
    pub(crate) fn change_rooms(&self, target: &Target, change: &RoomChange) -> RoomChangeCount {
        let mut state = self.state.borrow_mut();
        let ShardState { conns, registry, .. } = &mut *state;
        let keys: SmallVec<[usize; 4]> = match target {
            Target::User(user) => registry.user(user).iter().copied().collect(),
            Target::Connection(id) => self.find(conns, id, &change.room).into_iter().collect(),
            Target::Room(_) | Target::All | Target::Tenant(_) => SmallVec::new(),
        };
        let max_rooms = self.shared.config.max_rooms_per_connection;
        let mut count = RoomChangeCount { found: keys.len() as u64, ..RoomChangeCount::default() };
        for key in keys {
            let conn = &mut conns[key];
            let position = conn.rooms.iter().position(|room| **room == *change.room);
            match (change.join, position) {
                (true, Some(_)) | (false, None) => {}
                (true, None) if conn.rooms.len() >= max_rooms => count.refused += 1,
                (true, None) => {
                    conn.rooms.push(registry.add_member(&change.room, key));
                    count.changed += 1;
                }
                (false, Some(at)) => {
                    conn.rooms.swap_remove(at);
                    registry.remove_member(&change.room, key);
                    count.changed += 1;
                }
            }
        }
        self.stats().rooms.store(registry.room_count() as u64, Ordering::Relaxed);
        count
    }

    /// The slot of the live connection `id` names, when it is on this shard
    /// and in the namespace of `room` (a tenant's key cannot move another
    /// tenant's connection).
    fn find(&self, conns: &slab::Slab<Conn>, id: &ConnId, room: &str) -> Option<usize> {
        let slot = self.open_connection_in(conns, id)?;
        (conns[slot].tenant.as_deref() == tenant_of_key(room)).then_some(slot)
    }
}
