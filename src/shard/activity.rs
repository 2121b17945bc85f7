//! Least-recent-activity order in O(1) per change, for the replay rings'
//! caps, TTL and byte bounds.
//!
//! Members are ordered by an activity mark that only grows. A move appends
//! the member again with its new mark instead of taking it out of the
//! middle; the place it left is stale and is skipped and dropped when it
//! reaches the front. Whether a place is current (its member still holds
//! that mark) is the owner's to say, which it does through `is_current`.
//! The owner calls [`ActivityOrder::sweep`] before each insert or move (when
//! it can lend its members, before it takes one to change): stale places are
//! swept out once they outnumber the members, so the queue holds at most
//! about twice its members. This replaced a `BTreeMap` keyed
//! by mark, whose insert and remove per message were ~450 instructions of a
//! batch message's ~5,800.

use std::collections::VecDeque;

/// Places swept out early: below this many stale ones, a sweep would cost
/// more than the room it frees.
const SLACK: usize = 32;

/// Members of type `K` by activity, least recent first.
#[derive(Debug)]
pub struct ActivityOrder<K> {
    places: VecDeque<(u64, K)>,
    members: usize,
}

impl<K> Default for ActivityOrder<K> {
    fn default() -> Self {
        ActivityOrder { places: VecDeque::new(), members: 0 }
    }
}

impl<K> ActivityOrder<K> {
    /// How many members it holds.
    pub fn len(&self) -> usize {
        self.members
    }

    /// A new member, active at `mark` (greater than every mark before).
    pub fn insert(&mut self, mark: u64, key: K) {
        self.members += 1;
        self.push(mark, key);
    }

    /// A member moved to `mark` (greater than every mark before); its old
    /// place is stale from now on.
    pub fn moved(&mut self, mark: u64, key: K) {
        self.push(mark, key);
    }

    /// Drops the stale places once they outnumber the members (amortised
    /// O(1) per insert or move); to be called before each of them.
    pub fn sweep(&mut self, is_current: impl Fn(u64, &K) -> bool) {
        if self.places.len() >= 2 * self.members + SLACK {
            // Compacted in one slice: `VecDeque::retain` computes each
            // place's wrapped index (56 instructions a batch message to
            // nobody, amortised, where this takes 43).
            let places = self.places.make_contiguous();
            let mut kept = 0;
            for at in 0..places.len() {
                let (mark, key) = &places[at];
                if is_current(*mark, key) {
                    places.swap(kept, at);
                    kept += 1;
                }
            }
            self.places.truncate(kept);
        }
    }

    /// A member left; its place is stale from now on.
    pub fn removed(&mut self) {
        self.members -= 1;
        if self.members == 0 {
            self.places.clear();
        }
    }

    /// Places held, stale ones included (what the sweep bounds).
    #[cfg(test)]
    pub fn places(&self) -> usize {
        self.places.len()
    }

    /// The least recently active member and its mark, dropping the stale
    /// places in front of it.
    pub fn front(&mut self, is_current: impl Fn(u64, &K) -> bool) -> Option<(u64, &K)> {
        while let Some((mark, key)) = self.places.front() {
            if is_current(*mark, key) {
                break;
            }
            self.places.pop_front();
        }
        self.places.front().map(|(mark, key)| (*mark, key))
    }

    fn push(&mut self, mark: u64, key: K) {
        debug_assert!(self.places.back().is_none_or(|(last, _)| *last < mark), "marks only grow");
        self.places.push_back((mark, key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// An owner: each member's current mark.
    #[derive(Default)]
    struct Marks {
        order: ActivityOrder<&'static str>,
        marks: HashMap<&'static str, u64>,
        next: u64,
    }

    impl Marks {
        fn touch(&mut self, key: &'static str) {
            self.next += 1;
            let marks = &self.marks;
            self.order.sweep(|mark, key| marks.get(key) == Some(&mark));
            match self.marks.insert(key, self.next) {
                None => self.order.insert(self.next, key),
                Some(_) => self.order.moved(self.next, key),
            }
        }

        fn remove(&mut self, key: &'static str) {
            if self.marks.remove(key).is_some() {
                self.order.removed();
            }
        }

        fn oldest(&mut self) -> Option<&'static str> {
            let marks = &self.marks;
            self.order.front(|mark, key| marks.get(key) == Some(&mark)).map(|(_, key)| *key)
        }
    }

    #[test]
    fn the_least_recently_touched_member_is_in_front() {
        let mut owner = Marks::default();
        for key in ["a", "b", "c"] {
            owner.touch(key);
        }
        assert_eq!(owner.oldest(), Some("a"));
        owner.touch("a");
        assert_eq!(owner.oldest(), Some("b"));
        owner.remove("b");
        assert_eq!(owner.oldest(), Some("c"));
        assert_eq!(owner.order.len(), 2);
        owner.remove("c");
        owner.remove("a");
        assert_eq!(owner.oldest(), None);
        assert_eq!(owner.order.len(), 0);
    }

    #[test]
    fn stale_places_never_outgrow_twice_the_members() {
        let mut owner = Marks::default();
        for _ in 0..10_000 {
            for key in ["x", "y", "z"] {
                owner.touch(key);
            }
        }
        assert!(owner.order.places.len() <= 2 * 3 + SLACK + 1, "{} places", owner.order.places.len());
        assert_eq!(owner.oldest(), Some("x"));
    }
}
