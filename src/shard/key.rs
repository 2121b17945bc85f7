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
