//! Who is here: a user's connections (on its owner shard) and a room's
//! connections and users (on every shard), for the presence routes, and the
//! same questions as other instances ask them over the bus ([`Question`]),
//! with the eviction a cluster-wide `--max-connections-per-user` sends.

use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

use super::conn::{CloseReason, Closing};
use super::envelope::{Answer, AnswerBack, ConnId, Envelope, Question};
use super::{ShardCtx, ShardState};
use crate::namespace::plain_name;

/// One instance's answer to a [`Question`]: its counts on the first line,
/// space-separated, then one line per listed item.
pub fn encode_answer(values: &[u64], lines: &[String]) -> Bytes {
    let mut out = BytesMut::new();
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.put_u8(b' ');
        }
        out.put_slice(value.to_string().as_bytes());
    }
    for line in lines {
        out.put_u8(b'\n');
        out.put_slice(line.as_bytes());
    }
    out.freeze()
}

/// A listed connection, `<connId> <opened, Unix ms>`, as (opened, id).
pub fn parse_listed_connection(line: &str) -> Option<(u64, ConnId)> {
    let (id, opened) = line.split_once(' ')?;
    Some((opened.parse().ok()?, ConnId::parse(id)?))
}

/// Orders listed connections oldest first (by opening time, then instance
/// and registration: one user's connections on one instance share a shard).
pub fn oldest_first(connections: &mut [(u64, ConnId)]) {
    connections.sort_unstable_by_key(|(opened, id)| (*opened, id.instance, id.serial));
}

/// The counts and lines of an answer; `None` when malformed (an answer from
/// a broken peer is left out rather than trusted).
pub fn decode_answer(body: &[u8]) -> Option<(Vec<u64>, Vec<&str>)> {
    let text = std::str::from_utf8(body).ok()?;
    let mut lines = text.split('\n');
    let counts = lines.next()?;
    let values = if counts.is_empty() {
        Vec::new()
    } else {
        counts
            .split(' ')
            .map(|n| n.bytes().all(|b| b.is_ascii_digit()).then(|| n.parse().ok()).flatten())
            .collect::<Option<Vec<u64>>>()?
    };
    Some((values, lines.collect()))
}

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
    /// Connections of `user` (an internal key) on this instance, and the
    /// `list` oldest (see [`parse_listed_connection`]).
    pub async fn user_presence(self: &Rc<Self>, user: &str, list: usize) -> (u64, Vec<(u64, ConnId)>) {
        let owner = self.shared.owner(user);
        let answers = self.ask(&[owner], |_, reply| Envelope::UserPresence { user: user.into(), list, reply }).await;
        let Some(answer) = answers.into_iter().next() else { return (0, Vec::new()) };
        let lines = answer.body.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
        let listed = lines.split('\n').filter_map(parse_listed_connection).collect();
        (answer.values.first().copied().unwrap_or(0), listed)
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

    /// Answers `question` from another instance through `answer`, on the
    /// shard the bus handed it to: the user's owner, the connection's shard,
    /// or any shard for a room (which asks the others).
    pub(super) fn answer_question(self: &Rc<Self>, question: Question, answer: AnswerBack) {
        match question {
            Question::User { user, list } => {
                let (count, lines) = self.local_user_connections(&user, list as usize);
                answer(encode_answer(&[count], &lines));
            }
            Question::Connection { id } => {
                let state = self.state.borrow();
                let tenant = self.open_connection_in(&state.conns, &id).map(|slot| state.conns[slot].tenant.clone());
                let lines: Vec<String> = tenant.iter().map(|t| t.as_deref().unwrap_or_default().to_owned()).collect();
                drop(state);
                answer(encode_answer(&[u64::from(tenant.is_some())], &lines));
            }
            Question::Room { room, list } => {
                let ctx = self.clone();
                monoio::spawn(async move {
                    let presence = ctx.room_presence(&room, list as usize).await;
                    answer(encode_answer(&[presence.connections, presence.users], &presence.user_ids));
                });
            }
        }
    }

    /// Closes connection `id` with `ssekify.evicted`, if it is still open
    /// here: a newer connection of its user on another instance took its place.
    pub(super) fn evict(&self, id: &ConnId) {
        let mut state = self.state.borrow_mut();
        let Some(slot) = self.open_connection_in(&state.conns, id) else { return };
        let ShardState { conns, ready, .. } = &mut *state;
        let conn = &mut conns[slot];
        conn.push_control(super::registration::evicted_frame(), ready);
        conn.close(Closing::AfterFlush, CloseReason::Evicted, ready);
    }

    /// The slot of `id` when it is an open subscriber of this shard.
    pub(super) fn open_connection_in(&self, conns: &slab::Slab<super::conn::Conn>, id: &ConnId) -> Option<usize> {
        let here = id.instance == self.shared.instance && usize::from(id.shard) == self.id;
        let slot = id.slot as usize;
        let conn = conns.get(slot)?;
        (here && conn.serial == id.serial && conn.closing.is_none() && conn.listener.is_none()).then_some(slot)
    }

    /// A user's open connections here (an internal key) and the `list`
    /// oldest as `<connId> <opened, Unix ms>` (to the shard clock's
    /// resolution), oldest first.
    pub(super) fn local_user_connections(&self, user: &str, list: usize) -> (u64, Vec<String>) {
        let state = self.state.borrow();
        let mut open: Vec<usize> =
            state.registry.user(user).iter().copied().filter(|&key| state.conns[key].closing.is_none()).collect();
        open.sort_unstable_by_key(|&key| state.conns[key].serial);
        let now_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let now_shard = self.now_ms();
        let lines = open
            .iter()
            .take(list)
            .map(|&key| {
                let conn = &state.conns[key];
                let opened = now_unix.saturating_sub(now_shard.saturating_sub(conn.opened_ms));
                format!("{} {opened}", self.conn_id(key, conn))
            })
            .collect();
        (open.len() as u64, lines)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_connections_read_back_oldest_first() {
        let id = |instance, serial| ConnId { instance, shard: 0, slot: 4, serial };
        assert_eq!(
            parse_listed_connection(&format!("{} 1700000000000", id(1, 9))),
            Some((1_700_000_000_000, id(1, 9)))
        );
        assert_eq!(parse_listed_connection("nope 1"), None);
        assert_eq!(parse_listed_connection(&format!("{} soon", id(1, 9))), None);
        let mut listed = vec![(5, id(2, 1)), (5, id(1, 7)), (5, id(1, 3)), (4, id(9, 9))];
        oldest_first(&mut listed);
        assert_eq!(listed, vec![(4, id(9, 9)), (5, id(1, 3)), (5, id(1, 7)), (5, id(2, 1))]);
    }
}
