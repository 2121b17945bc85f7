//! The kernel's floor: what one small TCP send costs the sending process on
//! this machine, with no server around it.
//!
//! A sender thread on one core writes one `--size`-byte frame to each of
//! `--connections` loopback sockets, `--rate` times a second (a broadcast, as
//! a server does it), while a reader thread on another core drains them with
//! epoll, as the generator does. The sender's CPU time per send is the least
//! any server can spend per delivery here, because a delivery to a distinct
//! connection is at least one `tcp_sendmsg`. Comparing a server's
//! `server_cpu_us_per_delivery` with this number separates what the server
//! adds from what the kernel charges it.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

/// How the sender hands frames to the kernel.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SendMethod {
    /// One `send(2)` system call per frame.
    Syscall,
    /// io_uring `SEND` operations, up to 1024 per `io_uring_enter`, with
    /// deferred task work: what ssekify does.
    Uring,
}

/// What the run measured.
pub struct Floor {
    /// Frames written by the sender.
    pub sends: u64,
    /// Bytes the reader received; equal to sends × size when nothing was lost.
    pub bytes_received: u64,
    /// Sender thread CPU time (user + system), microseconds.
    pub sender_cpu_us: f64,
    /// Reader thread CPU time, microseconds.
    pub reader_cpu_us: f64,
    /// Wall-clock length of the sending window.
    pub window: Duration,
    /// How long each round took from its first send to its last completion,
    /// sorted: the least time any server on one core needs to reach the last
    /// of the connections, so a floor under fan-out latency.
    pub rounds: Vec<Duration>,
}

/// How long the sender sends.
#[derive(Clone, Copy)]
pub enum Sending {
    /// One window of this length.
    For(Duration),
    /// Slices of the lengths in seconds standard input gives, a line each,
    /// until it ends: "ready" on standard output once every connection is
    /// accepted, then "slice <sends> <sender CPU µs>" after each, so that a
    /// script can time a server and the floor in turns within one run
    /// (`loadtest/scenarios/floor_interleave.py`).
    Slices,
}

/// Runs the measurement; see the module doc. The reader is a forked child
/// process so that each side stays under the per-process file limit.
pub fn measure(
    connections: usize,
    rate: f64,
    size: usize,
    sending: Sending,
    method: SendMethod,
    cores: (Option<usize>, Option<usize>),
) -> io::Result<Floor> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (sent, report) = split_process(
        cores.1,
        |report_to| reader(addr, connections, report_to),
        || sender(&listener, connections, rate, size, sending, method, cores.0),
    )?;
    let (sends, sender_cpu_us, window, rounds) = sent?;
    let mut fields = report.split_whitespace().map(|f| f.parse::<f64>());
    let (Some(Ok(bytes_received)), Some(Ok(reader_cpu_us))) = (fields.next(), fields.next()) else {
        return Err(io::Error::other("the reader process failed"));
    };
    Ok(Floor { sends, bytes_received: bytes_received as u64, sender_cpu_us, reader_cpu_us, window, rounds })
}

/// Runs `child` in a forked process pinned to `child_core`, with the write
/// end of a pipe to report on, while `parent` runs in this one; returns the
/// parent's result and what the child wrote. Two processes, so that each side
/// of a measurement stays under the per-process file limit. Call it before
/// this process starts any thread.
pub(crate) fn split_process<T>(
    child_core: Option<usize>,
    child: impl FnOnce(std::fs::File) -> io::Result<()>,
    parent: impl FnOnce() -> T,
) -> io::Result<(T, String)> {
    let mut pipe = [0i32; 2];
    // SAFETY: pipe fills two descriptors; fork happens before this process
    // starts any thread, so the child may allocate and use std freely.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (mut results, report_to) =
        unsafe { (std::fs::File::from_raw_fd(pipe[0]), std::fs::File::from_raw_fd(pipe[1])) };
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(results);
            pin(child_core);
            let outcome = child(report_to);
            // SAFETY: leaving the child without running the parent's exit handlers.
            unsafe { libc::_exit(if outcome.is_ok() { 0 } else { 1 }) }
        }
        pid => {
            drop(report_to);
            let done = parent();
            let mut report = String::new();
            let read = results.read_to_string(&mut report);
            let mut status = 0;
            // SAFETY: pid is this process's child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            read?;
            Ok((done, report))
        }
    }
}

/// The parent: accepts the connections, sends the rounds, closes them.
/// Returns (sends, sender CPU µs, window, sorted round durations).
fn sender(
    listener: &TcpListener,
    connections: usize,
    rate: f64,
    size: usize,
    sending: Sending,
    method: SendMethod,
    core: Option<usize>,
) -> io::Result<(u64, f64, Duration, Vec<Duration>)> {
    let mut servers = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (server, _) = listener.accept()?;
        server.set_nodelay(true)?;
        servers.push(server);
    }
    pin(core);
    let frame = frame(size);
    let fds: Vec<i32> = servers.iter().map(|s| s.as_raw_fd()).collect();
    let mut ring = match method {
        SendMethod::Uring => Some(ring()?),
        SendMethod::Syscall => None,
    };
    let mut took = Vec::new();
    let start = Instant::now();
    let (mut sends, mut cpu) = (0, 0.0);
    match sending {
        Sending::For(duration) => (sends, cpu) = send_rounds(ring.as_mut(), &fds, &frame, rate, duration, &mut took)?,
        Sending::Slices => {
            let mut out = io::stdout().lock();
            writeln!(out, "ready")?;
            out.flush()?;
            for line in io::stdin().lines() {
                let seconds: f64 =
                    line?.trim().parse().map_err(|_| io::Error::other("a slice is a number of seconds"))?;
                let (slice_sends, slice_cpu) =
                    send_rounds(ring.as_mut(), &fds, &frame, rate, Duration::from_secs_f64(seconds), &mut took)?;
                writeln!(out, "slice {slice_sends} {slice_cpu:.1}")?;
                out.flush()?;
                sends += slice_sends;
                cpu += slice_cpu;
            }
        }
    }
    took.sort_unstable();
    Ok((sends, cpu, start.elapsed(), took))
}

/// Sends `rate` rounds a second for `duration` (at least one), each round's
/// time added to `took`; returns the sends and the sender's CPU µs.
fn send_rounds(
    mut ring: Option<&mut IoUring>,
    fds: &[i32],
    frame: &[u8],
    rate: f64,
    duration: Duration,
    took: &mut Vec<Duration>,
) -> io::Result<(u64, f64)> {
    let rounds = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    let cpu_before = thread_cpu_micros();
    let start = Instant::now();
    for round in 0..rounds {
        let due = start + period.mul_f64(round as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let began = Instant::now();
        match ring.as_deref_mut() {
            Some(ring) => send_uring(ring, fds, frame)?,
            None => send_syscalls(fds, frame)?,
        }
        took.push(began.elapsed());
    }
    Ok((rounds * fds.len() as u64, thread_cpu_micros() - cpu_before))
}

/// The child: connects, drains every socket until each has closed, then
/// writes "bytes cpu_us" to `report_to`.
fn reader(addr: std::net::SocketAddr, connections: usize, mut report_to: std::fs::File) -> io::Result<()> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let client = TcpStream::connect(addr)?;
        client.set_nonblocking(true)?;
        clients.push(client);
    }
    let cpu_before = thread_cpu_micros();
    let received = read_all(clients)?;
    write!(report_to, "{received} {}", thread_cpu_micros() - cpu_before)
}

/// An SSE frame of exactly `size` bytes: `data: xxx…\n\n`.
pub(crate) fn frame(size: usize) -> Vec<u8> {
    let mut frame = b"data: ".to_vec();
    frame.resize(size.max(8) - 2, b'x');
    frame.extend_from_slice(b"\n\n");
    frame
}

/// An io_uring of 1024 entries set up as ssekify's shards set theirs up
/// (single issuer, deferred task work), where the kernel allows.
pub(crate) fn ring() -> io::Result<IoUring> {
    IoUring::builder().setup_single_issuer().setup_defer_taskrun().build(1024).or_else(|_| IoUring::new(1024))
}

/// `frame` to each socket, one `send(2)` each.
pub(crate) fn send_syscalls(fds: &[i32], frame: &[u8]) -> io::Result<()> {
    for &fd in fds {
        // SAFETY: fd is an open socket owned by the caller; frame outlives the call.
        let sent =
            unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        if sent != frame.len() as isize {
            return Err(short_send(sent));
        }
    }
    Ok(())
}

/// An io_uring `SEND` of `bytes` to `fd`, as ssekify sends (no signal,
/// never waiting for room); `bytes` must outlive its completion.
pub(crate) fn send_entry(fd: i32, bytes: &[u8]) -> io_uring::squeue::Entry {
    opcode::Send::new(types::Fd(fd), bytes.as_ptr(), bytes.len() as u32)
        .flags(libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
        .build()
}

/// `frame` to each socket, as io_uring `SEND`s, a ring's worth per
/// `io_uring_enter`, every completion awaited.
pub(crate) fn send_uring(ring: &mut IoUring, fds: &[i32], frame: &[u8]) -> io::Result<()> {
    for chunk in fds.chunks(ring.params().sq_entries() as usize) {
        for &fd in chunk {
            let send = send_entry(fd, frame);
            // SAFETY: the frame outlives the operation: this function waits for
            // every completion of the chunk before returning.
            unsafe { ring.submission().push(&send) }.map_err(|_| io::Error::other("submission queue full"))?;
        }
        ring.submit_and_wait(chunk.len())?;
        for completion in ring.completion() {
            if completion.result() != frame.len() as i32 {
                return Err(short_send(completion.result() as isize));
            }
        }
    }
    Ok(())
}

/// The error for a send that did not go out whole.
pub(crate) fn short_send(result: isize) -> io::Error {
    if result < 0 {
        io::Error::from_raw_os_error(-result as i32)
    } else {
        io::Error::other(format!("short send of {result} bytes: raise the socket buffers or lower the rate"))
    }
}

/// Drains every client socket with level-triggered epoll until each has
/// reached end of stream; returns the bytes read.
fn read_all(mut clients: Vec<TcpStream>) -> io::Result<u64> {
    // SAFETY: plain epoll calls on descriptors owned by `clients`, which outlives the loop.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(io::Error::last_os_error());
    }
    for (index, client) in clients.iter().enumerate() {
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: index as u64 };
        if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, client.as_raw_fd(), &mut event) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut buffer = [0u8; 16 * 1024];
    let (mut received, mut open) = (0u64, clients.len());
    while open > 0 {
        let ready = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, 1000) };
        for event in &events[..ready.max(0) as usize] {
            let client = &mut clients[event.u64 as usize];
            loop {
                match client.read(&mut buffer) {
                    Ok(0) => {
                        unsafe {
                            libc::epoll_ctl(epoll, libc::EPOLL_CTL_DEL, client.as_raw_fd(), std::ptr::null_mut())
                        };
                        open -= 1;
                        break;
                    }
                    Ok(n) => received += n as u64,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) => return Err(error),
                }
            }
        }
    }
    // SAFETY: epoll is the descriptor created above.
    unsafe { libc::close(epoll) };
    Ok(received)
}

/// This thread's CPU time (user + system, including softirq work done in its
/// context), microseconds.
pub(crate) fn thread_cpu_micros() -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 * 1e6 + now.tv_nsec as f64 / 1e3
}

pub(crate) fn pin(core: Option<usize>) {
    if let Some(id) = core {
        core_affinity::set_for_current(core_affinity::CoreId { id });
    }
}
