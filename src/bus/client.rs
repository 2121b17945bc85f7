//! The bus thread: one [`Session`] with Redis at a time, rebuilt after any
//! error, and the state that outlives sessions (positions in the log, own
//! publishes under way).
//!
//! Between sessions every publish is refused at once (503), and the reconnect
//! waits an exponential backoff with jitter; [`Health`] keeps that from
//! writing lines per attempt. A new session first syncs every
//! partition with the log and catches up on what it missed, before anything
//! newer is applied (see [`super::sequencer`]). With Sentinel the session
//! also watches `+switch-master`; with Cluster it learns which node owns each
//! partition from `MOVED` replies.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use super::clock;
use super::conn::{BusError, RedisConn};
use super::health::Health;
use super::log::{AppendSettings, PartitionKeys};
use super::peer::{self, Peers};
use super::resp::{self, Reply};
use super::sequencer::Sequencer;
use super::session::{Durable, Session};
use super::url::{RedisUrl, Topology};
use super::{apply, Bus, BusCommand, BusState};
use crate::config::IoDriver;
use crate::shard::envelope::{Answer, Envelope};
use crate::shard::inbox::LocalInbox;
use crate::shard::interest::Probe;
use crate::shard::Shared;
use crate::tls::Tls;

/// First and largest reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Commands taken from the inbox per turn while refusing.
const BATCH: usize = 256;

/// Starts the bus thread, on the kernel interface `--io-driver` names (as
/// the shards: where io_uring is refused, e.g. by a container's seccomp
/// profile, `epoll` keeps every thread off it), and its ticker.
pub fn spawn(shared: Arc<Shared>, bus: Arc<Bus>, inbox: LocalInbox<BusCommand>, url: RedisUrl) -> std::io::Result<()> {
    clock::spawn_ticker(bus.clone())?;
    std::thread::Builder::new().name("bus".into()).spawn(move || {
        let driver = shared.config.io_driver;
        let serve = move || run(shared, bus, inbox, url);
        if driver.tries_uring() {
            match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().build() {
                Ok(mut runtime) => return runtime.block_on(serve()),
                Err(error) if driver == IoDriver::Auto => {
                    crate::log!(Warn, "bus: io_uring runtime failed; falling back to epoll", error = error)
                }
                Err(error) => return crate::log!(Error, "bus runtime failed to start", error = error),
            }
        }
        match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().build() {
            Ok(mut runtime) => runtime.block_on(serve()),
            Err(error) => crate::log!(Error, "bus runtime failed to start", error = error),
        }
    })?;
    Ok(())
}

async fn run(shared: Arc<Shared>, bus: Arc<Bus>, mut inbox: LocalInbox<BusCommand>, url: RedisUrl) {
    let mut backoff = Backoff::new();
    let mut nodes = match &url.topology {
        Topology::Cluster(seeds) => seeds.clone(),
        _ => Vec::new(),
    };
    let mut durable = Durable {
        sequencer: Sequencer::new(bus.partitions),
        own: apply::OwnAppends::default(),
        keys: (0..bus.partitions).map(|p| PartitionKeys::new(&bus.channel, p)).collect(),
        settings: AppendSettings {
            history: bus.history,
            window_ms: bus.dedupe_window.as_millis() as u64,
            sharded: false,
        },
        epoch_candidate: String::new(),
        health: Health::default(),
        range_size: Default::default(),
        peers: Peers::new(peer::alive_for(bus.timeout)),
    };
    let mut first = true;
    loop {
        if !first {
            bus.count_reconnect();
        }
        first = false;
        bus.set_state(BusState::Connecting);
        // A log this session creates gets an epoch no earlier log had: after
        // a Redis restart, a log made again under the epoch it had before
        // would look to other instances like the old one gone back.
        durable.epoch_candidate = super::new_epoch();
        let error = match open_session(&url, &bus, &mut durable, &mut nodes).await {
            Ok(session) => {
                crate::log!(Debug, "bus subscribed", redis = session.address(), channel = bus.channel);
                let opened = std::time::Instant::now();
                let error = session.run(&shared, &bus, &mut inbox, &mut durable).await;
                // Only a session that served a while resets the delay: one
                // failing right after it opens (a Cluster without a master
                // for some slots) must not reconnect in a tight loop.
                if opened.elapsed() >= BACKOFF_MAX {
                    backoff.reset();
                }
                error
            }
            Err(error) => error,
        };
        durable.health.failed(&shared, &bus, &error);
        // No tick while down: what the shards were not woken for goes in now.
        shared.ring_waiting_lanes();
        refuse_for(&shared, &mut inbox, backoff.next()).await;
    }
}

/// Answers every publish that arrives during `delay` with "unavailable".
async fn refuse_for(shared: &Shared, inbox: &mut LocalInbox<BusCommand>, delay: Duration) {
    let until = std::time::Instant::now() + delay;
    let mut commands = Vec::new();
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        // The ticker's tick comes through this inbox: the wait ends at
        // least every [`clock::TICK`] to look at the time left.
        inbox.recv_batch(&mut commands, BATCH).await;
        for command in commands.drain(..) {
            match command {
                BusCommand::Append(append) => apply::refuse(shared, *append),
                BusCommand::Ask(ask) => shared.send_from_bus(
                    ask.reply.shard,
                    Envelope::Reply { to: ask.reply, answer: Answer::default() },
                    Probe::NOW,
                ),
                BusCommand::Answer { .. } | BusCommand::Evict(_) | BusCommand::Tick => {}
            }
        }
    }
}

/// Finds the node to talk to and opens a session there.
async fn open_session(
    url: &RedisUrl,
    bus: &Bus,
    durable: &mut Durable,
    nodes: &mut Vec<String>,
) -> Result<Session, BusError> {
    let timeout = bus.timeout;
    let (address, sentinel) = match &url.topology {
        Topology::Single(address) => (address.clone(), None),
        Topology::Sentinel { sentinels, master } => {
            let (address, watcher) = discover_master(sentinels, master, url.tls.as_ref(), timeout).await?;
            let mut probe = RedisConn::open(&address, Some(url), timeout).await?;
            let role = probe.call(&[b"ROLE"], timeout).await?;
            let is_master =
                matches!(&role, Reply::Array(items) if items.first().and_then(Reply::text) == Some("master"));
            if !is_master {
                return Err(format!("{address} is not a master (Sentinel is behind a failover)"));
            }
            (address, Some(watcher))
        }
        Topology::Cluster(_) => {
            let address = reachable_node(nodes, url, timeout).await?;
            if let Ok(mut conn) = RedisConn::open(&address, Some(url), timeout).await {
                learn_cluster_nodes(&mut conn, nodes, timeout).await;
            }
            (address, None)
        }
    };
    Session::open(url, &address, bus, durable, sentinel).await
}

/// Asks each Sentinel in turn for the master's address, and keeps a
/// connection subscribed to `+switch-master` on the one that answered.
async fn discover_master(
    sentinels: &[String],
    master: &str,
    tls: Option<&Tls>,
    timeout: Duration,
) -> Result<(String, RedisConn), BusError> {
    let mut errors = Vec::new();
    for sentinel in sentinels {
        let attempt = async {
            let mut conn = RedisConn::open_sentinel(sentinel, tls, timeout).await?;
            let reply = conn.call(&[b"SENTINEL", b"get-master-addr-by-name", master.as_bytes()], timeout).await?;
            let address = match &reply {
                Reply::Array(items) if items.len() == 2 => {
                    format!("{}:{}", items[0].text().unwrap_or_default(), items[1].text().unwrap_or_default())
                }
                _ => return Err(format!("{sentinel} does not know master `{master}`")),
            };
            let mut out = BytesMut::new();
            resp::command(&mut out, &[b"SUBSCRIBE", b"+switch-master"]);
            conn.writer.write(out).await?;
            clock::timeout(timeout, conn.reader.next()).await.map_err(|_| "SUBSCRIBE timed out".to_string())??;
            Ok::<_, BusError>((address, conn))
        };
        match attempt.await {
            Ok(found) => return Ok(found),
            Err(error) => errors.push(error),
        }
    }
    Err(format!("no Sentinel answered: {}", errors.join("; ")))
}

/// The first cluster node that accepts a connection, starting after the one
/// used last time so a dead node is skipped.
async fn reachable_node(nodes: &mut [String], url: &RedisUrl, timeout: Duration) -> Result<String, BusError> {
    let mut errors = Vec::new();
    for _ in 0..nodes.len() {
        let node = nodes[0].clone();
        nodes.rotate_left(1);
        match RedisConn::open(&node, Some(url), timeout).await {
            Ok(_) => return Ok(node),
            Err(error) => errors.push(error),
        }
    }
    Err(format!("no cluster node reachable: {}", errors.join("; ")))
}

/// Adds the nodes `CLUSTER NODES` lists, so later reconnects can reach nodes
/// that joined after start-up.
async fn learn_cluster_nodes(conn: &mut RedisConn, nodes: &mut Vec<String>, timeout: Duration) {
    let Ok(reply) = conn.call(&[b"CLUSTER", b"NODES"], timeout).await else { return };
    let Some(text) = reply.text() else { return };
    for line in text.lines() {
        let Some(address) = line.split_whitespace().nth(1) else { continue };
        let address = address.split('@').next().unwrap_or_default();
        let failed = line.split_whitespace().nth(2).is_some_and(|flags| flags.contains("fail"));
        if !address.is_empty() && !address.starts_with(':') && !failed && !nodes.iter().any(|n| n == address) {
            nodes.push(address.to_owned());
        }
    }
}

/// Exponential reconnect delay with ±50% jitter, so a fleet of instances does
/// not reconnect in lockstep after a Redis restart.
struct Backoff {
    next: Duration,
    seed: u64,
}

impl Backoff {
    fn new() -> Self {
        let seed = crate::sse::id::random_instance() as u64 | 1;
        Backoff { next: BACKOFF_MIN, seed }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    fn next(&mut self) -> Duration {
        // xorshift64: jitter needs no quality, only spread.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let jitter = 0.5 + (self.seed % 1000) as f64 / 1000.0;
        base.mul_f64(jitter)
    }
}
