//! Self-tests of the end-to-end harness (no server): the EventSource parser
//! and the HTTP response parser, including input split at every byte.

mod common;

use common::*;

fn items(chunks: &[&[u8]]) -> Vec<SseItem> {
    let mut parser = SseParser::default();
    let mut out = Vec::new();
    for chunk in chunks {
        parser.push(chunk);
        while let Some(item) = parser.next_item() {
            out.push(item);
        }
    }
    out
}

fn ev(id: Option<&str>, event: Option<&str>, data: &str) -> SseItem {
    SseItem::Event(SseEvent { id: id.map(str::to_string), event: event.map(str::to_string), data: data.to_string() })
}

const STREAM: &[u8] = b"retry: 2000\n\n: ping\n\nid: 1\nevent: e\ndata: a\ndata: b\n\n\
id: 2\r\ndata:no space\r\ndata:  two spaces\r\n\r\n\
id: 3\rdata: cr\r\rid: only-id\n\ndata\n\n: c\n\ndata: x\nignored-field: y\n\n";

fn expected() -> Vec<SseItem> {
    vec![
        SseItem::Retry(2000),
        SseItem::Comment("ping".into()),
        ev(Some("1"), Some("e"), "a\nb"),
        ev(Some("2"), None, "no space\n two spaces"),
        ev(Some("3"), None, "cr"),
        ev(None, None, ""),
        SseItem::Comment("c".into()),
        ev(None, None, "x"),
    ]
}

#[test]
fn sse_parser_follows_the_whatwg_rules() {
    assert_eq!(items(&[STREAM]), expected());
}

#[test]
fn sse_parser_handles_every_split_point() {
    for split in 0..=STREAM.len() {
        let (a, b) = STREAM.split_at(split);
        assert_eq!(items(&[a, b]), expected(), "split at {split}");
    }
    let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
    assert_eq!(items(&bytes), expected());
}

#[test]
fn sse_parser_keeps_the_last_event_id() {
    let mut parser = SseParser::default();
    parser.push(b"id: 7\ndata: x\n\nid: 8\n\n");
    while parser.next_item().is_some() {}
    assert_eq!(parser.last_event_id, "8");
}

#[test]
fn response_parser_handles_lengths_chunks_and_pipelines() {
    let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhi\
HTTP/1.1 204 No Content\r\n\r\n\
HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n1;x=y\r\nd\r\n0\r\n\r\n\
HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    let responses = parse_responses(raw);
    let summary: Vec<(u16, Vec<u8>)> = responses.iter().map(|r| (r.status, r.body.clone())).collect();
    assert_eq!(summary, vec![(200, b"hi".to_vec()), (204, vec![]), (200, b"abcd".to_vec()), (404, vec![]),]);
    assert_eq!(responses[0].header("x-a"), Some("b"));
    assert_eq!(responses[0].header("X-A"), Some("b"));
    // A truncated response is left out.
    assert_eq!(parse_responses(&raw[..raw.len() - 3]).len(), 3);
}

#[test]
fn generated_id_shape() {
    assert!(is_generated_id("1700000000000-0a1b2c3d-00000001"));
    assert!(!is_generated_id("1700000000000-0A1B2C3D-00000001"));
    assert!(!is_generated_id("170000000000-0a1b2c3d-00000001"));
    assert!(!is_generated_id("1700000000000-0a1b2c3d-0000001"));
    assert!(!is_generated_id("1700000000000-0a1b2c3d"));
}

#[test]
fn percent_encoding_and_paths() {
    assert_eq!(pct("a b/é"), "a%20b%2F%C3%A9");
    assert_eq!(sse_path("", &[]), "/sse");
    assert_eq!(sse_path("u 1", &["r", "s/t"]), "/sse?userId=u%201&rooms=r,s%2Ft");
}
