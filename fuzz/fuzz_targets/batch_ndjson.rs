//! An NDJSON batch (`POST /v1/publish` with `application/x-ndjson`) comes
//! from a publisher: `publish::batch_messages` and `parse_message` must never
//! panic. An accepted body is valid UTF-8 with one message per non-blank
//! line, each the line's JSON value; the messages written back one per line
//! are accepted as the same messages; an accepted message has exactly one
//! target with a valid name.
#![no_main]

#[path = "lax_json.rs"]
mod lax_json;

use lax_json::value;
use libfuzzer_sys::fuzz_target;
use ssekify::api::publish::{batch_messages, parse_message};
use ssekify::namespace::valid_name;
use ssekify::shard::envelope::Target;


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
    let joined = written.join("\n");
    let again = batch_messages(joined.as_bytes(), true).expect("written back, accepted again");
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
