//! What instances say to each other outside the log: heartbeats (who is
//! alive), questions about what is connected where (presence, a user's
//! connections, whether a connection exists) with their answers, and
//! evictions of another instance's connection.
//!
//! These travel over plain Pub/Sub, not the log: a question is about now,
//! so a lost one is asked again rather than replayed, and an instance that
//! died simply stops answering. Every instance hears the shared channel
//! (heartbeats, questions to everyone) and its own (answers, questions and
//! evictions addressed to it). Messages are text lines; a key is last on its
//! line, so it may hold spaces (and the NUL of a tenant's internal key).
//! Only the parsing and the bookkeeping live here, no I/O.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytes::{BufMut, Bytes, BytesMut};

use crate::shard::envelope::Question;
use crate::shard::envelope::{Answer, ConnId, ReplyTo};

/// How often an instance says it is alive (and checks its own subscription
/// with the canary): a quarter of `--bus-timeout`, within 50 ms..1 s.
pub fn heartbeat_every(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// How long an instance not heard from still counts as alive: `--bus-timeout`
/// (a Redis stall that long is not a death) and two missed heartbeats.
pub fn alive_for(timeout: Duration) -> Duration {
    timeout + heartbeat_every(timeout) * 2
}

/// The channel every instance hears: heartbeats and questions to all.
pub fn shared_channel(prefix: &str) -> String {
    format!("{prefix}:peers")
}

/// Instance `instance`'s own channel: answers, and what is addressed to it alone.
pub fn own_channel(prefix: &str, instance: u32) -> String {
    format!("{prefix}:peer:{instance:08x}")
}

/// One message on a peer channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMessage {
    /// An instance is alive (sent every heartbeat), with its subscribers
    /// per tenant when tenants have connection quotas (`--tenant-config`).
    Heartbeat {
        /// Who.
        instance: u32,
        /// Tenants with subscribers there, and how many.
        tenants: Vec<(Box<str>, u64)>,
    },
    /// A question; answered on the asker's own channel.
    Question {
        /// The asking instance.
        from: u32,
        /// The asker's number for it.
        id: u64,
        /// What is asked.
        question: Question,
    },
    /// An answer to question `id`.
    Answer {
        /// The answering instance.
        from: u32,
        /// The question.
        id: u64,
        /// The answer, as [`crate::shard::presence::encode_answer`] wrote it.
        body: Bytes,
    },
    /// Close this connection with `ssekify.evicted`: a newer connection of
    /// its user on another instance took its place.
    Evict {
        /// The connection.
        id: ConnId,
    },
}

impl PeerMessage {
    /// The message's bytes on the wire.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            PeerMessage::Heartbeat { instance, tenants } => {
                out.put_slice(format!("h {instance:08x}").as_bytes());
                for (tenant, count) in tenants {
                    out.put_slice(format!("\n{count} {tenant}").as_bytes());
                }
            }
            PeerMessage::Question { from, id, question } => {
                out.put_slice(format!("q {from:08x} {id} ").as_bytes());
                match question {
                    Question::User { user, list } => out.put_slice(format!("u {list} {user}").as_bytes()),
                    Question::Room { room, list } => out.put_slice(format!("r {list} {room}").as_bytes()),
                    Question::Connection { id } => out.put_slice(format!("c {id}").as_bytes()),
                }
            }
            PeerMessage::Answer { from, id, body } => {
                out.put_slice(format!("a {from:08x} {id}\n").as_bytes());
                out.put_slice(body);
            }
            PeerMessage::Evict { id } => out.put_slice(format!("e {id}").as_bytes()),
        }
        out.freeze()
    }

    /// Reads a message; `None` for anything malformed (a message from a
    /// newer or broken peer is ignored, never trusted).
    pub fn parse(payload: &Bytes) -> Option<PeerMessage> {
        let (head, rest) = match payload.iter().position(|&b| b == b'\n') {
            Some(at) => (&payload[..at], Some(payload.slice(at + 1..))),
            None => (&payload[..], None),
        };
        let head = std::str::from_utf8(head).ok()?;
        let (kind, head) = head.split_once(' ')?;
        match (kind, rest) {
            ("h", rest) => {
                let instance = parse_instance(head)?;
                let lines = rest.as_deref().map(std::str::from_utf8).transpose().ok()?.unwrap_or_default();
                let tenants = if rest.is_none() { Vec::new() } else { parse_tenant_counts(lines)? };
                Some(PeerMessage::Heartbeat { instance, tenants })
            }
            ("e", None) => Some(PeerMessage::Evict { id: ConnId::parse(head)? }),
            ("a", Some(body)) => {
                let (from, id) = head.split_once(' ')?;
                Some(PeerMessage::Answer { from: parse_instance(from)?, id: parse_number(id)?, body })
            }
            ("q", None) => {
                let mut fields = head.splitn(3, ' ');
                let from = parse_instance(fields.next()?)?;
                let id = parse_number(fields.next()?)?;
                let (what, rest) = fields.next()?.split_once(' ')?;
                let question = match what {
                    "c" => Question::Connection { id: ConnId::parse(rest)? },
                    "u" | "r" => {
                        let (list, key) = rest.split_once(' ')?;
                        let list = u32::try_from(parse_number(list)?).ok()?;
                        let key: Box<str> = crate::namespace::valid_key(key).then_some(key)?.into();
                        if what == "u" {
                            Question::User { user: key, list }
                        } else {
                            Question::Room { room: key, list }
                        }
                    }
                    _ => return None,
                };
                Some(PeerMessage::Question { from, id, question })
            }
            _ => None,
        }
    }
}

/// A heartbeat's tenant lines, `<count> <tenant>`; `None` if any is malformed.
fn parse_tenant_counts(lines: &str) -> Option<Vec<(Box<str>, u64)>> {
    lines
        .split('\n')
        .map(|line| {
            let (count, tenant) = line.split_once(' ')?;
            crate::namespace::valid_name(tenant).then_some(())?;
            Some((tenant.into(), parse_number(count)?))
        })
        .collect()
}

fn parse_instance(text: &str) -> Option<u32> {
    if text.len() != 8 || !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

fn parse_number(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Every instance's answer to one question, as the asking shard gets it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Answers {
    /// The instances asked (alive when it was asked).
    pub asked: u32,
    /// Per answering instance, its answer's body.
    pub answers: Vec<(u32, Bytes)>,
}

impl Answers {
    /// The [`Answer`] envelope that carries these to a shard: `values` are
    /// `[asked, instance, length, instance, length, …]`, `body` the bodies in a row.
    pub fn into_answer(self) -> Answer {
        let mut values = vec![u64::from(self.asked)];
        let mut body = BytesMut::new();
        for (instance, answer) in &self.answers {
            values.push(u64::from(*instance));
            values.push(answer.len() as u64);
            body.put_slice(answer);
        }
        Answer { values, body: Some(body.freeze()) }
    }

    /// Reads what [`Answers::into_answer`] wrote.
    pub fn from_answer(answer: Answer) -> Answers {
        let body = answer.body.unwrap_or_default();
        let mut values = answer.values.into_iter();
        let asked = values.next().unwrap_or(0) as u32;
        let mut answers = Vec::new();
        let mut at = 0usize;
        while let (Some(instance), Some(length)) = (values.next(), values.next()) {
            let end = at.saturating_add(length as usize).min(body.len());
            answers.push((instance as u32, body.slice(at..end)));
            at = end;
        }
        Answers { asked, answers }
    }
}

/// A question waiting for its answers.
#[derive(Debug)]
struct Waiting {
    reply: ReplyTo,
    waiting_for: Vec<u32>,
    answers: Answers,
    deadline: Instant,
}

/// What was last heard from an instance.
#[derive(Debug)]
struct Heard {
    at: Instant,
    tenants: Vec<(Box<str>, u64)>,
}

/// The instances heard recently and the questions waiting for them.
#[derive(Debug)]
pub struct Peers {
    alive_for: Duration,
    heard: HashMap<u32, Heard>,
    waiting: HashMap<u64, Waiting>,
    next_id: u64,
}

impl Peers {
    /// An instance not heard for `alive_for` is taken for gone.
    pub fn new(alive_for: Duration) -> Self {
        Peers { alive_for, heard: HashMap::new(), waiting: HashMap::new(), next_id: 1 }
    }

    /// Any message from `instance`.
    pub fn heard(&mut self, instance: u32, now: Instant) {
        self.heard.entry(instance).or_insert_with(|| Heard { at: now, tenants: Vec::new() }).at = now;
    }

    /// A heartbeat from `instance`, with its subscribers per tenant.
    pub fn heartbeat(&mut self, instance: u32, now: Instant, tenants: Vec<(Box<str>, u64)>) {
        self.heard.insert(instance, Heard { at: now, tenants });
    }

    /// Whether `instance` was heard recently.
    pub fn is_alive(&self, instance: u32, now: Instant) -> bool {
        self.heard.get(&instance).is_some_and(|heard| now.duration_since(heard.at) <= self.alive_for)
    }

    /// Subscribers per tenant on the instances alive other than `me`, as
    /// their last heartbeats said.
    pub fn tenants_elsewhere(&self, me: u32, now: Instant) -> AHashMap<Box<str>, u64> {
        let mut sums: AHashMap<Box<str>, u64> = AHashMap::new();
        for (_, heard) in self.heard.iter().filter(|(&i, _)| i != me && self.is_alive(i, now)) {
            for (tenant, count) in &heard.tenants {
                *sums.entry(tenant.clone()).or_default() += count;
            }
        }
        sums
    }

    /// The instances heard recently, in a stable order.
    pub fn alive(&self, now: Instant) -> Vec<u32> {
        let mut alive: Vec<u32> = self.heard.keys().copied().filter(|&i| self.is_alive(i, now)).collect();
        alive.sort_unstable();
        alive
    }

    /// Registers a question to `asked` (answered to `reply` by `deadline`)
    /// and returns its number.
    pub fn ask(&mut self, asked: Vec<u32>, reply: ReplyTo, deadline: Instant) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let answers = Answers { asked: asked.len() as u32, answers: Vec::with_capacity(asked.len()) };
        self.waiting.insert(id, Waiting { reply, waiting_for: asked, answers, deadline });
        id
    }

    /// An answer came; the question's answers when it was the last awaited.
    pub fn answered(&mut self, id: u64, from: u32, body: Bytes) -> Option<(ReplyTo, Answers)> {
        let waiting = self.waiting.get_mut(&id)?;
        let at = waiting.waiting_for.iter().position(|&i| i == from)?;
        waiting.waiting_for.swap_remove(at);
        waiting.answers.answers.push((from, body));
        self.take_if_done(id)
    }

    /// Questions past their deadline, or waiting only for instances no
    /// longer alive, with what they got; instances long silent are forgotten.
    pub fn settle(&mut self, now: Instant) -> Vec<(ReplyTo, Answers)> {
        let alive_for = self.alive_for;
        self.heard.retain(|_, heard| now.duration_since(heard.at) <= alive_for * 4);
        let heard = &self.heard;
        let mut done = Vec::new();
        for (&id, waiting) in &mut self.waiting {
            waiting.waiting_for.retain(|i| heard.get(i).is_some_and(|h| now.duration_since(h.at) <= alive_for));
            if waiting.waiting_for.is_empty() || waiting.deadline <= now {
                done.push(id);
            }
        }
        done.into_iter().filter_map(|id| self.waiting.remove(&id)).map(|w| (w.reply, w.answers)).collect()
    }

    /// Every question, with what it got (the session ended).
    pub fn abandon(&mut self) -> Vec<(ReplyTo, Answers)> {
        self.waiting.drain().map(|(_, w)| (w.reply, w.answers)).collect()
    }

    fn take_if_done(&mut self, id: u64) -> Option<(ReplyTo, Answers)> {
        if !self.waiting.get(&id)?.waiting_for.is_empty() {
            return None;
        }
        self.waiting.remove(&id).map(|w| (w.reply, w.answers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::presence::{decode_answer, encode_answer};

    fn reply() -> ReplyTo {
        ReplyTo { shard: 0, slot: 1, generation: 2, position: 0 }
    }

    #[test]
    fn every_message_reads_back_as_written() {
        let id = ConnId { instance: 0x00ab_cdef, shard: 1, slot: 2, serial: 3 };
        let messages = [
            PeerMessage::Heartbeat { instance: 7, tenants: Vec::new() },
            PeerMessage::Heartbeat { instance: 7, tenants: vec![("acme".into(), 3), ("big co".into(), 0)] },
            PeerMessage::Question { from: 1, id: 9, question: Question::User { user: "ann lee".into(), list: 3 } },
            PeerMessage::Question { from: 1, id: 10, question: Question::Room { room: "acme\0lobby".into(), list: 0 } },
            PeerMessage::Question { from: 2, id: 11, question: Question::Connection { id } },
            PeerMessage::Answer { from: 3, id: 9, body: encode_answer(&[2], &["a 1".into(), "b 2".into()]) },
            PeerMessage::Answer { from: 3, id: 9, body: Bytes::new() },
            PeerMessage::Evict { id },
        ];
        for message in messages {
            assert_eq!(PeerMessage::parse(&message.encode()), Some(message.clone()), "{message:?}");
        }
    }

    #[test]
    fn malformed_messages_are_ignored() {
        for bad in [
            "",
            "h",
            "h 7",
            "h 00000007\n",
            "h 00000007\nx acme",
            "h 00000007\n1 a/b",
            "h 0000000G",
            "q 00000001 x u 1 ann",
            "q 00000001 1 u x ann",
            "q 00000001 1 u 1 ",
            "q 00000001 1 u 1 a,b",
            "q 00000001 1 z 1 ann",
            "q 00000001 1 c nope",
            "a 00000001 1",
            "e 1-2-3",
            "x 00000001",
        ] {
            assert_eq!(PeerMessage::parse(&Bytes::from(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn answers_carry_counts_and_lines() {
        let body = encode_answer(&[2, 1], &["ann".into(), "bob".into()]);
        assert_eq!(decode_answer(&body), Some((vec![2, 1], vec!["ann", "bob"])));
        assert_eq!(decode_answer(b"1 x"), None);
        let answers = Answers { asked: 3, answers: vec![(1, Bytes::from("2")), (5, Bytes::from("0\nx"))] };
        assert_eq!(Answers::from_answer(answers.clone().into_answer()), answers);
    }

    #[test]
    fn a_question_completes_when_every_alive_instance_answered() {
        let now = Instant::now();
        let mut peers = Peers::new(Duration::from_secs(3));
        peers.heard(1, now);
        peers.heard(2, now);
        let id = peers.ask(peers.alive(now), reply(), now + Duration::from_secs(2));
        assert!(peers.answered(id, 1, Bytes::from("1")).is_none());
        assert!(peers.answered(id, 9, Bytes::from("1")).is_none(), "not asked");
        let (_, answers) = peers.answered(id, 2, Bytes::from("0")).expect("complete");
        assert_eq!(answers.asked, 2);
        assert_eq!(answers.answers.len(), 2);
        assert!(peers.answered(id, 2, Bytes::from("0")).is_none(), "answered once");
    }

    #[test]
    fn tenant_counts_add_up_over_the_other_instances_alive() {
        let now = Instant::now();
        let mut peers = Peers::new(Duration::from_secs(3));
        peers.heartbeat(1, now, vec![("acme".into(), 5)]);
        peers.heartbeat(2, now, vec![("acme".into(), 2), ("globex".into(), 1)]);
        peers.heartbeat(3, now - Duration::from_secs(4), vec![("acme".into(), 100)]);
        peers.heard(2, now);
        let elsewhere = peers.tenants_elsewhere(1, now);
        assert_eq!(elsewhere.get("acme"), Some(&2), "not its own, not the silent instance's");
        assert_eq!(elsewhere.get("globex"), Some(&1), "a message other than a heartbeat keeps the counts");
    }

    #[test]
    fn a_silent_instance_delays_a_question_until_it_is_taken_for_gone_or_the_deadline() {
        let now = Instant::now();
        let mut peers = Peers::new(Duration::from_secs(3));
        peers.heard(1, now);
        peers.heard(2, now - Duration::from_secs(2));
        let id = peers.ask(peers.alive(now), reply(), now + Duration::from_secs(10));
        assert!(peers.answered(id, 1, Bytes::from("1")).is_none());
        assert!(peers.settle(now + Duration::from_millis(500)).is_empty(), "2 may still answer");
        let done = peers.settle(now + Duration::from_millis(1500));
        assert_eq!(done.len(), 1, "2 is gone: answered with what came");
        assert_eq!(done[0].1.answers.len(), 1);
        assert_eq!(peers.alive(now + Duration::from_millis(1500)), vec![1]);

        let id = peers.ask(vec![1], reply(), now + Duration::from_secs(1));
        assert!(peers.settle(now + Duration::from_millis(900)).is_empty());
        assert_eq!(peers.settle(now + Duration::from_secs(1)).len(), 1, "deadline");
        assert!(peers.answered(id, 1, Bytes::new()).is_none(), "late answers are dropped");
    }
}
