//! Publishing: byte-exact frames, targeting (user / room / broadcast),
//! `delivered` across shards, ids, batches, limits and validation.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// Reads the next frame's bytes: skips `retry:` and comment blocks, then
/// returns exactly `len` bytes.
fn read_frame_bytes(client: &mut SseClient, len: usize) -> String {
    loop {
        let peek = client.read_bytes(1, IO_TIMEOUT);
        assert_eq!(peek.len(), 1, "stream ended or stalled before a frame");
        if peek[0] == b':' || peek[0] == b'r' {
            // A comment or the retry field: drop its block (up to the blank line).
            let mut block = peek;
            while !block.ends_with(b"\n\n") {
                let b = client.read_bytes(1, IO_TIMEOUT);
                assert_eq!(b.len(), 1, "stream stalled inside {:?}", String::from_utf8_lossy(&block));
                block.extend_from_slice(&b);
            }
            continue;
        }
        let mut frame = peek;
        frame.extend(client.read_bytes(len - 1, IO_TIMEOUT));
        return String::from_utf8(frame).expect("frame is UTF-8");
    }
}

#[test]
fn frames_are_byte_exact() {
    for driver in drivers() {
        let server = Server::start_with_driver(driver, &[]);
        let api = server.api;
        let mut c = SseClient::open(server.public, "/sse?userId=exact");
        // (query, body, request headers, expected frame)
        type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a str);
        let cases: Vec<Case> = vec![
            ("id=a1", "hello", vec![], "id: a1\ndata: hello\n\n"),
            ("id=a2&event=update", "line1\nline2", vec![], "id: a2\nevent: update\ndata: line1\ndata: line2\n\n"),
            ("id=a3&event=message", "a\r\nb\rc\n", vec![], "id: a3\ndata: a\ndata: b\ndata: c\ndata: \n\n"),
            ("id=a4", "x\n\ny", vec![], "id: a4\ndata: x\ndata: \ndata: y\n\n"),
            (
                "id=a5&event=json",
                r#"{"b":1,"a":[1,2],"s":"x y"}"#,
                vec![("Content-Type", "application/json")],
                "id: a5\nevent: json\ndata: {\"b\":1,\"a\":[1,2],\"s\":\"x y\"}\n\n",
            ),
            (
                "id=a6",
                "héllo ✓ 日本",
                vec![("Content-Type", "text/plain; charset=utf-8")],
                "id: a6\ndata: héllo ✓ 日本\n\n",
            ),
            (
                "id=a7",
                "data: not a field\r\n: nor a comment",
                vec![],
                "id: a7\ndata: data: not a field\ndata: : nor a comment\n\n",
            ),
        ];
        for (query, body, headers, expected) in cases {
            let resp = http(api, "POST", &format!("/v1/users/exact/events?{query}"), &headers, body.as_bytes());
            let answer = ok_json(resp);
            assert_eq!(answer["delivered"], 1, "{driver}: {query}: {answer}");
            let got = read_frame_bytes(&mut c, expected.len());
            assert_eq!(got, expected, "{driver}: frame for {query} {body:?}");
        }
    }
}

#[test]
fn multi_line_payloads_parse_back() {
    let server = Server::start(&[]);
    let mut c = SseClient::open_ready(server.public, "/sse?rooms=ml");
    for (body, data) in [
        ("one\ntwo\nthree", "one\ntwo\nthree"),
        ("crlf\r\nline", "crlf\nline"),
        ("cr\rline", "cr\nline"),
        ("trailing\n", "trailing\n"),
    ] {
        ok_json(publish_room(server.api, "ml", body, "event=multi"));
        let ev = c.expect_event(body);
        assert_eq!(ev.event.as_deref(), Some("multi"));
        assert_eq!(ev.data, data, "payload {body:?}");
    }
}

#[test]
fn answer_shape_and_generated_ids() {
    for driver in drivers() {
        let server = Server::start_with_driver(driver, &["--shards", "2"]);
        let mut c = SseClient::open_ready(server.public, "/sse?userId=ids");
        let mut ids = Vec::new();
        for i in 0..20 {
            let answer = ok_json(publish_user(server.api, "ids", &format!("m{i}"), ""));
            assert_eq!(answer["delivered"], 1, "{answer}");
            assert_eq!(answer["instances"], serde_json::Value::Null, "{answer}");
            let id = answer["id"].as_str().expect("id string").to_string();
            assert!(
                is_generated_id(&id),
                "{driver}: id {id:?} does not match ^[0-9]{{13}}-[0-9a-f]{{8}}-[0-9a-f]{{8}}$"
            );
            ids.push(id);
        }
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{driver}: ids must increase: {} then {}", pair[0], pair[1]);
        }
        // Broadcast and room ids come from the same sequence.
        let b = ok_json(broadcast(server.api, "b", ""))["id"].as_str().unwrap().to_string();
        assert!(is_generated_id(&b) && b > *ids.last().unwrap(), "{driver}: {b}");
        ids.push(b);
        for (i, id) in ids.iter().enumerate() {
            let ev = c.expect_event("generated id");
            assert_eq!(ev.id.as_ref(), Some(id), "{driver}: event {i}");
        }
        // A publisher's id is used as given.
        let answer = ok_json(publish_user(server.api, "ids", "mine", "id=order-42%2Fx"));
        assert_eq!(answer["id"], "order-42/x");
        assert_eq!(c.expect_event("custom id").id.as_deref(), Some("order-42/x"));
    }
}

#[test]
fn targets_are_isolated() {
    for driver in drivers() {
        let server = Server::start_with_driver(driver, &["--shards", "2"]);
        let api = server.api;
        let mut alice = SseClient::open_ready(server.public, "/sse?userId=alice&rooms=r1");
        let mut bob = SseClient::open_ready(server.public, "/sse?userId=bob&rooms=r2");
        let mut anon_r1 = SseClient::open_ready(server.public, "/sse?rooms=r1");
        let mut anon = SseClient::open_ready(server.public, "/sse");
        wait_connections(api, 4);

        assert_eq!(ok_json(publish_user(api, "alice", "to alice", ""))["delivered"], 1);
        assert_eq!(ok_json(publish_user(api, "bob", "to bob", ""))["delivered"], 1);
        assert_eq!(ok_json(publish_user(api, "carol", "to carol", ""))["delivered"], 0);
        assert_eq!(ok_json(publish_room(api, "r1", "to r1", ""))["delivered"], 2);
        assert_eq!(ok_json(publish_room(api, "r2", "to r2", ""))["delivered"], 1);
        assert_eq!(ok_json(publish_room(api, "r9", "to r9", ""))["delivered"], 0);
        assert_eq!(ok_json(broadcast(api, "to all", ""))["delivered"], 4);
        assert_eq!(ok_json(broadcast(api, "end", "event=end"))["delivered"], 4);

        let expect: [(&mut SseClient, &[&str]); 4] = [
            (&mut alice, &["to alice", "to r1", "to all"]),
            (&mut bob, &["to bob", "to r2", "to all"]),
            (&mut anon_r1, &["to r1", "to all"]),
            (&mut anon, &["to all"]),
        ];
        for (i, (client, wanted)) in expect.into_iter().enumerate() {
            let mut got = Vec::new();
            loop {
                let ev = client.expect_event("targeted events");
                if ev.event.as_deref() == Some("end") {
                    break;
                }
                got.push(ev.data);
            }
            assert_eq!(got, wanted.to_vec(), "{driver}: client {i}");
        }
    }
}

#[test]
fn delivered_counts_every_connection_across_shards() {
    let server = Server::start(&["--shards", "4"]);
    assert_eq!(server.shards, 4);
    let api = server.api;
    let mut user_conns: Vec<SseClient> = vec![
        SseClient::open_ready(server.public, "/sse?userId=multi&rooms=r"),
        SseClient::open_ready(server.public, "/sse?userId=multi&rooms=r"),
        SseClient::open_ready(server.public, "/sse?userId=multi"),
    ];
    let mut anon: Vec<SseClient> = (0..5)
        .map(|i| {
            let path = if i < 3 { "/sse?rooms=r" } else { "/sse" };
            SseClient::open_ready(server.public, path)
        })
        .collect();
    wait_connections(api, 8);
    let s = stats(api);
    assert_eq!(stat(&s, "users"), 1, "{s}");
    assert_eq!(stat(&s, "rooms"), 1, "{s}");
    let shards = s["shards"].as_array().expect("shards array");
    assert_eq!(shards.len(), 4, "{s}");
    let per_shard: u64 = shards.iter().map(|sh| stat(sh, "connections")).sum();
    assert_eq!(per_shard, 8, "shard connections must add up: {s}");

    assert_eq!(ok_json(publish_user(api, "multi", "u", ""))["delivered"], 3);
    assert_eq!(ok_json(publish_room(api, "r", "room", ""))["delivered"], 5);
    assert_eq!(ok_json(broadcast(api, "all", ""))["delivered"], 8);
    for c in user_conns.iter_mut().take(2) {
        let got: Vec<String> = (0..3).map(|_| c.expect_event("user conn").data).collect();
        assert_eq!(got, ["u", "room", "all"]);
    }
    let got: Vec<String> = (0..2).map(|_| user_conns[2].expect_event("user conn").data).collect();
    assert_eq!(got, ["u", "all"]);
    for (i, c) in anon.iter_mut().enumerate() {
        let want: &[&str] = if i < 3 { &["room", "all"] } else { &["all"] };
        let got: Vec<String> = want.iter().map(|_| c.expect_event("anon conn").data).collect();
        assert_eq!(got, want, "anonymous {i}");
    }
}

#[test]
fn many_users_spread_over_shards_each_get_their_messages() {
    let server = Server::start(&["--shards", "4"]);
    let api = server.api;
    let users: Vec<String> = (0..12).map(|i| format!("user-{i}")).collect();
    let mut clients: Vec<(String, SseClient)> = Vec::new();
    for u in &users {
        for _ in 0..2 {
            clients.push((u.clone(), SseClient::open_ready(server.public, &sse_path(u, &[]))));
        }
    }
    wait_connections(api, 24);
    for u in &users {
        let answer = ok_json(publish_user(api, u, &format!("for {u}"), ""));
        assert_eq!(answer["delivered"], 2, "{u}: {answer}");
    }
    for (u, c) in clients.iter_mut() {
        assert_eq!(c.expect_event("own message").data, format!("for {u}"));
    }
    assert_eq!(stat(&stats(api), "users"), 12);
}

#[test]
fn batch_json_is_delivered_in_order() {
    for driver in drivers() {
        let server = Server::start_with_driver(driver, &["--shards", "2"]);
        let api = server.api;
        let mut c = SseClient::open_ready(server.public, "/sse?userId=bu&rooms=br");
        let mut other = SseClient::open_ready(server.public, "/sse");
        wait_connections(api, 2);
        // Written out by hand: key order inside `data` must survive (serde_json's
        // `json!` would sort it). `data` is already compact, so "its JSON text"
        // and "compact JSON" are the same bytes.
        let body = r#"{"messages": [
            {"user": "bu", "data": "one"},
            {"room": "br", "data": {"k":1,"a":[true,null]}, "event": "obj"},
            {"all": true, "data": "three", "id": "b3"},
            {"user": "nobody", "data": "lost"},
            {"user": "bu", "data": 42, "event": "num"},
            {"room": "br", "data": "multi\nline"}
        ]}"#;
        let resp = http(api, "POST", "/v1/publish", &[("Content-Type", "application/json")], body.as_bytes());
        let answer = ok_json(resp);
        let results = answer["results"].as_array().expect("results array");
        let delivered: Vec<u64> = results.iter().map(|r| r["delivered"].as_u64().unwrap()).collect();
        assert_eq!(delivered, vec![1, 1, 2, 0, 1, 1], "{driver}: {answer}");
        assert_eq!(results[2]["id"], "b3");
        for r in results {
            assert_eq!(r["instances"], serde_json::Value::Null);
            let id = r["id"].as_str().unwrap();
            assert!(id == "b3" || is_generated_id(id), "{driver}: {id}");
        }
        let expected = [
            (None, "one"),
            (Some("obj"), r#"{"k":1,"a":[true,null]}"#),
            (None, "three"),
            (Some("num"), "42"),
            (None, "multi\nline"),
        ];
        for (i, (event, data)) in expected.iter().enumerate() {
            let ev = c.expect_event("batch");
            assert_eq!((ev.event.as_deref(), ev.data.as_str()), (*event, *data), "{driver}: message {i}");
        }
        let ev = other.expect_event("batch broadcast");
        assert_eq!((ev.id.as_deref(), ev.data.as_str()), (Some("b3"), "three"));
    }
}

/// JSON allows line breaks inside a value only as whitespace between its
/// tokens: such a `data` is sent as those lines, however the batch was read.
#[test]
fn batch_data_spread_over_lines_arrives_as_those_lines() {
    let server = Server::start(&[]);
    let api = server.api;
    let mut c = SseClient::open_ready(server.public, "/sse?userId=sp");
    let json = "{\"messages\":[{\"user\":\"sp\",\"data\":{\"k\":\n1}},{\"user\":\"sp\",\"data\":[1,\r\n2]},\
                {\"user\":\"sp\",\"data\":{\"k\": 1}},{\"user\":\"sp\",\n\"data\":\"a\\nb\"}]}";
    let ndjson = "{\"user\":\"sp\",\"data\":[1,\r2]}\n{\"user\":\"sp\",\"data\":{\"k\": 1}}\n";
    for (content_type, body, expected) in [
        ("application/json", json, &["{\"k\":\n1}", "[1,\n2]", "{\"k\": 1}", "a\nb"][..]),
        ("application/x-ndjson", ndjson, &["[1,\n2]", "{\"k\": 1}"][..]),
    ] {
        let answer = ok_json(http(api, "POST", "/v1/publish", &[("Content-Type", content_type)], body.as_bytes()));
        assert_eq!(answer["results"].as_array().map(Vec::len), Some(expected.len()), "{content_type}: {answer}");
        for (i, data) in expected.iter().enumerate() {
            assert_eq!(c.expect_event(content_type).data, *data, "{content_type}: message {i}");
        }
    }
}

#[test]
fn batch_ndjson_is_delivered_in_order() {
    let server = Server::start(&[]);
    let api = server.api;
    let mut c = SseClient::open_ready(server.public, "/sse?userId=nd&rooms=ndr");
    let body = concat!(
        "{\"user\":\"nd\",\"data\":\"first\",\"id\":\"n1\"}\n",
        "{\"room\":\"ndr\",\"data\":[1,2],\"event\":\"arr\"}\n",
        "{\"all\":true,\"data\":\"third\"}\n",
    );
    let resp = http(api, "POST", "/v1/publish", &[("Content-Type", "application/x-ndjson")], body.as_bytes());
    let answer = ok_json(resp);
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), 3, "{answer}");
    assert_eq!(results[0]["id"], "n1");
    assert!(results.iter().all(|r| r["delivered"] == 1), "{answer}");
    let got: Vec<(Option<String>, String)> = (0..3)
        .map(|_| {
            let ev = c.expect_event("ndjson");
            (ev.event, ev.data)
        })
        .collect();
    assert_eq!(
        got,
        vec![(None, "first".to_string()), (Some("arr".to_string()), "[1,2]".to_string()), (None, "third".to_string())]
    );
}

/// A batch far larger than one routing chunk (16,384) or one envelope to
/// another shard (1,024) is delivered whole, in order, with each message's
/// own count: the pieces it travels in add back up.
#[test]
fn a_large_batch_is_delivered_whole_and_in_order_across_shards() {
    // Queues hold a whole share: the test reads one subscriber after another.
    let server = Server::start(&["--shards", "2", "--max-queue-items", "50000", "--max-queue-bytes", "16MiB"]);
    let mut users: Vec<(String, SseClient)> = (0..4)
        .map(|i| {
            let user = format!("big{i}");
            let client = SseClient::open_ready(server.public, &format!("/sse?userId={user}&rooms=hall"));
            (user, client)
        })
        .collect();
    let mut watcher = SseClient::open_ready(server.public, "/sse?rooms=hall");
    const MESSAGES: usize = 40_000;
    // Every 100th message goes to the room (all five), the rest round-robin to one user.
    let line = |i: usize| {
        if i % 100 == 0 {
            format!("{{\"room\":\"hall\",\"data\":\"r{i}\"}}")
        } else {
            format!("{{\"user\":\"big{}\",\"data\":\"u{i}\"}}", i % 4)
        }
    };
    let body: Vec<String> = (0..MESSAGES).map(line).collect();
    let resp = http(
        server.api,
        "POST",
        "/v1/publish",
        &[("Content-Type", "application/x-ndjson")],
        body.join("\n").as_bytes(),
    );
    let answer = ok_json(resp);
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), MESSAGES);
    for (i, result) in results.iter().enumerate() {
        let want = if i % 100 == 0 { 5 } else { 1 };
        assert_eq!(result["delivered"], want, "message {i}: {result}");
    }
    for (n, (_, client)) in users.iter_mut().enumerate() {
        let want: Vec<String> = (0..MESSAGES)
            .filter(|i| i % 100 == 0 || i % 4 == n)
            .map(|i| if i % 100 == 0 { format!("r{i}") } else { format!("u{i}") })
            .collect();
        let got: Vec<String> = (0..want.len()).map(|_| client.expect_event("a batch message").data).collect();
        assert_eq!(got, want, "big{n} got every message of its own, in order");
    }
    let hall: Vec<String> = (0..MESSAGES / 100).map(|_| watcher.expect_event("a room message").data).collect();
    assert_eq!(hall, (0..MESSAGES).step_by(100).map(|i| format!("r{i}")).collect::<Vec<_>>());
}

#[test]
fn invalid_batches_deliver_nothing() {
    let server = Server::start(&[]);
    let api = server.api;
    let mut c = SseClient::open_ready(server.public, "/sse?userId=v&rooms=vr");
    let good = json!({"user": "v", "data": "should not arrive"});
    let bad_cases = vec![
        (json!({"data": "no target"}), 3),
        (json!({"user": "v", "event": "bad\nevent", "data": "x"}), 2),
        (json!({"user": "v", "id": "bad\rid", "data": "x"}), 1),
        (json!({"user": "a/b", "data": "x"}), 3),
        (json!({"room": "", "data": "x"}), 0),
        (json!({"all": false, "data": "x"}), 2),
    ];
    for (bad, index) in bad_cases {
        let mut messages = vec![good.clone(); 4];
        messages[index] = bad.clone();
        let body = json!({ "messages": messages }).to_string();
        let resp = http(api, "POST", "/v1/publish", &[("Content-Type", "application/json")], body.as_bytes());
        resp.assert_error(400, "invalid_request");
        let message = resp.json()["message"].as_str().unwrap().to_string();
        assert!(
            message.contains(&format!("messages[{index}]")),
            "error for {bad} should name messages[{index}]: {message}"
        );
    }
    // Two refused messages (a bad event, then no target): the first in order
    // is named, in either format.
    let two_bad = [
        good.clone(),
        json!({"user": "v", "event": "bad\nevent", "data": "x"}),
        json!({"data": "no target"}),
        good.clone(),
    ];
    let ndjson: String = two_bad.iter().map(|message| format!("{message}\n")).collect();
    for (content_type, body) in
        [("application/json", json!({ "messages": two_bad }).to_string()), ("application/x-ndjson", ndjson)]
    {
        let resp = http(api, "POST", "/v1/publish", &[("Content-Type", content_type)], body.as_bytes());
        resp.assert_error(400, "invalid_request");
        let message = resp.json()["message"].as_str().unwrap().to_string();
        assert!(message.starts_with("messages[1]: "), "{content_type}: {message}");
    }
    // NDJSON: an invalid line is named by its index too.
    let body = "{\"user\":\"v\",\"data\":\"x\"}\nnot json\n";
    let resp = http(api, "POST", "/v1/publish", &[("Content-Type", "application/x-ndjson")], body.as_bytes());
    resp.assert_error(400, "invalid_request");
    assert!(resp.json()["message"].as_str().unwrap().contains("messages[1]"), "{:?}", resp.text());
    // Not JSON at all, or the wrong shape.
    for body in ["{nope", r#"{"messages":"x"}"#, "[]"] {
        let resp = http(api, "POST", "/v1/publish", &[("Content-Type", "application/json")], body.as_bytes());
        assert_eq!(resp.status, 400, "{body}: {:?}", resp.text());
    }
    // Nothing above was delivered: the next event is the marker.
    ok_json(publish_user(api, "v", "marker", ""));
    assert_eq!(c.expect_event("marker").data, "marker");
    assert_eq!(stat(&stats(api), "sent"), 1);
}

#[test]
fn batch_body_is_bounded() {
    let server = Server::start(&["--max-batch-body", "1KiB"]);
    let messages: Vec<_> = (0..40).map(|i| json!({"all": true, "data": format!("message {i}")})).collect();
    let body = json!({ "messages": messages }).to_string();
    assert!(body.len() > 1024);
    let resp = http(server.api, "POST", "/v1/publish", &[("Content-Type", "application/json")], body.as_bytes());
    resp.assert_error(413, "payload_too_large");
    let small = json!({"messages": [{"all": true, "data": "ok"}]}).to_string();
    let resp = http(server.api, "POST", "/v1/publish", &[("Content-Type", "application/json")], small.as_bytes());
    assert_eq!(resp.status, 200, "{:?}", resp.text());
}

#[test]
fn payload_limit_counts_the_encoded_frame() {
    let server = Server::start(&["--max-payload", "1KiB"]);
    let api = server.api;
    let mut c = SseClient::open_ready(server.public, "/sse");
    broadcast(api, &"x".repeat(2000), "").assert_error(413, "payload_too_large");
    // 300 bytes of newlines become 301 `data: ` lines: well over 1 KiB encoded.
    broadcast(api, &"\n".repeat(300), "").assert_error(413, "payload_too_large");
    let fits = "y".repeat(800);
    assert_eq!(ok_json(broadcast(api, &fits, ""))["delivered"], 1);
    assert_eq!(c.expect_event("fitting payload").data, fits);
    // A request body over the limit is refused even when streamed in chunks.
    let big = "z".repeat(4000);
    let req = format!(
        "POST /v1/broadcast HTTP/1.1\r\nHost: {api}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let responses = parse_responses(&raw_exchange(api, req.as_bytes()));
    assert_eq!(responses.len(), 1);
    responses[0].assert_error(413, "payload_too_large");
}

#[test]
fn bodies_are_validated() {
    let server = Server::start(&[]);
    let api = server.api;
    let mut c = SseClient::open_ready(server.public, "/sse?userId=val");
    let json_ct = [("Content-Type", "application/json")];
    http(api, "POST", "/v1/users/val/events", &json_ct, b"{bad json").assert_error(400, "invalid_request");
    http(api, "POST", "/v1/users/val/events", &[], b"\xff\xfe not utf-8").assert_error(400, "invalid_request");
    http(api, "POST", "/v1/broadcast", &[], b"ok \xc3").assert_error(400, "invalid_request");
    // The same text is fine as plain text, and valid JSON is fine as JSON.
    ok_json(http(api, "POST", "/v1/users/val/events", &[("Content-Type", "text/plain")], b"{bad json"));
    ok_json(http(api, "POST", "/v1/users/val/events", &json_ct, br#"{"good":true}"#));
    assert_eq!(c.expect_event("plain").data, "{bad json");
    assert_eq!(c.expect_event("json").data, r#"{"good":true}"#);
}

#[test]
fn event_and_id_are_validated() {
    let server = Server::start(&[]);
    let api = server.api;
    for query in ["event=a%0Ab", "event=a%0Db", "event=a%00b", "id=x%0Ay", "id=x%0Dy", "id=x%00y"] {
        publish_user(api, "u", "x", query).assert_error(400, "invalid_request");
        broadcast(api, "x", query).assert_error(400, "invalid_request");
    }
    // Percent-encoded but harmless values are decoded and used.
    let mut c = SseClient::open_ready(server.public, "/sse?userId=u");
    ok_json(publish_user(api, "u", "x", "event=user%3Aupdated%20now&id=a%2Bb"));
    let ev = c.expect_event("decoded event/id");
    assert_eq!(ev.event.as_deref(), Some("user:updated now"));
    assert_eq!(ev.id.as_deref(), Some("a+b"));
}

#[test]
fn scope_parameter() {
    let server = Server::start(&[]);
    let api = server.api;
    let mut c = SseClient::open_ready(server.public, "/sse?userId=s");
    assert_eq!(ok_json(publish_user(api, "s", "local", "scope=local"))["delivered"], 1);
    assert_eq!(ok_json(publish_user(api, "s", "cluster", "scope=cluster"))["delivered"], 1);
    assert_eq!(ok_json(broadcast(api, "bl", "scope=local"))["delivered"], 1);
    for bad in ["scope=galaxy", "scope=", "scope=LOCAL"] {
        let resp = publish_user(api, "s", "bad", bad);
        assert_eq!(resp.status, 400, "{bad}: {:?}", resp.text());
        let code = resp.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(code == "bad_request" || code == "invalid_request", "{bad}: {code}");
    }
    for want in ["local", "cluster", "bl"] {
        assert_eq!(c.expect_event("scoped").data, want);
    }
    c.expect_no_event(Duration::from_millis(200));
}

#[test]
fn names_are_validated_and_percent_decoded() {
    let server = Server::start(&["--shards", "2"]);
    let api = server.api;
    let longest = "é".repeat(64); // 128 bytes
    let too_long = "u".repeat(129);
    for bad in ["a%2Fb", "a%2Cb", "a%01b", "a%7Fb", too_long.as_str()] {
        let resp = http(api, "POST", &format!("/v1/users/{bad}/events"), &[], b"x");
        resp.assert_error(400, "invalid_request");
        let resp = http(api, "POST", &format!("/v1/rooms/{bad}/events"), &[], b"x");
        resp.assert_error(400, "invalid_request");
    }
    // Percent-encoded names match the decoded subscriber names.
    let odd = "émile x+y";
    let mut u = SseClient::open_ready(server.public, &sse_path(odd, &[]));
    let mut l = SseClient::open_ready(server.public, &sse_path(&longest, &["salle à manger"]));
    assert_eq!(ok_json(publish_user(api, odd, "odd", ""))["delivered"], 1);
    assert_eq!(ok_json(publish_user(api, &longest, "long", ""))["delivered"], 1);
    assert_eq!(ok_json(publish_room(api, "salle à manger", "room", ""))["delivered"], 1);
    assert_eq!(u.expect_event("odd name").data, "odd");
    assert_eq!(l.expect_event("long name").data, "long");
    assert_eq!(l.expect_event("room name").data, "room");
    // Names are exact: a different case or prefix is another user.
    assert_eq!(ok_json(publish_user(api, "Émile x+y", "no", ""))["delivered"], 0);
}
