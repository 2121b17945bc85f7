//! Publishers of a chaos run: paced requests to random instances, each
//! message with its own id, retried with the same id when not acknowledged,
//! and a ledger of when each message was first sent and when a `200` for it
//! arrived — the checker's notion of "acknowledged".
//!
//! Request `r` is due at `start + first message / rate` whatever happened
//! before it; lanes (kept-alive connections, one per instance) take requests
//! in turn, so a request stuck on a stalled bus delays only its own lane.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use monoio::net::TcpStream;

use super::check::Sent;
use super::plan::{message_id, Request, Rng, Target};
use crate::net::exchange;
use crate::record::now_nanos;

/// What the lanes share.
pub struct Publishing {
    /// Api listeners of the instances.
    pub instances: Vec<SocketAddr>,
    /// Who each message goes to.
    pub targets: Vec<Target>,
    /// The requests carrying them, in order.
    pub requests: Vec<Request>,
    /// Messages per second.
    pub rate: f64,
    /// Wall-clock nanoseconds of message 0's due time.
    pub start_ns: u64,
    /// Prefix of the message ids.
    pub id_prefix: String,
    /// Payload bytes (about).
    pub size: usize,
    /// Further attempts after one that was not acknowledged.
    pub retries: u32,
    /// Wait before a retry.
    pub retry_delay: Duration,
    /// Bound on one attempt (connect, request, answer).
    pub attempt_timeout: Duration,
    /// Seed of the run.
    pub seed: u64,
    /// Per message: first send, acknowledgement.
    pub ledger: RefCell<Vec<Sent>>,
    /// Counts for the report.
    pub counts: Counts,
}

/// Outcomes of attempts and messages.
#[derive(Default)]
pub struct Counts {
    /// Requests written (retries included).
    pub attempts: Cell<u64>,
    /// Attempts answered `503`.
    pub unavailable: Cell<u64>,
    /// Attempts that failed to connect, broke, or ran past the timeout.
    pub failed: Cell<u64>,
    /// Attempts answered anything else but `200` (not retried).
    pub refused: Cell<u64>,
    /// Messages acknowledged.
    pub acked: Cell<u64>,
    /// Messages acknowledged by a retry.
    pub acked_on_retry: Cell<u64>,
    /// Messages never acknowledged.
    pub given_up: Cell<u64>,
}

fn bump(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get() + n);
}

/// Runs lane `lane` of `lanes` until its requests are done.
pub async fn lane(publishing: Rc<Publishing>, lane: usize, lanes: usize) {
    let p = &*publishing;
    let mut rng = Rng::new(p.seed, 4 << 40 | lane as u64);
    let mut connections: Vec<Option<TcpStream>> = p.instances.iter().map(|_| None).collect();
    for request in p.requests.iter().skip(lane).step_by(lanes) {
        let due = p.start_ns + (request.first as f64 / p.rate * 1e9) as u64;
        let now = now_nanos();
        if due > now {
            monoio::time::sleep(Duration::from_nanos(due - now)).await;
        }
        let messages = request.first as usize..(request.first + request.count) as usize;
        let body = p.request(*request);
        let mut acked = false;
        for attempt in 0..=p.retries {
            if attempt > 0 {
                monoio::time::sleep(p.retry_delay).await;
            }
            let instance = rng.below(p.instances.len());
            let sent_ns = now_nanos();
            if attempt == 0 {
                for m in &mut p.ledger.borrow_mut()[messages.clone()] {
                    m.first_sent_ns = sent_ns;
                }
            }
            bump(&p.counts.attempts, 1);
            let kept = connections[instance].take();
            let answer = monoio::time::timeout(p.attempt_timeout, async {
                // A kept-alive connection may have died with its instance
                // since the last request: then once more on a new one.
                if let Some(mut connection) = kept {
                    if let Ok(status) = exchange(&mut connection, body.clone()).await {
                        return Ok((status, connection));
                    }
                }
                let mut connection = TcpStream::connect_addr(p.instances[instance]).await?;
                let status = exchange(&mut connection, body.clone()).await?;
                Ok::<_, std::io::Error>((status, connection))
            })
            .await;
            let status = match answer {
                Ok(Ok((status, connection))) => {
                    connections[instance] = Some(connection);
                    status
                }
                _ => {
                    bump(&p.counts.failed, 1);
                    continue;
                }
            };
            match status {
                200 => {
                    let at = now_nanos();
                    for m in &mut p.ledger.borrow_mut()[messages.clone()] {
                        m.acked_ns = Some(at);
                    }
                    bump(&p.counts.acked, u64::from(request.count));
                    if attempt > 0 {
                        bump(&p.counts.acked_on_retry, u64::from(request.count));
                    }
                    acked = true;
                    break;
                }
                503 => bump(&p.counts.unavailable, 1),
                _ => {
                    bump(&p.counts.refused, 1);
                    break;
                }
            }
        }
        if !acked {
            bump(&p.counts.given_up, u64::from(request.count));
        }
    }
}

impl Publishing {
    /// A ledger with every message unsent, for `targets`.
    pub fn blank_ledger(targets: &[Target]) -> RefCell<Vec<Sent>> {
        RefCell::new(targets.iter().map(|&target| Sent { target, first_sent_ns: 0, acked_ns: None }).collect())
    }

    fn payload(&self, seq: u32) -> String {
        let head = format!("{{\"n\":{seq},\"p\":\"");
        format!("{head}{}\"}}", "x".repeat(self.size.saturating_sub(head.len() + 2)))
    }

    /// The HTTP request for `request`; every attempt sends the same bytes.
    fn request(&self, request: Request) -> Vec<u8> {
        let (path, body) = if request.batch {
            let messages: Vec<String> = (request.first..request.first + request.count)
                .map(|seq| {
                    let target = match self.targets[seq as usize] {
                        Target::User(u) => format!("\"user\":\"u{u}\""),
                        Target::Room(r) => format!("\"room\":\"r{r}\""),
                        Target::All => "\"all\":true".to_owned(),
                    };
                    let id = message_id(&self.id_prefix, seq);
                    format!("{{{target},\"id\":\"{id}\",\"data\":{}}}", self.payload(seq))
                })
                .collect();
            ("/v1/publish".to_owned(), format!("{{\"messages\":[{}]}}", messages.join(",")))
        } else {
            let seq = request.first;
            let route = match self.targets[seq as usize] {
                Target::User(u) => format!("/v1/users/u{u}/events"),
                Target::Room(r) => format!("/v1/rooms/r{r}/events"),
                Target::All => "/v1/broadcast".to_owned(),
            };
            (format!("{route}?id={}", message_id(&self.id_prefix, seq)), self.payload(seq))
        };
        format!(
            "POST {path} HTTP/1.1\r\nHost: loadtest\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}
