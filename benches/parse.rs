//! Request-head parsing: `ssekify::http::request::parse` (httparse, then a typed
//! `Request` whose path, query and headers are `Bytes` slices of the frozen
//! head, plus keep-alive and body-framing checks) against httparse alone into a
//! stack header array, which is the floor any httparse-based server pays.
//!
//! `parse` consumes its input (it splits the head off the read buffer), so each
//! call first refills one reused `BytesMut`; that refill (a memcpy of the head
//! into a buffer whose allocation is reclaimed, no allocation) is timed on its
//! own so it can be told apart from parsing.
//!
//! Run: `cargo bench --bench parse`

mod common;

use std::hint::black_box;

use bytes::BytesMut;
use common::{header, measure, ratio};
use ssekify::http::request::{parse, BodyFraming, HeadLimits, Known, Method, MAX_HEADERS_LIMIT};

/// The defaults: `--max-head 8KiB`, `--max-headers 64`.
const LIMITS: HeadLimits = HeadLimits { max_head: 8 * 1024, max_headers: 64 };

/// What Chrome sends when `new EventSource(url)` reconnects: 10 headers.
const SUBSCRIBE: &[u8] = b"GET /sse?userId=u_8f3a2c91d4e5&rooms=lobby,team-42,alerts,ops-oncall HTTP/1.1\r\n\
Host: push.example.com\r\n\
Connection: keep-alive\r\n\
Accept: text/event-stream\r\n\
Cache-Control: no-cache\r\n\
Last-Event-ID: 1795996800000-0a1b2c3d-0000002a\r\n\
User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n\
Origin: https://app.example.com\r\n\
Referer: https://app.example.com/dashboard/team-42\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9,de;q=0.8\r\n\
\r\n";

/// A backend publishing one message (the body would follow the head).
const PUBLISH: &[u8] = b"POST /v1/publish HTTP/1.1\r\n\
Host: ssekify-internal:8081\r\n\
User-Agent: orders-service/2.14.0\r\n\
Authorization: Bearer 3f9c1e7a52b84d06a1c2e9f0b7d4a8c6\r\n\
Content-Type: application/json\r\n\
Content-Length: 187\r\n\
Idempotency-Key: order-88412-shipped\r\n\
Accept: */*\r\n\
\r\n";

/// httparse alone: request line and headers located, nothing built.
fn httparse_only<const N: usize>(head: &[u8]) -> usize {
    let mut storage = [httparse::EMPTY_HEADER; N];
    let mut request = httparse::Request::new(&mut storage);
    match request.parse(head) {
        Ok(httparse::Status::Complete(len)) => len + request.headers.len(),
        _ => unreachable!("the heads are complete and valid"),
    }
}

fn main() {
    let count = |head: &[u8]| head.windows(2).filter(|w| w == b"\r\n").count() - 2;
    println!(
        "heads: subscribe GET {} B / {} headers, publish POST {} B / {} headers",
        SUBSCRIBE.len(),
        count(SUBSCRIBE),
        PUBLISH.len(),
        count(PUBLISH)
    );
    let get = parse(&mut BytesMut::from(SUBSCRIBE), LIMITS).unwrap().unwrap();
    assert_eq!((get.method, &get.path[..], get.keep_alive), (Method::Get, &b"/sse"[..], true));
    assert_eq!(get.known_str(Known::LastEventId), Some("1795996800000-0a1b2c3d-0000002a"));
    let post = parse(&mut BytesMut::from(PUBLISH), LIMITS).unwrap().unwrap();
    assert_eq!((post.method, post.body), (Method::Post, BodyFraming::Length(187)));

    header("HTTP request head parsing; op = one head", "op");
    let mut buf = BytesMut::with_capacity(4096);
    for (label, head) in [("GET /sse (subscribe)", SUBSCRIBE), ("POST /v1/publish", PUBLISH)] {
        let iterations = 300_000;
        let ours = measure(&format!("ssekify parse (incl. refill) {label}"), iterations, || {
            buf.extend_from_slice(black_box(head));
            parse(&mut buf, LIMITS).unwrap().unwrap()
        });
        let refill = measure(&format!("  refill BytesMut only       {label}"), iterations, || {
            buf.extend_from_slice(black_box(head));
            let len = buf.len();
            buf.clear();
            len
        });
        let floor = measure(&format!("baseline httparse [_; {MAX_HEADERS_LIMIT}]   {label}"), iterations, || {
            httparse_only::<MAX_HEADERS_LIMIT>(black_box(head))
        });
        let small = measure(&format!("  httparse [_; 16]           {label}"), iterations, || {
            httparse_only::<16>(black_box(head))
        });
        ratio(&format!("parse {label} vs httparse alone"), ours, floor);
        println!(
            "     typed-request overhead: {:.0} ns (parse - refill - httparse); a 16-slot array saves {:.0} ns of the floor",
            ours.ns_per_op - refill.ns_per_op - floor.ns_per_op,
            floor.ns_per_op - small.ns_per_op
        );
    }
}
