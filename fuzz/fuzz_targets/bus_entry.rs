//! A bus log entry comes from Redis, which anything holding its password can
//! write to: `wire::decode` must refuse any input it does not fully
//! understand, never panic, and what it accepts must encode back to the
//! same bytes; the frame a shard encodes from a message's packed fields is
//! the frame of its decoded fields.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ssekify::bus::wire;
use ssekify::sse::frame;

fuzz_target!(|data: &[u8]| {
    let Ok(entry) = wire::decode(data) else { return };
    let mut again = BytesMut::from(&wire::header(entry.instance, entry.token)[..]);
    for m in &entry.messages {
        let bytes = match &m.room_change {
            Some(change) => wire::room_change(&m.target, change),
            None => {
                let expected = frame::encode(m.id, m.event, m.data);
                assert_eq!(frame::encode_packed(m.packed), Some(expected), "packed fields encode as decoded");
                wire::message(&m.target, m.id, m.event, m.data)
            }
        };
        again.extend_from_slice(&bytes);
    }
    assert_eq!(&again[..], data, "an accepted entry encodes back to itself");
});
