//! Fan-out: 2000 concurrent subscribers on two shards each receive every
//! broadcast, in order.

mod common;

use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const SUBSCRIBERS: usize = 2000;
const THREADS: usize = 8;
const BROADCASTS: usize = 20;

fn fanout(driver: &str) {
    let server = Server::start_with_driver(driver, &["--shards", "2", "--keep-alive", "5s"]);
    let public = server.public;
    // Everyone connected → publisher starts → everyone done.
    let connected = Arc::new(Barrier::new(THREADS + 1));
    let connect_errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for t in 0..THREADS {
        let connected = connected.clone();
        let connect_errors = connect_errors.clone();
        workers.push(thread::spawn(move || -> Result<(), String> {
            let count = SUBSCRIBERS / THREADS;
            let opened = (0..count)
                .map(|i| {
                    // A mix of named users (spread over owner shards), rooms and anonymous.
                    let path = match i % 3 {
                        0 => format!("/sse?userId=fan-{t}-{i}"),
                        1 => "/sse?rooms=fan".to_string(),
                        _ => "/sse".to_string(),
                    };
                    let c = SseClient::try_connect(public, &path, &[])?;
                    if c.status != 200 {
                        return Err(format!("subscriber {t}/{i}: {} {}", c.status, c.error_text()));
                    }
                    Ok(c)
                })
                .collect::<Result<Vec<SseClient>, String>>();
            if let Err(e) = &opened {
                connect_errors.lock().unwrap().push(e.clone());
            }
            // Always meet the barrier, so a failure here cannot hang the test.
            connected.wait();
            let mut clients = opened?;
            for c in clients.iter_mut() {
                c.set_nonblocking();
            }
            let mut got: Vec<Vec<String>> = vec![Vec::new(); count];
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut done = 0;
            while done < count {
                if Instant::now() > deadline {
                    let short = got.iter().filter(|g| g.len() < BROADCASTS).count();
                    return Err(format!("thread {t}: {short} subscribers still short after 60 s"));
                }
                let mut progress = false;
                for (c, g) in clients.iter_mut().zip(got.iter_mut()) {
                    if g.len() >= BROADCASTS {
                        continue;
                    }
                    match c.read_available() {
                        None => return Err(format!("thread {t}: a subscriber was closed after {} events", g.len())),
                        Some(0) => {}
                        Some(_) => progress = true,
                    }
                    while let Some(item) = c.parser.next_item() {
                        if let SseItem::Event(ev) = item {
                            g.push(ev.data);
                            if g.len() == BROADCASTS {
                                done += 1;
                            }
                        }
                    }
                }
                if !progress {
                    thread::sleep(Duration::from_millis(5));
                }
            }
            let want: Vec<String> = (0..BROADCASTS).map(|i| format!("broadcast {i}")).collect();
            for (i, g) in got.iter().enumerate() {
                if *g != want {
                    return Err(format!("thread {t} subscriber {i} got {g:?}"));
                }
            }
            Ok(())
        }));
    }
    connected.wait();
    let errors = connect_errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "{driver}: subscribing failed: {errors:?}");
    wait_connections(server.api, SUBSCRIBERS as u64);
    let s = stats(server.api);
    let shards = s["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 2);
    let mut conn = HttpConn::open(server.api);
    for i in 0..BROADCASTS {
        let resp = conn.request("POST", "/v1/broadcast", &[], format!("broadcast {i}").as_bytes());
        assert_eq!(resp.status, 200, "{:?}", resp.text());
        assert_eq!(resp.json()["delivered"], SUBSCRIBERS as u64, "{driver}: broadcast {i}");
    }
    for w in workers {
        if let Err(e) = w.join().expect("worker thread") {
            panic!("{driver}: {e}");
        }
    }
    let s = stats(server.api);
    assert_eq!(stat(&s, "sent"), (SUBSCRIBERS * BROADCASTS) as u64, "{driver}: {s}");
}

#[test]
fn two_thousand_subscribers_get_every_broadcast_in_order() {
    for driver in drivers() {
        fanout(driver);
    }
}
