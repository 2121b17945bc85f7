#!/usr/bin/env python3
"""Two builds' CPU per batch message, timed in alternating slices of one run.

This VM's speed drifts by a third or more over minutes (the same build
measured 1.85 and 3.50 µs a message ten minutes apart), so two builds timed
one after the other (`SSEKIFY_BIN=… targeted.sh`, a minute each) tell apart
only differences larger than that. Here both builds run at once, on the same
server core, each with its own subscribers; the publisher loads one for a
short slice, then the other, A B B A B A A B…, and each slice's CPU time is
read from the kernel's scheduler clock (`/proc/<pid>/task/*/schedstat`, in
nanoseconds). Slices a second apart see the same machine: the answer is
the ratio of each pair of slices, whose spread says what the run can tell.

The load is `BATCH=100 loadtest/scenarios/targeted.sh`'s: JSON batches of
`--batch` messages of ~100 B to users u0…u{users-1} in turn at `--rate`
messages a second, on one shard, 10,000 subscribers per server; with
`--recipients nobody` they connect as other users, so every message is
only recorded for replay. A slice's CPU includes the server's own idle
work (heartbeats: a few ms a second, the same for both builds unless a change
touches it; estimated apart, its noise biased the ratio by several per cent).
Every ring is filled first (`--warm-up`), as in a long run.

    cargo build --release
    loadtest/scenarios/interleave.py --a /tmp/ssekify-old --b target/release/ssekify
    loadtest/scenarios/interleave.py --a … --b … --recipients subscribers --rate 20000

Prints each pair and, per build, the median µs a message; then the median
of B/A and how many pairs were lower with B. The server core is 0, the
publisher and the subscribers' readers run on core 1 (`--server-core`,
`--client-core`).
"""
import argparse
import multiprocessing
import os
import selectors
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from local import cpu_ns, free_port, wait_for  # noqa: E402


class Server:
    """One build on the server core, one shard, with its subscribers."""

    def __init__(self, name, binary, core):
        self.name = name
        self.port, self.api = free_port(), free_port()
        command = ["taskset", "-c", str(core), binary, "--listen", f"127.0.0.1:{self.port}",
                   "--api-listen", f"127.0.0.1:{self.api}", "--shards", "1", "--log-level", "warn"]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_for(f"{name} to listen", lambda: socket.create_connection(("127.0.0.1", self.api)).close() is None)
        self.publisher = None

    def connect_publisher(self):
        self.publisher = socket.create_connection(("127.0.0.1", self.api))
        self.publisher.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def post(self, request):
        """Sends one prepared request and returns its answer's body; exits
        on anything but 200."""
        self.publisher.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.publisher.recv(65536)
            if not chunk:
                raise SystemExit(f"{self.name} closed the publisher's connection")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"{self.name} answered {head[:200]!r} {body[:200]!r}")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            body += self.publisher.recv(65536)
        return body

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


def subscribers(port, users, prefix, core, ready):
    """A child process: `users` subscribers of one server, read until the
    server closes them (or the parent ends this process)."""
    os.sched_setaffinity(0, {core})
    selector = selectors.DefaultSelector()
    for i in range(users):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(f"GET /sse?userId={prefix}{i} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    ready.set()
    open_count = users
    while open_count:
        for key, _ in selector.select(timeout=1):
            try:
                if not key.fileobj.recv(1 << 16):
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
                    open_count -= 1
            except BlockingIOError:
                pass


def requests(api, users, batch):
    """One prepared request per block of `batch` users, in order: every
    user once per cycle, as the load generator addresses them."""
    made = []
    pad = "x" * 60
    for first in range(0, users, batch):
        messages = ",".join(
            f'{{"user":"u{(first + i) % users}","data":{{"s":{first + i},"t":1795996800000000000,"p":"{pad}"}}}}'
            for i in range(batch))
        body = f'{{"messages":[{messages}]}}'.encode()
        head = (f"POST /v1/publish HTTP/1.1\r\nHost: 127.0.0.1:{api}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        made.append(head + body)
    return made


def load(server, prepared, rate, batch, seconds, cursor):
    """Paces batches to `server` for `seconds`; returns (messages, cursor)."""
    interval = batch / rate
    start = time.perf_counter()
    sent = 0
    while True:
        due = start + sent * interval
        now = time.perf_counter()
        if now - start >= seconds:
            return sent * batch, cursor
        if due > now:
            time.sleep(due - now)
        server.post(prepared[cursor])
        cursor = (cursor + 1) % len(prepared)
        sent += 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="the first build (the baseline)")
    parser.add_argument("--b", required=True, help="the second build (the change)")
    parser.add_argument("--recipients", choices=["nobody", "subscribers"], default="nobody")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rate", type=int, default=50_000, help="messages a second during a slice")
    parser.add_argument("--pairs", type=int, default=100, help="300 tell a 3 %% difference apart")
    parser.add_argument("--slice", type=float, default=0.1, help="seconds of one slice")
    parser.add_argument("--warm-up", type=float, default=6.0, help="seconds of load per server first")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    args = parser.parse_args()
    if args.users % args.batch:
        raise SystemExit("--users must be a multiple of --batch")
    os.sched_setaffinity(0, {args.client_core})
    servers = [Server("A", args.a, args.server_core), Server("B", args.b, args.server_core)]
    readers = []
    try:
        prefix = "u" if args.recipients == "subscribers" else "nobody-"
        for server in servers:
            ready = multiprocessing.Event()
            reader = multiprocessing.Process(
                target=subscribers, args=(server.port, args.users, prefix, args.client_core, ready), daemon=True)
            reader.start()
            readers.append(reader)
            if not ready.wait(120):
                raise SystemExit(f"{server.name}'s subscribers did not connect")
            server.connect_publisher()
        prepared = [requests(server.api, args.users, args.batch) for server in servers]
        cursors = [0, 0]
        for index, server in enumerate(servers):
            _, cursors[index] = load(server, prepared[index], args.rate, args.batch, args.warm_up, cursors[index])
        per_message = {0: [], 1: []}
        ratios = []
        print(f"{'pair':>4} {'A µs/msg':>9} {'B µs/msg':>9} {'B/A':>6}")
        for pair in range(args.pairs):
            # A B, B A, A B, …: neither build is always the one after a rest.
            order = (0, 1) if pair % 2 == 0 else (1, 0)
            values = {}
            for index in order:
                server = servers[index]
                pid = server.process.pid
                at = cpu_ns(pid)
                messages, cursors[index] = load(server, prepared[index], args.rate, args.batch, args.slice,
                                                cursors[index])
                values[index] = (cpu_ns(pid) - at) / messages / 1000
                per_message[index].append(values[index])
            ratios.append(values[1] / values[0])
            print(f"{pair + 1:>4} {values[0]:>9.3f} {values[1]:>9.3f} {ratios[-1]:>6.3f}", flush=True)
        quartiles = statistics.quantiles(ratios, n=4)
        print(f"A median {statistics.median(per_message[0]):.3f} µs a message ({args.a})")
        print(f"B median {statistics.median(per_message[1]):.3f} µs a message ({args.b})")
        print(f"B/A median {statistics.median(ratios):.3f} (quartiles {quartiles[0]:.3f}, {quartiles[2]:.3f}); "
              f"B lower in {sum(r < 1 for r in ratios)} of {len(ratios)} pairs")
    finally:
        for server in servers:
            server.stop()
        for reader in readers:
            reader.join(timeout=10)
            if reader.is_alive():
                reader.terminate()


if __name__ == "__main__":
    main()
