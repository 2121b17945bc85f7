//! The cast of a chaos run, the same in every generator process: which rooms
//! each logical subscriber joins, who each message goes to, which messages
//! travel in one batch request, and the ids the publishers give them.
//!
//! Everything is drawn from `--seed`, so worker processes (started with the
//! same arguments) agree with the parent without talking to it.

/// A small deterministic generator (splitmix64): the crate has no `rand`, and
/// the runs only need reproducible, well-spread draws.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for one purpose (`stream`) of one run (`seed`).
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut rng = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        rng.next();
        rng
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Who a message goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// User `u{n}`: the logical subscriber `n`.
    User(u32),
    /// Room `r{n}`.
    Room(u32),
    /// Everyone.
    All,
}

/// The logical subscribers: subscriber `i` is user `u{i}` in one or two rooms.
#[derive(Clone)]
pub struct Cast {
    /// Logical subscribers.
    pub subscribers: usize,
    /// Rooms they are spread over.
    pub rooms: usize,
    seed: u64,
}

impl Cast {
    /// The cast of `subscribers` subscribers over `rooms` rooms (at least 1).
    pub fn new(subscribers: usize, rooms: usize, seed: u64) -> Self {
        Cast { subscribers, rooms: rooms.max(1), seed }
    }

    /// Subscriber `i`'s rooms: one, or (every other subscriber) two distinct ones.
    pub fn rooms_of(&self, i: usize) -> (u32, Option<u32>) {
        let mut rng = Rng::new(self.seed, 1 << 40 | i as u64);
        let first = rng.below(self.rooms);
        let second = (i % 2 == 1 && self.rooms > 1).then(|| (first + 1 + rng.below(self.rooms - 1)) % self.rooms);
        (first as u32, second.map(|r| r as u32))
    }

    /// Whether a message to `target` is addressed to subscriber `i`.
    pub fn addressed(&self, i: usize, target: Target) -> bool {
        match target {
            Target::All => true,
            Target::User(user) => user as usize == i,
            Target::Room(room) => {
                let (first, second) = self.rooms_of(i);
                first == room || second == Some(room)
            }
        }
    }

    /// `/sse` query for subscriber `i`.
    pub fn query(&self, i: usize) -> String {
        match self.rooms_of(i) {
            (first, Some(second)) => format!("userId=u{i}&rooms=r{first},r{second}"),
            (first, None) => format!("userId=u{i}&rooms=r{first}"),
        }
    }
}

/// The id a publisher gives message `seq`.
pub fn message_id(prefix: &str, seq: u32) -> String {
    format!("{prefix}-{seq}")
}

/// The sequence number in an id made by [`message_id`] with `prefix`.
pub fn parse_id(prefix: &str, id: &str) -> Option<u32> {
    id.strip_prefix(prefix)?.strip_prefix('-')?.parse().ok()
}

/// One publish request: messages `first..first + count`, on the batch route
/// or (`count` 1) the single-message route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Sequence number of its first message.
    pub first: u32,
    /// Messages in it.
    pub count: u32,
    /// Through `POST /v1/publish`.
    pub batch: bool,
}

/// How messages are drawn.
#[derive(Clone, Copy)]
pub struct Mix {
    /// Share of messages to one user.
    pub users: f64,
    /// Share of messages to one room (the rest are broadcasts).
    pub rooms: f64,
    /// Share of messages sent through the batch route.
    pub batched: f64,
    /// Messages per batch request.
    pub batch_size: usize,
}

/// Targets of `messages` messages and the requests that carry them.
pub fn draw(cast: &Cast, mix: Mix, messages: usize, seed: u64) -> (Vec<Target>, Vec<Request>) {
    let mut rng = Rng::new(seed, 2);
    let targets = (0..messages)
        .map(|_| {
            let x = rng.unit();
            if x < mix.users {
                Target::User(rng.below(cast.subscribers.max(1)) as u32)
            } else if x < mix.users + mix.rooms {
                Target::Room(rng.below(cast.rooms) as u32)
            } else {
                Target::All
            }
        })
        .collect();
    // A request is a batch with probability p such that the share of messages
    // in batches is `batched`: p·B / (p·B + 1 − p) = s  ⇒  p = s / (B(1 − s) + s).
    let size = mix.batch_size.max(1);
    let s = mix.batched.clamp(0.0, 1.0);
    let p = if size == 1 { 0.0 } else { s / (size as f64 * (1.0 - s) + s) };
    let mut requests = Vec::new();
    let mut seq = 0;
    while seq < messages {
        let batch = rng.unit() < p;
        let count = if batch { size.min(messages - seq) } else { 1 };
        requests.push(Request { first: seq as u32, count: count as u32, batch });
        seq += count;
    }
    (targets, requests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_are_one_or_two_distinct_and_stable() {
        let cast = Cast::new(1000, 7, 42);
        for i in 0..1000 {
            let (first, second) = cast.rooms_of(i);
            assert!(first < 7);
            assert_eq!(second.is_some(), i % 2 == 1);
            assert_ne!(Some(first), second);
            assert_eq!(cast.rooms_of(i), (first, second));
            assert!(cast.addressed(i, Target::Room(first)));
        }
    }

    #[test]
    fn ids_round_trip_and_foreign_ids_are_refused() {
        assert_eq!(parse_id("m", &message_id("m", 1234)), Some(1234));
        assert_eq!(parse_id("m", "mx-1"), None);
        assert_eq!(parse_id("m", "1700000000000-0000abcd-00000001"), None);
    }

    #[test]
    fn the_batched_share_is_about_what_was_asked() {
        let cast = Cast::new(100, 10, 1);
        let mix = Mix { users: 0.5, rooms: 0.3, batched: 0.25, batch_size: 10 };
        let (targets, requests) = draw(&cast, mix, 100_000, 9);
        assert_eq!(requests.iter().map(|r| r.count as usize).sum::<usize>(), targets.len());
        let batched = requests.iter().filter(|r| r.batch).map(|r| r.count as usize).sum::<usize>();
        assert!((batched as f64 / 100_000.0 - 0.25).abs() < 0.02, "{batched}");
        let users = targets.iter().filter(|t| matches!(t, Target::User(_))).count();
        assert!((users as f64 / 100_000.0 - 0.5).abs() < 0.02, "{users}");
    }
}
