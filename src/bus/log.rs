//! The bus log in Redis: one atomic append per wire entry, and the commands
//! that read it back.
//!
//! Each partition `p` of channel `c` has three things, all hash-tagged
//! `{c:p}` so a Redis Cluster keeps them on one slot and the append runs as
//! one script there:
//! - `{c:p}:meta`, a hash: `epoch` (a random id made when the log is created
//!   or [rebased](REBASE)), `base` (the epoch's first sequence number) and
//!   `seq` (the last sequence number given out);
//! - `{c:p}:log`, a Stream of entries with ids `<seq>-0`, trimmed to about
//!   `--bus-history` entries;
//! - `{c:p}:n`, the Pub/Sub channel notified of each append.
//!
//! [`APPEND`] (after Centrifugo's `broker_history_add_stream.lua`) drops the
//! messages whose dedupe key it has seen within the idempotency window, then
//! gives the rest the next sequence number, appends them, and publishes
//! `<epoch>:<seq>:<entry>` — the entry left out when it is large, so a burst
//! of big batches never fills a subscriber's output buffer: receivers read
//! those from the stream. A log whose `meta` is gone (Redis restarted without
//! persistence, `FLUSHALL`, keys evicted) starts over under a new epoch, which
//! tells every receiver that what it knew is gone: the appending instance's
//! prefix and Redis's clock to the microsecond, so a log an instance creates
//! again within one session (a flush, no reconnect) never has the epoch of
//! the log it replaces, whose sequence numbers receivers would take for old
//! news.

use bytes::{BufMut, Bytes, BytesMut};

use super::resp::{self, Reply};

/// The append script. KEYS: meta, log. ARGV: a new epoch's prefix, history, channel,
/// inline limit, window (ms), the publish command (`PUBLISH`, or `SPUBLISH`
/// for sharded Pub/Sub on a Redis 7 Cluster), header, then (dedupe key, id,
/// message) triples.
/// Returns `{seq, epoch, receivers, i1, id1, i2, id2, …}` listing the messages
/// dropped as duplicates (1-based index, id first published under that key);
/// `seq` 0 when all were.
pub const APPEND: &str = r#"
local meta, log = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  local now = redis.call('TIME')
  epoch = ARGV[1] .. now[1] .. string.format('%06d', now[2])
  redis.call('HSET', meta, 'epoch', epoch, 'base', 1)
  redis.call('DEL', log)
end
local kept, dups, n = {ARGV[7]}, {}, 0
for i = 8, #ARGV, 3 do
  n = n + 1
  local fresh = true
  if ARGV[i] ~= '' then
    local key = meta .. ':id:' .. ARGV[i]
    if not redis.call('SET', key, ARGV[i + 1], 'NX', 'PX', ARGV[5]) then
      fresh = false
      dups[#dups + 1] = n
      dups[#dups + 1] = redis.call('GET', key) or ARGV[i + 1]
    end
  end
  if fresh then kept[#kept + 1] = ARGV[i + 2] end
end
if #kept == 1 then
  local reply = {0, epoch, 0}
  for _, v in ipairs(dups) do reply[#reply + 1] = v end
  return reply
end
local seq = redis.call('HINCRBY', meta, 'seq', 1)
local entry = table.concat(kept)
redis.call('XADD', log, 'MAXLEN', '~', ARGV[2], seq .. '-0', 'e', entry)
local note = epoch .. ':' .. seq .. ':'
if #entry <= tonumber(ARGV[4]) then note = note .. entry end
local reply = {seq, epoch, redis.call(ARGV[6], ARGV[3], note)}
for _, v in ipairs(dups) do reply[#reply + 1] = v end
return reply
"#;

/// Starts a new epoch at the log's next sequence, if the epoch is still
/// `ARGV[1]` (another instance may have done it already): a log that went
/// back must not give out numbers instances applied as other entries.
/// KEYS: meta. ARGV: old epoch, new epoch. Returns `{epoch, seq, base}`.
pub const REBASE: &str = r#"
local meta = KEYS[1]
if redis.call('HGET', meta, 'epoch') == ARGV[1] then
  local seq = tonumber(redis.call('HGET', meta, 'seq') or '0')
  redis.call('HSET', meta, 'epoch', ARGV[2], 'base', seq + 1)
end
return redis.call('HMGET', meta, 'epoch', 'seq', 'base')
"#;

/// Claims the bus's partition count for this instance's, or renews the
/// claim when the count held is the same; returns the count held (this
/// instance's unless another is). KEYS: the layout key. ARGV: partitions,
/// lease (ms). A write Redis refuses for now (a full Redis) leaves the claim
/// as it was without contradicting it; a read-only replica's refusal is the
/// answer (no append could be made there either).
pub const LAYOUT: &str = r#"
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return held end
local set = redis.pcall('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if type(set) == 'table' and set.err and string.sub(set.err, 1, 8) == 'READONLY' then return set end
return ARGV[1]
"#;

/// Where the partition count of bus `channel` is held: on partition 0's
/// slot, so a Cluster keeps it beside that partition's log.
///
/// Instances that split users, rooms and broadcasts over different counts
/// publish each to a partition the others may not read: acknowledged
/// messages would not reach them. The count is claimed with a lease each
/// live instance renews (its canary's pace), so a tier restarted with a new
/// count is held back only until the last old instance's lease runs out.
pub fn layout_key(channel: &str) -> String {
    format!("{{{channel}:0}}:partitions")
}

/// How long a claim on the partition count outlives its last renewal: three
/// times what a session may go unanswered plus a canary's interval.
pub fn layout_lease(timeout: std::time::Duration) -> std::time::Duration {
    (timeout + super::peer::heartbeat_every(timeout)) * 3
}

/// `EVAL LAYOUT` for `partitions`; answered with the count the bus holds.
pub fn layout_command(out: &mut BytesMut, key: &str, partitions: u16, lease: std::time::Duration) {
    let (partitions, lease) = (partitions.to_string(), lease.as_millis().max(1).to_string());
    resp::command(out, &[b"EVAL", LAYOUT.as_bytes(), b"1", key.as_bytes(), partitions.as_bytes(), lease.as_bytes()]);
}

/// The partition count in a reply to [`layout_command`].
pub fn parse_layout(reply: &Reply) -> Result<u16, String> {
    reply
        .text()
        .and_then(|count| count.parse().ok())
        .ok_or_else(|| format!("unexpected reply to the partition count's claim: {reply:?}"))
}

/// Entries up to this size travel inside the notification; larger ones are
/// read from the stream (see the module docs).
pub const INLINE_MAX: usize = 64 * 1024;

/// Largest wire entry a publish is split into: far below Redis's default
/// `client-output-buffer-limit pubsub 32mb 8mb 60` even when read back in a
/// catch-up of [`RANGE_COUNT`] entries.
pub const CHUNK_MAX: usize = 256 * 1024;

/// Entries asked for per catch-up read, at most: a Redis that cuts off
/// large replies to ordinary clients (`client-output-buffer-limit normal`)
/// gets fewer ([`RangeSize`]).
pub const RANGE_COUNT: usize = 64;

/// How catch-up reads go: how many entries each asks for, and whether they
/// wait for each other. Each time a session ends while a read was on its way
/// (Redis may have closed the connection over the replies' size: a
/// `client-output-buffer-limit normal`), reads ask for half as many and go
/// one at a time per connection; every [`GROW_AFTER`] reads that came back
/// full, one entry more, and back at [`RANGE_COUNT`] they go together again.
/// A Redis with a tight limit is then read in pieces it lets through, instead
/// of the same reads cut off at every reconnect; an instance whose connection
/// broke for another reason is back where it was as it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeSize {
    count: usize,
    full_reads: usize,
    one_at_a_time: bool,
}

/// Full reads between two steps of growth.
const GROW_AFTER: usize = 16;

impl Default for RangeSize {
    fn default() -> Self {
        RangeSize { count: RANGE_COUNT, full_reads: 0, one_at_a_time: false }
    }
}

impl RangeSize {
    /// Entries the next read asks for.
    pub fn get(self) -> usize {
        self.count
    }

    /// True after a read was cut off, until reads are back at their largest:
    /// a connection has one read out at a time.
    pub fn one_at_a_time(self) -> bool {
        self.one_at_a_time
    }

    /// A session ended with a read outstanding.
    pub fn cut(&mut self) {
        self.count = (self.count / 2).max(1);
        self.full_reads = 0;
        self.one_at_a_time = true;
    }

    /// A read asking for `asked` brought that many.
    pub fn came_back_full(&mut self, asked: usize) {
        if asked < self.count {
            return;
        }
        self.full_reads += 1;
        if self.full_reads >= GROW_AFTER {
            self.full_reads = 0;
            self.count = (self.count + 1).min(RANGE_COUNT);
            self.one_at_a_time &= self.count < RANGE_COUNT;
        }
    }
}

/// The names of one partition's keys and channel.
#[derive(Debug, Clone)]
pub struct PartitionKeys {
    /// Hash of epoch and last sequence.
    pub meta: String,
    /// The stream.
    pub log: String,
    /// The notification channel.
    pub channel: String,
}

impl PartitionKeys {
    /// Keys of partition `partition` of bus channel `channel`.
    pub fn new(channel: &str, partition: u16) -> Self {
        let tag = format!("{{{channel}:{partition}}}");
        PartitionKeys { meta: format!("{tag}:meta"), log: format!("{tag}:log"), channel: format!("{tag}:n") }
    }
}

/// The partition whose notification channel is `channel`: read from its
/// name (`{<bus channel>:<partition>}:n`, the number's digits just before
/// the fixed `}:n`, found without a search of the name), then checked
/// against `keys` (one comparison per notification, not one per partition).
pub fn partition_of(keys: &[PartitionKeys], channel: &[u8]) -> Option<u16> {
    let end = channel.len().checked_sub(3).filter(|&end| &channel[end..] == b"}:n")?;
    let digits = channel[..end].iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let partition = u16::try_from(crate::text::decimal(&channel[end - digits..end])?).ok()?;
    (keys.get(usize::from(partition))?.channel.as_bytes() == channel).then_some(partition)
}

/// Settings every append carries.
#[derive(Debug, Clone, Copy)]
pub struct AppendSettings {
    /// Entries kept per partition.
    pub history: u64,
    /// How long a dedupe key is remembered, in milliseconds.
    pub window_ms: u64,
    /// Notify with `SPUBLISH` (sharded Pub/Sub: a Redis 7 Cluster) instead of `PUBLISH`.
    pub sharded: bool,
}

/// One message of an append: its dedupe key (`None`: never a duplicate), id and bytes.
#[derive(Debug, Clone)]
pub struct AppendItem {
    /// Set when a retry must find it: the target and the publisher's id, or
    /// the request's `Idempotency-Key` and the message's position.
    pub dedupe: Option<Bytes>,
    /// The message id (what a later duplicate is told).
    pub id: Bytes,
    /// [`super::wire::message`] bytes.
    pub message: Bytes,
}

/// Appends `EVALSHA <sha> …` for one entry to `out`.
pub fn append_command(
    out: &mut BytesMut,
    sha: &str,
    keys: &PartitionKeys,
    epoch: &str,
    settings: AppendSettings,
    header: &[u8],
    items: &[AppendItem],
) {
    let history = settings.history.to_string();
    let window = settings.window_ms.max(1).to_string();
    let inline = INLINE_MAX.to_string();
    let publish: &[u8] = if settings.sharded { b"SPUBLISH" } else { b"PUBLISH" };
    let mut args: Vec<&[u8]> = Vec::with_capacity(12 + 3 * items.len());
    args.extend_from_slice(&[
        b"EVALSHA",
        sha.as_bytes(),
        b"2",
        keys.meta.as_bytes(),
        keys.log.as_bytes(),
        epoch.as_bytes(),
        history.as_bytes(),
        keys.channel.as_bytes(),
        inline.as_bytes(),
        window.as_bytes(),
        publish,
        header,
    ]);
    for item in items {
        args.push(item.dedupe.as_deref().unwrap_or_default());
        args.push(&item.id);
        args.push(&item.message);
    }
    resp::command(out, &args);
}

/// What the append script answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The entry's sequence number; 0 when every message was a duplicate.
    pub seq: u64,
    /// The log's epoch.
    pub epoch: String,
    /// Subscribers that Redis published the notification to.
    pub receivers: u64,
    /// Messages dropped as duplicates: 0-based index and the id first published.
    pub duplicates: Vec<(usize, String)>,
}

/// Reads the append script's reply.
pub fn parse_appended(reply: &Reply) -> Result<Appended, String> {
    let bad = || format!("unexpected reply to the log append: {reply:?}");
    let Reply::Array(items) = reply else { return Err(bad()) };
    let [seq, epoch, receivers, rest @ ..] = items.as_slice() else { return Err(bad()) };
    let (Reply::Int(seq), Some(epoch), Reply::Int(receivers)) = (seq, epoch.text(), receivers) else {
        return Err(bad());
    };
    let mut duplicates = Vec::with_capacity(rest.len() / 2);
    for pair in rest.chunks(2) {
        match pair {
            [Reply::Int(index), id] if *index >= 1 => {
                duplicates.push((*index as usize - 1, id.text().unwrap_or_default().to_owned()));
            }
            _ => return Err(bad()),
        }
    }
    Ok(Appended {
        seq: (*seq).max(0) as u64,
        epoch: epoch.to_owned(),
        receivers: (*receivers).max(0) as u64,
        duplicates,
    })
}

/// A notification from a partition's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice<'a> {
    /// The log's epoch.
    pub epoch: &'a str,
    /// The entry's sequence number.
    pub seq: u64,
    /// The entry, unless it was too large to travel inline.
    pub entry: Option<Bytes>,
}

/// Parses `<epoch>:<seq>:<entry>` (the epoch borrowed: it is kept only when it changes).
pub fn parse_notice(payload: &Bytes) -> Option<Notice<'_>> {
    let first = memchr::memchr(b':', payload)?;
    let second = first + 1 + memchr::memchr(b':', &payload[first + 1..])?;
    let epoch = crate::text::utf8(&payload[..first])?;
    let seq = crate::text::decimal(&payload[first + 1..second])?;
    let entry = payload.slice(second + 1..);
    (seq > 0 && !epoch.is_empty()).then(|| Notice { epoch, seq, entry: (!entry.is_empty()).then_some(entry) })
}

/// `HMGET meta epoch seq base`: where a partition's log stands.
pub fn state_command(out: &mut BytesMut, keys: &PartitionKeys) {
    resp::command(out, &[b"HMGET", keys.meta.as_bytes(), b"epoch", b"seq", b"base"]);
}

/// `EVAL REBASE` from `epoch` to `new_epoch`; answered like [`state_command`].
pub fn rebase_command(out: &mut BytesMut, keys: &PartitionKeys, epoch: &str, new_epoch: &str) {
    resp::command(
        out,
        &[b"EVAL", REBASE.as_bytes(), b"1", keys.meta.as_bytes(), epoch.as_bytes(), new_epoch.as_bytes()],
    );
}

/// Where a log stands: its epoch (`None`: no log yet), last sequence, and the
/// epoch's first sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogState {
    /// The epoch.
    pub epoch: Option<String>,
    /// The last sequence given out.
    pub seq: u64,
    /// The epoch's first sequence.
    pub base: u64,
}

/// Reads the answer to [`state_command`] or [`rebase_command`].
pub fn parse_state(reply: &Reply) -> Result<LogState, String> {
    match reply {
        Reply::Array(items) if items.len() == 3 => {
            let number = |item: &Reply| item.text().and_then(|s| s.parse().ok());
            Ok(LogState {
                epoch: items[0].text().map(str::to_owned),
                seq: number(&items[1]).unwrap_or(0),
                base: number(&items[2]).unwrap_or(1),
            })
        }
        other => Err(format!("unexpected reply to a read of the log state: {other:?}")),
    }
}

/// `XRANGE log <from>-0 + COUNT count`: entries from sequence `from` on.
pub fn range_command(out: &mut BytesMut, keys: &PartitionKeys, from: u64, count: usize) {
    let mut start = BytesMut::with_capacity(24);
    start.put_slice(from.to_string().as_bytes());
    start.put_slice(b"-0");
    let count = count.to_string();
    resp::command(out, &[b"XRANGE", keys.log.as_bytes(), &start, b"+", b"COUNT", count.as_bytes()]);
}

/// The `(seq, entry)` pairs of an XRANGE reply, in order.
pub fn parse_range(reply: &Reply) -> Result<Vec<(u64, Bytes)>, String> {
    let bad = || format!("unexpected reply to XRANGE of the log: {reply:?}");
    let Reply::Array(items) = reply else { return Err(bad()) };
    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        let Reply::Array(parts) = item else { return Err(bad()) };
        let [id, Reply::Array(fields)] = parts.as_slice() else { return Err(bad()) };
        let seq = id.text().and_then(|id| id.strip_suffix("-0")).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let entry = match fields.as_slice() {
            [name, Reply::Text(entry)] if name.text() == Some("e") => entry.clone(),
            _ => return Err(bad()),
        };
        entries.push((seq, entry));
    }
    Ok(entries)
}

/// Which node serves each slot, from a `CLUSTER SLOTS` reply: `(first
/// slot, last slot, "host:port")`.
pub fn parse_slots(reply: &Reply) -> Result<Vec<(u16, u16, String)>, String> {
    let bad = || format!("unexpected reply to CLUSTER SLOTS: {reply:?}");
    let Reply::Array(ranges) = reply else { return Err(bad()) };
    let mut slots = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Reply::Array(parts) = range else { return Err(bad()) };
        let [Reply::Int(first), Reply::Int(last), Reply::Array(master), ..] = parts.as_slice() else {
            return Err(bad());
        };
        let (Some(host), Some(Reply::Int(port))) = (master.first().and_then(Reply::text), master.get(1)) else {
            return Err(bad());
        };
        slots.push((*first as u16, *last as u16, format!("{host}:{port}")));
    }
    Ok(slots)
}

/// The Redis major version an `INFO server` reply names.
pub fn parse_major_version(reply: &Reply) -> Option<u32> {
    let info = reply.text()?;
    let version = info.lines().find_map(|line| line.strip_prefix("redis_version:"))?;
    version.trim().split('.').next()?.parse().ok()
}

/// The SHA1 Redis names [`APPEND`] by, as `SCRIPT LOAD` answers it.
pub fn parse_sha(reply: &Reply) -> Result<String, String> {
    reply
        .text()
        .filter(|sha| sha.len() == 40)
        .map(str::to_owned)
        .ok_or_else(|| format!("unexpected reply to SCRIPT LOAD: {reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let keys = PartitionKeys::new("ssekify:bus", 3);
        assert_eq!(keys.meta, "{ssekify:bus:3}:meta");
        assert_eq!(keys.log, "{ssekify:bus:3}:log");
        assert_eq!(keys.channel, "{ssekify:bus:3}:n");
    }

    #[test]
    fn cluster_slots_and_versions_are_read() {
        let text = |s: &'static str| Reply::Text(Bytes::from_static(s.as_bytes()));
        let slots = Reply::Array(vec![Reply::Array(vec![
            Reply::Int(0),
            Reply::Int(5460),
            Reply::Array(vec![text("10.0.0.1"), Reply::Int(7000), text("id")]),
            Reply::Array(vec![text("10.0.0.4"), Reply::Int(7003), text("id2")]),
        ])]);
        assert_eq!(parse_slots(&slots).unwrap(), vec![(0, 5460, "10.0.0.1:7000".to_owned())]);
        assert!(parse_slots(&Reply::Array(vec![Reply::Int(1)])).is_err());
        assert_eq!(parse_major_version(&text("# Server\r\nredis_version:7.0.15\r\nredis_mode:cluster\r\n")), Some(7));
        assert_eq!(parse_major_version(&text("redis_version:6.2.1")), Some(6));
        assert_eq!(parse_major_version(&text("nothing")), None);
    }

    #[test]
    fn a_notification_channel_names_its_partition() {
        let keys: Vec<PartitionKeys> = (0..16).map(|p| PartitionKeys::new("ssekify:bus", p)).collect();
        assert_eq!(partition_of(&keys, b"{ssekify:bus:0}:n"), Some(0));
        assert_eq!(partition_of(&keys, b"{ssekify:bus:15}:n"), Some(15));
        for other in [
            &b"{ssekify:bus:16}:n"[..],
            b"{other:bus:3}:n",
            b"{ssekify:bus:03}:n",
            b"ssekify:bus:peers",
            b"{}:n",
            b"}:n",
            b"",
            b"{ssekify:bus:99999999999999999999999}:n",
        ] {
            assert_eq!(partition_of(&keys, other), None, "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn catch_up_reads_halve_when_cut_and_grow_back_slowly() {
        let mut size = RangeSize::default();
        assert_eq!((size.get(), size.one_at_a_time()), (RANGE_COUNT, false));
        size.cut();
        size.cut();
        assert_eq!((size.get(), size.one_at_a_time()), (RANGE_COUNT / 4, true));
        for _ in 0..GROW_AFTER - 1 {
            size.came_back_full(RANGE_COUNT / 4);
        }
        size.came_back_full(RANGE_COUNT);
        assert_eq!(size.get(), RANGE_COUNT / 4 + 1, "a step after {GROW_AFTER} full reads");
        for _ in 0..GROW_AFTER * 4 {
            size.came_back_full(1);
        }
        assert_eq!(size.get(), RANGE_COUNT / 4 + 1, "reads asked before the cut do not count");
        for _ in 0..GROW_AFTER * RANGE_COUNT * 2 {
            size.came_back_full(size.get());
        }
        assert_eq!((size.get(), size.one_at_a_time()), (RANGE_COUNT, false), "never above the most, together again");
        for _ in 0..10 {
            size.cut();
        }
        assert_eq!(size.get(), 1, "never below one entry");
    }

    #[test]
    fn the_partition_count_held_is_read_and_nonsense_refused() {
        let text = |s: &'static str| Reply::Text(Bytes::from_static(s.as_bytes()));
        assert_eq!(parse_layout(&text("16")), Ok(16));
        assert!(parse_layout(&text("sixteen")).is_err());
        assert!(parse_layout(&text("70000")).is_err());
        assert!(parse_layout(&Reply::Int(16)).is_err());
        assert_eq!(layout_key("ssekify:bus"), "{ssekify:bus:0}:partitions");
        assert_eq!(
            redis_protocol::redis_keyslot(layout_key("c").as_bytes()),
            redis_protocol::redis_keyslot(PartitionKeys::new("c", 0).meta.as_bytes()),
            "on partition 0's slot"
        );
    }

    #[test]
    fn notices_carry_epoch_sequence_and_entry() {
        let payload = Bytes::from_static(b"ab12:7:\x02xyz:1");
        let notice = parse_notice(&payload).unwrap();
        assert_eq!(notice, Notice { epoch: "ab12", seq: 7, entry: Some(Bytes::from_static(b"\x02xyz:1")) });
        assert_eq!(parse_notice(&Bytes::from_static(b"ab12:8:")).unwrap().entry, None, "read from the stream");
        assert_eq!(parse_notice(&Bytes::from_static(b"ab12:x:")), None);
        assert_eq!(parse_notice(&Bytes::from_static(b"ab12:0:")), None);
        assert_eq!(parse_notice(&Bytes::from_static(b":1:")), None);
        assert_eq!(parse_notice(&Bytes::from_static(b"ab12")), None);
    }

    #[test]
    fn replies_are_read_strictly() {
        let text = |s: &'static str| Reply::Text(Bytes::from_static(s.as_bytes()));
        let appended = Reply::Array(vec![Reply::Int(5), text("e1"), Reply::Int(3), Reply::Int(2), text("id-b")]);
        assert_eq!(
            parse_appended(&appended).unwrap(),
            Appended { seq: 5, epoch: "e1".into(), receivers: 3, duplicates: vec![(1, "id-b".into())] }
        );
        assert!(parse_appended(&Reply::Array(vec![Reply::Int(5)])).is_err());
        assert!(parse_appended(&Reply::Error("NOSCRIPT".into())).is_err());
        let range = Reply::Array(vec![Reply::Array(vec![text("9-0"), Reply::Array(vec![text("e"), text("x")])])]);
        assert_eq!(parse_range(&range).unwrap(), vec![(9, Bytes::from_static(b"x"))]);
        let odd = Reply::Array(vec![Reply::Array(vec![text("9-1"), Reply::Array(vec![text("e"), text("x")])])]);
        assert!(parse_range(&odd).is_err());
        assert_eq!(
            parse_state(&Reply::Array(vec![Reply::Null, Reply::Null, Reply::Null])).unwrap(),
            LogState { epoch: None, seq: 0, base: 1 }
        );
        assert_eq!(
            parse_state(&Reply::Array(vec![text("e1"), text("12"), text("5")])).unwrap(),
            LogState { epoch: Some("e1".into()), seq: 12, base: 5 }
        );
    }
}
