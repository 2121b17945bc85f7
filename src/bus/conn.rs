//! One Redis connection: connect with a timeout, TLS when the address is
//! `rediss://` ([`super::tls`]), handshake (HELLO/AUTH, SELECT), then commands
//! and replies. Split into halves for pipelining.

use std::net::ToSocketAddrs;
use std::time::Duration;

use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::tcp::{TcpOwnedReadHalf, TcpOwnedWriteHalf};
use monoio::net::TcpStream;

use super::clock;
use super::resp::{self, Heard, Reply};
use super::tls::{self, TlsReader, TlsWriter};
use super::url::RedisUrl;
use crate::tls::Tls;

/// Bytes a new read buffer holds.
const READ_CHUNK: usize = 64 * 1024;

/// Room below which a read that starts a reply first gets a new buffer.
/// Replies split from the buffer are usually still being applied when the
/// next read starts, so asking for a whole chunk each time allocated a new
/// buffer per read (per lone message); reading into the room left serves a
/// few hundred of them, and a batch's notice (100 messages, ~15 KiB) whole.
/// A read that continues a reply still asks for a whole chunk, so a large
/// reply is moved to a new buffer once, not piece by piece.
const READ_AT_LEAST: usize = 16 * 1024;

/// A bus error: always the bus's (Redis's or the network's) fault, always
/// answered by reconnecting.
pub type BusError = String;

/// The socket side of a [`ReplyReader`].
enum ReadHalf {
    Plain(TcpOwnedReadHalf),
    Tls(TlsReader),
}

/// The socket side of a [`CommandWriter`].
enum WriteHalf {
    Plain(TcpOwnedWriteHalf),
    Tls(TlsWriter),
}

/// The reading half: buffers bytes and yields replies.
pub struct ReplyReader {
    half: ReadHalf,
    buf: BytesMut,
    resp3: bool,
}

/// Reads one reply off the front of a buffer, if it is there whole.
type Decode<T> = fn(&mut BytesMut, bool) -> Result<Option<T>, resp::ProtocolError>;

impl ReplyReader {
    /// What a subscription heard next, if it is already read in whole.
    pub fn buffered_heard(&mut self) -> Result<Option<Heard>, BusError> {
        resp::decode_heard(&mut self.buf, self.resp3).map_err(|e| e.0)
    }

    /// Waits for the next reply (or pushed message).
    pub async fn next(&mut self) -> Result<Reply, BusError> {
        self.next_as(resp::decode).await
    }

    /// Waits for what a subscription hears next.
    pub async fn next_heard(&mut self) -> Result<Heard, BusError> {
        self.next_as(resp::decode_heard).await
    }

    async fn next_as<T>(&mut self, decode: Decode<T>) -> Result<T, BusError> {
        loop {
            if let Some(reply) = decode(&mut self.buf, self.resp3).map_err(|e| e.0)? {
                return Ok(reply);
            }
            let read = match &mut self.half {
                ReadHalf::Plain(half) => {
                    let wanted = if self.buf.is_empty() { READ_AT_LEAST } else { READ_CHUNK };
                    if self.buf.capacity() - self.buf.len() < wanted {
                        self.buf.reserve(READ_CHUNK);
                    }
                    let filled = self.buf.len();
                    let spare = std::mem::take(&mut self.buf).slice_mut(filled..);
                    let (result, returned) = half.read(spare).await;
                    self.buf = returned.into_inner();
                    result.map_err(|e| format!("read from Redis failed: {e}"))
                }
                ReadHalf::Tls(half) => half.read(&mut self.buf).await,
            };
            if read? == 0 {
                return Err("Redis closed the connection".into());
            }
        }
    }
}

/// The writing half.
pub struct CommandWriter {
    half: WriteHalf,
}

impl CommandWriter {
    /// Writes already-encoded commands.
    pub async fn write(&mut self, bytes: BytesMut) -> Result<(), BusError> {
        match &mut self.half {
            WriteHalf::Plain(half) => {
                let (result, _) = half.write_all(bytes.freeze()).await;
                result.map(drop).map_err(|e| format!("write to Redis failed: {e}"))
            }
            WriteHalf::Tls(half) => half.write_all(&bytes).await,
        }
    }
}

/// A connected, authenticated Redis connection.
pub struct RedisConn {
    /// Replies.
    pub reader: ReplyReader,
    /// Commands.
    pub writer: CommandWriter,
    /// `host:port` it is connected to.
    pub address: String,
}

impl RedisConn {
    /// Connects to `address` (over TLS when `url` says `rediss://`) and, when
    /// `url` is given, authenticates and selects the database.
    pub async fn open(address: &str, url: Option<&RedisUrl>, timeout: Duration) -> Result<Self, BusError> {
        let mut conn = Self::connect(address, url.and_then(|u| u.tls.as_ref()), timeout).await?;
        let resp3 = url.is_some_and(|u| u.resp3);
        if let Some(url) = url {
            let user = url.username.as_deref().unwrap_or("default");
            if resp3 {
                let mut hello: Vec<&[u8]> = vec![b"HELLO", b"3"];
                if let Some(password) = &url.password {
                    hello.extend_from_slice(&[b"AUTH", user.as_bytes(), password.as_bytes()]);
                }
                conn.reader.resp3 = true;
                conn.call(&hello, timeout).await?;
            } else if let Some(password) = &url.password {
                conn.call(&[b"AUTH", user.as_bytes(), password.as_bytes()], timeout).await?;
            }
            if url.db != 0 {
                conn.call(&[b"SELECT", url.db.to_string().as_bytes()], timeout).await?;
            }
        }
        Ok(conn)
    }

    /// Connects to a Sentinel: TLS as the address says (`rediss-sentinel://`),
    /// no credentials (those are the master's).
    pub async fn open_sentinel(address: &str, tls: Option<&Tls>, timeout: Duration) -> Result<Self, BusError> {
        Self::connect(address, tls, timeout).await
    }

    /// TCP, then TLS when `tls` is given, within `timeout` each.
    async fn connect(address: &str, tls: Option<&Tls>, timeout: Duration) -> Result<Self, BusError> {
        let target = address
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {address}: {e}"))?
            .next()
            .ok_or_else(|| format!("{address} resolves to nothing"))?;
        let stream = clock::timeout(timeout, TcpStream::connect_addr(target))
            .await
            .map_err(|_| format!("connect to {address} timed out"))?
            .map_err(|e| format!("connect to {address} failed: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (half_r, half_w) = match tls {
            Some(settings) => {
                let (r, w) = clock::timeout(timeout, tls::connect(stream, address, settings))
                    .await
                    .map_err(|_| format!("TLS handshake with {address} timed out"))??;
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
            None => {
                let (r, w) = stream.into_split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
        };
        Ok(RedisConn {
            reader: ReplyReader { half: half_r, buf: BytesMut::new(), resp3: false },
            writer: CommandWriter { half: half_w },
            address: address.to_owned(),
        })
    }

    /// Sends one command and waits for its reply; error replies become errors.
    pub async fn call(&mut self, args: &[&[u8]], timeout: Duration) -> Result<Reply, BusError> {
        let mut out = BytesMut::new();
        resp::command(&mut out, args);
        let name = String::from_utf8_lossy(args[0]).into_owned();
        let exchange = async {
            self.writer.write(out).await?;
            self.reader.next().await
        };
        match clock::timeout(timeout, exchange).await {
            Err(_) => Err(format!("{name} to {} timed out", self.address)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Reply::Error(e))) => Err(format!("{name} to {}: {e}", self.address)),
            Ok(Ok(reply)) => Ok(reply),
        }
    }
}
