//! The subscribing floor: what a message Redis pushes to a bare subscriber
//! costs that subscriber, in the same run as the instances that receive it.
//!
//! `receive-floor` times a reader woken by a tiny sender on a quiet core; a
//! receiving instance is woken by Redis, among the publishing instance and
//! the other receivers. Here a bare thread subscribes to the same channels
//! of the same Redis and only reads and counts the pushes, so its CPU per
//! message is what hearing a bus message costs in that very environment,
//! with nothing decoded, sequenced or applied. Its reader is one of three:
//! a blocking `read(2)` (the least any reader can spend: one system call a
//! wake-up), or a monoio runtime on io_uring or on epoll (what the
//! instance's runtime charges before ssekify's own work; no timer is armed).
//! The run ends after `duration`: another thread shuts the socket's reading
//! side, which ends any reader's wait.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use crate::floor::{pin, thread_cpu_micros};

/// How the bare subscriber waits for Redis's pushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Reader {
    /// `read(2)` on a blocking socket.
    Blocking,
    /// monoio on io_uring, a recv op per read.
    Uring,
    /// monoio on epoll (non-blocking recv, then `epoll_wait`).
    Epoll,
}

/// What the run measured.
pub struct SubscribeFloor {
    /// `message` pushes counted.
    pub messages: u64,
    /// Reads that returned data.
    pub reads: u64,
    /// The reading thread's CPU time (user + system), microseconds.
    pub cpu_us: f64,
}

/// Subscribes to the channels of `redis` matching `pattern` (as `PUBSUB
/// CHANNELS` lists them: the instances must be subscribed already) and
/// reads for `duration`; see the module doc.
pub fn measure(
    redis: SocketAddr,
    pattern: &str,
    reader: Reader,
    duration: Duration,
    core: Option<usize>,
) -> io::Result<SubscribeFloor> {
    pin(core);
    let mut stream = TcpStream::connect(redis)?;
    let channels = list_channels(&mut stream, pattern)?;
    if channels.is_empty() {
        return Err(io::Error::other(format!("no channel of Redis matches {pattern}")));
    }
    let subscribe: Vec<&[u8]> = std::iter::once(&b"SUBSCRIBE"[..]).chain(channels.iter().map(|c| &c[..])).collect();
    stream.write_all(&encode(&subscribe))?;
    let mut pushes = Pushes::default();
    let mut buffer = vec![0u8; 64 * 1024];
    while pushes.confirmations < channels.len() as u64 {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            return Err(io::Error::other("Redis closed the subscription"));
        }
        pushes.feed(&buffer[..read]);
    }
    pushes.messages = 0;
    let stopper = stream.try_clone()?;
    std::thread::spawn(move || {
        std::thread::sleep(duration);
        let _ = stopper.shutdown(Shutdown::Read);
    });
    let cpu_before = thread_cpu_micros();
    let reads = match reader {
        Reader::Blocking => read_blocking(stream, &mut buffer, &mut pushes)?,
        Reader::Uring => {
            let mut runtime = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().build()?;
            runtime.block_on(read_monoio(stream, buffer, &mut pushes))?
        }
        Reader::Epoll => {
            let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().build()?;
            runtime.block_on(read_monoio(stream, buffer, &mut pushes))?
        }
    };
    Ok(SubscribeFloor { messages: pushes.messages, reads, cpu_us: thread_cpu_micros() - cpu_before })
}

fn read_blocking(mut stream: TcpStream, buffer: &mut [u8], pushes: &mut Pushes) -> io::Result<u64> {
    let mut reads = 0;
    loop {
        match stream.read(buffer)? {
            0 => return Ok(reads),
            read => {
                reads += 1;
                pushes.feed(&buffer[..read]);
            }
        }
    }
}

async fn read_monoio(stream: TcpStream, mut buffer: Vec<u8>, pushes: &mut Pushes) -> io::Result<u64> {
    use monoio::io::AsyncReadRent;
    stream.set_nonblocking(true)?;
    let mut stream = monoio::net::TcpStream::from_std(stream)?;
    let mut reads = 0;
    loop {
        let (result, returned) = stream.read(buffer).await;
        buffer = returned;
        match result? {
            0 => return Ok(reads),
            read => {
                reads += 1;
                pushes.feed(&buffer[..read]);
            }
        }
    }
}

/// `PUBSUB CHANNELS pattern`, answered on `stream`.
fn list_channels(stream: &mut TcpStream, pattern: &str) -> io::Result<Vec<Vec<u8>>> {
    stream.write_all(&encode(&[b"PUBSUB", b"CHANNELS", pattern.as_bytes()]))?;
    let mut reply = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            return Err(io::Error::other("Redis closed the connection"));
        }
        reply.extend_from_slice(&buffer[..read]);
        if let Some((elements, _)) = parse_array(&reply) {
            return Ok(elements.into_iter().map(|e| e.to_vec()).collect());
        }
    }
}

/// A RESP command of `words`.
fn encode(words: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for word in words {
        out.extend_from_slice(format!("${}\r\n", word.len()).as_bytes());
        out.extend_from_slice(word);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One whole RESP2 array of bulk strings and integers at the start of
/// `bytes`: its elements (an integer as its digits) and its length.
fn parse_array(bytes: &[u8]) -> Option<(Vec<&[u8]>, usize)> {
    let (count, mut at) = line(bytes, 0, b'*')?;
    let mut elements = Vec::with_capacity(count);
    for _ in 0..count {
        match bytes.get(at)? {
            b':' => {
                let end = at + bytes[at..].windows(2).position(|w| w == b"\r\n")?;
                elements.push(&bytes[at + 1..end]);
                at = end + 2;
            }
            _ => {
                let (len, start) = line(bytes, at, b'$')?;
                if bytes.len() < start + len + 2 {
                    return None;
                }
                elements.push(&bytes[start..start + len]);
                at = start + len + 2;
            }
        }
    }
    Some((elements, at))
}

/// The number on a `prefix` line at `at` and where the next line starts.
fn line(bytes: &[u8], at: usize, prefix: u8) -> Option<(usize, usize)> {
    if *bytes.get(at)? != prefix {
        return None;
    }
    let end = at + bytes[at..].windows(2).position(|w| w == b"\r\n")?;
    let number = std::str::from_utf8(&bytes[at + 1..end]).ok()?.parse().ok()?;
    Some((number, end + 2))
}

/// Counts the pushes in a subscription's byte stream, read in pieces.
#[derive(Default)]
struct Pushes {
    pending: Vec<u8>,
    messages: u64,
    confirmations: u64,
}

impl Pushes {
    fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        let mut at = 0;
        while let Some((elements, len)) = parse_array(&self.pending[at..]) {
            match elements.first().copied() {
                Some(b"message") => self.messages += 1,
                Some(b"subscribe") => self.confirmations += 1,
                _ => {}
            }
            at += len;
        }
        self.pending.drain(..at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_split_anywhere_are_counted_once() {
        let stream = [
            &b"*3\r\n$9\r\nsubscribe\r\n$2\r\nc0\r\n:1\r\n"[..],
            b"*3\r\n$7\r\nmessage\r\n$2\r\nc0\r\n$5\r\nhello\r\n",
            b"*3\r\n$7\r\nmessage\r\n$2\r\nc0\r\n$7\r\nmessage\r\n",
        ]
        .concat();
        for split in 0..stream.len() {
            let mut pushes = Pushes::default();
            pushes.feed(&stream[..split]);
            pushes.feed(&stream[split..]);
            assert_eq!((pushes.confirmations, pushes.messages), (1, 2), "split at {split}");
            assert!(pushes.pending.is_empty());
        }
    }
}
