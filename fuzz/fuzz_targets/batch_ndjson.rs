//! An NDJSON batch (`POST /v1/publish` with `application/x-ndjson`) comes
//! from a publisher: `publish::batch_messages` and `parse_message` must never
//! panic. An accepted body is valid UTF-8 with one message per non-blank
//! line, each the line's JSON value; the messages written back one per line
//! are accepted as the same messages; an accepted message has exactly one
//! target with a valid name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use ssekify::api::publish::{batch_messages, parse_message};
use ssekify::namespace::valid_name;
use ssekify::shard::envelope::Target;

/// `text` as a `serde_json::Value`; `None` only where raw values are laxer
/// than `Value` (no recursion limit, any number, any `\u` escape), which
/// the parsers may accept.
fn value(text: &[u8]) -> Option<Value> {
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

fuzz_target!(|data: &[u8]| {
    let Ok(messages) = batch_messages(data, true) else { return };
    let text = std::str::from_utf8(data).expect("an accepted body is UTF-8");
    let lines: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(lines.len(), messages.len(), "one message per non-blank line");
    assert!(!messages.is_empty());
    for (raw, line) in messages.iter().zip(&lines) {
        let Some(message) = value(raw.get().as_bytes()) else { continue };
        assert_eq!(value(line.as_bytes()), Some(message), "the raw message is the line's value");
    }
    let written: Vec<&str> = messages.iter().map(|raw| raw.get()).collect();
    let again = batch_messages(written.join("\n").as_bytes(), true).expect("written back, accepted again");
    assert_eq!(again.iter().map(|raw| raw.get()).collect::<Vec<_>>(), written);

    for raw in &messages {
        let Ok(fields) = parse_message(raw) else { continue };
        match &fields.target {
            Target::User(name) | Target::Room(name) => assert!(valid_name(name), "invalid name {name:?}"),
            Target::All => {}
            Target::Tenant(_) | Target::Connection(_) => panic!("a message names no tenant or connection"),
        }
    }
});
