//! Shared by the batch targets: reading an accepted message the way a
//! `serde_json::Value` would, allowing for where raw values are laxer, and
//! checking that the batch reader's fields agree with that reading.

use serde_json::Value;
use ssekify::api::publish::Fields;
use ssekify::namespace::valid_name;
use ssekify::shard::envelope::Target;

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

/// An accepted message says what a `Value` reading of it says.
pub fn agrees(fields: &Fields<'_>, value: &Value) {
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
