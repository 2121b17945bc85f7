//! An NDJSON batch (`POST /v1/publish` with `application/x-ndjson`) comes
//! from a publisher: `publish::batch_messages` must never panic. An accepted
//! body is valid UTF-8 with one message per non-blank line, each what a
//! `serde_json::Value` reading of the line says: exactly one target with a
//! valid name, and the line's `data`, `event` and `id`.
#![no_main]

#[path = "lax_json.rs"]
mod lax_json;

use lax_json::{agrees, value};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use ssekify::api::publish::{batch_messages, Fields};

fuzz_target!(|data: &[u8]| {
    let Ok(messages) = batch_messages(data, true) else { return };
    let text = std::str::from_utf8(data).expect("an accepted body is UTF-8");
    let lines: Vec<&str> = text.split('\n').filter(|line| !line.trim_start().is_empty()).collect();
    let messages: Vec<Result<Fields<'_>, String>> = messages.collect();
    assert_eq!(lines.len(), messages.len(), "one message per non-blank line");
    assert!(!messages.is_empty());
    for (message, line) in messages.iter().zip(&lines) {
        match message {
            Ok(fields) => {
                let Some(value) = value(line.as_bytes()) else { continue };
                agrees(fields, &value);
            }
            Err(why) if why.starts_with("not valid JSON") => {
                assert!(serde_json::from_str::<Value>(line).is_err(), "refused as not JSON: {line:?}")
            }
            Err(_) => {}
        }
    }
});
