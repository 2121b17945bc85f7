//! The cross-instance bus: a sequenced log in Redis that every instance
//! applies in order, spoken to by a dedicated thread.
//!
//! Parts: [`url`] (`--redis` addresses), [`resp`] (framing via
//! `redis-protocol`), [`conn`] (one Redis connection: connect, handshake,
//! commands), [`tls`] (`rediss://`: rustls over the connection), [`wire`]
//! (the format of a log entry), [`log`] (the atomic append script and the
//! reads), [`sequencer`] (which entries to apply, catch-up, gaps; no I/O),
//! [`apply`] (entries into deliveries), [`events`] (what the socket readers
//! hand the session), [`session`] (the connections and the loop serving
//! them), [`client`] (the thread: sessions, reconnects, Sentinel and Cluster),
//! [`health`] (what the log says when the link goes down and comes back).
//!
//! This module is the handle the publish routes use: [`publish`] splits
//! messages into wire entries per partition and hands them to the bus
//! thread, which appends each to its partition's log and answers once Redis
//! acknowledged it; the route answers 503 otherwise. Every instance, this one
//! included, then delivers the entry when it applies it in log order.

pub mod apply;
pub mod client;
pub mod clock;
pub mod conn;
pub mod events;
pub mod health;
pub mod log;
pub mod peer;
pub mod resp;
pub mod sequencer;
pub mod session;
pub mod tls;
pub mod url;
pub mod wire;

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use crate::shard::envelope::Question;
use crate::shard::envelope::{ConnId, Delivery, ReplyTo};
use crate::shard::inbox::SharedInbox;
use crate::shard::{ShardCtx, Shared};
use apply::Append;
use log::AppendItem;
use sequencer::{Position, Sequencer};

/// Time a publish may wait per wire entry on top of `--bus-timeout`: Redis
/// runs a full 256 KiB entry's append in tens of milliseconds, so a batch
/// of many entries is not refused for its size alone.
const ENTRY_ALLOWANCE: Duration = Duration::from_millis(100);

/// Publishes the bus thread holds before publishers are refused.
pub const BUS_INBOX_CAPACITY: usize = 16 * 1024;

/// Work for the bus thread.
#[derive(Debug)]
pub enum BusCommand {
    /// Append one wire entry to its partition's log.
    Append(Box<Append>),
    /// Ask the instances alive a question; every answer goes to the asking shard.
    Ask(Box<Ask>),
    /// Answer instance `to`'s question `id`.
    Answer {
        /// The asking instance.
        to: u32,
        /// Its number for the question.
        id: u64,
        /// This instance's answer.
        body: Bytes,
    },
    /// Have connection `id`'s instance close it with `ssekify.evicted`.
    Evict(ConnId),
    /// The housekeeping tick is due (sent by the ticker thread, see
    /// [`client::spawn`]): wakes a session that nothing else woke.
    Tick,
}

/// A question for other instances (see [`peer`]).
#[derive(Debug)]
pub struct Ask {
    /// What is asked.
    pub question: Question,
    /// Only this instance (the one a connection id names), else every instance alive.
    pub only: Option<u32>,
    /// Where the answers go.
    pub reply: ReplyTo,
    /// When to answer with whatever came.
    pub deadline: Instant,
}

/// Connection state shown in stats and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BusState {
    /// Connecting or resubscribing.
    Connecting = 0,
    /// Subscribed, and the canary round trip is recent.
    Live = 1,
    /// Not connected; publishes are refused until it is back.
    Down = 2,
}

impl BusState {
    /// Name for JSON and logs.
    pub fn name(self) -> &'static str {
        match self {
            BusState::Connecting => "connecting",
            BusState::Live => "live",
            BusState::Down => "down",
        }
    }
}

/// How the bus is set up (`--channel`, `--bus-*`).
#[derive(Debug, Clone)]
pub struct BusSettings {
    /// Prefix of every key and channel.
    pub channel: String,
    /// `--tenants`: the tenants whose messages this instance takes (`None`: all).
    pub tenants: Option<Vec<Box<str>>>,
    /// How long a publisher waits for Redis, and how soon a silent Redis is noticed.
    pub timeout: Duration,
    /// `--bus-partitions`.
    pub partitions: u16,
    /// `--bus-history`: entries kept per partition.
    pub history: u64,
    /// How long the log remembers a message id, for retries on any instance.
    pub dedupe_window: Duration,
}

/// The handle every shard shares with the bus thread.
pub struct Bus {
    /// Commands to the bus thread.
    pub inbox: Arc<SharedInbox<BusCommand>>,
    /// Prefix of every key and channel.
    pub channel: String,
    /// How long a publisher waits for Redis.
    pub timeout: Duration,
    /// This instance's id (in every entry it appends).
    pub instance: u32,
    /// `--tenants`: the tenants whose messages this instance takes (`None`: all).
    pub tenants: Option<Vec<Box<str>>>,
    /// Number of log partitions.
    pub partitions: u16,
    /// Entries kept per partition.
    pub history: u64,
    /// How long the log remembers a message id.
    pub dedupe_window: Duration,
    next_token: AtomicU64,
    state: AtomicU8,
    published: AtomicU64,
    received: AtomicU64,
    reconnects: AtomicU64,
    catch_ups: AtomicU64,
    gaps: AtomicU64,
    round_trip_us: AtomicU64,
    instances: AtomicU64,
    positions: Mutex<Vec<Position>>,
    last_error: Mutex<Option<String>>,
}

/// Counters for `/v1/stats` and `/metrics`.
#[derive(Debug, Clone)]
pub struct BusStats {
    /// Current state.
    pub state: BusState,
    /// Messages acknowledged by Redis.
    pub published: u64,
    /// Messages received from other instances.
    pub received: u64,
    /// Connection attempts after the first.
    pub reconnects: u64,
    /// Reads of missed entries from the log.
    pub catch_ups: u64,
    /// Times a partition's log had lost what this instance missed (each
    /// announced as `ssekify.gap` to the subscribers concerned).
    pub gaps: u64,
    /// The last canary round trip through Redis, in microseconds.
    pub round_trip_us: u64,
    /// Instances heard alive, this one included (the ones presence and the
    /// per-user limit ask).
    pub instances: u64,
    /// Per partition: applied sequence, lag and epoch.
    pub positions: Vec<Position>,
    /// The last connection or protocol error.
    pub last_error: Option<String>,
}

/// Why a publish could not be handed to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusUnavailable;

impl Bus {
    /// A handle; the thread is started by [`client::spawn`].
    pub fn new(inbox: Arc<SharedInbox<BusCommand>>, settings: BusSettings, instance: u32) -> Self {
        Bus {
            inbox,
            channel: settings.channel,
            tenants: settings.tenants,
            timeout: settings.timeout,
            instance,
            partitions: settings.partitions.max(1),
            history: settings.history,
            dedupe_window: settings.dedupe_window,
            next_token: AtomicU64::new(1),
            state: AtomicU8::new(BusState::Connecting as u8),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            catch_ups: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            round_trip_us: AtomicU64::new(0),
            instances: AtomicU64::new(0),
            positions: Mutex::new(Vec::new()),
            last_error: Mutex::new(None),
        }
    }

    /// Current state.
    pub fn state(&self) -> BusState {
        match self.state.load(Ordering::Acquire) {
            1 => BusState::Live,
            2 => BusState::Down,
            _ => BusState::Connecting,
        }
    }

    /// True while publishes can be acknowledged and messages arrive.
    pub fn is_live(&self) -> bool {
        self.state() == BusState::Live
    }

    /// A snapshot for stats.
    pub fn stats(&self) -> BusStats {
        BusStats {
            state: self.state(),
            published: self.published.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            catch_ups: self.catch_ups.load(Ordering::Relaxed),
            gaps: self.gaps.load(Ordering::Relaxed),
            round_trip_us: self.round_trip_us.load(Ordering::Relaxed),
            instances: self.instances.load(Ordering::Relaxed),
            positions: self.positions.lock().map(|p| p.clone()).unwrap_or_default(),
            last_error: self.last_error.lock().map(|e| e.clone()).unwrap_or_default(),
        }
    }

    /// Sets the state shown in stats; [`health`] logs the changes that matter.
    pub(crate) fn set_state(&self, state: BusState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// Keeps `error` for stats (`lastError`); the caller decides whether it is
    /// worth a log line.
    pub(crate) fn record_error(&self, error: &str) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error.to_owned());
        }
    }

    /// Keeps `error` for stats and tells the lifecycle event listeners
    /// (an `error` event of kind `bus`).
    pub(crate) fn report_error(&self, shared: &Shared, error: &str) {
        self.record_error(error);
        if shared.events.active() {
            shared.emit(crate::events::error_event("bus", error, None, self.instance));
        }
    }

    pub(crate) fn count_published(&self, messages: u64) {
        self.published.fetch_add(messages, Ordering::Relaxed);
    }

    pub(crate) fn count_received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn count_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_catch_up(&self) {
        self.catch_ups.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_gap(&self) {
        self.gaps.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_round_trip(&self, took: Duration) {
        self.round_trip_us.store(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub(crate) fn record_instances(&self, alive: usize) {
        self.instances.store(alive as u64, Ordering::Relaxed);
    }

    /// Copies the partitions' positions for stats (once per housekeeping tick).
    pub(crate) fn publish_positions(&self, sequencer: &Sequencer) {
        let positions = (0..sequencer.len()).map(|p| sequencer.position(p)).collect();
        if let Ok(mut shown) = self.positions.lock() {
            *shown = positions;
        }
    }
}

/// A fresh random epoch id (hex, so it never contains the notification's `:`).
pub fn new_epoch() -> String {
    let random = crate::sse::id::random_instance;
    format!("{:08x}{:08x}", random(), random())
}

/// One message for the bus: its local delivery (frame encoded once) and
/// what the log needs to carry it to other instances.
#[derive(Debug)]
pub struct Outgoing {
    /// The local delivery; its target is in internal keys.
    pub delivery: Delivery,
    /// Event id.
    pub id: String,
    /// Event name.
    pub event: Option<String>,
    /// Payload.
    pub data: Bytes,
    /// Set when a retry must be recognised on any instance (see [`AppendItem::dedupe`]).
    pub dedupe: Option<Bytes>,
}

impl Outgoing {
    /// A live room change for the bus: no id, event or payload.
    pub fn room_change(delivery: Delivery) -> Self {
        Outgoing { delivery, id: String::new(), event: None, data: Bytes::new(), dedupe: None }
    }

    /// Its bytes in a wire entry.
    fn wire(&self) -> Bytes {
        let target = &self.delivery.target;
        match &self.delivery.room_change {
            Some(change) => wire::room_change(target, change),
            None => wire::message(target, &self.id, self.event.as_deref(), &self.data),
        }
    }

    /// Bytes [`Outgoing::wire`] produces.
    fn wire_len(&self) -> usize {
        let target = &self.delivery.target;
        match &self.delivery.room_change {
            Some(change) => wire::room_change_len(target, change),
            None => wire::message_len(target, &self.id, self.event.as_deref(), &self.data),
        }
    }
}

/// What the log made of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Redis's receiver count (the instances subscribed).
    pub receivers: u64,
    /// Per message, the local connections it was queued to.
    pub delivered: Vec<u64>,
    /// Per message, when the log had it already: the id it was first published with.
    pub duplicates: Vec<Option<String>>,
}

/// The dedupe key of a message published with its own `id`: a retry of it
/// to the same target is the same message.
pub fn id_dedupe(delivery: &Delivery, id: &str) -> Bytes {
    let (kind, key): (u8, &str) = match &delivery.target {
        crate::shard::envelope::Target::All => (b'a', ""),
        crate::shard::envelope::Target::User(key) => (b'u', key),
        crate::shard::envelope::Target::Room(key) => (b'r', key),
        crate::shard::envelope::Target::Tenant(key) => (b't', key),
        crate::shard::envelope::Target::Connection(_) => (b'c', ""),
    };
    let mut out = BytesMut::with_capacity(2 + key.len() + id.len());
    out.put_u8(kind);
    out.put_slice(key.as_bytes());
    out.put_u8(1);
    out.put_slice(id.as_bytes());
    out.freeze()
}

/// The dedupe key of message `index` of a request with `Idempotency-Key`
/// `key` (an internal key): a retry of the request is the same messages.
pub fn idempotency_dedupe(key: &str, index: usize) -> Bytes {
    Bytes::from(format!("k{key}\u{1}{index}"))
}

/// Hands `messages` to the log (one wire entry per partition and
/// [`log::CHUNK_MAX`] bytes, in order) and waits until Redis acknowledged
/// every entry and this instance applied them.
pub async fn publish(ctx: &Rc<ShardCtx>, bus: &Bus, messages: Vec<Outgoing>) -> Result<Published, BusUnavailable> {
    if !bus.is_live() {
        return Err(BusUnavailable);
    }
    let chunks = plan_chunks(&messages, bus.partitions);
    let total = messages.len();
    let mut messages: Vec<Option<Outgoing>> = messages.into_iter().map(Some).collect();
    let wait = bus.timeout + ENTRY_ALLOWANCE * chunks.len() as u32;
    let deadline = Instant::now() + wait;
    // Per chunk: the message indexes, and per shard that answers, its routed indexes.
    let mut plans = Vec::with_capacity(chunks.len());
    let mut appends = Vec::with_capacity(chunks.len());
    for (partition, indexes) in chunks {
        let mut items = Vec::with_capacity(indexes.len());
        let mut deliveries = Vec::with_capacity(indexes.len());
        for &index in &indexes {
            let message = messages[index].take().expect("each message in one chunk");
            let wire = message.wire();
            items.push(AppendItem { dedupe: message.dedupe, id: Bytes::from(message.id.into_bytes()), message: wire });
            deliveries.push(message.delivery);
        }
        let routed: Vec<(usize, Vec<usize>)> = ctx
            .shared
            .route_indexes(&deliveries)
            .into_iter()
            .enumerate()
            .filter(|(_, list)| !list.is_empty())
            .collect();
        appends.push((partition, items, deliveries));
        plans.push((indexes, routed));
    }
    let count: usize = plans.iter().map(|(_, routed)| 1 + routed.len()).sum();
    let answers = ctx
        .gather(
            count,
            |reply_to| {
                let mut position = 0;
                for ((partition, items, deliveries), (_, routed)) in appends.into_iter().zip(&plans) {
                    let ack = reply_to(position);
                    let local = routed.iter().enumerate().map(|(i, (shard, _))| (*shard, reply_to(position + 1 + i)));
                    let append = Append {
                        partition,
                        token: bus.next_token.fetch_add(1, Ordering::Relaxed),
                        items,
                        deliveries,
                        ack,
                        local: local.collect(),
                        deadline,
                    };
                    position += 1 + routed.len();
                    if bus.inbox.try_send(BusCommand::Append(Box::new(append))).is_err() {
                        return false;
                    }
                }
                true
            },
            wait,
        )
        .await
        .ok_or(BusUnavailable)?;
    let mut published = Published { receivers: 0, delivered: vec![0; total], duplicates: vec![None; total] };
    let mut answers = answers.into_iter();
    for (indexes, routed) in plans {
        let ack = answers.next().unwrap_or_default();
        let [0, receivers, duplicates @ ..] = ack.values.as_slice() else { return Err(BusUnavailable) };
        published.receivers = published.receivers.max(*receivers);
        let first_ids = ack.body.as_deref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
        for (&position, first_id) in duplicates.iter().zip(first_ids.split('\n')) {
            if let Some(&index) = indexes.get(position as usize) {
                published.duplicates[index] = Some(first_id.to_owned());
            }
        }
        for (_, list) in routed {
            let counts = answers.next().unwrap_or_default().values;
            for (&local, count) in list.iter().zip(counts) {
                published.delivered[indexes[local]] += count;
            }
        }
    }
    Ok(published)
}

/// Asks `question` of every instance alive, this one included (or of
/// `only`), and waits for their answers or `--bus-timeout`, whichever comes
/// first: an instance that stops answering meanwhile is left out once its
/// heartbeats stop, so a dead instance never counts. Refused when the bus is
/// not live.
pub async fn ask(
    ctx: &Rc<ShardCtx>,
    bus: &Bus,
    question: Question,
    only: Option<u32>,
) -> Result<peer::Answers, BusUnavailable> {
    if !bus.is_live() {
        return Err(BusUnavailable);
    }
    let deadline = Instant::now() + bus.timeout;
    let send = |reply| bus.inbox.try_send(BusCommand::Ask(Box::new(Ask { question, only, reply, deadline }))).is_ok();
    let answer = ctx.request_with_timeout(send, bus.timeout + ENTRY_ALLOWANCE).await.ok_or(BusUnavailable)?;
    // An empty answer: the session ended before the answers came.
    if answer.values.is_empty() {
        return Err(BusUnavailable);
    }
    Ok(peer::Answers::from_answer(answer))
}

/// Asks connection `id`'s instance to close it with `ssekify.evicted`
/// (best effort: a lost request leaves the user one connection over until
/// its next connection asks again).
pub fn evict(bus: &Bus, id: ConnId) {
    let _ = bus.inbox.try_send(BusCommand::Evict(id));
}

/// Groups message indexes into wire entries: runs of consecutive messages
/// of one partition, at most [`log::CHUNK_MAX`] bytes each (a larger single
/// message goes alone). Entries are appended in this order and every
/// instance applies them in it, so a batch keeps its order for any
/// subscriber, whatever mix of users, rooms and broadcasts it holds.
fn plan_chunks(messages: &[Outgoing], partitions: u16) -> Vec<(u16, Vec<usize>)> {
    let mut chunks: Vec<(u16, Vec<usize>)> = Vec::new();
    let mut bytes = 0;
    for (index, message) in messages.iter().enumerate() {
        let partition = message.delivery.target.partition(partitions);
        let size = message.wire_len();
        match chunks.last_mut() {
            Some((last, indexes)) if *last == partition && bytes + size <= log::CHUNK_MAX => {
                indexes.push(index);
                bytes += size;
            }
            _ => {
                chunks.push((partition, vec![index]));
                bytes = wire::HEADER_LEN + size;
            }
        }
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::envelope::Target;

    fn outgoing(target: Target, size: usize) -> Outgoing {
        let data = Bytes::from(vec![b'x'; size]);
        Outgoing {
            delivery: Delivery::message(target, Bytes::new(), false),
            id: "1".into(),
            event: None,
            data,
            dedupe: None,
        }
    }

    #[test]
    fn chunks_are_runs_of_one_partition_within_the_size_bound() {
        let user = |name: &str| Target::User(name.into());
        let a = user("a").partition(16);
        let b = (0..100).map(|i| user(&format!("b{i}"))).find(|t| t.partition(16) != a).unwrap();
        let big = log::CHUNK_MAX / 2;
        let messages = vec![
            outgoing(user("a"), big),
            outgoing(user("a"), big),
            outgoing(user("a"), 10),
            outgoing(b.clone(), 10),
            outgoing(user("a"), 10),
        ];
        let chunks = plan_chunks(&messages, 16);
        assert_eq!(chunks, vec![(a, vec![0]), (a, vec![1, 2]), (b.partition(16), vec![3]), (a, vec![4])]);
    }

    #[test]
    fn a_hundred_thousand_messages_fit_in_bounded_entries() {
        let messages: Vec<Outgoing> = (0..100_000).map(|_| outgoing(Target::All, 100)).collect();
        let chunks = plan_chunks(&messages, 16);
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|(p, _)| *p == Target::All.partition(16)));
        let flat: Vec<usize> = chunks.iter().flat_map(|(_, i)| i.iter().copied()).collect();
        assert_eq!(flat, (0..100_000).collect::<Vec<_>>(), "every message once, in order");
    }
}
