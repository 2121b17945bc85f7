//! Requests from one shard to others (or to the bus thread) and the waiting
//! for their answers: a pending slot per request on the asking shard, filled by
//! `Envelope::Reply`, removed when the asking task ends even if cancelled.

use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use super::envelope::{Answer, Envelope, ReplyTo};
use super::ShardCtx;

/// A reply awaited by a task on this shard.
pub(super) struct Pending {
    pub(super) generation: u64,
    pub(super) remaining: usize,
    pub(super) answers: Vec<Answer>,
    pub(super) waker: Option<Waker>,
}

impl ShardCtx {
    /// Sends `envelope` to `shard`, waiting while its inbox is full.
    pub async fn send(&self, shard: usize, envelope: Envelope) {
        self.shared.send(shard, envelope).await;
    }

    /// Sends one request per shard in `shards` and waits for all replies, in
    /// the order of `shards`.
    pub async fn ask(
        self: &Rc<Self>,
        shards: &[usize],
        mut request: impl FnMut(usize, ReplyTo) -> Envelope,
    ) -> Vec<Answer> {
        let pending = self.open_pending(shards.len());
        for (position, &shard) in shards.iter().enumerate() {
            self.send(shard, request(shard, pending.reply_to(position))).await;
        }
        pending.wait().await
    }

    /// Sends one request through `send` (which returns false when it could not
    /// be queued) and waits at most `timeout` for its answer.
    pub async fn request_with_timeout(
        self: &Rc<Self>,
        send: impl FnOnce(ReplyTo) -> bool,
        timeout: Duration,
    ) -> Option<Answer> {
        let pending = self.open_pending(1);
        if !send(pending.reply_to(0)) {
            return None;
        }
        // Boxed: a timer entry is cache-padded (aligned to 128 bytes), and
        // held inline it made every publish future aligned so, which the
        // router's box then took from `posix_memalign` at ~7 times the cost
        // of a plain allocation, on every publish, bus or none.
        let answers = Box::pin(monoio::time::timeout(timeout, pending.wait())).await.ok()?;
        answers.into_iter().next()
    }

    /// Opens a slot for `count` answers, lets `send` address the requests
    /// (it gets the [`ReplyTo`] of each position and returns false when it
    /// could not queue them all), and waits at most `timeout`. Returns every
    /// answer, the ones that did not come in time empty; `None` when `send` failed.
    pub async fn gather(
        self: &Rc<Self>,
        count: usize,
        send: impl FnOnce(&dyn Fn(usize) -> ReplyTo) -> bool,
        timeout: Duration,
    ) -> Option<Vec<Answer>> {
        let pending = self.open_pending(count);
        if !send(&|position| pending.reply_to(position)) {
            return None;
        }
        // Boxed for the reason given in `request_with_timeout`.
        match Box::pin(monoio::time::timeout(timeout, pending.wait())).await {
            Ok(answers) => Some(answers),
            Err(_) => Some(std::mem::take(&mut self.pending.borrow_mut()[pending.slot].answers)),
        }
    }

    /// A slot awaiting `count` answers; removed when dropped, so a late answer
    /// to an abandoned request is ignored.
    fn open_pending(self: &Rc<Self>, count: usize) -> PendingGuard<'_> {
        let generation = self.generation.get() + 1;
        self.generation.set(generation);
        let slot = self.pending.borrow_mut().insert(Pending {
            generation,
            remaining: count,
            answers: vec![Answer::default(); count],
            waker: None,
        });
        PendingGuard { ctx: self, slot, generation }
    }

    pub(super) fn reply(self: &Rc<Self>, to: ReplyTo, values: Vec<u64>) {
        self.answer(to, Answer { values, body: None });
    }

    pub(super) fn answer(self: &Rc<Self>, to: ReplyTo, answer: Answer) {
        let envelope = Envelope::Reply { to, answer };
        if to.shard == self.id {
            self.handle(envelope);
        } else if let Err(back) = self.shared.inboxes[to.shard].try_send(envelope) {
            let ctx = self.clone();
            monoio::spawn(async move { ctx.send(to.shard, back).await });
        }
    }
}

/// Removes a pending reply slot when its task ends, even when cancelled.
struct PendingGuard<'a> {
    ctx: &'a ShardCtx,
    slot: usize,
    generation: u64,
}

impl PendingGuard<'_> {
    fn reply_to(&self, position: usize) -> ReplyTo {
        ReplyTo { shard: self.ctx.id, slot: self.slot, generation: self.generation, position }
    }

    /// Waits until every answer arrived.
    async fn wait(&self) -> Vec<Answer> {
        std::future::poll_fn(|cx| {
            let mut pending = self.ctx.pending.borrow_mut();
            let entry = &mut pending[self.slot];
            if entry.remaining == 0 {
                Poll::Ready(std::mem::take(&mut entry.answers))
            } else {
                entry.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.ctx.pending.borrow_mut().remove(self.slot);
    }
}
