//! The browser's reading of an event stream (WHATWG HTML, "Event stream
//! interpretation"), incrementally and without I/O: bytes in, dispatched
//! events out. The chaos client needs the browser's exact notion of which
//! frames set the last event id, so it parses fields rather than matching
//! the server's byte layout.

/// One dispatched frame (a blank line ended it).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// The frame's `id:` field, if it had one. A browser's last event id
    /// becomes this on dispatch, whatever the event's type.
    pub id: Option<String>,
    /// The `event:` field; `None` is the default type, `message`.
    pub event: Option<String>,
    /// Whether the frame had a `data:` field. Without one the browser fires
    /// no event (the id still counts).
    pub has_data: bool,
}

/// Parser state of one stream.
#[derive(Default)]
pub struct Parser {
    line: Vec<u8>,
    /// The last byte was CR: a following LF belongs to the same line end.
    after_cr: bool,
    frame: Event,
    /// The latest `retry:` value, in milliseconds.
    pub retry_ms: Option<u64>,
}

impl Parser {
    /// A new stream: a partial line or frame of the old one is forgotten;
    /// the reconnection time stays.
    pub fn restart(&mut self) {
        self.line.clear();
        self.after_cr = false;
        self.frame = Event::default();
    }

    /// Feeds bytes; calls `dispatch` for every frame they complete.
    pub fn feed(&mut self, bytes: &[u8], mut dispatch: impl FnMut(Event)) {
        for &byte in bytes {
            // Lines end at CRLF, LF or CR (the spec's `end-of-line`).
            match byte {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    self.end_line(&mut dispatch);
                }
                _ => {
                    self.after_cr = false;
                    self.line.push(byte);
                }
            }
        }
    }

    fn end_line(&mut self, dispatch: &mut impl FnMut(Event)) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            let frame = std::mem::take(&mut self.frame);
            if frame.id.is_some() || frame.has_data {
                dispatch(frame);
            }
        } else if line[0] != b':' {
            let (name, value) = match line.iter().position(|&b| b == b':') {
                Some(colon) => {
                    let value = &line[colon + 1..];
                    (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (&line[..], &[][..]),
            };
            let text = || String::from_utf8_lossy(value).into_owned();
            match name {
                b"event" => self.frame.event = Some(text()).filter(|e| e != "message"),
                b"data" => self.frame.has_data = true,
                // "If the field value does not contain U+0000 NULL".
                b"id" if !value.contains(&0) => self.frame.id = Some(text()),
                b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                    self.retry_ms = text().parse().ok();
                }
                _ => {}
            }
        }
        self.line = line;
        self.line.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> (Vec<Event>, Option<u64>) {
        let mut parser = Parser::default();
        let mut events = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, |e| events.push(e));
        }
        (events, parser.retry_ms)
    }

    #[test]
    fn frames_split_anywhere_and_any_line_end() {
        let stream = b"retry: 2000\n\nid: m-1\ndata: {\"a\":1}\n\n: ping\n\nevent: ssekify.gap\r\ndata: {}\r\n\r\nid: m-2\rdata: x\r\r";
        let whole = parse(&[stream]);
        let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(parse(&bytewise).0, whole.0);
        assert_eq!(whole.1, Some(2000));
        let ids: Vec<_> = whole.0.iter().map(|e| (e.id.as_deref(), e.event.as_deref())).collect();
        assert_eq!(ids, [(Some("m-1"), None), (None, Some("ssekify.gap")), (Some("m-2"), None)]);
    }

    #[test]
    fn an_id_without_data_still_counts_and_message_is_the_default_type() {
        let (events, _) = parse(&[b"id: m-3\n\nevent: message\ndata: y\n\n"]);
        assert_eq!(events[0], Event { id: Some("m-3".into()), event: None, has_data: false });
        assert_eq!(events[1], Event { id: None, event: None, has_data: true });
    }
}
