//! ssekify: a high-fan-out Server-Sent Events push server.
//!
//! Layers, top to bottom (arrows point down only): [`server`] boots shards and
//! serves sockets → [`api`] routes requests → [`shard`] owns connections,
//! queues and cross-shard inboxes → [`auth`], [`http`], [`sse`], [`metrics`],
//! [`events`], [`config`], [`tenants`], [`namespace`], [`text`], [`prefetch`],
//! [`log`](mod@log) are leaves. [`sign`] and [`check`] are the `ssekify sign`
//! and `ssekify check-config` subcommands beside the server. See
//! `docs/architecture.md` for the data path.
#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod bus;
pub mod check;
pub mod config;
pub mod events;
pub mod http;
pub mod log;
pub mod metrics;
pub mod namespace;
pub mod prefetch;
pub mod server;
pub mod setup;
pub mod shard;
pub mod sign;
pub mod sse;
pub mod tenants;
pub mod text;
pub mod tls;
pub mod units;
