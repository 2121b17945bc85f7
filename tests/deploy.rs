//! `deploy/docker/ssekify-probe`, the container image's HEALTHCHECK and the
//! Kubernetes preStop hook (`ssekify-probe stop-accepting; sleep 5`), run
//! with bash against the real binary, with the environment the image gives
//! it (SSEKIFY_LISTEN, SSEKIFY_API_LISTEN, SSEKIFY_API_KEY).

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const KEY: &str = "probe-test-key-0123456789abcdef0123456789";

/// Runs `bash deploy/docker/ssekify-probe <command>` with only `env` set
/// (besides PATH); returns (exit 0?, stdout + stderr, how long it took).
fn probe(command: &str, env: &[(&str, &str)]) -> (bool, String, Duration) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/docker/ssekify-probe");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).arg(command).env_clear().stdin(Stdio::null());
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    for (name, value) in env {
        cmd.env(name, value);
    }
    let started = Instant::now();
    let output = cmd.output().expect("run bash");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text, started.elapsed())
}

#[test]
fn health_ready_and_stop_accepting_as_the_image_and_the_pod_run_them() {
    let server = Server::start(&["--api-key", KEY]);
    let (public, api) = (server.public.to_string(), server.api.to_string());
    let public = ("SSEKIFY_LISTEN", public.as_str());
    let api = ("SSEKIFY_API_LISTEN", api.as_str());
    let key = ("SSEKIFY_API_KEY", KEY);

    let (ok, out, _) = probe("healthz", &[public]);
    assert!(ok, "healthz: {out}");
    assert!(out.contains("GET /healthz: HTTP/1.1 200"), "{out}");
    let (ok, out, _) = probe("readyz", &[public]);
    assert!(ok, "readyz: {out}");

    // The image's listeners are wildcards: the probe goes over loopback.
    let wildcard = format!("0.0.0.0:{}", server.public.port());
    let (ok, out, _) = probe("healthz", &[("SSEKIFY_LISTEN", &wildcard)]);
    assert!(ok, "healthz on 0.0.0.0:port: {out}");

    // Without the key the api refuses, and the probe says so by its status.
    let (ok, out, _) = probe("stop-accepting", &[api]);
    assert!(!ok && out.contains("401"), "stop-accepting without the key: {out}");
    assert_eq!(http(server.public, "GET", "/readyz", &[], b"").status, 200);

    let (ok, out, _) = probe("stop-accepting", &[api, key]);
    assert!(ok, "stop-accepting with the key: {out}");
    assert_eq!(http(server.public, "GET", "/readyz", &[], b"").status, 503);
    let (ok, out, _) = probe("readyz", &[public]);
    assert!(!ok && out.contains("503"), "readyz while draining: {out}");
    // Draining is not a failure of the process: the health check stays green.
    let (ok, out, _) = probe("healthz", &[public]);
    assert!(ok, "healthz while draining: {out}");
}

#[test]
fn the_probe_fails_fast_on_a_closed_port_and_a_silent_one() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let (ok, out, took) = probe("healthz", &[("SSEKIFY_LISTEN", &closed_addr.to_string())]);
    assert!(!ok, "healthz on a closed port: {out}");
    assert!(took < Duration::from_secs(3), "a refused connect took {took:?}");

    // Accepts (the kernel's backlog) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let (ok, out, took) = probe("healthz", &[("SSEKIFY_LISTEN", &silent_addr), ("SSEKIFY_PROBE_TIMEOUT", "1")]);
    assert!(!ok, "healthz on a silent port: {out}");
    assert!(took < Duration::from_secs(3), "a silent server held the probe {took:?}");

    let (ok, out, _) = probe("healthz", &[("SSEKIFY_LISTEN", "no-port-here")]);
    assert!(!ok && out.contains("cannot read a port"), "{out}");
    let (ok, out, _) = probe("bogus", &[]);
    assert!(!ok && out.contains("usage"), "{out}");
}
