#!/usr/bin/env python3
"""ssekify's CPU per broadcast delivery against the kernel's floor, in turns.

`RUNS=3 PEERS="ssekify floor" loadtest/compare.sh broadcast` times ssekify
and the floor (`ssekify-loadtest floor`: a bare sender writing the same
rounds to as many loopback connections) one after the other, 20 s each;
this VM's floor moves by up to a tenth from one run to the next, as much as
the "within 10 % of the floor" it is judged by. Here both are set up once,
side by side: ssekify (one shard) with `--subscribers` streams, and
`ssekify-loadtest floor --slices` with as many connections, both senders on
the server core, both readers on the client core. Then in turns (A B, B A,
…) ssekify is sent `--rate` broadcasts a second of a ~100-byte payload for
a slice, its CPU read from its threads' scheduler clock
(`/proc/<pid>/task/*/schedstat`), and the floor sends as many rounds for a
slice. A slice that follows the other side's costs more than one that
follows its own (on the Xeon VM ~1 µs a send more for ssekify, ~0.8 for the
floor: each side's sockets and memory went cold while the other sent), so
each side first sends a slice that is not counted (`--warm`), as each run
of compare.sh is warm. Slices seconds apart see the same machine: each
pair's ratio is ssekify's µs per delivery over the floor's µs per send, and
their spread says what the run can tell.

    cargo build --release
    loadtest/scenarios/floor_interleave.py [--pairs 20] [--slice 2]

Prints each pair, each side's median µs per delivery, the median ratio and
its quartiles, and how many pairs were within 10 % of the floor.
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

from interleave import Server, subscribers  # noqa: E402
from local import cpu_ns  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SIZE = 100
# The floor's frame: the payload and ~30 bytes of framing, as broadcast.sh's floor.
FRAME = SIZE + 30


def payload(seq):
    """A `SIZE`-byte JSON payload, as the load generator makes them."""
    head = f'{{"s":{seq},"t":{time.time_ns()},"p":"'
    return (head + "x" * (SIZE - len(head) - 2) + '"}').encode()


def broadcast(server, seq):
    """Publishes one broadcast; returns how many streams it was queued to."""
    body = payload(seq)
    server.publisher.sendall(b"POST /v1/broadcast HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    data = b""
    while b"\r\n\r\n" not in data:
        data += server.publisher.recv(65536)
    head, _, answer = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"ssekify answered {head[:200]!r}")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(answer) < length:
        answer += server.publisher.recv(65536)
    return json.loads(answer)["delivered"]


def ssekify_slice(server, rate, seconds, seq):
    """`rate` broadcasts a second for `seconds`; returns (µs per delivery, seq)."""
    pid = server.process.pid
    before = cpu_ns(pid)
    start, sent, delivered = time.perf_counter(), 0, 0
    count = max(1, round(rate * seconds))
    while sent < count:
        due = start + sent / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        delivered += broadcast(server, seq)
        seq += 1
        sent += 1
    # The last broadcast's sends end well within a period after its answer.
    time.sleep(1 / rate)
    if delivered == 0:
        raise SystemExit("no stream was connected")
    return (cpu_ns(pid) - before) / delivered / 1000, seq


def floor_slice(floor, seconds):
    """The floor's rounds for `seconds`; returns its µs per send."""
    floor.stdin.write(f"{seconds}\n")
    floor.stdin.flush()
    fields = floor.stdout.readline().split()
    if len(fields) != 3 or fields[0] != "slice":
        raise SystemExit(f"the floor said {' '.join(fields)!r}")
    return float(fields[2]) / int(fields[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/ssekify"))
    parser.add_argument("--loadtest", default=os.path.join(ROOT, "target/release/ssekify-loadtest"))
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=8, help="broadcasts (floor rounds) a second")
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--slice", type=float, default=2.0, help="seconds of one counted slice")
    parser.add_argument("--warm", type=float, default=2.0, help="seconds each side sends before its counted slice")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.client_core})
    server = Server("ssekify", args.binary, args.server_core)
    reader = floor = None
    try:
        ready = multiprocessing.Event()
        reader = multiprocessing.Process(
            target=subscribers, args=(server.port, args.subscribers, "u", args.client_core, ready), daemon=True)
        reader.start()
        if not ready.wait(120):
            raise SystemExit("the subscribers did not connect")
        floor = subprocess.Popen(
            [args.loadtest, "floor", "--connections", str(args.subscribers), "--rate", str(args.rate),
             "--size", str(FRAME), "--slices", "--sender-core", str(args.server_core),
             "--reader-core", str(args.client_core)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if floor.stdout.readline().strip() != "ready":
            raise SystemExit("the floor did not start")
        # Connected last: an api connection idle too long is closed.
        server.connect_publisher()
        seq = 0
        costs = {"ssekify": [], "floor": []}
        ratios = []
        print(f"{'pair':>4} {'ssekify µs':>10} {'floor µs':>9} {'ratio':>6}")
        for pair in range(args.pairs):
            # ssekify first in even pairs, the floor first in odd ones.
            for side in (("ssekify", "floor") if pair % 2 == 0 else ("floor", "ssekify")):
                if side == "ssekify":
                    seq = ssekify_slice(server, args.rate, args.warm, seq)[1]
                    cost, seq = ssekify_slice(server, args.rate, args.slice, seq)
                else:
                    floor_slice(floor, args.warm)
                    cost = floor_slice(floor, args.slice)
                costs[side].append(cost)
            ratios.append(costs["ssekify"][-1] / costs["floor"][-1])
            print(f"{pair + 1:>4} {costs['ssekify'][-1]:>10.3f} {costs['floor'][-1]:>9.3f} {ratios[-1]:>6.3f}",
                  flush=True)
        quartiles = statistics.quantiles(ratios, n=4)
        print(f"ssekify median {statistics.median(costs['ssekify']):.3f} µs a delivery ({args.binary})")
        print(f"floor median {statistics.median(costs['floor']):.3f} µs a send")
        print(f"ssekify/floor median {statistics.median(ratios):.3f} (quartiles {quartiles[0]:.3f}, "
              f"{quartiles[2]:.3f}); within 10 % of the floor in {sum(r <= 1.10 for r in ratios)} of "
              f"{len(ratios)} pairs")
    finally:
        if floor:
            floor.stdin.close()
            floor.wait(timeout=60)
        server.stop()
        if reader:
            reader.join(timeout=10)
            if reader.is_alive():
                reader.terminate()


if __name__ == "__main__":
    main()
