//! One accepted socket: read requests (keep-alive, pipelining), answer them,
//! or hand the socket over as an SSE stream.
//!
//! The order is the security model's: a head is read (small buffer, bounded
//! time), its route, method, listener and api key are decided from the head
//! alone ([`api::admit`]), and only an admitted publish has its body read,
//! within the shard's `--body-budget`. A body nobody may read is never
//! buffered: the answer goes out and the connection closes.

use std::cell::RefCell;
use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::Sleep;

use super::access;
use crate::api::{self, Role, Routed, Services};
use crate::http::body::BodyDecoder;
use crate::http::request::{self, BodyFraming, HeadLimits, Known, Method, Request};
use crate::http::response::Response;
use crate::http::Error;
use crate::metrics::{Rejection, ShardStats};
use crate::shard::{Phase, ShardCtx};

/// Bytes asked of a connection's first read: a whole typical head (a
/// browser's subscribe is 400–900 B) in one read. Reads grow the buffer only
/// when it is full (a head over 4 KiB) or a body needs it, so a slow-loris
/// socket holds these 4 KiB and no more (it was 16). Smaller first buffers
/// cost idle subscribers more than they save: 1 KiB and 512 B ones, freed
/// at the handover between each stream's long-lived allocations, left the
/// heap fragmented at 2.6 and 2.1 KiB per idle subscriber, against 1.7 with
/// 4 KiB (`loadtest/scenarios/idle.sh`, 10,000 subscribers).
const FIRST_READ: usize = 4 * 1024;

/// Spare room under which a read first grows the buffer.
const MIN_SPARE: usize = 512;

/// Most bytes asked of one read of a head or of a chunked body.
const READ_CHUNK: usize = 8 * 1024;

/// Most bytes any one read asks for, though room for a whole body is made
/// at once: a read of megabytes into fresh memory (its page faults taken in
/// the kernel's copy) held the shard from its other connections for up to
/// 31 ms at the start of a 16 MiB batch (`loadtest/scenarios/stall.py`).
const MAX_READ: usize = 256 * 1024;

/// A kept-alive connection whose last request took at most this many bytes
/// keeps its read buffer (that size and a head's room, [`FIRST_READ`]) for
/// the next, and its wait asks for as much as the last request took: a
/// publisher's batch of a hundred messages (~13 KiB) arrives in one read, as
/// its floor reads it, where a 4 KiB wait and 8 KiB reads took three, each a
/// submission and a turn of the runtime. A larger request's buffer goes
/// with its body (a 16 MiB batch is not kept by an idle connection).
const KEPT_BUFFER: usize = 16 * 1024;

/// At most this many bytes of a body nobody will read are read and thrown
/// away after the answer, so a client still sending gets the answer rather
/// than a reset (RFC 9112 §9.6's "lingering close")…
const LINGER_BYTES: usize = 256 * 1024;

/// …and for at most this long.
const LINGER_TIME: Duration = Duration::from_millis(500);

/// The interim answer to `Expect: 100-continue` (RFC 9110 §10.1.1).
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Serves requests on `stream` until the client closes, a request asks to
/// close, an error ends it, or the socket becomes a stream. `pending` holds
/// the socket's place under `--max-connections` until it becomes a stream
/// (streams are counted as subscribers from then on).
pub async fn serve(
    ctx: Rc<ShardCtx>,
    services: Rc<Services>,
    mut stream: TcpStream,
    role: Role,
    pending: PendingSocket,
) {
    let config = &ctx.shared.config;
    let limits = HeadLimits { max_head: config.max_head, max_headers: config.max_headers };
    let mut buf = BytesMut::new();
    let mut first = true;
    let mut expected = FIRST_READ;
    let mut timer = ReadTimer::default();
    loop {
        let request = match read_head(&mut stream, &mut buf, limits, &ctx, (first, expected), &mut timer).await {
            Ok(Some(request)) => request,
            Ok(None) => break,
            Err(error) => {
                refuse(&ctx, &mut stream, error).await;
                break;
            }
        };
        first = false;
        let in_flight = InFlight::start(&ctx);
        let logged = access::start(&ctx, role);
        let unread_body = !matches!(request.body, BodyFraming::Empty | BodyFraming::Length(0));
        let admitted = match api::admit(&ctx, role, &request) {
            Ok(admitted) => admitted,
            Err(response) => {
                if answer(&ctx, &mut stream, &request, response, unread_body, logged).await {
                    continue;
                }
                break;
            }
        };
        let limit = admitted.body_limit(config);
        let (body, _charge) = match limit {
            Some(limit) if unread_body => {
                match read_body(&mut stream, &mut buf, &request, limit, &ctx, &mut timer).await {
                    Ok(read) => read,
                    Err(error) => {
                        refuse(&ctx, &mut stream, error).await;
                        break;
                    }
                }
            }
            _ => (Bytes::new(), BodyCharge::none(&ctx)),
        };
        let size = request.head_len() + body.len();
        expected = size.clamp(FIRST_READ, KEPT_BUFFER);
        // A buffer that held a larger request goes with its body, rather
        // than be kept at that size while the connection waits. Decided
        // here, not after the route (which leaves the buffer as it is): what
        // a connection's task holds across that await, a subscriber holds
        // for as long as its stream lives.
        if buf.is_empty() && (size > KEPT_BUFFER || buf.capacity() > KEPT_BUFFER) {
            buf = BytesMut::new();
        }
        match api::route(&ctx, &services, &request, admitted, body).await {
            Routed::Subscribe(subscription) => {
                drop((buf, timer, in_flight, pending));
                // Boxed for the same reason as the routes in `api::route`.
                Box::pin(ctx.subscribe(stream, subscription)).await;
                return;
            }
            Routed::Response(response) => {
                let body_left = unread_body && limit.is_none();
                if !answer(&ctx, &mut stream, &request, response, body_left, logged).await {
                    break;
                }
            }
        }
    }
    let _ = stream.shutdown().await;
}

/// Writes `response`; returns whether the connection may carry another
/// request. It may not when the request or answer says so, during a
/// shutdown (`Connection: close` tells the client not to reuse it), or
/// when a body was left unread on the socket. `logged` is when the request
/// began, if `--access-log` records it.
async fn answer(
    ctx: &ShardCtx,
    stream: &mut TcpStream,
    request: &Request,
    response: Response,
    unread_body: bool,
    logged: Option<Instant>,
) -> bool {
    let shutting_down = ctx.shared.phase() == Phase::Closing;
    let keep_alive = request.keep_alive && !response.close && !unread_body && !shutting_down;
    let bytes = response.encode(request.method == Method::Head, keep_alive);
    let size = bytes.len();
    let (result, _) = stream.write_all(bytes).await;
    if let Some(started) = logged {
        access::record(ctx, stream, started, request, response.status, size);
    }
    if result.is_ok() && unread_body {
        // Boxed: its timer would make every answer's future, moved as it is
        // awaited, ~1 KiB larger for a path few requests take.
        Box::pin(linger(stream)).await;
    }
    result.is_ok() && keep_alive
}

/// Answers a public socket over `--max-connections` with 503 and closes it,
/// without reading its request (a few hundred bytes, then the descriptor is
/// free again).
pub async fn at_capacity(ctx: Rc<ShardCtx>, mut stream: TcpStream) {
    ctx.stats().rejected.count(Rejection::AtCapacity);
    let limit = ctx.shared.config.max_connections.map_or(0, |n| n.get());
    let response = Response::error(
        503,
        "at_capacity",
        format!("the server holds its maximum of {limit} connections (--max-connections) and requests in progress"),
    )
    .header("Retry-After", "1")
    .closing();
    let (result, _) = stream.write_all(response.encode(false, false)).await;
    if result.is_ok() {
        linger(&mut stream).await;
    }
}

/// Half-closes, then reads and discards what the client still sends, within
/// [`LINGER_BYTES`] and [`LINGER_TIME`], into one small buffer.
async fn linger(stream: &mut TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut scratch = Vec::with_capacity(4096);
    let mut discarded = 0;
    while discarded < LINGER_BYTES {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return;
        }
        match monoio::time::timeout(remaining, stream.read(scratch)).await {
            Ok((Ok(read), returned)) if read > 0 => {
                discarded += read;
                scratch = returned;
                scratch.clear();
            }
            _ => return,
        }
    }
}

/// The reason a request error is counted under in `ssekify_rejected_total`
/// (none for a client that went away).
fn rejection(error: &Error) -> Option<Rejection> {
    match error {
        Error::BadRequest(_) => Some(Rejection::BadRequest),
        Error::HeadTooLarge => Some(Rejection::HeadTooLarge),
        Error::BodyTooLarge => Some(Rejection::BodyTooLarge),
        Error::Timeout => Some(Rejection::Timeout),
        Error::BodyBudget => Some(Rejection::BodyBudget),
        Error::UnexpectedEof => None,
    }
}

/// Answers a malformed, oversized or timed-out request, then the caller closes.
async fn refuse(ctx: &ShardCtx, stream: &mut TcpStream, error: Error) {
    ShardStats::add(&ctx.stats().errors, 1);
    if let Some(reason) = rejection(&error) {
        ctx.stats().rejected.count(reason);
    }
    if error == Error::BodyTooLarge {
        ctx.emit_error("payload_too_large", &error.to_string(), None);
    }
    if error == Error::UnexpectedEof {
        return;
    }
    let mut response = Response::error(error.status(), error.code(), error.to_string()).closing();
    if error == Error::BodyBudget {
        response = response.header("Retry-After", "1");
    }
    let _ = stream.write_all(response.encode(false, false)).await;
}

/// Reads until a whole head is buffered. The wait for a request's first byte
/// is bounded by `--idle-timeout` on a kept-alive connection and by
/// `--read-timeout` on a new one; once bytes arrive, the whole head must
/// arrive within `--read-timeout` (slow-loris clients are cut off). The
/// clock is read once a read (a kept-alive request's head: once). An empty
/// buffer is given room for `expected` bytes, the size of the connection's
/// last request ([`KEPT_BUFFER`]).
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    limits: HeadLimits,
    ctx: &ShardCtx,
    (first, expected): (bool, usize),
    timer: &mut ReadTimer,
) -> Result<Option<Request>, Error> {
    let config = &ctx.shared.config;
    let mut receiving = first;
    let mut deadline = None;
    loop {
        if !buf.is_empty() {
            if let Some(request) = request::parse(buf, limits)? {
                return Ok(Some(request));
            }
            if !receiving {
                receiving = true;
                deadline = None;
            }
        }
        let had_bytes = !buf.is_empty();
        if !had_bytes {
            make_room(buf, expected, expected);
        } else {
            // A full buffer holding part of a head doubles.
            make_room(buf, MIN_SPARE, buf.len().clamp(FIRST_READ, READ_CHUNK));
        }
        let now = Instant::now();
        let due = *deadline.get_or_insert(now + if receiving { config.read_timeout } else { config.idle_timeout });
        match read_some(stream, buf, timer, due, now).await {
            ReadOutcome::Data => {}
            ReadOutcome::Eof if had_bytes => return Err(Error::UnexpectedEof),
            ReadOutcome::Eof => return Ok(None),
            ReadOutcome::TimedOut if receiving => return Err(Error::Timeout),
            ReadOutcome::TimedOut => return Ok(None),
        }
    }
}

/// Reads the body the head announced, within `--read-timeout`, `limit` and
/// the shard's `--body-budget`: a Content-Length body into room made for all
/// of it at once (charged to the budget before it is read), a chunked one in
/// reads of up to [`READ_CHUNK`]. A client that sent `Expect: 100-continue`
/// is told to go on only here, once the request is known to be read.
async fn read_body<'a>(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    request: &Request,
    limit: usize,
    ctx: &'a ShardCtx,
    timer: &mut ReadTimer,
) -> Result<(Bytes, BodyCharge<'a>), Error> {
    let mut decoder = BodyDecoder::new(request.body, limit)?;
    let mut charge = BodyCharge::none(ctx);
    if let BodyFraming::Length(length) = request.body {
        charge.raise_to(length as usize)?;
    }
    if expects_continue(request) {
        let (result, _) = stream.write_all(CONTINUE).await;
        result.map_err(|_| Error::UnexpectedEof)?;
    }
    // Read from the clock only when the body is not all buffered already.
    let mut deadline = None;
    loop {
        if let Some(body) = decoder.decode(buf)? {
            return Ok((body.freeze(), charge));
        }
        charge.raise_to(decoder.received() + buf.len())?;
        match decoder.awaiting(buf) {
            0 => make_room(buf, MIN_SPARE, READ_CHUNK),
            // With room for the next request's head after it: the buffer the
            // next wait takes back is then as large as this whole request.
            missing => make_room(buf, missing, missing + FIRST_READ),
        }
        let now = Instant::now();
        let due = *deadline.get_or_insert(now + ctx.shared.config.read_timeout);
        match read_some(stream, buf, timer, due, now).await {
            ReadOutcome::Data => {}
            ReadOutcome::Eof => return Err(Error::UnexpectedEof),
            ReadOutcome::TimedOut => return Err(Error::Timeout),
        }
    }
}

/// `Expect: 100-continue` on an HTTP/1.1 request (RFC 9110 §10.1.1).
fn expects_continue(request: &Request) -> bool {
    request.http11 && request.known(Known::Expect).is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"))
}

/// Body bytes this request holds against its shard's `--body-budget`;
/// given back when the request is answered.
struct BodyCharge<'a> {
    ctx: &'a ShardCtx,
    bytes: usize,
}

impl<'a> BodyCharge<'a> {
    fn none(ctx: &'a ShardCtx) -> Self {
        BodyCharge { ctx, bytes: 0 }
    }

    /// Raises the charge to `bytes`, or refuses when the budget is spent.
    fn raise_to(&mut self, bytes: usize) -> Result<(), Error> {
        if bytes <= self.bytes {
            return Ok(());
        }
        let in_flight = &self.ctx.body_bytes_in_flight;
        let more = bytes - self.bytes;
        if in_flight.get() + more > self.ctx.shared.config.body_budget {
            return Err(Error::BodyBudget);
        }
        in_flight.set(in_flight.get() + more);
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for BodyCharge<'_> {
    fn drop(&mut self) {
        let in_flight = &self.ctx.body_bytes_in_flight;
        in_flight.set(in_flight.get() - self.bytes);
    }
}

/// A request between its head and its answer, counted so a shutdown waits
/// for its answer instead of resetting the connection.
struct InFlight(Rc<ShardCtx>);

impl InFlight {
    fn start(ctx: &Rc<ShardCtx>) -> Self {
        ctx.requests_in_flight.set(ctx.requests_in_flight.get() + 1);
        InFlight(ctx.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let count = &self.0.requests_in_flight;
        count.set(count.get() - 1);
    }
}

/// Public sockets that are not streams yet (requests being read, health
/// checks) allowed beyond `--max-connections` subscribers, so a full
/// instance still answers its load balancer's health checks and its 503s.
pub const PENDING_HEADROOM: usize = 64;

/// A socket of the public listener that is not yet a stream: it counts
/// against `--max-connections` (plus [`PENDING_HEADROOM`]) with the
/// subscribers, so clients that connect and send nothing cannot take the
/// descriptors the api listener needs.
pub struct PendingSocket(Option<Rc<ShardCtx>>);

impl PendingSocket {
    /// Counts a public socket; `None` when the public listener is full.
    pub fn claim(ctx: &Rc<ShardCtx>) -> Option<Self> {
        let shared = &ctx.shared;
        let limit = shared.config.max_connections.map_or(usize::MAX, |n| n.get()).saturating_add(PENDING_HEADROOM);
        let pending = shared.public_pending.fetch_add(1, Ordering::AcqRel);
        if pending + shared.connections.load(Ordering::Acquire) >= limit {
            shared.public_pending.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(PendingSocket(Some(ctx.clone())))
    }

    /// A socket of the api listener: not counted.
    pub fn uncounted() -> Self {
        PendingSocket(None)
    }
}

impl Drop for PendingSocket {
    fn drop(&mut self) {
        if let Some(ctx) = &self.0 {
            ctx.shared.public_pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

enum ReadOutcome {
    Data,
    Eof,
    TimedOut,
}

/// One timer for the reads of a connection, moved to each read's deadline:
/// a timer made and dropped per read (and the timeout future around it,
/// moved as it was awaited) cost ~800 instructions a request, and a timeout
/// held inline made every read's future, moved as it is awaited, ~1 KiB
/// larger. Boxed (monoio's timer is 640 bytes, which held in the connection's
/// task would make every waiting connection that much larger) and, when the
/// connection ends or becomes a stream, kept for the next connection on
/// this thread ([`SPARE_TIMERS`]): a subscriber's timer freed at the
/// hand-over, among the stream's long-lived allocations, left holes (idle
/// memory per subscriber 584 → 750 B, `loadtest/scenarios/idle.sh`).
#[derive(Default)]
struct ReadTimer(Option<Pin<Box<Sleep>>>);

/// At most this many read timers are kept per shard thread for the next
/// connections: a burst of connections reading their heads at once
/// allocates beyond it, and frees what it allocated.
const SPARE_TIMERS_KEPT: usize = 256;

thread_local! {
    /// Read timers of ended connections, for the next ones on this thread
    /// (each shard runs on a thread of its own, and a timer belongs to its
    /// thread's timer wheel).
    static SPARE_TIMERS: RefCell<Vec<Pin<Box<Sleep>>>> = const { RefCell::new(Vec::new()) };
}

impl ReadTimer {
    /// The timer, due at `deadline`.
    fn due(&mut self, deadline: monoio::time::Instant) -> Pin<&mut Sleep> {
        match &mut self.0 {
            Some(timer) if timer.deadline() == deadline => {}
            Some(timer) => timer.as_mut().reset(deadline),
            None => {
                let spare = SPARE_TIMERS.with(|spare| spare.borrow_mut().pop());
                self.0 = Some(match spare {
                    Some(mut timer) => {
                        timer.as_mut().reset(deadline);
                        timer
                    }
                    None => Box::pin(monoio::time::sleep_until(deadline)),
                });
            }
        }
        self.0.as_mut().expect("made above").as_mut()
    }
}

impl Drop for ReadTimer {
    fn drop(&mut self) {
        let Some(mut timer) = self.0.take() else { return };
        // A monoio timer keeps the first waker it was polled with until it
        // fires: made due a second ago it fires at once and lets go of this
        // connection's task, or, when it cannot (its wheel not turned in that
        // second), it is freed rather than kept.
        let Some(past) = Instant::now().checked_sub(Duration::from_secs(1)) else { return };
        timer.as_mut().reset(monoio::time::Instant::from_std(past));
        if !timer.is_elapsed() {
            return;
        }
        // At thread exit the list may be gone already; the timer is then freed.
        let _ = SPARE_TIMERS.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < SPARE_TIMERS_KEPT {
                spare.push(timer);
            }
        });
    }
}

/// Grows `buf` by `grow` bytes when it has room for fewer than `least`
/// (reclaiming its own allocation when nothing else holds it).
fn make_room(buf: &mut BytesMut, least: usize, grow: usize) {
    if buf.capacity() - buf.len() < least {
        buf.reserve(grow);
    }
}

/// Appends what arrives to `buf`'s spare room (at most [`MAX_READ`] bytes);
/// gives up at `deadline` (at least a millisecond after `now`, the caller's
/// reading of the clock), timed by `timer`.
async fn read_some(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    timer: &mut ReadTimer,
    deadline: Instant,
    now: Instant,
) -> ReadOutcome {
    // Reads fill from the buffer's start; a slice from `len` appends instead.
    let filled = buf.len();
    let end = buf.capacity().min(filled + MAX_READ);
    let spare = std::mem::take(buf).slice_mut(filled..end);
    let deadline = monoio::time::Instant::from_std(deadline.max(now + Duration::from_millis(1)));
    let mut timer = timer.due(deadline);
    let mut read = pin!(stream.read(spare));
    let done = std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
        Poll::Ready(done) => Poll::Ready(Some(done)),
        Poll::Pending => timer.as_mut().poll(cx).map(|()| None),
    })
    .await;
    match done {
        Some((result, returned)) => {
            *buf = returned.into_inner();
            match result {
                Ok(0) | Err(_) => ReadOutcome::Eof,
                Ok(_) => ReadOutcome::Data,
            }
        }
        None => ReadOutcome::TimedOut,
    }
}

#[cfg(test)]
mod tests {
    /// Size of the future an `async fn` of five arguments returns.
    fn future_size<F, A, B, C, D, E, R>(_: F) -> usize
    where
        F: Fn(A, B, C, D, E) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// Every connection's task is this future until its stream starts, so in
    /// a reconnect storm thousands of them are alive at once; when a route's
    /// state was inlined here (8.4 KiB) the heap they left behind raised idle
    /// memory from ~1.7 to 2.6–8 KiB per subscriber, varying run to run.
    /// A timer held inline (monoio's is 640 bytes, 128-byte aligned) also
    /// makes every read's and answer's future, moved per request, that large.
    #[test]
    fn a_connection_task_stays_small() {
        let size = future_size(super::serve);
        assert!(size <= 2560, "the connection future is {size} B: box the large awaits (see api::route, ReadTimer)");
    }
}
