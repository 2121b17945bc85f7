//! Subscriber sockets without a task each: frames go out in batches of
//! non-blocking sends made by the shard's write loop (through a ring of its
//! own under the io_uring driver, by plain system calls under epoll), and one
//! epoll set per shard says which sockets hung up or have room again.
//!
//! A task per subscriber (a runtime write per delivery and a pending read
//! to notice a hang-up) cost a wake, two polls and ~800 bytes of future per
//! connection. A batch of io_uring sends with `MSG_DONTWAIT` is the kernel's
//! floor itself (`ssekify-loadtest floor`): on this project's VM ~1 µs per
//! send cheaper than one `send(2)` each, the system call's entry and exit.
//! With `MSG_DONTWAIT` a send to a full socket completes at once with
//! `EAGAIN` (the kernel marks it no-wait) instead of waiting in the ring, so
//! every send of a batch has completed when the submission returns.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use io_uring::{opcode, types, IoUring};

/// Flags of every send: never wait, never raise SIGPIPE.
const SEND_FLAGS: i32 = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

/// Sends as much of the frames `iovecs` describe as the socket takes now,
/// never waiting; `WouldBlock` when it takes nothing.
pub fn send(fd: RawFd, iovecs: &[libc::iovec]) -> io::Result<usize> {
    loop {
        // SAFETY: every iovec describes a live `Bytes` of the caller's queue,
        // which the caller does not touch during the call.
        let sent = match iovecs {
            [one] => unsafe { libc::send(fd, one.iov_base, one.iov_len, SEND_FLAGS) },
            many => {
                // SAFETY: an all-zero msghdr is valid (no name, no control data).
                let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
                header.msg_iov = many.as_ptr().cast_mut();
                header.msg_iovlen = many.len();
                unsafe { libc::sendmsg(fd, &header, SEND_FLAGS) }
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

/// A ring of the write loop's own, for batches of sends: one submission
/// carries every send of a write loop's round (up to [`SendRing::capacity`]).
pub struct SendRing {
    ring: IoUring,
    /// One header per multi-frame send of the batch; never grows past the
    /// ring's size, so the pointers the ring holds stay valid.
    headers: Vec<libc::msghdr>,
    /// Slots in the ring's table of sockets ([`SendRing::attach`]); 0 when
    /// the kernel gave it none.
    table: u32,
}

/// Most sockets a ring's table holds: the kernel keeps a few bytes a slot
/// whether used or not; a shard's connections past it are sent to by
/// descriptor.
const MAX_TABLE: u32 = 1 << 16;

/// How a send names its socket.
#[derive(Debug, Clone, Copy)]
pub enum Socket {
    /// By descriptor: the kernel looks the file up (and counts a reference
    /// to it) for each send.
    Fd(RawFd),
    /// By its slot in the ring's table ([`SendRing::attach`]): no look-up.
    Attached(u32),
}

impl SendRing {
    /// A ring for batches of `entries` sends (deferred task work where the
    /// kernel has it, as the runtime's ring).
    pub fn new(entries: u32) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(entries)
            .or_else(|_| IoUring::new(entries))?;
        let capacity = ring.params().sq_entries() as usize;
        let table = open_files_limit().min(MAX_TABLE);
        let table = if ring.submitter().register_files_sparse(table).is_ok() { table } else { 0 };
        Ok(SendRing { ring, headers: Vec::with_capacity(capacity), table })
    }

    /// Puts `fd` in the ring's table at `slot` (a connection's slot, so no
    /// two live ones share it): sends then name it by slot, which spares
    /// the kernel a look-up of the descriptor per send (`perf`: ~3 % of a
    /// delivery's CPU). False when the table has no such slot or the kernel
    /// refused: send by descriptor. The table holds the socket open, so it
    /// must be [`SendRing::detach`]ed before the descriptor is closed.
    pub fn attach(&self, slot: usize, fd: RawFd) -> bool {
        u32::try_from(slot)
            .is_ok_and(|slot| slot < self.table && self.ring.submitter().register_files_update(slot, &[fd]).is_ok())
    }

    /// Empties `slot` of the table, letting go of the socket it held.
    pub fn detach(&self, slot: u32) {
        // A failure would leave the socket open until the ring closes; the
        // kernel fails this only for a slot outside the table.
        let _ = self.ring.submitter().register_files_update(slot, &[-1]);
    }

    /// Most sends in one batch.
    pub fn capacity(&self) -> usize {
        self.headers.capacity()
    }

    /// Adds a send of the frames `iovecs` describes to `socket`, answered under `tag`.
    ///
    /// # Safety
    /// The iovecs and the bytes they describe stay valid and unmoved until
    /// [`SendRing::submit`] returns; at most [`SendRing::capacity`] sends per batch.
    pub unsafe fn push(&mut self, socket: Socket, iovecs: &[libc::iovec], tag: u64) {
        let entry = match iovecs {
            [one] => {
                let (buf, len) = (one.iov_base.cast(), one.iov_len as u32);
                match socket {
                    Socket::Fd(fd) => opcode::Send::new(types::Fd(fd), buf, len).flags(SEND_FLAGS).build(),
                    Socket::Attached(slot) => opcode::Send::new(types::Fixed(slot), buf, len).flags(SEND_FLAGS).build(),
                }
            }
            many => {
                assert!(self.headers.len() < self.headers.capacity(), "more sends than the ring holds");
                // SAFETY: an all-zero msghdr is valid (no name, no control data).
                let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
                header.msg_iov = many.as_ptr().cast_mut();
                header.msg_iovlen = many.len();
                self.headers.push(header);
                let header = self.headers.last().expect("just pushed");
                let flags = SEND_FLAGS as u32;
                match socket {
                    Socket::Fd(fd) => opcode::SendMsg::new(types::Fd(fd), header).flags(flags).build(),
                    Socket::Attached(slot) => opcode::SendMsg::new(types::Fixed(slot), header).flags(flags).build(),
                }
            }
        };
        // SAFETY: the caller keeps the buffers alive; the header lives in
        // `headers` until the batch is submitted and answered.
        unsafe { self.ring.submission().push(&entry.user_data(tag)) }.expect("more sends than the ring holds");
    }

    /// Submits the batch and hands each completed send's outcome to
    /// `settle` with its tag. An error means the ring failed: sends it did
    /// not answer are not settled.
    pub fn submit(&mut self, mut settle: impl FnMut(u64, io::Result<usize>)) -> io::Result<()> {
        let count = self.ring.submission().len();
        let submitted = loop {
            match self.ring.submit_and_wait(count) {
                Err(error) if matches!(error.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => {}
                other => break other,
            }
        };
        for completion in self.ring.completion() {
            let result = completion.result();
            let outcome = if result >= 0 { Ok(result as usize) } else { Err(io::Error::from_raw_os_error(-result)) };
            settle(completion.user_data(), outcome);
        }
        self.headers.clear();
        submitted.map(drop)
    }
}

/// The process's soft limit on open descriptors: no shard has more sockets.
fn open_files_limit() -> u32 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a plain system call writing into `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    u32::try_from(limit.rlim_cur).unwrap_or(u32::MAX)
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
