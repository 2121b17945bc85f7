//! One SSE subscriber: connect, subscribe, then read `data:` lines and record
//! each message's latency. Payloads are the publisher's `{"s":seq,"t":ns,…}`.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::net::{connect_from, read_head};
use crate::record::{now_nanos, Recorder};

/// Shared tallies of the subscriber fleet.
#[derive(Default)]
pub struct Fleet {
    /// Subscribers past their response head.
    pub connected: Cell<usize>,
    /// Subscribers that failed or were closed.
    pub failed: Cell<usize>,
    /// Data lines seen.
    pub lines: Cell<u64>,
}

/// Opens a subscriber and returns the stream once the response head (200)
/// arrived. `headers` are extra request header lines, each ending in CRLF.
pub async fn open(
    target: SocketAddr,
    source: Option<IpAddr>,
    path: &str,
    headers: &str,
) -> std::io::Result<(TcpStream, Vec<u8>, bool)> {
    let mut stream = connect_from(target, source).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: loadtest\r\nAccept: text/event-stream\r\n{headers}\r\n");
    let (result, _) = stream.write_all(request.into_bytes()).await;
    result?;
    let (status, chunked, _, rest) = read_head(&mut stream, Vec::new()).await?;
    if status != 200 {
        return Err(std::io::Error::other(format!("subscribe answered {status}")));
    }
    Ok((stream, rest, chunked))
}

/// Reads the stream until it ends, recording every message.
pub async fn read(
    mut stream: TcpStream,
    mut pending: Vec<u8>,
    chunked: bool,
    recorder: Rc<RefCell<Recorder>>,
    fleet: Rc<Fleet>,
) {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut dechunk = Dechunker::default();
    loop {
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + end];
            if let Some(data) = line.strip_prefix(b"data:") {
                if let (Some(seq), Some(stamp)) = (number_after(data, b"\"s\":"), number_after(data, b"\"t\":")) {
                    recorder.borrow_mut().delivered(seq as usize, stamp, now_nanos());
                    fleet.lines.set(fleet.lines.get() + 1);
                }
            }
            start += end + 1;
        }
        pending.drain(..start);
        let (result, returned) = stream.read(buf).await;
        buf = returned;
        match result {
            Ok(n) if n > 0 => {
                if chunked {
                    dechunk.feed(&buf, &mut pending);
                } else {
                    pending.extend_from_slice(&buf);
                }
                buf.clear();
            }
            _ => {
                fleet.failed.set(fleet.failed.get() + 1);
                return;
            }
        }
    }
}

fn number_after(haystack: &[u8], key: &[u8]) -> Option<u64> {
    let at = haystack.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = haystack[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&haystack[at..at + digits]).ok()?.parse().ok()
}

/// Strips HTTP/1.1 chunked framing from a byte stream, incrementally.
#[derive(Default)]
pub struct Dechunker {
    remaining: usize,
    header: Vec<u8>,
    skip_crlf: usize,
}

impl Dechunker {
    /// Appends the payload bytes of `input` to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            if self.skip_crlf > 0 {
                let n = self.skip_crlf.min(input.len());
                self.skip_crlf -= n;
                input = &input[n..];
            } else if self.remaining > 0 {
                let n = self.remaining.min(input.len());
                out.extend_from_slice(&input[..n]);
                self.remaining -= n;
                input = &input[n..];
                if self.remaining == 0 {
                    self.skip_crlf = 2;
                }
            } else {
                let byte = input[0];
                input = &input[1..];
                if byte == b'\n' {
                    let text = String::from_utf8_lossy(&self.header);
                    let size = text.trim().split(';').next().unwrap_or("0");
                    self.remaining = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                    self.header.clear();
                } else {
                    self.header.push(byte);
                }
            }
        }
    }
}
