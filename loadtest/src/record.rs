//! What the generator measures: per-delivery latency, per-message fan-out
//! completion (the last recipient), and loss, in HDR histograms.

use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

/// Wall-clock nanoseconds: publishers stamp payloads with the scheduled send
/// time and subscribers, possibly in other processes, compare against it.
pub fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Per message: how many deliveries are expected and seen, and the latest one.
#[derive(Clone, Copy, Default)]
struct Message {
    expected: u32,
    received: u32,
    scheduled_ns: u64,
    last_ns: u64,
}

/// Everything one run records.
pub struct Recorder {
    messages: Vec<Message>,
    /// Latency of every delivery, microseconds.
    pub delivery: Histogram<u64>,
    /// Unexpected deliveries (duplicates or unknown sequence numbers).
    pub unexpected: u64,
}

impl Recorder {
    /// A recorder for up to `messages` messages.
    pub fn new(messages: usize) -> Self {
        Recorder {
            messages: vec![Message::default(); messages],
            delivery: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            unexpected: 0,
        }
    }

    /// The publisher sent (or will send) message `seq`, due at `scheduled_ns`.
    pub fn expect(&mut self, seq: usize, expected: u32, scheduled_ns: u64) {
        if let Some(message) = self.messages.get_mut(seq) {
            message.expected = expected;
            message.scheduled_ns = scheduled_ns;
        }
    }

    /// A subscriber received message `seq` stamped `scheduled_ns`.
    pub fn delivered(&mut self, seq: usize, scheduled_ns: u64, at_ns: u64) {
        let latency_us = at_ns.saturating_sub(scheduled_ns) / 1_000;
        let _ = self.delivery.record(latency_us.max(1));
        match self.messages.get_mut(seq) {
            Some(message) if message.expected == 0 || message.received < message.expected => {
                message.received += 1;
                message.last_ns = message.last_ns.max(at_ns);
            }
            _ => self.unexpected += 1,
        }
    }

    /// Lines describing what this recorder saw, for a parent process to merge:
    /// `hist <µs> <count>` and `msg <seq> <received> <last_ns>`.
    pub fn export(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .delivery
            .iter_recorded()
            .map(|v| format!("hist {} {}", v.value_iterated_to(), v.count_at_value()))
            .collect();
        for (seq, message) in self.messages.iter().enumerate().filter(|(_, m)| m.received > 0) {
            lines.push(format!("msg {seq} {} {}", message.received, message.last_ns));
        }
        lines
    }

    /// Merges one line of another process's [`Recorder::export`].
    pub fn merge_line(&mut self, line: &str) {
        let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
        match (line.split_whitespace().next(), fields.as_slice()) {
            (Some("hist"), [value, count]) => {
                let _ = self.delivery.record_n(*value, *count);
            }
            (Some("msg"), [seq, received, last_ns]) => {
                if let Some(message) = self.messages.get_mut(*seq as usize) {
                    message.received += *received as u32;
                    message.last_ns = message.last_ns.max(*last_ns);
                }
            }
            _ => {}
        }
    }

    /// Totals over the first `sent` messages.
    pub fn summary(&self, sent: usize) -> Summary {
        let mut completion = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
        let mut expected = 0u64;
        let mut received = 0u64;
        for message in &self.messages[..sent.min(self.messages.len())] {
            expected += u64::from(message.expected);
            received += u64::from(message.received.min(message.expected));
            if message.received >= message.expected && message.expected > 0 {
                let _ = completion.record((message.last_ns.saturating_sub(message.scheduled_ns) / 1_000).max(1));
            }
        }
        Summary { expected, received, completion }
    }
}

/// Loss and fan-out completion over a run.
pub struct Summary {
    /// Deliveries expected.
    pub expected: u64,
    /// Deliveries seen (duplicates not counted).
    pub received: u64,
    /// Time from scheduled send to the last recipient, microseconds.
    pub completion: Histogram<u64>,
}

/// `p50/p90/p99/p99.9/max` in milliseconds, for tables and JSON.
pub fn percentiles_ms(h: &Histogram<u64>) -> [(&'static str, f64); 5] {
    let ms = |us: u64| us as f64 / 1_000.0;
    [
        ("p50", ms(h.value_at_quantile(0.50))),
        ("p90", ms(h.value_at_quantile(0.90))),
        ("p99", ms(h.value_at_quantile(0.99))),
        ("p999", ms(h.value_at_quantile(0.999))),
        ("max", ms(h.max())),
    ]
}
