//! Messages between instances come from Redis Pub/Sub, where any client of
//! that Redis may publish: parsing them must never panic, a message that
//! parses must read back the same once written again (one spelling per
//! message), and an answer's counts and lines must decode without panicking.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ssekify::bus::peer::{Answers, PeerMessage};
use ssekify::shard::envelope::Answer;
use ssekify::shard::presence::decode_answer;

fuzz_target!(|data: &[u8]| {
    let payload = Bytes::copy_from_slice(data);
    if let Some(message) = PeerMessage::parse(&payload) {
        let again = message.encode();
        assert_eq!(PeerMessage::parse(&again), Some(message.clone()), "{message:?}");
        if let PeerMessage::Answer { body, .. } = &message {
            let _ = decode_answer(body);
        }
    }
    let _ = decode_answer(data);
    // Counts and lengths as the bus hands them to a shard, however wrong.
    let values = data.chunks(8).map(|c| c.iter().fold(0u64, |n, b| n << 8 | u64::from(*b))).collect();
    let _ = Answers::from_answer(Answer { values, body: Some(payload) });
});
