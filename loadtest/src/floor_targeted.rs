//! The targeted floor: what one publish to one user costs a server on this
//! machine at the least, with no server around it.
//!
//! A "server" thread on one core does only what any server must per
//! targeted publish: read the request from a keep-alive publisher
//! connection, send a fixed answer back, and send one frame to one of
//! `--connections` subscriber sockets (one `read(2)` and two `send(2)`, the
//! `epoll_wait` amortised over whatever is ready). A forked client process
//! on another core paces `--rate` requests a second over `--publishers`
//! connections (one request in flight each, as an HTTP/1.1 publisher without
//! pipelining) and drains the subscribers. The server thread's CPU time per
//! request is the floor under a server's CPU per targeted publish.
//!
//! With `--frames-per-request N` a request stands for a batch publish of N
//! messages, each to the next subscriber: the answer and then N frames (by
//! io_uring with `--method uring`, as ssekify sends), so the CPU time per
//! frame is the floor under a server's CPU per batch message delivered.
//! With `--recipients nobody` as well, no frame is sent (the messages are
//! for users with no connection): the request's read and its answer alone,
//! the floor under a server's CPU per batch message it only records.
//!
//! With `--requests uring` the server thread does all of it through one
//! io_uring, as ssekify's shards do: each publisher's request is read by a
//! `RECV` kept armed, and its answer and frames go out as `SEND`s submitted
//! with the re-armed `RECV` in the `io_uring_enter` that also waits for the
//! next completion (deferred task work, single issuer). Without it (the
//! default) the requests are read by `epoll_wait` and `read(2)` and answered
//! by `send(2)`; the first is the floor under a server built on io_uring,
//! the second under one built on epoll.
//!
//! With `--slices` the client sends when standard input asks, a line per
//! slice (its length in seconds): "ready" once connected, "slice <requests>"
//! once a slice's requests are all answered. The server thread is the
//! process's only thread, so a script reads its CPU per slice from the
//! process's scheduler clock (`loadtest/scenarios/floor_interleave.py`).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};

use crate::floor::{pin, send_entry, send_syscalls, send_uring, split_process, thread_cpu_micros, SendMethod, Sending};

/// How the server thread reads its requests and sends its answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum RequestIo {
    /// `epoll_wait`, then `read(2)` and `send(2)` system calls (the frames as
    /// `--method` says): the floor under a server built on epoll.
    Syscall,
    /// One io_uring for everything: `RECV`s kept armed, the answer and the
    /// frames as `SEND`s (`--method` is then ignored): the floor under a
    /// server built on io_uring, as ssekify is.
    Uring,
}

/// Sizes of what travels, in bytes.
#[derive(Clone, Copy)]
pub struct Sizes {
    /// One publish request (head and body).
    pub request: usize,
    /// Its answer.
    pub answer: usize,
    /// Each frame it delivers.
    pub frame: usize,
    /// Frames a request delivers, each to the next subscriber (1: a
    /// single-message publish; N: a batch of N messages).
    pub frames_per_request: usize,
    /// False: the messages are for nobody connected, no frame is sent.
    pub deliver: bool,
}

/// What the run measured.
pub struct TargetedFloor {
    /// Requests the server thread answered.
    pub requests: u64,
    /// Messages the requests stood for: requests × frames per request.
    pub messages: u64,
    /// Frames sent: the messages, or none for `--recipients nobody`.
    pub frames_sent: u64,
    /// Frames the subscribers received whole.
    pub frames_received: u64,
    /// Server thread CPU time (user + system), microseconds.
    pub server_cpu_us: f64,
    /// Wall-clock length of the client's sending window.
    pub window: Duration,
}

/// Runs the measurement; see the module doc. The client is a forked child
/// process so that each side stays under the per-process file limit.
pub fn measure(
    connections: usize,
    publishers: usize,
    rate: f64,
    sizes: Sizes,
    io: (RequestIo, SendMethod),
    sending: Sending,
    cores: (Option<usize>, Option<usize>),
) -> io::Result<TargetedFloor> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (served, report) = split_process(
        cores.1,
        |report_to| client(addr, connections, publishers, rate, sizes, sending, report_to),
        || server(&listener, connections, publishers, sizes, io, cores.0),
    )?;
    let (requests, server_cpu_us) = served?;
    let mut fields = report.split_whitespace().map(|f| f.parse::<f64>());
    let (Some(Ok(frame_bytes)), Some(Ok(window_s))) = (fields.next(), fields.next()) else {
        return Err(io::Error::other("the client process failed"));
    };
    Ok(TargetedFloor {
        requests,
        messages: requests * sizes.frames_per_request as u64,
        frames_sent: if sizes.deliver { requests * sizes.frames_per_request as u64 } else { 0 },
        frames_received: frame_bytes as u64 / sizes.frame.max(1) as u64,
        server_cpu_us,
        window: Duration::from_secs_f64(window_s),
    })
}

/// The parent: accepts the subscribers, then the publishers; answers every
/// request and delivers its frames until the publishers close; closes the
/// subscribers. Returns (requests, CPU µs).
fn server(
    listener: &TcpListener,
    connections: usize,
    publishers: usize,
    sizes: Sizes,
    (request_io, method): (RequestIo, SendMethod),
    core: Option<usize>,
) -> io::Result<(u64, f64)> {
    let accept = |count: usize| -> io::Result<Vec<TcpStream>> {
        (0..count)
            .map(|_| {
                let (stream, _) = listener.accept()?;
                stream.set_nodelay(true)?;
                Ok(stream)
            })
            .collect()
    };
    let subscribers = accept(connections)?;
    let mut publishers = accept(publishers)?;
    pin(core);
    // A request's frames go to the next subscribers in turn, wrapping round.
    let fds: Vec<i32> = subscribers.iter().chain(&subscribers).map(AsRawFd::as_raw_fd).collect();
    let served = match request_io {
        RequestIo::Syscall => serve_syscalls(&mut publishers, &fds, sizes, method),
        RequestIo::Uring => serve_uring(&publishers, &fds, sizes),
    };
    drop(subscribers);
    served
}

/// [`RequestIo::Syscall`]: epoll, `read(2)`, `send(2)`. `fds` names every
/// subscriber twice over, so that a request's frames are one slice.
fn serve_syscalls(
    publishers: &mut [TcpStream],
    fds: &[i32],
    sizes: Sizes,
    method: SendMethod,
) -> io::Result<(u64, f64)> {
    let subscribers = fds.len() / 2;
    let answer = vec![b'a'; sizes.answer];
    let frame = crate::floor::frame(sizes.frame);
    let per_request = sizes.frames_per_request.clamp(1, subscribers);
    let mut ring = match method {
        SendMethod::Uring => Some(crate::floor::ring()?),
        SendMethod::Syscall => None,
    };
    let epoll = Epoll::new()?;
    for (index, publisher) in publishers.iter().enumerate() {
        epoll.add(publisher.as_raw_fd(), index as u64)?;
    }
    let mut partial = vec![0usize; publishers.len()];
    let mut buffer = vec![0u8; 64 * 1024];
    let (mut requests, mut next, mut open) = (0u64, 0usize, publishers.len());
    let mut ready = Vec::with_capacity(EVENTS);
    let cpu_before = thread_cpu_micros();
    while open > 0 {
        epoll.wait(1000, &mut ready)?;
        for &index in &ready {
            let publisher = &mut publishers[index as usize];
            let read = publisher.read(&mut buffer)?;
            if read == 0 {
                epoll.remove(publisher.as_raw_fd())?;
                open -= 1;
                continue;
            }
            let bytes = partial[index as usize] + read;
            partial[index as usize] = bytes % sizes.request;
            for _ in 0..bytes / sizes.request {
                send_whole(publisher.as_raw_fd(), &answer)?;
                requests += 1;
                if !sizes.deliver {
                    continue;
                }
                let to = &fds[next..next + per_request];
                match ring.as_mut() {
                    Some(ring) => send_uring(ring, to, &frame)?,
                    None => send_syscalls(to, &frame)?,
                }
                next = (next + per_request) % subscribers;
            }
        }
    }
    Ok((requests, thread_cpu_micros() - cpu_before))
}

/// Marks a `SEND`'s `user_data`, whose other bits are its length (a
/// `RECV`'s is its publisher's index), so each send is checked whole.
const SENT: u64 = 1 << 63;

/// Bytes each publisher's armed `RECV` may read at once.
const RECV_BUFFER: usize = 64 * 1024;

/// [`RequestIo::Uring`]: one ring, a `RECV` armed per publisher, the
/// answers and frames as `SEND`s, all submitted by the `io_uring_enter`
/// that waits for the next completion. `fds` as for [`serve_syscalls`].
fn serve_uring(publishers: &[TcpStream], fds: &[i32], sizes: Sizes) -> io::Result<(u64, f64)> {
    let answer = vec![b'a'; sizes.answer];
    let frame = crate::floor::frame(sizes.frame);
    let mut buffers = vec![vec![0u8; RECV_BUFFER]; publishers.len()];
    let mut ring = crate::floor::ring()?;
    let served = drive_uring(&mut ring, publishers, fds, sizes, (&answer, &frame), &mut buffers);
    if served.is_err() {
        // Operations may still be in flight on an error: the kernel may
        // read or write their buffers until the ring is torn down.
        std::mem::forget((answer, frame, buffers));
    }
    served
}

/// [`serve_uring`]'s loop, until every publisher has closed and every send
/// has completed.
fn drive_uring(
    ring: &mut IoUring,
    publishers: &[TcpStream],
    fds: &[i32],
    sizes: Sizes,
    (answer, frame): (&[u8], &[u8]),
    buffers: &mut [Vec<u8>],
) -> io::Result<(u64, f64)> {
    let subscribers = fds.len() / 2;
    let per_request = sizes.frames_per_request.clamp(1, subscribers);
    let recv = |index: usize, buffer: &mut [u8]| {
        opcode::Recv::new(types::Fd(publishers[index].as_raw_fd()), buffer.as_mut_ptr(), buffer.len() as u32)
            .build()
            .user_data(index as u64)
    };
    let send = |fd: i32, bytes: &[u8]| send_entry(fd, bytes).user_data(SENT | bytes.len() as u64);
    let mut partial = vec![0usize; publishers.len()];
    let (mut requests, mut next, mut open, mut sending) = (0u64, 0usize, publishers.len(), 0usize);
    let mut completions = Vec::with_capacity(1024);
    let cpu_before = thread_cpu_micros();
    for (index, buffer) in buffers.iter_mut().enumerate() {
        push(ring, &recv(index, buffer))?;
    }
    // The kernel reads the answer and the frame until their sends complete.
    while open > 0 || sending > 0 {
        ring.submit_and_wait(1)?;
        completions.extend(ring.completion().map(|done| (done.user_data(), done.result())));
        for (token, result) in completions.drain(..) {
            if token & SENT != 0 {
                if result as u64 != token & !SENT {
                    return Err(crate::floor::short_send(result as isize));
                }
                sending -= 1;
                continue;
            }
            let index = token as usize;
            if result <= 0 {
                if result < 0 {
                    return Err(io::Error::from_raw_os_error(-result));
                }
                open -= 1;
                continue;
            }
            let bytes = partial[index] + result as usize;
            partial[index] = bytes % sizes.request;
            for _ in 0..bytes / sizes.request {
                push(ring, &send(publishers[index].as_raw_fd(), answer))?;
                requests += 1;
                sending += 1;
                if !sizes.deliver {
                    continue;
                }
                for &fd in &fds[next..next + per_request] {
                    push(ring, &send(fd, frame))?;
                }
                sending += per_request;
                next = (next + per_request) % subscribers;
            }
            push(ring, &recv(index, &mut buffers[index]))?;
        }
    }
    Ok((requests, thread_cpu_micros() - cpu_before))
}

/// Queues `entry`, first submitting what is queued when the submission
/// queue is full.
fn push(ring: &mut IoUring, entry: &squeue::Entry) -> io::Result<()> {
    // SAFETY: every buffer an entry names (the answer, the frame, the
    // publishers' receive buffers) lives until the serving loop has seen
    // its completion, or is never freed when the loop ends in an error
    // (`serve_uring`).
    if unsafe { ring.submission().push(entry) }.is_ok() {
        return Ok(());
    }
    ring.submit()?;
    // SAFETY: as above.
    unsafe { ring.submission().push(entry) }.map_err(|_| io::Error::other("submission queue full after a submit"))
}

/// One non-blocking send that must go out whole (small, to a socket that keeps up).
fn send_whole(fd: i32, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: fd is an open socket of the caller; bytes outlive the call.
    let sent = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if sent == bytes.len() as isize {
        Ok(())
    } else if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Err(io::Error::other(format!("short send of {sent} of {} bytes", bytes.len())))
    }
}

/// Requests sent at `rate` from `start`: `total` of them after the `base`
/// sent before.
struct Pace {
    start: Instant,
    base: u64,
    total: u64,
}

impl Pace {
    fn new(rate: f64, seconds: f64, base: u64) -> Self {
        Pace { start: Instant::now(), base, total: (rate * seconds).round() as u64 }
    }

    /// Requests that should have been sent by now.
    fn due(&self, rate: f64) -> u64 {
        self.base + ((self.start.elapsed().as_secs_f64() * rate) as u64).min(self.total)
    }

    fn end(&self) -> u64 {
        self.base + self.total
    }
}

/// The next slice's length from standard input; `None` at its end.
fn next_slice() -> io::Result<Option<f64>> {
    let mut line = String::new();
    if io::stdin().read_line(&mut line)? == 0 {
        return Ok(None);
    }
    line.trim().parse().map(Some).map_err(|_| io::Error::other("a slice is a number of seconds"))
}

/// The child: connects the subscribers and publishers, paces the requests
/// (one in flight per publisher) for the run or for each slice asked for,
/// drains the subscribers until the server closes them, and writes
/// "frame_bytes window_s" to `report_to`.
fn client(
    addr: std::net::SocketAddr,
    connections: usize,
    publishers: usize,
    rate: f64,
    sizes: Sizes,
    sending: Sending,
    mut report_to: std::fs::File,
) -> io::Result<()> {
    let connect = |count: usize| -> io::Result<Vec<TcpStream>> {
        (0..count)
            .map(|_| {
                let stream = TcpStream::connect(addr)?;
                stream.set_nonblocking(true)?;
                stream.set_nodelay(true)?;
                Ok(stream)
            })
            .collect()
    };
    let mut subscribers = connect(connections)?;
    let mut publishers = connect(publishers)?;
    let epoll = Epoll::new()?;
    // Tokens: subscribers by index, publishers after them.
    for (index, stream) in subscribers.iter().chain(&publishers).enumerate() {
        epoll.add(stream.as_raw_fd(), index as u64)?;
    }
    let request = vec![b'r'; sizes.request];
    let mut answered_bytes = vec![0usize; publishers.len()];
    let mut free: Vec<usize> = (0..publishers.len()).collect();
    let (mut sent, mut answered, mut frame_bytes) = (0u64, 0u64, 0u64);
    let mut open_subscribers = subscribers.len();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut ready = Vec::with_capacity(EVENTS);
    let start = Instant::now();
    let (mut pace, give_up) = match sending {
        Sending::For(duration) => {
            (Some(Pace::new(rate, duration.as_secs_f64(), 0)), duration + Duration::from_secs(10))
        }
        Sending::Slices => {
            println!("ready");
            (next_slice()?.map(|seconds| Pace::new(rate, seconds, 0)), Duration::MAX)
        }
    };
    let mut window = None;
    while open_subscribers > 0 {
        if let Some(current) = &pace {
            while sent < current.due(rate) {
                let Some(index) = free.pop() else { break };
                publishers[index].write_all(&request)?;
                sent += 1;
            }
            if answered == current.end() {
                pace = match sending {
                    Sending::For(_) => None,
                    Sending::Slices => {
                        println!("slice {}", current.total);
                        next_slice()?.map(|seconds| Pace::new(rate, seconds, sent))
                    }
                };
            }
        }
        if (pace.is_none() || start.elapsed() > give_up) && window.is_none() {
            window = Some(start.elapsed());
            pace = None;
            // Everything answered (or never will be): closing the publishers
            // ends the server's loop, which then closes the subscribers.
            publishers.clear();
        }
        epoll.wait(1, &mut ready)?;
        for &token in &ready {
            let index = token as usize;
            if index < subscribers.len() {
                loop {
                    match subscribers[index].read(&mut buffer) {
                        Ok(0) => {
                            epoll.remove(subscribers[index].as_raw_fd())?;
                            open_subscribers -= 1;
                            break;
                        }
                        Ok(read) => frame_bytes += read as u64,
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                        Err(error) => return Err(error),
                    }
                }
            } else if let Some(publisher) = publishers.get_mut(index - subscribers.len()) {
                let read = match publisher.read(&mut buffer) {
                    Ok(read) => read,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(error) => return Err(error),
                };
                let slot = index - subscribers.len();
                answered_bytes[slot] += read;
                while answered_bytes[slot] >= sizes.answer {
                    answered_bytes[slot] -= sizes.answer;
                    answered += 1;
                    free.push(slot);
                }
            }
        }
    }
    let window = window.unwrap_or_else(|| start.elapsed());
    write!(report_to, "{frame_bytes} {}", window.as_secs_f64())
}

/// Events read per `epoll_wait`.
const EVENTS: usize = 256;

/// A level-triggered epoll set for readable sockets.
struct Epoll(i32);

impl Epoll {
    fn new() -> io::Result<Self> {
        // SAFETY: a plain system call; the descriptor is closed on drop.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll(fd))
    }

    fn add(&self, fd: i32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
        // SAFETY: both descriptors are open; event outlives the call.
        if unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_ADD, fd, &mut event) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn remove(&self, fd: i32) -> io::Result<()> {
        // SAFETY: both descriptors are open.
        if unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Puts the tokens of the ready sockets in `ready`, waiting up to `timeout_ms`.
    fn wait(&self, timeout_ms: i32, ready: &mut Vec<u64>) -> io::Result<()> {
        ready.clear();
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        // SAFETY: the buffer has room for EVENTS events.
        let count = unsafe { libc::epoll_wait(self.0, events.as_mut_ptr(), EVENTS as i32, timeout_ms) };
        if count < 0 {
            let error = io::Error::last_os_error();
            return if error.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(error) };
        }
        ready.extend(events[..count as usize].iter().map(|event| event.u64));
        Ok(())
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: the descriptor is this set's own.
        unsafe { libc::close(self.0) };
    }
}
