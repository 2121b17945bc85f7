//! Publish routes: one message per request, or a batch kept in order.
//!
//! Every message is validated and encoded once here, on the shard that read
//! the request; the shard layer then routes the one `Bytes` frame to every
//! recipient. A batch is validated whole before anything is delivered. With
//! an `Idempotency-Key`, a retry gets the first answer and delivers nothing.
//! Every route publishes into one namespace: the default one, or a tenant's
//! (`/v1/t/{tenant}/…`), whose targets and idempotency keys are its own.

use std::borrow::Cow;
use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use smallvec::{smallvec, SmallVec};

use super::batch_scan::{self, Members};
use super::names::{check_field, check_name, invalid};
use super::{param, query_params};
use crate::bus::{self, Bus, Outgoing};
use crate::events::{Event, EventKind};
use crate::http::request::{Known, Request};
use crate::http::response::{Response, JSON};
use crate::metrics::{Rejection, ShardStats};
use crate::namespace::{plain_name, tenant_of_key, Namespace};
use crate::shard::envelope::{Delivery, Target};
use crate::shard::idempotency::{valid_key, Claim, Ticket};
use crate::shard::yielding;
use crate::shard::{ShardCtx, Upcoming};
use crate::sse::frame;
use crate::sse::id::{self, GeneratedId};
use crate::tenants::quota::RateRefusal;
use crate::units::decimal;

/// Who a single-message route addresses.
pub enum To {
    /// `/v1/users/{user}/events`
    User(String),
    /// `/v1/rooms/{room}/events`
    Room(String),
    /// `/v1/broadcast`
    All,
}

/// A validated, encoded message; its delivery's target is in the namespace's
/// keys. Its strings are borrowed from the request where they can be.
struct Prepared<'a> {
    id: MessageId<'a>,
    event: Option<Cow<'a, str>>,
    /// Borrowed from the request's body unless decoded from an escaped
    /// string: the frame copies it, so holding a share of the body (a
    /// reference count taken and given back, two atomic operations a
    /// message) bought nothing.
    data: Cow<'a, str>,
    /// `data` is known to hold no CR or LF ([`Members::data_is_one_line`]),
    /// so its frame is one `data:` line without a search for a break (~75
    /// instructions a 100-byte payload).
    data_is_one_line: bool,
    target: Target,
}

impl Prepared<'_> {
    /// The message's frame, encoded when it is delivered. With one shard a
    /// batch's frames are made one at a time as they are delivered, each
    /// right after the delivery before it dropped a full ring's oldest
    /// frame: the allocator then serves it from its per-thread cache,
    /// where a batch's frames all made first went through its bins
    /// (~280 instructions a message, `benches/cachesim.py`).
    fn frame(&self) -> Bytes {
        let (id, event, data) = (self.id.as_str(), self.event.as_deref(), self.data.as_bytes());
        match self.data_is_one_line {
            true => frame::encode_line(id, event, data),
            false => frame::encode(id, event, data),
        }
    }
}

/// A message's id: assigned here, or the publisher's (a retry of which is
/// recognised on every instance).
enum MessageId<'a> {
    Generated(GeneratedId),
    Given(Cow<'a, str>),
}

impl MessageId<'_> {
    fn as_str(&self) -> &str {
        match self {
            MessageId::Generated(id) => id.as_str(),
            MessageId::Given(id) => id,
        }
    }
}

/// `POST /v1/users/{u}/events`, `/v1/rooms/{r}/events`, `/v1/broadcast`
/// (and the same under `/v1/t/{tenant}/`).
pub async fn single(
    ctx: &Rc<ShardCtx>,
    bus: Option<&Bus>,
    ns: &Namespace,
    request: &Request,
    body: &Bytes,
    to: To,
) -> Response {
    match single_here(ctx, bus, ns, request, body, to) {
        Ok(response) => response,
        // Boxed: this future (~2.6 KiB) would otherwise make every
        // connection's task that large, subscribers' too.
        Err(to) => Box::pin(single_anywhere(ctx, bus, ns, request, body, to)).await,
    }
}

/// Answers a single publish that completes on this shard at once: no
/// `Idempotency-Key` to claim, nothing for the bus (none, or
/// `scope=local`), no other shard to ask (one shard, or a user this shard
/// owns). No future is made for it: [`single_anywhere`]'s, allocated and
/// moved per request, cost ~1,700 instructions (`benches/callgrind.py`).
/// `Err` gives `to` back when the publish needs more than this shard.
fn single_here(
    ctx: &ShardCtx,
    bus: Option<&Bus>,
    ns: &Namespace,
    request: &Request,
    body: &Bytes,
    to: To,
) -> Result<Response, To> {
    if request.known(Known::IdempotencyKey).is_some() {
        return Err(to);
    }
    let scope = match scope(request) {
        Ok(scope) => scope,
        Err(refusal) => return Ok(refused(ctx, refusal)),
    };
    let needs_bus = matches!(scope, Scope::Cluster) && bus.is_some();
    let other_shards =
        ctx.shared.shard_count() > 1 && !matches!(&to, To::User(user) if ctx.shared.owner(&ns.key(user)) == ctx.id);
    if needs_bus || other_shards {
        return Err(to);
    }
    let published = || {
        let prepared = prepare_single(ctx, ns, request, body, to)?;
        if let Some(tenant) = ns.tenant_name() {
            take_tenant_rate(ctx, tenant, 1)?;
        }
        let result = deliver_here(ctx, prepared);
        if let Some(tenant) = ns.tenant_name() {
            ctx.count_tenant_published(tenant, 1);
        }
        Ok(result)
    };
    Ok(match published() {
        Ok(result) => single_answer(&result),
        Err(refusal) => refused(ctx, refusal),
    })
}

/// [`single`] in general: claims its `Idempotency-Key`, and waits for the
/// bus or the other shards.
async fn single_anywhere(
    ctx: &Rc<ShardCtx>,
    bus: Option<&Bus>,
    ns: &Namespace,
    request: &Request,
    body: &Bytes,
    to: To,
) -> Response {
    // The claim and the publish are awaited in place, not handed to a
    // wrapper as one future: moving that ~4 KiB future cost more than the
    // rest of the claim check.
    let claim = match claim(ctx, ns, request).await {
        Ok(claim) => claim,
        Err(answer) => return answer,
    };
    let prepare = async { Ok(smallvec![prepare_single(ctx, ns, request, body, to)?]) };
    let key = claim.as_ref().map(ClaimGuard::key);
    let response = match validate_and_deliver(ctx, bus, ns, request, body, key, prepare).await {
        Ok(results) => single_answer(&results[0]),
        Err(response) => refused(ctx, response),
    };
    finish(claim, &response).await;
    response
}

/// A single publish's `200` answer: its one result.
fn single_answer(result: &Outcome<'_>) -> Response {
    let mut body = Vec::with_capacity(96);
    result.write_json(&mut body);
    Response::with_body(200, JSON, body)
}

/// `POST /v1/publish`: JSON `{"messages":[…]}` or NDJSON, one result per message.
pub async fn batch(ctx: &Rc<ShardCtx>, bus: Option<&Bus>, ns: &Namespace, request: &Request, body: &Bytes) -> Response {
    let claim = match claim(ctx, ns, request).await {
        Ok(claim) => claim,
        Err(answer) => return answer,
    };
    let response = publish_batch(ctx, bus, ns, request, claim.as_ref().map(ClaimGuard::key), body).await;
    finish(claim, &response).await;
    response
}

/// Publishes once per `Idempotency-Key` of the namespace: a repeat within
/// the window gets the first successful answer again (`Err`) and delivers
/// nothing. `Ok` holds the key's claim, if the request has a key, to
/// [`finish`] with the answer.
async fn claim<'a>(
    ctx: &'a Rc<ShardCtx>,
    ns: &Namespace,
    request: &'a Request,
) -> Result<Option<ClaimGuard<'a>>, Response> {
    let Some(key) = request.known(Known::IdempotencyKey) else { return Ok(None) };
    let Some(key) = std::str::from_utf8(key).ok().filter(|k| valid_key(k.as_bytes())) else {
        return Err(refused(ctx, invalid("Idempotency-Key must be 1-256 visible ASCII characters")));
    };
    let key = ns.key(key);
    match ctx.claim_idempotency_key(&key).await {
        Claim::Done(body) => Err(Response::with_body(200, JSON, body).header("Idempotent-Replayed", "true")),
        Claim::InProgress => Err(refused(
            ctx,
            Response::error(409, "idempotency_in_progress", "a request with this Idempotency-Key is being published"),
        )),
        Claim::Claimed(ticket) => Ok(Some(ClaimGuard { ctx, key, ticket, done: false })),
    }
}

/// Records the publish's answer with its key's claim, before the answer
/// goes out: a success is what a repeat gets; anything else releases the key
/// for a retry.
async fn finish(claim: Option<ClaimGuard<'_>>, response: &Response) {
    if let Some(mut claim) = claim {
        claim.finish((response.status == 200).then(|| response.body.clone())).await;
    }
}

/// Releases a claimed key when its publish never finished (the connection
/// went away mid-request), so a retry is not refused forever.
struct ClaimGuard<'a> {
    ctx: &'a Rc<ShardCtx>,
    key: Cow<'a, str>,
    ticket: Ticket,
    done: bool,
}

impl ClaimGuard<'_> {
    /// The claimed key, in the namespace's keys.
    fn key(&self) -> &str {
        &self.key
    }

    /// Dropped while the owner's inbox is full, the claim is released instead.
    async fn finish(&mut self, answer: Option<Bytes>) {
        self.ctx.finish_idempotency_key(&self.key, self.ticket, answer).await;
        self.done = true;
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.ctx.release_idempotency_key(&self.key, self.ticket);
        }
    }
}

async fn publish_batch(
    ctx: &Rc<ShardCtx>,
    bus: Option<&Bus>,
    ns: &Namespace,
    request: &Request,
    idempotency_key: Option<&str>,
    body: &Bytes,
) -> Response {
    match validate_and_deliver(ctx, bus, ns, request, body, idempotency_key, prepare_batch(ctx, ns, request, body))
        .await
    {
        Ok(results) => {
            // ~75 bytes per result with a generated id: one allocation.
            let mut body = Vec::with_capacity(16 + results.len() * 96);
            body.extend_from_slice(b"{\"results\":[");
            let mut budget = yielding::Budget::default();
            // By reference: taken by value, each result (~64 bytes) was
            // copied out of the list before it was written.
            for (index, result) in results.iter().enumerate() {
                if index > 0 {
                    body.push(b',');
                }
                result.write_json(&mut body);
                if budget.spent() {
                    yielding::yield_now().await;
                }
            }
            body.extend_from_slice(b"]}");
            Response::with_body(200, JSON, body)
        }
        Err(response) => refused(ctx, response),
    }
}

async fn validate_and_deliver<'a>(
    ctx: &Rc<ShardCtx>,
    bus: Option<&Bus>,
    ns: &Namespace,
    request: &Request,
    body: &Bytes,
    idempotency_key: Option<&str>,
    prepare: impl Future<Output = Result<Listed<Prepared<'a>>, Response>>,
) -> Result<Listed<Outcome<'a>>, Response> {
    let scope = scope(request)?;
    let prepared = prepare.await?;
    let messages = prepared.len() as u64;
    if let Some(tenant) = ns.tenant_name() {
        take_tenant_rate(ctx, tenant, messages)?;
    }
    let results = deliver(ctx, bus, scope, idempotency_key, prepared, body).await?;
    if let Some(tenant) = ns.tenant_name() {
        ctx.count_tenant_published(tenant, messages);
    }
    Ok(results)
}

/// Takes `messages` tokens from the tenant's publish bucket of this
/// instance (its `publishRate`/`publishBurst`; a batch takes one per
/// message): `429 tenant_rate_limited` with `Retry-After` when it is out of
/// them, `413 batch_over_burst` for a batch that a full bucket could not
/// pass either (retrying it would never help: split it).
fn take_tenant_rate(ctx: &ShardCtx, tenant: &str, messages: u64) -> Result<(), Response> {
    let Some(quotas) = &ctx.shared.tenant_quotas else { return Ok(()) };
    let Some(rate) = ctx.tenant_config().limits(tenant).publish else { return Ok(()) };
    let refusal = match quotas.take_publish(tenant, rate, messages) {
        Ok(()) => return Ok(()),
        Err(RateRefusal::Wait(seconds)) => Response::error(
            429,
            "tenant_rate_limited",
            format!("tenant {tenant} is over its publishRate of {}/s on this instance", rate.per_second),
        )
        .header("Retry-After", seconds.to_string()),
        Err(RateRefusal::OverBurst(burst)) => Response::error(
            413,
            "batch_over_burst",
            format!("the batch has {messages} messages, over tenant {tenant}'s publishBurst of {burst}: split it"),
        ),
    };
    ctx.count_tenant_rejection(Some(tenant), Rejection::TenantRateLimited);
    Err(refusal)
}

/// Whether a `Content-Type` value starts with the media type `expected`
/// (lower case), in any case, without copying it.
fn media_type_is(value: &[u8], expected: &str) -> bool {
    let value = value.trim_ascii_start();
    value.len() >= expected.len() && value[..expected.len()].eq_ignore_ascii_case(expected.as_bytes())
}

/// Where a publish goes: `cluster` (default) through the bus when there is one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    /// Every instance (the default).
    Cluster,
    /// This instance only (`scope=local`).
    Local,
}

/// The `scope` query parameter; `400` for anything but `cluster` or `local`.
pub(super) fn scope(request: &Request) -> Result<Scope, Response> {
    // Most queries name no scope: one that is plain visible ASCII (nothing
    // to decode, so nothing a full read could refuse) without the word is
    // the default, without building the list of parameters.
    let query = &request.query[..];
    let plain = query.iter().all(|&b| b.is_ascii_graphic() && b != b'%');
    if plain && !query.windows(5).any(|w| w == b"scope") {
        return Ok(Scope::Cluster);
    }
    let params = query_params(request)?;
    match param(&params, "scope") {
        None | Some("cluster") => Ok(Scope::Cluster),
        Some("local") => Ok(Scope::Local),
        Some(other) => Err(invalid(format!("scope must be cluster or local, not `{other}`"))),
    }
}

/// With a bus (cluster scope), hands the messages to the bus log, which
/// delivers them here and on every other instance once Redis acknowledged
/// them; without one (or `scope=local`) delivers them here. Returns one
/// result each.
async fn deliver<'a>(
    ctx: &Rc<ShardCtx>,
    bus: Option<&Bus>,
    scope: Scope,
    idempotency_key: Option<&str>,
    prepared: Listed<Prepared<'a>>,
    body: &Bytes,
) -> Result<Listed<Outcome<'a>>, Response> {
    let started = std::time::Instant::now();
    let targets: Option<Vec<Target>> =
        ctx.shared.events.active().then(|| prepared.iter().map(|p| p.target.clone()).collect());
    let results = match (scope, bus) {
        (Scope::Cluster, Some(bus)) => {
            let mut ids = Listed::with_capacity(prepared.len());
            let messages = prepared
                .into_iter()
                .enumerate()
                .map(|(index, p)| {
                    let frame = p.frame();
                    let delivery = Delivery::message(p.target, frame, false);
                    let message = Outgoing {
                        dedupe: match (idempotency_key, &p.id) {
                            (Some(key), _) => Some(bus::idempotency_dedupe(key, index)),
                            (None, MessageId::Given(id)) => Some(bus::id_dedupe(&delivery, id)),
                            (None, MessageId::Generated(_)) => None,
                        },
                        id: p.id.as_str().to_owned(),
                        event: p.event.map(Cow::into_owned),
                        delivery,
                        data: match p.data {
                            Cow::Borrowed(text) => body.slice_ref(text.as_bytes()),
                            Cow::Owned(text) => Bytes::from(text),
                        },
                    };
                    ids.push(p.id);
                    message
                })
                .collect();
            let published = bus::publish(ctx, bus, messages).await.map_err(|_| {
                Response::error(
                    503,
                    "bus_unavailable",
                    "the message was not acknowledged by Redis (bus down or over --bus-timeout); retry it with the same id",
                )
                .header("Retry-After", "1")
            })?;
            ids.into_iter()
                .zip(published.delivered)
                .zip(published.duplicates)
                .map(|((id, delivered), duplicate)| match duplicate {
                    None => Outcome { id, delivered, instances: Some(published.receivers), duplicate: false },
                    Some(first) => Outcome {
                        id: MessageId::Given(Cow::Owned(first)),
                        delivered: 0,
                        instances: Some(published.receivers),
                        duplicate: true,
                    },
                })
                .collect()
        }
        _ => {
            // The outcomes are begun as the deliveries are taken, chunk by
            // chunk (a batch's half a million are not moved in one stretch),
            // and their counts filled in after.
            let mut results = Listed::with_capacity(prepared.len());
            let delivered = ctx.publish(Encoding { rest: prepared.into_iter(), results: &mut results }).await;
            for (result, delivered) in results.iter_mut().zip(delivered) {
                result.delivered = delivered;
            }
            results
        }
    };
    count_published(ctx, started, targets, &results);
    Ok(results)
}

/// Prepared messages handed to the shard as deliveries, each frame encoded
/// as its delivery is taken (see [`Prepared::frame`]) and its outcome begun
/// in `results`; the targets further on can be read ahead ([`Upcoming`]).
struct Encoding<'r, 'a> {
    rest: smallvec::IntoIter<[Prepared<'a>; 1]>,
    results: &'r mut Listed<Outcome<'a>>,
}

impl Iterator for Encoding<'_, '_> {
    type Item = Delivery;

    fn next(&mut self) -> Option<Delivery> {
        let p = self.rest.next()?;
        let frame = p.frame();
        self.results.push(Outcome { id: p.id, delivered: 0, instances: None, duplicate: false });
        Some(Delivery::message(p.target, frame, false))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.rest.size_hint()
    }
}

impl Upcoming for Encoding<'_, '_> {
    fn target_after(&self, n: usize) -> Option<&Target> {
        self.rest.as_slice().get(n).map(|p| &p.target)
    }
}

/// Delivers one message to this shard's connections alone, for
/// [`single_here`].
fn deliver_here<'a>(ctx: &ShardCtx, prepared: Prepared<'a>) -> Outcome<'a> {
    let started = std::time::Instant::now();
    let targets = ctx.shared.events.active().then(|| vec![prepared.target.clone()]);
    let frame = prepared.frame();
    let delivered = ctx.deliver(Delivery::message(prepared.target, frame, false));
    let result = Outcome { id: prepared.id, delivered, instances: None, duplicate: false };
    count_published(ctx, started, targets, std::slice::from_ref(&result));
    result
}

/// Counts a publish of `results` begun at `started`, and tells `/v1/events`
/// listeners of each, when there are any (`targets`).
fn count_published(ctx: &ShardCtx, started: std::time::Instant, targets: Option<Vec<Target>>, results: &[Outcome<'_>]) {
    ShardStats::add(&ctx.stats().published, results.len() as u64);
    ctx.stats().publish_latency.record(started.elapsed().as_micros() as u64);
    for (target, result) in targets.iter().flatten().zip(results) {
        ctx.emit(publish_event(ctx, target, result));
    }
}

/// A publish's messages at one stage (prepared, their ids, their
/// outcomes): a single publish's one held in place, not allocated.
type Listed<T> = SmallVec<[T; 1]>;

/// What a publish route answers for one message.
struct Outcome<'a> {
    /// The id it was published with (a duplicate's: the first publish's).
    id: MessageId<'a>,
    /// This instance's connections it was queued to.
    delivered: u64,
    /// The instances Redis handed it to (`None`: no bus, or `scope=local`).
    instances: Option<u64>,
    /// A retry the bus log recognised.
    duplicate: bool,
}

impl Outcome<'_> {
    /// Writes `{"id","delivered","instances"[,"duplicate":true]}` straight
    /// into an answer (no map or string per message), the usual one in one
    /// copy ([`usual_result`]).
    fn write_json(&self, out: &mut Vec<u8>) {
        if let (MessageId::Generated(id), 0..=9, None, false) =
            (&self.id, self.delivered, self.instances, self.duplicate)
        {
            out.extend_from_slice(&usual_result(id, self.delivered as u8));
        } else {
            self.write_json_by_parts(out);
        }
    }

    /// [`Outcome::write_json`] for any result.
    fn write_json_by_parts(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"id\":");
        match &self.id {
            // Digits, hex and dashes: nothing to escape.
            MessageId::Generated(id) => {
                out.push(b'"');
                out.extend_from_slice(id.as_str().as_bytes());
                out.push(b'"');
            }
            MessageId::Given(id) => serde_json::to_writer(&mut *out, id).expect("a string always serializes"),
        }
        out.extend_from_slice(b",\"delivered\":");
        push_decimal(out, self.delivered);
        out.extend_from_slice(b",\"instances\":");
        match self.instances {
            Some(n) => push_decimal(out, n),
            None => out.extend_from_slice(b"null"),
        }
        if self.duplicate {
            out.extend_from_slice(b",\"duplicate\":true");
        }
        out.push(b'}');
    }
}

/// What [`Outcome::write_json`] writes for the usual result (an id made
/// here, queued to fewer than ten connections, no bus), made in place at
/// fixed offsets and appended in one copy of a known length: appended part
/// by part, each part checking the answer's room, it was ~120 instructions
/// a batch message.
fn usual_result(id: &GeneratedId, delivered: u8) -> [u8; USUAL_RESULT_LEN] {
    const HEAD: &[u8] = b"{\"id\":\"";
    const MIDDLE: &[u8] = b"\",\"delivered\":";
    const TAIL: &[u8] = b",\"instances\":null}";
    const ID_AT: usize = HEAD.len();
    const MIDDLE_AT: usize = ID_AT + id::ID_LEN;
    const DIGIT_AT: usize = MIDDLE_AT + MIDDLE.len();
    let mut out = [0; USUAL_RESULT_LEN];
    out[..ID_AT].copy_from_slice(HEAD);
    out[ID_AT..MIDDLE_AT].copy_from_slice(id.as_str().as_bytes());
    out[MIDDLE_AT..DIGIT_AT].copy_from_slice(MIDDLE);
    out[DIGIT_AT] = b'0' + delivered;
    out[DIGIT_AT + 1..].copy_from_slice(TAIL);
    out
}

/// `{"id":"` + the id + `","delivered":` + one digit + `,"instances":null}`.
const USUAL_RESULT_LEN: usize = 7 + id::ID_LEN + 14 + 1 + 18;

/// `n` in decimal digits (see [`decimal`]).
fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(decimal(n, &mut [0; 20]));
}

/// The `publish` lifecycle event of one message and its result.
fn publish_event(ctx: &ShardCtx, target: &Target, result: &Outcome<'_>) -> Event {
    let (to, tenant) = match target {
        Target::User(key) => (json!({ "user": plain_name(key) }), tenant_of_key(key)),
        Target::Room(key) => (json!({ "room": plain_name(key) }), tenant_of_key(key)),
        Target::All => (json!({ "all": true }), None),
        Target::Tenant(tenant) => (json!({ "all": true }), Some(&**tenant)),
        Target::Connection(id) => (json!({ "connection": id.to_string() }), None),
    };
    let mut fields = Map::new();
    fields.insert("id".into(), result.id.as_str().into());
    fields.insert("target".into(), to);
    fields.insert("delivered".into(), result.delivered.into());
    fields.insert("tenant".into(), tenant.into());
    if result.duplicate {
        fields.insert("duplicate".into(), true.into());
    }
    Event::new(EventKind::Publish, tenant, ctx.shared.instance, fields)
}

fn refused(ctx: &ShardCtx, response: Response) -> Response {
    ShardStats::add(&ctx.stats().errors, 1);
    response
}

fn prepare_single<'a>(
    ctx: &ShardCtx,
    ns: &Namespace,
    request: &Request,
    body: &'a Bytes,
    to: To,
) -> Result<Prepared<'a>, Response> {
    let params = query_params(request)?;
    let target = match to {
        To::User(user) => {
            check_name("user id", &user)?;
            Target::User(user.into())
        }
        To::Room(room) => {
            check_name("room", &room)?;
            Target::Room(room.into())
        }
        To::All => Target::All,
    };
    let is_json = request.known(Known::ContentType).is_some_and(|t| media_type_is(t, "application/json"));
    let text = match is_json {
        true => json_text(body).map_err(invalid)?,
        false => crate::text::utf8(body).ok_or_else(|| invalid("the body is not valid UTF-8"))?,
    };
    let owned = |name| param(&params, name).map(|value| Cow::Owned(value.to_owned()));
    prepare(ctx, target.scoped(ns), owned("event"), owned("id"), (Cow::Borrowed(text), false), id::now_micros())
}

/// A single publish's body as the one JSON text it must be: checked by
/// [`batch_scan`] when it takes it (~6 times fewer instructions than
/// serde_json on a 100-byte body), else by serde_json, which words the
/// refusal (and takes no text that is not UTF-8). Public only for the fuzz
/// target that checks it against [`check_json_by_serde`].
pub fn json_text(body: &[u8]) -> Result<&str, String> {
    match crate::text::utf8(body) {
        Some(text) if batch_scan::json(text) => Ok(text),
        text => check_json_by_serde(body).and_then(|()| text.ok_or_else(|| "the body is not valid UTF-8".to_owned())),
    }
}

/// [`json_text`]'s check by serde_json alone. Public only for the fuzz target.
pub fn check_json_by_serde(body: &[u8]) -> Result<(), String> {
    serde_json::from_slice::<&RawValue>(body).map(drop).map_err(|e| format!("the body is not valid JSON: {e}"))
}

/// Checks fields and size, assigns the id (as of `now`, see
/// [`id::now_micros`]), encodes the frame once; `target` is already in the
/// namespace's keys, `data` comes with whether it is known to be one line.
fn prepare<'a>(
    ctx: &ShardCtx,
    target: Target,
    event: Option<Cow<'a, str>>,
    id: Option<Cow<'a, str>>,
    (data, data_is_one_line): (Cow<'a, str>, bool),
    now: u64,
) -> Result<Prepared<'a>, Response> {
    if let Some(event) = &event {
        check_field("event", event)?;
    }
    let id = match id {
        Some(id) => {
            check_field("id", &id)?;
            MessageId::Given(id)
        }
        None => MessageId::Generated(ctx.ids.next_at(now)),
    };
    // Sized, not encoded: the frame is made where it is delivered (see
    // Prepared::frame).
    let limit = ctx.shared.config.max_payload;
    if let Some(size) = frame::encoded_len_over(id.as_str(), event.as_deref(), data.as_bytes(), limit) {
        let message = format!("the encoded event is {size} bytes, over --max-payload {limit}");
        let tenant = match &target {
            Target::User(key) | Target::Room(key) => tenant_of_key(key),
            Target::Tenant(tenant) => Some(&**tenant),
            Target::All | Target::Connection(_) => None,
        };
        ctx.emit_error("payload_too_large", &message, tenant);
        return Err(Response::error(413, "payload_too_large", message));
    }
    Ok(Prepared { id, event, data, data_is_one_line, target })
}

/// A batch's messages take their ids from one reading of the clock in this
/// many (a few tens of microseconds of work; ids stay unique and ordered).
const IDS_PER_CLOCK: usize = 64;

/// Every message of a batch read, validated and encoded, giving the shard's
/// other work a turn now and then (a 16 MiB batch is ~500,000 messages).
async fn prepare_batch<'a>(
    ctx: &ShardCtx,
    ns: &Namespace,
    request: &Request,
    body: &'a Bytes,
) -> Result<Listed<Prepared<'a>>, Response> {
    let ndjson = request.known(Known::ContentType).is_some_and(|t| media_type_is(t, "application/x-ndjson"));
    let mut messages = batch_messages(body, ndjson)?;
    let mut prepared = Listed::with_capacity(messages.len_hint());
    let mut budget = yielding::Budget::default();
    let (mut index, mut now) = (0, 0);
    // Each message's members go straight into its prepared form (taken as
    // `Fields` first, the fields and the `Result`s around them were moved
    // from stage to stage), and the budget is looked at after a message,
    // which then does not live across the yield (see ShardCtx::publish's loop).
    while let Some(read) = messages.next_members() {
        if index % IDS_PER_CLOCK == 0 {
            now = id::now_micros();
        }
        let members = read.map_err(|why| message_refusal(index, &why))?;
        let target = target_of(&members).map_err(|why| message_refusal(index, why))?;
        let data = data_with_lines(&members).map_err(|why| message_refusal(index, why))?;
        let message = prepare(ctx, target.scoped(ns), members.event, members.id, data, now);
        prepared.push(message.map_err(|refusal| at_index(index, refusal))?);
        index += 1;
        if budget.spent() {
            yielding::yield_now().await;
        }
    }
    Ok(prepared)
}

/// The messages of a batch body: one per non-blank line of NDJSON, read as
/// the iteration reaches it (so a long body's reading gives way with its
/// preparing), else the `messages` array of a JSON object, read whole at
/// once (its targets checked as the iteration reaches them: the first
/// message refused in order is the one named, as in NDJSON); never empty.
/// Each message is read in one pass: its members borrowed from the body
/// unless they hold an escape, its `data` validated as JSON on the way; by
/// [`batch_scan`] when it has the usual shape, else by serde_json. Public,
/// with [`Fields`], only so that the fuzz targets (`fuzz/`) can reach the
/// reading without a shard.
pub fn batch_messages(body: &[u8], ndjson: bool) -> Result<BatchMessages<'_>, Response> {
    let text = crate::text::utf8(body).ok_or_else(|| invalid("the body is not valid UTF-8"))?;
    if ndjson {
        if text.trim().is_empty() {
            return Err(invalid("`messages` is empty"));
        }
        return Ok(BatchMessages::Lines(text));
    }
    if body.len() > READ_WHOLE_UP_TO {
        let list = read_list(text, &Cell::new(None), RawList)?;
        return Ok(BatchMessages::Raw(list.into_iter()));
    }
    match batch_scan::list(text) {
        Some(list) => Ok(BatchMessages::Read(list.into_iter())),
        None => read_batch_by_serde(text),
    }
}

/// A JSON batch body read whole by serde_json alone, as [`batch_messages`]
/// reads one the scan leaves to it. Public only for the fuzz target that
/// checks the two readings agree.
pub fn read_batch_by_serde(text: &str) -> Result<BatchMessages<'_>, Response> {
    let why = Cell::new(None);
    read_list(text, &why, ListVisitor { why: &why }).map(|list| BatchMessages::Read(list.into_iter()))
}

/// JSON batch bodies up to this size are read whole, each message in the
/// same pass; a larger one is first split into its messages (a skim, ~50 ms
/// for 16 MiB here), which are then read as the preparing loop reaches them:
/// read whole, a 16 MiB body held its shard for 85 ms
/// (`loadtest/scenarios/stall.py --json`).
const READ_WHOLE_UP_TO: usize = 1 << 20;

/// The `messages` array of a JSON batch body as `list` reads it; the
/// refusal says what is wrong and, for a message, where.
fn read_list<'a, T, L>(text: &'a str, why: &Cell<Option<String>>, list: L) -> Result<Vec<T>, Response>
where
    L: DeserializeSeed<'a, Value = Vec<T>> + Copy,
{
    let mut reader = serde_json::Deserializer::from_str(text);
    let listed = serde::Deserializer::deserialize_map(&mut reader, BodyVisitor { why, list })
        .and_then(|listed| reader.end().map(|()| listed));
    match listed {
        Ok(Some(list)) if list.is_empty() => Err(invalid("`messages` is empty")),
        Ok(Some(list)) => Ok(list),
        Ok(None) => Err(invalid("the body needs a `messages` array")),
        Err(e) => Err(invalid(match why.take() {
            Some(why) if !(e.is_syntax() || e.is_eof()) => why,
            _ => format!("the body is not a JSON object: {e}"),
        })),
    }
}

/// The messages of a batch, each its fields or why it is refused (see
/// [`batch_messages`]).
pub enum BatchMessages<'a> {
    /// NDJSON text not yet read.
    Lines(&'a str),
    /// A JSON batch's messages, read, each target checked as it is taken:
    /// checked and listed again first, they were moved twice a message
    /// (~75 instructions), and a refused target was named before a refused
    /// field of a message ahead of it.
    Read(std::vec::IntoIter<Members<'a>>),
    /// A large JSON batch's messages, not yet read.
    Raw(std::vec::IntoIter<&'a RawValue>),
}

impl BatchMessages<'_> {
    /// How many messages there are at most (lines, blank ones included),
    /// so the prepared messages are not moved as they grow.
    fn len_hint(&self) -> usize {
        match self {
            BatchMessages::Lines(text) => memchr::memchr_iter(b'\n', text.as_bytes()).count() + 1,
            BatchMessages::Read(list) => list.len(),
            BatchMessages::Raw(list) => list.len(),
        }
    }
}

impl<'a> Iterator for BatchMessages<'a> {
    type Item = Result<Fields<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_members().map(|read| read.and_then(fields))
    }
}

impl<'a> BatchMessages<'a> {
    /// The next message's members as read, its target and data not yet
    /// checked ([`fields`]), or why it cannot be read.
    fn next_members(&mut self) -> Option<Result<Members<'a>, String>> {
        match self {
            BatchMessages::Read(list) => list.next().map(Ok),
            BatchMessages::Raw(list) => list.next().map(|raw| read_message(raw.get())),
            BatchMessages::Lines(rest) => loop {
                if rest.is_empty() {
                    return None;
                }
                // The usual line, read where it stands: no search for its end first.
                if let Some((members, next)) = batch_scan::line(rest) {
                    *rest = &rest[next..];
                    return Some(Ok(members));
                }
                let (line, after) = match memchr::memchr(b'\n', rest.as_bytes()) {
                    Some(at) => (&rest[..at], &rest[at + 1..]),
                    None => (*rest, ""),
                };
                *rest = after;
                if !line.trim_start().is_empty() {
                    return Some(read_message(line));
                }
            },
        }
    }
}

/// A batch's refusal for its message `index`, refused for `why` (public for
/// the fuzz targets, which read batches as [`prepare_batch`] does).
pub fn message_refusal(index: usize, why: &str) -> Response {
    invalid(format!("messages[{index}]: {why}"))
}

/// The same refusal, its message prefixed with `messages[index]: `.
fn at_index(index: usize, refusal: Response) -> Response {
    let body: Value = serde_json::from_slice(&refusal.body).unwrap_or_default();
    let code = body["error"].as_str().unwrap_or("invalid_request");
    let message = body["message"].as_str().unwrap_or("invalid");
    Response::error(refusal.status, code, format!("messages[{index}]: {message}"))
}

/// The fields of one batch message (public for the fuzz targets, see
/// [`batch_messages`]); strings borrowed from the body unless they hold an escape.
#[derive(Debug, PartialEq)]
pub struct Fields<'a> {
    /// `user`, `room` or `"all": true`, a plain (unscoped) target.
    pub target: Target,
    /// `event`, not yet checked as a frame field.
    pub event: Option<Cow<'a, str>>,
    /// `id`, not yet checked as a frame field.
    pub id: Option<Cow<'a, str>>,
    /// `data`: a JSON string's value, else the raw JSON text of the value.
    pub data: Cow<'a, str>,
}

/// Reads one message (a line of an NDJSON batch) into its fields in one
/// pass, or says why it is refused. Public only for the fuzz targets.
pub fn parse_message(text: &str) -> Result<Fields<'_>, String> {
    read_message(text).and_then(fields)
}

/// A message's members, read by [`batch_scan`] when it has the usual
/// shape, else by serde_json.
fn read_message(text: &str) -> Result<Members<'_>, String> {
    match batch_scan::message(text) {
        Some(members) => Ok(members),
        None => read_message_by_serde(text),
    }
}

/// [`parse_message`] by serde_json alone, for every message the scan
/// leaves to it. Public only for the fuzz target that checks the two
/// readings agree.
pub fn parse_message_by_serde(text: &str) -> Result<Fields<'_>, String> {
    read_message_by_serde(text).and_then(fields)
}

/// [`read_message`] by serde_json alone.
fn read_message_by_serde(text: &str) -> Result<Members<'_>, String> {
    let refusal = Cell::new(None);
    let mut reader = serde_json::Deserializer::from_str(text);
    let read = serde::Deserializer::deserialize_map(&mut reader, MessageVisitor { refusal: &refusal })
        .and_then(|message| reader.end().map(|()| message));
    match read {
        Ok(members) => Ok(members),
        Err(e) if e.is_syntax() || e.is_eof() => Err(format!("not valid JSON: {e}")),
        Err(_) => Err(refusal.take().unwrap_or("must be a JSON object").to_owned()),
    }
}

/// Reads a JSON batch body: its `messages` array as `list` reads it
/// ([`ListVisitor`], [`RawList`]); other members are skipped, a repeated
/// `messages` keeps the last. A refusal's words go to `why`.
struct BodyVisitor<'r, L> {
    why: &'r Cell<Option<String>>,
    list: L,
}

impl<'de, T, L: DeserializeSeed<'de, Value = Vec<T>> + Copy> Visitor<'de> for BodyVisitor<'_, L> {
    type Value = Option<Vec<T>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut list = None;
        while let Some(Text(key)) = map.next_key::<Text>()? {
            if key == "messages" {
                self.why.set(Some("`messages` must be an array".to_owned()));
                list = Some(map.next_value_seed(self.list)?);
                self.why.set(None);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(list)
    }
}

/// Reads the `messages` array of a JSON batch into each message's members
/// (their targets checked as they are taken, [`BatchMessages::Read`]); a
/// message refused as it is read has its words, with its index, put in `why`.
#[derive(Clone, Copy)]
struct ListVisitor<'r> {
    why: &'r Cell<Option<String>>,
}

/// Splits the `messages` array of a JSON batch into its messages, unread.
#[derive(Clone, Copy)]
struct RawList;

impl<'de> DeserializeSeed<'de> for RawList {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        Vec::deserialize(deserializer)
    }
}

impl<'de> DeserializeSeed<'de> for ListVisitor<'_> {
    type Value = Vec<Members<'de>>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ListVisitor<'_> {
    type Value = Vec<Members<'de>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut list = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        loop {
            let refusal = Cell::new(None);
            match seq.next_element_seed(MessageVisitor { refusal: &refusal }) {
                Ok(None) => return Ok(list),
                Ok(Some(members)) => list.push(members),
                Err(e) => {
                    let why = refusal.take().unwrap_or("must be a JSON object");
                    self.why.set(Some(format!("messages[{}]: {why}", list.len())));
                    return Err(e);
                }
            }
        }
    }
}

/// A message's target checked and its `data` taken out, or why it is refused.
fn fields(members: Members<'_>) -> Result<Fields<'_>, String> {
    let target = target_of(&members)?;
    let data = data_of(members.data)?;
    Ok(Fields { target, event: members.event, id: members.id, data })
}

/// A message's one target, its name checked, or why it is refused.
fn target_of(members: &Members<'_>) -> Result<Target, &'static str> {
    match (&members.user, &members.room, members.all.unwrap_or(false)) {
        (Some(user), None, false) => {
            check_name("user", user)
                .map_err(|_| "`user` must be 1-128 bytes without control characters, ',' or '/'")?;
            Ok(Target::User((&**user).into()))
        }
        (None, Some(room), false) => {
            check_name("room", room)
                .map_err(|_| "`room` must be 1-128 bytes without control characters, ',' or '/'")?;
            Ok(Target::Room((&**room).into()))
        }
        (None, None, true) => Ok(Target::All),
        _ => Err("needs exactly one target: `user`, `room` or `\"all\": true`"),
    }
}

/// A message's `data` ([`data_of`]) and whether it is known to hold no CR
/// or LF: the scan's word is of its JSON text, which a string's decoding
/// (of a `\n` escape) can break.
fn data_with_lines<'a>(members: &Members<'a>) -> Result<(Cow<'a, str>, bool), &'static str> {
    let data = data_of(members.data)?;
    let one_line = members.data_is_one_line && matches!(data, Cow::Borrowed(_));
    Ok((data, one_line))
}

/// [`data_with_lines`] of one message the batch scan reads; `None` when it
/// leaves the message to serde_json. Public only for the fuzz target that
/// checks that data known to be one line holds no line break.
pub fn scanned_data_with_lines(text: &str) -> Option<Result<(Cow<'_, str>, bool), &'static str>> {
    batch_scan::message(text).map(|members| data_with_lines(&members))
}

/// A message's `data`: a JSON string's text, else the value's JSON text.
fn data_of(data: Option<&str>) -> Result<Cow<'_, str>, &'static str> {
    let data = data.ok_or("needs `data`")?;
    Ok(match data.strip_prefix('"').and_then(|text| text.strip_suffix('"')) {
        // A valid JSON string without a backslash is its own text between the quotes.
        Some(text) if memchr::memchr(b'\\', text.as_bytes()).is_none() => Cow::Borrowed(text),
        Some(_) => serde_json::from_str::<Text>(data).map_err(|_| "`data` is not a valid string")?.0,
        None => Cow::Borrowed(data),
    })
}

/// Reads a message's [`Members`]; a member of the wrong type puts its
/// refusal in `refusal`.
struct MessageVisitor<'r> {
    refusal: &'r Cell<Option<&'static str>>,
}

impl<'de> DeserializeSeed<'de> for MessageVisitor<'_> {
    type Value = Members<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MessageVisitor<'_> {
    type Value = Members<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
        let refuse = |why: &'static str| {
            self.refusal.set(Some(why));
            A::Error::custom(why)
        };
        let mut message = Members::default();
        while let Some(Text(key)) = map.next_key::<Text>()? {
            match &*key {
                "user" => {
                    message.user = Some(map.next_value::<Text>().map_err(|_| refuse("`user` must be a string"))?.0)
                }
                "room" => {
                    message.room = Some(map.next_value::<Text>().map_err(|_| refuse("`room` must be a string"))?.0)
                }
                "event" => {
                    message.event = Some(map.next_value::<Text>().map_err(|_| refuse("`event` must be a string"))?.0)
                }
                "id" => message.id = Some(map.next_value::<Text>().map_err(|_| refuse("`id` must be a string"))?.0),
                "all" => message.all = Some(map.next_value().map_err(|_| refuse("`all` must be true or false"))?),
                "data" => message.data = Some(map.next_value::<&RawValue>()?.get()),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(message)
    }
}

/// A JSON string, borrowed from the body when it holds no escape.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(TextVisitor)
    }
}

/// Reads a [`Text`].
struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Text<'de>, E> {
        Ok(Text(Cow::Borrowed(text)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Text<'de>, E> {
        Ok(Text(Cow::Owned(text.to_owned())))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Text<'de>, E> {
        Ok(Text(Cow::Owned(text)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usual_result_is_written_as_any_other() {
        let generator = id::IdGenerator::new(7, 3);
        for delivered in 0..=10 {
            let outcome = Outcome {
                id: MessageId::Generated(generator.next_at(id::now_micros())),
                delivered,
                instances: None,
                duplicate: false,
            };
            let (mut fast, mut by_parts) = (Vec::new(), Vec::new());
            outcome.write_json(&mut fast);
            outcome.write_json_by_parts(&mut by_parts);
            assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(by_parts).unwrap());
        }
    }

    #[test]
    fn media_types_match_in_any_case_with_parameters() {
        assert!(media_type_is(b"application/json", "application/json"));
        assert!(media_type_is(b"  Application/JSON; charset=utf-8", "application/json"));
        assert!(media_type_is(b"application/x-ndjson", "application/x-ndjson"));
        assert!(!media_type_is(b"application/js", "application/json"));
        assert!(!media_type_is(b"text/plain", "application/json"));
    }

    fn parsed(message: &str) -> Result<Fields<'_>, String> {
        parse_message(message)
    }

    #[test]
    fn a_message_is_read_borrowed_unless_a_string_holds_an_escape() {
        let fields = parsed(r#"{"user":"alice","event":"chat","id":"7","data":"hi","extra":[1,{"a":2}]}"#).unwrap();
        assert!(matches!(&fields.target, Target::User(user) if &**user == "alice"));
        assert!(matches!(fields.data, Cow::Borrowed("hi")));
        assert!(matches!(fields.event, Some(Cow::Borrowed("chat"))));
        assert!(matches!(fields.id, Some(Cow::Borrowed("7"))));
        let fields = parsed(r#"{"us\u0065r":"bob","data":"line\none"}"#).unwrap();
        assert!(matches!(&fields.target, Target::User(user) if &**user == "bob"));
        assert_eq!(fields.data, "line\none");
        let fields = parsed(r#"{"all":true,"data":{"n":[1,2]}}"#).unwrap();
        assert!(matches!(fields.target, Target::All));
        assert!(matches!(fields.data, Cow::Borrowed(r#"{"n":[1,2]}"#)), "non-string data is its JSON text");
        let fields = parsed(r#"{"room":"a","room":"b","data":"x"}"#).unwrap();
        assert!(matches!(&fields.target, Target::Room(room) if &**room == "b"), "the last of a repeated member");
    }

    /// The refusal's words for a JSON batch body: the body's, or its first
    /// refused message's as [`prepare_batch`] words it.
    fn json_batch_refusal(body: &str) -> Option<String> {
        let refusal = match batch_messages(body.as_bytes(), false) {
            Ok(messages) => {
                messages.enumerate().find_map(|(index, m)| m.err().map(|why| message_refusal(index, &why)))?
            }
            Err(refusal) => refusal,
        };
        Some(serde_json::from_slice::<Value>(&refusal.body).unwrap()["message"].to_string())
    }

    /// The refusal's words for a batch body, or the messages' own.
    fn batch_refusal(body: &str, ndjson: bool) -> Result<Vec<Result<String, String>>, String> {
        match batch_messages(body.as_bytes(), ndjson) {
            Ok(messages) => Ok(messages.map(|m| m.map(|fields| fields.data.into_owned())).collect()),
            Err(refusal) => Err(serde_json::from_slice::<Value>(&refusal.body).unwrap()["message"].to_string()),
        }
    }

    #[test]
    fn a_json_batch_is_refused_with_what_is_wrong_and_where() {
        let refused = |body: &str| json_batch_refusal(body).expect(body);
        assert!(refused("{nope").contains("the body is not a JSON object"));
        assert!(refused("[]").contains("the body is not a JSON object"));
        assert!(refused(r#"{"messages":[{"user":"a","data":1}]} x"#).contains("the body is not a JSON object"));
        assert!(refused(r#"{"messages":[{"user":"a","data":1},{"user":"b","data":}]}"#).contains("not a JSON object"));
        assert!(refused(r#"{"messages":"x"}"#).contains("`messages` must be an array"));
        assert!(refused("{}").contains("the body needs a `messages` array"));
        assert!(refused(r#"{"messages":[]}"#).contains("`messages` is empty"));
        assert!(refused(r#"{"messages":[{"all":true,"data":1},2]}"#).contains("messages[1]: must be a JSON object"));
        assert!(refused(r#"{"messages":[{"user":1,"data":1}]}"#).contains("messages[0]: `user` must be a string"));
        assert!(refused(r#"{"messages":[{"data":1}]}"#).contains("messages[0]: needs exactly one target"));
        let read =
            batch_refusal(r#"{"other":[1],"messages":[{"all":true,"data":{"a":1}},{"room":"r","data":"x"}]}"#, false);
        assert_eq!(read, Ok(vec![Ok(r#"{"a":1}"#.to_owned()), Ok("x".to_owned())]));
    }

    #[test]
    fn a_large_json_batch_is_split_first_and_its_messages_read_as_they_come() {
        let message = |i: usize| format!(r#"{{"user":"u{i}","data":{{"n":{i}}}}}"#);
        let count = READ_WHOLE_UP_TO / message(0).len() + 1000;
        let mut messages: Vec<String> = (0..count).map(message).collect();
        let body = format!(r#"{{"messages":[{}]}}"#, messages.join(","));
        assert!(body.len() > READ_WHOLE_UP_TO);
        let read = batch_messages(body.as_bytes(), false).unwrap();
        assert!(matches!(read, BatchMessages::Raw(_)), "split, not read whole");
        let data: Vec<String> = read.map(|m| m.unwrap().data.into_owned()).collect();
        assert_eq!(data.len(), count);
        assert_eq!(data[count - 1], format!(r#"{{"n":{}}}"#, count - 1));

        messages[count - 2] = r#"{"user":"a","room":"b","data":1}"#.to_owned();
        let body = format!(r#"{{"messages":[{}]}}"#, messages.join(","));
        let refusal = batch_messages(body.as_bytes(), false).unwrap().nth(count - 2).unwrap().err().unwrap();
        assert!(refusal.starts_with("needs exactly one target"), "{refusal}");
        let body = format!(r#"{{"messages":[{}],"messages":7}}"#, messages.join(","));
        assert!(batch_refusal(&body, false).unwrap_err().contains("`messages` must be an array"));
    }

    #[test]
    fn an_ndjson_batch_is_read_line_by_line() {
        assert!(batch_refusal(" \n\t\n", true).unwrap_err().contains("`messages` is empty"));
        let read = batch_refusal("{\"all\":true,\"data\":1}\r\n\n-\n{\"user\":2,\"data\":1}\n", true).unwrap();
        assert_eq!(read[0], Ok("1".to_owned()), "a CRLF line");
        assert!(read[1].as_ref().unwrap_err().starts_with("not valid JSON"), "{:?}", read[1]);
        assert_eq!(read[2], Err("`user` must be a string".to_owned()));
        assert_eq!(read.len(), 3, "blank lines are no messages");
    }

    #[test]
    fn a_message_member_of_the_wrong_kind_is_named() {
        assert_eq!(parsed(r#"{"user":1,"data":"x"}"#).err().unwrap(), "`user` must be a string");
        assert_eq!(parsed(r#"{"room":null,"data":"x"}"#).err().unwrap(), "`room` must be a string");
        assert_eq!(parsed(r#"{"all":"yes","data":"x"}"#).err().unwrap(), "`all` must be true or false");
        assert_eq!(parsed(r#"{"user":"a","event":2,"data":"x"}"#).err().unwrap(), "`event` must be a string");
        assert_eq!(parsed(r#"{"user":"a","id":[],"data":"x"}"#).err().unwrap(), "`id` must be a string");
        assert_eq!(parsed(r#"[1]"#).err().unwrap(), "must be a JSON object");
        assert_eq!(parsed(r#"{"user":"a"}"#).err().unwrap(), "needs `data`");
        assert!(parsed(r#"{"user":"a","room":"b","data":"x"}"#).err().unwrap().starts_with("needs exactly one target"));
        assert!(parsed(r#"{"user":"a/b","data":"x"}"#).err().unwrap().starts_with("`user` must be 1-128 bytes"));
    }
}
