//! A reply read by the bus's own reading of an array of bulk strings
//! (`resp::bulk_array`, every pushed message) must be what redis-protocol
//! reads from the same bytes, leaving the same bytes behind; while it waits
//! for more bytes, redis-protocol must not have a reply either. A
//! subscription's reading (`resp::decode_heard`, a pushed message without
//! its array) must agree with the plain reading (`resp::decode`).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ssekify::bus::resp;

fuzz_target!(|data: &[u8]| {
    let mut ours = BytesMut::from(data);
    let mut reference = BytesMut::from(data);
    match resp::bulk_array(&mut ours) {
        Ok(Some(reply)) => {
            assert_eq!(resp::decode_any(&mut reference, false), Ok(Some(reply)));
            assert_eq!(ours, reference, "the same bytes left");
        }
        Ok(None) => {
            let read = resp::decode_any(&mut reference, false);
            assert!(!matches!(read, Ok(Some(_))), "redis-protocol read {read:?} from bytes waiting for more");
        }
        Err(resp::OtherShape) => {}
    }
    let mut heard = BytesMut::from(data);
    let mut plain = BytesMut::from(data);
    match (resp::decode_heard(&mut heard, false), resp::decode(&mut plain, false)) {
        (Ok(Some(resp::Heard::Message { channel, payload })), Ok(Some(resp::Reply::Array(parts)))) => {
            let [resp::Reply::Text(kind), resp::Reply::Text(on), resp::Reply::Text(published)] = &parts[..] else {
                panic!("a message heard where the plain reading has {parts:?}")
            };
            assert!(&kind[..] == b"message" || &kind[..] == b"smessage");
            assert_eq!((&channel, &payload), (on, published));
        }
        (Ok(Some(resp::Heard::Message { .. })), plain) => panic!("a message heard where the plain reading has {plain:?}"),
        (Ok(Some(resp::Heard::Reply(reply))), plain) => assert_eq!(Ok(Some(reply)), plain),
        (heard, plain) => assert_eq!(heard.map(|h| h.is_some()), plain.map(|p| p.is_some())),
    }
    assert_eq!(heard, plain, "the same bytes left");
});
