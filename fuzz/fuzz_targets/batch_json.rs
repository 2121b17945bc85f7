//! A JSON batch (`POST /v1/publish`, `{"messages":[…]}`) comes from a
//! publisher: `publish::batch_messages` must never panic, and agree with a
//! plain `serde_json::Value` reading of the same body: an accepted body is an
//! object whose `messages` is a non-empty array of those messages; an
//! accepted message has exactly one target, a valid name, and the `data` the
//! value holds (a string's text, else the value's JSON).
#![no_main]

#[path = "lax_json.rs"]
mod lax_json;

use lax_json::{agrees, value};
use libfuzzer_sys::fuzz_target;
use ssekify::api::publish::{batch_messages, Fields};

fuzz_target!(|data: &[u8]| {
    let Ok(messages) = batch_messages(data, false) else { return };
    let Ok(messages) = messages.collect::<Result<Vec<Fields<'_>>, String>>() else { return };
    let Some(body) = value(data) else { return };
    let list = body["messages"].as_array().expect("an accepted body has a messages array");
    assert_eq!(list.len(), messages.len());
    assert!(!messages.is_empty());
    for (fields, value) in messages.iter().zip(list) {
        agrees(fields, value);
    }
});
