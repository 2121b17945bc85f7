//! An instance's own message heard on the subscription before Redis's reply
//! to its append: staged, not left to chance.
//!
//! Redis writes the append's reply before the notice the append publishes,
//! but the two travel on different connections and the instance may read
//! the notice first; it then applies the entry at once, in log order, and
//! keeps the publisher waiting for the reply. Here a relay between the
//! instance and a real `redis-server` holds back everything Redis says on
//! the instance's command connections while its subscription flows, so the
//! notice always comes first. When the reply is let through, the publisher
//! gets its `200` and the subscriber the message once. When the session is
//! lost instead, by a reset of the command connection (answered at once, not
//! at the publisher's own deadline) or by the held replies making it
//! overdue, the publisher gets `503` although the message was delivered, the
//! subscriber still has it exactly once, and a retry with the same
//! `Idempotency-Key` is answered as the first publish, delivering nothing.
//!
//! Needs `redis-server` and `redis-cli` on PATH; without them each test
//! prints why and passes, unless `SSEKIFY_REQUIRE_REDIS=1`.

mod common;
#[path = "support_redis/mod.rs"]
mod support_redis;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use support_redis::*;

const USER: &str = "early";

/// A TCP relay to Redis that can hold back Redis's bytes on the connections
/// that never subscribed (the command connections).
struct Relay {
    port: u16,
    state: Arc<RelayState>,
}

struct RelayState {
    /// Connections accepted so far.
    accepted: AtomicUsize,
    /// Connections numbered below this, command connections only, get nothing from Redis.
    held_below: AtomicUsize,
    /// Held connections are closed, as a reset would.
    cut: AtomicBool,
}

impl Relay {
    fn start(redis_port: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let port = listener.local_addr().expect("relay address").port();
        let state = Arc::new(RelayState {
            accepted: AtomicUsize::new(0),
            held_below: AtomicUsize::new(0),
            cut: AtomicBool::new(false),
        });
        let shared = state.clone();
        std::thread::spawn(move || {
            for instance_side in listener.incoming() {
                let Ok(instance_side) = instance_side else { return };
                let number = shared.accepted.fetch_add(1, Ordering::SeqCst);
                let Ok(redis_side) = TcpStream::connect(("127.0.0.1", redis_port)) else { return };
                relay_connection(number, instance_side, redis_side, shared.clone());
            }
        });
        Relay { port, state }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// From now on, Redis's bytes on the command connections open now wait.
    fn hold_replies(&self) {
        let open = self.state.accepted.load(Ordering::SeqCst);
        self.state.held_below.store(open, Ordering::SeqCst);
    }

    /// Lets everything held through.
    fn release(&self) {
        self.state.held_below.store(0, Ordering::SeqCst);
    }

    /// Closes the held connections, what they held unsent; later ones flow.
    fn cut_held(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
    }
}

/// Two pumps for one connection; either side closing closes both.
fn relay_connection(number: usize, instance_side: TcpStream, redis_side: TcpStream, state: Arc<RelayState>) {
    let subscribed = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicBool::new(false));
    let (mut from_instance, mut to_redis) =
        (instance_side.try_clone().expect("clone"), redis_side.try_clone().expect("clone"));
    let (saw_subscribe, upstream_closed) = (subscribed.clone(), closed.clone());
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        while let Ok(read @ 1..) = from_instance.read(&mut buffer) {
            if buffer[..read].windows(9).any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE")) {
                saw_subscribe.store(true, Ordering::SeqCst);
            }
            if to_redis.write_all(&buffer[..read]).is_err() {
                break;
            }
        }
        upstream_closed.store(true, Ordering::SeqCst);
        let _ = to_redis.shutdown(Shutdown::Both);
        let _ = from_instance.shutdown(Shutdown::Both);
    });
    let (mut from_redis, mut to_instance) = (redis_side, instance_side);
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        while let Ok(read @ 1..) = from_redis.read(&mut buffer) {
            let held = || number < state.held_below.load(Ordering::SeqCst) && !subscribed.load(Ordering::SeqCst);
            while held() && !closed.load(Ordering::SeqCst) && !state.cut.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            if held() && state.cut.load(Ordering::SeqCst) {
                break;
            }
            if closed.load(Ordering::SeqCst) || to_instance.write_all(&buffer[..read]).is_err() {
                break;
            }
        }
        let _ = to_instance.shutdown(Shutdown::Both);
        let _ = from_redis.shutdown(Shutdown::Both);
    });
}

/// One instance on the relay (`--bus-timeout bus_timeout`) and a subscriber to `USER`.
fn instance_behind(relay: &Relay, bus_timeout: &str) -> (Server, SseClient) {
    let server = Server::start(&["--redis", &relay.url(), "--shards", "2", "--bus-timeout", bus_timeout]);
    wait_ready(&server);
    let client = SseClient::open_ready(server.public, &sse_path(USER, &[]));
    wait_connections(server.api, 1);
    (server, client)
}

fn wait_ready(server: &Server) {
    let ready = wait_until(Duration::from_secs(15), || http(server.public, "GET", "/readyz", &[], b"").status == 200);
    assert!(ready, "the instance's bus never became live:\n{}", server.logs());
}

/// `POST /v1/users/USER/events?id=id` with `Idempotency-Key: key`, on a thread.
fn publish_in_background(api: std::net::SocketAddr, id: &str, key: &str) -> JoinHandle<HttpResponse> {
    let (path, key) = (format!("/v1/users/{USER}/events?id={id}"), key.to_string());
    std::thread::spawn(move || http(api, "POST", &path, &[("Idempotency-Key", &key)], b"heard early"))
}

/// Holds the replies, publishes `id`, and returns once the subscriber has
/// the message while its publisher still waits.
fn publish_heard_before_reply(
    relay: &Relay,
    server: &Server,
    client: &mut SseClient,
    id: &str,
) -> JoinHandle<HttpResponse> {
    relay.hold_replies();
    let publisher = publish_in_background(server.api, id, id);
    let event = client.expect_event("the message, applied from its notice");
    assert_eq!((event.id.as_deref(), event.data.as_str()), (Some(id), "heard early"));
    assert!(!publisher.is_finished(), "the publisher was answered while Redis's reply was held");
    publisher
}

/// The next message of the stream is `id` (so nothing came between).
fn expect_next(client: &mut SseClient, id: &str) {
    let event = client.expect_event(id);
    assert_eq!(event.id.as_deref(), Some(id), "expected {id} next, got {event:?}");
}

#[test]
fn an_own_message_heard_before_its_append_reply_is_acknowledged_and_delivered_once() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    let relay = Relay::start(redis.port());
    let (server, mut client) = instance_behind(&relay, "5s");

    let publisher = publish_heard_before_reply(&relay, &server, &mut client, "e1");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!publisher.is_finished(), "the publisher was answered while Redis's reply was held");
    relay.release();
    let answer = ok_json(publisher.join().expect("publisher thread"));
    assert_eq!(answer["id"], "e1", "{answer}");
    assert_eq!(answer["delivered"], 1, "the subscriber counted once: {answer}");

    ok_json(publish_user(server.api, USER, "after", "id=e2"));
    expect_next(&mut client, "e2");
}

/// After the publish of `id` was refused although delivered: once the bus
/// is back, a retry with the same key is answered as the first publish and
/// delivers nothing (the next message is the subscriber's next).
fn retry_delivers_nothing(server: &Server, client: &mut SseClient, id: &str) {
    wait_ready(server);
    let answer = ok_json(publish_in_background(server.api, id, id).join().expect("publisher thread"));
    assert_eq!(answer["id"], id, "the retry is answered with the first id: {answer}");
    let next = format!("{id}-next");
    ok_json(publish_user(server.api, USER, "after", &format!("id={next}")));
    expect_next(client, &next);
}

#[test]
fn a_reset_after_an_own_message_was_heard_answers_503_at_once_and_a_retry_delivers_nothing() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    let relay = Relay::start(redis.port());
    let bus_timeout = Duration::from_secs(10);
    let (server, mut client) = instance_behind(&relay, "10s");

    let publisher = publish_heard_before_reply(&relay, &server, &mut client, "r1");
    let cut = Instant::now();
    relay.cut_held();
    // The session fails on the reset and answers the publisher it owes:
    // it cannot know whether the message was appended.
    let refused = publisher.join().expect("publisher thread");
    refused.assert_error(503, "bus_unavailable");
    assert!(
        cut.elapsed() < bus_timeout / 2,
        "answered {:?} after the reset: the publisher waited for its own deadline",
        cut.elapsed()
    );
    relay.release();
    retry_delivers_nothing(&server, &mut client, "r1");
}

#[test]
fn a_stall_after_an_own_message_was_heard_answers_503_and_a_retry_delivers_nothing() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(&[]);
    let relay = Relay::start(redis.port());
    let (server, mut client) = instance_behind(&relay, "1s");

    let publisher = publish_heard_before_reply(&relay, &server, &mut client, "s1");
    // The held replies make the session overdue and it is dropped.
    let refused = publisher.join().expect("publisher thread");
    refused.assert_error(503, "bus_unavailable");
    relay.release();
    retry_delivers_nothing(&server, &mut client, "s1");
}
