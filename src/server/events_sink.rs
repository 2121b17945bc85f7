//! `--events-url`: every lifecycle event, POSTed to the application in
//! batches (`{"events":[…]}`, at most [`BATCH_MAX`] events or [`BATCH_WAIT`]
//! apart), from a thread of its own so that a slow application never holds
//! a shard.
//!
//! Shards hand events over a bounded inbox (full: dropped, counted); the
//! thread keeps at most [`PENDING_MAX`] waiting, dropping the oldest (counted
//! in `eventsDropped`), and retries a failed POST with back-off up to
//! [`ATTEMPTS`] times before it drops that batch (counted too).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use crate::events::Event;
use crate::http::client::{self, Endpoint};
use crate::shard::inbox::{inbox, LocalInbox};
use crate::shard::Shared;

/// Most events in one POST.
pub const BATCH_MAX: usize = 1000;

/// Longest an event waits for its batch to fill.
pub const BATCH_WAIT: Duration = Duration::from_secs(1);

/// Most events waiting to be POSTed; beyond, the oldest go.
pub const PENDING_MAX: usize = 10_000;

/// Events shards may have handed over and the thread not yet taken.
const INBOX_CAPACITY: usize = 16 * 1024;

/// Tries of one batch before it is dropped.
const ATTEMPTS: u32 = 6;

/// First wait after a failed POST; doubles each time, up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest answer read from the application.
const MAX_ANSWER: usize = 16 * 1024;

/// Attaches the sink to `shared`'s event hub and starts its thread.
pub fn spawn(shared: Arc<Shared>, endpoint: Endpoint) -> std::io::Result<()> {
    let (tx, rx) = inbox::<Event>(INBOX_CAPACITY);
    shared.events.attach_sink(Box::new(move |event| tx.try_send(event)));
    std::thread::Builder::new()
        .name("events-sink".into())
        .spawn(move || {
            let runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build();
            match runtime {
                Ok(mut runtime) => runtime.block_on(run(shared, endpoint, rx)),
                Err(error) => crate::log!(Error, "the events sink cannot start its runtime", error = error),
            }
        })
        .map(drop)
}

/// Events waiting to be POSTed, when the oldest arrived, and the batcher
/// to wake when more arrive.
#[derive(Default)]
struct Pending {
    events: VecDeque<Bytes>,
    oldest_since: Option<Instant>,
    waiting: Option<Waker>,
}

async fn run(shared: Arc<Shared>, endpoint: Endpoint, inbox: LocalInbox<Event>) {
    let pending = Rc::new(RefCell::new(Pending::default()));
    monoio::spawn(collect(shared.clone(), inbox, pending.clone()));
    loop {
        let batch = next_batch(&pending).await;
        post(&shared, &endpoint, batch).await;
    }
}

/// Moves events from the shards' inbox to `pending`, dropping the oldest
/// beyond [`PENDING_MAX`].
async fn collect(shared: Arc<Shared>, mut inbox: LocalInbox<Event>, pending: Rc<RefCell<Pending>>) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    loop {
        inbox.recv_batch(&mut batch, BATCH_MAX).await;
        let mut pending = pending.borrow_mut();
        pending.oldest_since.get_or_insert_with(Instant::now);
        pending.events.extend(batch.drain(..).map(|event| event.data));
        let excess = pending.events.len().saturating_sub(PENDING_MAX);
        pending.events.drain(..excess);
        shared.events.count_dropped(excess as u64);
        if let Some(waker) = pending.waiting.take() {
            waker.wake();
        }
    }
}

/// Completes once [`collect`] added events after its first poll.
fn added(pending: &RefCell<Pending>) -> impl Future<Output = ()> + '_ {
    let mut registered = false;
    std::future::poll_fn(move |cx| {
        let mut pending = pending.borrow_mut();
        if registered && pending.waiting.is_none() {
            return Poll::Ready(());
        }
        pending.waiting = Some(cx.waker().clone());
        registered = true;
        Poll::Pending
    })
}

/// Waits until [`BATCH_MAX`] events wait or the oldest waited [`BATCH_WAIT`];
/// takes them.
async fn next_batch(pending: &RefCell<Pending>) -> Vec<Bytes> {
    loop {
        let due = {
            let mut pending = pending.borrow_mut();
            let due = pending.oldest_since.map(|since| since + BATCH_WAIT);
            let overdue = due.is_some_and(|due| due <= Instant::now());
            if !pending.events.is_empty() && (pending.events.len() >= BATCH_MAX || overdue) {
                let take = pending.events.len().min(BATCH_MAX);
                let batch: Vec<Bytes> = pending.events.drain(..take).collect();
                pending.oldest_since = (!pending.events.is_empty()).then(Instant::now);
                return batch;
            }
            due.filter(|_| !pending.events.is_empty())
        };
        // Asleep until events arrive, or the oldest waiting is due: no
        // polling while nothing happens.
        match due {
            None => added(pending).await,
            Some(due) => monoio::select! {
                _ = added(pending) => {}
                _ = monoio::time::sleep_until(monoio::time::Instant::from_std(due)) => {}
            },
        }
    }
}

/// POSTs one batch, retrying with back-off; drops it after [`ATTEMPTS`].
async fn post(shared: &Shared, endpoint: &Endpoint, batch: Vec<Bytes>) {
    let body = body(&batch);
    let mut backoff = BACKOFF_FIRST;
    for attempt in 1..=ATTEMPTS {
        let exchange = client::exchange(endpoint.addr, request(endpoint, &body), MAX_ANSWER);
        let outcome = match monoio::time::timeout(POST_TIMEOUT, exchange).await {
            Ok(Ok((status, _))) if (200..300).contains(&status) => Ok(()),
            Ok(Ok((status, _))) => Err(format!("answered {status}")),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(format!("no answer within {POST_TIMEOUT:?}")),
        };
        match outcome {
            Ok(()) => {
                shared.events.count_posted(batch.len() as u64);
                return;
            }
            Err(error) => {
                shared.events.count_post_failure();
                if attempt == 1 || attempt == ATTEMPTS {
                    crate::log!(Warn, "events POST failed", url = endpoint.url(), error = error, attempt = attempt);
                }
            }
        }
        if attempt < ATTEMPTS {
            monoio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
    shared.events.count_dropped(batch.len() as u64);
}

/// `{"events":[…]}` from the events' JSON objects.
fn body(batch: &[Bytes]) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + batch.iter().map(|e| e.len() + 1).sum::<usize>());
    out.put_slice(b"{\"events\":[");
    for (index, event) in batch.iter().enumerate() {
        if index > 0 {
            out.put_u8(b',');
        }
        out.put_slice(event);
    }
    out.put_slice(b"]}");
    out.freeze()
}

fn request(endpoint: &Endpoint, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(256 + body.len());
    out.put_slice(b"POST ");
    out.put_slice(endpoint.target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\nHost: ");
    out.put_slice(endpoint.host.as_bytes());
    out.put_slice(
        b"\r\nContent-Type: application/json\r\nUser-Agent: ssekify\r\nConnection: close\r\nContent-Length: ",
    );
    out.put_slice(body.len().to_string().as_bytes());
    out.put_slice(b"\r\n\r\n");
    out.put_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_one_json_object() {
        let batch = [Bytes::from_static(br#"{"type":"connect"}"#), Bytes::from_static(br#"{"type":"publish"}"#)];
        let parsed: serde_json::Value = serde_json::from_slice(&body(&batch)).unwrap();
        assert_eq!(parsed, serde_json::json!({ "events": [{ "type": "connect" }, { "type": "publish" }] }));
        assert_eq!(&body(&[])[..], br#"{"events":[]}"#);
    }
}
