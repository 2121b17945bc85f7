//! Fan-out of one message to 10,000 in-memory subscriber queues, as a shard
//! does it: the frame is encoded once and every `FrameQueue` gets a clone of the
//! same `Bytes` (a reference count). One round pushes into every queue, then
//! drains every queue the way the write loop does (`describe` into a reused
//! iovec array, `consume` as if the socket took it all), so the next round
//! starts empty. No sockets.
//!
//! Baseline: copy-per-recipient, a `Vec<u8>` clone of the frame pushed into a
//! `VecDeque<Vec<u8>>` per subscriber and drained the same way.
//!
//! A counting `#[global_allocator]` (this binary only) shows allocations per
//! recipient once warm: the shared frame needs none, the copy needs one.
//!
//! A second section broadcasts through the shard itself (`ShardCtx::deliver`
//! with `Target::All` to 10,000 registered connections, replay ring included),
//! beside the bare queue round of the first section measured in the same run;
//! then the same with 10,000 more connections of a tenant on the shard (which
//! the default broadcast skips), and that tenant's broadcast (its member set).
//!
//! Run: `cargo bench --bench fanout`

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::rc::Rc;
use std::sync::{mpsc, Arc};

use bytes::Bytes;
use clap::Parser;
use common::{header, measure_per, ratio};
use ssekify::api::subscribe::render_refusal;
use ssekify::auth::Authenticator;
use ssekify::config::{Cli, Config, DropPolicy};
use ssekify::shard::conn::{slot_of, Conn};
use ssekify::shard::envelope::{Delivery, Target};
use ssekify::shard::inbox::inbox;
use ssekify::shard::queue::{FrameQueue, Pushed, QueueLimits};
use ssekify::shard::{ShardCtx, Shared, INBOX_CAPACITY};
use ssekify::sse::frame::encode;

/// Counts every allocation (and growth by `realloc`) made through it.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const RECIPIENTS: usize = 10_000;
/// The server's defaults are far above one frame per queue; nothing is dropped.
const LIMITS: QueueLimits =
    QueueLimits { max_items: 1024, max_bytes: 1 << 20, policy: DropPolicy::Oldest, notice: true };
/// Frames the write loop sends at once.
const BATCH: usize = 64;

/// One shared-frame round: push to every queue, then drain every queue.
fn shared_round(queues: &mut [FrameQueue], iovecs: &mut Vec<libc::iovec>, frame: &Bytes) -> usize {
    for queue in queues.iter_mut() {
        let pushed = queue.push(frame.clone(), &LIMITS);
        debug_assert_eq!(pushed, Pushed::Queued { dropped_oldest: 0 });
        black_box(pushed);
    }
    let mut written = 0;
    for queue in queues.iter_mut() {
        written += send_all(queue, iovecs);
    }
    written
}

/// Drains a queue as the write loop does when the socket takes everything.
fn send_all(queue: &mut FrameQueue, iovecs: &mut Vec<libc::iovec>) -> usize {
    iovecs.clear();
    let bytes = queue.describe(iovecs, BATCH);
    black_box(&iovecs);
    queue.consume(bytes);
    bytes
}

/// One copy-per-recipient round, same shape.
fn copy_round(queues: &mut [VecDeque<Vec<u8>>], batch: &mut Vec<Vec<u8>>, frame: &[u8]) -> usize {
    for queue in queues.iter_mut() {
        queue.push_back(frame.to_vec());
    }
    let mut written = 0;
    for queue in queues.iter_mut() {
        let take = queue.len().min(BATCH);
        batch.extend(queue.drain(..take));
        written += batch.iter().map(Vec::len).sum::<usize>();
        batch.clear();
    }
    written
}

/// Allocations made by `f`, after it has run once to warm up.
fn allocations_in(mut f: impl FnMut() -> usize) -> usize {
    black_box(f());
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    black_box(f());
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

/// A frame of exactly `len` bytes: 31 B id, 13 B of field names and line
/// ends, and a JSON-looking single-line payload filling the rest.
fn frame_of(len: usize) -> Bytes {
    let unit = br#"{"room":"team-42","text":"deploy 8812 done","at":179599},"#;
    let data: Vec<u8> = unit.iter().copied().cycle().take(len - 44).collect();
    let frame = encode("1795996800000-0a1b2c3d-0000002a", None, &data);
    assert_eq!(frame.len(), len);
    frame
}

/// A one-shard context, as the server builds it, with `conns` anonymous
/// connections of the default namespace and `tenant_conns` of tenant `acme`
/// registered directly in its slab (no sockets: the write loop does not run).
fn shard_with(conns: usize, tenant_conns: usize) -> Rc<ShardCtx> {
    let config = Config::try_from(&Cli::parse_from(["ssekify", "--shards", "1"]).server).expect("default config");
    let (shared_inbox, _local) = inbox(INBOX_CAPACITY);
    let (lifecycle, _) = mpsc::channel();
    let shared =
        Arc::new(Shared::new(config, Authenticator::None, None, render_refusal, vec![shared_inbox], 1, lifecycle));
    let ctx = ShardCtx::new(0, shared, None).expect("an epoll set");
    {
        let mut state = ctx.state.borrow_mut();
        for _ in 0..conns {
            let key = state.conns.vacant_key();
            state.conns.insert(Conn::new(-1, key, None, None, Default::default(), 0, 0));
        }
        for _ in 0..tenant_conns {
            let key = state.conns.vacant_key();
            let tenant = state.registry.add_tenant_member("acme", key);
            state.conns.insert(Conn::new(-1, key, Some(tenant), None, Default::default(), 0, 0));
        }
    }
    ctx
}

/// One broadcast through the shard (`deliver`), then every listed queue
/// drained as the write loop does: the rows with connections that the
/// broadcast does not reach count the broadcast, not a drain.
fn shard_round(ctx: &ShardCtx, write_loop: &mut WriteLoop, delivery: &Delivery) -> usize {
    let queued = ctx.deliver(delivery.clone()) as usize;
    let WriteLoop { iovecs, due } = write_loop;
    let mut state = ctx.state.borrow_mut();
    state.ready.take(due);
    for token in due.drain(..) {
        let conn = &mut state.conns[slot_of(token)];
        conn.taken();
        send_all(&mut conn.queue, iovecs);
    }
    queued
}

/// The write loop's reused buffers.
#[derive(Default)]
struct WriteLoop {
    iovecs: Vec<libc::iovec>,
    due: Vec<u64>,
}

fn shard_broadcast(queues: &mut [FrameQueue], iovecs: &mut Vec<libc::iovec>) {
    let frame = frame_of(100);
    let ctx = shard_with(RECIPIENTS, 0);
    let all = Delivery::message(Target::All, frame.clone(), false);
    let batch = &mut WriteLoop::default();
    assert_eq!(shard_round(&ctx, batch, &all), RECIPIENTS);
    header(
        &format!(
            "Broadcast of one 100 B frame through ShardCtx::deliver to {RECIPIENTS} connections; op = one recipient"
        ),
        "recipient",
    );
    let iterations = 300;
    let bare = measure_per("bare FrameQueue round (section 1)", iterations, RECIPIENTS as u64, || {
        shared_round(queues, iovecs, &frame)
    });
    let shard =
        measure_per("ShardCtx::deliver, Target::All", iterations, RECIPIENTS as u64, || shard_round(&ctx, batch, &all));
    ratio("shard broadcast against the bare queue round", shard, bare);
    let allocs = allocations_in(|| shard_round(&ctx, batch, &all));
    println!(
        "  allocations in one warm broadcast round: {allocs} ({:.4} per recipient)",
        allocs as f64 / RECIPIENTS as f64
    );

    // 10,000 more connections on the shard, all of tenant `acme`.
    let mixed = shard_with(RECIPIENTS, RECIPIENTS);
    let tenant = Delivery::message(Target::Tenant("acme".into()), frame.clone(), false);
    assert_eq!(shard_round(&mixed, batch, &all), RECIPIENTS);
    assert_eq!(shard_round(&mixed, batch, &tenant), RECIPIENTS);
    let skipping = measure_per("  Target::All, 10,000 tenant conns also here", iterations, RECIPIENTS as u64, || {
        shard_round(&mixed, batch, &all)
    });
    let members = measure_per("  Target::Tenant, its 10,000 of 20,000", iterations, RECIPIENTS as u64, || {
        shard_round(&mixed, batch, &tenant)
    });
    ratio("default broadcast with a tenant beside it", skipping, shard);
    ratio("tenant broadcast (member set)", members, shard);
    let allocs = allocations_in(|| shard_round(&mixed, batch, &tenant));
    println!("  allocations in one warm tenant broadcast round: {allocs}");
}

fn main() {
    let mut queues: Vec<FrameQueue> = (0..RECIPIENTS).map(|_| FrameQueue::default()).collect();
    let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(BATCH);
    let mut copies: Vec<VecDeque<Vec<u8>>> = (0..RECIPIENTS).map(|_| VecDeque::new()).collect();
    let mut copy_batch: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
    let mut clones: Vec<Bytes> = Vec::with_capacity(RECIPIENTS);

    // 100 B is the case asked for; 4 KiB shows how the copy scales with size.
    for (len, iterations) in [(100usize, 300u64), (4096, 40)] {
        let frame = frame_of(len);
        assert_eq!(shared_round(&mut queues, &mut iovecs, &frame), RECIPIENTS * len);
        assert!(queues.iter().all(FrameQueue::is_idle));
        assert_eq!(copy_round(&mut copies, &mut copy_batch, &frame), RECIPIENTS * len);

        header(
            &format!("Fan-out of one {len} B frame to {RECIPIENTS} queues (push + drain); op = one recipient"),
            "recipient",
        );
        let shared = measure_per("ssekify FrameQueue, shared Bytes", iterations, RECIPIENTS as u64, || {
            shared_round(&mut queues, &mut iovecs, &frame)
        });
        let copied = measure_per("baseline VecDeque<Vec<u8>>, copy each", iterations, RECIPIENTS as u64, || {
            copy_round(&mut copies, &mut copy_batch, &frame)
        });
        measure_per("  Bytes clone + drop only (refcount)", iterations, RECIPIENTS as u64, || {
            clones.extend(std::iter::repeat_with(|| frame.clone()).take(RECIPIENTS));
            let n = clones.len();
            clones.clear();
            n
        });
        ratio(&format!("shared-frame fan-out, {len} B"), shared, copied);

        let shared_allocs = allocations_in(|| shared_round(&mut queues, &mut iovecs, &frame));
        let copy_allocs = allocations_in(|| copy_round(&mut copies, &mut copy_batch, &frame));
        println!("  allocations in one warm round of {RECIPIENTS} recipients (counting global allocator):");
        for (name, allocs) in [
            ("ssekify FrameQueue, shared Bytes", shared_allocs),
            ("baseline VecDeque<Vec<u8>>, copy each", copy_allocs),
        ] {
            println!("    {name:<40} {allocs:>8} total  {:>8.4} per recipient", allocs as f64 / RECIPIENTS as f64);
        }
    }
    shard_broadcast(&mut queues, &mut iovecs);
}
