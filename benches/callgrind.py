#!/usr/bin/env python3
"""User-space instructions per delivery, per single publish and per batch
message, counted by callgrind: identical run to run on a noisy VM, unlike
time, so a change to the hot paths can be judged by one run.

Runs the release binary (one shard) under `valgrind --tool=callgrind` and
drives it over real sockets from this script. Counting is switched on only
around each workload (`callgrind_control --zero` before, `--dump` after),
so start-up and the subscribes are not counted; the instructions of an idle
phase as long as the workload are subtracted (the shard's heartbeat sweep,
the memory thread), which leaves what the workload itself cost. The kernel's
work (the sends themselves) is not user space and not counted: the load
scenarios measure it.

    cargo build --release
    benches/callgrind.py                 # io_uring (the default driver)
    benches/callgrind.py --driver epoll

Rows (instructions, Ir):
  delivery                     one frame to one subscriber of a broadcast:
                               (broadcast to N subscribers - broadcast to none) / N
  single publish, delivered    POST /v1/users/{u}/events to a user with one
                               subscriber, the answer and the delivery included
  single publish, nobody       the same to a user with no subscriber here
  batch message, delivered     one message of an NDJSON batch of 1,000, each to
                               a user with one subscriber
  batch message, nobody        the same to users with no subscriber here
  JSON batch of 100, delivered 1,000 messages to the same users as JSON bodies
  JSON batch of 100, nobody    (`{"messages":[...]}`) of 100, as the load
                               generator sends them (loadtest/src/publisher.rs,
                               its payload too: `{"s":…,"t":…,"p":"x…"}`):
                               what `compare.sh targeted` with BATCH=100 times.
                               Counted last, when each user's ring is full
                               (the rows before gave it 20 entries, the
                               default --recent-buffer): each frame takes the
                               place of the oldest, freed, as in the load
                               scenarios' steady state, where the rows above
                               grow the rings and allocate from fresh memory
  bus message, single          on an instance that receives from the bus
                               (redis-server and a second instance, not
                               counted, publish), one message to a user with
                               no subscriber there, each published alone
  bus message, batched         the same, published in batches of 100 to one
                               user (one log entry each; a batch to many
                               users is many entries, each costing about a
                               single message) (both bus rows with --io-driver epoll,
                               whatever --driver says; skipped without
                               redis-server)
"""
import argparse
import glob
import shutil
import http.client
import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "loadtest", "scenarios"))

from local import free_port, wait_for  # noqa: E402


def valgrind_wait(what, condition):
    """`wait_for` with room for valgrind, which runs the server ~50x slower
    (and far slower under `cachesim.py`'s cache simulation: a dump of its
    10,000 subscribers' server took over two minutes on the EPYC VM)."""
    wait_for(what, condition, timeout=600)


SUBSCRIBERS = 100
BROADCASTS = 200
SINGLES = 1000
BATCH = 1000
JSON_BATCH = 100
DATA = '{"text":"' + "x" * 87 + '"}'  # 100 B of JSON


def generated_data(seq):
    """The load generator's 100-byte payload of message `seq`
    (loadtest/src/publisher.rs): two numbers and a string, which cost its
    reading ~550 instructions more than DATA's one string."""
    head = f'{{"s":{seq},"t":1764910000123456789,"p":"'
    return head + "x" * (100 - len(head) - 2) + '"}'


class Readers:
    """Subscriber sockets read on a thread of their own, counting frames."""

    def __init__(self, port, users):
        self.counts = [0] * len(users)
        self.socks = []
        self.selector = selectors.DefaultSelector()
        for index, user in enumerate(users):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(f"GET /sse?userId={user} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, index)
            self.socks.append(sock)
        self.tails = [b""] * len(users)
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.running:
            for key, _ in self.selector.select(0.1):
                chunk = key.fileobj.recv(1 << 16)
                data = self.tails[key.data] + chunk
                self.counts[key.data] += data.count(b"\ndata: ")
                self.tails[key.data] = data[-8:]

    def total(self):
        return sum(self.counts)

    def close(self):
        self.running = False
        self.thread.join()
        for sock in self.socks:
            sock.close()


class Instance:
    """A running ssekify and a keep-alive connection (`self.conn`) to its api listener."""

    def post(self, path, body, content_type="application/json"):
        self.conn.request("POST", path, body, {"Content-Type": content_type})
        response = self.conn.getresponse()
        answer = response.read()
        if response.status != 200:
            raise SystemExit(f"POST {path} on {self.api}: {response.status} {answer[:200]!r}")

    def stop(self):
        # SIGKILL: a graceful shutdown under valgrind takes its time, and
        # nothing is measured after the last dump.
        self.process.kill()
        self.process.wait()


class Server(Instance):
    """ssekify under callgrind; `tool` are more callgrind options (a cache simulation)."""

    def __init__(self, binary, driver, work, name="callgrind.out", extra=(), tool=()):
        self.public, self.api = free_port(), free_port()
        self.work, self.name, self.polls = work, name, 0
        args = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/{name}", "--compress-strings=no", *tool,
                binary,
                "--listen", f"127.0.0.1:{self.public}", "--api-listen", f"127.0.0.1:{self.api}",
                "--shards", "1", "--io-driver", driver, "--keep-alive", "1h", "--log-level", "warn", *extra]
        self.logs = open(os.path.join(work, f"{name}.log"), "w")
        self.process = subprocess.Popen(args, stdout=self.logs, stderr=self.logs)
        valgrind_wait("the server under callgrind", self.ready)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.api, timeout=120)

    def ready(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.public, timeout=5)
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200

    def stats(self):
        self.polls += 1
        self.conn.request("GET", "/v1/stats")
        return json.loads(self.conn.getresponse().read())

    def connections(self):
        return self.stats()["connections"]

    def control(self, *args):
        subprocess.run(["callgrind_control", *args, str(self.process.pid)], check=True, capture_output=True)

    def counted(self, workload):
        """Instructions the server ran during `workload()`, less an idle phase
        as long with as many `GET /v1/stats` as the workload made (a wait
        for the bus polls them)."""
        return self.counted_events(workload)["Ir"]

    def counted_events(self, workload):
        """Every event callgrind counted during `workload()` (instructions,
        and with a cache simulation its misses), less the idle phase."""
        self.control("--zero")
        started, polls = time.time(), self.polls
        workload()
        took, polls = time.time() - started, self.polls - polls
        busy = self.dump()
        self.control("--zero")
        idle_started = time.time()
        for _ in range(polls):
            self.stats()
        time.sleep(max(0.0, took - (time.time() - idle_started)))
        idle = self.dump()
        return {event: busy[event] - idle.get(event, 0) for event in busy}

    def dump(self):
        """The totals of a new dump, by event name."""
        pattern = f"{self.work}/{self.name}.*"
        before = set(glob.glob(pattern))
        self.control("--dump")
        valgrind_wait("the dump", lambda: set(glob.glob(pattern)) - before)
        (path,) = set(glob.glob(pattern)) - before
        events = None
        with open(path) as dump:
            for line in dump:
                if line.startswith("events:"):
                    events = line.split()[1:]
                if events and (line.startswith("summary:") or line.startswith("totals:")):
                    # Trailing events that counted nothing are left out.
                    counts = list(map(int, line.split()[1:]))
                    return {event: counts[i] if i < len(counts) else 0 for i, event in enumerate(events)}
        raise SystemExit(f"no total in {path}")


class Publisher(Instance):
    """A native instance on the bus that publishes what the counted one receives."""

    def __init__(self, binary, redis_url, work):
        self.api = free_port()
        args = [binary, "--listen", f"127.0.0.1:{free_port()}", "--api-listen", f"127.0.0.1:{self.api}",
                "--shards", "1", "--redis", redis_url, "--log-level", "warn"]
        self.logs = open(os.path.join(work, "publisher.log"), "w")
        self.process = subprocess.Popen(args, stdout=self.logs, stderr=self.logs)
        self.conn = None
        wait_for("the publishing instance", self.ready, timeout=30)

    def ready(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.api, timeout=5)
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            return False
        self.conn = conn
        return True


def bus_rows(binary, work):
    """Instructions per message an instance spends on what it receives from the bus."""
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{redis_port}"
    publisher = receiver = None
    rows = {}
    try:
        # epoll: valgrind does not know io_uring_enter blocks, so a bus thread
        # waiting there holds its lock and starves the shard. A long
        # --bus-timeout: valgrind slows the canary's round trip, not Redis.
        receiver = Server(binary, "epoll", work, "callgrind.bus.out", ["--redis", url, "--bus-timeout", "60s"])
        valgrind_wait("the receiving instance's bus", lambda: receiver.stats()["bus"]["state"] == "live")
        publisher = Publisher(binary, url, work)

        def received(publish, count):
            def run():
                expected = receiver.stats()["bus"]["received"] + count
                publish()
                valgrind_wait("the bus messages", lambda: receiver.stats()["bus"]["received"] >= expected)
                # The shard takes what nobody there wants at the bus's next tick.
                time.sleep(0.5)
            return run

        def singles():
            for i in range(SINGLES):
                publisher.post(f"/v1/users/nobody{i}/events", DATA)

        def batches():
            # As loadtest/scenarios/chaos.sh's bus cost: a batch's messages
            # go to one user, so they travel as one log entry.
            for start in range(0, BATCH, 100):
                lines = (f'{{"user":"nobody{start}","data":{DATA}}}' for _ in range(100))
                publisher.post("/v1/publish", "\n".join(lines), "application/x-ndjson")

        rows["bus message, single"] = receiver.counted(received(singles, SINGLES)) / SINGLES
        rows["bus message, batched"] = receiver.counted(received(batches, BATCH)) / BATCH
    finally:
        for process in (publisher, receiver):
            if process:
                process.stop()
        redis.kill()
        redis.wait()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/ssekify"))
    parser.add_argument("--driver", default="uring", choices=["uring", "epoll"])
    parser.add_argument("--keep", metavar="DIR", help="keep the dumps there, one per phase (for callgrind_annotate)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        work = args.keep or temp
        os.makedirs(work, exist_ok=True)
        server = Server(args.binary, args.driver, work)
        rows = {}
        try:  # the dumps are numbered in this order: each phase, then its idle twin
            broadcast = lambda: [server.post("/v1/broadcast", DATA) for _ in range(BROADCASTS)]  # noqa: E731
            to_nobody = server.counted(broadcast)
            users = [f"u{i}" for i in range(SUBSCRIBERS)]
            readers = Readers(server.public, users)
            valgrind_wait("the subscribers", lambda: server.connections() == SUBSCRIBERS)

            def broadcast_and_wait():
                expected = readers.total() + BROADCASTS * SUBSCRIBERS
                broadcast()
                valgrind_wait("every delivery", lambda: readers.total() >= expected)

            rows["delivery"] = (server.counted(broadcast_and_wait) - to_nobody) / (BROADCASTS * SUBSCRIBERS)

            def singles(prefix, wait):
                def run():
                    expected = readers.total() + (SINGLES if wait else 0)
                    for i in range(SINGLES):
                        server.post(f"/v1/users/{prefix}{i % SUBSCRIBERS}/events", DATA)
                    valgrind_wait("the single deliveries", lambda: readers.total() >= expected)
                return run

            rows["single publish, delivered"] = server.counted(singles("u", True)) / SINGLES
            rows["single publish, nobody"] = server.counted(singles("nobody", False)) / SINGLES

            def batch(prefix, wait):
                body = "\n".join(f'{{"user":"{prefix}{i % SUBSCRIBERS}","data":{DATA}}}' for i in range(BATCH))

                def run():
                    expected = readers.total() + (BATCH if wait else 0)
                    server.post("/v1/publish", body, "application/x-ndjson")
                    valgrind_wait("the batch's deliveries", lambda: readers.total() >= expected)
                return run

            rows["batch message, delivered"] = server.counted(batch("u", True)) / BATCH
            rows["batch message, nobody"] = server.counted(batch("nobody", False)) / BATCH

            def json_batches(prefix, wait):
                messages = [
                    f'{{"user":"{prefix}{i % SUBSCRIBERS}","data":{generated_data(i)}}}' for i in range(BATCH)
                ]
                bodies = [
                    '{"messages":[' + ",".join(messages[at:at + JSON_BATCH]) + "]}"
                    for at in range(0, BATCH, JSON_BATCH)
                ]

                def run():
                    expected = readers.total() + (BATCH if wait else 0)
                    for body in bodies:
                        server.post("/v1/publish", body)
                    valgrind_wait("the batches' deliveries", lambda: readers.total() >= expected)
                return run

            rows["JSON batch of 100, delivered"] = server.counted(json_batches("u", True)) / BATCH
            rows["JSON batch of 100, nobody"] = server.counted(json_batches("nobody", False)) / BATCH
            readers.close()
        finally:
            server.stop()
        if shutil.which("redis-server"):
            rows.update(bus_rows(args.binary, work))
    print(f"user-space instructions (callgrind Ir), --io-driver {args.driver}, one shard")
    for name, value in rows.items():
        print(f"{name:<28} {value:>10,.0f}")


if __name__ == "__main__":
    main()
