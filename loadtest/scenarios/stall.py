#!/usr/bin/env python3
"""How long one huge publish holds up everyone else on its shard.

Starts the release binary with one shard, a watcher subscribed as user `w`,
and a prober that publishes to `w` every 5 ms (each message carries its send
time), then posts one large NDJSON batch (--batch-bytes, default 16 MiB of
small messages to users nobody else is; --json: the same as one
`{"messages":[…]}` body, which is read whole before its messages are
prepared, where NDJSON lines are read as the preparing loop reaches them). Prints the watcher's delivery
latency (median, p99, max) while the batch runs, and how long it took: a
shard that yields cooperatively keeps the max near the time of one slice of
work, not of the whole batch.

    cargo build --release
    loadtest/scenarios/stall.py
    loadtest/scenarios/stall.py --json
"""
import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from local import free_port, wait_for  # noqa: E402


def subscribe(port, query):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"GET /sse?{query} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
    head = sock.recv(4096)
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"subscribe refused: {head[:200]!r}")
    return sock


def watch(sock, latencies, stop):
    """Reads the watcher's frames; each data line is the prober's send time."""
    buffer = b""
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            return
        buffer += chunk
        while b"\n\n" in buffer:
            frame, buffer = buffer.split(b"\n\n", 1)
            for line in frame.split(b"\n"):
                if line.startswith(b"data: "):
                    latencies.append((time.time(), time.time() - float(line[6:])))


def probe(api, stop):
    conn = http.client.HTTPConnection("127.0.0.1", api, timeout=60)
    while not stop.is_set():
        conn.request("POST", "/v1/users/w/events", repr(time.time()), {"Content-Type": "text/plain"})
        conn.getresponse().read()
        time.sleep(0.005)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/ssekify"))
    parser.add_argument("--batch-bytes", type=int, default=16 << 20)
    parser.add_argument("--json", action="store_true", help="one JSON body instead of NDJSON")
    args = parser.parse_args()
    public, api = free_port(), free_port()
    server = subprocess.Popen(
        [args.binary, "--listen", f"127.0.0.1:{public}", "--api-listen", f"127.0.0.1:{api}", "--shards", "1",
         "--max-batch-body", "16MiB", "--body-budget", "64MiB", "--log-level", "warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for("the server", lambda: socket.create_connection(("127.0.0.1", public)).close() is None)
        latencies, stop = [], threading.Event()
        watcher = subscribe(public, "userId=w")
        threads = [threading.Thread(target=watch, args=(watcher, latencies, stop)),
                   threading.Thread(target=probe, args=(api, stop))]
        for thread in threads:
            thread.start()
        time.sleep(1)
        conn = http.client.HTTPConnection("127.0.0.1", api, timeout=600)
        line_bytes = len(json.dumps({"user": "nobody000000", "data": "x"})) + 1
        count = (args.batch_bytes - 16) // line_bytes  # room for the JSON form's wrapper
        messages = [json.dumps({"user": f"nobody{i:06d}", "data": "x"}) for i in range(count)]
        if args.json:
            body, kind, form = ('{"messages":[' + ",".join(messages) + "]}").encode(), "application/json", "JSON"
        else:
            body, kind, form = "\n".join(messages).encode(), "application/x-ndjson", "NDJSON"
        started = time.time()
        conn.request("POST", "/v1/publish", body, {"Content-Type": kind})
        answer = conn.getresponse()
        answer.read()
        if answer.status != 200:
            raise SystemExit(f"the batch was refused: {answer.status}")
        what = f"one {form} batch of {count:,} messages ({len(body) / (1 << 20):.1f} MiB)"
        finished = time.time()
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join()
        during = [lat * 1000 for at, lat in latencies if started <= at <= finished + 0.2]
        if not during:
            raise SystemExit("no probe message arrived during the publish")
        worst = sorted(((lat, at - started) for at, lat in latencies if started <= at <= finished + 0.2), reverse=True)[:6]
        worst_text = ", ".join(f"{lat * 1000:.0f} ms at {at:.2f} s" for lat, at in worst)
        during.sort()
        p99 = during[min(len(during) - 1, int(len(during) * 0.99))]
        print(f"{what}: took {(finished - started) * 1000:.0f} ms")
        print(f"watcher latency meanwhile: median {statistics.median(during):.1f} ms, p99 {p99:.1f} ms, "
              f"max {during[-1]:.1f} ms ({len(during)} messages)")
        print(f"worst six (latency, arrival after the publish began): {worst_text}")
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
