//! `ssekify-loadtest floor` and `targeted-floor` end to end: the bare sender
//! reaches every connection with every frame (through both send methods),
//! sends in the slices it is asked for, the bare responder answers every
//! request and delivers its frame (by system calls and through io_uring),
//! and both report it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};

fn field(output: &str, key: &str) -> String {
    output
        .lines()
        .find_map(|line| line.strip_prefix(key).filter(|rest| rest.starts_with(' ')))
        .unwrap_or_else(|| panic!("no `{key}` in:\n{output}"))
        .trim()
        .to_owned()
}

/// Runs `ssekify-loadtest` with the arguments, given in groups; its output,
/// once it succeeded.
fn run(groups: &[&[&str]]) -> String {
    let args = groups.concat();
    let output =
        Command::new(env!("CARGO_BIN_EXE_ssekify-loadtest")).args(&args).output().expect("run ssekify-loadtest");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{args:?}: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// `ssekify-loadtest` with the arguments and `--slices`, once it said it is
/// ready: the child, where to ask for slices, and its output's lines.
fn sliced(args: &[&str]) -> (Child, ChildStdin, impl Iterator<Item = String>) {
    let mut floor = Command::new(env!("CARGO_BIN_EXE_ssekify-loadtest"))
        .args(args)
        .arg("--slices")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run ssekify-loadtest");
    let mut lines = BufReader::new(floor.stdout.take().expect("piped")).lines().map(|line| line.expect("a line"));
    assert_eq!(lines.next().as_deref(), Some("ready"));
    let ask = floor.stdin.take().expect("piped");
    (floor, ask, lines)
}

#[test]
fn every_frame_reaches_every_connection_with_both_send_methods() {
    for method in ["uring", "syscall"] {
        let stdout = run(&[
            &["floor", "--connections", "50", "--rate", "20", "--size", "64", "--duration", "0.5"],
            &["--method", method],
        ]);
        assert_eq!(field(&stdout, "method"), method);
        assert_eq!(field(&stdout, "messages_sent"), "10", "{method}: 20 rounds/s for 0.5 s");
        assert_eq!(field(&stdout, "deliveries_received"), "500", "{method}: 10 rounds × 50 connections");
        assert_eq!(field(&stdout, "deliveries_lost"), "0");
        let per_send: f64 = field(&stdout, "server_cpu_us_per_delivery").parse().expect("a number");
        assert!(per_send >= 0.0);
    }
}

#[test]
fn slices_send_when_asked_and_report_each_one() {
    let (mut floor, mut ask, mut lines) = sliced(&["floor", "--connections", "40", "--rate", "20", "--size", "64"]);
    for (seconds, rounds) in [("0.25", 5), ("0.1", 2)] {
        writeln!(ask, "{seconds}").expect("ask for a slice");
        let slice = lines.next().expect("a slice's line");
        let fields: Vec<&str> = slice.split(' ').collect();
        assert_eq!(fields[..2], ["slice", &(rounds * 40).to_string()], "{seconds} s at 20 rounds/s: {slice}");
        assert!(fields[2].parse::<f64>().expect("CPU µs") > 0.0, "{slice}");
    }
    drop(ask);
    let rest: String = lines.map(|line| line + "\n").collect();
    assert!(floor.wait().expect("the floor ends").success());
    assert_eq!(field(&rest, "messages_sent"), "7", "5 + 2 rounds over the two slices");
    assert_eq!(field(&rest, "deliveries_received"), "280");
    assert_eq!(field(&rest, "deliveries_lost"), "0");
}

#[test]
fn the_targeted_floor_answers_every_request_and_delivers_every_frame_by_either_io() {
    for io in ["syscall", "uring"] {
        let stdout = run(&[
            &["targeted-floor", "--connections", "50", "--publishers", "4", "--rate", "200", "--duration", "0.5"],
            &["--requests", io],
        ]);
        assert_eq!(field(&stdout, "mode"), "users");
        assert_eq!(field(&stdout, "requests_io"), io);
        assert_eq!(field(&stdout, "requests"), "100", "{io}: 200 requests/s for 0.5 s, each answered");
        assert_eq!(field(&stdout, "messages_sent"), "100", "{io}");
        assert_eq!(field(&stdout, "deliveries_received"), "100", "{io}: one frame per request");
        assert_eq!(field(&stdout, "deliveries_lost"), "0");
        let per_request: f64 = field(&stdout, "server_cpu_us_per_message").parse().expect("a number");
        assert!(per_request > 0.0, "{io}: a read and two sends cost something");
    }
}

#[test]
fn the_io_uring_floor_serves_batches_and_requests_for_nobody() {
    let batch =
        ["--frames-per-request", "30", "--request-size", "4000", "--answer-size", "2000", "--requests", "uring"];
    let shape = ["targeted-floor", "--connections", "50", "--publishers", "2", "--rate", "40", "--duration", "0.5"];
    let delivered = run(&[&shape, &batch]);
    assert_eq!(field(&delivered, "requests"), "20", "40 requests/s for 0.5 s");
    assert_eq!(field(&delivered, "deliveries_received"), "600", "30 frames per request, wrapping round the 50");
    assert_eq!(field(&delivered, "deliveries_lost"), "0");
    let nobody = run(&[&shape, &batch, &["--recipients", "nobody"]]);
    assert_eq!(field(&nobody, "requests"), "20");
    assert_eq!(field(&nobody, "messages_sent"), "600");
    assert_eq!(field(&nobody, "deliveries_received"), "0", "the messages are for nobody connected");
}

#[test]
fn the_batch_floor_sends_every_frame_of_every_request() {
    let stdout = run(&[
        &["targeted-floor", "--connections", "50", "--publishers", "2", "--rate", "40", "--duration", "0.5"],
        &["--frames-per-request", "30", "--request-size", "4000", "--answer-size", "2000", "--method", "uring"],
    ]);
    assert_eq!(field(&stdout, "batch"), "30");
    assert_eq!(field(&stdout, "requests"), "20", "40 requests/s for 0.5 s");
    assert_eq!(field(&stdout, "messages_sent"), "600", "30 frames per request");
    assert_eq!(field(&stdout, "deliveries_received"), "600", "each to a subscriber, wrapping round the 50");
    assert_eq!(field(&stdout, "rate_msgs_per_s"), "1200");
    assert_eq!(field(&stdout, "deliveries_lost"), "0");
}

#[test]
fn the_batch_floor_sends_the_slices_it_is_asked_for() {
    let (mut floor, mut ask, mut lines) = sliced(
        &[
            &["targeted-floor", "--connections", "50", "--publishers", "2", "--rate", "40"][..],
            &["--frames-per-request", "30", "--request-size", "4000", "--answer-size", "2000", "--method", "uring"],
        ]
        .concat(),
    );
    for (seconds, requests) in [("0.25", "10"), ("0.1", "4")] {
        writeln!(ask, "{seconds}").expect("ask for a slice");
        assert_eq!(lines.next(), Some(format!("slice {requests}")), "{seconds} s at 40 requests/s");
    }
    drop(ask);
    let rest: String = lines.map(|line| line + "\n").collect();
    assert!(floor.wait().expect("the floor ends").success());
    assert_eq!(field(&rest, "requests"), "14", "10 + 4 over the two slices");
    assert_eq!(field(&rest, "messages_sent"), "420", "30 frames per request");
    assert_eq!(field(&rest, "deliveries_received"), "420");
    assert_eq!(field(&rest, "deliveries_lost"), "0");
}

#[test]
fn the_nobody_floor_answers_every_request_and_sends_no_frame() {
    let stdout = run(&[
        &["targeted-floor", "--connections", "50", "--publishers", "2", "--rate", "40", "--duration", "0.5"],
        &["--frames-per-request", "30", "--request-size", "4000", "--answer-size", "2000", "--recipients", "nobody"],
    ]);
    assert_eq!(field(&stdout, "requests"), "20", "40 requests/s for 0.5 s");
    assert_eq!(field(&stdout, "messages_sent"), "600", "30 messages per request");
    assert_eq!(field(&stdout, "deliveries_received"), "0", "the messages are for nobody connected");
    assert_eq!(field(&stdout, "deliveries_lost"), "0");
    let per_message: f64 = field(&stdout, "server_cpu_us_per_message").parse().expect("a number");
    assert!(per_message > 0.0, "a read and an answer cost something");
}
