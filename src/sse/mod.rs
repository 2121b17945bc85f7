//! The SSE wire format: frames (`frame`, each one allocation with its
//! reference count: `one_allocation`) and event ids (`id`).

pub mod frame;
pub mod id;
mod one_allocation;
