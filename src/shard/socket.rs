//! Subscriber sockets without a task each: frames go out through plain
//! non-blocking system calls made by the shard's write loop, and one epoll
//! set per shard says which sockets hung up or have room again.
//!
//! A task per subscriber (an io_uring write per delivery and a pending read
//! to notice a hang-up) cost a wake, two polls and ~800 bytes of future per
//! connection; a `send(2)` with `MSG_DONTWAIT` is the kernel's floor itself,
//! and the epoll set costs user space nothing until a socket has news.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Sends as much of the frames `iovecs` describe as the socket takes now,
/// never waiting; `WouldBlock` when it takes nothing.
pub fn send(fd: RawFd, iovecs: &[libc::iovec]) -> io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    loop {
        // SAFETY: every iovec describes a live `Bytes` of the caller's queue,
        // which the caller does not touch during the call.
        let sent = match iovecs {
            [one] => unsafe { libc::send(fd, one.iov_base, one.iov_len, flags) },
            many => {
                // SAFETY: an all-zero msghdr is valid (no name, no control data).
                let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
                header.msg_iov = many.as_ptr().cast_mut();
                header.msg_iovlen = many.len();
                unsafe { libc::sendmsg(fd, &header, flags) }
            }
        };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Sends the FIN after the last frame of a graceful close.
pub fn shutdown_write(fd: RawFd) {
    // SAFETY: a plain system call on a descriptor the caller owns; a failure
    // (the peer already gone) changes nothing for a socket about to close.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

/// Closes a subscriber's socket, which also takes it out of the epoll set.
pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and forgets it after this call.
    unsafe { libc::close(fd) };
}

/// What the epoll set says about one socket.
#[derive(Debug, Clone, Copy)]
pub struct Readiness {
    /// The token the socket was watched with.
    pub token: u64,
    /// The client closed its side, reset the connection, or the socket failed.
    pub hung_up: bool,
    /// The socket has room again after a send it could not take whole.
    pub writable: bool,
}

/// Events read per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 256;

/// The epoll set of one shard's subscriber sockets, edge-triggered: a
/// socket reports a hang-up once, and room again only after a send found it
/// full (the kernel wakes writers only then), so a healthy stream never
/// shows up here.
pub struct Watchlist {
    epoll: OwnedFd,
}

impl Watchlist {
    /// A new, empty set.
    pub fn new() -> io::Result<Self> {
        // SAFETY: a plain system call; the descriptor is owned from here on.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Watchlist { epoll })
    }

    /// Watches `fd` for a hang-up and for room after a full send.
    pub fn watch(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let interest = libc::EPOLLRDHUP | libc::EPOLLOUT | libc::EPOLLET;
        let mut event = libc::epoll_event { events: interest as u32, u64: token };
        // SAFETY: both descriptors are open; `event` outlives the call.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Adds the sockets with news to `ready`, without waiting; true when
    /// the read filled its buffer, so more may be waiting.
    pub fn take_ready(&self, ready: &mut Vec<Readiness>) -> bool {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
        // SAFETY: the buffer has room for EVENTS_PER_WAIT events; the kernel
        // writes at most that many and says how many it wrote.
        let count = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), EVENTS_PER_WAIT as i32, 0) };
        let events = &events[..count.max(0) as usize];
        ready.extend(events.iter().map(|event| {
            let flags = event.events as i32;
            Readiness {
                token: event.u64,
                hung_up: flags & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) != 0,
                writable: flags & libc::EPOLLOUT != 0,
            }
        }));
        events.len() == EVENTS_PER_WAIT
    }

    /// Something the runtime can wait on until the set has news: monoio
    /// waits for readiness only on its own socket types, so a duplicate of
    /// the epoll descriptor is wrapped in one and only ever waited on.
    pub fn waiter(&self) -> io::Result<monoio::net::unix::UnixDatagram> {
        let duplicate = self.epoll.try_clone()?;
        monoio::net::unix::UnixDatagram::from_std(std::os::unix::net::UnixDatagram::from(duplicate))
    }
}
