#!/usr/bin/env python3
"""Replay memory under a sweep of distinct user ids.

Publishes one message to each of N distinct users through the NDJSON batch
route and prints the server's replay gauges and RSS as the sweep goes: with
--recent-max-users bounding the rings, both must stay flat.

    target/release/ssekify --shards 2 & P=$!
    loadtest/scenarios/replay-sweep.py --api 127.0.0.1:8081 --pid $P --users 1000000
"""
import argparse
import http.client
import json
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", default="127.0.0.1:8081")
    parser.add_argument("--pid", type=int, required=True, help="server pid, for VmRSS")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--payload", type=int, default=100)
    args = parser.parse_args()
    host, port = args.api.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port))
    before = rss_kib(args.pid)
    started = time.time()
    batches = args.users // args.batch
    for b in range(batches):
        body = "\n".join(
            json.dumps({"user": f"user-{b * args.batch + i}", "data": "x" * args.payload}) for i in range(args.batch)
        )
        conn.request("POST", "/v1/publish", body, {"Content-Type": "application/x-ndjson"})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"publish failed: {response.status}")
        if (b + 1) % max(1, batches // 5) == 0 or b + 1 == batches:
            conn.request("GET", "/v1/stats")
            stats = json.loads(conn.getresponse().read())
            print(
                f"users={(b + 1) * args.batch} replayUsers={stats['replayUsers']} "
                f"replayEntries={stats['replayEntries']} replayBytes={stats['replayBytes']} "
                f"rss_kib={rss_kib(args.pid)} (before {before})",
                flush=True,
            )
    print(f"elapsed_seconds={time.time() - started:.1f}")


if __name__ == "__main__":
    main()
