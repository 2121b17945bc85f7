//! One accepted socket: read requests (keep-alive, pipelining), answer them,
//! or hand the socket over as an SSE stream.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::api::{self, Role, Routed, Services};
use crate::http::body::BodyDecoder;
use crate::http::request::{self, HeadLimits, Method, Request};
use crate::http::response::Response;
use crate::http::Error;
use crate::metrics::ShardStats;
use crate::shard::ShardCtx;

/// Bytes requested per read; heads are small and bodies are read to their size.
const READ_CHUNK: usize = 8 * 1024;

/// Serves requests on `stream` until the client closes, a request asks to
/// close, an error ends it, or the socket becomes a stream.
pub async fn serve(ctx: Rc<ShardCtx>, services: Rc<Services>, mut stream: TcpStream, role: Role) {
    let config = &ctx.shared.config;
    let limits = HeadLimits { max_head: config.max_head, max_headers: config.max_headers };
    let mut buf = BytesMut::new();
    let mut first = true;
    loop {
        let request = match read_head(&mut stream, &mut buf, limits, &ctx, first).await {
            Ok(Some(request)) => request,
            Ok(None) => break,
            Err(error) => {
                refuse(&ctx, &mut stream, error).await;
                break;
            }
        };
        first = false;
        let body = match read_body(&mut stream, &mut buf, &request, &ctx).await {
            Ok(body) => body,
            Err(error) => {
                refuse(&ctx, &mut stream, error).await;
                break;
            }
        };
        match api::route(&ctx, &services, role, &request, body.freeze()).await {
            Routed::Subscribe(subscription) => {
                drop(buf);
                // Boxed for the same reason as the routes in `api::route`.
                Box::pin(ctx.subscribe(stream, subscription)).await;
                return;
            }
            Routed::Response(response) => {
                let keep_alive = request.keep_alive && !response.close;
                let bytes = response.encode(request.method == Method::Head, keep_alive).freeze();
                let (result, _) = stream.write_all(bytes).await;
                if result.is_err() || !keep_alive {
                    break;
                }
            }
        }
        if buf.is_empty() && buf.capacity() > READ_CHUNK * 2 {
            buf = BytesMut::new();
        }
    }
    let _ = stream.shutdown().await;
}

/// Answers a malformed or timed-out request, then the caller closes.
async fn refuse(ctx: &ShardCtx, stream: &mut TcpStream, error: Error) {
    ShardStats::add(&ctx.stats().errors, 1);
    if error == Error::UnexpectedEof {
        return;
    }
    let response = Response::error(error.status(), error.code(), error.to_string()).closing();
    let _ = stream.write_all(response.encode(false, false).freeze()).await;
}

/// Reads until a whole head is buffered. The wait for a request's first byte
/// is bounded by `--idle-timeout` on a kept-alive connection and by
/// `--read-timeout` on a new one; once bytes arrive, the whole head must
/// arrive within `--read-timeout` (slow-loris clients are cut off).
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    limits: HeadLimits,
    ctx: &ShardCtx,
    first: bool,
) -> Result<Option<Request>, Error> {
    let config = &ctx.shared.config;
    let mut receiving = first;
    let mut deadline = Instant::now() + if first { config.read_timeout } else { config.idle_timeout };
    loop {
        if !buf.is_empty() {
            if let Some(request) = request::parse(buf, limits)? {
                return Ok(Some(request));
            }
            if !receiving {
                receiving = true;
                deadline = Instant::now() + config.read_timeout;
            }
        }
        let had_bytes = !buf.is_empty();
        match read_some(stream, buf, deadline).await {
            ReadOutcome::Data => {}
            ReadOutcome::Eof if had_bytes => return Err(Error::UnexpectedEof),
            ReadOutcome::Eof => return Ok(None),
            ReadOutcome::TimedOut if receiving => return Err(Error::Timeout),
            ReadOutcome::TimedOut => return Ok(None),
        }
    }
}

/// Reads the body the head announced, within `--read-timeout`.
async fn read_body(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    request: &Request,
    ctx: &ShardCtx,
) -> Result<BytesMut, Error> {
    let limit = api::body_limit(request, &ctx.shared.config);
    let mut decoder = BodyDecoder::new(request.body, limit)?;
    let deadline = Instant::now() + ctx.shared.config.read_timeout;
    loop {
        if let Some(body) = decoder.decode(buf)? {
            return Ok(body);
        }
        match read_some(stream, buf, deadline).await {
            ReadOutcome::Data => {}
            ReadOutcome::Eof => return Err(Error::UnexpectedEof),
            ReadOutcome::TimedOut => return Err(Error::Timeout),
        }
    }
}

enum ReadOutcome {
    Data,
    Eof,
    TimedOut,
}

async fn read_some(stream: &mut TcpStream, buf: &mut BytesMut, deadline: Instant) -> ReadOutcome {
    buf.reserve(READ_CHUNK);
    // Reads fill from the buffer's start; a slice from `len` appends instead.
    let filled = buf.len();
    let spare = std::mem::take(buf).slice_mut(filled..);
    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    match monoio::time::timeout(remaining, stream.read(spare)).await {
        Ok((result, returned)) => {
            *buf = returned.into_inner();
            match result {
                Ok(0) | Err(_) => ReadOutcome::Eof,
                Ok(_) => ReadOutcome::Data,
            }
        }
        Err(_) => ReadOutcome::TimedOut,
    }
}

#[cfg(test)]
mod tests {
    /// Size of the future an `async fn` of four arguments returns.
    fn future_size<F, A, B, C, D, R>(_: F) -> usize
    where
        F: Fn(A, B, C, D) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// Every connection's task is this future until its stream starts, so in
    /// a reconnect storm thousands of them are alive at once; when a route's
    /// state was inlined here (8.4 KiB) the heap they left behind raised idle
    /// memory from ~1.7 to 2.6–8 KiB per subscriber, varying run to run.
    #[test]
    fn a_connection_task_stays_small() {
        let size = future_size(super::serve);
        assert!(size <= 3 * 1024, "the connection future is {size} B: box the large awaits (see api::route)");
    }
}
