#!/usr/bin/env python3
"""ssekify's CPU against the kernel's floor, timed in turns within one run.

`compare.sh` times ssekify and the floor one after the other, a run each;
this VM's floor moves by up to a tenth (broadcast) or a micro-second (the
batch route) from one run to the next, as much as the goals it is judged by
("within 10 % of the floor", "the floor + 1 µs"). Here both are set up once,
side by side, both servers on the server core and both readers on the
client core, and are loaded in turns (A B, B A, …) for slices of `--slice`
seconds; ssekify's CPU is read from its threads' scheduler clock
(`/proc/<pid>/task/*/schedstat`), the floor's from its own.

- `--scenario broadcast` (the broadcast row): ssekify (one shard) with
  `--subscribers` streams is sent `--rate` broadcasts a second of a
  ~100-byte payload; `ssekify-loadtest floor --slices` sends as many rounds
  to as many loopback connections. µs per delivery against µs per send.
- `--scenario batch` (the batch rows): ssekify is sent batches of 100
  messages to u0…u9999 in turn at 50,000 messages a second (as
  `BATCH=100 RATE=50000 targeted.sh`); `ssekify-loadtest targeted-floor
  --slices` reads requests sized as those batches, answers each and sends
  its 100 frames by io_uring (with `--requests uring` it reads the requests
  through that io_uring too, as ssekify does: `PEER=floor-uring`). µs per
  message against the floor's. With
  `--recipients nobody` the subscribers are other users and the floor
  sends no frame (the row for messages only recorded).

A slice that follows the other side's costs more than one that follows its
own (on the Xeon VM ~1 µs a broadcast send more for ssekify, ~0.8 for the
floor: each side's sockets and memory went cold while the other sent), so
each side first runs a slice that is not counted (`--warm`), as each run of
compare.sh is warm. The batch's ten thousand users' rings and streams take
longer to warm than a broadcast's sockets: after a 2 s warm slice ssekify's
batch message still cost ~0.4 µs more after the floor's slice than after its
own, after 6 s no more than the spread. Slices seconds apart see the same machine: each pair's
ratio and difference are ssekify's against the floor's, and their spread
says what the run can tell.

    cargo build --release --workspace
    loadtest/scenarios/floor_interleave.py [--scenario batch] [--pairs 20]

Prints each pair, each side's median, the median ratio and difference with
their quartiles, and in how many pairs the row's goal held.
"""
import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from interleave import Server, load, requests, subscribers  # noqa: E402
from local import cpu_ns  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SIZE = 100
BATCH = 100
BATCH_RATE = 50_000


class Broadcasts:
    """ssekify sent `rate` broadcasts a second; costs in µs per delivery."""

    def __init__(self, server, rate):
        self.server, self.rate, self.seq = server, rate, 0

    def slice(self, seconds):
        pid = self.server.process.pid
        before = cpu_ns(pid)
        start, delivered = time.perf_counter(), 0
        for sent in range(max(1, round(self.rate * seconds))):
            due = start + sent / self.rate
            if due > time.perf_counter():
                time.sleep(due - time.perf_counter())
            head = f'{{"s":{self.seq},"t":{time.time_ns()},"p":"'
            body = (head + "x" * (SIZE - len(head) - 2) + '"}').encode()
            answer = self.server.post(b"POST /v1/broadcast HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                      + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            delivered += json.loads(answer)["delivered"]
            self.seq += 1
        # The last broadcast's sends end well within a period after its answer.
        time.sleep(1 / self.rate)
        if delivered == 0:
            raise SystemExit("no stream was connected")
        return (cpu_ns(pid) - before) / delivered / 1000


class Batches:
    """ssekify sent batches of `BATCH` at `BATCH_RATE`; costs in µs per message."""

    def __init__(self, server, users):
        self.server, self.cursor = server, 0
        self.prepared = requests(server.api, users, BATCH)

    def slice(self, seconds):
        pid = self.server.process.pid
        before = cpu_ns(pid)
        messages, self.cursor = load(self.server, self.prepared, BATCH_RATE, BATCH, seconds, self.cursor)
        # The last batch's sends end within a batch's period after its answer.
        time.sleep(BATCH / BATCH_RATE)
        return (cpu_ns(pid) - before) / messages / 1000


class Floor:
    """`ssekify-loadtest floor --slices` or `targeted-floor --slices`."""

    def __init__(self, command, per_unit):
        # per_unit: what a reported count stands for (frames a request).
        self.per_unit = per_unit
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.process.stdout.readline().strip() != "ready":
            raise SystemExit("the floor did not start")

    def slice(self, seconds):
        before = cpu_ns(self.process.pid)
        self.process.stdin.write(f"{seconds}\n")
        self.process.stdin.flush()
        fields = self.process.stdout.readline().split()
        if len(fields) not in (2, 3) or fields[0] != "slice":
            raise SystemExit(f"the floor said {' '.join(fields)!r}")
        # `floor` reports its sender thread's CPU; `targeted-floor` is one thread.
        cpu_us = float(fields[2]) if len(fields) == 3 else (cpu_ns(self.process.pid) - before) / 1000
        return cpu_us / (int(fields[1]) * self.per_unit)

    def stop(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


def floor_command(args):
    tool = [args.loadtest]
    cores = ["--server-core", str(args.server_core), "--client-core", str(args.client_core)]
    if args.scenario == "broadcast":
        return tool + ["floor", "--connections", str(args.subscribers), "--rate", str(args.rate),
                       "--size", str(SIZE + 30), "--slices", "--sender-core", str(args.server_core),
                       "--reader-core", str(args.client_core)]
    # Sized as targeted.sh's batch floor: the generator's batch and ssekify's answer to it.
    return tool + ["targeted-floor", "--connections", str(args.subscribers), "--publishers", "32",
                   "--rate", str(BATCH_RATE // BATCH), "--frames-per-request", str(BATCH),
                   "--request-size", str(114 + BATCH * (SIZE + 25)), "--answer-size", str(110 + BATCH * 72),
                   "--size", str(SIZE + 44), "--method", "uring", "--recipients", args.recipients,
                   "--requests", args.requests, "--slices"] + cores


def goal(args):
    """The row's goal as (text, test of a pair's (ssekify, floor))."""
    if args.scenario == "broadcast":
        return "within 10 % of the floor", lambda s, f: s <= 1.10 * f
    if args.recipients == "subscribers":
        return "within the floor + 1 µs", lambda s, f: s <= f + 1.0
    return "at most 1 µs", lambda s, f: s <= 1.0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["broadcast", "batch"], default="broadcast")
    parser.add_argument("--recipients", choices=["subscribers", "nobody"], default="subscribers",
                        help="batch: whether the messages' users have a stream")
    parser.add_argument("--requests", choices=["syscall", "uring"], default="syscall",
                        help="batch: the floor reads its requests by epoll and read(2), or through its "
                             "io_uring as ssekify does (targeted.sh's PEER=floor-uring)")
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/ssekify"))
    parser.add_argument("--loadtest", default=os.path.join(ROOT, "target/release/ssekify-loadtest"))
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=8, help="broadcast: broadcasts (floor rounds) a second")
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--slice", type=float, default=2.0, help="seconds of one counted slice")
    parser.add_argument("--warm", type=float,
                        help="seconds each side runs before its counted slice (broadcast 2, batch 6)")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    args = parser.parse_args()
    if args.pairs < 2:
        raise SystemExit("--pairs must be at least 2 (the quartiles need two)")
    if args.warm is None:
        args.warm = 2.0 if args.scenario == "broadcast" else 6.0
    if args.scenario == "batch" and args.subscribers % BATCH:
        raise SystemExit(f"--subscribers must be a multiple of {BATCH}")
    os.sched_setaffinity(0, {args.client_core})
    server = Server("ssekify", args.binary, args.server_core)
    reader = floor = None
    try:
        ready = multiprocessing.Event()
        prefix = "nobody-" if args.recipients == "nobody" else "u"
        reader = multiprocessing.Process(
            target=subscribers, args=(server.port, args.subscribers, prefix, args.client_core, ready), daemon=True)
        reader.start()
        if not ready.wait(120):
            raise SystemExit("the subscribers did not connect")
        floor = Floor(floor_command(args), 1 if args.scenario == "broadcast" else BATCH)
        # Connected last: an api connection idle too long is closed.
        server.connect_publisher()
        sides = {"ssekify": Broadcasts(server, args.rate) if args.scenario == "broadcast"
                 else Batches(server, args.subscribers), "floor": floor}
        text, holds = goal(args)
        costs = {"ssekify": [], "floor": []}
        print(f"{'pair':>4} {'ssekify µs':>10} {'floor µs':>9} {'ratio':>6} {'diff µs':>8}")
        for pair in range(args.pairs):
            # ssekify first in even pairs, the floor first in odd ones.
            for name in (("ssekify", "floor") if pair % 2 == 0 else ("floor", "ssekify")):
                sides[name].slice(args.warm)
                costs[name].append(sides[name].slice(args.slice))
            s, f = costs["ssekify"][-1], costs["floor"][-1]
            print(f"{pair + 1:>4} {s:>10.3f} {f:>9.3f} {s / f:>6.3f} {s - f:>8.3f}", flush=True)
        pairs = list(zip(costs["ssekify"], costs["floor"]))
        ratios = [s / f for s, f in pairs]
        differences = [s - f for s, f in pairs]
        rq, dq = statistics.quantiles(ratios, n=4), statistics.quantiles(differences, n=4)
        print(f"ssekify median {statistics.median(costs['ssekify']):.3f} µs ({args.binary})")
        print(f"floor median {statistics.median(costs['floor']):.3f} µs")
        print(f"ssekify/floor median {statistics.median(ratios):.3f} (quartiles {rq[0]:.3f}, {rq[2]:.3f}); "
              f"ssekify - floor median {statistics.median(differences):.3f} µs (quartiles {dq[0]:.3f}, "
              f"{dq[2]:.3f}); {text} in {sum(holds(s, f) for s, f in pairs)} of {len(pairs)} pairs")
    finally:
        if floor:
            floor.stop()
        server.stop()
        if reader:
            reader.join(timeout=10)
            if reader.is_alive():
                reader.terminate()


if __name__ == "__main__":
    main()
