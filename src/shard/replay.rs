//! Per-shard replay rings for `Last-Event-ID` resume.
//!
//! A ring holds `(arrival sequence, shared frame)` — never a copy: the frame is
//! the same `Bytes` every recipient got, and its id is read back from the
//! frame's first line. There is a ring per user (on the user's owner shard),
//! per room, one for the default namespace's broadcasts and one per tenant for
//! that tenant's broadcasts (on every shard, since room and broadcast frames
//! reach every shard). User and room rings are named by internal keys
//! ([`crate::namespace`]), so each tenant has its own. Rings are kept whether or
//! not anyone is connected, expire after `--recent-ttl` without a new message,
//! and are evicted least-recently-active first beyond `--recent-max-users`,
//! `--recent-max-rooms` (room rings and tenant broadcast rings, each kind
//! bounded by it) or `--recent-max-bytes` (each shard enforces its share).
//!
//! A user with a connection on this shard is pinned ([`ReplayStore::pin_user`]):
//! its ring is out of reach of the user cap and the TTL, so a reconnect after a
//! network blip resumes however many users are connected. Its TTL starts again
//! when its last connection goes. Over the byte bound, the rings the caps may
//! drop go first (least recently active first); when only pinned rings and the
//! broadcast ring are left, the least recently active of them loses its oldest
//! entries, recorded as wrap-around so a resume that needed them gets the gap.
//! Activity is a message to the ring, or a connection of its user (pinning
//! counts as activity). Every bound costs amortised O(1) per message, ring
//! evicted or entry dropped, never a scan (the orders are `shard::activity`
//! queues, not trees).
//!
//! A tenant's rings (its users', rooms' and broadcast ring) are also counted
//! per tenant, and a tenant with a `recentMaxBytes` ([`TenantBudgets`]; this
//! shard's share of it, as with `--recent-max-bytes`) over its budget loses
//! its own least recently active rings first, never another namespace's: a
//! ring of a user without a connection, a room ring or its broadcast ring
//! goes whole, a connected user's ring loses its oldest entries (recorded as
//! wrap-around, so a resume that needed them gets the gap).
//!
//! A resume merges the rings that apply to a connection by arrival sequence,
//! so replayed frames come in the order they were published on this shard.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use ahash::{AHashMap, AHashSet};
use bytes::Bytes;
use slab::Slab;

use super::activity::ActivityOrder;
use super::key::{self, Key};
use crate::namespace::{tenant_of_key, Namespace};
use crate::sse::frame::{self, encode_control};
use crate::tenants::TenantConfig;

/// Event name of the in-band "you may have missed messages" notice.
pub const GAP_EVENT: &str = "ssekify.gap";

/// Sizes and lifetimes of one shard's rings.
#[derive(Debug, Clone, Copy)]
pub struct ReplayLimits {
    /// Entries per ring; 0 disables replay.
    pub entries: usize,
    /// Rings without a new message for this long are dropped (0 = never).
    pub ttl_ms: u64,
    /// Rings of users without a connection here kept on this shard.
    pub max_users: usize,
    /// Room rings kept on this shard (and, apart, tenant broadcast rings).
    pub max_rooms: usize,
    /// Frame bytes referenced by this shard's rings.
    pub max_bytes: usize,
}

/// What [`ReplayStore::prefetch_user`] asks for: first the ring's own lines,
/// then, once they have arrived, the frame its oldest entry holds (whose
/// address is in them).
#[derive(Debug, Clone, Copy)]
pub enum Ahead {
    /// The ring itself, its oldest entry (a full ring writes the new one
    /// there) and its activity mark.
    Ring,
    /// The oldest entry's frame, dropped when the next one is recorded.
    Frame,
}

/// Which ring a published frame belongs to.
#[derive(Debug, Clone, Copy)]
pub enum Stream<'a> {
    /// A user's messages.
    User(&'a Key),
    /// A user's messages, with where its ring was last found (kept beside
    /// its connections by the registry): the ring is taken from that slot
    /// when it is still this user's, and the slot kept up to date.
    UserAt(&'a Key, &'a Cell<Option<u32>>),
    /// A room's messages.
    Room(&'a Key),
    /// The default namespace's broadcasts.
    All,
    /// One tenant's broadcasts.
    Tenant(&'a Key),
}

impl<'a> Stream<'a> {
    /// The slot kept for a user's ring beside its connections, if any.
    fn kept_slot(self) -> Option<&'a Cell<Option<u32>>> {
        match self {
            Stream::UserAt(_, kept) => Some(kept),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    id_len: u16,
    /// [`id_print`] of its id: a look for an id reads the ring's entries
    /// alone, not each frame's bytes elsewhere in memory.
    id_print: u32,
    frame: Bytes,
}

impl Entry {
    fn id(&self) -> &[u8] {
        &self.frame[4..4 + self.id_len as usize]
    }

    /// True when its id is `id`, whose [`id_print`] is `print`.
    fn has_id(&self, id: &[u8], print: u32) -> bool {
        self.id_print == print && self.id() == id
    }
}

/// A 32-bit print of an id: its first, middle and last eight bytes mixed
/// (a generated id's digits of time and its sequence differ between any two
/// in a ring), a third of a general hash's cost; two ids that share a print
/// cost a comparison, never a wrong answer.
fn id_print(id: &[u8]) -> u32 {
    let word = |at: usize| u64::from_le_bytes(id[at..at + 8].try_into().expect("8 bytes"));
    let (head, middle, tail) = match id.len() {
        len @ 8.. => (word(0), word(len / 2 - 4), word(len - 8)),
        len => {
            let mut padded = [0u8; 8];
            padded[..len].copy_from_slice(id);
            (u64::from_le_bytes(padded), 0, 0)
        }
    };
    let mixed =
        (head ^ middle.rotate_left(21) ^ tail.rotate_left(42) ^ id.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> 32) as u32
}

impl Ring {
    /// True when an entry has the id `id`, whose [`id_print`] is `print`.
    fn holds(&self, id: &[u8], print: u32) -> bool {
        self.entries.iter().any(|e| e.has_id(id, print))
    }
}

#[derive(Debug, Default)]
struct Ring {
    /// The name it is kept under (the map's key).
    name: Key,
    entries: VecDeque<Entry>,
    /// Sequence of the newest entry pushed out by wrap-around (0: none).
    wrapped_through: u64,
    /// Sequence counter value when the ring was created.
    created_at: u64,
    last_active_ms: u64,
    /// Its user has a connection here: out of reach of the count cap and TTL.
    pinned: bool,
    /// The tenant it belongs to (`None`: the default namespace).
    tenant: Option<Rc<str>>,
}

/// The per-tenant byte budgets of one shard: each tenant's `recentMaxBytes`
/// divided among the shards, as `--recent-max-bytes` is.
#[derive(Debug, Clone, Default)]
pub struct TenantBudgets {
    /// The tenant config in force on this shard (`None`: no budgets).
    pub config: Option<Arc<TenantConfig>>,
    /// Shards the budgets are shared among.
    pub shards: usize,
}

impl TenantBudgets {
    /// This shard's share of `tenant`'s budget, if it has one.
    fn of(&self, tenant: &str) -> Option<usize> {
        let bytes = self.config.as_ref()?.limits(tenant).recent_max_bytes?;
        Some(bytes.div_ceil(self.shards.max(1)).max(1))
    }
}

/// One tenant's share of this store.
#[derive(Debug, Default)]
struct TenantUse {
    /// Frame bytes its rings reference.
    bytes: usize,
    /// Its rings (by kind and slot), least recently active first.
    order: ActivityOrder<(KeyedKind, usize)>,
}

/// The ring a record goes to: its slot (`None`: the default namespace's
/// broadcast ring, in no map), its activity mark now, and whether the record
/// created it.
struct Touched<'a> {
    ring: &'a mut Ring,
    slot: Option<usize>,
    touch: u64,
    created: bool,
}

/// The activity marks a record may give its ring: `fresh` (the next one),
/// unless the ring already has `latest`, the newest given out.
#[derive(Debug, Clone, Copy)]
struct Touches {
    latest: u64,
    fresh: u64,
}

/// Rings by name with least-recently-active order. The rings stay at their
/// slot while they live, and the orders hold slots: whether a place is
/// current is a read of its slot's mark in `marks`, 8 bytes a ring side by
/// side, not a lookup of the ring by name, which missed the cache about four
/// times a place with 10,000 users (`benches/cachesim.py`).
#[derive(Debug, Default)]
struct Keyed {
    /// Each ring's slot by name.
    slots: AHashMap<Key, usize>,
    rings: Slab<Ring>,
    /// Each slot's ring's activity mark, its place in the orders; 0 for an
    /// empty slot (marks start at 1).
    marks: Vec<u64>,
    /// Rings the count cap and the TTL may drop, least recently active first.
    order: ActivityOrder<usize>,
    /// Pinned rings, least recently active first (only the byte bound shortens them).
    pinned: ActivityOrder<usize>,
    /// Newest sequence held by a ring that was dropped whole (evicted, expired, cleared).
    forgotten_through: u64,
}

/// What a connection gets before going live.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// True when the client must be told it may have missed messages.
    pub gap: bool,
    /// Frames to send, in arrival order.
    pub frames: Vec<Bytes>,
}

/// Counts for stats and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayUsage {
    /// User rings held.
    pub users: usize,
    /// Room rings held, tenant broadcast rings included.
    pub rooms: usize,
    /// Entries across all rings.
    pub entries: usize,
    /// Frame bytes referenced by those entries.
    pub bytes: usize,
}

/// All rings of one shard.
#[derive(Debug)]
pub struct ReplayStore {
    limits: ReplayLimits,
    users: Keyed,
    rooms: Keyed,
    tenants: Keyed,
    broadcast: Ring,
    /// The broadcast ring's activity mark (the other rings' are their
    /// [`Keyed`]'s `marks`).
    broadcast_touch: u64,
    broadcast_forgotten_through: u64,
    /// Users with a connection on this shard (their rings are pinned).
    connected: AHashSet<Key>,
    next_seq: u64,
    next_touch: u64,
    entries: usize,
    bytes: usize,
    /// Per tenant with rings here: its bytes and its rings by activity.
    tenant_use: AHashMap<Rc<str>, TenantUse>,
    budgets: TenantBudgets,
}

impl ReplayStore {
    /// An empty store.
    pub fn new(limits: ReplayLimits) -> Self {
        ReplayStore {
            limits,
            users: Keyed::default(),
            rooms: Keyed::default(),
            tenants: Keyed::default(),
            broadcast: Ring::default(),
            broadcast_touch: 0,
            broadcast_forgotten_through: 0,
            connected: AHashSet::new(),
            next_seq: 0,
            next_touch: 0,
            entries: 0,
            bytes: 0,
            tenant_use: AHashMap::new(),
            budgets: TenantBudgets::default(),
        }
    }

    /// Puts new per-tenant budgets in force (at start and on a reload of
    /// the tenant config); a tenant now over its budget is trimmed at its
    /// next message, so a reload does no work on the shard at once.
    pub fn set_budgets(&mut self, budgets: TenantBudgets) {
        self.budgets = budgets;
    }

    /// Frame bytes `tenant`'s rings reference here.
    pub fn tenant_bytes(&self, tenant: &str) -> usize {
        self.tenant_use.get(tenant).map_or(0, |u| u.bytes)
    }

    /// Every tenant with rings here and their bytes.
    pub fn tenants_bytes(&self) -> impl Iterator<Item = (&str, usize)> {
        self.tenant_use.iter().map(|(name, u)| (&**name, u.bytes))
    }

    /// The slot of `user`'s ring, if it has one, and whether it is pinned:
    /// one that is not says its user has no connection here
    /// ([`ReplayStore::pin_user`] pins the ring of every user with one).
    pub fn user_ring(&self, user: &Key) -> Option<(u32, bool)> {
        let slot = *self.users.slots.get(user)?;
        Some((u32::try_from(slot).ok()?, self.users.rings.get(slot)?.pinned))
    }

    /// Asks for the line [`ReplayStore::user_ring`] of `user` will wait for
    /// ([`key::prefetch_slot`]).
    pub fn prefetch_ring_slot(&self, user: &Key) {
        key::prefetch_slot(&self.users.slots, user);
    }

    /// Asks for what recording a frame to `user` will touch, a few
    /// messages before it is recorded ([`crate::prefetch`]): with
    /// [`Ahead::Ring`], every line of its ring and of its oldest entry, and
    /// its activity mark, at the slot `found` already holds (one the
    /// registry kept) or else looked up by name and the slot kept in `found`
    /// (so that the record, as [`Stream::UserAt`], does not look it up
    /// again); with [`Ahead::Frame`], that entry's frame, at the slot
    /// `found` holds. A slot another ring has taken since only asks for the
    /// wrong lines.
    pub fn prefetch_user(&self, user: &Key, found: &Cell<Option<u32>>, ahead: Ahead) {
        let keyed = &self.users;
        let slot = match (ahead, found.get()) {
            (Ahead::Ring, Some(kept)) => kept as usize,
            (Ahead::Ring, None) => {
                let Some(&slot) = keyed.slots.get(user) else { return };
                found.set(u32::try_from(slot).ok());
                slot
            }
            (Ahead::Frame, Some(slot)) => slot as usize,
            (Ahead::Frame, None) => return,
        };
        let Some(ring) = keyed.rings.get(slot) else { return };
        let Some(oldest) = ring.entries.front() else { return };
        match ahead {
            Ahead::Ring => {
                // Every line of both: the record reads most of their fields,
                // and an entry (48 bytes) or a ring straddles two lines as
                // often as not (`perf annotate`: a third of the record's
                // samples waited on the oldest entry's second line).
                crate::prefetch::lines((ring as *const Ring).cast(), std::mem::size_of::<Ring>());
                crate::prefetch::lines((oldest as *const Entry).cast(), std::mem::size_of::<Entry>());
                if let Some(mark) = keyed.marks.get(slot) {
                    crate::prefetch::line(mark);
                }
            }
            Ahead::Frame => frame::prefetch_for_drop(&oldest.frame),
        }
    }

    /// False when `--recent-buffer 0` disabled replay.
    pub fn enabled(&self) -> bool {
        self.limits.entries > 0
    }

    /// Current usage.
    pub fn usage(&self) -> ReplayUsage {
        ReplayUsage {
            users: self.users.rings.len(),
            rooms: self.rooms.rings.len() + self.tenants.rings.len(),
            entries: self.entries,
            bytes: self.bytes,
        }
    }

    /// Records a frame published to `stream` (frames start with `id: <id>\n`).
    /// With `skip_known` (a frame from another instance) a frame whose id
    /// the ring already holds is a repeat: nothing is recorded and the
    /// answer is false (deliver it to nobody).
    pub fn record(&mut self, stream: Stream<'_>, frame: Bytes, now_ms: u64, skip_known: bool) -> bool {
        if !self.enabled() {
            return true;
        }
        let Some(id_len) = frame_id_len(&frame) else { return true };
        let id = &frame[4..4 + id_len as usize];
        let id_print = id_print(id);
        let known = |ring: &Ring| skip_known && ring.holds(id, id_print);
        let (seq, capacity) = (self.next_seq + 1, self.limits.entries);
        let touches = Touches { latest: self.next_touch, fresh: self.next_touch + 1 };
        let (Touched { ring, slot, touch, created }, kind) = match stream {
            Stream::All if known(&self.broadcast) => return false,
            Stream::All => {
                self.broadcast_touch = touches.fresh;
                let touched = Touched { ring: &mut self.broadcast, slot: None, touch: touches.fresh, created: false };
                (touched, KeyedKind::Users)
            }
            Stream::User(name) | Stream::UserAt(name, _) => {
                let connected = &self.connected;
                let kept = stream.kept_slot();
                let Some(touched) = self.users.touch(name, kept, touches, seq, || connected.contains(name), known)
                else {
                    return false;
                };
                (touched, KeyedKind::Users)
            }
            Stream::Room(name) => {
                let Some(touched) = self.rooms.touch(name, None, touches, seq, || false, known) else { return false };
                (touched, KeyedKind::Rooms)
            }
            Stream::Tenant(name) => {
                let Some(touched) = self.tenants.touch(name, None, touches, seq, || false, known) else { return false };
                (touched, KeyedKind::Tenants)
            }
        };
        (self.next_seq, self.next_touch) = (seq, touch);
        let frame_len = frame.len();
        let entry = Entry { seq, id_len, id_print, frame };
        if created {
            let tenant = match stream {
                Stream::All => None,
                Stream::User(key) | Stream::UserAt(key, _) | Stream::Room(key) => tenant_of_key(key),
                Stream::Tenant(name) => Some(&**name),
            };
            if let Some(tenant) = tenant {
                ring.tenant = Some(intern(&mut self.tenant_use, tenant));
            }
        }
        ring.last_active_ms = now_ms;
        let len = ring.entries.len();
        let mut freed = 0;
        if len == capacity {
            freed = drop_front(ring).expect("full");
            self.entries -= 1;
            self.bytes -= freed;
        } else if len == ring.entries.capacity() {
            // Doubling, but never past `--recent-buffer` entries: a full ring
            // of 20 holds 20 slots, not the 32 plain growth would leave.
            ring.entries.reserve_exact((len * 2).max(4).min(capacity) - len);
        }
        ring.entries.push_back(entry);
        self.entries += 1;
        self.bytes += frame_len;
        if let Some(tenant) = ring.tenant.clone() {
            let slot = slot.expect("a tenant's ring is in a map");
            let tenant_use = self.tenant_use.get_mut(&*tenant).expect("interned with the ring");
            tenant_use.bytes = tenant_use.bytes + frame_len - freed;
            tenant_use.order.sweep(current_in_tenant(&self.users, &self.rooms, &self.tenants));
            match (created, touch == touches.fresh) {
                (true, _) => tenant_use.order.insert(touch, (kind, slot)),
                (false, true) => tenant_use.order.moved(touch, (kind, slot)),
                // Already the most recently active: its place stands.
                (false, false) => {}
            }
            self.enforce_tenant_budget(&tenant);
        }
        self.enforce_bounds();
        true
    }

    /// Evicts `tenant`'s own least recently active rings while it is over
    /// its budget: whole rings, except that a connected user's ring loses
    /// its oldest entries (and goes whole only once empty).
    fn enforce_tenant_budget(&mut self, tenant: &str) {
        let Some(budget) = self.budgets.of(tenant) else { return };
        loop {
            let (kind, slot) = {
                let Some(tenant_use) = self.tenant_use.get_mut(tenant).filter(|u| u.bytes > budget) else { return };
                let current = current_in_tenant(&self.users, &self.rooms, &self.tenants);
                let Some((_, &(kind, slot))) = tenant_use.order.front(current) else { return };
                (kind, slot)
            };
            let keyed = self.keyed_mut(kind);
            let ring = &mut keyed.rings[slot];
            if ring.pinned && ring.entries.len() > 1 {
                let freed = drop_front(ring).expect("not empty");
                self.entries -= 1;
                self.bytes -= freed;
                if let Some(tenant_use) = self.tenant_use.get_mut(tenant) {
                    tenant_use.bytes -= freed;
                }
            } else {
                let ring = keyed.remove_slot(slot);
                self.forget(&ring);
            }
        }
    }

    /// Marks `user` as connected here (its first connection on this shard):
    /// its ring, now or once created, is kept whatever the user cap and TTL.
    pub fn pin_user(&mut self, user: &Key) {
        if !self.enabled() {
            return;
        }
        self.connected.insert(user.clone());
        self.next_touch += 1;
        let touch = self.next_touch;
        if self.users.pin(user, touch) {
            self.moved_in_tenant(KeyedKind::Users, user, touch);
        }
    }

    /// Marks `user` as gone (its last connection here closed): its ring falls
    /// under the user cap again as the most recently active, and its TTL
    /// counts from now unless a message came later.
    pub fn unpin_user(&mut self, user: &str, now_ms: u64) {
        if !self.connected.remove(user) {
            return;
        }
        self.next_touch += 1;
        let touch = self.next_touch;
        if self.users.unpin(user, touch, now_ms) {
            self.moved_in_tenant(KeyedKind::Users, user, touch);
        }
        self.enforce_bounds();
    }

    /// Moves the ring `name` of `kind`, now active at `touch`, in its
    /// tenant's order (rings of the default namespace have none).
    fn moved_in_tenant(&mut self, kind: KeyedKind, name: &str, touch: u64) {
        let keyed = self.keyed(kind);
        let Some(&slot) = keyed.slots.get(name) else { return };
        let Some(tenant) = keyed.rings[slot].tenant.clone() else { return };
        let Some(tenant_use) = self.tenant_use.get_mut(&*tenant) else { return };
        tenant_use.order.sweep(current_in_tenant(&self.users, &self.rooms, &self.tenants));
        tenant_use.order.moved(touch, (kind, slot));
    }

    /// Frames for a new connection of `user` in `rooms` of `tenant` (`None`:
    /// the default namespace), resuming after `last_id` when given (see the
    /// module docs for the rules).
    pub fn replay(&self, user: Option<&str>, rooms: &[Rc<str>], tenant: Option<&str>, last_id: Option<&str>) -> Replay {
        let Some(last_id) = last_id else { return Replay::default() };
        let mut rings: Vec<(&Ring, u64)> = Vec::with_capacity(2 + rooms.len());
        if tenant.is_none() {
            rings.push((&self.broadcast, self.broadcast_forgotten_through));
        }
        let mut missing_forgotten = 0;
        let keyed = tenant
            .map(|t| (&self.tenants, t))
            .into_iter()
            .chain(user.map(|u| (&self.users, u)))
            .chain(rooms.iter().map(|r| (&self.rooms, &**r)));
        for (keyed, name) in keyed {
            match keyed.get(name) {
                Some(ring) => rings.push((ring, keyed.forgotten_through)),
                None => missing_forgotten = missing_forgotten.max(keyed.forgotten_through),
            }
        }
        let print = id_print(last_id.as_bytes());
        let found = rings
            .iter()
            .find_map(|(ring, _)| ring.entries.iter().find(|e| e.has_id(last_id.as_bytes(), print)).map(|e| e.seq));
        let after = found.unwrap_or(0);
        let lost = found.is_none()
            || missing_forgotten > after
            || rings.iter().any(|(ring, forgotten)| {
                ring.wrapped_through > after || (ring.created_at > after && *forgotten > after)
            });
        let mut entries: Vec<&Entry> =
            rings.iter().flat_map(|(ring, _)| ring.entries.iter().filter(|e| e.seq > after)).collect();
        entries.sort_unstable_by_key(|e| e.seq);
        Replay { gap: lost, frames: entries.into_iter().map(|e| e.frame.clone()).collect() }
    }

    /// Drops one user's ring (seed `clearRecent(userId)`).
    pub fn clear_user(&mut self, user: &str) {
        if let Some(ring) = self.users.remove(user) {
            self.forget(&ring);
        }
    }

    /// Drops every ring of `namespace`: its users', its rooms' and its
    /// broadcast ring (seed `clearRecent()` for one namespace).
    pub fn clear_namespace(&mut self, namespace: &Namespace) {
        for kind in [KeyedKind::Users, KeyedKind::Rooms] {
            let keys: Vec<Key> = self.keyed(kind).slots.keys().filter(|key| namespace.owns(key)).cloned().collect();
            for key in keys {
                if let Some(ring) = self.keyed_mut(kind).remove(&key) {
                    self.forget(&ring);
                }
            }
        }
        match namespace.tenant_name() {
            None => self.drop_broadcast(),
            Some(tenant) => {
                if let Some(ring) = self.tenants.remove(tenant) {
                    self.forget(&ring);
                }
            }
        }
    }

    /// Drops every ring of every namespace.
    pub fn clear_all(&mut self) {
        let users: Vec<Key> = self.users.slots.keys().cloned().collect();
        for user in users {
            self.clear_user(&user);
        }
        for kind in [KeyedKind::Rooms, KeyedKind::Tenants] {
            let names: Vec<Key> = self.keyed(kind).slots.keys().cloned().collect();
            for name in names {
                if let Some(ring) = self.keyed_mut(kind).remove(&name) {
                    self.forget(&ring);
                }
            }
        }
        self.drop_broadcast();
    }

    /// Drops rings idle for `--recent-ttl`; cheap when nothing is due (it
    /// looks at the least recently active ring only).
    pub fn expire(&mut self, now_ms: u64) {
        let ttl = self.limits.ttl_ms;
        if ttl == 0 {
            return;
        }
        let due = |ring: &Ring| now_ms.saturating_sub(ring.last_active_ms) >= ttl;
        for kind in [KeyedKind::Users, KeyedKind::Rooms, KeyedKind::Tenants] {
            while self.keyed_mut(kind).oldest().is_some_and(|(_, ring)| due(ring)) {
                let ring = self.keyed_mut(kind).pop_oldest().expect("a due ring");
                self.forget(&ring);
            }
        }
        if !self.broadcast.entries.is_empty() && due(&self.broadcast) {
            self.drop_broadcast();
        }
    }

    fn drop_broadcast(&mut self) {
        let broadcast = std::mem::take(&mut self.broadcast);
        self.broadcast_forgotten_through = self.broadcast_forgotten_through.max(newest(&broadcast));
        self.broadcast.created_at = self.next_seq;
        self.forget(&broadcast);
    }

    fn keyed(&self, kind: KeyedKind) -> &Keyed {
        match kind {
            KeyedKind::Users => &self.users,
            KeyedKind::Rooms => &self.rooms,
            KeyedKind::Tenants => &self.tenants,
        }
    }

    fn keyed_mut(&mut self, kind: KeyedKind) -> &mut Keyed {
        match kind {
            KeyedKind::Users => &mut self.users,
            KeyedKind::Rooms => &mut self.rooms,
            KeyedKind::Tenants => &mut self.tenants,
        }
    }

    /// Evicts least-recently-active unpinned rings beyond the count bounds,
    /// then, beyond the byte bound, unpinned rings of any kind and, when only
    /// pinned and broadcast rings are left, their oldest entries. Within
    /// them (nearly every record), four comparisons and nothing else.
    #[inline]
    fn enforce_bounds(&mut self) {
        let within = self.bytes <= self.limits.max_bytes
            && self.users.order.len() <= self.limits.max_users
            && self.rooms.order.len() <= self.limits.max_rooms
            && self.tenants.order.len() <= self.limits.max_rooms;
        if !within {
            self.evict_beyond_bounds();
        }
    }

    /// [`ReplayStore::enforce_bounds`] once a bound is passed.
    #[cold]
    fn evict_beyond_bounds(&mut self) {
        let caps = [
            (KeyedKind::Users, self.limits.max_users),
            (KeyedKind::Rooms, self.limits.max_rooms),
            (KeyedKind::Tenants, self.limits.max_rooms),
        ];
        for (kind, cap) in caps {
            while self.keyed(kind).order.len() > cap {
                let ring = self.keyed_mut(kind).pop_oldest().expect("over bound");
                self.forget(&ring);
            }
        }
        while self.bytes > self.limits.max_bytes {
            // The least recently active unpinned ring of any kind goes first.
            let oldest = [KeyedKind::Users, KeyedKind::Rooms, KeyedKind::Tenants]
                .into_iter()
                .filter_map(|kind| self.keyed_mut(kind).oldest().map(|(touch, _)| (touch, kind)))
                .min_by_key(|(touch, _)| *touch);
            match oldest.and_then(|(_, kind)| self.keyed_mut(kind).pop_oldest()) {
                Some(ring) => self.forget(&ring),
                None if self.shorten_least_active() => {}
                None => break,
            }
        }
    }

    /// Drops the oldest entry of the least recently active pinned or broadcast
    /// ring (a pinned ring left empty goes whole); false when there is none.
    fn shorten_least_active(&mut self) -> bool {
        let users = &mut self.users;
        let pinned = users.pinned.front(current(&users.marks)).map(|(touch, &slot)| (touch, slot));
        let broadcast = (!self.broadcast.entries.is_empty()).then_some(self.broadcast_touch);
        let freed = match pinned {
            Some((touch, slot)) if broadcast.is_none_or(|b| touch < b) => {
                let ring = &mut self.users.rings[slot];
                let freed = drop_front(ring).expect("rings are never empty");
                if let Some(tenant_use) = ring.tenant.as_ref().and_then(|tenant| self.tenant_use.get_mut(&**tenant)) {
                    tenant_use.bytes -= freed;
                }
                if ring.entries.is_empty() {
                    let ring = self.users.remove_slot(slot);
                    self.forget(&ring);
                }
                freed
            }
            _ if broadcast.is_some() => drop_front(&mut self.broadcast).expect("not empty"),
            _ => return false,
        };
        self.entries -= 1;
        self.bytes -= freed;
        true
    }

    /// Takes a ring that left its map out of the counts.
    fn forget(&mut self, ring: &Ring) {
        let bytes = ring.entries.iter().map(|e| e.frame.len()).sum::<usize>();
        self.entries -= ring.entries.len();
        self.bytes -= bytes;
        if let Some(tenant) = &ring.tenant {
            if let Some(tenant_use) = self.tenant_use.get_mut(&**tenant) {
                tenant_use.bytes -= bytes;
                tenant_use.order.removed();
                if tenant_use.order.len() == 0 {
                    self.tenant_use.remove(&**tenant);
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyedKind {
    Users,
    Rooms,
    Tenants,
}

fn newest(ring: &Ring) -> u64 {
    ring.entries.back().map_or(ring.wrapped_through, |e| e.seq)
}

/// The shared name of `tenant` in `tenant_use`, added if new.
fn intern(tenant_use: &mut AHashMap<Rc<str>, TenantUse>, tenant: &str) -> Rc<str> {
    match tenant_use.get_key_value(tenant) {
        Some((name, _)) => name.clone(),
        None => {
            let name: Rc<str> = Rc::from(tenant);
            tenant_use.insert(name.clone(), TenantUse::default());
            name
        }
    }
}

/// Drops `ring`'s oldest entry, recorded as wrap-around; returns its frame's size.
fn drop_front(ring: &mut Ring) -> Option<usize> {
    let old = ring.entries.pop_front()?;
    ring.wrapped_through = old.seq;
    Some(old.frame.len())
}

impl Keyed {
    fn get(&self, name: &str) -> Option<&Ring> {
        self.slots.get(name).map(|&slot| &self.rings[slot])
    }

    /// The slot of `name`'s ring: the `kept` one when the ring there is
    /// still `name`'s (a slot is reused once its ring goes), else by its name.
    fn find(&self, name: &Key, kept: Option<u32>) -> Option<usize> {
        let at_kept =
            kept.map(|slot| slot as usize).filter(|&slot| self.rings.get(slot).is_some_and(|ring| ring.name == *name));
        at_kept.or_else(|| self.slots.get(name).copied())
    }

    /// The ring of `name`, created if needed, marked most recently active
    /// (`touch`), with its slot; true when created. A slot `kept` for it
    /// (beside a user's connections) is tried first and set to where the
    /// ring is. A new ring is pinned when `connected` says its user has a
    /// connection here. `None`, and nothing changed, when the ring exists
    /// and `known` says the message is a repeat.
    fn touch(
        &mut self,
        name: &Key,
        kept: Option<&Cell<Option<u32>>>,
        touches: Touches,
        seq: u64,
        connected: impl FnOnce() -> bool,
        known: impl FnOnce(&Ring) -> bool,
    ) -> Option<Touched<'_>> {
        let found = self.find(name, kept.and_then(Cell::get));
        let Keyed { slots, rings, marks, order, pinned, .. } = self;
        let touch = touches.fresh;
        let (slot, created) = match found {
            Some(slot) => {
                let ring = &mut rings[slot];
                if known(ring) {
                    return None;
                }
                // The most recently active ring already (a run of messages
                // to one user): its place in the order stands, nothing to move.
                if marks[slot] != touches.latest {
                    marks[slot] = touch;
                    let order = if ring.pinned { &mut *pinned } else { &mut *order };
                    order.moved(touch, slot);
                    order.sweep(current(marks));
                }
                (slot, false)
            }
            None => {
                let is_pinned = connected();
                let ring = Ring { name: name.clone(), created_at: seq - 1, pinned: is_pinned, ..Ring::default() };
                let slot = rings.insert(ring);
                slots.insert(name.clone(), slot);
                if slot == marks.len() {
                    marks.push(touch);
                } else {
                    marks[slot] = touch;
                }
                let order = if is_pinned { &mut *pinned } else { &mut *order };
                order.insert(touch, slot);
                order.sweep(current(marks));
                (slot, true)
            }
        };
        if let Some(kept) = kept {
            kept.set(u32::try_from(slot).ok());
        }
        Some(Touched { ring: &mut rings[slot], slot: Some(slot), touch: marks[slot], created })
    }

    /// Takes `name`'s ring, if any, out of the count cap and TTL order: a
    /// connection counts as activity (`touch`). True when it moved.
    fn pin(&mut self, name: &str, touch: u64) -> bool {
        let Keyed { slots, rings, marks, order, pinned, .. } = self;
        pinned.sweep(current(marks));
        let Some(&slot) = slots.get(name).filter(|&&slot| !rings[slot].pinned) else { return false };
        rings[slot].pinned = true;
        marks[slot] = touch;
        order.removed();
        pinned.insert(touch, slot);
        true
    }

    /// Puts `name`'s ring, if any, back in the count cap and TTL order as the
    /// most recently active (`touch`), active at `now_ms` at the earliest;
    /// true when it moved.
    fn unpin(&mut self, name: &str, touch: u64, now_ms: u64) -> bool {
        let Keyed { slots, rings, marks, order, pinned, .. } = self;
        order.sweep(current(marks));
        let Some(&slot) = slots.get(name).filter(|&&slot| rings[slot].pinned) else { return false };
        let ring = &mut rings[slot];
        ring.pinned = false;
        marks[slot] = touch;
        ring.last_active_ms = ring.last_active_ms.max(now_ms);
        pinned.removed();
        order.insert(touch, slot);
        true
    }

    /// The least recently active ring the count cap and TTL may drop, and its mark.
    fn oldest(&mut self) -> Option<(u64, &Ring)> {
        let (touch, &slot) = self.order.front(current(&self.marks))?;
        Some((touch, &self.rings[slot]))
    }

    fn pop_oldest(&mut self) -> Option<Ring> {
        let (_, &slot) = self.order.front(current(&self.marks))?;
        Some(self.remove_slot(slot))
    }

    fn remove(&mut self, name: &str) -> Option<Ring> {
        let &slot = self.slots.get(name)?;
        Some(self.remove_slot(slot))
    }

    /// Takes the ring at `slot` (which holds one) out of the store.
    fn remove_slot(&mut self, slot: usize) -> Ring {
        let ring = self.rings.remove(slot);
        self.marks[slot] = 0;
        self.slots.remove(&ring.name);
        if ring.pinned { &mut self.pinned } else { &mut self.order }.removed();
        self.forgotten_through = self.forgotten_through.max(newest(&ring));
        ring
    }
}

/// Whether a place in a [`Keyed`] order is current: its slot holds a ring
/// with that activity mark (`marks`; marks are never given twice, so a ring
/// that took the slot of one that went never has it).
fn current(marks: &[u64]) -> impl Fn(u64, &usize) -> bool + '_ {
    move |touch, &slot| marks.get(slot) == Some(&touch)
}

/// Whether a place in a tenant's order is current (see [`current`]).
fn current_in_tenant<'a>(
    users: &'a Keyed,
    rooms: &'a Keyed,
    tenants: &'a Keyed,
) -> impl Fn(u64, &(KeyedKind, usize)) -> bool + 'a {
    move |touch, (kind, slot)| {
        let keyed = match kind {
            KeyedKind::Users => users,
            KeyedKind::Rooms => rooms,
            KeyedKind::Tenants => tenants,
        };
        current(&keyed.marks)(touch, slot)
    }
}

/// Length of the id in a frame starting `id: <id>\n`.
fn frame_id_len(frame: &[u8]) -> Option<u16> {
    let rest = frame.strip_prefix(b"id: ")?;
    let len = crate::text::lf_position(rest)?;
    u16::try_from(len).ok()
}

impl ReplayStore {
    /// The bus lost messages of the streams `lost` selects: a resume from
    /// anything they hold now reports a gap (the loss comes after it).
    pub fn mark_lost(&mut self, lost: impl Fn(Stream<'_>) -> bool) {
        self.next_seq += 1;
        let now = self.next_seq;
        for kind in [KeyedKind::Users, KeyedKind::Rooms, KeyedKind::Tenants] {
            let keyed = self.keyed_mut(kind);
            keyed.forgotten_through = now;
            for (_, ring) in keyed.rings.iter_mut() {
                let stream = match kind {
                    KeyedKind::Users => Stream::User(&ring.name),
                    KeyedKind::Rooms => Stream::Room(&ring.name),
                    KeyedKind::Tenants => Stream::Tenant(&ring.name),
                };
                if lost(stream) {
                    ring.wrapped_through = now;
                }
            }
        }
        if lost(Stream::All) {
            self.broadcast.wrapped_through = now;
        }
    }

    /// The id of the newest frame in the rings a connection of `user` in
    /// `rooms` of `tenant` reads: the last one it was sent here, as far as
    /// this shard knows.
    pub fn newest_id(&self, user: Option<&str>, rooms: &[Rc<str>], tenant: Option<&str>) -> Option<String> {
        let broadcast = match tenant {
            None => Some(&self.broadcast),
            Some(tenant) => self.tenants.get(tenant),
        };
        let rings = broadcast
            .into_iter()
            .chain(user.and_then(|u| self.users.get(u)))
            .chain(rooms.iter().filter_map(|r| self.rooms.get(r)));
        let newest = rings.filter_map(|ring| ring.entries.back()).max_by_key(|entry| entry.seq)?;
        Some(String::from_utf8_lossy(newest.id()).into_owned())
    }
}

/// The `ssekify.gap` frame telling a client that the bus lost messages it
/// may have been sent; `last` is the id of the last one it was sent.
pub fn bus_gap_frame(last: Option<&str>) -> Bytes {
    let data = serde_json::json!({ "lastEventId": last, "reason": "bus" }).to_string();
    encode_control(GAP_EVENT, data.as_bytes())
}

/// The `ssekify.gap` frame telling a client that `last_id` could not be
/// resumed exactly; it carries no id, so the client's last id stays put.
pub fn gap_frame(last_id: &str) -> Bytes {
    let data = serde_json::json!({ "lastEventId": last_id }).to_string();
    encode_control(GAP_EVENT, data.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::frame::encode;

    fn limits(entries: usize) -> ReplayLimits {
        ReplayLimits { entries, ttl_ms: 1_000, max_users: 3, max_rooms: 3, max_bytes: 1 << 20 }
    }

    fn ids(replay: &Replay) -> Vec<String> {
        replay
            .frames
            .iter()
            .map(|f| String::from_utf8(f[4..4 + frame_id_len(f).unwrap() as usize].to_vec()).unwrap())
            .collect()
    }

    /// True when `stream`'s ring holds the id `id`.
    fn holds(store: &ReplayStore, stream: Stream<'_>, id: &str) -> bool {
        let ring = match stream {
            Stream::All => Some(&store.broadcast),
            Stream::User(name) | Stream::UserAt(name, _) => store.users.get(name),
            Stream::Room(name) => store.rooms.get(name),
            Stream::Tenant(name) => store.tenants.get(name),
        };
        ring.is_some_and(|ring| ring.holds(id.as_bytes(), id_print(id.as_bytes())))
    }

    fn publish(store: &mut ReplayStore, stream: Stream<'_>, id: &str, now: u64) {
        assert!(store.record(stream, encode(id, None, b"x"), now, false));
    }

    #[test]
    fn resume_after_a_found_id_sends_the_rest_in_order() {
        let mut store = ReplayStore::new(limits(20));
        for i in 1..=5 {
            publish(&mut store, Stream::User(&"u".into()), &i.to_string(), 0);
        }
        let replay = store.replay(Some("u"), &[], None, Some("2"));
        assert!(!replay.gap);
        assert_eq!(ids(&replay), ["3", "4", "5"]);
        assert_eq!(store.replay(Some("u"), &[], None, None), Replay::default());
    }

    #[test]
    fn rings_merge_by_arrival_across_user_rooms_and_broadcast() {
        let mut store = ReplayStore::new(limits(20));
        let rooms: Vec<Rc<str>> = vec![Rc::from("a"), Rc::from("b")];
        publish(&mut store, Stream::User(&"u".into()), "1", 0);
        publish(&mut store, Stream::Room(&"a".into()), "2", 0);
        publish(&mut store, Stream::All, "3", 0);
        publish(&mut store, Stream::Room(&"c".into()), "not-mine", 0);
        publish(&mut store, Stream::Room(&"b".into()), "4", 0);
        publish(&mut store, Stream::User(&"other".into()), "not-mine-either", 0);
        publish(&mut store, Stream::User(&"u".into()), "5", 0);
        assert_eq!(ids(&store.replay(Some("u"), &rooms, None, Some("1"))), ["2", "3", "4", "5"]);
        assert_eq!(ids(&store.replay(None, &rooms, None, Some("2"))), ["3", "4"], "anonymous: rooms and broadcast");
    }

    #[test]
    fn unknown_or_wrapped_ids_give_a_gap_and_the_whole_buffer() {
        let mut store = ReplayStore::new(limits(3));
        for i in 1..=5 {
            publish(&mut store, Stream::User(&"u".into()), &i.to_string(), 0);
        }
        let unknown = store.replay(Some("u"), &[], None, Some("nope"));
        assert!(unknown.gap);
        assert_eq!(ids(&unknown), ["3", "4", "5"]);
        let wrapped = store.replay(Some("u"), &[], None, Some("1"));
        assert!(wrapped.gap, "1 fell off the ring");
        let kept = store.replay(Some("u"), &[], None, Some("3"));
        assert!(!kept.gap);
        assert_eq!(ids(&kept), ["4", "5"]);
    }

    #[test]
    fn a_found_id_with_losses_in_another_ring_still_reports_the_gap() {
        let mut store = ReplayStore::new(limits(2));
        publish(&mut store, Stream::User(&"u".into()), "u1", 0);
        for i in 1..=3 {
            publish(&mut store, Stream::All, &format!("b{i}"), 0);
        }
        let replay = store.replay(Some("u"), &[], None, Some("u1"));
        assert!(replay.gap, "b1 was pushed out of the broadcast ring");
        assert_eq!(ids(&replay), ["b2", "b3"]);
    }

    #[test]
    fn least_recently_active_users_are_evicted_and_counted() {
        let mut store = ReplayStore::new(limits(2));
        publish(&mut store, Stream::User(&"a".into()), "a1", 0);
        publish(&mut store, Stream::User(&"b".into()), "b1", 0);
        publish(&mut store, Stream::User(&"c".into()), "c1", 0);
        publish(&mut store, Stream::User(&"a".into()), "a2", 0);
        publish(&mut store, Stream::User(&"d".into()), "d1", 0);
        let usage = store.usage();
        assert_eq!((usage.users, usage.entries), (3, 4), "b was the least recently active");
        assert!(store.replay(Some("b"), &[], None, Some("b1")).gap);
        assert_eq!(ids(&store.replay(Some("a"), &[], None, Some("a1"))), ["a2"]);
        let recreated = {
            publish(&mut store, Stream::User(&"b".into()), "b2", 0);
            store.replay(Some("b"), &[], None, Some("b2"))
        };
        assert!(!recreated.gap && recreated.frames.is_empty(), "found at the newest entry");
    }

    #[test]
    fn a_run_to_the_most_recent_ring_keeps_it_most_recent() {
        // A run's later records leave the ring's place as it is (it is
        // already the newest); what another ring does after still counts.
        let mut store = ReplayStore::new(limits(5));
        publish(&mut store, Stream::User(&"a".into()), "a1", 0);
        publish(&mut store, Stream::User(&"b".into()), "b1", 0);
        publish(&mut store, Stream::User(&"b".into()), "b2", 0);
        publish(&mut store, Stream::User(&"c".into()), "c1", 0);
        publish(&mut store, Stream::User(&"a".into()), "a2", 0);
        publish(&mut store, Stream::User(&"a".into()), "a3", 0);
        publish(&mut store, Stream::User(&"d".into()), "d1", 0);
        assert!(resume(&store, "b", "b2").0, "b went first: a's run came after c");
        publish(&mut store, Stream::User(&"c".into()), "c2", 0);
        for id in ["e1", "e2", "e3"] {
            publish(&mut store, Stream::User(&"e".into()), id, 0);
        }
        assert!(resume(&store, "a", "a3").0, "then a, the least recent");
        assert_eq!(resume(&store, "c", "c1"), (false, vec!["c2".into()]));
        assert_eq!(resume(&store, "e", "e1"), (false, vec!["e2".into(), "e3".into()]));
        for _ in 0..100 {
            publish(&mut store, Stream::User(&"e".into()), "e", 0);
        }
        assert_eq!(store.users.order.len(), 3, "c, d and e");
        assert!(store.users.order.places() <= 2 * 3 + 32, "a long run leaves no stale places behind");
    }

    #[test]
    fn ids_of_every_length_are_found_and_told_apart() {
        let mut store = ReplayStore::new(ReplayLimits { entries: 100, ..limits(100) });
        let id = |len: usize, last: char| format!("{}{last}", "7".repeat(len - 1));
        for len in 1..=40 {
            publish(&mut store, Stream::User(&"u".into()), &id(len, 'a'), 0);
        }
        for len in 1..=40 {
            assert!(holds(&store, Stream::User(&"u".into()), &id(len, 'a')), "length {len}");
            assert!(!holds(&store, Stream::User(&"u".into()), &id(len, 'b')), "length {len}, another last byte");
        }
    }

    #[test]
    fn ttl_clear_and_disable() {
        let mut store = ReplayStore::new(limits(5));
        publish(&mut store, Stream::User(&"old".into()), "o1", 0);
        publish(&mut store, Stream::User(&"new".into()), "n1", 900);
        publish(&mut store, Stream::Room(&"r".into()), "r1", 100);
        store.expire(1_500);
        assert_eq!(store.usage().users, 1);
        assert_eq!(store.usage().rooms, 0);
        assert!(store.replay(Some("old"), &[], None, Some("o1")).gap);
        store.clear_user("new");
        assert_eq!(store.usage(), ReplayUsage::default());
        publish(&mut store, Stream::All, "b1", 2_000);
        store.clear_all();
        assert_eq!(store.usage(), ReplayUsage::default());

        let mut off = ReplayStore::new(limits(0));
        publish(&mut off, Stream::User(&"u".into()), "1", 0);
        assert_eq!(off.usage(), ReplayUsage::default());
        assert!(off.replay(Some("u"), &[], None, Some("1")).gap);
    }

    #[test]
    fn byte_bound_evicts_oldest_rings() {
        let mut store = ReplayStore::new(ReplayLimits { max_bytes: 100, ..limits(10) });
        for i in 0..20 {
            publish(&mut store, Stream::User(&format!("u{i}").into()), &format!("{i}"), 0);
        }
        assert!(store.usage().bytes <= 100, "{:?}", store.usage());
        assert!(store.usage().users >= 1);
    }

    fn pin(store: &mut ReplayStore, user: &str) {
        store.pin_user(&user.into());
    }

    /// Resume of `user` (no rooms, default namespace) after `last_id`: (gap, ids).
    fn resume(store: &ReplayStore, user: &str, last_id: &str) -> (bool, Vec<String>) {
        let replay = store.replay(Some(user), &[], None, Some(last_id));
        (replay.gap, ids(&replay))
    }

    #[test]
    fn connected_users_keep_their_rings_beyond_the_user_cap() {
        let mut store = ReplayStore::new(limits(5));
        // Pinned before their rings exist, as on a first connect.
        for i in 0..5 {
            pin(&mut store, &format!("c{i}"));
        }
        for i in 0..5 {
            publish(&mut store, Stream::User(&format!("c{i}").into()), &format!("c{i}-1"), 0);
        }
        for i in 0..4 {
            publish(&mut store, Stream::User(&format!("d{i}").into()), &format!("d{i}-1"), 0);
        }
        assert_eq!(store.usage().users, 8, "5 connected + the cap of 3 without a connection");
        for i in 0..5 {
            publish(&mut store, Stream::User(&format!("c{i}").into()), &format!("c{i}-2"), 0);
            assert_eq!(resume(&store, &format!("c{i}"), &format!("c{i}-1")), (false, vec![format!("c{i}-2")]));
        }
        assert!(resume(&store, "d0", "d0-1").0, "the least recently active user without a connection went");
        // Pinned after its ring exists, as on a connect to a known user.
        pin(&mut store, "d1");
        for i in 4..6 {
            publish(&mut store, Stream::User(&format!("d{i}").into()), &format!("d{i}-1"), 0);
        }
        assert!(resume(&store, "d2", "d2-1").0, "d2 was the oldest left under the cap");
        assert_eq!(resume(&store, "d1", "d1-1"), (false, vec![]), "connected: kept though older");
        assert_eq!(store.usage().users, 6 + 3);
    }

    #[test]
    fn a_users_ring_is_taken_from_its_kept_slot_only_while_it_is_that_users() {
        let mut store = ReplayStore::new(limits(4));
        let slot = Cell::new(None);
        publish(&mut store, Stream::UserAt(&"a".into(), &slot), "a-1", 0);
        let first = slot.get().expect("the new ring's slot is kept");
        publish(&mut store, Stream::UserAt(&"a".into(), &slot), "a-2", 0);
        assert_eq!(slot.get(), Some(first));
        assert_eq!(resume(&store, "a", "a-1"), (false, vec!["a-2".to_owned()]));
        // Over the cap of 3 users, "a" goes, and "e"'s ring takes its slot.
        for user in ["b", "c", "d", "e"] {
            publish(&mut store, Stream::User(&user.into()), &format!("{user}-1"), 0);
        }
        assert!(holds(&store, Stream::User(&"e".into()), "e-1"));
        assert_eq!(store.users.slots.get("e"), Some(&(first as usize)), "the test's premise: e's ring took a's slot");
        publish(&mut store, Stream::UserAt(&"a".into(), &slot), "a-3", 0);
        assert!(!holds(&store, Stream::User(&"e".into()), "a-3"), "a slot now holding another user's ring is not used");
        assert_eq!(resume(&store, "a", "a-1"), (true, vec!["a-3".to_owned()]), "a new ring, after a gap");
        assert_eq!(slot.get().map(|s| s as usize), store.users.slots.get("a").copied(), "the slot is corrected");
        slot.set(Some(1_000));
        publish(&mut store, Stream::UserAt(&"a".into(), &slot), "a-4", 0);
        assert_eq!(resume(&store, "a", "a-3"), (false, vec!["a-4".to_owned()]), "an empty slot: found by name");
        assert_eq!(slot.get().map(|s| s as usize), store.users.slots.get("a").copied());
    }

    #[test]
    fn a_user_leaving_rejoins_the_cap_as_most_recent_with_its_ttl_from_then() {
        let mut store = ReplayStore::new(limits(5));
        pin(&mut store, "u");
        publish(&mut store, Stream::User(&"u".into()), "u1", 0);
        for (i, user) in ["a", "b", "c"].iter().enumerate() {
            publish(&mut store, Stream::User(&(*user).into()), &format!("{user}1"), 10 * (i as u64 + 1));
        }
        store.expire(5_000);
        assert_eq!(resume(&store, "u", "u1"), (false, vec![]), "no TTL while connected");
        assert_eq!(store.usage().users, 1, "a, b and c expired");
        for (i, user) in ["a", "b", "c"].iter().enumerate() {
            publish(&mut store, Stream::User(&(*user).into()), &format!("{user}2"), 5_000 + 10 * i as u64);
        }
        store.unpin_user("u", 5_500);
        assert_eq!(store.usage().users, 3, "u is under the cap now");
        assert!(resume(&store, "a", "a2").0, "a was the least recently active, u the most");
        assert_eq!(resume(&store, "u", "u1"), (false, vec![]));
        store.expire(6_499);
        assert_eq!(resume(&store, "u", "u1"), (false, vec![]), "the TTL counts from the disconnect");
        assert_eq!(store.usage().users, 1, "b and c expired");
        store.expire(6_500);
        assert!(resume(&store, "u", "u1").0);
        assert_eq!(store.usage(), ReplayUsage::default());
    }

    #[test]
    fn byte_bound_drops_unpinned_rings_then_shortens_the_least_active_pinned_ring() {
        let frame = encode("p1", None, b"x").len();
        let mut store = ReplayStore::new(ReplayLimits { max_bytes: 8 * frame, ..limits(10) });
        pin(&mut store, "p");
        pin(&mut store, "q");
        for id in ["p1", "p2", "p3"] {
            publish(&mut store, Stream::User(&"p".into()), id, 0);
        }
        for id in ["q1", "q2", "q3"] {
            publish(&mut store, Stream::User(&"q".into()), id, 0);
        }
        publish(&mut store, Stream::Room(&"r".into()), "r1", 0);
        publish(&mut store, Stream::User(&"d".into()), "d1", 0);
        publish(&mut store, Stream::User(&"p".into()), "p4", 0);
        assert!(store.replay(None, &[Rc::from("r")], None, Some("r1")).gap, "the room ring went first");
        publish(&mut store, Stream::User(&"q".into()), "q4", 0);
        assert!(resume(&store, "d", "d1").0, "then the disconnected user's");
        assert_eq!((store.usage().users, store.usage().rooms, store.usage().bytes), (2, 0, 8 * frame));

        publish(&mut store, Stream::User(&"p".into()), "p5", 0);
        assert_eq!(store.usage().bytes, 8 * frame, "q, the least recently active, lost its oldest entry");
        assert_eq!(resume(&store, "q", "q1"), (true, vec!["q2".into(), "q3".into(), "q4".into()]));
        assert_eq!(resume(&store, "q", "q2"), (false, vec!["q3".into(), "q4".into()]));
        assert_eq!(resume(&store, "p", "p1").1, ["p2", "p3", "p4", "p5"]);
        assert!(!resume(&store, "p", "p1").0);

        for id in ["p6", "p7", "p8"] {
            publish(&mut store, Stream::User(&"p".into()), id, 0);
        }
        assert_eq!(store.usage().users, 1, "q's ring, shortened to nothing, went whole");
        assert!(resume(&store, "q", "q4").0);
        publish(&mut store, Stream::User(&"q".into()), "q5", 0);
        assert!(store.usage().bytes <= 8 * frame);
        assert_eq!(resume(&store, "q", "q5"), (false, vec![]), "a new ring for q, still connected");
    }

    #[test]
    fn a_connection_counts_as_activity_for_the_byte_bound() {
        let frame = encode("p1", None, b"x").len();
        let mut store = ReplayStore::new(ReplayLimits { max_bytes: 4 * frame, ..limits(10) });
        for id in ["p1", "p2"] {
            publish(&mut store, Stream::User(&"p".into()), id, 0);
        }
        for id in ["q1", "q2"] {
            publish(&mut store, Stream::User(&"q".into()), id, 0);
        }
        pin(&mut store, "q");
        pin(&mut store, "p");
        publish(&mut store, Stream::User(&"r".into()), "r1", 0);
        assert!(resume(&store, "r", "r1").0, "an unpinned ring goes before pinned ones");
        pin(&mut store, "r");
        publish(&mut store, Stream::User(&"r".into()), "r2", 0);
        assert_eq!(resume(&store, "q", "q1"), (true, vec!["q2".into()]), "q connected before p: shortened first");
        assert_eq!(resume(&store, "p", "p1"), (false, vec!["p2".into()]));
    }

    #[test]
    fn many_moves_keep_the_activity_orders_small() {
        let mut store = ReplayStore::new(limits(4));
        pin(&mut store, "p");
        for round in 0..5_000 {
            for user in ["p", "a", "b"] {
                publish(&mut store, Stream::User(&user.into()), &format!("{user}{round}"), 0);
            }
        }
        let places = |order: &ActivityOrder<usize>| order.places();
        assert!(places(&store.users.order) <= 2 * 2 + 33, "{}", places(&store.users.order));
        assert!(places(&store.users.pinned) <= 2 + 33, "{}", places(&store.users.pinned));
        assert_eq!(resume(&store, "a", "a4998"), (false, vec!["a4999".into()]));
    }

    #[test]
    fn broadcast_ring_is_shortened_in_turn_with_pinned_rings() {
        let frame = encode("p1", None, b"x").len();
        let mut store = ReplayStore::new(ReplayLimits { max_bytes: 4 * frame, ..limits(10) });
        pin(&mut store, "p");
        publish(&mut store, Stream::All, "b1", 0);
        publish(&mut store, Stream::User(&"p".into()), "p1", 0);
        publish(&mut store, Stream::All, "b2", 0);
        publish(&mut store, Stream::User(&"p".into()), "p2", 0);
        publish(&mut store, Stream::User(&"p".into()), "p3", 0);
        publish(&mut store, Stream::All, "b3", 0);
        assert_eq!(store.usage().bytes, 4 * frame, "b1, then p1 went");
        assert_eq!(resume(&store, "p", "p2"), (false, vec!["p3".into(), "b3".into()]));
        assert_eq!(resume(&store, "p", "b2"), (false, vec!["p2".into(), "p3".into(), "b3".into()]));
        assert!(resume(&store, "p", "p1").0);
        assert!(resume(&store, "p", "b1").0);
    }

    #[test]
    fn a_repeat_is_an_id_in_the_targets_ring_only() {
        let mut store = ReplayStore::new(limits(5));
        publish(&mut store, Stream::User(&"u".into()), "1", 0);
        publish(&mut store, Stream::All, "2", 0);
        let entries = store.usage().entries;
        assert!(!store.record(Stream::User(&"u".into()), encode("1", None, b"other data"), 0, true));
        assert!(!store.record(Stream::All, encode("2", Some("e"), b"x"), 0, true));
        assert_eq!(store.usage().entries, entries, "a repeat is not recorded");
        assert!(store.record(Stream::User(&"u".into()), encode("1", None, b"again"), 0, false), "unless it may repeat");
        assert!(store.record(Stream::User(&"v".into()), encode("1", None, b"x"), 0, true));
        assert!(store.record(Stream::All, encode("1", None, b"x"), 0, true));
        assert_eq!(store.usage().entries, entries + 3);
    }

    #[test]
    fn a_wrapped_ring_knows_every_id_it_holds_and_none_it_dropped() {
        let mut store = ReplayStore::new(limits(5));
        let user = Key::from("u");
        // Seven into five: the ring's storage has wrapped, its ids lie in two parts.
        for i in 1..=7 {
            publish(&mut store, Stream::User(&user), &i.to_string(), 0);
        }
        for held in 3..=7 {
            assert!(holds(&store, Stream::User(&user), &held.to_string()), "{held} is held");
            assert!(!store.record(Stream::User(&user), encode(&held.to_string(), None, b"x"), 0, true));
        }
        for dropped in ["1", "2"] {
            assert!(!holds(&store, Stream::User(&user), dropped), "{dropped} was pushed out");
        }
        assert_eq!(resume(&store, "u", "5"), (false, vec!["6".into(), "7".into()]));
        assert!(store.record(Stream::User(&user), encode("1", None, b"x"), 0, true), "no longer a repeat");
        assert_eq!(resume(&store, "u", "7"), (false, vec!["1".into()]));
    }

    #[test]
    fn tenants_have_their_own_user_room_and_broadcast_rings() {
        let mut store = ReplayStore::new(limits(20));
        let acme = Namespace::tenant("acme");
        let (acme_u, acme_r) = (acme.key("u").into_owned(), acme.key("r").into_owned());
        let acme_rooms: Vec<Rc<str>> = vec![Rc::from(acme_r.as_str())];
        let default_rooms: Vec<Rc<str>> = vec![Rc::from("r")];
        publish(&mut store, Stream::User(&"u".into()), "d1", 0);
        publish(&mut store, Stream::User(&acme_u.as_str().into()), "t1", 0);
        publish(&mut store, Stream::Room(&"r".into()), "d2", 0);
        publish(&mut store, Stream::Room(&acme_r.as_str().into()), "t2", 0);
        publish(&mut store, Stream::All, "d3", 0);
        publish(&mut store, Stream::Tenant(&"acme".into()), "t3", 0);
        publish(&mut store, Stream::Tenant(&"globex".into()), "g1", 0);
        assert_eq!(ids(&store.replay(Some(&acme_u), &acme_rooms, Some("acme"), Some("t1"))), ["t2", "t3"]);
        assert_eq!(ids(&store.replay(Some("u"), &default_rooms, None, Some("d1"))), ["d2", "d3"]);
        let foreign = store.replay(Some(&acme_u), &acme_rooms, Some("acme"), Some("d1"));
        assert!(foreign.gap, "another namespace's id is unknown here");
        assert_eq!(ids(&foreign), ["t1", "t2", "t3"]);
        assert_eq!(store.usage().rooms, 4, "2 rooms + 2 tenant broadcast rings");
        assert!(holds(&store, Stream::Tenant(&"acme".into()), "t3"));
        assert!(!holds(&store, Stream::All, "t3"));

        store.clear_namespace(&acme);
        assert!(store.replay(Some(&acme_u), &acme_rooms, Some("acme"), Some("t1")).gap);
        assert_eq!(ids(&store.replay(Some("u"), &default_rooms, None, Some("d1"))), ["d2", "d3"], "untouched");
        assert!(holds(&store, Stream::Tenant(&"globex".into()), "g1"), "untouched");
        store.clear_namespace(&Namespace::DEFAULT);
        assert_eq!(store.usage().users, 0);
        assert_eq!(store.usage().rooms, 1, "globex's broadcast ring is left");
        store.clear_all();
        assert_eq!(store.usage(), ReplayUsage::default());
    }

    #[test]
    fn a_tenants_budget_evicts_its_own_least_recent_rings_only() {
        let frame = encode("a1", None, b"x").len();
        let text = format!(r#"{{"tenants": {{"a": {{"recentMaxBytes": {}}}}}}}"#, 3 * frame);
        let config = Arc::new(TenantConfig::parse(text.as_bytes(), None).unwrap());
        let mut store = ReplayStore::new(ReplayLimits { max_users: 100, max_rooms: 100, ..limits(10) });
        store.set_budgets(TenantBudgets { config: Some(config), shards: 1 });
        let (a, b) = (Namespace::tenant("a"), Namespace::tenant("b"));
        let key = |ns: &Namespace, name: &str| ns.key(name).into_owned();
        publish(&mut store, Stream::User(&key(&b, "u1").into()), "b1", 0);
        publish(&mut store, Stream::User(&key(&b, "u2").into()), "b2", 0);
        for (user, id) in [("u1", "a1"), ("u2", "a2"), ("u3", "a3")] {
            publish(&mut store, Stream::User(&key(&a, user).into()), id, 0);
        }
        assert_eq!(store.tenant_bytes("a"), 3 * frame, "at its budget");
        publish(&mut store, Stream::Room(&key(&a, "r").into()), "a4", 0);
        assert_eq!(store.tenant_bytes("a"), 3 * frame);
        assert!(resume(&store, &key(&a, "u1"), "a1").0, "a's least recently active ring went");
        assert_eq!(resume(&store, &key(&a, "u2"), "a2"), (false, vec![]), "the others stay");
        assert_eq!(resume(&store, &key(&b, "u1"), "b1"), (false, vec![]), "b's older rings are not a's to evict");
        assert_eq!(store.tenant_bytes("b"), 2 * frame);

        // A connected user's ring loses its oldest entries instead of going whole.
        pin(&mut store, &key(&a, "p"));
        for id in ["p1", "p2", "p3", "p4"] {
            publish(&mut store, Stream::User(&key(&a, "p").into()), id, 0);
        }
        assert_eq!(store.tenant_bytes("a"), 3 * frame);
        assert_eq!(resume(&store, &key(&a, "p"), "p2"), (false, vec!["p3".into(), "p4".into()]));
        publish(&mut store, Stream::User(&key(&a, "p").into()), "p5", 0);
        assert_eq!(resume(&store, &key(&a, "p"), "p3"), (false, vec!["p4".into(), "p5".into()]));
        assert!(resume(&store, &key(&a, "p"), "p1").0, "shortened: a gap for what it lost");
        assert_eq!(store.tenants_bytes().map(|(_, bytes)| bytes).sum::<usize>(), store.usage().bytes);
        store.clear_all();
        assert_eq!(store.tenants_bytes().count(), 0, "no tenant left behind");
    }

    #[test]
    fn gap_frame_names_the_id() {
        assert_eq!(&gap_frame("a\"b")[..], b"event: ssekify.gap\ndata: {\"lastEventId\":\"a\\\"b\"}\n\n");
    }
}
