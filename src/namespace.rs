//! Namespaces: the default one and tenants (API.md "Tenants", "Names").
//!
//! A tenant's users, rooms, replay rings and idempotency keys are kept apart
//! from the default namespace's and from other tenants' by one rule, which
//! lives here and nowhere else: the *internal key* of a name is the name itself
//! in the default namespace and `{tenant}` + [`SEPARATOR`] + `{name}` in a
//! tenant's. The separator is NUL, which no user id, room, tenant name
//! ([`valid_name`]: no control characters) or `Idempotency-Key` (visible ASCII)
//! can contain, so one rule covers all of them and no two keys collide:
//! a default key has no NUL, and a tenant key's first NUL ends the tenant.
//!
//! Internal keys stay inside ssekify: stats count them, the shards index by
//! them and the bus log carries them between instances, but answers and logs
//! carry plain names.

use std::borrow::Cow;

/// Longest user id, room or tenant name, in bytes.
pub const MAX_NAME: usize = 128;

/// Between the tenant and the name in an internal key.
pub const SEPARATOR: char = '\0';

/// True for a valid user id, room or tenant name: 1–128 bytes of UTF-8
/// without control characters, `,` or `/`.
pub fn valid_name(name: &str) -> bool {
    // Every published message's target is checked: printable ASCII, what
    // nearly every name is, eight bytes at a time; else byte by byte. The
    // control characters (Unicode `Cc`) are the one-byte C0 set and DEL, and
    // C1 (U+0080-U+009F), which UTF-8 writes as 0xC2 followed by 0x80-0x9F.
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME
        && (crate::text::plain_name(bytes)
            || !bytes.iter().enumerate().any(|(at, &b)| {
                b < 0x20
                    || b == 0x7f
                    || b == b','
                    || b == b'/'
                    || (b == 0xc2 && bytes.get(at + 1).is_some_and(|next| (0x80..=0x9f).contains(next)))
            }))
}

/// The plain name of an internal key of any namespace (for logs, which
/// carry the tenant apart): what follows the first [`SEPARATOR`], or the
/// whole key in the default namespace.
pub fn plain_name(key: &str) -> &str {
    separator_at(key).map_or(key, |at| &key[at + 1..])
}

/// The tenant of an internal key (`None`: the default namespace).
pub fn tenant_of_key(key: &str) -> Option<&str> {
    separator_at(key).map(|at| &key[..at])
}

/// True for an internal key as a log entry carries it: a valid name, or a
/// valid tenant, the [`SEPARATOR`] and a valid name.
pub fn valid_key(key: &str) -> bool {
    match separator_at(key) {
        None => valid_name(key),
        Some(at) => valid_name(&key[..at]) && valid_name(&key[at + 1..]),
    }
}

/// Where the first [`SEPARATOR`] is: looked up for every message routed, so
/// by a plain byte loop, not a `char` pattern (ten times the cost) nor
/// `memchr` (whose set-up costs more than a name of a few bytes takes).
fn separator_at(key: &str) -> Option<usize> {
    key.bytes().position(|b| b == SEPARATOR as u8)
}

/// The default namespace (`None`) or one tenant's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Namespace(Option<Box<str>>);

impl Namespace {
    /// The namespace of routes without a tenant.
    pub const DEFAULT: Namespace = Namespace(None);

    /// A tenant's namespace; `name` must be a [`valid_name`].
    pub fn tenant(name: &str) -> Namespace {
        debug_assert!(valid_name(name), "tenant names are validated first");
        Namespace(Some(name.into()))
    }

    /// The tenant's name, `None` for the default namespace.
    pub fn tenant_name(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// True for the default namespace.
    pub fn is_default(&self) -> bool {
        self.0.is_none()
    }

    /// The internal key of `name` (a user id, room or idempotency key) in this
    /// namespace; borrowed, with no allocation, in the default namespace.
    pub fn key<'a>(&self, name: &'a str) -> Cow<'a, str> {
        match &self.0 {
            None => Cow::Borrowed(name),
            Some(tenant) => {
                let mut key = String::with_capacity(tenant.len() + 1 + name.len());
                key.push_str(tenant);
                key.push(SEPARATOR);
                key.push_str(name);
                Cow::Owned(key)
            }
        }
    }

    /// True when the internal key `key` belongs to this namespace.
    pub fn owns(&self, key: &str) -> bool {
        match &self.0 {
            None => !key.contains(SEPARATOR),
            Some(tenant) => key.strip_prefix(&**tenant).is_some_and(|rest| rest.starts_with(SEPARATOR)),
        }
    }

    /// The plain name of an internal key of this namespace (what a client or
    /// another instance knows it by); `key` unchanged if it is not this
    /// namespace's.
    pub fn name_of<'a>(&self, key: &'a str) -> &'a str {
        match &self.0 {
            Some(tenant) if self.owns(key) => &key[tenant.len() + 1..],
            _ => key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_a_name_or_a_tenant_and_a_name() {
        assert!(valid_key("alice"));
        assert!(valid_key("acme\0alice"));
        for bad in ["", "acme\0", "\0alice", "acme\0al\0ice", "a/b", "acme\0a,b"] {
            assert!(!valid_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn names() {
        assert!(valid_name("alice"));
        assert!(valid_name("名前"));
        assert!(valid_name("with space"));
        assert!(!valid_name(""));
        assert!(!valid_name("a,b"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("a\tb"));
        assert!(!valid_name("a\0b"));
        assert!(valid_name(&"x".repeat(128)));
        assert!(!valid_name(&"x".repeat(129)));
    }

    #[test]
    fn every_control_character_and_only_those_is_refused() {
        for c in (0..0x3000).chain([0xfeff, 0x1f600]).filter_map(char::from_u32) {
            let refused = c.is_control() || c == ',' || c == '/';
            for name in [format!("{c}"), format!("a{c}"), format!("{c}z"), format!("\u{e9}{c}\u{e9}")] {
                assert_eq!(valid_name(&name), !refused, "{name:?}");
            }
        }
    }

    #[test]
    fn default_keys_are_the_names_themselves() {
        let ns = Namespace::DEFAULT;
        assert!(matches!(ns.key("alice"), Cow::Borrowed("alice")), "no allocation");
        assert!(ns.owns("alice"));
        assert_eq!(ns.name_of("alice"), "alice");
        assert_eq!(ns.tenant_name(), None);
        assert!(ns.is_default());
        assert_eq!(ns, Namespace::default());
    }

    #[test]
    fn tenant_keys_are_apart_from_every_other_namespace() {
        let acme = Namespace::tenant("acme");
        let key = acme.key("alice");
        assert_eq!(key, "acme\0alice");
        assert_eq!(acme.name_of(&key), "alice");
        assert_eq!(plain_name(&key), "alice");
        assert_eq!(plain_name("alice"), "alice");
        assert_eq!(acme.tenant_name(), Some("acme"));
        assert!(acme.owns(&key));
        assert!(!Namespace::DEFAULT.owns(&key), "not the default namespace's");
        assert!(!acme.owns("alice"), "the default alice is not acme's");
        // A tenant whose name starts with another's owns none of its keys.
        let acme2 = Namespace::tenant("acme2");
        assert!(!acme2.owns(&key));
        assert!(!acme.owns(&acme2.key("alice")));
        assert_ne!(acme.key("x"), acme2.key("x"));
        // Idempotency keys may contain '/', which names never do: still apart.
        let slash = Namespace::tenant("a");
        assert_ne!(slash.key("b/c"), Namespace::DEFAULT.key("a/b/c"));
        // Names of another namespace pass through name_of unchanged.
        assert_eq!(acme.name_of("plain"), "plain");
    }
}
