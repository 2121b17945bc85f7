//! A batch message read in one pass over its bytes when it has the shape
//! publishers send: an object whose member names and whose `user`, `room`,
//! `event` and `id` hold no escape, with `all` a boolean. The `data` value
//! and unknown members are checked as JSON (any value, escapes included)
//! without being built.
//!
//! serde_json's reading of a 100-byte message (a visitor over its members,
//! `data` validated on the way) was ~1,300 of the ~5,200 user-space
//! instructions a batch message to nobody costs (`benches/callgrind.py`).
//! Anything this scan does not take (another shape, an escape where it
//! would have to be decoded, JSON that is not valid, nesting past
//! [`MAX_DEPTH`]) gives `None`, and the caller reads the message with
//! serde_json, which also words every refusal: this scan never refuses.
//! `fuzz/fuzz_targets/batch_scan.rs` checks that whatever it takes,
//! serde_json reads the same.

use std::borrow::Cow;

use crate::text::json_string_stop;

/// A batch message's members as read, before its target is checked; a
/// repeated member keeps its last value.
#[derive(Default)]
pub struct Members<'a> {
    /// `user`.
    pub user: Option<Cow<'a, str>>,
    /// `room`.
    pub room: Option<Cow<'a, str>>,
    /// `event`.
    pub event: Option<Cow<'a, str>>,
    /// `id`.
    pub id: Option<Cow<'a, str>>,
    /// `all`.
    pub all: Option<bool>,
    /// `data`: the value's JSON text, as it stands in the message.
    pub data: Option<&'a str>,
}

/// Arrays and objects nested deeper than this in a member's value are left
/// to serde_json (the scan keeps a bit for each open one in a `u64`).
const MAX_DEPTH: u32 = 64;

/// One message: `text` is its object and whitespace, nothing else.
pub fn message(text: &str) -> Option<Members<'_>> {
    let mut scan = Scan::new(text);
    scan.whitespace();
    let members = scan.members()?;
    scan.whitespace();
    scan.at_end().then_some(members)
}

/// The first line of NDJSON `text` read in place: its message's members
/// and where the next line starts (past the LF), when the line is what
/// [`message`] takes. An LF ends the line, so here it is not whitespace:
/// anything else (a message over two lines, a blank line, another shape)
/// gives `None`, and the caller splits the line off and reads it as
/// before. Finding each line's end first was ~75 instructions a message.
pub fn line(text: &str) -> Option<(Members<'_>, usize)> {
    let mut scan = Scan { text, at: 0, lf_is_space: false };
    scan.whitespace();
    let members = scan.members()?;
    scan.whitespace();
    match scan.next() {
        None | Some(b'\n') => Some((members, scan.at)),
        Some(_) => None,
    }
}

/// True when `text` is one JSON value and whitespace (a single publish's
/// body); false says nothing: a value nested past [`MAX_DEPTH`] is left
/// to serde_json like everything else.
pub fn json(text: &str) -> bool {
    let mut scan = Scan::new(text);
    scan.whitespace();
    scan.value().is_some() && {
        scan.whitespace();
        scan.at_end()
    }
}

/// A JSON batch body that is `{"messages":[…]}` and whitespace, nothing
/// else, with at least one message: each message's members, in order.
pub fn list(text: &str) -> Option<Vec<Members<'_>>> {
    let mut scan = Scan::new(text);
    scan.whitespace();
    scan.eat(b'{')?;
    scan.whitespace();
    if scan.plain_string()? != "messages" {
        return None;
    }
    scan.whitespace();
    scan.eat(b':')?;
    scan.whitespace();
    scan.eat(b'[')?;
    let mut list = Vec::new();
    loop {
        scan.whitespace();
        list.push(scan.members()?);
        scan.whitespace();
        match scan.next()? {
            b',' => {}
            b']' => break,
            _ => return None,
        }
    }
    scan.whitespace();
    scan.eat(b'}')?;
    scan.whitespace();
    scan.at_end().then_some(list)
}

/// A position in valid UTF-8 text; every method that gives `None` leaves
/// the text to serde_json, so where it stopped does not matter.
struct Scan<'a> {
    text: &'a str,
    at: usize,
    /// False while a line is read in place ([`line`]): an LF ends it.
    lf_is_space: bool,
}

impl<'a> Scan<'a> {
    fn new(text: &'a str) -> Self {
        Scan { text, at: 0, lf_is_space: true }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn eat(&mut self, expected: u8) -> Option<()> {
        (self.next()? == expected).then_some(())
    }

    fn at_end(&self) -> bool {
        self.at == self.text.len()
    }

    /// JSON's whitespace: space, tab, LF (unless it ends a line), CR.
    fn whitespace(&mut self) {
        while let Some(byte) = self.peek() {
            match byte {
                b' ' | b'\t' | b'\r' => {}
                b'\n' if self.lf_is_space => {}
                _ => return,
            }
            self.at += 1;
        }
    }

    /// A string without escapes: its text between the quotes.
    fn plain_string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        self.at += json_string_stop(&self.text.as_bytes()[start..]);
        let text = self.text.get(start..self.at)?;
        self.eat(b'"')?;
        Some(text)
    }

    /// The members of an object, which starts here.
    fn members(&mut self) -> Option<Members<'a>> {
        self.eat(b'{')?;
        self.whitespace();
        let mut members = Members::default();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(members);
        }
        loop {
            let name = self.plain_string()?;
            self.whitespace();
            self.eat(b':')?;
            self.whitespace();
            match name {
                "user" => members.user = Some(Cow::Borrowed(self.plain_string()?)),
                "room" => members.room = Some(Cow::Borrowed(self.plain_string()?)),
                "event" => members.event = Some(Cow::Borrowed(self.plain_string()?)),
                "id" => members.id = Some(Cow::Borrowed(self.plain_string()?)),
                "all" => members.all = Some(self.boolean()?),
                "data" => {
                    let start = self.at;
                    self.value()?;
                    members.data = Some(self.text.get(start..self.at)?);
                }
                _ => self.value()?,
            }
            self.whitespace();
            match self.next()? {
                b',' => self.whitespace(),
                b'}' => return Some(members),
                _ => return None,
            }
        }
    }

    fn boolean(&mut self) -> Option<bool> {
        match self.peek()? {
            b't' => self.literal("true").map(|()| true),
            b'f' => self.literal("false").map(|()| false),
            _ => None,
        }
    }

    /// Any JSON value, checked, not built. Arrays and objects are followed
    /// without recursion, up to [`MAX_DEPTH`] open at once: a bit for each
    /// open one says whether it is an object, the innermost lowest.
    fn value(&mut self) -> Option<()> {
        let mut objects: u64 = 0;
        let mut depth = 0;
        loop {
            match self.peek()? {
                b'"' => self.string()?,
                open @ (b'{' | b'[') => {
                    if depth == MAX_DEPTH {
                        return None;
                    }
                    self.at += 1;
                    self.whitespace();
                    let object = open == b'{';
                    if self.peek()? == if object { b'}' } else { b']' } {
                        self.at += 1;
                    } else {
                        objects = objects << 1 | u64::from(object);
                        depth += 1;
                        if object {
                            self.member_name()?;
                        }
                        continue;
                    }
                }
                b't' => self.literal("true")?,
                b'f' => self.literal("false")?,
                b'n' => self.literal("null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return None,
            }
            // A value has ended: the next one of its container, or the
            // container's end, which ends a value in turn.
            loop {
                if depth == 0 {
                    return Some(());
                }
                self.whitespace();
                let object = objects & 1 == 1;
                match self.next()? {
                    b',' => {
                        self.whitespace();
                        if object {
                            self.member_name()?;
                        }
                        break;
                    }
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return None,
                }
                objects >>= 1;
                depth -= 1;
            }
        }
    }

    /// An object member's name and its colon, and the whitespace after each.
    fn member_name(&mut self) -> Option<()> {
        self.string()?;
        self.whitespace();
        self.eat(b':')?;
        self.whitespace();
        Some(())
    }

    /// A string, escapes checked as serde_json checks a string it skips
    /// (a `\u` escape's four hex digits, not what they name).
    fn string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            self.at += json_string_stop(&self.text.as_bytes()[self.at..]);
            match self.next()? {
                b'"' => return Some(()),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        for _ in 0..4 {
                            self.next().filter(u8::is_ascii_hexdigit)?;
                        }
                    }
                    _ => return None,
                },
                _ => return None,
            }
        }
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.at + word.len();
        (self.text.as_bytes().get(self.at..end)? == word.as_bytes()).then(|| self.at = end)
    }

    /// `-`? (`0` | a non-zero digit and digits) (`.` digits)? (`e` or `E`,
    /// a sign?, digits)?
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        self.next().filter(u8::is_ascii_digit)?;
        self.digits();
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_message_is_read_with_its_data_as_it_stands() {
        let text =
            r#" {"user":"alice", "event":"chat","id":"7" ,"data" : {"a":[1,-2.5e+3,true,null,"x\"\u00e9"]},"x":{}}"#;
        let members = message(text).expect("plain");
        assert_eq!(members.user.as_deref(), Some("alice"));
        assert_eq!(members.event.as_deref(), Some("chat"));
        assert_eq!(members.id.as_deref(), Some("7"));
        assert_eq!(members.data, Some(r#"{"a":[1,-2.5e+3,true,null,"x\"\u00e9"]}"#));
        let members = message("{\"all\":false,\"all\":true,\"data\":\"hi\"}\r").expect("plain");
        assert_eq!((members.all, members.data), (Some(true), Some("\"hi\"")));
        assert!(message("{}").is_some(), "no members: serde_json would read none either");
        let nested = r#"{"data":[{"k":[1,{"j":{},"i":[[],[2]]}]},[],{"":null}], "user":"b"}"#;
        assert_eq!(message(nested).expect("plain").data, Some(&nested[8..nested.len() - 13]));
    }

    #[test]
    fn a_line_is_read_in_place_only_when_it_ends_where_its_message_does() {
        let text = "{\"user\":\"a\",\"data\":1} \r\n{\"user\":\"b\",\"data\":[1,\n2]}\n{\"room\":\"r\",\"data\":2}";
        let (first, next) = line(text).expect("the first line is one message");
        assert_eq!((first.user.as_deref(), first.data), (Some("a"), Some("1")));
        assert_eq!(&text[next..next + 11], "{\"user\":\"b\"", "the next line starts past the LF");
        // Its data goes on to the next line: as two lines, neither is a message.
        assert!(line(&text[next..]).is_none());
        assert!(message(text[next..].split('\n').next().unwrap()).is_none());
        let last = &text[text.rfind('\n').unwrap() + 1..];
        let (members, end) = line(last).expect("the last line, without an LF");
        assert_eq!((members.room.as_deref(), end), (Some("r"), last.len()));
        assert!(line("\n{\"user\":\"a\",\"data\":1}").is_none(), "a blank line first");
        assert!(line("{\"user\":\"a\",\"data\":1} x\n").is_none(), "something after the message");
        assert!(line("{\"user\":\"a\",\n\"data\":1}\n").is_none(), "an LF between members");
    }

    #[test]
    fn what_would_need_decoding_or_wording_a_refusal_is_left_to_serde_json() {
        for text in [
            r#"{"us\u0065r":"a","data":1}"#,
            r#"{"user":"a\nb","data":1}"#,
            r#"{"user":1,"data":1}"#,
            r#"{"all":"yes","data":1}"#,
            r#"{"all":null,"data":1}"#,
            r#"{"user":"a","data":01}"#,
            r#"{"user":"a","data":1.}"#,
            r#"{"user":"a","data":-}"#,
            r#"{"user":"a","data":1e}"#,
            r#"{"user":"a","data":"\x"}"#,
            r#"{"user":"a","data":"\u12g4"}"#,
            "{\"user\":\"a\",\"data\":\"tab\there\"}",
            r#"{"user":"a","data":[1,]}"#,
            r#"{"user":"a","data":{"k":1,}}"#,
            r#"{"user":"a","data":{"k"}}"#,
            r#"{"user":"a","data":[1}}"#,
            r#"{"user":"a","data":{"k":1]}"#,
            r#"{"user":"a","data":[{"k":[1,{"j":2]]}]}"#,
            r#"{"user":"a","data":[[],{}],]}"#,
            r#"{"user":"a","data":tru}"#,
            r#"{"user":"a","data":1,}"#,
            r#"{"user":"a","data":1} x"#,
            r#"{"user":"a","data":1"#,
            "[1]",
            "",
        ] {
            assert!(message(text).is_none(), "{text}");
        }
        let deep = format!(r#"{{"user":"a","data":{}{}}}"#, "[".repeat(65), "]".repeat(65));
        assert!(message(&deep).is_none(), "nesting past MAX_DEPTH");
        let deep = format!(r#"{{"user":"a","data":{}{}}}"#, "[".repeat(64), "]".repeat(64));
        assert!(message(&deep).is_some(), "nesting up to MAX_DEPTH");
    }

    #[test]
    fn a_whole_json_text_is_taken_only_when_valid() {
        for text in [" {\"a\":[1,\"x\"]} ", "\"hi\"", "-0.5e3", "[]", "null"] {
            assert!(json(text), "{text}");
        }
        for text in ["", " ", "{\"a\":1", "[1,]", "\"a\" \"b\"", "01", "{\"a\":1}x", "nul"] {
            assert!(!json(text), "{text}");
        }
    }

    #[test]
    fn a_json_batch_is_read_only_when_it_is_the_messages_array_alone() {
        let list = list(r#" {"messages": [ {"user":"a","data":1} , {"room":"r","data":"x"} ] } "#).expect("plain");
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].room.as_deref(), Some("r"));
        for text in [
            r#"{"messages":[]}"#,
            r#"{"other":1,"messages":[{"user":"a","data":1}]}"#,
            r#"{"messages":[{"user":"a","data":1}],"other":1}"#,
            r#"{"messages":[{"user":"a","data":1},2]}"#,
            r#"{"messages":[{"user":"a","data":1}]}x"#,
            r#"{"messages":{"user":"a","data":1}}"#,
        ] {
            assert!(super::list(text).is_none(), "{text}");
        }
    }
}
