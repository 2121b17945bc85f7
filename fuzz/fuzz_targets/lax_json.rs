//! Shared by the batch targets: reading an accepted message the way a
//! `serde_json::Value` would, allowing for where raw values are laxer.

use serde_json::Value;

/// `text` as a `serde_json::Value`; `None` only where raw values are laxer
/// than `Value` (no recursion limit, any number, any `\u` escape), which
/// the parsers may accept.
pub fn value(text: &[u8]) -> Option<Value> {
    match serde_json::from_slice(text) {
        Ok(value) => Some(value),
        Err(e) => {
            let why = e.to_string();
            let lax = ["recursion limit exceeded", "number out of range", "hex escape"];
            assert!(lax.iter().any(|lax| why.contains(lax)), "accepted, yet not JSON: {why}");
            None
        }
    }
}
