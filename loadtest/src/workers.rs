//! Several generator processes for subscriber counts one process cannot hold
//! (each process is bounded by its open-file limit).
//!
//! The parent starts `--processes - 1` copies of itself with `--worker k`;
//! worker `k` opens the subscribers whose index is `k` modulo the process
//! count, and talks to the parent over stdout lines:
//! `failed <i>` for each subscriber it could not open, `ready`, then
//! `n <data lines seen>` every 100 ms; when the parent closes the worker's
//! stdin, the worker prints what it recorded (the scenario's export lines,
//! e.g. [`crate::record::Recorder::export`]) and `end`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// A worker process seen from the parent.
pub struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Latest `n` report.
    pub seen: Arc<AtomicU64>,
}

/// Starts workers `1..processes` with this process's own arguments.
pub fn spawn(processes: usize) -> Result<Vec<Worker>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    (1..processes)
        .map(|k| {
            let mut child = Command::new(&exe)
                .args(&args)
                .args(["--worker", &k.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot start worker {k}: {e}"))?;
            let stdout = child.stdout.take().expect("piped");
            let (tx, rx) = mpsc::channel();
            let seen = Arc::new(AtomicU64::new(0));
            let counter = seen.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    match line.strip_prefix("n ") {
                        Some(n) => counter.store(n.parse().unwrap_or(0), Ordering::Relaxed),
                        None => {
                            if tx.send(line).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            Ok(Worker { stdin: child.stdin.take(), child, lines: rx, seen })
        })
        .collect()
}

impl Worker {
    /// Waits for `ready`; returns the indexes the worker could not open.
    pub fn ready(&self) -> Result<Vec<usize>, String> {
        let mut failed = Vec::new();
        loop {
            let line = self.lines.recv_timeout(Duration::from_secs(300)).map_err(|_| "a worker never became ready")?;
            if line == "ready" {
                return Ok(failed);
            }
            if let Some(index) = line.strip_prefix("failed ").and_then(|i| i.parse().ok()) {
                failed.push(index);
            }
        }
    }

    /// Tells the worker to stop and hands each line it exported to `merge`.
    pub fn finish(mut self, mut merge: impl FnMut(&str)) {
        drop(self.stdin.take());
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(30)) {
            if line == "end" {
                break;
            }
            merge(&line);
        }
        let _ = self.child.wait();
    }
}

/// The worker side: announces failures and readiness, reports progress
/// until stdin closes, then prints the lines of `export`.
pub async fn serve(failed: &[usize], seen: impl Fn() -> u64, export: impl FnOnce() -> Vec<String>) {
    let mut out = std::io::stdout().lock();
    for index in failed {
        let _ = writeln!(out, "failed {index}");
    }
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    drop(out);
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        flag.store(true, Ordering::Release);
    });
    while !closed.load(Ordering::Acquire) {
        println!("n {}", seen());
        monoio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut out = std::io::stdout().lock();
    for line in export() {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "end");
    let _ = out.flush();
}
