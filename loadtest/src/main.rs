//! Load generator for ssekify and peer SSE servers.
//!
//! Scenarios grow with the load-testing work; today: `idle`, which opens N
//! subscribers, holds them, and reports the server's resident memory per
//! connection (RSS after − RSS before, divided by N).

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

#[derive(Parser)]
#[command(name = "ssekify-loadtest", about = "Load scenarios for SSE servers")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Open N idle subscribers and report server RSS per connection.
    Idle {
        /// Server address of the SSE listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        target: SocketAddr,
        /// Path and query of the subscribe route; `{i}` becomes the subscriber number.
        #[arg(long, default_value = "/sse?userId=u{i}")]
        path: String,
        /// Subscribers to open (keep under this process's open-file limit).
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Pid of the server whose /proc/<pid>/status VmRSS is measured.
        #[arg(long)]
        server_pid: u32,
        /// Seconds to hold the connections before measuring.
        #[arg(long, default_value_t = 2)]
        settle: u64,
    },
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn subscribe(target: SocketAddr, request: String) -> Option<TcpStream> {
    let mut stream = TcpStream::connect_addr(target).await.ok()?;
    let (result, _) = stream.write_all(request.into_bytes()).await;
    result.ok()?;
    let mut seen = Vec::new();
    while !seen.windows(6).any(|w| w == b"retry:") {
        let (result, buf) = stream.read(Vec::with_capacity(1024)).await;
        if result.ok()? == 0 {
            return None;
        }
        seen.extend_from_slice(&buf);
    }
    Some(stream)
}

fn main() {
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::Idle { target, path, connections, server_pid, settle } => {
            let mut runtime =
                monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build().expect("runtime");
            runtime.block_on(async move {
                let before = rss_kib(server_pid);
                let started = Instant::now();
                let open = Rc::new(Cell::new(0usize));
                let mut held = Vec::with_capacity(connections);
                for chunk in (0..connections).collect::<Vec<_>>().chunks(256) {
                    let tasks: Vec<_> = chunk
                        .iter()
                        .map(|i| {
                            let request = format!(
                                "GET {} HTTP/1.1\r\nHost: loadtest\r\nAccept: text/event-stream\r\n\r\n",
                                path.replace("{i}", &i.to_string())
                            );
                            monoio::spawn(subscribe(target, request))
                        })
                        .collect();
                    for task in tasks {
                        if let Some(stream) = task.await {
                            open.set(open.get() + 1);
                            held.push(stream);
                        }
                    }
                }
                let opened = open.get();
                let elapsed = started.elapsed();
                monoio::time::sleep(Duration::from_secs(settle)).await;
                let after = rss_kib(server_pid);
                let per = (after.saturating_sub(before) * 1024) as f64 / opened.max(1) as f64;
                println!("scenario=idle connections={opened}/{connections} open_seconds={:.2} server_rss_before_kib={before} server_rss_after_kib={after} bytes_per_connection={per:.0}", elapsed.as_secs_f64());
                drop(held);
            });
        }
    }
}
