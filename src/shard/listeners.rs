//! Lifecycle event listeners on a shard (`GET /v1/events` streams), and the
//! events this shard produces: `connect` and `disconnect` of its subscribers,
//! and whatever a route emits through [`ShardCtx::emit`].
//!
//! A listener is a connection in the shard's table with `listener` set: no
//! user, rooms or tenant index, so no message reaches it, and its own queue
//! bounds ([`LISTENER_QUEUE`]) dropping the oldest events.

use std::os::fd::OwnedFd;

use serde_json::{json, Map, Value};

use super::conn::{CloseReason, Conn};
use super::envelope::{Envelope, Subscription};
use super::queue::{Pushed, QueueLimits};
use super::{writer, ShardCtx, ShardState};
use crate::config::DropPolicy;
use crate::events::{error_event, Event, EventKind, EventTypes};
use crate::namespace::plain_name;

/// A listener's queue: thousands of events of slack for a reader that
/// pauses, then the oldest go (counted in `eventsDropped`).
pub const LISTENER_QUEUE: QueueLimits =
    QueueLimits { max_items: 10_000, max_bytes: 4 << 20, policy: DropPolicy::Oldest, notice: false };

impl ShardCtx {
    /// Registers a lifecycle events listener, its socket in the epoll set.
    pub(super) fn register_listener(&self, fd: OwnedFd, subscription: Subscription, types: EventTypes) {
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        let serial = self.registrations.get() + 1;
        let Some(socket) = self.watch(state, fd, serial) else { return };
        self.registrations.set(serial);
        let tenant = subscription.namespace.tenant_name().map(Into::into);
        let entry = state.conns.vacant_entry();
        let key = entry.key();
        let mut conn = Conn::new(socket, key, tenant, None, Default::default(), serial, self.now_ms());
        conn.listener = Some(types);
        entry.insert(conn).push_control(subscription.preamble, &mut state.ready);
        state.listeners.push(key);
        self.shared.events.adjust(self.id, true);
    }

    /// Forgets a listener that ended.
    pub(super) fn unregister_listener(&self, state: &mut ShardState, key: usize) {
        state.listeners.retain(|&listener| listener != key);
        self.shared.events.adjust(self.id, false);
    }

    /// Queues `event` to this shard's listeners that want it.
    pub(super) fn deliver_event(&self, event: &Event) {
        let mut state = self.state.borrow_mut();
        let ShardState { conns, listeners, ready, .. } = &mut *state;
        let mut dropped = 0;
        let now_ms = self.now_ms();
        for &key in listeners.iter() {
            let conn = &mut conns[key];
            let Some(types) = conn.listener else { continue };
            // A tenant's listener hears its tenant only; the instance-wide one hears all.
            let in_scope = conn.tenant.is_none() || conn.tenant.as_deref() == event.tenant.as_deref();
            if !types.contains(event.kind) || !in_scope || conn.closing.is_some() {
                continue;
            }
            match writer::offer(conn, event.frame.clone(), &LISTENER_QUEUE, now_ms) {
                Pushed::Queued { dropped_oldest } => {
                    dropped += dropped_oldest as u64;
                    ready.add(conn);
                }
                Pushed::DroppedNewest | Pushed::Overflow => dropped += 1,
            }
        }
        self.shared.events.count_dropped(dropped);
    }

    /// Hands `event` to every listener of the instance: this shard's
    /// directly, other shards' through their inboxes (a full one drops it).
    pub fn emit(&self, event: Event) {
        self.shared.events.to_sink(&event);
        for shard in self.shared.events.listening_shards() {
            if shard == self.id {
                self.deliver_event(&event);
            } else if self.shared.inboxes[shard].try_send(Envelope::Event(event.clone())).is_err() {
                self.shared.events.count_dropped(1);
            }
        }
    }

    /// Emits an `error` event, when anyone listens.
    pub fn emit_error(&self, kind: &str, message: &str, tenant: Option<&str>) {
        if self.shared.events.active() {
            self.emit(error_event(kind, message, tenant, self.shared.instance));
        }
    }

    /// The `connect` event of the subscriber in `key`.
    pub(super) fn connect_event(&self, key: usize, conn: &Conn) -> Event {
        let mut fields = self.conn_fields(key, conn);
        let rooms: Vec<&str> = conn.rooms.iter().map(|room| plain_name(room)).collect();
        fields.insert("rooms".into(), json!(rooms));
        Event::new(EventKind::Connect, conn.tenant.as_deref(), self.shared.instance, fields)
    }

    /// The `disconnect` event of the subscriber that was in `key`.
    pub(super) fn disconnect_event(&self, key: usize, conn: &Conn, reason: CloseReason) -> Event {
        let mut fields = self.conn_fields(key, conn);
        fields.insert("reason".into(), reason.event_name().into());
        fields.insert("durationMs".into(), self.now_ms().saturating_sub(conn.opened_ms).into());
        fields.insert("sent".into(), conn.sent.into());
        Event::new(EventKind::Disconnect, conn.tenant.as_deref(), self.shared.instance, fields)
    }

    fn conn_fields(&self, key: usize, conn: &Conn) -> Map<String, Value> {
        let mut fields = Map::new();
        fields.insert("connId".into(), self.conn_id(key, conn).to_string().into());
        fields.insert("user".into(), conn.user.as_deref().map(plain_name).into());
        fields.insert("tenant".into(), conn.tenant.as_deref().into());
        fields
    }
}
