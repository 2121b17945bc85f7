//! A JSON batch (`POST /v1/publish`, `{"messages":[…]}`) comes from a
//! publisher: `publish::batch_messages` and `parse_message` must never panic,
//! and agree with a plain `serde_json::Value` reading of the same body: an
//! accepted body is an object whose `messages` is a non-empty array of those
//! messages; an accepted message has exactly one target, a valid name, and
//! the `data` the value holds (a string's text, else the value's JSON).
#![no_main]

#[path = "lax_json.rs"]
mod lax_json;

use lax_json::value;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use ssekify::api::publish::{batch_messages, parse_message};
use ssekify::namespace::valid_name;
use ssekify::shard::envelope::Target;


fuzz_target!(|data: &[u8]| {
    let Ok(messages) = batch_messages(data, false) else { return };
    let Some(body) = value(data) else { return };
    let list = body["messages"].as_array().expect("an accepted body has a messages array");
    assert_eq!(list.len(), messages.len());
    assert!(!messages.is_empty());
    for (raw, value) in messages.iter().zip(list) {
        assert_eq!(serde_json::from_str::<Value>(raw.get()).ok().as_ref(), Some(value), "the array's element");
        let Ok(fields) = parse_message(raw) else { continue };
        match &fields.target {
            Target::User(name) => assert_eq!(value["user"].as_str(), Some(&**name)),
            Target::Room(name) => assert_eq!(value["room"].as_str(), Some(&**name)),
            Target::All => assert_eq!(value["all"], true),
            Target::Tenant(_) | Target::Connection(_) => panic!("a message names no tenant or connection"),
        }
        if let Target::User(name) | Target::Room(name) = &fields.target {
            assert!(valid_name(name), "invalid name {name:?}");
        }
        let targets = ["user", "room"].iter().filter(|key| value.get(**key).is_some()).count();
        assert_eq!(targets + usize::from(value["all"] == true), 1, "exactly one target");
        match &value["data"] {
            Value::String(text) => assert_eq!(&fields.data, text),
            other => assert_eq!(&serde_json::from_str::<Value>(&fields.data).unwrap(), other),
        }
        assert_eq!(fields.event.as_deref(), value.get("event").map(|e| e.as_str().unwrap()));
        assert_eq!(fields.id.as_deref(), value.get("id").map(|id| id.as_str().unwrap()));
    }
});
