//! Which bus messages somebody on a shard may want, readable by the bus
//! thread without asking the shard.
//!
//! A counting filter over the users, rooms and tenants with a connection on
//! the shard (each counted once, when its first connection comes and its
//! last goes); a broadcast is wanted while the shard's connection gauge
//! ([`crate::metrics::ShardStats`]) is above zero. A message
//! whose target is not in it reaches nobody here: the bus queues it for
//! the shard's replay rings without waking the shard for it ([`super::lane`]).
//! A collision only costs a wake-up, never a message. The shard changes it;
//! the bus thread reads it after queueing, each side with a fence between,
//! so a target that gains a connection while a message for it is being
//! queued either is seen by the bus or finds the message in the lane.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};

use super::envelope::Target;

/// Slots of the filter: 128 KiB a shard (untouched pages are never
/// resident), under a tenth of them taken by 6,000 names.
const SLOTS: usize = 1 << 16;

/// What kind of name a slot counts (a user and a room of one name differ).
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub enum Kind {
    /// A user's key.
    User = 1,
    /// A room's key.
    Room = 2,
    /// A tenant's name (its broadcasts).
    Tenant = 3,
}

/// Where to look for a target's wanters, found before its message is queued
/// and read after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A slot of the filter.
    Slot(u32),
    /// Any connection at all (a broadcast).
    AnyConnection,
    /// Always wanted (a connection's own target, anything not a message).
    Always,
}

impl Probe {
    /// For an envelope the shard must have now (anything but a message).
    pub const NOW: &'static [Probe] = &[Probe::Always];
}

/// One shard's filter (see the module documentation).
pub struct Interest {
    slots: Box<[AtomicU16]>,
    hasher: ahash::RandomState,
}

impl std::fmt::Debug for Interest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let taken = self.slots.iter().filter(|slot| slot.load(Ordering::Relaxed) != 0).count();
        f.debug_struct("Interest").field("slots_taken", &taken).finish()
    }
}

impl Default for Interest {
    fn default() -> Self {
        Interest {
            slots: (0..SLOTS).map(|_| AtomicU16::new(0)).collect(),
            hasher: ahash::RandomState::with_seeds(0x1e7e, 0x57ed, 0xb0b5, 0xcafe),
        }
    }
}

impl Interest {
    /// `name` of `kind` has its first connection here.
    pub fn add(&self, kind: Kind, name: &str) {
        let slot = &self.slots[self.slot(kind, name) as usize];
        // Saturates: a full slot stays full (wanted) rather than wrap to "nobody".
        let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
    }

    /// `name` of `kind` lost its last connection here.
    pub fn remove(&self, kind: Kind, name: &str) {
        let slot = &self.slots[self.slot(kind, name) as usize];
        let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| match n {
            0 | u16::MAX => None,
            n => Some(n - 1),
        });
    }

    /// Where a message to `target` finds its wanters.
    pub fn probe(&self, target: &Target) -> Probe {
        match target {
            Target::User(key) => Probe::Slot(self.slot(Kind::User, key)),
            Target::Room(key) => Probe::Slot(self.slot(Kind::Room, key)),
            Target::Tenant(name) => Probe::Slot(self.slot(Kind::Tenant, name)),
            Target::All => Probe::AnyConnection,
            Target::Connection(_) => Probe::Always,
        }
    }

    /// True when somebody here may want what `probe` was found for, the
    /// shard having `connections` open (its gauge).
    pub fn wanted(&self, probe: Probe, connections: &AtomicU64) -> bool {
        match probe {
            Probe::Slot(slot) => self.slots[slot as usize].load(Ordering::Relaxed) != 0,
            Probe::AnyConnection => connections.load(Ordering::Relaxed) != 0,
            Probe::Always => true,
        }
    }

    fn slot(&self, kind: Kind, name: &str) -> u32 {
        (self.hasher.hash_one((kind as u8, name)) as usize % SLOTS) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::envelope::ConnId;

    #[test]
    fn a_target_is_wanted_while_it_has_a_connection() {
        let (interest, none) = (Interest::default(), AtomicU64::new(0));
        let alice = interest.probe(&Target::User("alice".into()));
        assert!(!interest.wanted(alice, &none));
        interest.add(Kind::User, "alice");
        assert!(interest.wanted(alice, &none));
        let room = interest.probe(&Target::Room("alice".into()));
        assert!(!interest.wanted(room, &none), "a room of the same name is another");
        interest.remove(Kind::User, "alice");
        assert!(!interest.wanted(alice, &none));
        let connection = Target::Connection(ConnId { instance: 1, shard: 0, slot: 0, serial: 1 });
        assert!(interest.wanted(interest.probe(&connection), &none));
    }

    #[test]
    fn broadcasts_are_wanted_while_any_connection_is_open() {
        let (interest, connections) = (Interest::default(), AtomicU64::new(0));
        let all = interest.probe(&Target::All);
        assert!(!interest.wanted(all, &connections));
        connections.store(1, Ordering::Relaxed);
        assert!(interest.wanted(all, &connections));
    }

    #[test]
    fn a_full_slot_stays_wanted() {
        let interest = Interest::default();
        let Probe::Slot(slot) = interest.probe(&Target::Room("lobby".into())) else { panic!("a slot") };
        interest.slots[slot as usize].store(u16::MAX, Ordering::Relaxed);
        interest.add(Kind::Room, "lobby");
        interest.remove(Kind::Room, "lobby");
        assert!(interest.wanted(Probe::Slot(slot), &AtomicU64::new(0)));
    }
}
