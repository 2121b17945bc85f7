//! A minimal HTTP/1.1 client for the application's own endpoints — the auth
//! webhook (`--auth-url`) and the lifecycle events sink (`--events-url`):
//! plain `http://` on a private network, addresses resolved once at start
//! (a shard must not block on DNS), one request per connection, answers
//! bounded. The one part of `http` that touches sockets.

use std::net::{SocketAddr, ToSocketAddrs};

use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::body::BodyDecoder;
use super::request::BodyFraming;

/// Where an application endpoint is.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Resolved at start.
    pub addr: SocketAddr,
    /// `Host` header value (`host[:port]` as configured).
    pub host: String,
    /// Path and query.
    pub target: String,
}

impl Endpoint {
    /// Parses and resolves `http://host[:port]/path[?query]`.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            "must start with http:// (the app is reached on a private network; https is not supported)".to_owned()
        })?;
        let (host, target) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        if host.is_empty() {
            return Err("has no host".into());
        }
        if host.contains('@') {
            return Err("carries a user or password, which ssekify would neither send nor keep out of sight".into());
        }
        let with_port = if host.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) {
            host.to_owned()
        } else {
            format!("{host}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} resolves to no address"))?;
        let target = request_target(target)?;
        Ok(Endpoint { addr, host: host.to_owned(), target })
    }

    /// The URL again, as configured (its query included: callers that show
    /// it hide the query).
    pub fn url(&self) -> String {
        format!("http://{}{}", self.host, self.target)
    }
}

/// The path and query of a URL (what follows its host) as a request target:
/// `/` when empty, a leading `/` before a bare query, no spaces or controls.
pub fn request_target(rest: &str) -> Result<String, String> {
    let target = match rest {
        "" => "/".to_owned(),
        t if t.starts_with('?') => format!("/{t}"),
        t => t.to_owned(),
    };
    if target.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err("has spaces or control characters in its path".into());
    }
    Ok(target)
}

/// Sends `request` on a fresh connection to `addr` and reads the answer:
/// (status, body), the body at most `max_answer` bytes.
pub async fn exchange(addr: SocketAddr, request: BytesMut, max_answer: usize) -> Result<(u16, BytesMut), String> {
    let mut stream = TcpStream::connect_addr(addr).await.map_err(|e| format!("connect: {e}"))?;
    let (result, _) = stream.write_all(request).await;
    result.map_err(|e| format!("send: {e}"))?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if buf.len() > max_answer {
            return Err(format!("its answer is over {max_answer} bytes"));
        }
        buf.reserve(4096);
        let (result, returned) = stream.read(buf).await;
        buf = returned;
        let eof = result.map_err(|e| format!("read: {e}"))? == 0;
        if let Some(answer) = parse_answer(&mut buf.clone(), eof, max_answer)? {
            return Ok(answer);
        }
        if eof {
            return Err("the connection closed before a whole answer".into());
        }
    }
}

/// The answer once `buf` holds all of it: (status, body). `eof` says the
/// peer closed, which ends a body framed by neither length nor chunks. Also
/// the reading of the JWKS fetch ([`crate::auth::jwks`]), which drives its
/// own blocking socket (and TLS) on a thread of its own.
pub(crate) fn parse_answer(
    buf: &mut BytesMut,
    eof: bool,
    max_answer: usize,
) -> Result<Option<(u16, BytesMut)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("its answer is not HTTP: {e}")),
    };
    let status = response.code.unwrap_or(0);
    let header = |name: &str| response.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    let framing = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case(b"chunked")) {
        Some(BodyFraming::Chunked)
    } else {
        match header("content-length") {
            Some(value) => {
                let length = std::str::from_utf8(value).ok().and_then(|v| v.trim().parse().ok());
                Some(BodyFraming::Length(length.ok_or("its Content-Length is not a number")?))
            }
            None => None,
        }
    };
    let _ = buf.split_to(head_len);
    let Some(framing) = framing else {
        return Ok(eof.then(|| (status, buf.split())));
    };
    let mut decoder =
        BodyDecoder::new(framing, max_answer).map_err(|_| format!("its answer is over {max_answer} bytes"))?;
    match decoder.decode(buf) {
        Ok(Some(body)) => Ok(Some((status, body))),
        Ok(None) => Ok(None),
        Err(e) => Err(format!("its answer's body is malformed: {e:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(text: &str, eof: bool) -> Result<Option<(u16, Vec<u8>)>, String> {
        parse_answer(&mut BytesMut::from(text), eof, 64 * 1024).map(|a| a.map(|(s, b)| (s, b.to_vec())))
    }

    #[test]
    fn answers_are_read_in_every_framing() {
        let length = "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{\"user\":\"a\"}\n";
        assert_eq!(answer(length, false).unwrap(), Some((200, b"{\"user\":\"a\"}\n".to_vec())));
        assert_eq!(answer(&length[..length.len() - 3], false).unwrap(), None, "partial body");
        assert_eq!(answer("HTTP/1.1 401 No\r\nContent-Le", false).unwrap(), None, "partial head");
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        assert_eq!(answer(chunked, false).unwrap(), Some((200, b"{\"a\":1}".to_vec())));
        let close = "HTTP/1.0 403 Forbidden\r\n\r\nno";
        assert_eq!(answer(close, false).unwrap(), None, "until the peer closes");
        assert_eq!(answer(close, true).unwrap(), Some((403, b"no".to_vec())));
        assert!(answer("SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
        assert!(answer("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
    }
}
