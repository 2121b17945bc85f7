//! The SSE wire format: frames (`frame`) and event ids (`id`).

pub mod frame;
pub mod id;
