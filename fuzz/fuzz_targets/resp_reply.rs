//! A reply read by the bus's own reading of an array of bulk strings
//! (`resp::bulk_array`, every pushed message) must be what redis-protocol
//! reads from the same bytes, leaving the same bytes behind; while it waits
//! for more bytes, redis-protocol must not have a reply either.
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
});
