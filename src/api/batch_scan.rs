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

use crate::text::{digit_run, json_stops, json_string_stop};

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
    /// True when the scan saw that `data`'s text holds no CR or LF, so its
    /// frame needs no search for one; false says nothing (serde_json's
    /// reading leaves it so).
    pub data_is_one_line: bool,
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
    // Room for a message every 96 bytes, less than one with a 100-byte
    // payload and its user take (~125): grown from empty, a batch of 100
    // such was moved six times (~30 instructions a message).
    let mut list = Vec::with_capacity(text.len() / 96 + 1);
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
        self.at = whitespace_end(self.text.as_bytes(), self.at, self.lf_is_space);
    }

    /// A string without escapes: its text between the quotes.
    fn plain_string(&mut self) -> Option<&'a str> {
        let (text, end) = plain_string_at(self.text, self.at)?;
        self.at = end;
        Some(text)
    }

    /// The members of an object, which starts here.
    fn members(&mut self) -> Option<Members<'a>> {
        let (text, lf_is_space) = (self.text, self.lf_is_space);
        let bytes = text.as_bytes();
        if *bytes.get(self.at)? != b'{' {
            return None;
        }
        let mut at = whitespace_end(bytes, self.at + 1, lf_is_space);
        let mut members = Members::default();
        if *bytes.get(at)? == b'}' {
            self.at = at + 1;
            return Some(members);
        }
        loop {
            let name = match compact_name(bytes, at) {
                Some((name, value_at)) => {
                    at = whitespace_end(bytes, value_at, lf_is_space);
                    name
                }
                None => {
                    let (name, end) = plain_string_at(text, at)?;
                    at = whitespace_end(bytes, end, lf_is_space);
                    if *bytes.get(at)? != b':' {
                        return None;
                    }
                    at = whitespace_end(bytes, at + 1, lf_is_space);
                    Name::of(name)
                }
            };
            let plain = |member: &mut Option<Cow<'a, str>>| {
                let (value, end) = plain_string_at(text, at)?;
                *member = Some(Cow::Borrowed(value));
                Some(end)
            };
            at = match name {
                Name::User => plain(&mut members.user)?,
                Name::Room => plain(&mut members.room)?,
                Name::Event => plain(&mut members.event)?,
                Name::Id => plain(&mut members.id)?,
                Name::All => {
                    let (all, word) = match *bytes.get(at)? {
                        b't' => (true, "true"),
                        b'f' => (false, "false"),
                        _ => return None,
                    };
                    members.all = Some(all);
                    literal_end(bytes, at, word.as_bytes())?
                }
                Name::Data => {
                    let (end, breaks) = value_end(bytes, at, lf_is_space)?;
                    members.data = Some(text.get(at..end)?);
                    members.data_is_one_line = !breaks;
                    end
                }
                Name::Other => value_end(bytes, at, lf_is_space)?.0,
            };
            at = whitespace_end(bytes, at, lf_is_space);
            match *bytes.get(at)? {
                b',' => at = whitespace_end(bytes, at + 1, lf_is_space),
                b'}' => {
                    self.at = at + 1;
                    return Some(members);
                }
                _ => return None,
            }
        }
    }

    /// Any JSON value, checked, not built (see [`value_end`]).
    fn value(&mut self) -> Option<()> {
        self.at = value_end(self.text.as_bytes(), self.at, self.lf_is_space)?.0;
        Some(())
    }
}

/// A message member's name, as far as the reading tells them apart.
#[derive(Clone, Copy)]
enum Name {
    User,
    Room,
    Event,
    Id,
    All,
    Data,
    Other,
}

impl Name {
    fn of(name: &str) -> Name {
        match name {
            "user" => Name::User,
            "room" => Name::Room,
            "event" => Name::Event,
            "id" => Name::Id,
            "all" => Name::All,
            "data" => Name::Data,
            _ => Name::Other,
        }
    }
}

/// A member's name and colon as compact JSON writes them (`"user":`, no
/// space), recognised in the eight bytes at `at` by comparing words, and
/// where its value starts. Read as a string, matched and followed by its
/// colon, a name cost ~60 instructions; `None` leaves it to that reading.
#[inline(always)]
fn compact_name(bytes: &[u8], at: usize) -> Option<(Name, usize)> {
    let word = u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?);
    // The first `N` bytes of `name`, as they are in the word.
    const fn head<const N: usize>(name: &[u8; N]) -> (u64, u64) {
        let mut padded = [0; 8];
        let mut i = 0;
        while i < N {
            padded[i] = name[i];
            i += 1;
        }
        (u64::from_le_bytes(padded), u64::MAX >> (64 - 8 * N))
    }
    const NAMES: [((u64, u64), Name); 6] = [
        (head(b"\"user\":"), Name::User),
        (head(b"\"data\":"), Name::Data),
        (head(b"\"room\":"), Name::Room),
        (head(b"\"event\":"), Name::Event),
        (head(b"\"id\":"), Name::Id),
        (head(b"\"all\":"), Name::All),
    ];
    NAMES.iter().find(|((name, mask), _)| word & mask == *name).map(|((_, mask), name)| {
        let len = (64 - mask.leading_zeros()) as usize / 8;
        (*name, at + len)
    })
}

/// The text of the string without escapes at `at` (its opening quote),
/// and where it ends, past its closing quote.
#[inline(always)]
fn plain_string_at(text: &str, at: usize) -> Option<(&str, usize)> {
    let bytes = text.as_bytes();
    if *bytes.get(at)? != b'"' {
        return None;
    }
    let end = at + 1 + json_string_stop(bytes.get(at + 1..)?);
    if *bytes.get(end)? != b'"' {
        return None;
    }
    Some((text.get(at + 1..end)?, end + 1))
}

// The reading of a value works on the bytes and an index held in a
// register, each step a function from where it starts to where it ends:
// as methods updating the scan's position, a 100-byte payload's value cost
// ~860 instructions (the position stored and loaded around every call,
// every byte read through an `Option`).

/// Where JSON whitespace from `at` ends: space, tab, CR, and LF unless
/// `lf_is_space` is false (a line read in place ends at one).
#[inline(always)]
fn whitespace_end(bytes: &[u8], at: usize, lf_is_space: bool) -> usize {
    whitespace_end_noting_breaks(bytes, at, lf_is_space, &mut false)
}

/// [`whitespace_end`], setting `breaks` when the whitespace holds a CR or
/// an LF: inside a value the only place JSON allows one.
#[inline(always)]
fn whitespace_end_noting_breaks(bytes: &[u8], mut at: usize, lf_is_space: bool, breaks: &mut bool) -> usize {
    while let Some(&byte) = bytes.get(at) {
        // Most places have none: one comparison says so.
        if byte > b' ' {
            break;
        }
        match byte {
            b' ' | b'\t' => {}
            b'\r' => *breaks = true,
            b'\n' if lf_is_space => *breaks = true,
            _ => break,
        }
        at += 1;
    }
    at
}

/// Where the JSON value starting at `at` ends, when it is one, and whether
/// its text holds a line break (CR or LF: JSON has them only as whitespace
/// between tokens, never unescaped in a string). An object as compact JSON
/// writes it is read member by member first ([`compact_object`]); the rest,
/// from wherever that stops, by [`nested_value_end`].
fn value_end(bytes: &[u8], at: usize, lf_is_space: bool) -> Option<(usize, bool)> {
    let reading = match bytes.get(at) {
        Some(b'{') => match compact_object(bytes, at, lf_is_space)? {
            Compact::End(end) => return Some((end, false)),
            Compact::From(reading) => reading,
        },
        _ => Reading::outside(at),
    };
    nested_value_end(bytes, reading, lf_is_space)
}

/// Where [`nested_value_end`] reads on from: at a value's start, or just
/// past one (`value_ended`), inside `depth` open containers, a bit each in
/// `objects` (set for an object), the innermost lowest.
struct Reading {
    at: usize,
    objects: u64,
    depth: u32,
    breaks: bool,
    value_ended: bool,
}

impl Reading {
    /// At the value starting at `at`, in no container.
    fn outside(at: usize) -> Reading {
        Reading { at, objects: 0, depth: 0, breaks: false, value_ended: false }
    }
}

/// What [`compact_object`] read of an object.
enum Compact {
    /// All of it: it ends here.
    End(usize),
    /// Up to something else (whitespace, a nested value, a name it does not
    /// take): the reading goes on from there, or from the brace when that
    /// is its first member.
    From(Reading),
}

/// The object whose brace is at `open`, read while it is as compact JSON
/// writes it: no whitespace, a name and its colon, a string, number or
/// literal, then a comma or the closing brace. Read by [`nested_value_end`]
/// alone, the load generator's payload (three members) cost 656
/// instructions, most of them on whitespace and container bookkeeping
/// between its tokens; read so, 450 (`benches/callgrind.py`'s JSON batch
/// to nobody, `value_end` with what it calls). `None`: not JSON.
#[inline(always)]
fn compact_object(bytes: &[u8], open: usize, lf_is_space: bool) -> Option<Compact> {
    // Inside this object at `at`: at a value, or just past one.
    let inside = |at: usize, breaks: bool, value_ended: bool| {
        Compact::From(Reading { at, objects: 1, depth: 1, breaks, value_ended })
    };
    let mut at = open + 1;
    if *bytes.get(at)? == b'}' {
        return Some(Compact::End(at + 1));
    }
    let mut comma = None;
    loop {
        let Some(value_at) = compact_name_end(bytes, at) else {
            return Some(match comma {
                Some(comma) => inside(comma, false, true),
                None => Compact::From(Reading::outside(open)),
            });
        };
        at = match *bytes.get(value_at)? {
            b'"' => string_end(bytes, value_at + 1)?,
            b'-' | b'0'..=b'9' => number_end(bytes, value_at)?,
            b't' => literal_end(bytes, value_at, b"true")?,
            b'f' => literal_end(bytes, value_at, b"false")?,
            b'n' => literal_end(bytes, value_at, b"null")?,
            _ => {
                // Whitespace, or a nested value: read on at the value.
                let mut breaks = false;
                let at = whitespace_end_noting_breaks(bytes, value_at, lf_is_space, &mut breaks);
                return Some(inside(at, breaks, false));
            }
        };
        match *bytes.get(at)? {
            b',' => comma = Some(at),
            b'}' => return Some(Compact::End(at + 1)),
            _ => return Some(inside(at, false, true)),
        }
        at += 1;
    }
}

/// Where a member's name and its colon end when nothing stands between
/// them, the name starting at `at`. A name of up to five bytes is found in
/// the word at `at` (no call to find the string's end, ~15 instructions
/// less a member).
#[inline(always)]
fn compact_name_end(bytes: &[u8], at: usize) -> Option<usize> {
    if let Some(word) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(word.try_into().ok()?);
        if word as u8 != b'"' {
            return None;
        }
        // The name's bytes, then the quote and the colon, as the word's low bytes.
        let rest = word >> 8;
        let quote = json_stops(rest).trailing_zeros() / 8;
        if quote <= 5 {
            let quote_colon = u64::from(b'"') | u64::from(b':') << 8;
            return ((rest >> (8 * quote)) & 0xffff == quote_colon).then_some(at + quote as usize + 3);
        }
    }
    if *bytes.get(at)? != b'"' {
        return None;
    }
    let end = string_end(bytes, at + 1)?;
    (*bytes.get(end)? == b':').then_some(end + 1)
}

/// Where the JSON value that [`Reading`] is in ends, and whether its text
/// holds a line break. Arrays and objects are followed without recursion,
/// up to [`MAX_DEPTH`] open at once.
fn nested_value_end(bytes: &[u8], reading: Reading, lf_is_space: bool) -> Option<(usize, bool)> {
    let Reading { mut at, mut objects, mut depth, mut breaks, mut value_ended } = reading;
    loop {
        if !value_ended {
            match *bytes.get(at)? {
                b'"' => at = string_end(bytes, at + 1)?,
                open @ (b'{' | b'[') => {
                    if depth == MAX_DEPTH {
                        return None;
                    }
                    at = whitespace_end_noting_breaks(bytes, at + 1, lf_is_space, &mut breaks);
                    let object = open == b'{';
                    if *bytes.get(at)? == if object { b'}' } else { b']' } {
                        at += 1;
                    } else {
                        objects = objects << 1 | u64::from(object);
                        depth += 1;
                        if object {
                            at = member_name_end(bytes, at, lf_is_space, &mut breaks)?;
                        }
                        continue;
                    }
                }
                b't' => at = literal_end(bytes, at, b"true")?,
                b'f' => at = literal_end(bytes, at, b"false")?,
                b'n' => at = literal_end(bytes, at, b"null")?,
                b'-' | b'0'..=b'9' => at = number_end(bytes, at)?,
                _ => return None,
            }
        }
        value_ended = false;
        // A value has ended: the next one of its container, or the
        // container's end, which ends a value in turn.
        loop {
            if depth == 0 {
                return Some((at, breaks));
            }
            at = whitespace_end_noting_breaks(bytes, at, lf_is_space, &mut breaks);
            let object = objects & 1 == 1;
            match *bytes.get(at)? {
                b',' => {
                    at = whitespace_end_noting_breaks(bytes, at + 1, lf_is_space, &mut breaks);
                    if object {
                        at = member_name_end(bytes, at, lf_is_space, &mut breaks)?;
                    }
                    break;
                }
                b'}' if object => {}
                b']' if !object => {}
                _ => return None,
            }
            at += 1;
            objects >>= 1;
            depth -= 1;
        }
    }
}

/// Where an object member's name, its colon and the whitespace after each
/// end, when the name starts at `at`; `breaks` set as by
/// [`whitespace_end_noting_breaks`].
#[inline(always)]
fn member_name_end(bytes: &[u8], at: usize, lf_is_space: bool, breaks: &mut bool) -> Option<usize> {
    if *bytes.get(at)? != b'"' {
        return None;
    }
    let at = whitespace_end_noting_breaks(bytes, string_end(bytes, at + 1)?, lf_is_space, breaks);
    if *bytes.get(at)? != b':' {
        return None;
    }
    Some(whitespace_end_noting_breaks(bytes, at + 1, lf_is_space, breaks))
}

/// Where a string whose text starts at `at` (past its opening quote) ends,
/// past its closing quote; escapes checked as serde_json checks a string
/// it skips (a `\u` escape's four hex digits, not what they name).
#[inline(always)]
fn string_end(bytes: &[u8], mut at: usize) -> Option<usize> {
    loop {
        at += json_string_stop(bytes.get(at..)?);
        match *bytes.get(at)? {
            b'"' => return Some(at + 1),
            b'\\' => at = escape_end(bytes, at + 1)?,
            _ => return None,
        }
    }
}

/// Where the escape whose letter is at `at` (past its backslash) ends.
fn escape_end(bytes: &[u8], at: usize) -> Option<usize> {
    match *bytes.get(at)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(at + 1),
        b'u' => bytes.get(at + 1..at + 5)?.iter().all(u8::is_ascii_hexdigit).then_some(at + 5),
        _ => None,
    }
}

/// Where `word` ends when it stands at `at`.
#[inline(always)]
fn literal_end(bytes: &[u8], at: usize, word: &[u8]) -> Option<usize> {
    let end = at + word.len();
    (bytes.get(at..end)? == word).then_some(end)
}

/// Where the number at `at` ends: `-`? (`0` | a non-zero digit and
/// digits) (`.` digits)? (`e` or `E`, a sign?, digits)?
#[inline(always)]
fn number_end(bytes: &[u8], mut at: usize) -> Option<usize> {
    if bytes.get(at) == Some(&b'-') {
        at += 1;
    }
    match *bytes.get(at)? {
        b'0' => at += 1,
        b'1'..=b'9' => at += 1 + digit_run(&bytes[at + 1..]),
        _ => return None,
    }
    if bytes.get(at) == Some(&b'.') {
        at = some_digits_end(bytes, at + 1)?;
    }
    if let Some(b'e' | b'E') = bytes.get(at) {
        at += 1;
        if let Some(b'+' | b'-') = bytes.get(at) {
            at += 1;
        }
        at = some_digits_end(bytes, at)?;
    }
    Some(at)
}

/// Where one digit or more from `at` end.
#[inline(always)]
fn some_digits_end(bytes: &[u8], at: usize) -> Option<usize> {
    match digit_run(bytes.get(at..)?) {
        0 => None,
        run => Some(at + run),
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
    fn compact_names_read_as_spaced_ones_do() {
        let compact = r#"{"user":"u","room":"r","event":"e","id":"7","all":false,"data":{"s":1,"t":-2.5e3,"p":"x"}}"#;
        let spaced =
            r#"{ "user" : "u" , "room" :"r", "event": "e","id" :"7","all": false,"data" :{ "s" : 1 , "p":"x" } }"#;
        for (text, data) in [(compact, r#"{"s":1,"t":-2.5e3,"p":"x"}"#), (spaced, r#"{ "s" : 1 , "p":"x" }"#)] {
            let m = message(text).expect("plain");
            let strings = [m.user, m.room, m.event, m.id].map(|member| member.map(Cow::into_owned));
            assert_eq!(strings, ["u", "r", "e", "7"].map(|s| Some(s.to_owned())), "{text}");
            assert_eq!((m.all, m.data), (Some(false), Some(data)), "{text}");
        }
        // Names that only start like the known ones are other members.
        let other = message(r#"{"users":"u","datas":1,"id2":"x","data":2}"#).expect("plain");
        assert_eq!((other.user, other.id, other.data), (None, None, Some("2")));
        // A known name whose value is of the wrong kind is left to serde_json.
        assert!(message(r#"{"user":1,"data":2}"#).is_none());
        assert!(message(r#"{"all":"yes","data":2}"#).is_none());
    }

    #[test]
    fn data_is_one_line_unless_its_whitespace_breaks_it() {
        let one_line =
            [r#"{"s":1,"p":"x"}"#, r#"{ "s" : [1, 2] ,"p" :	"x" }"#, r#""a string, \n escaped""#, "[]", "17"];
        for data in one_line {
            let text = format!(r#"{{"user":"u","data":{data}}}"#);
            let members = message(&text).expect("plain");
            assert_eq!((members.data, members.data_is_one_line), (Some(data), true), "{data}");
        }
        for data in ["{\"s\":1,\n\"p\":\"x\"}", "[1,\r\n2]", "{\r\"s\"\n:1}", "{\"s\":\n[]}", "[\r]"] {
            let text = format!(r#"{{"user":"u","data":{data}}}"#);
            let members = message(&text).expect("plain");
            assert_eq!((members.data, members.data_is_one_line), (Some(data), false), "{data:?}");
        }
        // Around the value, not in it: the data is still one line.
        let members = message("{\"user\":\"u\",\n\"data\" :\r\n[1]\n}").expect("plain");
        assert_eq!((members.data, members.data_is_one_line), (Some("[1]"), true));
        // A line read in place: a CR in its data breaks it.
        let (members, _) = line("{\"user\":\"u\",\"data\":[1,\r2]}\n").expect("one line");
        assert_eq!((members.data, members.data_is_one_line), (Some("[1,\r2]"), false));
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
    fn a_compact_object_is_read_on_wherever_it_stops_being_compact() {
        // Each stops being compact at another token: whitespace around a
        // colon or a comma, a nested value, a long or escaped name, in the
        // first member or a later one.
        for data in [
            r#"{"s":1,"t":-25e-1,"p":"x","b":true,"f":false,"n":null}"#,
            r#"{"s":1,"t":[1,{"u":2}],"p":"x"}"#,
            r#"{"s":1, "t":2,"p":"x"}"#,
            r#"{"s":1,"t" :2,"p":"x"}"#,
            r#"{"s":1,"t": 2,"p":"x"}"#,
            r#"{"s":1,"t":2 ,"p":"x"}"#,
            r#"{"s":1,"a long name":2,"p":"x"}"#,
            r#"{"s":1,"t\"":2,"p":"x\u00e9"}"#,
            r#"{ "s":1}"#,
            r#"{"s" :1}"#,
            r#"{"\u0073":1}"#,
            r#"{"":{},"e":[]}"#,
            r#"{"s":{"t":{"u":"v"}}}"#,
        ] {
            let text = format!(r#"{{"user":"u","data":{data}}}"#);
            let members = message(&text).unwrap_or_else(|| panic!("{data}"));
            assert_eq!((members.data, members.data_is_one_line), (Some(data), true), "{data}");
        }
        for data in [
            r#"{"s":1,}"#,
            r#"{"s":01}"#,
            r#"{"s":1"t":2}"#,
            r#"{"s":tru}"#,
            r#"{"s":"x}"#,
            r#"{"s"1}"#,
            r#"{"s":1,"t":}"#,
            r#"{"s":1,"t"}"#,
            r#"{"s":1]"#,
            r#"{"s":-}"#,
            r#"{"s":"a	b"}"#,
            r#"{"s\x":1}"#,
        ] {
            let text = format!(r#"{{"user":"u","data":{data}}}"#);
            assert!(message(&text).is_none(), "{data}");
        }
        let deep = format!(r#"{{"user":"a","data":{{"s":1,"t":{}{}}}}}"#, "[".repeat(63), "]".repeat(63));
        assert!(message(&deep).is_some(), "nesting up to MAX_DEPTH, the compact object its first level");
        let deep = format!(r#"{{"user":"a","data":{{"s":1,"t":{}{}}}}}"#, "[".repeat(64), "]".repeat(64));
        assert!(message(&deep).is_none(), "nesting past MAX_DEPTH");
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
