//! Paced publishers over kept-alive HTTP/1.1 connections.
//!
//! Request `r` is due at `start + r × interval` whatever happened before it,
//! and every payload carries that scheduled time, so a server that stalls the
//! publisher shows up as latency (no coordinated omission).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use monoio::net::TcpStream;

use crate::net::{exchange, Url};
use crate::record::{now_nanos, Recorder};

/// Who the messages go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Every message to every subscriber.
    Broadcast,
    /// Each message to one user, `u{i}`, cycling over the subscribers.
    Users,
    /// Each message to one room, `r{r}`, cycling over the rooms.
    Rooms,
}

/// What to publish, how fast, where.
#[derive(Clone)]
pub struct Plan {
    /// Target selection.
    pub mode: Mode,
    /// Publish URL template (`{i}` user index, `{r}` room index).
    pub url: Url,
    /// Messages in total.
    pub messages: usize,
    /// Messages per second.
    pub rate: f64,
    /// Messages per request (batch route when > 1).
    pub batch: usize,
    /// Payload size in bytes.
    pub size: usize,
    /// Subscriber count (user indexes cycle over it).
    pub subscribers: usize,
    /// Room count (room indexes cycle over it).
    pub rooms: usize,
    /// Per subscriber index: whether it reads (slow ones do not count as expected).
    pub reading: Rc<Vec<bool>>,
    /// Reading subscribers per room.
    pub room_readers: Rc<Vec<u32>>,
    /// Reading subscribers in total.
    pub readers: u32,
}

/// Counts shared by the publisher connections.
#[derive(Default)]
pub struct Sent {
    /// Messages handed to the server and answered 2xx.
    pub ok: Cell<usize>,
    /// Messages whose request failed or was refused.
    pub failed: Cell<usize>,
}

impl Plan {
    fn expected(&self, seq: usize) -> u32 {
        match self.mode {
            Mode::Broadcast => self.readers,
            Mode::Users => u32::from(self.reading[seq % self.subscribers]),
            Mode::Rooms => self.room_readers[seq % self.rooms],
        }
    }

    fn payload(&self, seq: usize, scheduled_ns: u64) -> String {
        let head = format!("{{\"s\":{seq},\"t\":{scheduled_ns},\"p\":\"");
        let pad = self.size.saturating_sub(head.len() + 2);
        format!("{head}{}\"}}", "x".repeat(pad))
    }

    fn request(&self, first_seq: usize, count: usize, scheduled_ns: u64) -> Vec<u8> {
        let (path, body) = if self.batch > 1 {
            let messages: Vec<String> = (first_seq..first_seq + count)
                .map(|seq| {
                    let target = match self.mode {
                        Mode::Broadcast => "\"all\":true".to_owned(),
                        Mode::Users => format!("\"user\":\"u{}\"", seq % self.subscribers),
                        Mode::Rooms => format!("\"room\":\"r{}\"", seq % self.rooms),
                    };
                    format!("{{{target},\"data\":{}}}", self.payload(seq, scheduled_ns))
                })
                .collect();
            (self.url.path.clone(), format!("{{\"messages\":[{}]}}", messages.join(",")))
        } else {
            let path = self
                .url
                .path
                .replace("{i}", &(first_seq % self.subscribers).to_string())
                .replace("{r}", &(first_seq % self.rooms.max(1)).to_string());
            (path, self.payload(first_seq, scheduled_ns))
        };
        format!(
            "POST {path} HTTP/1.1\r\nHost: loadtest\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// Runs publisher connection `lane` of `lanes` until the plan is done.
pub async fn run(
    plan: Rc<Plan>,
    lane: usize,
    lanes: usize,
    start_ns: u64,
    recorder: Rc<RefCell<Recorder>>,
    sent: Rc<Sent>,
) {
    let requests = plan.messages.div_ceil(plan.batch);
    let interval_ns = (plan.batch as f64 / plan.rate * 1e9) as u64;
    let mut stream: Option<TcpStream> = None;
    for r in (lane..requests).step_by(lanes) {
        let scheduled_ns = start_ns + r as u64 * interval_ns;
        let now = now_nanos();
        if scheduled_ns > now {
            monoio::time::sleep(Duration::from_nanos(scheduled_ns - now)).await;
        }
        let first_seq = r * plan.batch;
        let count = plan.batch.min(plan.messages - first_seq);
        {
            let mut recorder = recorder.borrow_mut();
            for seq in first_seq..first_seq + count {
                recorder.expect(seq, plan.expected(seq), scheduled_ns);
            }
        }
        let request = plan.request(first_seq, count, scheduled_ns);
        if stream.is_none() {
            stream = TcpStream::connect_addr(plan.url.addr).await.ok();
        }
        let ok = match stream.as_mut() {
            Some(conn) => matches!(exchange(conn, request).await, Ok(status) if (200..300).contains(&status)),
            None => false,
        };
        if ok {
            sent.ok.set(sent.ok.get() + count);
        } else {
            stream = None;
            sent.failed.set(sent.failed.get() + count);
            let mut recorder = recorder.borrow_mut();
            for seq in first_seq..first_seq + count {
                recorder.expect(seq, 0, scheduled_ns);
            }
        }
    }
}
