//! Slow subscribers: a subscriber that never reads must not slow the others
//! down nor grow the server without bound; the drop policy decides what it
//! loses, and stats count it.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Broadcasts per run: 3000 × 16 KiB ≈ 48 MiB, far more than the unread
/// subscriber's queue plus the kernel's socket buffers hold.
const MESSAGES: usize = 3000;
const PAYLOAD: usize = 16 * 1024;
/// Upper bound on the server's resident memory while one subscriber is stuck.
const RSS_LIMIT_KIB: u64 = 200 * 1024;
/// Most broadcasts the publisher runs ahead of the reading subscriber: 1 MiB,
/// within its queue's 2 MiB, so a reader that keeps up never loses one to the
/// drop policy however slowly this test's own client parses (a debug build
/// on two busy cores is slower than the server, and drop-oldest would then
/// rightly drop the reader's oldest frames too).
const READER_WINDOW: usize = 64;

fn payload(seq: usize) -> String {
    let mut p = format!("seq {seq:05} ");
    p.push_str(&"x".repeat(PAYLOAD - p.len()));
    p
}

/// Sequence number of a well-formed payload, panicking on a damaged one.
fn seq_of(data: &str) -> usize {
    assert_eq!(data.len(), PAYLOAD, "payload length changed: {:?}…", &data[..data.len().min(40)]);
    assert!(data[10..].bytes().all(|b| b == b'x'), "payload damaged");
    data[4..9].parse().unwrap_or_else(|_| panic!("payload damaged: {:?}", &data[..20]))
}

/// What a stuck subscriber reads once it reads again: the messages'
/// sequence numbers and the messages the drop notices said it lost.
struct Read {
    seqs: Vec<usize>,
    told_dropped: u64,
    notices: usize,
}

/// Reads events until `end` says to stop (or none comes for `quiet`),
/// telling messages from `ssekify.gap` drop notices.
fn read_stuck(client: &mut SseClient, quiet: Duration, end: impl Fn(&SseEvent) -> bool) -> Read {
    let mut read = Read { seqs: Vec::new(), told_dropped: 0, notices: 0 };
    while let Some(ev) = client.next_event(quiet) {
        if end(&ev) {
            break;
        }
        if ev.event.as_deref() == Some("ssekify.gap") {
            let data: serde_json::Value = serde_json::from_str(&ev.data).expect("a notice's data is JSON");
            assert_eq!(data["reason"], "slow", "{}", ev.data);
            assert_eq!(ev.id, None, "a notice carries no id");
            read.told_dropped += data["dropped"].as_u64().expect("a count");
            read.notices += 1;
        } else {
            read.seqs.push(seq_of(&ev.data));
        }
    }
    read
}

struct Outcome {
    server: Server,
    unread: SseClient,
    /// Kept open so the connection counts stay meaningful.
    _reader: SseClient,
    stats: serde_json::Value,
    max_rss_kib: u64,
}

/// One unread and one reading subscriber; publishes [`MESSAGES`] broadcasts on a
/// keep-alive api connection and checks the reader got every one in order.
fn run(policy: &str) -> Outcome {
    let server = Server::start(&[
        "--drop-policy",
        policy,
        "--max-queue-items",
        "1000",
        "--max-queue-bytes",
        "2MiB",
        "--shards",
        "2",
    ]);
    let unread = SseClient::connect_unread(server.public, "/sse?userId=slow", &[]);
    let mut reader = SseClient::open_ready(server.public, "/sse?userId=fast");
    wait_connections(server.api, 2);

    let read = Arc::new(AtomicUsize::new(0));
    let reading = thread::spawn({
        let read = read.clone();
        move || {
            let mut seqs = Vec::with_capacity(MESSAGES);
            while seqs.len() < MESSAGES {
                match reader.next_event(Duration::from_secs(30)) {
                    Some(ev) => seqs.push(seq_of(&ev.data)),
                    None => break,
                }
                read.store(seqs.len(), Ordering::Release);
            }
            // Hand the client back: it must stay connected for the stats checks.
            (seqs, reader)
        }
    });

    let mut conn = HttpConn::open(server.api);
    let mut max_rss_kib = 0;
    for seq in 0..MESSAGES {
        let reader_behind = Instant::now();
        while seq >= read.load(Ordering::Acquire) + READER_WINDOW && reader_behind.elapsed() < Duration::from_secs(30) {
            thread::sleep(Duration::from_millis(1));
        }
        let resp = conn.request("POST", "/v1/broadcast", &[], payload(seq).as_bytes());
        assert_eq!(resp.status, 200, "publish {seq}: {:?}", resp.text());
        let delivered = resp.json()["delivered"].as_u64().unwrap();
        assert!((1..=2).contains(&delivered), "publish {seq}: delivered {delivered}");
        if seq % 250 == 0 {
            max_rss_kib = max_rss_kib.max(server.rss_kib());
        }
    }
    max_rss_kib = max_rss_kib.max(server.rss_kib());

    let (seqs, reader) = reading.join().expect("reader thread");
    assert_eq!(seqs.len(), MESSAGES, "{policy}: the reading subscriber lost messages");
    assert!(
        seqs.iter().enumerate().all(|(i, s)| i == *s),
        "{policy}: the reading subscriber got messages out of order"
    );
    assert!(max_rss_kib < RSS_LIMIT_KIB, "{policy}: server RSS grew to {max_rss_kib} KiB with one stuck subscriber");
    let stats = server.stats();
    Outcome { server, unread, _reader: reader, stats, max_rss_kib }
}

#[test]
fn drop_oldest_keeps_the_newest_frames_for_a_stuck_subscriber() {
    let Outcome { server, mut unread, stats, max_rss_kib, _reader: _keep_open } = run("oldest");
    eprintln!("oldest: max RSS {max_rss_kib} KiB, stats {stats}");
    assert!(stat(&stats, "droppedOldest") > 0, "{stats}");
    assert_eq!(stat(&stats, "droppedNewest"), 0, "{stats}");
    assert_eq!(stat(&stats, "disconnectedByBackpressure"), 0, "{stats}");
    assert_eq!(stat(&stats, "connections"), 2, "{stats}");

    // Now the stuck subscriber reads: whole frames, in order, ending with the
    // newest, and a notice of every message dropped (one for the whole run,
    // since it reads nothing until the end).
    ok_json(broadcast(server.api, "end", "event=end"));
    assert_eq!(unread.next_item(IO_TIMEOUT), Some(SseItem::Retry(2000)));
    let Read { seqs, told_dropped, notices } =
        read_stuck(&mut unread, Duration::from_secs(20), |ev| ev.event.as_deref() == Some("end"));
    assert!(seqs.len() < MESSAGES, "nothing was dropped?");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "frames reordered: {seqs:?}");
    assert_eq!(seqs.last(), Some(&(MESSAGES - 1)), "drop-oldest must keep the newest frame");
    assert_eq!(seqs.len() as u64 + told_dropped, MESSAGES as u64, "every message received or told dropped");
    assert_eq!(told_dropped, stat(&server.stats(), "droppedOldest"));
    assert_eq!(notices, 1, "one notice for one run of drops");
}

#[test]
fn drop_newest_keeps_the_oldest_frames_for_a_stuck_subscriber() {
    let Outcome { server: _server, mut unread, stats, max_rss_kib, _reader: _keep_open } = run("newest");
    eprintln!("newest: max RSS {max_rss_kib} KiB, stats {stats}");
    assert!(stat(&stats, "droppedNewest") > 0, "{stats}");
    assert_eq!(stat(&stats, "droppedOldest"), 0, "{stats}");
    assert_eq!(stat(&stats, "disconnectedByBackpressure"), 0, "{stats}");

    assert_eq!(unread.next_item(IO_TIMEOUT), Some(SseItem::Retry(2000)));
    let Read { seqs, told_dropped, notices } = read_stuck(&mut unread, Duration::from_secs(2), |_| false);
    assert_eq!(seqs.first(), Some(&0), "drop-newest must keep the oldest frame");
    assert!(seqs.len() < MESSAGES, "nothing was dropped?");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "frames reordered: {seqs:?}");
    assert_eq!(seqs.len() as u64 + told_dropped, MESSAGES as u64, "every message received or told dropped");
    assert_eq!(told_dropped, stat(&stats, "droppedNewest"));
    assert!(notices >= 1, "the drops were told");
}

#[test]
fn disconnect_policy_closes_only_the_stuck_subscriber() {
    let Outcome { server, mut unread, stats, max_rss_kib, _reader: _keep_open } = run("disconnect");
    eprintln!("disconnect: max RSS {max_rss_kib} KiB, stats {stats}");
    assert_eq!(stat(&stats, "disconnectedByBackpressure"), 1, "{stats}");
    // The stuck subscriber sees whole frames, in order, then EOF.
    assert_eq!(unread.next_item(IO_TIMEOUT), Some(SseItem::Retry(2000)));
    let mut seqs = Vec::new();
    while let Some(ev) = unread.next_event(Duration::from_secs(20)) {
        seqs.push(seq_of(&ev.data));
    }
    assert!(unread.is_eof(), "the disconnected subscriber never saw EOF");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "frames reordered");
    assert!(seqs.len() < MESSAGES);
    wait_connections(server.api, 1);
}

#[test]
fn a_stalled_write_is_cut_after_the_write_timeout() {
    // Queues large enough never to overflow: only the stall rule can close it.
    let server = Server::start(&[
        "--write-timeout",
        "1s",
        "--max-queue-items",
        "100000",
        "--max-queue-bytes",
        "256MiB",
        "--shards",
        "2",
    ]);
    let _unread = SseClient::connect_unread(server.public, "/sse?userId=stalled", &[]);
    let mut reader = SseClient::open_ready(server.public, "/sse?userId=healthy");
    wait_connections(server.api, 2);
    let mut conn = HttpConn::open(server.api);
    // Enough to fill the stalled client's socket buffers on both sides.
    for seq in 0..1500 {
        let resp = conn.request("POST", "/v1/broadcast", &[], payload(seq).as_bytes());
        assert_eq!(resp.status, 200);
        if seq % 100 == 0 {
            while reader.next_event(Duration::from_millis(1)).is_some() {}
        }
    }
    let cut = wait_until(Duration::from_secs(10), || {
        while reader.next_event(Duration::from_millis(1)).is_some() {}
        stat(&stats(server.api), "writeTimeouts") == 1
    });
    let stats = stats(server.api);
    assert!(cut, "the stalled stream was not closed: {stats}");
    assert_eq!(stat(&stats, "connections"), 1, "only the stalled stream closes: {stats}");
    ok_json(broadcast(server.api, "still here", "event=after"));
    let after = loop {
        let ev = reader.next_event(IO_TIMEOUT).expect("the healthy stream keeps receiving");
        if ev.event.as_deref() == Some("after") {
            break ev;
        }
    };
    assert_eq!(after.data, "still here");
}

#[test]
fn a_subscriber_that_pauses_gets_every_frame_in_order_when_it_reads_again() {
    // Queues that hold everything: the stream fills the sockets' buffers,
    // waits for room while its frames queue up, and resumes as the client
    // reads, on each io driver.
    for driver in drivers() {
        let server = Server::start(&[
            "--io-driver",
            driver,
            "--max-queue-items",
            "100000",
            "--max-queue-bytes",
            "256MiB",
            "--shards",
            "1",
        ]);
        let mut paused = SseClient::connect_unread(server.public, "/sse?userId=paused", &[]);
        wait_connections(server.api, 1);
        let count = 800;
        let mut conn = HttpConn::open(server.api);
        for seq in 0..count {
            let resp = conn.request("POST", "/v1/broadcast", &[], payload(seq).as_bytes());
            assert_eq!(resp.status, 200, "{driver}: publish {seq}");
        }
        // 800 × 16 KiB is far beyond the sockets' buffers: most of it queues.
        let queued = stat(&stats(server.api), "queueBytesMax");
        assert!(queued > 1 << 20, "{driver}: the stream never had to wait for room ({queued} bytes queued at most)");
        assert_eq!(paused.next_item(IO_TIMEOUT), Some(SseItem::Retry(2000)), "{driver}");
        for seq in 0..count {
            let event = paused.next_event(Duration::from_secs(20)).unwrap_or_else(|| panic!("{driver}: frame {seq}"));
            assert_eq!(seq_of(&event.data), seq, "{driver}: frames out of order");
        }
        let stats = stats(server.api);
        assert_eq!(stat(&stats, "droppedOldest") + stat(&stats, "droppedNewest"), 0, "{driver}: {stats}");
        assert_eq!(stat(&stats, "connections"), 1, "{driver}: {stats}");
    }
}

/// A burst that reaches one stream within a turn — a batch with more
/// messages for it than its queue holds, big messages over its byte bound
/// — goes to a client that keeps up whole, under every policy: the bounds
/// hold what a slow client leaves waiting, not what one publish brings.
/// (Before, the write loop ran only after the whole batch was queued: 200
/// of 300 messages to one user were dropped as "oldest", a policy of
/// `disconnect` cut the stream.)
#[test]
fn a_burst_larger_than_the_queue_reaches_a_subscriber_that_keeps_up_whole() {
    const SMALL: usize = 1000;
    const BIG: usize = 100 * 1024;
    for driver in drivers() {
        for policy in ["oldest", "newest", "disconnect"] {
            let server = Server::start(&["--io-driver", driver, "--drop-policy", policy, "--shards", "2"]);
            let mut reader = SseClient::open_ready(server.public, "/sse?userId=fast&rooms=lobby");
            wait_connections(server.api, 1);
            let reading = thread::spawn(move || {
                let mut events = Vec::new();
                while events.len() < SMALL + 3 {
                    match reader.next_event(Duration::from_secs(20)) {
                        Some(event) => events.push(event),
                        None => break,
                    }
                }
                // Handed back: the stream stays open for the stats below.
                (events, reader)
            });
            // Ten times the default 100 frames a queue holds, in one publish.
            let small: Vec<_> = (0..SMALL).map(|n| serde_json::json!({"user": "fast", "data": {"n": n}})).collect();
            let answer = ok_json(publish_batch(server.api, &serde_json::json!(small)));
            assert!(answer["results"].as_array().unwrap().iter().all(|r| r["delivered"] == 1), "{driver} {policy}");
            // 300 KB to one stream at once, over the default 256 KiB bound.
            let big = |n: usize| format!("{n}{}", "x".repeat(BIG - 1));
            let targets = [("user", "fast".into()), ("room", "lobby".into()), ("all", serde_json::json!(true))];
            let big: Vec<_> = targets
                .iter()
                .enumerate()
                .map(|(n, (key, value))| serde_json::json!({ *key: value, "data": big(n) }))
                .collect();
            ok_json(publish_batch(server.api, &serde_json::json!(big)));

            let (events, _reader) = reading.join().expect("reader thread");
            assert_eq!(events.len(), SMALL + 3, "{driver} {policy}: the stream lost messages");
            for (n, event) in events[..SMALL].iter().enumerate() {
                assert_eq!(event.data, format!("{{\"n\":{n}}}"), "{driver} {policy}: out of order");
            }
            for (n, event) in events[SMALL..].iter().enumerate() {
                assert!(event.data.len() == BIG && event.data.starts_with(&n.to_string()), "{driver} {policy}");
            }
            let stats = stats(server.api);
            for counter in ["droppedOldest", "droppedNewest", "disconnectedByBackpressure"] {
                assert_eq!(stat(&stats, counter), 0, "{driver} {policy}: {stats}");
            }
            assert_eq!(stat(&stats, "connections"), 1, "{driver} {policy}: {stats}");
        }
    }
}
