//! Who is here: a user's connections (on its owner shard) and a room's
//! connections and users (on every shard), for the presence routes.

use std::rc::Rc;

use bytes::Bytes;

use super::envelope::{Answer, Envelope};
use super::ShardCtx;
use crate::namespace::plain_name;

/// A room's presence on this instance.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RoomPresence {
    /// Connections in the room.
    pub connections: u64,
    /// Distinct named users among them.
    pub users: u64,
    /// Their plain names, at most the asked number.
    pub user_ids: Vec<String>,
}

impl ShardCtx {
    /// Connections of `user` (an internal key) on this instance.
    pub async fn user_presence(self: &Rc<Self>, user: &str) -> u64 {
        let owner = self.shared.owner(user);
        let answers = self.ask(&[owner], |_, reply| Envelope::UserPresence { user: user.into(), reply }).await;
        answers.first().and_then(|a| a.values.first().copied()).unwrap_or(0)
    }

    /// `room` (an internal key) on this instance, listing at most `list_max` users.
    pub async fn room_presence(self: &Rc<Self>, room: &str, list_max: usize) -> RoomPresence {
        let all: Vec<usize> = (0..self.shared.shard_count()).collect();
        let answers = self.ask(&all, |_, reply| Envelope::RoomPresence { room: room.into(), list_max, reply }).await;
        let mut presence = RoomPresence::default();
        // A user's connections all live on its owner shard: per-shard counts of
        // distinct users add up to the instance's.
        for answer in answers {
            if let [connections, users] = answer.values[..] {
                presence.connections += connections;
                presence.users += users;
            }
            let names = answer.body.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            let room_left = list_max.saturating_sub(presence.user_ids.len());
            presence.user_ids.extend(names.split('\n').filter(|n| !n.is_empty()).take(room_left).map(str::to_owned));
        }
        presence
    }

    /// This shard's part of [`ShardCtx::user_presence`].
    pub(super) fn local_user_presence(&self, user: &str) -> Vec<u64> {
        vec![self.state.borrow().registry.user(user).len() as u64]
    }

    /// This shard's part of [`ShardCtx::room_presence`]: `[connections,
    /// users]` and up to `list_max` user names, newline-separated.
    pub(super) fn local_room_presence(&self, room: &str, list_max: usize) -> Answer {
        let state = self.state.borrow();
        let Some(members) = state.registry.room(room) else { return Answer { values: vec![0, 0], body: None } };
        let mut users: Vec<&str> = members.iter().filter_map(|&key| state.conns[key].user.as_deref()).collect();
        users.sort_unstable();
        users.dedup();
        let names: Vec<&str> = users.iter().take(list_max).map(|user| plain_name(user)).collect();
        Answer { values: vec![members.len() as u64, users.len() as u64], body: Some(Bytes::from(names.join("\n"))) }
    }
}
