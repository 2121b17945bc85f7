#!/usr/bin/env python3
"""Two builds' CPU per message received from the bus, in one run.

`chaos.sh`'s bus cost times one receiving instance for 10 s; this VM's
speed drifts between runs by more than a change worth a few per cent, so
two builds timed in turn cannot be told apart. Here both builds receive the
same messages at the same time: one redis-server, a publishing instance
(`--a`'s build) and two receiving instances, one of each build, with no
subscriber, all on the server core, each run from a copy of its build of
its own. The publisher sends lone messages
(`POST /v1/users/u0/events`, one per request, as chaos.sh's single phase)
at `--rate` for `--windows` windows of `--window` seconds; each window's
CPU of each receiver is read from the scheduler's clock
(`/proc/<pid>/task/*/schedstat`), and since both heard every message of it,
B/A of a window is the ratio of their CPU per message. Redis writes to the
subscriber that subscribed first first, so the receivers are started in
turn and the run is repeated with their order swapped (`--rounds`).

    cargo build --release
    loadtest/scenarios/bus_interleave.py --a /tmp/ssekify-old --b target/release/ssekify

Prints each window and, per round and overall, the median of B/A, its
quartiles and how many windows were lower with B, and µs a message of each
(from the receivers' own `bus.received`).

With `--floor`, three bare subscribers (`ssekify-loadtest subscribe-floor`:
a blocking read, monoio on io_uring, monoio on epoll) read the same pushes
through each round on the same core, and their µs a message is printed
beside the receivers': what hearing a message costs here before anything
is done with it. With `--floor-first` they subscribe before the receivers
(Redis writes a message to its subscribers in the order they subscribed),
to see whether that order moves what the floors cost.
"""
import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from local import cpu_ns, free_port, wait_for  # noqa: E402


def get_json(api, path):
    conn = http.client.HTTPConnection("127.0.0.1", api, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        return response.status, (json.loads(body) if body.startswith(b"{") else None)
    finally:
        conn.close()


class Instance:
    """One ssekify with `--redis`, one shard, on the server core."""

    def __init__(self, name, binary, redis_url, core):
        self.name = name
        self.api = free_port()
        command = ["taskset", "-c", str(core), binary, "--listen", f"127.0.0.1:{free_port()}",
                   "--api-listen", f"127.0.0.1:{self.api}", "--shards", "1", "--redis", redis_url,
                   "--log-level", "warn"]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_for(f"{name}'s bus to be live", lambda: get_json(self.api, "/readyz")[0] == 200, timeout=30)

    def received(self):
        return get_json(self.api, "/v1/stats")[1]["bus"]["received"]

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


def publish(conn, body):
    conn.request("POST", "/v1/users/u0/events", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise SystemExit(f"the publisher answered {response.status}")


def own_copy(binary, directory, name):
    """A copy of `binary` in a file of its own: two processes of one file
    share its code's pages in memory and so in the core's caches, which
    made a receiver of the publisher's build ~7 % cheaper than another."""
    path = os.path.join(directory, name)
    shutil.copy2(binary, path)
    return path


def round_of(args, redis_url, order, builds):
    """One round: the receivers started in `order`; returns each window's
    (B/A, A µs a message, B µs a message)."""
    publisher = Instance("the publisher", builds["publisher"], redis_url, args.server_core)
    floors = {}

    def start_floors(slack):
        seconds = (args.windows + 1) * args.window + 1 + slack
        for reader in ("blocking", "uring", "epoll"):
            floors[reader] = subprocess.Popen(
                [args.loadtest, "subscribe-floor", "--redis", redis_url.removeprefix("redis://"), "--reader", reader,
                 "--duration", str(seconds), "--core", str(args.server_core)],
                stdout=subprocess.PIPE, text=True)

    if args.floor and args.floor_first:
        # The receivers' start-up (a few seconds each) is slack for the floors.
        start_floors(slack=30)
    receivers = {name: Instance(f"receiver {name}", builds[name], redis_url, args.server_core) for name in order}
    os.sched_setaffinity(0, {args.client_core})
    if args.floor and not args.floor_first:
        start_floors(slack=0)
    conn = http.client.HTTPConnection("127.0.0.1", publisher.api, timeout=10)
    body = json.dumps({"text": "x" * 87})
    interval = 1 / args.rate
    windows = []
    try:
        for window in range(-1, args.windows):  # window -1 warms up
            cpu = {name: cpu_ns(r.process.pid) for name, r in receivers.items()}
            heard = {name: r.received() for name, r in receivers.items()}
            start = time.perf_counter()
            sent = 0
            while time.perf_counter() - start < args.window:
                due = start + sent * interval
                now = time.perf_counter()
                if due > now:
                    time.sleep(due - now)
                publish(conn, body)
                sent += 1
            wait_for("both receivers to hear the window's messages",
                     lambda: all(r.received() - heard[name] >= sent for name, r in receivers.items()), timeout=10)
            used = {name: cpu_ns(r.process.pid) - cpu[name] for name, r in receivers.items()}
            count = {name: r.received() - heard[name] for name, r in receivers.items()}
            if window < 0:
                continue
            per = {name: used[name] / 1e3 / count[name] for name in used}
            windows.append((used["B"] / used["A"], per["A"], per["B"]))
            print(f"{''.join(order)} {window:3d} {per['A']:9.3f} {per['B']:9.3f} {windows[-1][0]:7.3f}", flush=True)
        for reader, process in floors.items():
            out, _ = process.communicate(timeout=args.window * 2 + 30)
            fields = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
            if process.returncode != 0 or "subscriber_cpu_us_per_msg" not in fields:
                raise SystemExit(f"subscribe-floor --reader {reader} failed: {out}")
            print(f"floor {reader:8s} {float(fields['subscriber_cpu_us_per_msg']):9.3f} µs a message "
                  f"({fields['messages_received'].strip()} messages)", flush=True)
    finally:
        conn.close()
        for process in floors.values():
            process.kill()
            process.wait()
        for instance in (*receivers.values(), publisher):
            instance.stop()
    return windows


def summary(label, windows):
    ratios = sorted(w[0] for w in windows)
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    lower = sum(r < 1 for r in ratios)
    a = statistics.median(w[1] for w in windows)
    b = statistics.median(w[2] for w in windows)
    print(f"{label}: A {a:.3f} µs, B {b:.3f} µs a message; B/A median {statistics.median(ratios):.3f} "
          f"(quartiles {quartiles[0]:.3f}, {quartiles[2]:.3f}); B lower in {lower} of {len(ratios)} windows")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="the first build (the baseline; it also publishes)")
    parser.add_argument("--b", required=True, help="the second build (the change)")
    parser.add_argument("--rate", type=float, default=2000, help="lone messages a second")
    parser.add_argument("--window", type=float, default=2.0, help="seconds of one window")
    parser.add_argument("--windows", type=int, default=10, help="windows per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, the receivers' order swapped each")
    parser.add_argument("--floor", action="store_true",
                        help="also time three bare subscribers to the same pushes (see above)")
    parser.add_argument("--floor-first", action="store_true",
                        help="subscribe the bare subscribers before the receivers (Redis writes to them first)")
    parser.add_argument("--loadtest", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                            "../../target/release/ssekify-loadtest"),
                        help="the ssekify-loadtest binary, for --floor")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    args = parser.parse_args()
    redis_port = free_port()
    redis = subprocess.Popen(["taskset", "-c", str(args.server_core), "redis-server", "--port", str(redis_port),
                              "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    redis_url = f"redis://127.0.0.1:{redis_port}"
    print("order window  A µs/msg  B µs/msg     B/A")
    every = []
    copies = tempfile.TemporaryDirectory()
    builds = {name: own_copy(binary, copies.name, name) for name, binary in
              (("publisher", args.a), ("A", args.a), ("B", args.b))}
    try:
        for number in range(args.rounds):
            order = ("A", "B") if number % 2 == 0 else ("B", "A")
            windows = round_of(args, redis_url, order, builds)
            summary(f"round {number + 1} ({' then '.join(order)} subscribed)", windows)
            every.extend(windows)
    finally:
        redis.kill()
        redis.wait()
        copies.cleanup()
    summary("all rounds", every)


if __name__ == "__main__":
    main()
