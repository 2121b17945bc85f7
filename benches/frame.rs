//! SSE frame encoding: `ssekify::sse::frame::encode` (one pre-sized `BytesMut`,
//! frozen into shared `Bytes`) against a naive encoder that builds a `String`
//! with one `format!` per line and converts it to `Bytes`, as a simple server
//! would.
//!
//! Run: `cargo bench --bench frame`

mod common;

use std::hint::black_box;

use bytes::Bytes;
use common::{header, measure, ratio};
use ssekify::sse::frame::encode;

/// A generated id has this shape (31 bytes, see `sse::id`).
const ID: &str = "1795996800000-0a1b2c3d-0000002a";
const EVENT: Option<&str> = Some("chat");

/// What a simple server does: a `String` grown one `format!` at a time.
/// It is handed `&str` for free (a real one would validate UTF-8 first), and
/// `str::lines` does not split on a bare CR; the payloads here have none.
fn naive_encode(id: &str, event: Option<&str>, data: &str) -> Bytes {
    let mut out = String::new();
    out += &format!("id: {id}\n");
    if let Some(event) = event {
        out += &format!("event: {event}\n");
    }
    for line in data.lines() {
        out += &format!("data: {line}\n");
    }
    out.push('\n');
    Bytes::from(out)
}

/// JSON-looking ASCII text of exactly `len` bytes, with a LF every `line`
/// bytes (none when `line` is 0).
fn payload(len: usize, lines: usize) -> String {
    let unit =
        r#"{"type":"chat","room":"team-42","from":"u_8f3a2c91","text":"the quick brown fox jumps over the lazy dog"},"#;
    let mut text: Vec<u8> = unit.bytes().cycle().take(len).collect();
    if lines > 1 {
        let step = len / lines;
        for k in 1..lines {
            text[k * step] = b'\n';
        }
    }
    String::from_utf8(text).unwrap()
}

fn main() {
    let cases = [
        ("100 B, 1 line", payload(100, 1), 1_000_000u64),
        ("1 KiB, 10 lines", payload(1024, 10), 200_000),
        ("64 KiB, 1 line", payload(64 * 1024, 1), 4_000),
    ];
    for (label, data, _) in &cases {
        let ours = encode(ID, EVENT, data.as_bytes());
        assert_eq!(ours, naive_encode(ID, EVENT, data), "both encoders agree on {label}");
        assert_eq!(data.lines().count(), if label.contains("10 lines") { 10 } else { 1 });
    }

    header("SSE frame encoding (id 31 B, event \"chat\"); op = one frame", "op");
    let mut pairs = Vec::new();
    for (label, data, iterations) in &cases {
        let ours = measure(&format!("ssekify encode        {label}"), *iterations, || {
            encode(black_box(ID), black_box(EVENT), black_box(data.as_bytes()))
        });
        let naive = measure(&format!("baseline format! enc. {label}"), *iterations, || {
            naive_encode(black_box(ID), black_box(EVENT), black_box(data.as_str()))
        });
        ratio(&format!("encode {label}"), ours, naive);
        pairs.push((label, ours, naive));
    }

    println!();
    println!("Throughput of payload bytes (from the medians above):");
    for (label, ours, naive) in pairs {
        let bytes = cases.iter().find(|c| c.0 == *label).unwrap().1.len() as f64;
        println!(
            "  {label:<16} ssekify {:>8.2} GB/s   baseline {:>8.2} GB/s",
            bytes / ours.ns_per_op,
            bytes / naive.ns_per_op
        );
    }
}
