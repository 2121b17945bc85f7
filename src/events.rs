//! Lifecycle events: who connects and disconnects (and why), what was
//! published and to how many, and what failed — what an application builds
//! presence, audit and alerts on (the seed's `connect`, `disconnect`,
//! `publish` and `error` events).
//!
//! Listeners are `GET /v1/events` streams on the api listener, held by the
//! shards like subscribers. An event is built only when some shard has a
//! listener ([`EventHub::active`], one atomic load), encoded once as an SSE
//! frame without an id, and handed to each listening shard (the producing
//! shard's own listeners directly, the others through their inboxes). A
//! listener's queue is bounded and drops its oldest events, counted in
//! `eventsDropped`: a slow reader never slows a delivery. With
//! `--events-url`, every event also goes to a sink that POSTs batches to the
//! application (`server::events_sink`), with the same bound.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::sse::frame;

/// The kinds of event, as named in `types=` and in each frame's `event:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A subscriber's stream started.
    Connect,
    /// A subscriber's stream ended.
    Disconnect,
    /// A message was published.
    Publish,
    /// Something failed that an operator or application should hear of.
    Error,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 4] = [EventKind::Connect, EventKind::Disconnect, EventKind::Publish, EventKind::Error];

    /// Its name in `types=` and `event:`.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Connect => "connect",
            EventKind::Disconnect => "disconnect",
            EventKind::Publish => "publish",
            EventKind::Error => "error",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The kinds a listener asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTypes(u8);

impl EventTypes {
    /// Every kind (no `types=`).
    pub const ALL: EventTypes = EventTypes(0b1111);

    /// A comma-separated list of kinds; the unknown name on failure.
    pub fn parse(list: &str) -> Result<EventTypes, String> {
        let mut bits = 0;
        for name in list.split(',').map(str::trim).filter(|name| !name.is_empty()) {
            let kind = EventKind::ALL.iter().find(|kind| kind.name() == name).ok_or_else(|| name.to_owned())?;
            bits |= kind.bit();
        }
        Ok(if bits == 0 { EventTypes::ALL } else { EventTypes(bits) })
    }

    /// Whether `kind` is among them.
    pub fn contains(self, kind: EventKind) -> bool {
        self.0 & kind.bit() != 0
    }
}

/// One event, encoded once for every listener.
#[derive(Debug, Clone)]
pub struct Event {
    /// Its kind (listeners filter on it).
    pub kind: EventKind,
    /// The tenant it belongs to (a tenant's listener hears only its own).
    pub tenant: Option<Box<str>>,
    /// The JSON object: its fields, `type`, `instance` and `at`.
    pub data: Bytes,
    /// The SSE frame: `event: <kind>` and the JSON object, no id.
    pub frame: Bytes,
}

impl Event {
    /// Encodes `fields` (a JSON object) with `instance` and `at` added.
    pub fn new(kind: EventKind, tenant: Option<&str>, instance: u32, mut fields: Map<String, Value>) -> Event {
        fields.insert("type".into(), kind.name().into());
        fields.insert("instance".into(), format!("{instance:08x}").into());
        fields.insert("at".into(), unix_ms().into());
        let data = Bytes::from(serde_json::to_vec(&Value::Object(fields)).expect("a JSON object serializes"));
        let frame = frame::encode_control(kind.name(), &data);
        Event { kind, tenant: tenant.map(Into::into), data, frame }
    }
}

/// An `error` event: `kind` names what failed (`payload_too_large`,
/// `auth_webhook`, `bus`…), `message` says how.
pub fn error_event(kind: &str, message: &str, tenant: Option<&str>, instance: u32) -> Event {
    let mut fields = Map::new();
    fields.insert("kind".into(), kind.into());
    fields.insert("message".into(), message.into());
    fields.insert("tenant".into(), tenant.into());
    Event::new(EventKind::Error, tenant, instance, fields)
}

/// Milliseconds since the Unix epoch: events carry wall-clock time.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Hands an event to the `--events-url` sink; gives it back when the sink's
/// queue is full.
pub type Sink = Box<dyn Fn(Event) -> Result<(), Event> + Send + Sync>;

/// Which shards have listeners, the sink if any, and what was lost.
pub struct EventHub {
    /// Listeners per shard.
    listeners: Vec<AtomicU32>,
    /// Listeners on all shards.
    total: AtomicU32,
    /// Events a listener's full queue, a full shard inbox or the sink dropped.
    dropped: AtomicU64,
    /// The `--events-url` sink, attached at start.
    sink: OnceLock<Sink>,
    /// Events the sink delivered to the application.
    posted: AtomicU64,
    /// POSTs to the application that failed (each retried, or its batch dropped).
    post_failures: AtomicU64,
}

impl EventHub {
    /// A hub for `shards` shards, nobody listening.
    pub fn new(shards: usize) -> Self {
        EventHub {
            listeners: (0..shards).map(|_| AtomicU32::new(0)).collect(),
            total: AtomicU32::new(0),
            dropped: AtomicU64::new(0),
            sink: OnceLock::new(),
            posted: AtomicU64::new(0),
            post_failures: AtomicU64::new(0),
        }
    }

    /// Attaches the `--events-url` sink (once, at start).
    pub fn attach_sink(&self, sink: Sink) {
        let _ = self.sink.set(sink);
    }

    /// Whether anyone listens: checked before an event is even built.
    pub fn active(&self) -> bool {
        self.total.load(Ordering::Relaxed) > 0 || self.sink.get().is_some()
    }

    /// Hands `event` to the sink, if there is one (a full sink drops it, counted).
    pub fn to_sink(&self, event: &Event) {
        if let Some(sink) = self.sink.get() {
            if sink(event.clone()).is_err() {
                self.count_dropped(1);
            }
        }
    }

    /// Counts events the sink delivered.
    pub fn count_posted(&self, n: u64) {
        self.posted.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a failed POST to the application.
    pub fn count_post_failure(&self) {
        self.post_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Events the sink delivered so far (`eventsPosted`).
    pub fn posted(&self) -> u64 {
        self.posted.load(Ordering::Relaxed)
    }

    /// Failed POSTs so far (`eventsPostFailures`).
    pub fn post_failures(&self) -> u64 {
        self.post_failures.load(Ordering::Relaxed)
    }

    /// Listeners on all shards (`eventListeners`).
    pub fn listeners(&self) -> u64 {
        u64::from(self.total.load(Ordering::Relaxed))
    }

    /// The shards with listeners.
    pub fn listening_shards(&self) -> impl Iterator<Item = usize> + '_ {
        self.listeners.iter().enumerate().filter(|(_, n)| n.load(Ordering::Relaxed) > 0).map(|(shard, _)| shard)
    }

    /// A listener started (`+1`) or ended (`-1`) on `shard`.
    pub fn adjust(&self, shard: usize, started: bool) {
        if started {
            self.listeners[shard].fetch_add(1, Ordering::Relaxed);
            self.total.fetch_add(1, Ordering::Relaxed);
        } else {
            self.listeners[shard].fetch_sub(1, Ordering::Relaxed);
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Counts events lost to a slow listener or a full inbox.
    pub fn count_dropped(&self, n: u64) {
        if n > 0 {
            self.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Events lost so far (`eventsDropped`).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_and_filter() {
        let types = EventTypes::parse("connect, publish").unwrap();
        assert!(types.contains(EventKind::Connect) && types.contains(EventKind::Publish));
        assert!(!types.contains(EventKind::Disconnect) && !types.contains(EventKind::Error));
        assert_eq!(EventTypes::parse("").unwrap(), EventTypes::ALL);
        assert_eq!(EventTypes::parse("connect,nope"), Err("nope".to_owned()));
    }

    #[test]
    fn an_event_is_one_frame_without_an_id() {
        let mut fields = Map::new();
        fields.insert("connId".into(), "x".into());
        let event = Event::new(EventKind::Connect, Some("acme"), 0xab, fields);
        let text = std::str::from_utf8(&event.frame).unwrap();
        assert!(text.starts_with("event: connect\ndata: {"), "{text}");
        assert!(!text.contains("id:"), "{text}");
        let data: Value = serde_json::from_str(text.lines().nth(1).unwrap().strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data["instance"], "000000ab");
        assert!(data["at"].as_u64().unwrap() > 1_700_000_000_000);
    }
}
