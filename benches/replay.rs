//! The replay window at scale: one shard's `ReplayStore` with its share of an
//! instance holding 100,000 connected users that get 20,000 targeted messages
//! per second (each to one user drawn at random) of 100 B frames, under the
//! default flags (`--recent-buffer 20`, `--recent-ttl 30m`,
//! `--recent-max-users 10000`, `--recent-max-bytes 256MiB`), split over
//! `--shards 2` as the server splits them (`ShardCtx::new`).
//!
//! Time is simulated (the store takes the clock as an argument), so minutes
//! of traffic take seconds. After a warm-up long enough to fill every ring,
//! it prints:
//! - the replay window: 1,000 users drop their connection at once (unpinned,
//!   as on a network blip) and, once per simulated second, each checks
//!   whether a resume from its last message would still be exact (no gap);
//!   the window is how long that holds (minimum, median, 99th percentile);
//! - the memory the rings hold: frame bytes referenced (`replayBytes`), and
//!   the heap the store and those frames occupy, by a counting global
//!   allocator (glibc chunk sizes, `malloc_usable_size` + 8); a second run
//!   with `--recent-buffer 10` splits it into a part per entry and per ring;
//! - the cost of one `record` with the bounds enforced.
//!
//! A last run has 200 B frames, where the byte bound binds.
//!
//! Run: `cargo bench --bench replay`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use ssekify::shard::key::Key;
use ssekify::shard::replay::{ReplayLimits, ReplayStore, Stream};
use ssekify::sse::frame::encode;

/// Counts the heap in use, as glibc's chunks (usable size + 8 B header).
struct Counting;

static HEAP: AtomicIsize = AtomicIsize::new(0);

fn chunk(ptr: *mut u8) -> isize {
    if ptr.is_null() {
        0
    } else {
        unsafe { libc::malloc_usable_size(ptr.cast()) as isize + 8 }
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        HEAP.fetch_add(chunk(ptr), Ordering::Relaxed);
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc_zeroed(layout);
        HEAP.fetch_add(chunk(ptr), Ordering::Relaxed);
        ptr
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = chunk(ptr);
        let new = System.realloc(ptr, layout, new_size);
        if !new.is_null() {
            HEAP.fetch_add(chunk(new) - old, Ordering::Relaxed);
        }
        new
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HEAP.fetch_sub(chunk(ptr), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Connected users on the instance.
const USERS: usize = 100_000;
/// Targeted messages per second to the instance.
const RATE: u64 = 20_000;
/// Shards sharing them (the server's default on this 2-core machine).
const SHARDS: usize = 2;
/// Users that drop at once to measure the window.
const SAMPLE: usize = 1_000;
/// Simulated seconds before the drop: every ring has wrapped several times.
const WARM_UP_S: u64 = 600;
/// The server's defaults (`src/config.rs`).
const RECENT_BUFFER: usize = 20;
const RECENT_TTL_MS: u64 = 30 * 60 * 1000;
const RECENT_MAX_USERS: usize = 10_000;
const RECENT_MAX_ROOMS: usize = 10_000;
const RECENT_MAX_BYTES: usize = 256 << 20;
/// The heartbeat sweep's tick, when the server calls `expire`.
const TICK_MS: u64 = 250;

/// xorshift64*: a fixed, dependency-free stream of user picks.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as usize % n
    }
}

/// An id like the server's (31 B), from the simulated clock and a sequence.
fn id_of(now_ms: u64, sequence: u64) -> String {
    format!("{now_ms:013}-0a1b2c3d-{:08x}", sequence as u32)
}

/// One shard's share of the load, driven through simulated time.
struct Load {
    store: ReplayStore,
    users: Vec<Key>,
    /// Per user, the clock and sequence of the last frame it got (its id).
    last: Vec<Option<(u64, u64)>>,
    payload: Vec<u8>,
    rng: Rng,
    sent: u64,
    per_second: u64,
}

impl Load {
    /// The load on `store` with `users` pinned (connected) and frames of
    /// `frame_len` bytes: a 31 B id, JSON data.
    fn new(mut store: ReplayStore, users: Vec<Key>, frame_len: usize) -> Self {
        for user in &users {
            store.pin_user(user);
        }
        let unit = br#"{"type":"notify","text":"build 8812 done","at":1795996800}"#;
        let payload = unit.iter().copied().cycle().take(frame_len - 44).collect();
        let last = vec![None; users.len()];
        Load { store, users, last, payload, rng: Rng(0x9e37_79b9_7f4a_7c15), sent: 0, per_second: RATE / SHARDS as u64 }
    }

    fn now_ms(&self) -> u64 {
        self.sent * 1000 / self.per_second
    }

    /// Publishes one simulated second of messages, as `deliver` records them.
    fn second(&mut self) {
        for _ in 0..self.per_second {
            let before = self.now_ms();
            self.sent += 1;
            let now = self.now_ms();
            if now / TICK_MS != before / TICK_MS {
                self.store.expire(now);
            }
            let user = self.rng.below(self.users.len());
            let frame: Bytes = encode(&id_of(now, self.sent), None, &self.payload);
            self.store.record(Stream::User(&self.users[user]), frame, now, false);
            self.last[user] = Some((now, self.sent));
        }
    }

    /// True when `user` resuming from `last` gets exactly what followed.
    fn resumes_exactly(&self, user: usize, last: &str) -> bool {
        !self.store.replay(Some(&self.users[user]), &[], None, Some(last)).gap
    }
}

/// The blip: [`SAMPLE`] users lose their connection at once and stay away,
/// keeping the id of their last message, as a browser does. Returns how many
/// could resume from it at the drop (under the byte bound, all) and, sorted,
/// for how many whole seconds each of them still could.
fn blip(load: &mut Load) -> (usize, Vec<u64>) {
    let now = load.now_ms();
    let mut waiting: Vec<(usize, String)> = (0..SAMPLE)
        .filter_map(|user| load.last[user].map(|(at, sequence)| (user, id_of(at, sequence))))
        .filter(|(user, last)| load.resumes_exactly(*user, last))
        .collect();
    for (user, _) in &waiting {
        load.store.unpin_user(&load.users[*user], now);
    }
    let resumable = waiting.len();
    let mut windows: Vec<u64> = Vec::with_capacity(waiting.len());
    let mut second = 0;
    while !waiting.is_empty() && second <= RECENT_TTL_MS / 1000 {
        load.second();
        second += 1;
        waiting.retain(|(user, last)| {
            let exact = load.resumes_exactly(*user, last);
            if !exact {
                windows.push(second - 1);
            }
            exact
        });
    }
    windows.extend(waiting.iter().map(|_| second));
    windows.sort_unstable();
    (resumable, windows)
}

/// Percentile `p` (0..=100) of sorted values.
fn percentile(sorted: &[u64], p: usize) -> u64 {
    sorted[(sorted.len() - 1) * p / 100]
}

/// What one run's store held after the warm-up.
struct Held {
    heap: usize,
    rings: usize,
    entries: usize,
}

/// One run with `frame_len` B frames and rings of `recent_buffer` entries.
fn scenario(frame_len: usize, recent_buffer: usize) -> Held {
    let users_here = USERS / SHARDS;
    // The registry's interned names: allocated before the count starts.
    let users: Vec<Key> = (0..users_here).map(|i| Key::from(format!("user-{i:06}"))).collect();
    let share = |total: usize| total.div_ceil(SHARDS).max(1);
    let limits = ReplayLimits {
        entries: recent_buffer,
        ttl_ms: RECENT_TTL_MS,
        max_users: share(RECENT_MAX_USERS),
        max_rooms: share(RECENT_MAX_ROOMS),
        max_bytes: share(RECENT_MAX_BYTES),
    };
    let heap_before = HEAP.load(Ordering::Relaxed);
    let store = ReplayStore::new(limits);
    let mut load = Load::new(store, users, frame_len);
    // The bench's own bookkeeping, not the store's.
    let own = (load.last.capacity() * std::mem::size_of::<Option<(u64, u64)>>() + load.payload.capacity()) as isize;
    let started = Instant::now();
    for _ in 0..WARM_UP_S {
        load.second();
    }
    let elapsed = started.elapsed();
    let usage = load.store.usage();
    let heap = (HEAP.load(Ordering::Relaxed) - heap_before - own).max(0) as usize;

    println!();
    println!(
        "{frame_len} B frames: one shard of {SHARDS}: {users_here} connected users, {} targeted messages/s, \
         per-shard limits: {recent_buffer} entries, {} users without a connection, {} MiB",
        load.per_second,
        RECENT_MAX_USERS.div_ceil(SHARDS),
        RECENT_MAX_BYTES.div_ceil(SHARDS) >> 20
    );
    println!(
        "  after {WARM_UP_S} s: {} user rings, {} entries ({:.1} per ring), {:.1} MiB of frames referenced ({})",
        usage.users,
        usage.entries,
        usage.entries as f64 / usage.users.max(1) as f64,
        usage.bytes as f64 / (1 << 20) as f64,
        if usage.bytes + frame_len > RECENT_MAX_BYTES.div_ceil(SHARDS) {
            "at the byte bound"
        } else {
            "under the byte bound"
        },
    );
    println!(
        "  heap held: {:.1} MiB = {:.0} B per connected user, {:.0} B per entry ({} B of it the frame, {:.0} B overhead)",
        heap as f64 / (1 << 20) as f64,
        heap as f64 / users_here as f64,
        heap as f64 / usage.entries.max(1) as f64,
        frame_len,
        (heap as f64 - usage.bytes as f64) / usage.entries.max(1) as f64,
    );
    println!(
        "  record with the bounds enforced: {:.0} ns per message over the warm-up (id, frame encoding and the \
         counting allocator included)",
        elapsed.as_nanos() as f64 / load.sent as f64
    );

    let (resumable, windows) = blip(&mut load);
    println!(
        "  {SAMPLE} users drop together; {resumable} of them could resume from their last message at the drop, \
         and for so long after it (s): min {}, median {}, p99 {}, max {}",
        windows[0],
        percentile(&windows, 50),
        percentile(&windows, 99),
        windows[windows.len() - 1]
    );
    black_box(load);
    Held { heap, rings: usage.users, entries: usage.entries }
}

fn main() {
    let full = scenario(100, RECENT_BUFFER);
    // The same with half the entries per ring splits the heap into a part
    // per entry and a part per ring (all rings are full in both runs).
    let half = scenario(100, RECENT_BUFFER / 2);
    let per_entry = (full.heap - half.heap) as f64 / (full.entries - half.entries) as f64;
    let per_ring = (full.heap as f64 - per_entry * full.entries as f64) / full.rings as f64;
    println!();
    println!(
        "100 B frames, from the two runs above: {per_entry:.0} B per entry (the frame, its heap chunk, the \
         shared-frame header, the ring slot) and {per_ring:.0} B per ring (map entry, name, LRU order, connected set)"
    );
    scenario(200, RECENT_BUFFER);
}
