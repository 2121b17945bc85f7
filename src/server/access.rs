//! `--access-log`: one info line per request answered on the api listener
//! (or on a listener shared by both route sets): method, path, status,
//! duration, bytes sent and the caller's address. Never the query string or
//! a header (`Authorization` carries the api key). Subscribers are logged
//! by their connect and disconnect lines at debug instead.
//!
//! The request path checks one flag before anything else: without the log,
//! a request costs no clock read.

use std::time::Instant;

use monoio::net::TcpStream;

use crate::api::Role;
use crate::http::request::Request;
use crate::log::LogLevel;
use crate::shard::ShardCtx;

/// When a request's head was read, if it is to be logged.
pub fn start(ctx: &ShardCtx, role: Role) -> Option<Instant> {
    let wanted = ctx.shared.config.access_log && role != Role::Public && crate::log::enabled(LogLevel::Info);
    wanted.then(Instant::now)
}

/// Logs the answer to `request`: its `status` and size in `bytes` (head and body).
pub fn record(ctx: &ShardCtx, stream: &TcpStream, started: Instant, request: &Request, status: u16, bytes: usize) {
    crate::log!(
        Info,
        "api request",
        method = request.method_name(),
        path = String::from_utf8_lossy(&request.path),
        status = status,
        duration_us = started.elapsed().as_micros(),
        bytes = bytes,
        peer = stream.peer_addr().ok().map(|peer| peer.to_string()),
        shard = ctx.id,
    );
}
