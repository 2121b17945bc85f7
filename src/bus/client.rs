//! The bus thread: one session at a time with Redis, rebuilt after any error.
//!
//! A session is a PUBLISH connection (pipelined: commands go out in batches,
//! acknowledgements come back in order) and a SUBSCRIBE connection on the same
//! node, plus, with Sentinel, a connection watching `+switch-master`. A canary
//! published every second on this instance's own channel must come back
//! through the subscription; while it does the bus is `live`, and when it
//! stops the session is rebuilt, so a subscription that silently died is
//! noticed. Between sessions every publish is refused at once (503), and the
//! reconnect waits an exponential backoff with jitter.
//!
//! The subscription covers `--channel` (the default namespace), the canary,
//! and the tenants' channels: `PSUBSCRIBE <channel>:tenant:*`, or, when
//! `--tenants` lists them, a `SUBSCRIBE` of each (never both, so no message
//! arrives twice).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::conn::{BusError, RedisConn, ReplyReader};
use super::resp::{self, Reply};
use super::tls::Tls;
use super::url::{RedisUrl, Topology};
use super::wire;
use super::{Bus, BusCommand, BusState};
use crate::namespace::Namespace;
use crate::shard::envelope::{Answer, Delivery, Envelope, ReplyTo};
use crate::shard::inbox::LocalInbox;
use crate::shard::Shared;
use crate::sse::frame;

/// How often the canary goes out.
const CANARY_EVERY: Duration = Duration::from_secs(1);
/// A canary older than this means the subscription is dead.
const CANARY_STALE: Duration = Duration::from_secs(3);
/// Pace of the session's housekeeping (canary, deadlines).
const TICK: Duration = Duration::from_millis(100);
/// First and largest reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Commands taken from the inbox per write.
const BATCH: usize = 256;

/// Starts the bus thread.
pub fn spawn(shared: Arc<Shared>, bus: Arc<Bus>, inbox: LocalInbox<BusCommand>, url: RedisUrl) -> std::io::Result<()> {
    std::thread::Builder::new().name("bus".into()).spawn(move || {
        let runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build();
        match runtime {
            Ok(mut runtime) => runtime.block_on(run(shared, bus, inbox, url)),
            Err(e) => crate::log!(Error, "bus runtime failed to start", error = e),
        }
    })?;
    Ok(())
}

/// An acknowledgement the PUBLISH connection still owes, in write order.
struct InFlight {
    reply: Option<ReplyTo>,
    messages: u32,
    sent: Instant,
}

async fn run(shared: Arc<Shared>, bus: Arc<Bus>, mut inbox: LocalInbox<BusCommand>, url: RedisUrl) {
    let mut backoff = Backoff::new();
    let mut nodes = match &url.topology {
        Topology::Cluster(seeds) => seeds.clone(),
        _ => Vec::new(),
    };
    let mut first = true;
    loop {
        if !first {
            bus.count_reconnect();
        }
        first = false;
        bus.set_state(BusState::Connecting);
        let error = match open_session(&url, &bus, &mut nodes).await {
            Ok(session) => {
                crate::log!(Info, "bus subscribed", redis = session.publish.address, channel = bus.channel);
                backoff.reset();
                session.run(&shared, &bus, &mut inbox).await
            }
            Err(error) => error,
        };
        bus.set_state(BusState::Down);
        bus.record_error(&error);
        refuse_for(&shared, &mut inbox, backoff.next()).await;
    }
}

/// Answers every publish that arrives during `delay` with "unavailable".
async fn refuse_for(shared: &Shared, inbox: &mut LocalInbox<BusCommand>, delay: Duration) {
    let until = Instant::now() + delay;
    let mut commands = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        if monoio::time::timeout(left, inbox.recv_batch(&mut commands, BATCH)).await.is_err() {
            return;
        }
        for BusCommand::Publish { reply, .. } in commands.drain(..) {
            answer(shared, reply, Answer { values: vec![1], body: None }).await;
        }
    }
}

struct Session {
    publish: RedisConn,
    subscribe: ReplyReader,
    /// Kept open for the life of the subscription.
    _subscribe_writer: super::conn::CommandWriter,
    /// With Sentinel: the connection subscribed to `+switch-master`.
    sentinel: Option<RedisConn>,
    canary_channel: String,
}

/// Finds the node to talk to and opens the connections of a session.
async fn open_session(url: &RedisUrl, bus: &Bus, nodes: &mut Vec<String>) -> Result<Session, BusError> {
    let timeout = bus.timeout;
    let (address, sentinel) = match &url.topology {
        Topology::Single(address) => (address.clone(), None),
        Topology::Sentinel { sentinels, master } => {
            let (address, watcher) = discover_master(sentinels, master, url.tls.as_ref(), timeout).await?;
            (address, Some(watcher))
        }
        Topology::Cluster(_) => (reachable_node(nodes, url, timeout).await?, None),
    };
    let mut publish = RedisConn::open(&address, Some(url), timeout).await?;
    if matches!(url.topology, Topology::Sentinel { .. }) {
        let role = publish.call(&[b"ROLE"], timeout).await?;
        let is_master = matches!(&role, Reply::Array(items) if items.first().and_then(Reply::text) == Some("master"));
        if !is_master {
            return Err(format!("{address} is not a master (Sentinel is behind a failover)"));
        }
    }
    if let Topology::Cluster(_) = url.topology {
        learn_cluster_nodes(&mut publish, nodes, timeout).await;
    }
    let mut subscriber = RedisConn::open(&address, Some(url), timeout).await?;
    let canary_channel = format!("{}:canary:{:08x}", bus.channel, bus.instance);
    let mut out = BytesMut::new();
    let tenant_channels: Vec<String> =
        bus.tenants.iter().flatten().map(|tenant| super::tenant_channel(&bus.channel, tenant)).collect();
    let mut channels: Vec<&[u8]> = vec![b"SUBSCRIBE", bus.channel.as_bytes(), canary_channel.as_bytes()];
    channels.extend(tenant_channels.iter().map(|c| c.as_bytes()));
    resp::command(&mut out, &channels);
    let mut confirmations = channels.len() - 1;
    if bus.tenants.is_none() {
        resp::command(&mut out, &[b"PSUBSCRIBE", super::tenant_pattern(&bus.channel).as_bytes()]);
        confirmations += 1;
    }
    subscriber.writer.write(out).await?;
    for _ in 0..confirmations {
        let confirmation = monoio::time::timeout(timeout, subscriber.reader.next())
            .await
            .map_err(|_| format!("SUBSCRIBE to {address} timed out"))??;
        if let Reply::Error(e) = confirmation {
            return Err(format!("SUBSCRIBE to {address}: {e}"));
        }
    }
    Ok(Session {
        publish,
        subscribe: subscriber.reader,
        _subscribe_writer: subscriber.writer,
        sentinel,
        canary_channel,
    })
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
            monoio::time::timeout(timeout, conn.reader.next())
                .await
                .map_err(|_| "SUBSCRIBE timed out".to_string())??;
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
/// that joined after start-up; classic Pub/Sub reaches every node from any node.
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

impl Session {
    /// Serves publishes and subscriptions until something fails; returns why.
    async fn run(self, shared: &Arc<Shared>, bus: &Bus, inbox: &mut LocalInbox<BusCommand>) -> BusError {
        let Session { publish, subscribe, _subscribe_writer, sentinel, canary_channel } = self;
        let RedisConn { reader: mut acks, writer: mut commands, .. } = publish;
        let in_flight: RefCell<VecDeque<InFlight>> = RefCell::new(VecDeque::new());
        let canary_seen = Cell::new(Instant::now());
        let mut acks = pin!(read_acks(&mut acks, &in_flight, shared, bus));
        let mut messages = pin!(read_messages(subscribe, shared, bus, &canary_channel, &canary_seen));
        let (sentinel, _sentinel_writer) = match sentinel {
            Some(conn) => (Some(conn.reader), Some(conn.writer)),
            None => (None, None),
        };
        let mut failover = pin!(watch_failover(sentinel));
        let mut batch = Vec::with_capacity(BATCH);
        let mut next_canary = Instant::now();
        let mut canary_seq = 0u64;
        bus.set_state(BusState::Live);
        loop {
            let mut out = BytesMut::new();
            monoio::select! {
                error = &mut acks => return error,
                error = &mut messages => return error,
                error = &mut failover => return error,
                _ = inbox.recv_batch(&mut batch, BATCH) => {
                    let now = Instant::now();
                    for BusCommand::Publish { tenant, payload, messages, deadline, reply } in batch.drain(..) {
                        if deadline <= now {
                            answer(shared, reply, Answer { values: vec![1], body: None }).await;
                            continue;
                        }
                        match tenant {
                            None => resp::command(&mut out, &[b"PUBLISH", bus.channel.as_bytes(), &payload]),
                            Some(tenant) => {
                                let channel = super::tenant_channel(&bus.channel, &tenant);
                                resp::command(&mut out, &[b"PUBLISH", channel.as_bytes(), &payload]);
                            }
                        }
                        in_flight.borrow_mut().push_back(InFlight { reply: Some(reply), messages, sent: now });
                    }
                }
                _ = monoio::time::sleep(TICK) => {
                    let now = Instant::now();
                    let oldest = in_flight.borrow().front().map(|f| f.sent);
                    if oldest.is_some_and(|sent| now - sent > bus.timeout) {
                        return format!("Redis did not acknowledge a PUBLISH within {:?}", bus.timeout);
                    }
                    if now - canary_seen.get() > CANARY_STALE {
                        return "the subscription stopped delivering (canary lost)".into();
                    }
                    if now >= next_canary {
                        canary_seq += 1;
                        next_canary = now + CANARY_EVERY;
                        resp::command(&mut out, &[b"PUBLISH", canary_channel.as_bytes(), canary_seq.to_string().as_bytes()]);
                        in_flight.borrow_mut().push_back(InFlight { reply: None, messages: 0, sent: now });
                    }
                }
            }
            if !out.is_empty() {
                match monoio::time::timeout(bus.timeout, commands.write(out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => return error,
                    Err(_) => return "writing to Redis timed out".into(),
                }
            }
        }
    }
}

/// Matches PUBLISH acknowledgements to the publishers waiting for them.
async fn read_acks(
    reader: &mut ReplyReader,
    in_flight: &RefCell<VecDeque<InFlight>>,
    shared: &Shared,
    bus: &Bus,
) -> BusError {
    loop {
        let reply = match reader.next().await {
            Ok(reply) => reply,
            Err(error) => {
                fail_in_flight(in_flight, shared).await;
                return error;
            }
        };
        let Some(pending) = in_flight.borrow_mut().pop_front() else {
            return format!("unexpected reply from Redis: {reply:?}");
        };
        let result = match reply {
            Reply::Int(receivers) => {
                bus.count_published(pending.messages);
                Answer { values: vec![0, receivers.max(0) as u64], body: None }
            }
            other => {
                bus.record_error(&format!("PUBLISH refused: {other:?}"));
                Answer { values: vec![1], body: None }
            }
        };
        if let Some(reply) = pending.reply {
            answer(shared, reply, result).await;
        }
    }
}

async fn fail_in_flight(in_flight: &RefCell<VecDeque<InFlight>>, shared: &Shared) {
    let waiting: Vec<ReplyTo> = in_flight.borrow_mut().drain(..).filter_map(|f| f.reply).collect();
    for reply in waiting {
        answer(shared, reply, Answer { values: vec![1], body: None }).await;
    }
}

/// Delivers messages from other instances, each into the namespace its
/// channel names; notes canaries.
async fn read_messages(
    mut reader: ReplyReader,
    shared: &Shared,
    bus: &Bus,
    canary_channel: &str,
    canary_seen: &Cell<Instant>,
) -> BusError {
    loop {
        let reply = match reader.next().await {
            Ok(reply) => reply,
            Err(error) => return error,
        };
        let Reply::Array(mut parts) = reply else { continue };
        // `message <channel> <payload>`, or `pmessage <pattern> <channel> <payload>`.
        if !matches!((parts.len(), parts.first().and_then(Reply::text)), (3, Some("message")) | (4, Some("pmessage"))) {
            continue;
        }
        let Some(Reply::Text(payload)) = parts.pop() else { continue };
        let channel = parts.pop();
        let Some(channel) = channel.as_ref().and_then(Reply::text) else { continue };
        if channel == canary_channel {
            canary_seen.set(Instant::now());
        } else if channel == bus.channel {
            deliver_remote(shared, bus, &Namespace::DEFAULT, payload).await;
        } else if let Some(tenant) = super::tenant_of(&bus.channel, channel) {
            let listed = bus.tenants.as_ref().is_none_or(|list| list.iter().any(|t| &**t == tenant));
            if listed {
                deliver_remote(shared, bus, &Namespace::tenant(tenant), payload).await;
            }
        }
    }
}

/// Encodes each message once and routes it like a local publish, in `namespace`.
async fn deliver_remote(shared: &Shared, bus: &Bus, namespace: &Namespace, payload: Bytes) {
    let (instance, messages) = match wire::decode(payload) {
        Ok(decoded) => decoded,
        Err(error) => {
            bus.record_error(&format!("undecodable bus message: {}", error.0));
            return;
        }
    };
    if instance == bus.instance {
        return;
    }
    bus.count_received(messages.len() as u64);
    let deliveries = messages
        .into_iter()
        .map(|m| Delivery {
            frame: frame::encode(&m.id, m.event.as_deref(), &m.data),
            target: m.target.scoped(namespace),
            skip_known_id: true,
        })
        .collect();
    let (per_shard, _) = shared.route(deliveries);
    for (shard, deliveries) in per_shard.into_iter().enumerate() {
        if !deliveries.is_empty() {
            shared.send(shard, Envelope::Deliver { deliveries, reply: None }).await;
        }
    }
}

/// Completes when Sentinel announces a failover (never without Sentinel).
async fn watch_failover(sentinel: Option<ReplyReader>) -> BusError {
    let Some(mut reader) = sentinel else { return std::future::pending().await };
    loop {
        match reader.next().await {
            Ok(Reply::Array(parts)) if parts.first().and_then(Reply::text) == Some("message") => {
                return "Sentinel switched the master".into();
            }
            Ok(_) => {}
            Err(error) => return format!("lost the Sentinel connection: {error}"),
        }
    }
}

async fn answer(shared: &Shared, to: ReplyTo, answer: Answer) {
    shared.send(to.shard, Envelope::Reply { to, answer }).await;
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
