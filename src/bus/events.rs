//! The queue between the tasks that read the bus's command connections (and
//! a sharded Cluster's subscriptions, and Sentinel) and the session loop that
//! handles what they read: one queue, so the loop waits on one thing for
//! every connection however many a Cluster needs, and a stop signal that ends
//! the readers with the session. The main subscription is read by the loop
//! itself (see [`super::session`]).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Poll, Waker};

use super::conn::{BusError, ReplyReader};
use super::resp::Reply;

/// Events read and not yet handled beyond which the readers stop reading:
/// a bus thread held up by full shard inboxes then pushes back on Redis
/// (which may cut the subscription; the log covers it) instead of growing
/// without bound.
const EVENTS_MAX: usize = 16 * 1024;

/// What the reader tasks report.
pub enum Event {
    /// A reply on command connection `node`.
    Reply(usize, Result<Reply, BusError>),
    /// A message on the subscription.
    Pushed(Result<Reply, BusError>),
    /// Sentinel announced a failover, or its connection failed.
    Failover(BusError),
}

/// Events queued by reader tasks for the session loop.
#[derive(Default)]
pub struct Events {
    queue: RefCell<VecDeque<Event>>,
    waker: RefCell<Option<Waker>>,
    /// Set when the session ends: reader tasks stop.
    stopped: Cell<bool>,
    stop_wakers: RefCell<Vec<Waker>>,
    /// Readers waiting for the queue to drain below [`EVENTS_MAX`].
    room_wakers: RefCell<Vec<Waker>>,
}

impl Events {
    /// Queues what a reader read and wakes the session loop.
    pub fn push(&self, event: Event) {
        self.queue.borrow_mut().push_back(event);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Waits for at least one event and moves all into `out`.
    pub async fn take(&self, out: &mut Vec<Event>) {
        std::future::poll_fn(|cx| {
            if self.queue.borrow().is_empty() {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            self.take_queued(out);
            Poll::Ready(())
        })
        .await
    }

    /// Moves whatever is queued into `out`, without waiting.
    pub fn take_queued(&self, out: &mut Vec<Event>) {
        let mut queue = self.queue.borrow_mut();
        if queue.is_empty() {
            return;
        }
        out.extend(queue.drain(..));
        for waker in self.room_wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// Waits until the queue has room for more events.
    pub async fn room(&self) {
        std::future::poll_fn(|cx| {
            if self.queue.borrow().len() < EVENTS_MAX {
                return Poll::Ready(());
            }
            register(&self.room_wakers, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Ends every reader task (the session is over).
    pub fn stop(&self) {
        self.stopped.set(true);
        for waker in self.stop_wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// Completes once [`Events::stop`] was called.
    pub async fn stopped(&self) {
        std::future::poll_fn(|cx| {
            if self.stopped.get() {
                return Poll::Ready(());
            }
            register(&self.stop_wakers, cx.waker());
            Poll::Pending
        })
        .await
    }
}

/// Adds `waker` to `wakers` unless it is there: a reader polls these
/// futures at every message, and a copy each time would grow for as long
/// as the session lives.
fn register(wakers: &RefCell<Vec<Waker>>, waker: &Waker) {
    let mut wakers = wakers.borrow_mut();
    if !wakers.iter().any(|w| w.will_wake(waker)) {
        wakers.push(waker.clone());
    }
}

/// Reads `reader` into `events` as `wrap(reply)` until an error or the stop.
pub fn spawn_reader(
    events: &Rc<Events>,
    mut reader: ReplyReader,
    wrap: impl Fn(Result<Reply, BusError>) -> Event + 'static,
) {
    let events = events.clone();
    monoio::spawn(async move {
        loop {
            monoio::select! {
                _ = events.room() => {}
                _ = events.stopped() => return,
            }
            monoio::select! {
                reply = reader.next() => {
                    let failed = reply.is_err();
                    events.push(wrap(reply));
                    if failed {
                        return;
                    }
                }
                _ = events.stopped() => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Wake};

    struct Counted;

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {}
    }

    #[test]
    fn a_reader_waiting_for_the_stop_at_every_message_is_remembered_once() {
        let events = Events::default();
        let waker = Waker::from(Arc::new(Counted));
        let mut cx = Context::from_waker(&waker);
        for _ in 0..1_000 {
            let stopped = std::pin::pin!(events.stopped());
            assert!(stopped.poll(&mut cx).is_pending());
        }
        assert_eq!(events.stop_wakers.borrow().len(), 1);
        let other = Waker::from(Arc::new(Counted));
        assert!(std::pin::pin!(events.stopped()).poll(&mut Context::from_waker(&other)).is_pending());
        assert_eq!(events.stop_wakers.borrow().len(), 2, "another reader is another waker");
        events.stop();
        assert!(std::pin::pin!(events.stopped()).poll(&mut cx).is_ready());
    }
}
