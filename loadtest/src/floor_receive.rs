//! The receiving floor: what a message pushed to a waiting thread costs that
//! thread on this machine, with no server around it.
//!
//! A bus instance that delivers a message to nobody still pays for hearing
//! it: Redis pushes it over a connection, a thread that slept wakes, reads
//! it and sleeps again. Here a "receiver" thread does only that: blocking
//! `read(2)` on one loopback connection, nothing else. A forked sender
//! process writes `--batch` messages of `--size` bytes at a time,
//! `--rate` messages a second. The receiver's CPU time per message is the
//! floor under an instance's CPU per message received from the bus: one
//! wake-up per write, shared by the messages it carries.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::floor::{pin, split_process, thread_cpu_micros};

/// What the run measured.
pub struct ReceiveFloor {
    /// Messages the receiver read whole.
    pub messages: u64,
    /// Reads that returned data (each after a wake-up, or not).
    pub reads: u64,
    /// Receiver thread CPU time (user + system), microseconds.
    pub receiver_cpu_us: f64,
    /// Wall-clock length of the sender's window.
    pub window: Duration,
}

/// Runs the measurement; see the module doc.
pub fn measure(
    rate: f64,
    batch: usize,
    size: usize,
    duration: Duration,
    cores: (Option<usize>, Option<usize>),
) -> io::Result<ReceiveFloor> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (received, report) = split_process(
        cores.1,
        |report_to| sender(addr, rate, batch.max(1), size.max(1), duration, report_to),
        || receiver(&listener, size.max(1), cores.0),
    )?;
    let (bytes, reads, receiver_cpu_us) = received?;
    let window = report.trim().parse::<f64>().map_err(|_| io::Error::other("the sender process failed"))?;
    Ok(ReceiveFloor {
        messages: bytes / size.max(1) as u64,
        reads,
        receiver_cpu_us,
        window: Duration::from_secs_f64(window),
    })
}

/// The parent: reads until the sender closes. Returns (bytes, reads, CPU µs).
fn receiver(listener: &TcpListener, size: usize, core: Option<usize>) -> io::Result<(u64, u64, f64)> {
    let (mut stream, _) = listener.accept()?;
    pin(core);
    let mut buffer = vec![0u8; (64 * 1024).max(size)];
    let (mut bytes, mut reads) = (0u64, 0u64);
    let cpu_before = thread_cpu_micros();
    loop {
        match stream.read(&mut buffer)? {
            0 => break,
            read => {
                bytes += read as u64;
                reads += 1;
            }
        }
    }
    Ok((bytes, reads, thread_cpu_micros() - cpu_before))
}

/// The child: paces writes of `batch` messages; reports its window in seconds.
fn sender(
    addr: std::net::SocketAddr,
    rate: f64,
    batch: usize,
    size: usize,
    duration: Duration,
    mut report_to: std::fs::File,
) -> io::Result<()> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let write = crate::floor::frame(size).repeat(batch);
    let writes = (rate * duration.as_secs_f64() / batch as f64).round().max(1.0) as u64;
    let period = Duration::from_secs_f64(batch as f64 / rate);
    let start = Instant::now();
    for n in 0..writes {
        let due = start + period.mul_f64(n as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        stream.write_all(&write)?;
    }
    let window = start.elapsed();
    drop(stream);
    write!(report_to, "{}", window.as_secs_f64())
}
