#!/usr/bin/env python3
"""What presence and the cluster-wide per-user limit cost.

Starts its own redis-server and two ssekify instances (A and B, one shard
each) on free ports, opens --subscribers streams split over both (users in
one room), then measures, from one client on A's api:

  * user presence latency, ?scope=local (A's owner shard) against the
    default cluster answer (a question over Redis to both instances);
  * room presence latency with ?list=users, both ways;
  * the time to open a subscriber stream (request to its first byte) with and
    without --max-connections-per-user (which asks both instances first).

Prints medians and 99th percentiles in milliseconds. Needs redis-server and
a release build:

    cargo build --release
    loadtest/scenarios/presence.py --subscribers 2000 --requests 2000
"""
import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from local import free_port, wait_for  # noqa: E402


def get(conn, path):
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise SystemExit(f"GET {path}: {response.status} {body!r}")
    return json.loads(body)


class Instance:
    def __init__(self, binary, redis_url, extra, logs):
        self.public, self.api = free_port(), free_port()
        args = [binary, "--listen", f"127.0.0.1:{self.public}", "--api-listen", f"127.0.0.1:{self.api}",
                "--redis", redis_url, "--shards", "1", "--log-level", "warn", *extra]
        self.process = subprocess.Popen(args, stdout=logs, stderr=logs)
        wait_for("ssekify ready", lambda: self.status("/readyz") == 200)

    def status(self, path):
        conn = http.client.HTTPConnection("127.0.0.1", self.public, timeout=2)
        conn.request("GET", path)
        return conn.getresponse().status

    def stop(self):
        self.process.kill()
        self.process.wait()


def open_stream(port, query):
    """Opens a stream; returns the socket and the seconds to its response head."""
    started = time.perf_counter()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"GET /sse?{query} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
    head = sock.recv(4096)
    took = time.perf_counter() - started
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"subscribe refused: {head[:200]!r}")
    return sock, took


def timed(conn, path, n):
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        get(conn, path)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def summary(samples):
    samples = sorted(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return f"median {statistics.median(samples):.3f} ms, p99 {p99:.3f} ms ({len(samples)} samples)"


def run(binary, redis_url, args, extra, logs):
    a = Instance(binary, redis_url, extra, logs)
    b = Instance(binary, redis_url, extra, logs)
    try:
        api = http.client.HTTPConnection("127.0.0.1", a.api)
        wait_for("A to hear B", lambda: get(api, "/v1/stats")["bus"]["instances"] == 2)
        streams, connect = [], []
        for i in range(args.subscribers):
            target = a if i % 2 == 0 else b
            sock, took = open_stream(target.public, f"userId=user-{i}&rooms=lobby")
            streams.append(sock)
            connect.append(took * 1000)
        wait_for("every subscriber counted", lambda: get(api, "/v1/rooms/lobby/presence")["connections"] == args.subscribers)
        results = {"connect": connect}
        if not extra:
            results["user local"] = timed(api, "/v1/users/user-1/presence?scope=local", args.requests)
            results["user cluster"] = timed(api, "/v1/users/user-1/presence", args.requests)
            room_requests = max(1, args.requests // 10)
            results["room local"] = timed(api, "/v1/rooms/lobby/presence?list=users&scope=local", room_requests)
            results["room cluster"] = timed(api, "/v1/rooms/lobby/presence?list=users", room_requests)
        for sock in streams:
            sock.close()
        return results
    finally:
        a.stop()
        b.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/ssekify"))
    parser.add_argument("--subscribers", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work, open(os.path.join(work, "logs"), "w") as logs:
        port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", work], stdout=logs, stderr=logs)
        try:
            wait_for("redis", lambda: socket.create_connection(("127.0.0.1", port)).close() is None)
            url = f"redis://127.0.0.1:{port}"
            plain = run(args.binary, url, args, [], logs)
            limited = run(args.binary, url, args, ["--max-connections-per-user", "5"], logs)
        finally:
            redis.kill()
            redis.wait()
    for name, samples in plain.items():
        label = "connect, no per-user limit" if name == "connect" else f"presence, {name}"
        print(f"{label:<38} {summary(samples)}")
    print(f"{'connect, --max-connections-per-user 5':<38} {summary(limited['connect'])}")


if __name__ == "__main__":
    main()
