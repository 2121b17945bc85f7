//! What one logical subscriber saw over all its connections, and its
//! one-line form for crossing from a worker process to the parent.

/// An `ssekify.gap` notice: where it fell among the messages, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    /// Messages received before it (an index into [`Seen::received`]).
    pub after: u32,
    /// Arrival time, wall-clock nanoseconds.
    pub at_ns: u64,
}

/// A reconnection without `Last-Event-ID` (no message had reached the
/// subscriber yet): a browser then gets only what is published after it, so
/// nothing published while it was away is owed to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreshStart {
    /// When the stream before ended, wall-clock nanoseconds.
    pub closed_ns: u64,
    /// When the new stream's response head arrived.
    pub opened_ns: u64,
}

/// One logical subscriber's observations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// When its first stream's response head arrived: the server writes the
    /// head with the `retry:` line once the subscriber is registered, so
    /// everything published after this must reach it.
    pub first_connected_ns: Option<u64>,
    /// Sequence numbers of the messages received, in arrival order, across
    /// connections (duplicates kept).
    pub received: Vec<u32>,
    /// Gap notices, in arrival order.
    pub gaps: Vec<Gap>,
    /// Reconnections with nothing to resume from, in order.
    pub fresh_starts: Vec<FreshStart>,
    /// Streams opened (answered 200).
    pub connects: u32,
    /// Attempts refused or failed (connect error, non-200, no head).
    pub connect_failures: u32,
    /// Streams opened with a `Last-Event-ID`.
    pub resumes: u32,
    /// Shutdown announcements (any event name other than the two below).
    pub shutdowns: u32,
    /// `ssekify.evicted` notices.
    pub evictions: u32,
    /// Control frames that carried an `id:` line (a browser resumes from it).
    pub controls_with_id: u32,
    /// Messages whose id is not one of this run's.
    pub foreign: u32,
}

impl Seen {
    /// `seen <index> <first|-> <counters…> r:<seq,…> g:<after@ns,…> f:<closed@opened,…>`.
    pub fn to_line(&self, index: usize) -> String {
        let first = self.first_connected_ns.map_or("-".to_owned(), |ns| ns.to_string());
        let received: Vec<String> = self.received.iter().map(u32::to_string).collect();
        let gaps: Vec<String> = self.gaps.iter().map(|g| format!("{}@{}", g.after, g.at_ns)).collect();
        let fresh: Vec<String> = self.fresh_starts.iter().map(|f| format!("{}@{}", f.closed_ns, f.opened_ns)).collect();
        format!(
            "seen {index} {first} {} {} {} {} {} {} {} r:{} g:{} f:{}",
            self.connects,
            self.connect_failures,
            self.resumes,
            self.shutdowns,
            self.evictions,
            self.controls_with_id,
            self.foreign,
            received.join(","),
            gaps.join(","),
            fresh.join(",")
        )
    }

    /// Reads a [`Seen::to_line`] line back: `(index, seen)`.
    pub fn from_line(line: &str) -> Option<(usize, Seen)> {
        let mut fields = line.strip_prefix("seen ")?.split(' ');
        let index = fields.next()?.parse().ok()?;
        let first = fields.next()?;
        let mut counter = || fields.next()?.parse::<u32>().ok();
        let mut seen = Seen {
            first_connected_ns: if first == "-" { None } else { Some(first.parse().ok()?) },
            connects: counter()?,
            connect_failures: counter()?,
            resumes: counter()?,
            shutdowns: counter()?,
            evictions: counter()?,
            controls_with_id: counter()?,
            foreign: counter()?,
            ..Seen::default()
        };
        let received = fields.next()?.strip_prefix("r:")?;
        let gaps = fields.next()?.strip_prefix("g:")?;
        let fresh = fields.next()?.strip_prefix("f:")?;
        seen.received = received.split(',').filter(|s| !s.is_empty()).map(str::parse).collect::<Result<_, _>>().ok()?;
        for gap in gaps.split(',').filter(|s| !s.is_empty()) {
            let (after, at) = gap.split_once('@')?;
            seen.gaps.push(Gap { after: after.parse().ok()?, at_ns: at.parse().ok()? });
        }
        for start in fresh.split(',').filter(|s| !s.is_empty()) {
            let (closed, opened) = start.split_once('@')?;
            seen.fresh_starts.push(FreshStart { closed_ns: closed.parse().ok()?, opened_ns: opened.parse().ok()? });
        }
        Some((index, seen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_form_round_trips() {
        let seen = Seen {
            first_connected_ns: Some(1_700_000_000_123_456_789),
            received: vec![3, 1, 3],
            gaps: vec![Gap { after: 2, at_ns: 1_700_000_001_000_000_000 }],
            fresh_starts: vec![FreshStart {
                closed_ns: 1_700_000_000_200_000_000,
                opened_ns: 1_700_000_000_300_000_000,
            }],
            connects: 4,
            connect_failures: 1,
            resumes: 3,
            shutdowns: 1,
            evictions: 0,
            controls_with_id: 1,
            foreign: 2,
        };
        assert_eq!(Seen::from_line(&seen.to_line(7)), Some((7, seen)));
        let empty = Seen::default();
        assert_eq!(Seen::from_line(&empty.to_line(0)), Some((0, empty)));
    }
}
