//! A subscriber's arrival and departure on its shard: handed to the user's
//! owner shard, registered in the slab, the indexes and the epoll set (with
//! the per-user limit, the replay it resumes from and its `connect` event),
//! and forgotten when it ends.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use monoio::net::TcpStream;
use smallvec::SmallVec;

use super::conn::{CloseReason, Closing, Conn};
use super::envelope::{Envelope, Refusal, Subscription};
use super::key::Key;
use super::{replay, socket, writer, ShardCtx, ShardState, Shared};
use crate::config::UserLimitPolicy;
use crate::metrics::ShardStats;

impl ShardCtx {
    /// Takes a subscriber whose request was accepted: registers it here when
    /// this shard owns its user (or it is anonymous), else moves the socket
    /// and the request to the owner's inbox.
    pub async fn subscribe(self: &Rc<Self>, stream: TcpStream, subscription: Subscription) {
        let owner = subscription.user.as_deref().map_or(self.id, |user| self.shared.owner(user));
        // SAFETY: the stream is whole (not split), so the descriptor is its
        // alone; from here on the shard's write loop and epoll set use it.
        let fd = unsafe { OwnedFd::from_raw_fd(stream.into_raw_fd()) };
        if owner == self.id {
            self.register(fd, subscription);
            return;
        }
        self.send(owner, Envelope::Subscriber { fd, subscription }).await;
    }

    /// Registers a subscriber on its owning shard, with its socket in the
    /// shard's epoll set and its preamble listed for the write loop.
    pub(super) fn register(self: &Rc<Self>, fd: OwnedFd, subscription: Subscription) {
        if let Some(types) = subscription.events {
            return self.register_listener(fd, subscription, types);
        }
        // What the bus queued without waking this shard goes into the rings
        // before the replay reads them; what it queues from here on finds
        // the new connection in the interest filter, or is taken at the end.
        self.take_lane(usize::MAX);
        self.register_subscriber(fd, subscription);
        self.take_lane(usize::MAX);
    }

    fn register_subscriber(self: &Rc<Self>, fd: OwnedFd, subscription: Subscription) {
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        if let (Some(limit), Some(user)) = (self.shared.config.max_connections_per_user, &subscription.user) {
            // Connections already closing (an eviction's) no longer count.
            let open: SmallVec<[usize; 4]> =
                state.registry.user(user).iter().copied().filter(|&key| state.conns[key].closing.is_none()).collect();
            if open.len() >= limit.get() && self.shared.config.user_limit_policy == UserLimitPolicy::EvictOldest {
                let excess = open.len() + 1 - limit.get();
                let mut oldest = open;
                oldest.sort_unstable_by_key(|&key| state.conns[key].serial);
                for &key in &oldest[..excess] {
                    let conn = &mut state.conns[key];
                    conn.push_control(evicted_frame(), &mut state.ready);
                    conn.close(Closing::AfterFlush, CloseReason::Evicted, &mut state.ready);
                }
            } else if open.len() >= limit.get() {
                crate::log!(
                    Debug,
                    "subscriber refused",
                    shard = self.id,
                    user = crate::namespace::plain_name(user),
                    tenant = subscription.namespace.tenant_name(),
                    reason = "too_many_connections",
                );
                drop_connection_slot(&self.shared, subscription.namespace.tenant_name());
                ShardStats::add(&self.stats().errors, 1);
                let answer = (self.shared.render_refusal)(&Refusal::TooManyConnections { limit: limit.get() });
                match TcpStream::from_std(std::net::TcpStream::from(fd)) {
                    Ok(stream) => drop(monoio::spawn(writer::answer_and_close(stream, answer))),
                    Err(error) => crate::log!(Warn, "could not answer a refused subscriber", error = error),
                }
                return;
            }
        }
        let serial = self.registrations.get() + 1;
        let Some(socket) = self.watch(state, fd, serial) else {
            drop_connection_slot(&self.shared, subscription.namespace.tenant_name());
            return;
        };
        self.registrations.set(serial);
        let entry = state.conns.vacant_entry();
        let key = entry.key();
        let tenant = subscription.namespace.tenant_name().map(|tenant| state.registry.add_tenant_member(tenant, key));
        let user = subscription.user.as_deref().map(Key::from);
        if let Some(user) = &user {
            if state.registry.add_user(user, key) {
                state.replay.pin_user(user);
            }
        }
        let rooms = subscription.rooms.iter().map(|room| state.registry.add_member(room, key)).collect();
        let conn = entry.insert(Conn::new(socket, key, tenant, user, rooms, serial, self.now_ms()));
        let ready = &mut state.ready;
        conn.push_control(subscription.preamble, ready);
        // Same turn of the shard as the registration: nothing published
        // meanwhile can fall between the replayed part and the live part.
        let replay = state.replay.replay(
            conn.user.as_deref(),
            &conn.rooms,
            conn.tenant.as_deref(),
            subscription.last_event_id.as_deref(),
        );
        if replay.gap {
            conn.push_control(replay::gap_frame(subscription.last_event_id.as_deref().unwrap_or_default()), ready);
        }
        let replayed = replay.frames.len() as u64;
        for frame in replay.frames {
            conn.push_control(frame, ready);
        }
        conn.sent = replayed;
        crate::log!(
            Debug,
            "subscriber connected",
            shard = self.id,
            conn = self.conn_id(key, conn),
            user = conn.user.as_deref().map(crate::namespace::plain_name),
            tenant = conn.tenant,
            rooms = conn.rooms.len(),
            resumed = subscription.last_event_id.is_some(),
            replayed = replayed,
            gap = replay.gap,
        );
        let connect = self.shared.events.active().then(|| self.connect_event(key, conn));
        let stats = self.stats();
        ShardStats::add(&stats.sent, replayed);
        ShardStats::add(&stats.subscribes, 1);
        self.count_tenant_sent(conn.tenant.as_deref(), replayed);
        stats.connections.store((state.conns.len() - state.listeners.len()) as u64, Ordering::Relaxed);
        stats.users.store(state.registry.user_count() as u64, Ordering::Relaxed);
        stats.rooms.store(state.registry.room_count() as u64, Ordering::Relaxed);
        drop(guard);
        if let Some(event) = connect {
            self.emit(event);
        }
    }

    /// Puts a new connection's socket in the epoll set under the token of
    /// the slot it is about to take and hands back the descriptor, the
    /// connection's from then on. On failure (the kernel's limit of watches)
    /// the socket is closed with a log line: its client retries.
    pub(super) fn watch(&self, state: &ShardState, fd: OwnedFd, serial: u64) -> Option<RawFd> {
        let token = super::conn::token(state.conns.vacant_key(), serial);
        match self.sockets.watch(fd.as_raw_fd(), token) {
            Ok(()) => Some(fd.into_raw_fd()),
            Err(error) => {
                ShardStats::add(&self.stats().errors, 1);
                crate::log!(Warn, "could not watch a subscriber's socket", shard = self.id, error = error);
                None
            }
        }
    }

    /// Forgets a connection that ended for `reason` and closes its socket.
    pub(crate) fn unregister(&self, key: usize, reason: CloseReason) {
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        let conn = state.conns.remove(key);
        if conn.attached {
            if let Some(ring) = &*self.send_ring.borrow() {
                ring.detach(key as u32);
            }
        }
        socket::close(conn.socket);
        if conn.listener.is_some() {
            return self.unregister_listener(state, key);
        }
        crate::log!(
            Debug,
            "subscriber disconnected",
            shard = self.id,
            conn = self.conn_id(key, &conn),
            user = conn.user.as_deref().map(crate::namespace::plain_name),
            tenant = conn.tenant,
            reason = reason.name(),
        );
        if let Some(user) = &conn.user {
            state.registry.remove_user(user, key);
            if state.registry.user(user).is_empty() {
                state.replay.unpin_user(user, self.now_ms());
                self.report_replay(&state.replay);
            }
        }
        for room in &conn.rooms {
            state.registry.remove_member(room, key);
        }
        if let Some(tenant) = &conn.tenant {
            state.registry.remove_tenant_member(tenant, key);
        }
        drop_connection_slot(&self.shared, conn.tenant.as_deref());
        let stats = self.stats();
        stats.connections.store((state.conns.len() - state.listeners.len()) as u64, Ordering::Relaxed);
        stats.users.store(state.registry.user_count() as u64, Ordering::Relaxed);
        stats.rooms.store(state.registry.room_count() as u64, Ordering::Relaxed);
        if self.shared.events.active() {
            let event = self.disconnect_event(key, &conn, reason);
            drop(guard);
            self.emit(event);
        }
    }
}

/// Event name of the notice a connection gets when a newer one of its user
/// takes its place.
pub const EVICTED_EVENT: &str = "ssekify.evicted";

/// The `ssekify.evicted` frame (no id: the client's last id stays put).
pub(crate) fn evicted_frame() -> Bytes {
    crate::sse::frame::encode_control(EVICTED_EVENT, br#"{"reason":"max_connections_per_user"}"#)
}

/// Gives back the places a subscriber held under `--max-connections` and,
/// in a tenant, under its `maxConnections`.
pub(super) fn drop_connection_slot(shared: &Shared, tenant: Option<&str>) {
    shared.connections.fetch_sub(1, Ordering::AcqRel);
    if let (Some(quotas), Some(tenant)) = (&shared.tenant_quotas, tenant) {
        quotas.release_connection(tenant);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;
    use std::sync::{mpsc, Arc};

    use clap::Parser;

    use super::*;
    use crate::auth::Authenticator;
    use crate::config::{Cli, Config};
    use crate::namespace::Namespace;
    use crate::shard::envelope::{Delivery, Target};
    use crate::shard::inbox::{inbox, INBOX_CAPACITY};
    use crate::sse::frame::encode;

    fn no_refusal(_: &Refusal) -> Bytes {
        Bytes::new()
    }

    /// Everything queued to connection `key`, as its socket would get it.
    fn queued(ctx: &ShardCtx, key: usize) -> String {
        let mut state = ctx.state.borrow_mut();
        let mut iovecs = Vec::new();
        state.conns[key].queue.describe(&mut iovecs, 64);
        iovecs
            .iter()
            .map(|v| {
                // SAFETY: the iovecs point into frames the queue holds while `state` is borrowed.
                let bytes = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
                String::from_utf8_lossy(bytes).into_owned()
            })
            .collect()
    }

    #[test]
    fn a_registration_takes_in_what_the_bus_queued_before_it_reads_the_rings() {
        let config = Config::try_from(&Cli::parse_from(["ssekify", "--shards", "1"]).server).expect("defaults");
        let (shared_inbox, _local) = inbox(INBOX_CAPACITY);
        let (lifecycle, _) = mpsc::channel();
        let mut shared = Shared::new(config, Authenticator::None, None, no_refusal, vec![shared_inbox], 1, lifecycle);
        let lane = shared.open_bus_lanes().pop();
        let shared = Arc::new(shared);
        let ctx = ShardCtx::new(0, shared.clone(), lane).expect("an epoll set");
        let message = |id: &str| Delivery::message(Target::User("u".into()), encode(id, None, b"{}"), true);
        ctx.deliver(message("m1"));
        // m2 comes from the bus for a user nobody here has: queued, not rung.
        let bus_lane = &shared.lanes[0];
        let probe = bus_lane.interest.probe(&Target::User("u".into()));
        assert!(bus_lane
            .push(Envelope::Deliver { deliveries: vec![message("m2")], reply: None, entry: Bytes::new() })
            .is_ok());
        let connections = &shared.stats[0].connections;
        assert!(!bus_lane.must_ring(&[probe], connections), "nobody here wants it yet");

        // The client got m2 from another instance and resumes here.
        let (socket, _peer) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
        let subscription = Subscription {
            namespace: Namespace::default(),
            user: Some("u".into()),
            rooms: Vec::new(),
            last_event_id: Some("m2".into()),
            preamble: Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n"),
            events: None,
        };
        ctx.register(OwnedFd::from(socket), subscription);
        let key = ctx.state.borrow().registry.user("u")[0];
        assert_eq!(queued(&ctx, key), "HTTP/1.1 200 OK\r\n\r\n", "no gap and no repeat: m2 was in the ring");

        // From now on the bus sees the connection and rings for u's messages.
        assert!(bus_lane
            .push(Envelope::Deliver { deliveries: vec![message("m3")], reply: None, entry: Bytes::new() })
            .is_ok());
        assert!(bus_lane.must_ring(&[probe], connections));
    }
}
