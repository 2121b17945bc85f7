//! The name a [`super::envelope::Target`] carries: a user's, room's or
//! tenant's internal key.
//!
//! Every published message has a target, made from the request and dropped
//! once delivered: with the key on the heap that was an allocation and a
//! free a message, ~200 instructions of a batch message's ~4,300 (glibc's
//! per-thread cache holds 7 chunks of a size, and a batch frees its keys 100
//! at a time). Most user ids and room names are short, so a key of up to
//! [`INLINE`] bytes is held in place, and copied by its bytes (a bus entry's
//! run of messages to one user copies it per message: a shared key's count
//! went up on the bus thread and down on the shard for each, a cache line
//! passed between the cores every time); a longer one is shared (`Arc`), so
//! the copies of a target (a room's delivery to every shard, a bus entry's
//! run) cost a reference count, not a copy of the name.
//!
//! A shard's maps of users and of replay rings are keyed by it too: a
//! lookup compares the key in the map's own slot, where a shared name cost
//! one more cache miss a message to read its text (`perf annotate` of a
//! batch to 10,000 users put ~4 % of the server's time on that read).

use std::borrow::{Borrow, Cow};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// Bytes held in place: a key takes 24 bytes either way.
pub const INLINE: usize = 22;

/// A target's key; reads as the `str` it was made from.
#[derive(Clone)]
pub struct Key(Repr);

/// Inline keys have zeros past their length, so equal ones are equal arrays.
#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Arc<str>),
}

impl From<&str> for Key {
    fn from(text: &str) -> Self {
        if text.len() > INLINE {
            return Key(Repr::Shared(Arc::from(text)));
        }
        let mut bytes = [0; INLINE];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Key(Repr::Inline { len: text.len() as u8, bytes })
    }
}

/// The empty key (the broadcast ring's name).
impl Default for Key {
    fn default() -> Self {
        Key::from("")
    }
}

// A long key is copied into the `Arc` whatever it came from (an `Arc<str>`
// cannot take over a `String`'s buffer), so these read the text as `&str`.
impl From<String> for Key {
    fn from(text: String) -> Self {
        Key::from(text.as_str())
    }
}

impl From<Cow<'_, str>> for Key {
    fn from(text: Cow<'_, str>) -> Self {
        Key::from(&*text)
    }
}

impl Deref for Key {
    type Target = str;

    #[inline]
    fn deref(&self) -> &str {
        match &self.0 {
            // SAFETY: the bytes were copied whole from a `str` (`From<&str>`),
            // so the first `len` are UTF-8; checking them again on every read
            // would cost what the inline key saves.
            Repr::Inline { len, bytes } => unsafe { std::str::from_utf8_unchecked(&bytes[..usize::from(*len)]) },
            Repr::Shared(text) => text,
        }
    }
}

impl PartialEq for Key {
    // Always: left to the compiler it stayed a call, ~3 a batch message
    // (the look ahead's runs, a kept slot's check, a map's probe).
    #[inline(always)]
    fn eq(&self, other: &Key) -> bool {
        match (&self.0, &other.0) {
            (Repr::Inline { len: a, bytes: x }, Repr::Inline { len: b, bytes: y }) => a == b && words(x) == words(y),
            // The copies of one long target (a bus entry's run) by their pointer.
            (Repr::Shared(a), Repr::Shared(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => **self == **other,
        }
    }
}

impl Eq for Key {}

// Hashed and borrowed as its text, so a map keyed by it is searched by `&str`.
impl Hash for Key {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl Borrow<str> for Key {
    #[inline]
    fn borrow(&self) -> &str {
        self
    }
}

/// A stand-in for a key that equals every key: a map searched by it stops
/// at the first slot whose hash tag matches the key's, without reading that
/// slot's key, the line a lookup of the key itself then waits for
/// ([`prefetch_slot`]). Equal to anything, it breaks `Borrow`'s rule that a
/// key and its borrowed form compare alike, so a search by it may stop at
/// another key's slot: a logic error, which `HashMap` documents as never
/// undefined behaviour. Hence it serves only as a prefetch hint and stays
/// in this module.
#[repr(transparent)]
struct AnySlotFor(Key);

impl Hash for AnySlotFor {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for AnySlotFor {
    #[inline]
    fn eq(&self, _: &AnySlotFor) -> bool {
        true
    }
}

impl Eq for AnySlotFor {}

impl Borrow<AnySlotFor> for Key {
    #[inline]
    fn borrow(&self) -> &AnySlotFor {
        AnySlotFor::of(self)
    }
}

impl AnySlotFor {
    #[inline]
    fn of(key: &Key) -> &AnySlotFor {
        // SAFETY: `AnySlotFor` is `repr(transparent)` over `Key`: the same
        // layout, so a reference to one is a valid reference to the other.
        unsafe { &*(key as *const Key).cast::<AnySlotFor>() }
    }
}

/// Asks for the cache line of `map`'s slot where `key`'s entry most likely
/// is, without reading it ([`crate::prefetch`]): a lookup by name waits
/// first for the table's control bytes, which mostly stay in the caches (a
/// byte a slot), then for the slot, whose key it compares, which does not
/// (a batch to 10,000 users: a third of the delivery loop's samples, `perf
/// annotate`, sat on that comparison). Asked for a few messages ahead, the
/// lookup finds it arrived. A slot of another key whose tag matches is a
/// wasted hint, nothing more.
#[inline]
pub fn prefetch_slot<V, S: std::hash::BuildHasher>(map: &std::collections::HashMap<Key, V, S>, key: &Key) {
    if let Some((slot, _)) = map.get_key_value(AnySlotFor::of(key)) {
        crate::prefetch::line(slot);
    }
}

/// An inline key's bytes as three words (the last two overlapping): zeros
/// past the length, so equal keys have equal words, compared without the
/// call to `memcmp` a byte array's comparison makes (a bus entry's run
/// compares each message's target with the one before).
#[inline]
fn words(bytes: &[u8; INLINE]) -> [u64; 3] {
    let word = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    [word(0), word(8), word(INLINE - 8)]
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_as_made_whatever_their_length() {
        for len in [0, 1, INLINE - 1, INLINE, INLINE + 1, 300] {
            let text: String = "é".repeat(len / 2) + &"x".repeat(len % 2);
            for key in [Key::from(text.as_str()), Key::from(text.clone()), Key::from(Cow::Borrowed(text.as_str()))] {
                assert_eq!(&*key, text, "{len} bytes");
                assert_eq!(key, Key::from(text.as_str()));
                assert_eq!(key.clone(), key);
            }
        }
        assert_ne!(Key::from("a"), Key::from("b"));
        assert_ne!(Key::from("x".repeat(40)), Key::from("y".repeat(40)));
        assert_eq!(std::mem::size_of::<Key>(), 24);
    }

    #[test]
    fn a_map_keyed_by_keys_is_searched_by_their_text() {
        let mut map = ahash::AHashMap::new();
        for name in ["alice", "", &"long-".repeat(10)] {
            map.insert(Key::from(name), name.len());
        }
        assert_eq!(map.get("alice"), Some(&5));
        assert_eq!(map.get(""), Some(&0));
        assert_eq!(map.get("long-".repeat(10).as_str()), Some(&50));
        assert_eq!(map.get("bob"), None);
    }

    #[test]
    fn a_slot_is_asked_for_without_changing_what_a_lookup_finds() {
        let mut map = ahash::AHashMap::new();
        for i in 0..1000 {
            map.insert(Key::from(format!("u{i}")), i);
        }
        for name in ["u0", "u999", "nobody", &"long-".repeat(10)] {
            let key = Key::from(name);
            let before = map.get(&key).copied();
            prefetch_slot(&map, &key);
            assert_eq!(map.get(&key).copied(), before, "{name}");
        }
        // The hint points at the key's own slot but for a tag shared with a
        // slot probed before it (7 bits: rare at this load).
        let own = (0..1000)
            .map(|i| Key::from(format!("u{i}")))
            .filter(|key| map.get_key_value(AnySlotFor::of(key)).is_some_and(|(slot, _)| slot == key))
            .count();
        assert!(own > 950, "{own} of 1000 hints at the key's own slot");
        prefetch_slot(&ahash::AHashMap::<Key, u8>::new(), &Key::from("u7"));
    }

    #[test]
    fn short_keys_are_held_in_place_and_long_ones_shared_by_their_copies() {
        assert!(matches!(Key::from("user-12345").0, Repr::Inline { .. }));
        let long = Key::from("acme\0a-user-id-longer-than-inline");
        let copy = long.clone();
        let shared = |a: &Key, b: &Key| matches!((&a.0, &b.0), (Repr::Shared(a), Repr::Shared(b)) if Arc::ptr_eq(a, b));
        assert!(shared(&long, &copy), "a copy shares the key");
        assert!(!shared(&long, &Key::from(&*long)), "an equal key made apart is not the same allocation");
        assert_eq!(long, Key::from(&*long));
        let long_owned = Key::from(String::from(&*long));
        assert!(matches!(long_owned.0, Repr::Shared(_)) && long_owned == long, "made from a String alike");
        assert!(matches!(Key::from(String::from("short")).0, Repr::Inline { .. }));
    }
}
