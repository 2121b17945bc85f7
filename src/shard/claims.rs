//! Idempotency keys claimed and finished on the shard that owns them (by
//! the key's hash), from whichever shard the publish arrived on.

use std::rc::Rc;

use bytes::Bytes;

use super::envelope::{Answer, Envelope};
use super::idempotency::{Claim, Ticket};
use super::ShardCtx;

impl ShardCtx {
    /// Looks up or claims an idempotency key on the shard that owns it.
    pub async fn claim_idempotency_key(self: &Rc<Self>, key: &str) -> Claim {
        let owner = self.shared.owner(key);
        if owner == self.id {
            return self.state.borrow_mut().idempotency.claim(key, self.now_ms());
        }
        let answers = self.ask(&[owner], |_, reply| Envelope::IdempotencyClaim { key: key.into(), reply }).await;
        let answer = answers.into_iter().next().unwrap_or_default();
        match (&answer.values[..], answer.body) {
            ([2], Some(body)) => Claim::Done(body),
            ([1], _) => Claim::InProgress,
            ([0, ticket], _) => Claim::Claimed(Ticket(*ticket)),
            // Not an owner's answer (claim_answer makes those): publish, holding no claim.
            _ => Claim::Claimed(Ticket::NONE),
        }
    }

    /// Stores (or, with `None`, releases) the answer of the claim `ticket` of a
    /// key, queued on its owner before this returns: the answer goes to the
    /// client after, so a repeat the client sends once it has the answer
    /// reaches the owner's inbox behind the finish and gets the answer, never
    /// `409 idempotency_in_progress` (one inbox per shard keeps push order).
    pub async fn finish_idempotency_key(&self, key: &str, ticket: Ticket, answer: Option<Bytes>) {
        let owner = self.shared.owner(key);
        if owner == self.id {
            self.state.borrow_mut().idempotency.finish(key, ticket, answer.as_deref());
            return;
        }
        self.send(owner, Envelope::IdempotencyFinish { key: key.into(), ticket, answer }).await;
    }

    /// Releases the claim `ticket` of a key from where nothing can wait (a
    /// request dropped mid-publish, whose client gets no answer to order
    /// against): a task queues the release.
    pub fn release_idempotency_key(self: &Rc<Self>, key: &str, ticket: Ticket) {
        let owner = self.shared.owner(key);
        if owner == self.id {
            self.state.borrow_mut().idempotency.finish(key, ticket, None);
            return;
        }
        let ctx = self.clone();
        let envelope = Envelope::IdempotencyFinish { key: key.into(), ticket, answer: None };
        monoio::spawn(async move { ctx.send(owner, envelope).await });
    }
}

/// A claim as an [`Answer`] to the asking shard.
pub(super) fn claim_answer(claim: Claim) -> Answer {
    match claim {
        Claim::Claimed(ticket) => Answer { values: vec![0, ticket.0], body: None },
        Claim::InProgress => Answer { values: vec![1], body: None },
        Claim::Done(body) => Answer { values: vec![2], body: Some(body) },
    }
}
