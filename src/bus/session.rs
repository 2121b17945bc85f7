//! One session with Redis: command connections (one per node that owns a
//! partition; one outside Cluster), a subscription to every partition's
//! channel, and the loop that serves them until something fails.
//!
//! The subscription that carries the partitions' notices (outside a sharded
//! Cluster), the canary and the peers' messages is read by the loop itself,
//! through one read that lives across its turns: a lone message then wakes
//! one task, not a reader task and the loop. Every other socket is read by a
//! task of its own that queues what it reads as an [`Event`]
//! ([`super::events`]); the loop takes what was heard and queued, publishes
//! from the shards and its own housekeeping tick in turn, so no kind of work
//! can starve another. What the readers queued is handled before the
//! subscription's message of the same turn; an own entry's notice can still
//! come before its append's reply, and is applied at once
//! ([`super::apply::apply`]). The tick
//! runs on its own clock: the acknowledgement deadline and the canary are
//! checked every [`TICK`] however busy the bus is, and a Redis that stops
//! answering is noticed within `--bus-timeout`. The loop waits on its sockets
//! and inbox only: a quiet bus is woken for the tick by [`BusCommand::Tick`],
//! not by a timer of its own, which would be set and cancelled in the kernel
//! at every wait.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::apply::{self, OwnAppends};
use super::clock::{self, TICK};
use super::conn::{BusError, CommandWriter, RedisConn, ReplyReader};
use super::events::{spawn_reader, Event, Events};
use super::health::Health;
use super::log::{self, AppendSettings, PartitionKeys};
use super::peer::{self, Answers, PeerMessage, Peers};
use super::resp::{self, Heard, Reply};
use super::sequencer::{Action, Sequencer};
use super::url::{RedisUrl, Topology};
use super::{Ask, Bus, BusCommand};
use crate::shard::envelope::Question;
use crate::shard::envelope::{Answer, ConnId, Envelope, ReplyTo};
use crate::shard::inbox::LocalInbox;
use crate::shard::interest::Probe;
use crate::shard::Shared;

/// Commands taken from the inbox per turn.
const BATCH: usize = 256;
/// An acknowledged own entry whose notification has not come after this is read from the stream.
const NOTICE_OVERDUE: Duration = Duration::from_millis(250);
/// What a command connection still owes a reply for, in write order.
#[derive(Debug)]
enum Sent {
    Append {
        token: u64,
    },
    Canary,
    /// The claim on the bus's partition count ([`log::LAYOUT`]), on partition 0's node.
    Layout,
    /// Keeps a command connection that carries no canary from going idle (a
    /// Redis with `timeout` closes idle clients) and checks that it answers.
    Ping,
    State {
        partition: u16,
    },
    Range {
        partition: u16,
        from: u64,
        count: usize,
    },
    Rebase {
        partition: u16,
        epoch: String,
    },
    Peer {
        channel: String,
        message: PeerPayload,
    },
}

/// A peer message's bytes, shown by length (a room's answer may be large).
struct PeerPayload(Bytes);

impl std::fmt::Debug for PeerPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

/// What a message from another instance asks of this one.
enum PeerWork {
    /// A question of this instance's, fully answered (or settled).
    Reply(ReplyTo, Answers),
    /// A question for this instance's shards.
    Question { from: u32, id: u64, question: Question },
    /// Close a connection of this instance's.
    Evict(ConnId),
}

/// One command connection.
struct Node {
    address: String,
    writer: CommandWriter,
    sha: String,
    in_flight: VecDeque<(Sent, Instant)>,
    /// When the last reply came: a busy Redis answering a long pipeline is not a silent one.
    last_reply: Instant,
    out: BytesMut,
    queued: Vec<Sent>,
}

impl Node {
    /// True while a catch-up read sent on this connection awaits its reply.
    fn reading(&self) -> bool {
        self.in_flight.iter().any(|(sent, _)| matches!(sent, Sent::Range { .. }))
    }
}

/// The parts of the bus thread that outlive a session.
pub struct Durable {
    /// Positions in the log.
    pub sequencer: Sequencer,
    /// Own publishes under way.
    pub own: OwnAppends,
    /// Names per partition.
    pub keys: Vec<PartitionKeys>,
    /// Sent with every append.
    pub settings: AppendSettings,
    /// The prefix of the epoch a log gets if this instance creates it (new
    /// for every session; the append script adds Redis's clock).
    pub epoch_candidate: String,
    /// What the log has said about the link so far.
    pub health: Health,
    /// Entries a catch-up read asks for.
    pub range_size: log::RangeSize,
    /// Other instances heard, and this instance's questions to them.
    pub peers: Peers,
}

/// The live connections of one session.
pub struct Session {
    nodes: Vec<Node>,
    /// Node of each partition (Cluster: learned from `MOVED`).
    partition_node: Vec<usize>,
    events: Rc<Events>,
    /// The subscription connections' writing halves, kept open.
    subscriptions: Vec<CommandWriter>,
    /// The reading half of the subscription to the partitions' channels
    /// (outside a sharded Cluster) and to the canary's and the peers':
    /// read by the session loop itself, taken by [`Session::serve`].
    subscription: Option<ReplyReader>,
    canary_channel: String,
    /// Heartbeats and questions to every instance.
    peers_channel: String,
    /// Answers and what is addressed to this instance alone.
    own_channel: String,
    /// Prefix of every channel.
    prefix: String,
    url: RedisUrl,
    /// This instance's id, written into every entry it appends.
    instance: u32,
    /// Where the bus's partition count is claimed ([`log::layout_key`]).
    layout_key: String,
    /// Redis holds this instance's partition count: the session may go live.
    layout_confirmed: bool,
    /// A claim Redis could not run was logged (once a session).
    layout_unclaimed_logged: bool,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.events.stop();
    }
}

impl Session {
    /// Opens a session on `address`: a command connection with the script
    /// loaded, and a subscription (confirmed) to every partition's channel
    /// and this instance's canary channel.
    pub async fn open(
        url: &RedisUrl,
        address: &str,
        bus: &Bus,
        durable: &mut Durable,
        sentinel: Option<RedisConn>,
    ) -> Result<Session, BusError> {
        let timeout = bus.timeout;
        let events = Rc::new(Events::default());
        let mut conn = RedisConn::open(address, Some(url), timeout).await?;
        // A Redis 7 Cluster has sharded Pub/Sub: each partition's channel
        // lives on the node that owns its slot, instead of every message
        // crossing every node of the cluster bus.
        let mut slots = None;
        if matches!(url.topology, Topology::Cluster(_)) {
            let info = conn.call(&[b"INFO", b"server"], timeout).await?;
            if log::parse_major_version(&info) >= Some(7) {
                slots = Some(log::parse_slots(&conn.call(&[b"CLUSTER", b"SLOTS"], timeout).await?)?);
            }
        }
        let sharded = slots.is_some();
        durable.settings.sharded = sharded;
        let node = into_node(conn, &events, 0, timeout).await?;
        let canary_channel = format!("{}:canary:{:08x}", bus.channel, bus.instance);
        let peers_channel = peer::shared_channel(&bus.channel);
        let own_channel = peer::own_channel(&bus.channel, bus.instance);
        let mut channels: Vec<&[u8]> =
            vec![canary_channel.as_bytes(), peers_channel.as_bytes(), own_channel.as_bytes()];
        if !sharded {
            channels.extend(durable.keys.iter().map(|k| k.channel.as_bytes()));
        }
        let subscriber = subscribe(url, address, b"SUBSCRIBE", &channels, timeout).await?;
        if let Some(sentinel) = sentinel {
            let RedisConn { reader, writer, .. } = sentinel;
            let watch = events.clone();
            let current = address.to_owned();
            monoio::spawn(async move {
                let _writer = writer;
                monoio::select! {
                    error = watch_failover(reader, current) => watch.push(Event::Failover(error)),
                    _ = watch.stopped() => {}
                }
            });
        }
        let mut session = Session {
            nodes: vec![node],
            partition_node: vec![0; durable.keys.len()],
            events,
            subscriptions: vec![subscriber.writer],
            subscription: Some(subscriber.reader),
            canary_channel,
            peers_channel,
            own_channel,
            prefix: bus.channel.clone(),
            url: url.clone(),
            instance: bus.instance,
            layout_key: log::layout_key(&bus.channel),
            layout_confirmed: false,
            layout_unclaimed_logged: false,
        };
        if let Some(slots) = slots {
            session.subscribe_sharded(durable, &slots, timeout).await?;
        }
        Ok(session)
    }

    /// Finds each partition's node from `CLUSTER SLOTS` and `SSUBSCRIBE`s its
    /// channel there, one subscription connection per node.
    async fn subscribe_sharded(
        &mut self,
        durable: &Durable,
        slots: &[(u16, u16, String)],
        timeout: Duration,
    ) -> Result<(), BusError> {
        let mut by_node: Vec<Vec<&[u8]>> = Vec::new();
        for (partition, keys) in durable.keys.iter().enumerate() {
            let slot = redis_protocol::redis_keyslot(keys.meta.as_bytes());
            let Some((_, _, address)) = slots.iter().find(|(first, last, _)| (*first..=*last).contains(&slot)) else {
                return Err(format!("no cluster node serves slot {slot} (partition {partition})"));
            };
            let node = self.node_for(address, timeout).await?;
            self.partition_node[partition] = node;
            by_node.resize_with(by_node.len().max(node + 1), Vec::new);
            by_node[node].push(keys.channel.as_bytes());
        }
        for (node, channels) in by_node.iter().enumerate().filter(|(_, c)| !c.is_empty()) {
            let address = self.nodes[node].address.clone();
            let subscriber = subscribe(&self.url, &address, b"SSUBSCRIBE", channels, timeout).await?;
            spawn_reader(&self.events, subscriber.reader, Event::Pushed);
            self.subscriptions.push(subscriber.writer);
        }
        Ok(())
    }

    /// The address of the first command connection.
    pub fn address(&self) -> &str {
        &self.nodes[0].address
    }

    /// Serves until something fails; returns why. Publishes not yet
    /// acknowledged are answered 503 before it returns.
    pub async fn run(
        mut self,
        shared: &Arc<Shared>,
        bus: &Bus,
        inbox: &mut LocalInbox<BusCommand>,
        durable: &mut Durable,
    ) -> BusError {
        let error = self.serve(shared, bus, inbox, durable).await;
        if self.nodes.iter().any(Node::reading) {
            durable.range_size.cut();
            crate::log!(
                Warn,
                "bus catch-up reads made smaller: the session ended during one (a client-output-buffer-limit normal?)",
                entries = durable.range_size.get(),
            );
        }
        for node in &mut self.nodes {
            for sent in node.queued.drain(..).chain(node.in_flight.drain(..).map(|(sent, _)| sent)) {
                if let Sent::Append { token } = sent {
                    durable.own.failed(shared, token);
                }
            }
        }
        durable.own.fail_unacknowledged(shared);
        durable.sequencer.disconnected();
        // Answers that can no longer come: the askers hear "unavailable".
        bus.record_instances(0);
        // Without the bus, other instances' counts are unknown: each
        // instance holds its tenants to their limits by itself.
        if let Some(quotas) = &shared.tenant_quotas {
            quotas.set_elsewhere(Default::default());
        }
        for (reply, _) in durable.peers.abandon() {
            shared.send_from_bus(reply.shard, Envelope::Reply { to: reply, answer: Answer::default() }, Probe::NOW);
        }
        error
    }

    async fn serve(
        &mut self,
        shared: &Arc<Shared>,
        bus: &Bus,
        inbox: &mut LocalInbox<BusCommand>,
        durable: &mut Durable,
    ) -> BusError {
        self.queue(0, Sent::Layout);
        for partition in 0..durable.sequencer.len() {
            self.queue(partition, Sent::State { partition });
        }
        let canary_every = peer::heartbeat_every(bus.timeout);
        durable.peers.heard(self.instance, Instant::now());
        let mut peer_work = Vec::new();
        let mut canary_seen = Instant::now();
        let mut next_canary = Instant::now();
        let mut next_tick = Instant::now() + TICK;
        let mut commands = Vec::with_capacity(BATCH);
        let mut events = Vec::new();
        let mut actions = Vec::new();
        let mut live = false;
        let mut synced_later = Vec::new();
        let subscription = self.subscription.take().expect("a session is served once");
        let mut pushed = std::pin::pin!(next_heard(subscription));
        let mut heard_now = Vec::new();
        loop {
            if let Err(error) = self.flush(durable, bus.timeout).await {
                return error;
            }
            let mut heard = None;
            // The subscription first: a message already read is taken
            // without setting up the other waits (the inbox's costs two
            // channel reads and a fence), whose work is then taken below
            // without waiting, so neither waits behind a busy subscription.
            monoio::select! {
                biased;
                (reader, reply) = &mut pushed => heard = Some((reader, reply)),
                _ = self.events.take(&mut events) => {}
                _ = inbox.recv_batch(&mut commands, BATCH) => {}
            }
            if heard.is_some() {
                inbox.take_ready(&mut commands, BATCH);
            }
            // A read may have brought several messages: each one already
            // whole is taken in this turn.
            if let Some((mut reader, reply)) = heard {
                heard_now.push(reply);
                loop {
                    match reader.buffered_heard() {
                        Ok(Some(heard)) => heard_now.push(Ok(heard)),
                        Ok(None) => break,
                        Err(error) => {
                            heard_now.push(Err(error));
                            break;
                        }
                    }
                }
                pushed.set(next_heard(reader));
            }
            // The replies read so far go first: an append's reply before its notice where it can.
            self.events.take_queued(&mut events);
            let now = Instant::now();
            let mut ticked = false;
            for command in commands.drain(..) {
                match command {
                    BusCommand::Append(append) if append.deadline <= now => apply::refuse(shared, *append),
                    BusCommand::Append(append) => {
                        let (partition, token) = (append.partition, append.token);
                        durable.own.insert(*append);
                        self.queue(partition, Sent::Append { token });
                    }
                    BusCommand::Ask(ask) => self.ask(durable, *ask, now, &mut peer_work),
                    BusCommand::Answer { to, id, body } => {
                        let answer = PeerMessage::Answer { from: self.instance, id, body };
                        self.send_peer(peer::own_channel(&self.prefix, to), &answer);
                    }
                    BusCommand::Evict(id) if id.instance == self.instance => peer_work.push(PeerWork::Evict(id)),
                    BusCommand::Evict(id) => {
                        self.send_peer(peer::own_channel(&self.prefix, id.instance), &PeerMessage::Evict { id })
                    }
                    // The ticker's clock is not the loop's: a tick it sends a
                    // little early is taken, not left for the next one.
                    BusCommand::Tick => ticked = true,
                }
            }
            for event in events.drain(..) {
                match event {
                    Event::Reply(node, reply) => {
                        let reply = match reply {
                            Ok(reply) => reply,
                            Err(error) => return error,
                        };
                        self.nodes[node].last_reply = Instant::now();
                        let Some((sent, at)) = self.nodes[node].in_flight.pop_front() else {
                            return format!("unexpected reply from Redis: {reply:?}");
                        };
                        if let Err(error) = self.on_reply(shared, bus, durable, sent, at, reply, &mut actions).await {
                            return error;
                        }
                    }
                    Event::Pushed(reply) => {
                        let heard = reply.map(Heard::from);
                        if let Err(error) = self.pushed(durable, heard, &mut actions, &mut peer_work, &mut canary_seen)
                        {
                            return error;
                        }
                    }
                    Event::Failover(error) => return error,
                }
            }
            for reply in heard_now.drain(..) {
                if let Err(error) = self.pushed(durable, reply, &mut actions, &mut peer_work, &mut canary_seen) {
                    return error;
                }
            }
            if !live {
                // Until every partition is synced, what to apply and the gaps
                // wait, so a reconnect's losses are one notice per subscriber;
                // reads go out at once (the sync needs them).
                let (now, later): (Vec<Action>, Vec<Action>) =
                    actions.drain(..).partition(|a| !matches!(a, Action::Apply { .. } | Action::Gap { .. }));
                actions = now;
                synced_later.extend(later);
            }
            self.carry_out(shared, bus, durable, &mut actions);
            serve_peers(shared, bus, &mut peer_work);
            if !live && self.layout_confirmed && durable.sequencer.all_synced() {
                // Publishes wait until every partition is synced: a log that
                // went back must get its new epoch before anyone appends.
                live = true;
                self.carry_out(shared, bus, durable, &mut synced_later);
                durable.health.live(shared, bus, self.address());
            }
            if ticked || now >= next_tick {
                next_tick = now + TICK;
                // What the shards were not woken for is in their rings a tick later at most.
                shared.ring_waiting_lanes();
                if let Some(stale) = self.overdue(now, bus.timeout) {
                    return stale;
                }
                if now.duration_since(canary_seen) > bus.timeout + canary_every {
                    return "the subscription stopped delivering (canary lost)".into();
                }
                if now >= next_canary {
                    next_canary = now + canary_every;
                    self.queue_on(0, Sent::Canary);
                    self.queue(0, Sent::Layout);
                    for node in 1..self.nodes.len() {
                        self.queue_on(node, Sent::Ping);
                    }
                    let heartbeat = PeerMessage::Heartbeat { instance: self.instance, tenants: tenant_counts(shared) };
                    self.send_peer(self.peers_channel.clone(), &heartbeat);
                    // The others' counts change at their heartbeats' pace:
                    // summed once per heartbeat of ours, not every tick.
                    if let Some(quotas) = &shared.tenant_quotas {
                        quotas.set_elsewhere(durable.peers.tenants_elsewhere(self.instance, now));
                    }
                }
                peer_work.extend(durable.peers.settle(now).into_iter().map(|(reply, a)| PeerWork::Reply(reply, a)));
                bus.record_instances(durable.peers.alive(now).len());
                serve_peers(shared, bus, &mut peer_work);
                for (partition, seq) in durable.own.overdue(now - NOTICE_OVERDUE) {
                    durable.sequencer.expect(partition, seq, &mut actions);
                }
                self.carry_out(shared, bus, durable, &mut actions);
                bus.publish_positions(&durable.sequencer);
            }
        }
    }

    /// Handles the reply to `sent`.
    #[allow(clippy::too_many_arguments)]
    async fn on_reply(
        &mut self,
        shared: &Arc<Shared>,
        bus: &Bus,
        durable: &mut Durable,
        sent: Sent,
        at: Instant,
        reply: Reply,
        actions: &mut Vec<Action>,
    ) -> Result<(), BusError> {
        if let Reply::Error(error) = &reply {
            if let Some(address) = moved_to(error) {
                let partition = match &sent {
                    Sent::Append { token } => durable.own.get(*token).map(|a| a.partition),
                    Sent::State { partition } | Sent::Range { partition, .. } | Sent::Rebase { partition, .. } => {
                        Some(*partition)
                    }
                    Sent::Layout => Some(0),
                    Sent::Canary | Sent::Ping | Sent::Peer { .. } => None,
                };
                let Some(partition) = partition else { return Ok(()) };
                // Sharded Pub/Sub: a partition that moved took its
                // subscription with it, so the session starts over.
                if durable.settings.sharded {
                    return Err(format!("partition {partition} moved to {address}: subscribing there"));
                }
                let node = self.node_for(address, bus.timeout).await?;
                self.partition_node[partition as usize] = node;
                self.queue_on(node, sent);
                return Ok(());
            }
        }
        match sent {
            Sent::Append { token } => match &reply {
                Reply::Error(error) if error.starts_with("NOSCRIPT") => {
                    durable.own.failed(shared, token);
                    return Err(format!("Redis lost the bus script: {error}"));
                }
                Reply::Error(error) => {
                    crate::log!(Warn, "bus append refused by Redis", error = error);
                    bus.report_error(shared, &format!("the log append was refused: {error}"));
                    durable.own.failed(shared, token);
                }
                reply => {
                    let appended = log::parse_appended(reply)?;
                    if let Some(messages) = durable.own.messages(token) {
                        bus.count_published((messages - appended.duplicates.len()) as u64);
                    }
                    durable.own.acknowledged(shared, token, &appended, Instant::now());
                }
            },
            Sent::Canary => bus.record_round_trip(at.elapsed()),
            Sent::Layout => self.on_layout(bus, durable, &reply)?,
            Sent::Peer { .. } | Sent::Ping => {}
            Sent::State { partition } | Sent::Rebase { partition, .. } => {
                let state = log::parse_state(&check(reply)?)?;
                durable.sequencer.on_state(partition, state.epoch, state.seq, state.base, actions);
            }
            Sent::Range { partition, count, .. } => {
                let entries = log::parse_range(&check(reply)?)?;
                bus.count_catch_up();
                let full = entries.len() >= count;
                if full {
                    durable.range_size.came_back_full(count);
                }
                durable.sequencer.on_range(partition, entries, full, actions);
            }
        }
        Ok(())
    }

    /// Redis's answer to the claim on the partition count: the session ends
    /// when the bus has another count than this instance (its messages would
    /// go to partitions the others do not read), or when the Redis user may
    /// not run scripts or Redis is a read-only replica (no append could be
    /// made either). A claim Redis could not run for another reason (a full
    /// Redis) contradicts nothing: it is logged once a session, and the
    /// session goes on.
    fn on_layout(&mut self, bus: &Bus, durable: &Durable, reply: &Reply) -> Result<(), BusError> {
        let ours = durable.sequencer.len();
        match reply {
            Reply::Error(error) if error.starts_with("NOPERM") => {
                return Err(format!("the Redis user may not run the bus's scripts: {error}"));
            }
            Reply::Error(error) if error.starts_with("READONLY") => {
                return Err(format!(
                    "Redis at {} is a read-only replica: --redis must name the master (or Sentinel, which finds it): \
                     {error}",
                    self.address()
                ));
            }
            Reply::Error(error) => {
                if !self.layout_unclaimed_logged {
                    self.layout_unclaimed_logged = true;
                    crate::log!(Warn, "bus partition count not claimed", error = error);
                }
            }
            reply => {
                let held = log::parse_layout(reply)?;
                if held != ours {
                    return Err(format!(
                        "this instance has --bus-partitions {ours}, the instances on --channel {} have {held}: \
                         every instance of a tier needs the same count (to change it, give the new count another \
                         --channel, or stop every instance of the old count; its claim lapses {:?} after the last)",
                        bus.channel,
                        log::layout_lease(bus.timeout)
                    ));
                }
            }
        }
        self.layout_confirmed = true;
        Ok(())
    }

    /// Handles what a subscription read; notes when this instance's canary came back.
    fn pushed(
        &mut self,
        durable: &mut Durable,
        heard: Result<Heard, BusError>,
        actions: &mut Vec<Action>,
        peer_work: &mut Vec<PeerWork>,
        canary_seen: &mut Instant,
    ) -> Result<(), BusError> {
        let heard = heard.map_err(|error| format!("subscription: {error}"))?;
        if self.on_pushed(durable, heard, actions, peer_work)? {
            *canary_seen = Instant::now();
        }
        Ok(())
    }

    /// Handles a message on a subscription; true for this instance's canary.
    fn on_pushed(
        &mut self,
        durable: &mut Durable,
        heard: Heard,
        actions: &mut Vec<Action>,
        peer_work: &mut Vec<PeerWork>,
    ) -> Result<bool, BusError> {
        let (channel, payload) = match heard {
            Heard::Message { channel, payload } => (channel, payload),
            // A slot moved (resharding, failover): its channel's
            // subscription ended with it.
            Heard::Reply(Reply::Array(parts)) if is_kind(&parts, b"sunsubscribe") => {
                return Err("a partition's node changed (sunsubscribe)".into())
            }
            Heard::Reply(_) => return Ok(false),
        };
        if let Some(partition) = log::partition_of(&durable.keys, &channel) {
            if let Some(notice) = log::parse_notice(&payload) {
                durable.sequencer.on_notice(partition, notice.epoch, notice.seq, notice.entry, actions);
            }
            return Ok(false);
        }
        if channel == self.canary_channel.as_bytes() {
            return Ok(true);
        }
        if channel == self.peers_channel.as_bytes() || channel == self.own_channel.as_bytes() {
            self.on_peer_message(durable, &payload, peer_work);
        }
        Ok(false)
    }

    /// Takes a message from another instance (or this one's own heartbeat
    /// and questions, which come back like everyone's).
    fn on_peer_message(&mut self, durable: &mut Durable, payload: &Bytes, peer_work: &mut Vec<PeerWork>) {
        let Some(message) = PeerMessage::parse(payload) else { return };
        let now = Instant::now();
        match message {
            PeerMessage::Heartbeat { instance, tenants } => durable.peers.heartbeat(instance, now, tenants),
            PeerMessage::Question { from, id, question } => {
                durable.peers.heard(from, now);
                peer_work.push(PeerWork::Question { from, id, question });
            }
            PeerMessage::Answer { from, id, body } => {
                durable.peers.heard(from, now);
                if let Some((reply, answers)) = durable.peers.answered(id, from, body) {
                    peer_work.push(PeerWork::Reply(reply, answers));
                }
            }
            PeerMessage::Evict { id } if id.instance == self.instance => peer_work.push(PeerWork::Evict(id)),
            PeerMessage::Evict { .. } => {}
        }
    }

    /// Sends a shard's question to the instances alive (or the one it is
    /// for); with nobody to ask, the shard hears so at once.
    fn ask(&mut self, durable: &mut Durable, ask: Ask, now: Instant, peer_work: &mut Vec<PeerWork>) {
        let asked = match ask.only {
            Some(instance) if durable.peers.is_alive(instance, now) => vec![instance],
            Some(_) => Vec::new(),
            None => durable.peers.alive(now),
        };
        if asked.is_empty() {
            return peer_work.push(PeerWork::Reply(ask.reply, Answers::default()));
        }
        let id = durable.peers.ask(asked, ask.reply, ask.deadline);
        let channel = match ask.only {
            Some(instance) => peer::own_channel(&self.prefix, instance),
            None => self.peers_channel.clone(),
        };
        self.send_peer(channel, &PeerMessage::Question { from: self.instance, id, question: ask.question });
    }

    /// Publishes `message` on `channel` (through the first node: plain
    /// Pub/Sub reaches every subscriber wherever it is connected).
    fn send_peer(&mut self, channel: String, message: &PeerMessage) {
        self.queue_on(0, Sent::Peer { channel, message: PeerPayload(message.encode()) });
    }

    /// Carries out the sequencer's actions in order. The gaps among them
    /// are announced together, at the first: a subscriber whose user, rooms
    /// and broadcast lost messages at once hears it once.
    fn carry_out(&mut self, shared: &Arc<Shared>, bus: &Bus, durable: &mut Durable, actions: &mut Vec<Action>) {
        let mut announced = false;
        let lost: Vec<u16> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Gap { partition } => Some(*partition),
                _ => None,
            })
            .collect();
        // Drained, not taken: the list keeps its room for the next notice.
        for action in actions.drain(..) {
            match action {
                Action::Apply { partition, entry, .. } => {
                    if let Err(error) = apply::apply(shared, bus, &mut durable.own, entry) {
                        // Its messages cannot reach anyone here: the
                        // subscribers who may have wanted one hear so.
                        let error = format!("undecodable bus log entry in partition {partition}: {}", error.0);
                        crate::log!(Warn, "bus log entry unreadable: announced as a gap", error = error);
                        bus.report_error(shared, &error);
                        bus.count_gap();
                        tell_shards_of_loss(shared, &[partition], durable.sequencer.len());
                    }
                }
                Action::Fetch { partition, from } => {
                    self.queue(partition, Sent::Range { partition, from, count: durable.range_size.get() })
                }
                Action::Sync { partition } => self.queue(partition, Sent::State { partition }),
                Action::Rebase { partition, epoch } => {
                    crate::log!(
                        Warn,
                        "bus log went back (Redis lost acknowledged entries): new epoch",
                        partition = partition
                    );
                    self.queue(partition, Sent::Rebase { partition, epoch });
                }
                Action::Gap { .. } if announced => {}
                Action::Gap { .. } => {
                    announced = true;
                    for &partition in &lost {
                        bus.count_gap();
                        crate::log!(Warn, "bus log gap: messages were lost", partition = partition);
                        let applied = durable.sequencer.position(partition).applied;
                        durable.own.forget_lost(shared, partition, applied);
                    }
                    tell_shards_of_loss(shared, &lost, durable.sequencer.len());
                }
            }
        }
    }

    /// Queues a command for `partition`'s node.
    fn queue(&mut self, partition: u16, sent: Sent) {
        let node = self.partition_node[partition as usize];
        self.queue_on(node, sent);
    }

    fn queue_on(&mut self, node: usize, sent: Sent) {
        self.nodes[node].queued.push(sent);
    }

    /// Encodes and writes every queued command.
    async fn flush(&mut self, durable: &mut Durable, timeout: Duration) -> Result<(), BusError> {
        for node in &mut self.nodes {
            if node.queued.is_empty() {
                continue;
            }
            let now = Instant::now();
            let mut reading = node.reading();
            for sent in std::mem::take(&mut node.queued) {
                if matches!(sent, Sent::Range { .. }) && durable.range_size.one_at_a_time() {
                    if reading {
                        // Sent when the read out now is answered.
                        node.queued.push(sent);
                        continue;
                    }
                    reading = true;
                }
                match &sent {
                    Sent::Append { token } => {
                        let Some(append) = durable.own.get(*token) else { continue };
                        let keys = &durable.keys[append.partition as usize];
                        let header = super::wire::header(self.instance, append.token);
                        log::append_command(
                            &mut node.out,
                            &node.sha,
                            keys,
                            &durable.epoch_candidate,
                            durable.settings,
                            &header,
                            &append.items,
                        );
                    }
                    Sent::Canary => resp::command(&mut node.out, &[b"PUBLISH", self.canary_channel.as_bytes(), b"1"]),
                    Sent::Ping => resp::command(&mut node.out, &[b"PING"]),
                    Sent::Layout => log::layout_command(
                        &mut node.out,
                        &self.layout_key,
                        durable.sequencer.len(),
                        log::layout_lease(timeout),
                    ),
                    Sent::Peer { channel, message } => {
                        resp::command(&mut node.out, &[b"PUBLISH", channel.as_bytes(), &message.0])
                    }
                    Sent::State { partition } => log::state_command(&mut node.out, &durable.keys[*partition as usize]),
                    Sent::Range { partition, from, count } => {
                        log::range_command(&mut node.out, &durable.keys[*partition as usize], *from, *count)
                    }
                    Sent::Rebase { partition, epoch } => {
                        let new_epoch = super::new_epoch();
                        log::rebase_command(&mut node.out, &durable.keys[*partition as usize], epoch, &new_epoch)
                    }
                }
                node.in_flight.push_back((sent, now));
            }
            if node.out.is_empty() {
                continue;
            }
            let out = std::mem::take(&mut node.out);
            match clock::timeout(timeout, node.writer.write(out)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(error),
                Err(_) => return Err(format!("writing to Redis at {} timed out", node.address)),
            }
        }
        Ok(())
    }

    /// Why the session must end, when Redis has owed a reply for longer
    /// than `timeout` without answering anything.
    fn overdue(&self, now: Instant, timeout: Duration) -> Option<BusError> {
        self.nodes.iter().find_map(|node| {
            let (sent, at) = node.in_flight.front()?;
            let waiting_since = (*at).max(node.last_reply);
            (now.duration_since(waiting_since) > timeout)
                .then(|| format!("Redis at {} did not answer {sent:?} within {timeout:?}", node.address))
        })
    }

    /// The command connection to `address`, opened if new.
    async fn node_for(&mut self, address: &str, timeout: Duration) -> Result<usize, BusError> {
        if let Some(index) = self.nodes.iter().position(|n| n.address == address) {
            return Ok(index);
        }
        let index = self.nodes.len();
        let node = open_node(&self.url, address, &self.events, index, timeout).await?;
        self.nodes.push(node);
        Ok(index)
    }
}

/// Tells every shard that the `lost` partitions (of `partitions`) lost
/// messages: their subscribers concerned get an `ssekify.gap`.
fn tell_shards_of_loss(shared: &Arc<Shared>, lost: &[u16], partitions: u16) {
    for shard in 0..shared.shard_count() {
        shared.send_from_bus(shard, Envelope::BusGap { lost: lost.to_vec(), partitions }, Probe::NOW);
    }
}

/// Tenants a heartbeat carries at most: the ones with the most subscribers
/// here (a tenant left out counts nothing here for the other instances).
const HEARTBEAT_TENANTS: usize = 10_000;

/// This instance's subscribers per tenant, for its heartbeat (none without
/// `--tenant-config`: no connection quotas to share).
fn tenant_counts(shared: &Shared) -> Vec<(Box<str>, u64)> {
    let Some(quotas) = &shared.tenant_quotas else { return Vec::new() };
    let mut counts = quotas.all_connections();
    if counts.len() > HEARTBEAT_TENANTS {
        counts.sort_unstable_by_key(|(_, count)| std::cmp::Reverse(*count));
        counts.truncate(HEARTBEAT_TENANTS);
    }
    counts
}

/// Hands what other instances asked to the shards that know, and answers
/// to the shards that asked.
fn serve_peers(shared: &Arc<Shared>, bus: &Bus, work: &mut Vec<PeerWork>) {
    for item in work.drain(..) {
        match item {
            PeerWork::Reply(reply, answers) => shared.send_from_bus(
                reply.shard,
                Envelope::Reply { to: reply, answer: answers.into_answer() },
                Probe::NOW,
            ),
            PeerWork::Evict(id) if usize::from(id.shard) < shared.shard_count() => {
                shared.send_from_bus(usize::from(id.shard), Envelope::Evict { id }, Probe::NOW)
            }
            PeerWork::Evict(_) => {}
            PeerWork::Question { from, id, question } => {
                let shard = match &question {
                    Question::User { user, .. } => shared.owner(user),
                    Question::Room { room, .. } => shared.owner(room),
                    Question::Connection { id } => usize::from(id.shard),
                };
                let inbox = bus.inbox.clone();
                let answer = Box::new(move |body| {
                    let _ = inbox.try_send(BusCommand::Answer { to: from, id, body });
                });
                if shard < shared.shard_count() {
                    shared.send_from_bus(shard, Envelope::Question { question, answer }, Probe::NOW);
                } else {
                    answer(crate::shard::presence::encode_answer(&[0], &[]));
                }
            }
        }
    }
}

/// What the subscription `reader` hears next, and the reader back: a future
/// that owns its reader lives across the session loop's turns, so a read
/// under way is never dropped when another source wins a turn.
async fn next_heard(mut reader: ReplyReader) -> (ReplyReader, Result<Heard, BusError>) {
    let heard = reader.next_heard().await;
    (reader, heard)
}

/// True when a subscription's reply `parts` is of `kind` (its first string).
fn is_kind(parts: &[Reply], kind: &[u8]) -> bool {
    matches!(parts.first(), Some(Reply::Text(first)) if first[..] == *kind)
}

/// A connection to `address` subscribed (`SUBSCRIBE` or `SSUBSCRIBE`) to
/// `channels`, every subscription confirmed.
async fn subscribe(
    url: &RedisUrl,
    address: &str,
    command: &[u8],
    channels: &[&[u8]],
    timeout: Duration,
) -> Result<RedisConn, BusError> {
    let mut conn = RedisConn::open(address, Some(url), timeout).await?;
    let mut out = BytesMut::new();
    if command == b"SSUBSCRIBE" {
        // One command per channel: the channels of one SSUBSCRIBE must share a slot.
        for channel in channels {
            resp::command(&mut out, &[command, channel]);
        }
    } else {
        let mut args: Vec<&[u8]> = vec![command];
        args.extend_from_slice(channels);
        resp::command(&mut out, &args);
    }
    conn.writer.write(out).await?;
    let name = String::from_utf8_lossy(command).into_owned();
    for _ in channels {
        let confirmation = clock::timeout(timeout, conn.reader.next())
            .await
            .map_err(|_| format!("{name} to {address} timed out"))??;
        if let Reply::Error(e) = confirmation {
            return Err(format!("{name} to {address}: {e}"));
        }
    }
    Ok(conn)
}

/// A command connection to `address` with the append script loaded.
async fn open_node(
    url: &RedisUrl,
    address: &str,
    events: &Rc<Events>,
    index: usize,
    timeout: Duration,
) -> Result<Node, BusError> {
    into_node(RedisConn::open(address, Some(url), timeout).await?, events, index, timeout).await
}

/// Loads the append script on `conn` and hands its replies to a reader task.
async fn into_node(
    mut conn: RedisConn,
    events: &Rc<Events>,
    index: usize,
    timeout: Duration,
) -> Result<Node, BusError> {
    let sha = log::parse_sha(&conn.call(&[b"SCRIPT", b"LOAD", log::APPEND.as_bytes()], timeout).await?)?;
    let RedisConn { reader, writer, address } = conn;
    spawn_reader(events, reader, move |reply| Event::Reply(index, reply));
    Ok(Node {
        address,
        writer,
        sha,
        in_flight: VecDeque::new(),
        last_reply: Instant::now(),
        out: BytesMut::new(),
        queued: Vec::new(),
    })
}

/// The node a Cluster `MOVED <slot> <host:port>` error points to.
fn moved_to(error: &str) -> Option<&str> {
    let mut parts = error.strip_prefix("MOVED ")?.split(' ');
    parts.next()?;
    parts.next()
}

/// An error reply as an error.
fn check(reply: Reply) -> Result<Reply, BusError> {
    match reply {
        Reply::Error(error) => Err(format!("Redis refused a log read: {error}")),
        reply => Ok(reply),
    }
}

/// Completes when Sentinel announces a failover.
/// A `+switch-master` naming the master this session already uses (Sentinel
/// announces it a moment after answering with the new address) is not news.
async fn watch_failover(mut reader: ReplyReader, current: String) -> BusError {
    loop {
        match reader.next().await {
            Ok(Reply::Array(parts)) if parts.first().and_then(Reply::text) == Some("message") => {
                let payload = parts.last().and_then(Reply::text).unwrap_or_default();
                if switched_to(payload).is_some_and(|to| to == current) {
                    continue;
                }
                return "Sentinel switched the master".into();
            }
            Ok(_) => {}
            Err(error) => return format!("lost the Sentinel connection: {error}"),
        }
    }
}

/// The new master's `host:port` in a `+switch-master` payload
/// (`<name> <old-ip> <old-port> <new-ip> <new-port>`).
fn switched_to(payload: &str) -> Option<String> {
    let fields: Vec<&str> = payload.split_whitespace().collect();
    match fields.as_slice() {
        [_, _, _, host, port] => Some(format!("{host}:{port}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_master_names_the_new_master() {
        assert_eq!(switched_to("m 10.0.0.1 6379 10.0.0.2 6380").as_deref(), Some("10.0.0.2:6380"));
        assert_eq!(switched_to("garbage"), None);
    }

    #[test]
    fn moved_errors_name_the_node() {
        assert_eq!(moved_to("MOVED 3999 127.0.0.1:6381"), Some("127.0.0.1:6381"));
        assert_eq!(moved_to("ASK 3999 127.0.0.1:6381"), None);
        assert_eq!(moved_to("ERR no"), None);
    }
}
