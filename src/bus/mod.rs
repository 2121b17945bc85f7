//! The cross-instance bus: a dedicated thread speaking RESP to Redis Pub/Sub.
//!
//! Parts: [`url`] (`--redis` addresses), [`resp`] (framing via
//! `redis-protocol`), [`conn`] (one Redis connection: connect, handshake,
//! commands), [`tls`] (`rediss://`: rustls over the connection), [`wire`] (the message format on the channel), [`client`] (the bus
//! thread: sessions, reconnects, canary, Sentinel and Cluster). This module is
//! the handle the publish routes use: [`publish`] hands a message to Redis and
//! returns only once Redis acknowledged it; the route delivers locally only
//! after that and answers 503 otherwise. (If the acknowledgement alone was
//! lost, other instances may have the message; a retry with the same id is
//! skipped where it already is, see `ShardCtx::deliver`.)
//!
//! Channels: the default namespace's messages go on `--channel`, a tenant's on
//! [`tenant_channel`] (`<channel>:tenant:<tenant>`), carrying plain names;
//! every instance subscribes to all of them (a pattern, or each tenant that
//! `--tenants` lists) and learns the namespace from the channel.

pub mod client;
pub mod conn;
pub mod resp;
pub mod tls;
pub mod url;
pub mod wire;

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::shard::envelope::ReplyTo;
use crate::shard::inbox::SharedInbox;
use crate::shard::ShardCtx;
use wire::WireMessage;

/// Publishes the bus thread holds before publishers are refused.
pub const BUS_INBOX_CAPACITY: usize = 16 * 1024;

/// Work for the bus thread.
#[derive(Debug)]
pub enum BusCommand {
    /// PUBLISH `payload`, answer `[0, receivers]` or `[1]` to `reply`.
    Publish {
        /// The tenant whose channel it goes on (`None`: `--channel`).
        tenant: Option<Box<str>>,
        /// Encoded [`wire`] message.
        payload: Bytes,
        /// Messages in the payload (a batch is one PUBLISH).
        messages: u32,
        /// After this the publisher has given up: do not send it any more.
        deadline: Instant,
        /// Where the acknowledgement goes.
        reply: ReplyTo,
    },
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

/// The handle every shard shares with the bus thread.
pub struct Bus {
    /// Commands to the bus thread.
    pub inbox: Arc<SharedInbox<BusCommand>>,
    /// The Pub/Sub channel.
    pub channel: String,
    /// How long a publisher waits for Redis.
    pub timeout: Duration,
    /// This instance's id (skips its own echo).
    pub instance: u32,
    /// `--tenants`: the tenant channels to subscribe to (`None`: all, by pattern).
    pub tenants: Option<Vec<Box<str>>>,
    state: AtomicU8,
    published: AtomicU64,
    received: AtomicU64,
    reconnects: AtomicU64,
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
    /// The last connection or protocol error.
    pub last_error: Option<String>,
}

/// Why a publish could not be handed to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusUnavailable;

impl Bus {
    /// A handle; the thread is started by [`client::spawn`].
    pub fn new(
        inbox: Arc<SharedInbox<BusCommand>>,
        channel: String,
        tenants: Option<Vec<Box<str>>>,
        timeout: Duration,
        instance: u32,
    ) -> Self {
        Bus {
            inbox,
            channel,
            tenants,
            timeout,
            instance,
            state: AtomicU8::new(BusState::Connecting as u8),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
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
            last_error: self.last_error.lock().map(|e| e.clone()).unwrap_or_default(),
        }
    }

    pub(crate) fn set_state(&self, state: BusState) {
        let previous = self.state.swap(state as u8, Ordering::AcqRel);
        if previous != state as u8 {
            crate::log!(Info, "bus state", state = state.name());
        }
    }

    pub(crate) fn record_error(&self, error: &str) {
        crate::log!(Warn, "bus error", error = error);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error.to_owned());
        }
    }

    pub(crate) fn count_published(&self, messages: u32) {
        self.published.fetch_add(u64::from(messages), Ordering::Relaxed);
    }

    pub(crate) fn count_received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn count_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

/// The channel of `tenant`'s messages: `<channel>:tenant:<tenant>`.
pub fn tenant_channel(channel: &str, tenant: &str) -> String {
    format!("{channel}:tenant:{tenant}")
}

/// The Redis glob pattern matching every tenant channel of `channel`
/// (the channel's own glob characters escaped).
pub fn tenant_pattern(channel: &str) -> String {
    let mut pattern = String::with_capacity(channel.len() + 10);
    for c in channel.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push_str(":tenant:*");
    pattern
}

/// The tenant whose channel `received` is, if it is a tenant channel of
/// `channel` with a valid tenant name.
pub fn tenant_of<'a>(channel: &str, received: &'a str) -> Option<&'a str> {
    let tenant = received.strip_prefix(channel)?.strip_prefix(":tenant:")?;
    crate::namespace::valid_name(tenant).then_some(tenant)
}

/// Hands `messages` of `tenant` (`None`: the default namespace) to Redis in
/// one PUBLISH and waits for the acknowledgement; returns Redis's receiver
/// count (the instances subscribed).
pub async fn publish(
    ctx: &Rc<ShardCtx>,
    bus: &Bus,
    tenant: Option<&str>,
    messages: &[WireMessage],
) -> Result<u64, BusUnavailable> {
    if !bus.is_live() {
        return Err(BusUnavailable);
    }
    let payload = wire::encode(bus.instance, messages);
    let deadline = Instant::now() + bus.timeout;
    let answer = ctx
        .request_with_timeout(
            |reply| {
                let messages = messages.len() as u32;
                let tenant = tenant.map(Box::from);
                bus.inbox.try_send(BusCommand::Publish { tenant, payload, messages, deadline, reply }).is_ok()
            },
            bus.timeout,
        )
        .await
        .ok_or(BusUnavailable)?;
    match answer.values.as_slice() {
        [0, receivers] => Ok(*receivers),
        _ => Err(BusUnavailable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_channels() {
        assert_eq!(tenant_channel("ssekify:bus", "acme"), "ssekify:bus:tenant:acme");
        assert_eq!(tenant_pattern("ssekify:bus"), "ssekify:bus:tenant:*");
        assert_eq!(tenant_pattern("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\:tenant:*");
        assert_eq!(tenant_of("ssekify:bus", "ssekify:bus:tenant:acme"), Some("acme"));
        assert_eq!(tenant_of("ssekify:bus", "ssekify:bus:tenant:a b"), Some("a b"));
        assert_eq!(tenant_of("ssekify:bus", "ssekify:bus"), None);
        assert_eq!(tenant_of("ssekify:bus", "ssekify:bus:tenant:"), None, "no name");
        assert_eq!(tenant_of("ssekify:bus", "ssekify:bus:tenant:a/b"), None, "not a valid name");
        assert_eq!(tenant_of("ssekify:bus", "other:tenant:acme"), None);
        assert_eq!(tenant_of("ssekify:bus", "ssekify:bus:canary:0000"), None);
    }
}
