//! Client sockets and a minimal HTTP/1.1 exchange for the generator.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::FromRawFd;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

/// A `http://host:port/path` template split into address and path.
#[derive(Clone, Debug)]
pub struct Url {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Path and query, possibly with `{i}` / `{r}` placeholders.
    pub path: String,
}

/// Parses `http://127.0.0.1:8080/sse?userId=u{i}`.
pub fn parse_url(text: &str) -> Result<Url, String> {
    let rest = text.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr = authority.parse().map_err(|_| format!("`{authority}` is not ip:port"))?;
    Ok(Url { addr, path: if path.is_empty() { "/".into() } else { path.into() } })
}

/// Connects from `source` (any port) so that one generator can hold more
/// connections to one server port than the ephemeral range of one address.
pub async fn connect_from(target: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(source) = source else { return TcpStream::connect_addr(target).await };
    let domain = if target.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket calls on a descriptor this function owns; on any
    // failure the descriptor is closed by the std wrapper.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = std::net::TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(fd, libc::SOL_IP, libc::IP_BIND_ADDRESS_NO_PORT, &one as *const _ as *const libc::c_void, 4);
        let (storage, len) = sockaddr(SocketAddr::new(source, 0));
        if libc::bind(fd, &storage as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (storage, len) = sockaddr(target);
        if libc::connect(fd, &storage as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stream.set_nonblocking(true)?;
        TcpStream::from_std(stream)
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: zeroed sockaddr_storage is valid; the right variant is filled in.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(v4) => {
            let sin = &mut storage as *mut _ as *mut libc::sockaddr_in;
            unsafe {
                (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
                (*sin).sin_port = v4.port().to_be();
                (*sin).sin_addr = libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) };
            }
            (storage, std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(v6) => {
            let sin6 = &mut storage as *mut _ as *mut libc::sockaddr_in6;
            unsafe {
                (*sin6).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                (*sin6).sin6_port = v6.port().to_be();
                (*sin6).sin6_addr = libc::in6_addr { s6_addr: v6.ip().octets() };
            }
            (storage, std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

/// Reads until the end of a response head; returns the status, whether the
/// body is chunked, its Content-Length, and the bytes read past the head.
pub async fn read_head(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
) -> std::io::Result<(u16, bool, Option<usize>, Vec<u8>)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
            let chunked = head.contains("transfer-encoding: chunked");
            let length =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok());
            return Ok((status, chunked, length, buf[end + 4..].to_vec()));
        }
        let (result, chunk) = stream.read(Vec::with_capacity(4096)).await;
        match result? {
            0 => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before the head")),
            _ => buf.extend_from_slice(&chunk),
        }
    }
}

/// Sends one request on a kept-alive connection and reads its whole answer.
pub async fn exchange(stream: &mut TcpStream, request: Vec<u8>) -> std::io::Result<u16> {
    let (result, _) = stream.write_all(request).await;
    result?;
    let (status, chunked, length, mut rest) = read_head(stream, Vec::new()).await?;
    if chunked {
        while !rest.windows(5).any(|w| w == b"0\r\n\r\n") {
            let (result, chunk) = stream.read(Vec::with_capacity(4096)).await;
            if result? == 0 {
                break;
            }
            rest.extend_from_slice(&chunk);
        }
    } else if let Some(length) = length {
        while rest.len() < length {
            let (result, chunk) = stream.read(Vec::with_capacity(4096)).await;
            if result? == 0 {
                break;
            }
            rest.extend_from_slice(&chunk);
        }
    }
    Ok(status)
}
