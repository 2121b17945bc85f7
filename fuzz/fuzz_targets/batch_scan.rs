//! A batch message or JSON batch body is read by a hand-written scan when it
//! has the usual shape, else by serde_json: whatever the input, the two
//! readings must agree exactly (the same fields, or the same refusal), so
//! the scan can take nothing serde_json refuses or reads otherwise. The same
//! holds for a single publish's JSON body. A message's data that the scan
//! says is one line (its frame then searched for no line break) holds none.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssekify::api::publish::{
    batch_messages, check_json_by_serde, json_text, message_refusal, parse_message, parse_message_by_serde,
    read_batch_by_serde, scanned_data_with_lines, BatchMessages, Fields,
};
use ssekify::http::response::Response;

/// A batch's messages as the publish route takes them: the first refused
/// message names the refusal.
fn as_the_route_reads(read: Result<BatchMessages<'_>, Response>) -> Result<Vec<Fields<'_>>, Response> {
    read?.enumerate().map(|(index, message)| message.map_err(|why| message_refusal(index, &why))).collect()
}

fuzz_target!(|data: &[u8]| {
    assert_eq!(json_text(data).map(drop), check_json_by_serde(data), "{:?}", String::from_utf8_lossy(data));
    let Ok(text) = std::str::from_utf8(data) else { return };
    assert_eq!(parse_message(text), parse_message_by_serde(text), "{text:?}");
    if let Some(Ok((data, true))) = scanned_data_with_lines(text) {
        assert!(!ssekify::text::has_line_break(data.as_bytes()), "{text:?}");
    }
    match (as_the_route_reads(batch_messages(data, false)), as_the_route_reads(read_batch_by_serde(text))) {
        (Ok(scanned), Ok(read)) => assert_eq!(scanned, read, "{text:?}"),
        (Err(scanned), Err(read)) => {
            assert_eq!((scanned.status, &scanned.body), (read.status, &read.body), "{text:?}")
        }
        (scanned, read) => panic!("{text:?}: the scan read {:?}, serde_json {:?}", scanned.is_ok(), read.is_ok()),
    }
});
