//! Which connections on this shard belong to which user and which room.
//!
//! Users are keyed by [`Key`], whose text most often sits in the map's own
//! slot (a message to a user looks it up here first); room and tenant names
//! are `Rc<str>` shared between the maps and the connections, allocated once
//! per name. Users are owned by exactly one shard; rooms have a member set
//! on every shard with members. User and room
//! names are internal keys ([`crate::namespace`]), so a tenant's never meet
//! another namespace's. Each tenant with connections here also has a member
//! set, so its broadcast visits its own connections only.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use ahash::{AHashMap, AHashSet};
use smallvec::SmallVec;

use super::interest::{Interest, Kind};
use super::key::{self, Key};

/// Connections of one user on this shard (most users hold one or two tabs).
pub type UserConns = SmallVec<[usize; 2]>;

/// One user with connections on this shard: its connections, and where its
/// replay ring was last found, so a message to the user finds both by one
/// lookup of its name (the ring's own map by name missed the cache about
/// once a message with 10,000 users, `benches/cachesim.py`).
#[derive(Debug, Default)]
pub struct UserEntry {
    /// Its connections here.
    pub conns: UserConns,
    /// The slot its ring was last found at in the replay store (a slot
    /// past `u32` is not kept); the store checks the ring there is still
    /// this user's before trusting it.
    pub ring_slot: Cell<Option<u32>>,
}

/// The user and room indexes of one shard.
#[derive(Default, Debug)]
pub struct Registry {
    users: AHashMap<Key, UserEntry>,
    rooms: AHashMap<Rc<str>, AHashSet<usize>>,
    tenants: AHashMap<Rc<str>, AHashSet<usize>>,
    /// Told of each name's first and last connection here (with a bus).
    interest: Option<Arc<Interest>>,
    /// See [`Registry::users_added`].
    users_added: u64,
}

impl Registry {
    /// Empty indexes, telling `interest` (if any) of each name's first and
    /// last connection.
    pub fn new(interest: Option<Arc<Interest>>) -> Self {
        Registry { interest, ..Registry::default() }
    }

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
        self.users.get(user).map_or(&[], |entry| entry.conns.as_slice())
    }

    /// How many times a user has had a first connection here: a user found
    /// without an entry has none still while this count stands.
    pub fn users_added(&self) -> u64 {
        self.users_added
    }

    /// `user`'s connections and ring slot, if it has a connection here.
    pub fn user_entry(&self, user: &Key) -> Option<&UserEntry> {
        self.users.get(user)
    }

    /// Asks for the line [`Registry::user_entry`] of `user` will wait for
    /// ([`key::prefetch_slot`]).
    pub fn prefetch_user_slot(&self, user: &Key) {
        key::prefetch_slot(&self.users, user);
    }

    /// Members of `room` here.
    pub fn room(&self, room: &str) -> Option<&AHashSet<usize>> {
        self.rooms.get(room)
    }

    /// True when some connection here belongs to a tenant.
    pub fn has_tenants(&self) -> bool {
        !self.tenants.is_empty()
    }

    /// Connections of `tenant` here.
    pub fn tenant(&self, tenant: &str) -> Option<&AHashSet<usize>> {
        self.tenants.get(tenant)
    }

    /// Room names with members here.
    pub fn room_names(&self) -> impl Iterator<Item = &Rc<str>> {
        self.rooms.keys()
    }

    /// Every tenant with connections here, and those connections.
    pub fn tenants(&self) -> impl Iterator<Item = (&Rc<str>, &AHashSet<usize>)> {
        self.tenants.iter()
    }

    /// Records `conn` under `user`; true when it is the user's first here.
    pub fn add_user(&mut self, user: &Key, conn: usize) -> bool {
        if let Some(entry) = self.users.get_mut(user) {
            entry.conns.push(conn);
            return false;
        }
        let entry = UserEntry { conns: SmallVec::from_elem(conn, 1), ring_slot: Cell::new(None) };
        self.users.insert(user.clone(), entry);
        self.users_added += 1;
        if let Some(interest) = &self.interest {
            interest.add(Kind::User, user);
        }
        true
    }

    /// Interns `room` and records `conn` as a member; returns the shared name.
    pub fn add_member(&mut self, room: &str, conn: usize) -> Rc<str> {
        add_to_set(&mut self.rooms, room, conn, self.interest.as_deref().map(|i| (i, Kind::Room)))
    }

    /// Interns `tenant` and records `conn` as one of its connections.
    pub fn add_tenant_member(&mut self, tenant: &str, conn: usize) -> Rc<str> {
        add_to_set(&mut self.tenants, tenant, conn, self.interest.as_deref().map(|i| (i, Kind::Tenant)))
    }

    /// Forgets `conn` under `user`, and the user when it was the last.
    pub fn remove_user(&mut self, user: &str, conn: usize) {
        if let Some(entry) = self.users.get_mut(user) {
            entry.conns.retain(|c| *c != conn);
            if entry.conns.is_empty() {
                self.users.remove(user);
                if let Some(interest) = &self.interest {
                    interest.remove(Kind::User, user);
                }
                if let Some(to) = shrunk_capacity(self.users.len(), self.users.capacity()) {
                    self.users.shrink_to(to);
                }
            }
        }
    }

    /// Forgets `conn` in `room`, and the room when it was the last member.
    pub fn remove_member(&mut self, room: &str, conn: usize) {
        remove_from_set(&mut self.rooms, room, conn, self.interest.as_deref().map(|i| (i, Kind::Room)));
    }

    /// Forgets `conn` of `tenant`, and the tenant when it was the last.
    pub fn remove_tenant_member(&mut self, tenant: &str, conn: usize) {
        remove_from_set(&mut self.tenants, tenant, conn, self.interest.as_deref().map(|i| (i, Kind::Tenant)));
    }
}

/// The interest filter to tell, and under which kind, when a set appears or goes.
type Told<'a> = Option<(&'a Interest, Kind)>;

fn add_to_set(sets: &mut AHashMap<Rc<str>, AHashSet<usize>>, name: &str, conn: usize, told: Told) -> Rc<str> {
    match sets.get_key_value(name) {
        Some((interned, _)) => {
            let interned = interned.clone();
            sets.get_mut(name).expect("present").insert(conn);
            interned
        }
        None => {
            let interned: Rc<str> = Rc::from(name);
            let mut members = AHashSet::new();
            members.insert(conn);
            sets.insert(interned.clone(), members);
            if let Some((interest, kind)) = told {
                interest.add(kind, name);
            }
            interned
        }
    }
}

fn remove_from_set(sets: &mut AHashMap<Rc<str>, AHashSet<usize>>, name: &str, conn: usize, told: Told) {
    if let Some(members) = sets.get_mut(name) {
        members.remove(&conn);
        if members.is_empty() {
            sets.remove(name);
            if let Some((interest, kind)) = told {
                interest.remove(kind, name);
            }
            if let Some(to) = shrunk_capacity(sets.len(), sets.capacity()) {
                sets.shrink_to(to);
            }
        } else if let Some(to) = shrunk_capacity(members.len(), members.capacity()) {
            members.shrink_to(to);
        }
    }
}

/// Below this many slots a table is never shrunk: not worth the rehash.
const SHRINK_ABOVE: usize = 1024;

/// The capacity to shrink a table of `len` entries and `capacity` slots to,
/// once a peak has passed (a quarter full or less): room to double again.
/// Amortised, a shrink costs O(1) per removal. Without it, the indexes of a
/// flood of subscribers stay at their peak size after they leave (tens of MiB
/// for a million room memberships).
fn shrunk_capacity(len: usize, capacity: usize) -> Option<usize> {
    (capacity > SHRINK_ABOVE && len * 4 <= capacity).then_some(len * 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_rooms_come_and_go() {
        let mut registry = Registry::default();
        assert!(registry.add_user(&"alice".into(), 1), "alice's first connection");
        assert!(!registry.add_user(&"alice".into(), 2));
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

    #[test]
    fn the_interest_filter_follows_first_and_last_connections() {
        use crate::shard::envelope::Target;
        let interest = Arc::new(Interest::default());
        let mut registry = Registry::new(Some(interest.clone()));
        let none = std::sync::atomic::AtomicU64::new(0);
        let wanted = |target: Target| interest.wanted(interest.probe(&target), &none);
        registry.add_user(&"alice".into(), 1);
        registry.add_user(&"alice".into(), 2);
        registry.add_member("lobby", 1);
        registry.add_tenant_member("acme", 2);
        assert!(wanted(Target::User("alice".into())));
        assert!(wanted(Target::Room("lobby".into())));
        assert!(wanted(Target::Tenant("acme".into())));
        registry.remove_user("alice", 1);
        assert!(wanted(Target::User("alice".into())), "one connection is left");
        registry.remove_user("alice", 2);
        registry.remove_member("lobby", 1);
        registry.remove_tenant_member("acme", 2);
        assert!(!wanted(Target::User("alice".into())));
        assert!(!wanted(Target::Room("lobby".into())));
        assert!(!wanted(Target::Tenant("acme".into())));
    }

    #[test]
    fn tenants_have_member_sets() {
        let mut registry = Registry::default();
        assert!(!registry.has_tenants());
        let a = registry.add_tenant_member("acme", 1);
        let b = registry.add_tenant_member("acme", 2);
        assert!(Rc::ptr_eq(&a, &b));
        registry.add_tenant_member("globex", 3);
        assert_eq!(registry.tenant("acme").map(|members| members.len()), Some(2));
        registry.remove_tenant_member("acme", 1);
        registry.remove_tenant_member("acme", 2);
        assert!(registry.tenant("acme").is_none());
        assert!(registry.has_tenants(), "globex is left");
        registry.remove_tenant_member("globex", 3);
        assert!(!registry.has_tenants());
    }
}
