//! A logical subscriber that behaves like a browser's `EventSource` across
//! instances: it opens `/sse` on a random instance, keeps the last event id
//! the browser would keep, and from time to time loses its connection and
//! comes back on a random instance with `Last-Event-ID`, after the stream's
//! `retry:` delay. A refused or failed attempt is retried the same way (a
//! browser gives up on a non-200 answer; the applications that run
//! `EventSource` then make a new one, which this stands for, keeping the id).

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;

use super::plan::{parse_id, Cast, Rng};
use super::seen::{FreshStart, Gap, Seen};
use super::sse::{Event, Parser};
use crate::record::now_nanos;
use crate::subscriber::{self, Dechunker};

/// How long a connect plus response head may take before the attempt counts
/// as failed (an instance being restarted can leave a connect hanging).
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// The reconnection delay before any `retry:` line was seen (Chromium's default).
const DEFAULT_RETRY_MS: u64 = 3_000;

/// What every logical subscriber of this process shares.
pub struct Clients {
    /// Public listeners of the instances.
    pub instances: Vec<SocketAddr>,
    /// Subscribe path without the query (`/sse`).
    pub path: String,
    /// Who is in which room.
    pub cast: Cast,
    /// Prefix of this run's message ids.
    pub id_prefix: String,
    /// Local addresses to connect from, round robin by subscriber.
    pub source_ips: Vec<IpAddr>,
    /// A connection is dropped after a time uniform in this range (seconds).
    pub lifetime: (f64, f64),
    /// Reconnection delay in place of the stream's `retry:`.
    pub reconnect_ms: Option<u64>,
    /// Seed of the run.
    pub seed: u64,
    /// Per local slot: what that subscriber saw.
    pub seen: RefCell<Vec<Seen>>,
    /// Local subscribers whose first stream opened.
    pub connected_once: Cell<usize>,
    /// Streams open now.
    pub open: Cell<usize>,
    /// Messages received by this process.
    pub messages: Cell<u64>,
}

/// One subscriber's browser-side state, kept across its connections.
struct Browser {
    /// Its slot in [`Clients::seen`].
    slot: usize,
    parser: Parser,
    /// What a browser would send as `Last-Event-ID`.
    last_id: Option<String>,
    /// When its last stream ended, if one did.
    closed_ns: Option<u64>,
}

/// Runs logical subscriber `index` (local slot `slot`) forever, starting after `delay`.
pub async fn run(clients: Rc<Clients>, index: usize, slot: usize, delay: Duration) {
    monoio::time::sleep(delay).await;
    let mut rng = Rng::new(clients.seed, 3 << 40 | index as u64);
    let source = (!clients.source_ips.is_empty()).then(|| clients.source_ips[index % clients.source_ips.len()]);
    let path = format!("{}?{}", clients.path, clients.cast.query(index));
    let mut browser = Browser { slot, parser: Parser::default(), last_id: None, closed_ns: None };
    loop {
        let instance = clients.instances[rng.below(clients.instances.len())];
        let headers = browser.last_id.as_ref().map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        let opened = monoio::time::timeout(OPEN_TIMEOUT, subscriber::open(instance, source, &path, &headers)).await;
        if let Ok(Ok((stream, rest, chunked))) = opened {
            {
                let mut seen = clients.seen.borrow_mut();
                let seen = &mut seen[slot];
                let opened_ns = now_nanos();
                if seen.first_connected_ns.is_none() {
                    seen.first_connected_ns = Some(opened_ns);
                    clients.connected_once.set(clients.connected_once.get() + 1);
                }
                if let (None, Some(closed_ns)) = (&browser.last_id, browser.closed_ns) {
                    seen.fresh_starts.push(FreshStart { closed_ns, opened_ns });
                }
                seen.connects += 1;
                seen.resumes += u32::from(browser.last_id.is_some());
            }
            browser.parser.restart();
            let lifetime = clients.lifetime.0 + rng.unit() * (clients.lifetime.1 - clients.lifetime.0).max(0.0);
            clients.open.set(clients.open.get() + 1);
            read(&clients, &mut browser, stream, rest, chunked, lifetime).await;
            browser.closed_ns = Some(now_nanos());
            clients.open.set(clients.open.get() - 1);
        } else {
            clients.seen.borrow_mut()[slot].connect_failures += 1;
        }
        // The same wait whether the subscriber dropped the stream, the server
        // closed it or the attempt failed: the browser's reconnection time.
        let retry = clients.reconnect_ms.or(browser.parser.retry_ms).unwrap_or(DEFAULT_RETRY_MS);
        monoio::time::sleep(Duration::from_millis(retry)).await;
    }
}

/// Reads one stream until it ends or `lifetime` seconds pass.
async fn read(
    clients: &Clients,
    browser: &mut Browser,
    mut stream: TcpStream,
    rest: Vec<u8>,
    chunked: bool,
    lifetime: f64,
) {
    let deadline = monoio::time::Instant::now() + Duration::from_secs_f64(lifetime);
    let mut dechunk = Dechunker::default();
    let mut bytes = Vec::new();
    let mut feed = |input: &[u8], browser: &mut Browser| {
        let input = if chunked {
            bytes.clear();
            dechunk.feed(input, &mut bytes);
            &bytes[..]
        } else {
            input
        };
        let Browser { slot, parser, last_id, .. } = browser;
        parser.feed(input, |event| on_event(clients, *slot, event, last_id));
    };
    feed(&rest, browser);
    let mut buf = Vec::with_capacity(4096);
    loop {
        match monoio::time::timeout_at(deadline, stream.read(buf)).await {
            Ok((Ok(n), returned)) if n > 0 => {
                feed(&returned, browser);
                buf = returned;
                buf.clear();
            }
            // Lifetime over (the stream is dropped here), closed, or failed.
            _ => return,
        }
    }
}

/// One dispatched frame: a browser's last event id follows any `id:` line;
/// a frame of the default type is a message, any named event is the
/// server's control frame (`ssekify.gap`, `ssekify.evicted`, the shutdown
/// announcement), never a message.
fn on_event(clients: &Clients, slot: usize, event: Event, last_id: &mut Option<String>) {
    let mut seen = clients.seen.borrow_mut();
    let seen = &mut seen[slot];
    if let Some(id) = &event.id {
        // An empty id clears it: the browser then sends no Last-Event-ID.
        *last_id = Some(id.clone()).filter(|id| !id.is_empty());
    }
    if !event.has_data {
        return;
    }
    match event.event.as_deref() {
        None => match event.id.as_deref().and_then(|id| parse_id(&clients.id_prefix, id)) {
            Some(seq) => {
                seen.received.push(seq);
                clients.messages.set(clients.messages.get() + 1);
            }
            None => seen.foreign += 1,
        },
        Some(control) => {
            match control {
                "ssekify.gap" => seen.gaps.push(Gap { after: seen.received.len() as u32, at_ns: now_nanos() }),
                "ssekify.evicted" => seen.evictions += 1,
                _ => seen.shutdowns += 1,
            }
            seen.controls_with_id += u32::from(event.id.is_some());
        }
    }
}
