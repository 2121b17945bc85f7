//! Encodes one published message into one SSE frame, once, as shared `Bytes`.
//!
//! Every recipient on every shard gets a clone of the same `Bytes` (a reference
//! count), so the cost of encoding is paid once per message, not per recipient.
//! Field rules follow the WHATWG HTML "Server-sent events" parsing algorithm:
//! lines end at CRLF, LF or CR, so a payload line break of any kind becomes a
//! new `data:` line and the browser rejoins them with LF. Control frames (the
//! shutdown announcement, the gap notice) follow the same rules without an id.

use bytes::{BufMut, Bytes, BytesMut};

use super::one_allocation;
pub use super::one_allocation::prefetch_for_drop;

/// The heartbeat comment; static, so a ping costs no allocation.
pub const PING: Bytes = Bytes::from_static(b": ping\n\n");

/// Why a field cannot go into a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldError {
    /// CR, LF or NUL would end or corrupt the field line.
    LineBreakOrNul,
}

/// Event names and ids are single-line fields: CR/LF would start a new field and
/// NUL makes browsers ignore the id (WHATWG: "If the field value does not contain
/// U+0000 NULL, then set the last event ID buffer").
pub fn check_field(value: &str) -> Result<(), FieldError> {
    if crate::text::plain_field(value.as_bytes()) || !value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        Ok(())
    } else {
        Err(FieldError::LineBreakOrNul)
    }
}

/// Encodes `id`, `event` (omitted when absent or `message`, the browser's default)
/// and `data` split into lines. Fields must have passed [`check_field`].
/// A payload of one line (what a JSON payload is) up to
/// [`one_allocation::LARGEST`] makes a frame that is one allocation with its
/// reference count, so the queues and the ring that hold it add nothing;
/// longer payloads and payloads of several lines are encoded into a buffer
/// sized for one line, which grows only for more.
pub fn encode(id: &str, event: Option<&str>, data: &[u8]) -> Bytes {
    let one_line = 4 + id.len() + 1 + one_line_body_len(event, data);
    if one_line <= one_allocation::LARGEST && !crate::text::has_line_break(data) {
        return one_allocation_frame(one_line, id, event, data);
    }
    let mut out = BytesMut::with_capacity(one_line);
    put_id(&mut out, id);
    put_body(&mut out, event, data);
    out.freeze()
}

/// [`encode`] for `line`, data its caller knows holds no CR or LF (a batch
/// message's, as the scan of its JSON saw it): one `data:` line, without
/// the search for a break.
pub fn encode_line(id: &str, event: Option<&str>, line: &[u8]) -> Bytes {
    debug_assert!(!crate::text::has_line_break(line), "a line holds no CR or LF");
    let len = 4 + id.len() + 1 + one_line_body_len(event, line);
    match len <= one_allocation::LARGEST {
        true => one_allocation_frame(len, id, event, line),
        // Too long for one allocation: `encode` then searches nothing either.
        false => encode(id, event, line),
    }
}

/// A frame of one `data:` line, `len` bytes, in one allocation with its count.
fn one_allocation_frame(len: usize, id: &str, event: Option<&str>, line: &[u8]) -> Bytes {
    one_allocation::frame(len, |out| {
        put_id(out, id);
        put_event(out, event);
        put_data_line(out, line);
        out.put_u8(b'\n');
    })
}

/// The `id:` line.
fn put_id(out: &mut impl BufMut, id: &str) {
    out.put_slice(b"id: ");
    out.put_slice(id.as_bytes());
    out.put_u8(b'\n');
}

/// Bytes [`put_packed`] writes for these fields.
pub fn packed_len(id: &str, event: Option<&str>, data: &[u8]) -> usize {
    2 + id.len() + 2 + event.map_or(0, str::len) + 4 + data.len()
}

/// Writes a message's id, event and data in the form [`encode_packed`]
/// reads, as a bus log entry carries them. Fields must have passed the
/// HTTP edge's checks (their lengths fit the prefixes).
pub fn put_packed(out: &mut BytesMut, id: &str, event: Option<&str>, data: &[u8]) {
    out.put_u16(id.len() as u16);
    out.put_slice(id.as_bytes());
    let event = event.unwrap_or_default();
    out.put_u16(event.len() as u16);
    out.put_slice(event.as_bytes());
    out.put_u32(data.len() as u32);
    out.put_slice(data);
}

/// Encodes the frame of a message whose id, event and data come packed as a
/// bus log entry carries them: `u16` id length, id, `u16` event length,
/// event (none when 0), `u32` data length, data, lengths big-endian, nothing
/// after. A shard encodes the frames of the bus's messages itself from this
/// part of their entry (already checked by the bus thread), so each frame is
/// allocated and freed by one thread, through its allocator's per-thread
/// cache: a frame the bus thread made and a shard freed went through
/// glibc's locked bins every time. `None` for bytes not in that form.
pub fn encode_packed(packed: &[u8]) -> Option<Bytes> {
    let (id, rest) = short_field(packed)?;
    let (event, rest) = short_field(rest)?;
    let (len, data) = rest.split_first_chunk::<4>()?;
    if data.len() != u32::from_be_bytes(*len) as usize {
        return None;
    }
    let id = crate::text::utf8(id)?;
    let event = match event {
        [] => None,
        event => Some(crate::text::utf8(event)?),
    };
    Some(encode(id, event, data))
}

/// A field with a `u16` length before it, and the bytes after it.
fn short_field(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<2>()?;
    rest.split_at_checked(usize::from(u16::from_be_bytes(*len)))
}

/// Encodes a control frame (the shutdown announcement, the gap notice): like
/// [`encode`] but with no `id:` line, so a browser's last event id stays that
/// of the last message it got and its reconnect resumes from there.
pub fn encode_control(event: &str, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(one_line_body_len(Some(event), data));
    put_body(&mut out, Some(event), data);
    out.freeze()
}

/// The length [`encode`] gives these fields, found without encoding them,
/// so a publish checks `--max-payload` before its frame is made (at
/// delivery). The data's line breaks are looked for only when the data
/// could hold enough of them to matter: each adds at most 6 bytes.
pub fn encoded_len_over(id: &str, event: Option<&str>, data: &[u8], limit: usize) -> Option<usize> {
    let head = 4 + id.len() + 1;
    if head + one_line_body_len(event, data) + 6 * data.len() <= limit {
        return None;
    }
    let event = event.filter(|e| *e != "message").map_or(0, |event| 7 + event.len() + 1);
    let len = head + event + Lines::new(data).map(|line| 6 + line.len() + 1).sum::<usize>() + 1;
    (len > limit).then_some(len)
}

/// Length of what [`put_body`] writes when `data` is one line.
fn one_line_body_len(event: Option<&str>, data: &[u8]) -> usize {
    let event = event.filter(|e| *e != "message").map_or(0, |event| 7 + event.len() + 1);
    event + 6 + data.len() + 1 + 1
}

/// The `event:` line, the `data:` lines and the blank line ending a frame.
fn put_body(out: &mut BytesMut, event: Option<&str>, data: &[u8]) {
    put_event(out, event);
    for line in Lines::new(data) {
        put_data_line(out, line);
    }
    out.put_u8(b'\n');
}

/// The `event:` line, none for the browser's default.
fn put_event(out: &mut impl BufMut, event: Option<&str>) {
    if let Some(event) = event.filter(|e| *e != "message") {
        out.put_slice(b"event: ");
        out.put_slice(event.as_bytes());
        out.put_u8(b'\n');
    }
}

/// One `data:` line; `line` holds no line break.
fn put_data_line(out: &mut impl BufMut, line: &[u8]) {
    out.put_slice(b"data: ");
    out.put_slice(line);
    out.put_u8(b'\n');
}

/// The `retry:` preamble every stream starts with.
pub fn retry(millis: u128) -> Bytes {
    Bytes::from(format!("retry: {millis}\n\n"))
}

/// Splits on CRLF, CR and LF; yields a final empty line after a trailing break,
/// and one empty line for empty input (so an empty payload still dispatches).
struct Lines<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Lines<'a> {
    fn new(data: &'a [u8]) -> Self {
        Lines { rest: Some(data) }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        match memchr::memchr2(b'\n', b'\r', rest) {
            None => {
                self.rest = None;
                Some(rest)
            }
            Some(at) => {
                let skip = if rest[at] == b'\r' && rest.get(at + 1) == Some(&b'\n') { 2 } else { 1 };
                self.rest = Some(&rest[at + skip..]);
                Some(&rest[..at])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: &str, event: Option<&str>, data: &str) -> String {
        String::from_utf8(encode(id, event, data.as_bytes()).to_vec()).unwrap()
    }

    #[test]
    fn a_frames_length_is_known_before_it_is_encoded() {
        for data in ["", "x", "a\nb", "a\r\nb\rc\n", "\n\n\n", &"y".repeat(300), &"\r\n".repeat(50)] {
            for event in [None, Some("message"), Some("chat")] {
                let len = encode("42", event, data.as_bytes()).len();
                for limit in [0, len - 1, len, len + 1, 10 * len] {
                    let over = encoded_len_over("42", event, data.as_bytes(), limit);
                    assert_eq!(over, (len > limit).then_some(len), "{data:?} {event:?} limit {limit}");
                }
            }
        }
    }

    /// Fields of every shape a frame has: events left out or not, data of
    /// no line, one line, and lines broken every way.
    const SHAPES: [(&str, Option<&str>, &str); 9] = [
        ("7", None, "{}"),
        ("1", Some("message"), "hello"),
        ("1700000000000-000001-00ab", Some("notify"), "{\"a\":1}"),
        ("x", None, ""),
        ("x", Some("e"), "a\nb"),
        ("x", None, "a\r\nb\rc\n"),
        ("x", None, "\r\n"),
        ("x", Some("ë"), "a\r\rb"),
        ("naïve", None, "\n\n\n"),
    ];

    #[test]
    fn packed_fields_encode_as_the_fields_do_and_nothing_else_is_read() {
        let packed = |id: &[u8], event: &[u8], data: &[u8]| {
            let mut out = Vec::new();
            out.extend_from_slice(&(id.len() as u16).to_be_bytes());
            out.extend_from_slice(id);
            out.extend_from_slice(&(event.len() as u16).to_be_bytes());
            out.extend_from_slice(event);
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(data);
            out
        };
        for (id, event, data) in SHAPES {
            let mut out = BytesMut::new();
            put_packed(&mut out, id, event, data.as_bytes());
            assert_eq!(out.len(), packed_len(id, event, data.as_bytes()));
            assert_eq!(encode_packed(&out), Some(encode(id, event, data.as_bytes())), "{id:?} {event:?} {data:?}");
        }
        assert_eq!(encode_packed(&packed(b"7", b"", b"{}")), Some(encode("7", None, b"{}")));
        assert_eq!(encode_packed(&packed(b"7", b"n", b"a\nb")), Some(encode("7", Some("n"), b"a\nb")));
        let whole = packed(b"7", b"n", b"data");
        for len in 0..whole.len() {
            assert_eq!(encode_packed(&whole[..len]), None, "cut at {len}");
        }
        let mut longer = whole.clone();
        longer.push(b'x');
        assert_eq!(encode_packed(&longer), None, "a byte after the data");
        assert_eq!(encode_packed(&packed(&[0xff], b"", b"")), None, "an id that is not UTF-8");
    }

    #[test]
    fn single_line() {
        assert_eq!(frame("1", None, "hello"), "id: 1\ndata: hello\n\n");
        assert_eq!(frame("1", Some("message"), "hello"), "id: 1\ndata: hello\n\n");
        assert_eq!(frame("7", Some("notify"), "{\"a\":1}"), "id: 7\nevent: notify\ndata: {\"a\":1}\n\n");
    }

    #[test]
    fn one_line_frames_read_the_same_on_either_side_of_the_longest_made_in_one_allocation() {
        for len in 980..1020 {
            let data = "y".repeat(len);
            let made = frame("1", Some("e"), &data);
            assert_eq!(made, format!("id: 1\nevent: e\ndata: {data}\n\n"));
            assert!((made.len() <= one_allocation::LARGEST) == (len <= 1001), "both ways are tried");
            assert_eq!(encode_line("1", Some("e"), data.as_bytes()), made, "a known line frames alike");
        }
    }

    #[test]
    fn every_line_break_splits() {
        assert_eq!(frame("1", None, "a\nb"), "id: 1\ndata: a\ndata: b\n\n");
        assert_eq!(frame("1", None, "a\r\nb"), "id: 1\ndata: a\ndata: b\n\n");
        assert_eq!(frame("1", None, "a\rb"), "id: 1\ndata: a\ndata: b\n\n");
        assert_eq!(frame("1", None, "a\r\rb"), "id: 1\ndata: a\ndata: \ndata: b\n\n");
    }

    #[test]
    fn trailing_and_empty_lines_are_kept() {
        assert_eq!(frame("1", None, "a\n"), "id: 1\ndata: a\ndata: \n\n");
        assert_eq!(frame("1", None, ""), "id: 1\ndata: \n\n");
        assert_eq!(frame("1", None, "\r\n"), "id: 1\ndata: \ndata: \n\n");
    }

    #[test]
    fn control_frames_have_no_id_line_and_split_data_alike() {
        let control =
            |event: &str, data: &str| String::from_utf8(encode_control(event, data.as_bytes()).to_vec()).unwrap();
        assert_eq!(
            control("server:shutdown", "{\"graceMs\":5000}"),
            "event: server:shutdown\ndata: {\"graceMs\":5000}\n\n"
        );
        assert_eq!(control("ssekify.gap", "a\r\nb\rc\n"), "event: ssekify.gap\ndata: a\ndata: b\ndata: c\ndata: \n\n");
        assert_eq!(control("message", ""), "data: \n\n", "the default event name is left out, as in encode");
        let message = frame("7", Some("x"), "a\nb");
        assert_eq!(message.strip_prefix("id: 7\n"), Some(control("x", "a\nb").as_str()));
    }

    #[test]
    fn fields_reject_breaks_and_nul() {
        assert!(check_field("ok name").is_ok());
        assert!(check_field("a\nb").is_err());
        assert!(check_field("a\rb").is_err());
        assert!(check_field("a\0b").is_err());
        assert_eq!(check_field("naïve-id"), Ok(()), "not ASCII, still a valid field");
        assert_eq!(check_field("naïve\nid"), Err(FieldError::LineBreakOrNul));
    }
}
