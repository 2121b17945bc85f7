//! Which connections on this shard belong to which user and which room.
//!
//! Names are `Rc<str>` shared between the maps and the connections, so a
//! name is allocated once per connection. Users are owned by exactly one
//! shard; rooms have a member set on every shard with members.

use std::rc::Rc;

use ahash::{AHashMap, AHashSet};
use smallvec::SmallVec;

/// Connections of one user on this shard (most users hold one or two tabs).
pub type UserConns = SmallVec<[usize; 2]>;

/// The user and room indexes of one shard.
#[derive(Default, Debug)]
pub struct Registry {
    users: AHashMap<Rc<str>, UserConns>,
    rooms: AHashMap<Rc<str>, AHashSet<usize>>,
}

impl Registry {
    /// Distinct users with a connection here.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Rooms with a member here.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Connections of `user` here.
    pub fn user(&self, user: &str) -> &[usize] {
        self.users.get(user).map_or(&[], |conns| conns.as_slice())
    }

    /// Members of `room` here.
    pub fn room(&self, room: &str) -> Option<&AHashSet<usize>> {
        self.rooms.get(room)
    }

    /// Room names with members here.
    pub fn room_names(&self) -> impl Iterator<Item = &Rc<str>> {
        self.rooms.keys()
    }

    /// Interns `user` and records `conn` under it; returns the shared name.
    pub fn add_user(&mut self, user: &str, conn: usize) -> Rc<str> {
        match self.users.get_key_value(user) {
            Some((name, _)) => {
                let name = name.clone();
                self.users.get_mut(user).expect("present").push(conn);
                name
            }
            None => {
                let name: Rc<str> = Rc::from(user);
                self.users.insert(name.clone(), SmallVec::from_elem(conn, 1));
                name
            }
        }
    }

    /// Interns `room` and records `conn` as a member; returns the shared name.
    pub fn add_member(&mut self, room: &str, conn: usize) -> Rc<str> {
        match self.rooms.get_key_value(room) {
            Some((name, _)) => {
                let name = name.clone();
                self.rooms.get_mut(room).expect("present").insert(conn);
                name
            }
            None => {
                let name: Rc<str> = Rc::from(room);
                let mut members = AHashSet::new();
                members.insert(conn);
                self.rooms.insert(name.clone(), members);
                name
            }
        }
    }

    /// Forgets `conn` under `user`, and the user when it was the last.
    pub fn remove_user(&mut self, user: &str, conn: usize) {
        if let Some(conns) = self.users.get_mut(user) {
            conns.retain(|c| *c != conn);
            if conns.is_empty() {
                self.users.remove(user);
            }
        }
    }

    /// Forgets `conn` in `room`, and the room when it was the last member.
    pub fn remove_member(&mut self, room: &str, conn: usize) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.remove(&conn);
            if members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_rooms_come_and_go() {
        let mut registry = Registry::default();
        let a = registry.add_user("alice", 1);
        let b = registry.add_user("alice", 2);
        assert!(Rc::ptr_eq(&a, &b), "one allocation per name");
        registry.add_member("lobby", 1);
        registry.add_member("lobby", 3);
        assert_eq!(registry.user("alice"), &[1, 2]);
        assert_eq!(registry.room_count(), 1);
        registry.remove_user("alice", 1);
        registry.remove_member("lobby", 1);
        assert_eq!(registry.user("alice"), &[2]);
        registry.remove_user("alice", 2);
        registry.remove_member("lobby", 3);
        assert_eq!(registry.user_count(), 0);
        assert_eq!(registry.room_count(), 0);
    }
}
