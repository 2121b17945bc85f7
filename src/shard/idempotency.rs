//! Remembered answers of publishes sent with an `Idempotency-Key`.
//!
//! Each key lives on one shard (`hash(key) % shards`), so a retry that lands
//! on another connection, shard or moment finds the first answer. Only
//! successful answers are kept; a failed attempt releases the key so the
//! publisher can retry it, and leaves nothing behind. Keys are forgotten
//! `--idempotency-window` after their claim, and oldest first whenever the
//! shard holds more than its share of `--idempotency-max-keys` or
//! `--idempotency-max-bytes`.
//!
//! Layout, chosen so a key costs little and every removal is O(1): entries
//! sit in one vector (vacant slots chained for reuse), each holding its key
//! and answer in a single boxed slice; a doubly linked list through the
//! entries keeps claim order, and the index maps a key's hash to its entry
//! (entries whose keys share a hash are chained). Nothing holds the key twice.

use std::hash::BuildHasher;
use std::mem::size_of;

use ahash::{AHashMap, RandomState};
use bytes::Bytes;

/// The end of a chain.
const NIL: u32 = u32::MAX;

/// Bytes an entry costs besides its key and answer, charged against
/// `max_bytes` with them: its slot in the entry vector, its index slot (hash
/// and position plus hashbrown's control byte, at the index's highest load
/// of 7/8), and the allocator's header and rounding of the key-and-answer
/// allocation (glibc: an 8-byte header in 16-byte granules, 16 on average).
/// Both arrays double as they grow, so resident memory runs up to one more
/// slot and index slot per entry above this; the measured cost is in the
/// README ("Idempotent publishing").
pub const ENTRY_OVERHEAD: usize = size_of::<Entry>() + (size_of::<(u64, u32)>() + 1) * 8 / 7 + 16;

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// New key: the caller publishes, then reports with [`IdempotencyTable::finish`].
    Claimed(Ticket),
    /// Another request with this key is being published right now.
    InProgress,
    /// Published before: answer with this body again.
    Done(Bytes),
}

/// One claim of a key: finishing a claim the table already forgot (evicted,
/// then claimed again by a retry) must not touch the retry's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(pub u64);

impl Ticket {
    /// Matches no claim: for a publish its key's owner shard never recorded.
    pub const NONE: Ticket = Ticket(u64::MAX);
}

/// Bounds of one shard's table.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyLimits {
    /// How long after its claim a key is remembered.
    pub window_ms: u64,
    /// Keys held at most.
    pub max_keys: usize,
    /// Bytes held at most, counted as in [`IdempotencyTable::bytes`].
    pub max_bytes: usize,
}

/// One key, in progress or done.
#[derive(Debug)]
struct Entry {
    /// The key, followed by the answer once done (answers are never empty).
    data: Box<[u8]>,
    claimed_ms: u64,
    ticket: u64,
    /// Neighbours in claim order; a vacant slot's `newer` is the next vacant one.
    older: u32,
    newer: u32,
    /// The next entry whose key has the same hash.
    same_hash: u32,
    /// Keys are at most 256 bytes plus a tenant prefix of at most 129.
    key_len: u16,
}

impl Entry {
    fn key(&self) -> &[u8] {
        &self.data[..usize::from(self.key_len)]
    }

    fn answer(&self) -> Option<&[u8]> {
        Some(&self.data[usize::from(self.key_len)..]).filter(|answer| !answer.is_empty())
    }

    fn charge(&self) -> usize {
        self.data.len() + ENTRY_OVERHEAD
    }
}

/// The keys owned by one shard; `S` hashes keys.
#[derive(Debug)]
pub struct IdempotencyTable<S = RandomState> {
    entries: Vec<Entry>,
    /// First vacant slot of `entries`.
    vacant: u32,
    /// Key hash → the newest entry with it.
    index: AHashMap<u64, u32>,
    hasher: S,
    oldest: u32,
    newest: u32,
    held: usize,
    bytes: usize,
    next_ticket: u64,
    limits: IdempotencyLimits,
}

impl IdempotencyTable {
    /// An empty table keeping within `limits`.
    pub fn new(limits: IdempotencyLimits) -> Self {
        Self::with_hasher(limits, RandomState::new())
    }
}

impl<S: BuildHasher> IdempotencyTable<S> {
    /// An empty table hashing keys with `hasher` (tests choose one that collides).
    pub fn with_hasher(limits: IdempotencyLimits, hasher: S) -> Self {
        let max_keys = limits.max_keys.clamp(1, NIL as usize);
        IdempotencyTable {
            entries: Vec::new(),
            vacant: NIL,
            index: AHashMap::new(),
            hasher,
            oldest: NIL,
            newest: NIL,
            held: 0,
            bytes: 0,
            next_ticket: 0,
            limits: IdempotencyLimits { max_keys, ..limits },
        }
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.held
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Bytes charged for the keys held: their keys, answers and [`ENTRY_OVERHEAD`] each.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Looks `key` up, claiming it when new. A new claim makes room by
    /// forgetting the oldest keys, but is itself held even when its key
    /// alone is over the byte bound.
    pub fn claim(&mut self, key: &str, now_ms: u64) -> Claim {
        self.expire(now_ms);
        let hash = self.hasher.hash_one(key.as_bytes());
        if let Some(at) = self.find(hash, key.as_bytes()) {
            return match self.entries[at as usize].answer() {
                None => Claim::InProgress,
                Some(answer) => Claim::Done(Bytes::copy_from_slice(answer)),
            };
        }
        while self.held >= self.limits.max_keys {
            self.remove(self.oldest);
        }
        let ticket = self.next_ticket;
        self.next_ticket = ticket + 1;
        let entry = Entry {
            data: key.as_bytes().into(),
            claimed_ms: now_ms,
            ticket,
            older: self.newest,
            newer: NIL,
            same_hash: NIL,
            key_len: u16::try_from(key.len()).expect("keys are checked to be short"),
        };
        let at = self.occupy(entry);
        self.entries[at as usize].same_hash = self.index.insert(hash, at).unwrap_or(NIL);
        while self.bytes > self.limits.max_bytes && self.oldest != at {
            self.remove(self.oldest);
        }
        Claim::Claimed(Ticket(ticket))
    }

    /// Stores the answer of a claim, or forgets the key (`None`) after a
    /// failure. Nothing happens when the claim was already forgotten. Over
    /// the byte bound, keys go oldest first, this one in its turn (an answer
    /// too large for the bound is not kept).
    pub fn finish(&mut self, key: &str, ticket: Ticket, answer: Option<&[u8]>) {
        let hash = self.hasher.hash_one(key.as_bytes());
        let Some(at) = self.find(hash, key.as_bytes()) else { return };
        let entry = &mut self.entries[at as usize];
        if entry.ticket != ticket.0 || entry.answer().is_some() {
            return;
        }
        match answer.filter(|answer| !answer.is_empty()) {
            Some(answer) => {
                let mut data = Vec::with_capacity(entry.data.len() + answer.len());
                data.extend_from_slice(&entry.data);
                data.extend_from_slice(answer);
                entry.data = data.into_boxed_slice();
                self.bytes += answer.len();
                while self.bytes > self.limits.max_bytes {
                    self.remove(self.oldest);
                }
            }
            None => self.remove(at),
        }
    }

    /// Forgets keys claimed a window ago or earlier.
    pub fn expire(&mut self, now_ms: u64) {
        while self.oldest != NIL
            && now_ms.saturating_sub(self.entries[self.oldest as usize].claimed_ms) >= self.limits.window_ms
        {
            self.remove(self.oldest);
        }
    }

    fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        let mut at = *self.index.get(&hash)?;
        while at != NIL {
            let entry = &self.entries[at as usize];
            if entry.key() == key {
                return Some(at);
            }
            at = entry.same_hash;
        }
        None
    }

    /// Puts `entry` in a slot as the newest, counting it.
    fn occupy(&mut self, entry: Entry) -> u32 {
        self.held += 1;
        self.bytes += entry.charge();
        let at = match self.vacant {
            NIL => {
                self.entries.push(entry);
                (self.entries.len() - 1) as u32
            }
            at => {
                self.vacant = self.entries[at as usize].newer;
                self.entries[at as usize] = entry;
                at
            }
        };
        match self.newest {
            NIL => self.oldest = at,
            newest => self.entries[newest as usize].newer = at,
        }
        self.newest = at;
        at
    }

    /// Takes entry `at` out of the claim order, the index and the counts,
    /// freeing its key and answer and making its slot vacant.
    fn remove(&mut self, at: u32) {
        let entry = &mut self.entries[at as usize];
        let data = std::mem::take(&mut entry.data);
        let (older, newer, same_hash) = (entry.older, entry.newer, entry.same_hash);
        entry.newer = self.vacant;
        self.vacant = at;
        match older {
            NIL => self.oldest = newer,
            older => self.entries[older as usize].newer = newer,
        }
        match newer {
            NIL => self.newest = older,
            newer => self.entries[newer as usize].older = older,
        }
        let hash = self.hasher.hash_one(&data[..usize::from(self.entries[at as usize].key_len)]);
        let head = self.index.get_mut(&hash).expect("a held key is indexed");
        if *head == at {
            match same_hash {
                NIL => {
                    self.index.remove(&hash);
                }
                next => *head = next,
            }
        } else {
            let mut before = *head;
            while self.entries[before as usize].same_hash != at {
                before = self.entries[before as usize].same_hash;
            }
            self.entries[before as usize].same_hash = same_hash;
        }
        self.held -= 1;
        self.bytes -= data.len() + ENTRY_OVERHEAD;
    }
}

/// Checks an `Idempotency-Key` value: 1–256 bytes of visible ASCII.
pub fn valid_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= 256 && key.iter().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::hash::{BuildHasherDefault, Hasher};

    use super::*;

    fn limits(max_keys: usize, max_bytes: usize) -> IdempotencyLimits {
        IdempotencyLimits { window_ms: 1_000, max_keys, max_bytes }
    }

    fn table(max_keys: usize, max_bytes: usize) -> IdempotencyTable {
        IdempotencyTable::new(limits(max_keys, max_bytes))
    }

    fn claimed(claim: Claim) -> Ticket {
        match claim {
            Claim::Claimed(ticket) => ticket,
            other => panic!("expected a new claim, got {other:?}"),
        }
    }

    fn done(answer: &'static [u8]) -> Claim {
        Claim::Done(Bytes::from_static(answer))
    }

    /// Claims `key` and stores `answer` for it.
    fn publish<S: BuildHasher>(table: &mut IdempotencyTable<S>, key: &str, answer: &[u8], now_ms: u64) {
        let ticket = claimed(table.claim(key, now_ms));
        table.finish(key, ticket, Some(answer));
    }

    /// Hashes every key to the same few values, so keys share index slots.
    #[derive(Default)]
    struct FewHashes(u64);

    impl Hasher for FewHashes {
        fn finish(&self) -> u64 {
            self.0 % 3
        }

        fn write(&mut self, bytes: &[u8]) {
            self.0 = bytes.iter().fold(self.0, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        }
    }

    /// Every structure agrees: claim order, index, counts.
    fn check<S: BuildHasher>(table: &IdempotencyTable<S>) {
        let (mut held, mut bytes, mut at, mut older) = (0, 0, table.oldest, NIL);
        while at != NIL {
            let entry = &table.entries[at as usize];
            assert_eq!(entry.older, older, "claim order links both ways");
            let hash = table.hasher.hash_one(entry.key());
            assert_eq!(table.find(hash, entry.key()), Some(at), "every held key is found");
            (held, bytes, older, at) = (held + 1, bytes + entry.charge(), at, entry.newer);
        }
        assert_eq!(table.newest, older);
        assert_eq!((table.len(), table.bytes()), (held, bytes));
        let mut chained = 0;
        for &head in table.index.values() {
            let mut at = head;
            while at != NIL {
                chained += 1;
                at = table.entries[at as usize].same_hash;
            }
        }
        assert_eq!(chained, held, "the index reaches exactly the held keys");
        let mut vacant = 0;
        let mut at = table.vacant;
        while at != NIL {
            assert!(table.entries[at as usize].data.is_empty(), "a vacant slot holds nothing");
            vacant += 1;
            at = table.entries[at as usize].newer;
        }
        assert_eq!(held + vacant, table.entries.len(), "every slot is held or vacant");
    }

    #[test]
    fn first_answer_is_remembered_within_the_window() {
        let mut table = table(10, 1 << 20);
        let ticket = claimed(table.claim("k", 0));
        assert_eq!(table.claim("k", 1), Claim::InProgress);
        table.finish("k", ticket, Some(b"{}"));
        assert_eq!(table.claim("k", 999), done(b"{}"));
        claimed(table.claim("k", 1_000));
        check(&table);
    }

    #[test]
    fn a_retry_of_a_completed_key_gets_the_stored_answer() {
        let mut table = table(10, 1 << 20);
        let answer = br#"{"id":"first","delivered":0,"instances":2,"duplicate":true}"#;
        publish(&mut table, "order-42", answer, 0);
        for now in [1, 500, 999] {
            assert_eq!(table.claim("order-42", now), done(answer), "at {now} ms");
        }
        assert_eq!(table.len(), 1, "a retry claims nothing");
    }

    #[test]
    fn failed_keys_leave_no_trace() {
        let mut table = table(2, 1 << 20);
        publish(&mut table, "kept", b"ok", 0);
        let empty = table.bytes();
        for n in 0..10_000 {
            let key = format!("failing-{n}");
            let ticket = claimed(table.claim(&key, 1));
            table.finish(&key, ticket, None);
        }
        check(&table);
        assert_eq!((table.len(), table.bytes()), (1, empty), "only the successful key is held");
        assert_eq!(table.entries.len(), 2, "the failures reused one slot");
        assert_eq!(table.index.len(), 1);
        assert_eq!(table.claim("kept", 2), done(b"ok"), "failures evicted nothing");
        let ticket = claimed(table.claim("failing-7", 3));
        table.finish("failing-7", ticket, Some(b"second try"));
        assert_eq!(table.claim("failing-7", 4), done(b"second try"), "a failed key can be retried");
    }

    #[test]
    fn the_key_bound_evicts_the_oldest() {
        let mut table = table(2, 1 << 20);
        publish(&mut table, "a", b"1", 0);
        publish(&mut table, "b", b"2", 1);
        claimed(table.claim("c", 2));
        assert_eq!(table.len(), 2);
        assert_eq!(table.claim("b", 3), done(b"2"));
        claimed(table.claim("a", 3));
        check(&table);
    }

    #[test]
    fn the_byte_bound_evicts_the_oldest() {
        let answer = [b'x'; 100];
        let one = 1 + answer.len() + ENTRY_OVERHEAD;
        let mut table = table(1_000, 3 * one);
        for key in ["a", "b", "c"] {
            publish(&mut table, key, &answer, 0);
        }
        assert_eq!((table.len(), table.bytes()), (3, 3 * one));
        publish(&mut table, "d", &answer, 1);
        assert_eq!(table.len(), 3);
        assert!(table.bytes() <= 3 * one);
        assert_eq!(table.claim("b", 2), Claim::Done(Bytes::copy_from_slice(&answer)));
        assert_eq!(table.claim("d", 2), Claim::Done(Bytes::copy_from_slice(&answer)));
        claimed(table.claim("a", 2));
        check(&table);
    }

    #[test]
    fn an_answer_over_the_byte_bound_is_not_kept() {
        let mut table = table(10, 200 + ENTRY_OVERHEAD);
        publish(&mut table, "small", b"ok", 0);
        publish(&mut table, "large", &[b'x'; 300], 1);
        check(&table);
        assert!(table.is_empty(), "the older key went first, then the large one");
        claimed(table.claim("large", 2));
    }

    #[test]
    fn finishing_a_forgotten_claim_leaves_a_newer_one_alone() {
        let mut table = table(1, 1 << 20);
        let first = claimed(table.claim("k", 0));
        claimed(table.claim("other", 1));
        let second = claimed(table.claim("k", 2));
        table.finish("k", first, None);
        assert_eq!(table.claim("k", 3), Claim::InProgress, "the retry's claim stands");
        table.finish("k", first, Some(b"late"));
        table.finish("k", second, Some(b"retry"));
        assert_eq!(table.claim("k", 4), done(b"retry"));
    }

    #[test]
    fn expiry_follows_claim_order() {
        let mut table = table(10, 1 << 20);
        publish(&mut table, "a", b"1", 0);
        publish(&mut table, "b", b"2", 600);
        table.expire(1_000);
        assert_eq!(table.len(), 1);
        assert_eq!(table.claim("b", 1_599), done(b"2"));
        table.expire(1_600);
        assert!(table.is_empty());
        check(&table);
    }

    #[test]
    fn keys_sharing_a_hash_stay_apart() {
        let mut table = IdempotencyTable::with_hasher(limits(6, 1 << 20), BuildHasherDefault::<FewHashes>::default());
        // A fixed pseudo-random mix of claims, successes and failures over
        // 13 keys in 3 hashes, with expiry and the key bound at work, against
        // a plain list of (key, claimed at, answer) in claim order.
        let mut model: VecDeque<(String, u64, Vec<u8>)> = VecDeque::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for step in 0..5_000u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let key = format!("key-{}", seed % 13);
            let now = step * 50;
            model.retain(|(_, claimed, _)| now - claimed < 1_000);
            match table.claim(&key, now) {
                Claim::Done(answer) => {
                    let held = model.iter().find(|(k, _, _)| *k == key).expect("the model holds it");
                    assert_eq!(answer, held.2, "step {step}: {key}");
                }
                Claim::InProgress => panic!("step {step}: every claim was finished"),
                Claim::Claimed(ticket) => {
                    assert!(model.iter().all(|(k, _, _)| *k != key), "step {step}: {key} was held");
                    if model.len() == 6 {
                        model.pop_front();
                    }
                    if seed % 3 == 0 {
                        table.finish(&key, ticket, None);
                    } else {
                        let answer = format!("{key} at {step}").into_bytes();
                        table.finish(&key, ticket, Some(&answer));
                        model.push_back((key, now, answer));
                    }
                }
            }
            check(&table);
            assert_eq!(table.len(), model.len(), "step {step}");
        }
    }

    #[test]
    fn key_syntax() {
        assert!(valid_key(b"order-42"));
        assert!(!valid_key(b""));
        assert!(!valid_key(b"has space"));
        assert!(!valid_key(&[b'x'; 257]));
    }
}
