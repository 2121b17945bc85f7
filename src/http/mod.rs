//! HTTP/1.1 for both listeners, sans-IO: `request` turns bytes into a typed
//! request head, `body` decodes Content-Length and chunked bodies, `query`
//! decodes targets, `response` serialises answers. Sockets live in `server`,
//! except for `client`: requests to the application's own endpoints.

pub mod body;
pub mod client;
pub mod query;
pub mod request;
pub mod response;

use std::fmt;

/// What went wrong reading a request, and therefore what to answer before closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Malformed syntax or framing (RFC 9112 §2.2, §6): 400.
    BadRequest(&'static str),
    /// Request head larger than `--max-head` or more than `--max-headers` headers: 431.
    HeadTooLarge,
    /// Body over the route's limit: 413.
    BodyTooLarge,
    /// The request did not complete within `--read-timeout`: 408.
    Timeout,
    /// The peer closed mid-request; nothing can be answered.
    UnexpectedEof,
    /// The shard's `--body-budget` of body bytes in flight is spent: 503.
    BodyBudget,
}

impl Error {
    /// HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            Error::BadRequest(_) | Error::UnexpectedEof => 400,
            Error::HeadTooLarge => 431,
            Error::BodyTooLarge => 413,
            Error::Timeout => 408,
            Error::BodyBudget => 503,
        }
    }

    /// Machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest(_) | Error::UnexpectedEof => "bad_request",
            Error::HeadTooLarge => "headers_too_large",
            Error::BodyTooLarge => "payload_too_large",
            Error::Timeout => "request_timeout",
            Error::BodyBudget => "overloaded",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadRequest(why) => write!(f, "malformed request: {why}"),
            Error::HeadTooLarge => f.write_str("request head too large or too many headers"),
            Error::BodyTooLarge => {
                f.write_str("request body too large (over --max-payload, or --max-batch-body for a batch)")
            }
            Error::Timeout => f.write_str("request not received in time"),
            Error::UnexpectedEof => f.write_str("connection closed mid-request"),
            Error::BodyBudget => f.write_str("too many request bodies in flight (--body-budget); retry shortly"),
        }
    }
}

impl std::error::Error for Error {}
