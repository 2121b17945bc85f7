//! Load generator for ssekify and peer SSE servers (Nchan, …).
//!
//! `run` opens N subscribers, publishes at a fixed rate (broadcast, per user
//! or per room; single or batch route), and reports per-delivery latency,
//! fan-out completion, loss, and the server's CPU time per delivery. `churn`
//! measures subscriber accepts per second; `idle` the server's memory per
//! connection; `floor` what the kernel alone charges per send, with no server,
//! `targeted-floor` per targeted publish (a read and two sends) and
//! `receive-floor` per message pushed to a waiting thread (a bus instance's),
//! `subscribe-floor` per message a running bus's Redis pushes to a bare
//! subscriber; `chaos` whether acknowledged messages survive faults across instances.
//! Every scenario prints a table and can write JSON.

mod chaos;
mod floor;
mod floor_receive;
mod floor_subscribe;
mod floor_targeted;
mod net;
mod proc;
mod publisher;
mod record;
mod subscriber;
mod workers;

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use net::{parse_url, Url};
use publisher::{Mode, Plan, Sent};
use record::{now_nanos, percentiles_ms, Recorder};
use subscriber::Fleet;

#[derive(Parser)]
#[command(name = "ssekify-loadtest", about = "Load scenarios for SSE servers")]
struct Cli {
    /// The generator's own IO driver. epoll by default: with io_uring, every
    /// delivery to a waiting generator socket costs the *server* a task-work
    /// notification in its send path on loopback, which would inflate the
    /// server's measured CPU time with the generator's choice.
    #[arg(long, value_enum, default_value = "epoll", global = true)]
    io_driver: GeneratorDriver,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GeneratorDriver {
    Epoll,
    Uring,
}

/// Who a targeted floor's messages are for.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum Recipients {
    /// Connected subscribers: each message is a frame sent.
    Subscribers,
    /// Users with no connection: no frame is sent.
    Nobody,
}

#[derive(Subcommand)]
enum Scenario {
    /// Subscribers plus paced publishers: latency, loss, server CPU per delivery.
    Run(RunArgs),
    /// Connect/disconnect storm: subscribers accepted per second, CPU per accept.
    Churn(ChurnArgs),
    /// N idle subscribers: server memory per connection.
    Idle(IdleArgs),
    /// No server: the kernel's CPU cost of one small TCP send, the floor under
    /// any server's CPU per delivery on this machine.
    Floor(FloorArgs),
    /// No server: the least CPU a targeted publish costs on this machine
    /// (read the request, send the answer, send one frame), the floor under
    /// any server's CPU per targeted publish.
    TargetedFloor(TargetedFloorArgs),
    /// No server: the least CPU a message pushed to a sleeping thread costs
    /// it on this machine (woken by the data, one read), the floor under an
    /// instance's CPU per message it receives from the bus.
    ReceiveFloor(ReceiveFloorArgs),
    /// A bare subscriber to a running bus's Redis channels: the least CPU
    /// hearing one of its messages costs in that same run (blocking read,
    /// or monoio on io_uring or epoll, nothing done with the message).
    SubscribeFloor(SubscribeFloorArgs),
    /// Subscribers hopping between instances with Last-Event-ID while
    /// publishers send to random instances: acknowledged messages lost,
    /// duplicated or reordered (exit status 2 when any was lost, duplicated or
    /// misrouted).
    Chaos(chaos::ChaosArgs),
}

#[derive(Args)]
struct Common {
    /// Subscribe URL; `{i}` is the subscriber index, `{r}` its room (i mod --rooms).
    /// Repeat to spread subscribers over several servers (subscriber i uses URL i mod n).
    #[arg(long = "sse-url", default_value = "http://127.0.0.1:8080/sse?userId=u{i}&rooms=r{r}")]
    sse_urls: Vec<String>,
    /// Subscribers.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Rooms subscribers are spread over.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Source addresses to connect from, round robin (e.g. 127.0.0.1,127.0.0.2) when
    /// one address runs out of ephemeral ports.
    #[arg(long, value_delimiter = ',')]
    source_ips: Vec<IpAddr>,
    /// Server process ids whose CPU time and RSS are measured (repeat for several).
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Name of the server in the output.
    #[arg(long, default_value = "ssekify")]
    label: String,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<String>,
    /// Generator processes holding the subscribers (each is bounded by its
    /// open-file limit, ~19,000 here); the first one also publishes and reports.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Internal: run as worker k of --processes.
    #[arg(long, hide = true)]
    worker: Option<usize>,
}

impl Common {
    /// This process's slot among the generator processes.
    fn slot(&self) -> usize {
        self.worker.unwrap_or(0)
    }

    /// True for the subscriber indexes this process holds.
    fn owns(&self, index: usize) -> bool {
        index % self.processes.max(1) == self.slot()
    }

    fn urls(&self) -> Result<Vec<Url>, String> {
        self.sse_urls.iter().map(|u| parse_url(u)).collect()
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Publish URL; `{i}` user index, `{r}` room index.
    #[arg(long, default_value = "http://127.0.0.1:8081/v1/broadcast")]
    publish_url: String,
    /// Target selection.
    #[arg(long, value_enum, default_value = "broadcast")]
    mode: Mode,
    /// Messages per second.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Payload bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Messages per request (use the batch route, e.g. http://…/v1/publish).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Publisher connections.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Share of subscribers that never read (the slow scenario).
    #[arg(long, default_value_t = 0.0)]
    slow_share: f64,
    /// Seconds to wait for late deliveries after the last publish.
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
}

#[derive(Args)]
struct ChurnArgs {
    #[command(flatten)]
    common: Common,
    /// Seconds of churn.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Connect/subscribe/close loops running at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Seconds to hold the connections before measuring.
    #[arg(long, default_value_t = 2)]
    settle: u64,
}

#[derive(Args)]
struct FloorArgs {
    /// Loopback connections the sender writes to (one frame each per round).
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Rounds per second (each round is one broadcast to every connection).
    #[arg(long, default_value_t = 8.0)]
    rate: f64,
    /// Bytes per frame (ssekify's frame for a 100-byte payload is ~130 bytes).
    #[arg(long, default_value_t = 130)]
    size: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Send in slices whose lengths (seconds) standard input gives, a line
    /// each, instead of for --duration: prints "ready", then "slice <sends>
    /// <sender CPU µs>" after each (a server and the floor timed in turns).
    #[arg(long)]
    slices: bool,
    /// How frames reach the kernel.
    #[arg(long, value_enum, default_value = "uring")]
    method: floor::SendMethod,
    /// Core the sender thread is pinned to.
    #[arg(long)]
    sender_core: Option<usize>,
    /// Core the reader thread is pinned to.
    #[arg(long)]
    reader_core: Option<usize>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<String>,
}

#[derive(Args)]
struct TargetedFloorArgs {
    /// Subscriber connections the frames go to, one after the other.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Keep-alive publisher connections, one request in flight on each.
    #[arg(long, default_value_t = 32)]
    publishers: usize,
    /// Requests per second, all publishers together.
    #[arg(long, default_value_t = 20_000.0)]
    rate: f64,
    /// Bytes per request (a `POST /v1/users/{u}/events` with a 100-byte body is ~220).
    #[arg(long, default_value_t = 220)]
    request_size: usize,
    /// Bytes per answer (ssekify's `200` with its JSON is ~150).
    #[arg(long, default_value_t = 150)]
    answer_size: usize,
    /// Bytes per frame (ssekify's frame for a 100-byte payload is ~130).
    #[arg(long, default_value_t = 130)]
    size: usize,
    /// Frames each request delivers, each to the next subscriber: N stands
    /// for a batch publish of N messages (size the request and answer as its).
    #[arg(long, default_value_t = 1)]
    frames_per_request: usize,
    /// `nobody`: the messages are for users with no connection, so no frame
    /// is sent (the floor under a message a server only records).
    #[arg(long, value_enum, default_value_t = Recipients::Subscribers)]
    recipients: Recipients,
    /// How the frames reach the kernel when `--requests syscall` (the
    /// request's read and its answer are system calls then).
    #[arg(long, value_enum, default_value_t = floor::SendMethod::Syscall)]
    method: floor::SendMethod,
    /// How the requests are read and answered: `uring` puts everything,
    /// frames too, through one io_uring as ssekify does.
    #[arg(long, value_enum, default_value_t = floor_targeted::RequestIo::Syscall)]
    requests: floor_targeted::RequestIo,
    /// Seconds of requests.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Send requests in slices whose lengths (seconds) standard input gives,
    /// a line each, instead of for --duration: prints "ready", then "slice
    /// <requests>" once each is answered (a server and the floor timed in turns).
    #[arg(long)]
    slices: bool,
    /// Core the server thread is pinned to.
    #[arg(long)]
    server_core: Option<usize>,
    /// Core the client process is pinned to.
    #[arg(long)]
    client_core: Option<usize>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<String>,
}

#[derive(Args)]
struct ReceiveFloorArgs {
    /// Messages per second.
    #[arg(long, default_value_t = 2_000.0)]
    rate: f64,
    /// Messages per write (1: each arrives alone, as a lone publish's does).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Bytes per message (a bus notice with a 100-byte payload is ~250).
    #[arg(long, default_value_t = 250)]
    size: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Core the receiving thread is pinned to.
    #[arg(long)]
    receiver_core: Option<usize>,
    /// Core the sending process is pinned to.
    #[arg(long)]
    sender_core: Option<usize>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<String>,
}

#[derive(Args)]
struct SubscribeFloorArgs {
    /// Redis address.
    #[arg(long, default_value = "127.0.0.1:6379")]
    redis: std::net::SocketAddr,
    /// Channels to subscribe to, as a `PUBSUB CHANNELS` pattern (the bus
    /// partitions' channels by default).
    #[arg(long, default_value = "{ssekify:bus:*}:n")]
    channels: String,
    /// How the subscriber waits.
    #[arg(long, value_enum, default_value_t = floor_subscribe::Reader::Blocking)]
    reader: floor_subscribe::Reader,
    /// Seconds of reading.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Core the subscriber is pinned to.
    #[arg(long)]
    core: Option<usize>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    let bare = match &cli.scenario {
        Scenario::Floor(args) => Some(floor_report(args)),
        Scenario::TargetedFloor(args) => Some(targeted_floor_report(args)),
        Scenario::ReceiveFloor(args) => Some(receive_floor_report(args)),
        Scenario::SubscribeFloor(args) => Some(subscribe_floor_report(args)),
        _ => None,
    };
    if let Some(report) = bare {
        match report {
            Ok(report) => report.print(),
            Err(error) => {
                eprintln!("ssekify-loadtest: {error}");
                std::process::exit(1);
            }
        }
        return;
    }
    let scenario = async move {
        match cli.scenario {
            Scenario::Run(args) => run(args).await,
            Scenario::Churn(args) => churn(args).await,
            Scenario::Idle(args) => idle(args).await,
            Scenario::Chaos(args) => chaos::run(args).await,
            Scenario::Floor(_)
            | Scenario::TargetedFloor(_)
            | Scenario::ReceiveFloor(_)
            | Scenario::SubscribeFloor(_) => {
                unreachable!("handled before the runtime starts")
            }
        }
    };
    let report = match cli.io_driver {
        GeneratorDriver::Epoll => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("epoll runtime")
            .block_on(scenario),
        GeneratorDriver::Uring => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .with_entries(8192)
            .build()
            .expect("io_uring runtime")
            .block_on(scenario),
    };
    match report {
        Ok(report) => {
            report.print();
            if let Some(failure) = &report.failure {
                eprintln!("ssekify-loadtest: {failure}");
                std::process::exit(2);
            }
        }
        Err(error) => {
            eprintln!("ssekify-loadtest: {error}");
            std::process::exit(1);
        }
    }
}

fn floor_report(args: &FloorArgs) -> Result<Report, String> {
    let sending = match args.slices {
        true => floor::Sending::Slices,
        false => floor::Sending::For(Duration::from_secs_f64(args.duration)),
    };
    let cores = (args.sender_core, args.reader_core);
    let floor = floor::measure(args.connections, args.rate, args.size, sending, args.method, cores)
        .map_err(|error| format!("floor: {error}"))?;
    // Keys named as in `run`'s report (the sender in the server's place), so
    // compare.sh prints the floor as one more row beside the servers.
    let mut report = Report::new(args.json.clone());
    let frames_received = floor.bytes_received / args.size.max(1) as u64;
    let window = floor.window.as_secs_f64();
    report.add("scenario", "floor");
    report.add("mode", "broadcast");
    report.add("method", if args.method == floor::SendMethod::Uring { "uring" } else { "syscall" });
    report.add("subscribers", args.connections);
    report.add("rate_msgs_per_s", args.rate);
    report.add("payload_bytes", args.size);
    report.add("messages_sent", floor.sends / args.connections.max(1) as u64);
    report.add("deliveries_received", frames_received);
    report.add("deliveries_lost", floor.sends.saturating_sub(frames_received));
    report.add("window_s", format!("{window:.2}"));
    report.add("deliveries_per_s", format!("{:.0}", floor.sends as f64 / window));
    report.add("server_cpu_core_share", format!("{:.3}", floor.sender_cpu_us / 1e6 / window));
    report.add("server_cpu_us_per_delivery", format!("{:.3}", floor.sender_cpu_us / floor.sends.max(1) as f64));
    report.add("reader_cpu_us_per_delivery", format!("{:.3}", floor.reader_cpu_us / floor.sends.max(1) as f64));
    let round_ms = |q: f64| {
        let index = ((floor.rounds.len() as f64 * q).ceil() as usize).clamp(1, floor.rounds.len().max(1)) - 1;
        floor.rounds.get(index).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    report.add("send_round_p50_ms", format!("{:.2}", round_ms(0.5)));
    report.add("send_round_p99_ms", format!("{:.2}", round_ms(0.99)));
    report.add("send_round_max_ms", format!("{:.2}", round_ms(1.0)));
    Ok(report)
}

fn targeted_floor_report(args: &TargetedFloorArgs) -> Result<Report, String> {
    let sizes = floor_targeted::Sizes {
        request: args.request_size,
        answer: args.answer_size,
        frame: args.size,
        frames_per_request: args.frames_per_request,
        deliver: args.recipients == Recipients::Subscribers,
    };
    let sending = match args.slices {
        true => floor::Sending::Slices,
        false => floor::Sending::For(Duration::from_secs_f64(args.duration)),
    };
    let cores = (args.server_core, args.client_core);
    let io = (args.requests, args.method);
    let floor = floor_targeted::measure(args.connections, args.publishers, args.rate, sizes, io, sending, cores)
        .map_err(|error| format!("targeted floor: {error}"))?;
    // Keys named as in `run`'s report for `--mode users`, so compare.sh
    // prints the floor as one more row beside the servers.
    let mut report = Report::new(args.json.clone());
    let window = floor.window.as_secs_f64();
    report.add("scenario", "floor");
    report.add("mode", "users");
    report.add("subscribers", args.connections);
    report.add("subscribers_reading", args.connections);
    report.add("rate_msgs_per_s", args.rate * args.frames_per_request as f64);
    report.add("payload_bytes", args.size);
    report.add("batch", args.frames_per_request);
    report.add("requests_io", format!("{:?}", args.requests).to_lowercase());
    report.add("requests", floor.requests);
    report.add("messages_sent", floor.messages);
    report.add("messages_failed", 0);
    report.add("deliveries_received", floor.frames_received);
    report.add("deliveries_lost", floor.frames_sent.saturating_sub(floor.frames_received));
    report.add("window_s", format!("{window:.2}"));
    report.add("server_cpu_core_share", format!("{:.3}", floor.server_cpu_us / 1e6 / window));
    report.add("server_cpu_us_per_message", format!("{:.3}", floor.server_cpu_us / floor.messages.max(1) as f64));
    Ok(report)
}

fn receive_floor_report(args: &ReceiveFloorArgs) -> Result<Report, String> {
    let duration = Duration::from_secs_f64(args.duration);
    let cores = (args.receiver_core, args.sender_core);
    let floor = floor_receive::measure(args.rate, args.batch, args.size, duration, cores)
        .map_err(|error| format!("receive floor: {error}"))?;
    let mut report = Report::new(args.json.clone());
    report.add("scenario", "receive-floor");
    report.add("rate_msgs_per_s", args.rate);
    report.add("batch", args.batch);
    report.add("message_bytes", args.size);
    report.add("messages_received", floor.messages);
    report.add("reads", floor.reads);
    report.add("window_s", format!("{:.2}", floor.window.as_secs_f64()));
    report.add("receiver_cpu_us_per_msg", format!("{:.3}", floor.receiver_cpu_us / floor.messages.max(1) as f64));
    Ok(report)
}

fn subscribe_floor_report(args: &SubscribeFloorArgs) -> Result<Report, String> {
    let duration = Duration::from_secs_f64(args.duration);
    let floor = floor_subscribe::measure(args.redis, &args.channels, args.reader, duration, args.core)
        .map_err(|error| format!("subscribe floor: {error}"))?;
    let mut report = Report::new(args.json.clone());
    report.add("scenario", "subscribe-floor");
    report.add("reader", format!("{:?}", args.reader).to_lowercase());
    report.add("messages_received", floor.messages);
    report.add("reads", floor.reads);
    report.add("subscriber_cpu_us_per_msg", format!("{:.3}", floor.cpu_us / floor.messages.max(1) as f64));
    Ok(report)
}

/// Ordered results: printed as a table, written as JSON.
struct Report {
    fields: Vec<(String, String)>,
    json: Option<String>,
    /// Set by a scenario that is a pass/fail gate: why it failed.
    failure: Option<String>,
}

impl Report {
    fn new(json: Option<String>) -> Self {
        Report { fields: Vec::new(), json, failure: None }
    }

    /// Marks the run as failed (exit status 2 once printed).
    fn fail(&mut self, why: String) {
        self.failure = Some(why);
    }

    fn add(&mut self, key: &str, value: impl std::fmt::Display) {
        self.fields.push((key.to_owned(), value.to_string()));
    }

    fn print(&self) {
        for (key, value) in &self.fields {
            println!("{key:<34} {value}");
        }
        if let Some(path) = &self.json {
            let mut out = String::from("{");
            for (i, (key, value)) in self.fields.iter().enumerate() {
                let quoted = value.parse::<f64>().is_err();
                let value = if quoted { format!("\"{}\"", value.replace('"', "\\\"")) } else { value.clone() };
                let _ = write!(out, "{}\"{key}\":{value}", if i == 0 { "" } else { "," });
            }
            out.push_str("}\n");
            if let Err(error) = std::fs::write(path, out) {
                eprintln!("cannot write {path}: {error}");
            }
        }
    }
}

fn template(url: &Url, index: usize, rooms: usize) -> String {
    url.path.replace("{i}", &index.to_string()).replace("{r}", &(index % rooms.max(1)).to_string())
}

/// An open subscriber: stream, bytes read past the head, chunked or not.
type Opened = (monoio::net::TcpStream, Vec<u8>, bool);

/// Opens this process's share of the subscribers, 256 at a time; returns
/// `(index, stream or None)` in index order.
async fn open_fleet(common: &Common, urls: &[Url]) -> Vec<(usize, Option<Opened>)> {
    let indexes: Vec<usize> = (0..common.subscribers).filter(|&i| common.owns(i)).collect();
    let mut open = Vec::with_capacity(indexes.len());
    for chunk in indexes.chunks(256) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let source = (!common.source_ips.is_empty()).then(|| common.source_ips[i % common.source_ips.len()]);
                let url = &urls[i % urls.len()];
                let (addr, path) = (url.addr, template(url, i, common.rooms));
                monoio::spawn(async move { subscriber::open(addr, source, &path, "").await.ok() })
            })
            .collect();
        for (&i, task) in chunk.iter().zip(tasks) {
            open.push((i, task.await));
        }
    }
    open
}

async fn run(args: RunArgs) -> Result<Report, String> {
    let common = &args.common;
    let urls = common.urls()?;
    let publish_url = parse_url(&args.publish_url)?;
    let messages = (args.rate * args.duration).round().max(1.0) as usize;
    let workers = match common.worker {
        None if common.processes > 1 => workers::spawn(common.processes)?,
        _ => Vec::new(),
    };
    let recorder = Rc::new(RefCell::new(Recorder::new(messages)));
    let fleet = Rc::new(Fleet::default());
    let slow_every = if args.slow_share > 0.0 { (1.0 / args.slow_share).round().max(1.0) as usize } else { 0 };
    let is_slow = |i: usize| slow_every > 0 && i % slow_every == 0;
    let mut connected = vec![false; common.subscribers];
    let mut held = Vec::new();
    for (i, slot) in open_fleet(common, &urls).await {
        let Some((stream, rest, chunked)) = slot else { continue };
        connected[i] = true;
        fleet.connected.set(fleet.connected.get() + 1);
        if is_slow(i) {
            held.push(stream);
        } else {
            monoio::spawn(subscriber::read(stream, rest, chunked, recorder.clone(), fleet.clone()));
        }
    }
    if common.worker.is_some() {
        let failed: Vec<usize> = (0..common.subscribers).filter(|&i| common.owns(i) && !connected[i]).collect();
        workers::serve(&failed, || fleet.lines.get(), || recorder.borrow().export()).await;
        std::process::exit(0);
    }
    for worker in &workers {
        let failed = worker.ready()?;
        for i in (0..common.subscribers).filter(|&i| !common.owns(i)) {
            connected[i] = true;
        }
        for i in failed {
            connected[i] = false;
        }
    }
    let reading: Vec<bool> = (0..common.subscribers).map(|i| connected[i] && !is_slow(i)).collect();
    let mut room_readers = vec![0u32; common.rooms.max(1)];
    for i in (0..common.subscribers).filter(|&i| reading[i]) {
        room_readers[i % common.rooms.max(1)] += 1;
    }
    let readers = reading.iter().filter(|r| **r).count() as u32;
    let total_connected = connected.iter().filter(|c| **c).count();
    eprintln!(
        "{total_connected} subscribers connected ({readers} reading) over {} process(es)",
        common.processes.max(1)
    );
    monoio::time::sleep(Duration::from_millis(500)).await;
    let plan = Rc::new(Plan {
        mode: args.mode,
        url: publish_url,
        messages,
        rate: args.rate,
        batch: args.batch.max(1),
        size: args.size,
        subscribers: common.subscribers,
        rooms: common.rooms.max(1),
        reading: Rc::new(reading),
        room_readers: Rc::new(room_readers),
        readers,
    });
    let sent = Rc::new(Sent::default());
    let cpu_before = proc::cpu_micros(&common.server_pids);
    let started = Instant::now();
    let start_ns = now_nanos() + 50_000_000;
    let lanes = args.publishers.max(1);
    let publishers: Vec<_> = (0..lanes)
        .map(|lane| monoio::spawn(publisher::run(plan.clone(), lane, lanes, start_ns, recorder.clone(), sent.clone())))
        .collect();
    let progress = monoio::spawn(progress(fleet.clone(), sent.clone(), messages));
    for publisher in publishers {
        publisher.await;
    }
    let expected_total = recorder.borrow().summary(messages).expected;
    let seen_total =
        || fleet.lines.get() + workers.iter().map(|w| w.seen.load(std::sync::atomic::Ordering::Relaxed)).sum::<u64>();
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain);
    while seen_total() < expected_total && Instant::now() < drain_until {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = proc::cpu_micros(&common.server_pids).saturating_sub(cpu_before);
    drop(progress);
    for worker in workers {
        worker.finish(|line| recorder.borrow_mut().merge_line(line));
    }
    let recorder = recorder.borrow();
    let summary = recorder.summary(messages);
    let mut report = Report::new(common.json.clone());
    report.add("server", &common.label);
    report.add("mode", format!("{:?}", args.mode).to_lowercase());
    report.add("subscribers", total_connected);
    report.add("generator_processes", common.processes.max(1));
    report.add("subscribers_reading", readers);
    report.add("rate_msgs_per_s", args.rate);
    report.add("batch", args.batch);
    report.add("payload_bytes", args.size);
    report.add("messages_sent", sent.ok.get());
    report.add("messages_failed", sent.failed.get());
    report.add("deliveries_expected", summary.expected);
    report.add("deliveries_received", summary.received);
    report.add("deliveries_lost", summary.expected - summary.received);
    report.add("deliveries_unexpected", recorder.unexpected);
    report.add("window_s", format!("{elapsed:.2}"));
    report.add("deliveries_per_s", format!("{:.0}", summary.received as f64 / elapsed));
    for (name, value) in percentiles_ms(&recorder.delivery) {
        report.add(&format!("latency_{name}_ms"), format!("{value:.2}"));
    }
    for (name, value) in percentiles_ms(&summary.completion) {
        report.add(&format!("fanout_complete_{name}_ms"), format!("{value:.2}"));
    }
    if !common.server_pids.is_empty() {
        report.add("server_cpu_ms", format!("{:.1}", cpu as f64 / 1e3));
        report.add("server_cpu_core_share", format!("{:.3}", cpu as f64 / 1e6 / elapsed));
        report.add("server_cpu_us_per_delivery", format!("{:.3}", cpu as f64 / summary.received.max(1) as f64));
        report.add("server_cpu_us_per_message", format!("{:.3}", cpu as f64 / sent.ok.get().max(1) as f64));
        report.add("server_rss_kib", proc::rss_kib(&common.server_pids));
    }
    drop(held);
    Ok(report)
}

async fn progress(fleet: Rc<Fleet>, sent: Rc<Sent>, messages: usize) {
    let mut last = 0;
    loop {
        monoio::time::sleep(Duration::from_secs(1)).await;
        let lines = fleet.lines.get();
        eprintln!(
            "sent {}/{} (failed {}), deliveries {} (+{}/s), subscribers {} (closed {})",
            sent.ok.get(),
            messages,
            sent.failed.get(),
            lines,
            lines - last,
            fleet.connected.get(),
            fleet.failed.get()
        );
        last = lines;
    }
}

async fn churn(args: ChurnArgs) -> Result<Report, String> {
    let common = &args.common;
    let urls = common.urls()?;
    let done = Rc::new(std::cell::Cell::new(0usize));
    let failed = Rc::new(std::cell::Cell::new(0usize));
    let cpu_before = proc::cpu_micros(&common.server_pids);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.duration);
    let loops: Vec<_> = (0..args.concurrency.max(1))
        .map(|lane| {
            let (urls, done, failed) = (urls.clone(), done.clone(), failed.clone());
            let sources = common.source_ips.clone();
            let rooms = common.rooms;
            monoio::spawn(async move {
                let mut i = lane;
                while Instant::now() < until {
                    let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
                    let url = &urls[i % urls.len()];
                    match subscriber::open(url.addr, source, &template(url, i, rooms), "").await {
                        Ok(_) => done.set(done.get() + 1),
                        Err(_) => failed.set(failed.get() + 1),
                    }
                    i += args.concurrency;
                }
            })
        })
        .collect();
    for task in loops {
        task.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = proc::cpu_micros(&common.server_pids).saturating_sub(cpu_before);
    let mut report = Report::new(common.json.clone());
    report.add("server", &common.label);
    report.add("scenario", "churn");
    report.add("subscribes_completed", done.get());
    report.add("subscribes_failed", failed.get());
    report.add("window_s", format!("{elapsed:.2}"));
    report.add("subscribes_per_s", format!("{:.0}", done.get() as f64 / elapsed));
    if !common.server_pids.is_empty() {
        report.add("server_cpu_core_share", format!("{:.3}", cpu as f64 / 1e6 / elapsed));
        report.add("server_cpu_us_per_subscribe", format!("{:.2}", cpu as f64 / done.get().max(1) as f64));
    }
    Ok(report)
}

async fn idle(args: IdleArgs) -> Result<Report, String> {
    let common = &args.common;
    let urls = common.urls()?;
    let before = proc::rss_kib(&common.server_pids);
    let workers = match common.worker {
        None if common.processes > 1 => workers::spawn(common.processes)?,
        _ => Vec::new(),
    };
    let started = Instant::now();
    let open = open_fleet(common, &urls).await;
    if common.worker.is_some() {
        let failed: Vec<usize> = open.iter().filter(|(_, s)| s.is_none()).map(|(i, _)| *i).collect();
        workers::serve(&failed, || 0, Vec::new).await;
        std::process::exit(0);
    }
    let mut opened = open.iter().filter(|(_, s)| s.is_some()).count();
    for (k, worker) in workers.iter().enumerate().map(|(n, w)| (n + 1, w)) {
        let share = (0..common.subscribers).filter(|i| i % common.processes == k).count();
        opened += share - worker.ready()?.len();
    }
    let elapsed = started.elapsed().as_secs_f64();
    monoio::time::sleep(Duration::from_secs(args.settle)).await;
    let after = proc::rss_kib(&common.server_pids);
    let mut report = Report::new(common.json.clone());
    report.add("server", &common.label);
    report.add("scenario", "idle");
    report.add("subscribers", format!("{opened}/{}", common.subscribers));
    report.add("open_s", format!("{elapsed:.2}"));
    report.add("server_rss_before_kib", before);
    report.add("server_rss_after_kib", after);
    report.add(
        "server_bytes_per_subscriber",
        format!("{:.0}", (after.saturating_sub(before) * 1024) as f64 / opened.max(1) as f64),
    );
    drop(open);
    Ok(report)
}
