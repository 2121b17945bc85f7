//! A bus log entry comes from Redis, which anything holding its password can
//! write to: `wire::decode` must refuse any input it does not fully
//! understand, never panic, and what it accepts must encode back to the
//! same bytes; the frame a shard encodes from a message's packed fields is
//! the frame of its decoded fields. Read one message at a time, an entry
//! gives what `decode` gives, and the count its lengths promise (a list's
//! size) is never short of what it holds.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ssekify::bus::wire;
use ssekify::sse::frame;

fuzz_target!(|data: &[u8]| {
    if let Ok(read) = wire::messages(data) {
        let ahead = read.count_ahead();
        let read: Vec<_> = read.collect();
        let good = read.iter().take_while(|m| m.is_ok()).count();
        assert!(good == read.len() || good + 1 == read.len(), "nothing after the first error");
        assert!(good <= ahead, "{good} messages read, {ahead} promised");
        assert_eq!(wire::decode(data).is_ok(), good == read.len());
    }
    let Ok(entry) = wire::decode(data) else { return };
    assert_eq!(wire::messages(data).map(|read| read.count_ahead()), Ok(entry.messages.len()));
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
