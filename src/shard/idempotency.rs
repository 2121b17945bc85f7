//! Remembered answers of publishes sent with an `Idempotency-Key`.
//!
//! Each key lives on one shard (`hash(key) % shards`), so a retry that lands
//! on another connection, shard or moment finds the first answer. Only
//! successful answers are kept; a failed attempt releases the key so the
//! publisher can retry it. Keys are forgotten `--idempotency-window` after
//! their claim, oldest first, and never more than the table's bound are held.

use std::collections::VecDeque;

use ahash::AHashMap;
use bytes::Bytes;

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// New key: the caller publishes, then reports with [`IdempotencyTable::finish`].
    Claimed,
    /// Another request with this key is being published right now.
    InProgress,
    /// Published before: answer with this body again.
    Done(Bytes),
}

#[derive(Debug)]
enum State {
    InProgress,
    Done(Bytes),
}

#[derive(Debug)]
struct Entry {
    state: State,
    claimed_ms: u64,
}

/// The keys owned by one shard.
#[derive(Debug)]
pub struct IdempotencyTable {
    entries: AHashMap<Box<str>, Entry>,
    by_age: VecDeque<(u64, Box<str>)>,
    window_ms: u64,
    max_keys: usize,
}

impl IdempotencyTable {
    /// A table forgetting keys after `window_ms`, holding at most `max_keys`.
    pub fn new(window_ms: u64, max_keys: usize) -> Self {
        IdempotencyTable { entries: AHashMap::new(), by_age: VecDeque::new(), window_ms, max_keys: max_keys.max(1) }
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Looks `key` up, claiming it when new.
    pub fn claim(&mut self, key: &str, now_ms: u64) -> Claim {
        self.expire(now_ms);
        if let Some(entry) = self.entries.get(key) {
            return match &entry.state {
                State::InProgress => Claim::InProgress,
                State::Done(body) => Claim::Done(body.clone()),
            };
        }
        while self.entries.len() >= self.max_keys {
            let Some((claimed, oldest)) = self.by_age.pop_front() else { break };
            self.remove_if_claimed_at(&oldest, claimed);
        }
        self.entries.insert(key.into(), Entry { state: State::InProgress, claimed_ms: now_ms });
        self.by_age.push_back((now_ms, key.into()));
        Claim::Claimed
    }

    /// Stores the answer of a claimed key, or releases it (`None`) after a failure.
    pub fn finish(&mut self, key: &str, answer: Option<Bytes>) {
        match answer {
            Some(body) => {
                if let Some(entry) = self.entries.get_mut(key) {
                    entry.state = State::Done(body);
                }
            }
            None => {
                if matches!(self.entries.get(key), Some(Entry { state: State::InProgress, .. })) {
                    self.entries.remove(key);
                }
            }
        }
    }

    /// Forgets keys claimed more than a window ago.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some((claimed, _)) = self.by_age.front() {
            if now_ms.saturating_sub(*claimed) < self.window_ms {
                break;
            }
            let (claimed, key) = self.by_age.pop_front().expect("front exists");
            self.remove_if_claimed_at(&key, claimed);
        }
    }

    /// A key released and claimed again has a newer entry, which stays.
    fn remove_if_claimed_at(&mut self, key: &str, claimed_ms: u64) {
        if self.entries.get(key).is_some_and(|e| e.claimed_ms == claimed_ms) {
            self.entries.remove(key);
        }
    }
}

/// Checks an `Idempotency-Key` value: 1–256 bytes of visible ASCII.
pub fn valid_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= 256 && key.iter().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_answer_is_remembered_within_the_window() {
        let mut table = IdempotencyTable::new(1_000, 10);
        assert_eq!(table.claim("k", 0), Claim::Claimed);
        assert_eq!(table.claim("k", 1), Claim::InProgress);
        table.finish("k", Some(Bytes::from_static(b"{}")));
        assert_eq!(table.claim("k", 999), Claim::Done(Bytes::from_static(b"{}")));
        assert_eq!(table.claim("k", 1_000), Claim::Claimed, "window passed");
    }

    #[test]
    fn failures_release_the_key() {
        let mut table = IdempotencyTable::new(1_000, 10);
        assert_eq!(table.claim("k", 0), Claim::Claimed);
        table.finish("k", None);
        assert_eq!(table.claim("k", 5), Claim::Claimed);
        table.finish("k", Some(Bytes::from_static(b"ok")));
        // The first claim's expiry must not drop the second claim early.
        table.expire(1_002);
        assert_eq!(table.claim("k", 1_003), Claim::Done(Bytes::from_static(b"ok")));
    }

    #[test]
    fn bounded_by_count_oldest_first() {
        let mut table = IdempotencyTable::new(1_000, 2);
        table.claim("a", 0);
        table.claim("b", 1);
        table.claim("c", 2);
        assert_eq!(table.len(), 2);
        assert_eq!(table.claim("a", 3), Claim::Claimed, "a was forgotten first");
    }

    #[test]
    fn key_syntax() {
        assert!(valid_key(b"order-42"));
        assert!(!valid_key(b""));
        assert!(!valid_key(b"has space"));
        assert!(!valid_key(&[b'x'; 257]));
    }
}
