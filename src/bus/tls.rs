//! TLS for `rediss://`: rustls, driven by hand over monoio's `TcpStream`.
//!
//! Parts: [`connect`] (the handshake with what [`crate::tls::Tls`] trusts
//! and presents, bounded by the caller's timeout), and the two halves a
//! connection is split into for pipelining, [`TlsReader`] and [`TlsWriter`].
//!
//! rustls' buffered connection is a sans-IO core: ciphertext goes in with
//! `read_tls` + `process_new_packets`, plaintext comes out of `reader()`,
//! plaintext goes in through `writer()` and ciphertext out with `write_tls`.
//! This file is only the thin driver around it. The halves share one
//! `rustls::ClientConnection` as `Rc<RefCell<_>>` and every borrow ends before
//! an `.await`, so a read waiting on the socket never overlaps a write's use of
//! the TLS state. (monoio-rustls 0.4 fits monoio 0.2, but its split halves
//! alias the whole stream through an `UnsafeCell` while a read is pending.)
//!
//! The name checked is the host of the address being dialled, an IP address
//! included ([`crate::tls::server_name`]).

use std::cell::RefCell;
use std::fmt;
use std::io::{Read, Write};
use std::rc::Rc;

use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::tcp::{TcpOwnedReadHalf, TcpOwnedWriteHalf};
use monoio::net::TcpStream;
use rustls::ClientConnection;

use crate::tls::{server_name, Tls};

/// Ciphertext bytes requested per socket read: one TLS record at most is
/// 16 KiB of plaintext plus its header and tag.
const CIPHERTEXT_CHUNK: usize = 17 * 1024;

/// Runs the TLS handshake on `stream` (dialled to `address`) and splits the
/// result. The caller bounds it with its connect timeout.
pub async fn connect(stream: TcpStream, address: &str, tls: &Tls) -> Result<(TlsReader, TlsWriter), String> {
    let name = server_name(address)?;
    let mut session =
        ClientConnection::new(tls.client_config(), name).map_err(|e| format!("TLS setup for {address} failed: {e}"))?;
    let (mut read_half, mut write_half) = stream.into_split();
    let failed = |e: &dyn fmt::Display| format!("TLS handshake with {address} failed: {e}");
    let mut scratch = Vec::with_capacity(CIPHERTEXT_CHUNK);
    loop {
        if session.wants_write() {
            let out = ciphertext(&mut session).map_err(|e| failed(&e))?;
            let (result, _) = write_half.write_all(out).await;
            result.map_err(|e| failed(&e))?;
            continue;
        }
        if !session.is_handshaking() {
            break;
        }
        scratch.clear();
        let (result, returned) = read_half.read(scratch).await;
        scratch = returned;
        match result {
            Ok(0) => return Err(failed(&"Redis closed the connection (is this port TLS?)")),
            Ok(_) => {}
            Err(e) => return Err(failed(&e)),
        }
        if let Err(error) = absorb(&mut session, &scratch, None) {
            // Tell Redis why (rustls queued an alert), then give up.
            if let Ok(alert) = ciphertext(&mut session) {
                let _ = write_half.write_all(alert).await;
            }
            return Err(failed(&error));
        }
    }
    let session = Rc::new(RefCell::new(session));
    let reader = TlsReader { half: read_half, session: session.clone(), scratch: Some(scratch) };
    Ok((reader, TlsWriter { half: write_half, session }))
}

/// Feeds ciphertext to rustls. With `plaintext`, decrypted bytes are moved
/// there as they come, so rustls' bounded plaintext buffer never fills;
/// during the handshake there is none (Redis speaks only when spoken to).
fn absorb(
    session: &mut ClientConnection,
    mut bytes: &[u8],
    mut plaintext: Option<&mut BytesMut>,
) -> Result<(), String> {
    while !bytes.is_empty() {
        match session.read_tls(&mut bytes) {
            Ok(0) => return Err("Redis sent data after closing the TLS session".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        session.process_new_packets().map_err(|e| e.to_string())?;
        if let Some(out) = plaintext.as_deref_mut() {
            drain_plaintext(session, out)?;
        }
    }
    Ok(())
}

/// Moves the plaintext rustls holds into `out`; `Ok(false)` once Redis has
/// closed the TLS session (close_notify) and nothing is left.
fn drain_plaintext(session: &mut ClientConnection, out: &mut BytesMut) -> Result<bool, String> {
    let mut chunk = [0u8; 4096];
    loop {
        match session.reader().read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The ciphertext rustls wants sent.
fn ciphertext(session: &mut ClientConnection) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while session.wants_write() {
        session.write_tls(&mut out)?;
    }
    Ok(out)
}

/// The reading half: ciphertext from the socket, plaintext to the caller.
///
/// A TLS message this side must answer (a TLS 1.3 KeyUpdate that requests
/// one back) is queued in the shared session and goes out with the next
/// write on the connection; the reader never writes.
pub struct TlsReader {
    half: TcpOwnedReadHalf,
    session: Rc<RefCell<ClientConnection>>,
    /// The read buffer, handed to the kernel and back.
    scratch: Option<Vec<u8>>,
}

impl TlsReader {
    /// Appends decrypted bytes to `out`; `Ok(0)` when Redis closed the
    /// connection.
    pub async fn read(&mut self, out: &mut BytesMut) -> Result<usize, String> {
        let before = out.len();
        loop {
            // The borrow ends before the await below.
            let open = drain_plaintext(&mut self.session.borrow_mut(), out).map_err(tls_error)?;
            if out.len() > before || !open {
                return Ok(out.len() - before);
            }
            let mut scratch = self.scratch.take().unwrap_or_else(|| Vec::with_capacity(CIPHERTEXT_CHUNK));
            scratch.clear();
            let (result, scratch) = self.half.read(scratch).await;
            let filled = match result {
                Ok(0) => return Ok(0),
                Ok(n) => n,
                Err(e) => return Err(format!("read from Redis failed: {e}")),
            };
            absorb(&mut self.session.borrow_mut(), &scratch[..filled], Some(out)).map_err(tls_error)?;
            self.scratch = Some(scratch);
            if out.len() > before {
                return Ok(out.len() - before);
            }
        }
    }
}

fn tls_error(error: String) -> String {
    format!("TLS error on the Redis connection: {error}")
}

/// The writing half: plaintext from the caller, ciphertext to the socket.
pub struct TlsWriter {
    half: TcpOwnedWriteHalf,
    session: Rc<RefCell<ClientConnection>>,
}

impl TlsWriter {
    /// Encrypts and sends all of `bytes` (rustls takes plaintext up to its
    /// buffer limit at a time, so a large write goes out in several rounds).
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), String> {
        let mut offset = 0;
        loop {
            let out = {
                // The borrow ends before the await below.
                let mut session = self.session.borrow_mut();
                offset += session.writer().write(&bytes[offset..]).map_err(|e| tls_error(e.to_string()))?;
                ciphertext(&mut session).map_err(|e| tls_error(e.to_string()))?
            };
            if out.is_empty() {
                if offset < bytes.len() {
                    return Err(tls_error("rustls accepted no more plaintext".into()));
                }
                return Ok(());
            }
            let (result, _) = self.half.write_all(out).await;
            result.map_err(|e| format!("write to Redis failed: {e}"))?;
            if offset == bytes.len() {
                return Ok(());
            }
        }
    }
}
