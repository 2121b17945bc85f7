#!/usr/bin/env python3
"""Cache misses per batch message at the load scenario's scale, counted by
callgrind's cache simulation: identical run to run, unlike time, so a change
to what a message touches can be judged by one run.

A batch message to one of 10,000 users touches that user's entries in the
shard's maps and its replay ring, and those of 10,000 users (the rings
alone ~43 MB) do not fit the caches: what it costs above its instructions
is memory, which `benches/callgrind.py` (100 users, everything cached)
cannot show. This runs the release binary (one shard, default flags) under
`valgrind --tool=callgrind --cache-sim=yes` twice, simulating this VM's
L1 data cache (32 KiB, 8-way) and as the last level once its core's L2
(1 MiB, 8-way) and once the L3 (32 MiB, 16-way; callgrind simulates two
levels), fills
every user's ring (`--recent-buffer` messages each, as in a long run), then
counts one round of the users in the order `ssekify-loadtest` addresses
them (`u0`, `u1`, … round robin), 100 messages a batch, as
`BATCH=100 loadtest/scenarios/targeted.sh` does. The idle phase as long is
subtracted, as in `callgrind.py`.

    cargo build --release
    benches/cachesim.py                  # both rows, ~2 minutes
    benches/cachesim.py --keep DIR       # and the dumps, for callgrind_annotate

Rows, per message (10,000 subscribers connected in both, as in the scenario):
  batch message, nobody        to users with no connection (recorded for
                               replay; the subscribers are other users)
  batch message, delivered     to users with one subscriber each
Columns: instructions (Ir); data reads and writes that missed L1 (D1: found
in L2 at best, ~4 ns), that missed L2 too (L2: ~15 ns from L3 at best), and
that missed L3 (L3: memory, ~100 ns).
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from callgrind import DATA, ROOT, Readers, Server, valgrind_wait  # noqa: E402

USERS = 10_000
RECENT_BUFFER = 20
BATCH = 100
L1 = ["--cache-sim=yes", "--I1=32768,8,64", "--D1=32768,8,64"]
LAST_LEVELS = {"L2": "--LL=1048576,8,64", "L3": "--LL=33554432,16,64"}


def one_round(server):
    """Every user u0…u9999 once, in order, BATCH messages a request."""
    for first in range(0, USERS, BATCH):
        lines = (f'{{"user":"u{first + i}","data":{DATA}}}' for i in range(BATCH))
        server.post("/v1/publish", "\n".join(lines), "application/x-ndjson")


def measure(binary, work, delivered, level):
    """Events per message of one row with `level` as the simulated last level."""
    name = f"cachesim.{'delivered' if delivered else 'nobody'}.{level}.out"
    tool = [*L1, LAST_LEVELS[level]]
    server = Server(binary, "uring", work, name, ["--recent-buffer", str(RECENT_BUFFER)], tool)
    readers = None
    try:
        # RECIPIENTS=nobody's renaming: the subscribers are nobody-{i}.
        subscriber = "u" if delivered else "nobody-"
        readers = Readers(server.public, [f"{subscriber}{i}" for i in range(USERS)])
        valgrind_wait("the subscribers", lambda: server.connections() == USERS)
        for _ in range(RECENT_BUFFER):
            one_round(server)

        def counted_round():
            expected = readers.total() + (USERS if delivered else 0)
            one_round(server)
            valgrind_wait("the round's deliveries", lambda: readers.total() >= expected)

        return {event: count / USERS for event, count in server.counted_events(counted_round).items()}
    finally:
        if readers:
            readers.close()
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/ssekify"))
    parser.add_argument("--keep", metavar="DIR", help="keep the dumps there (for callgrind_annotate)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        work = args.keep or temp
        os.makedirs(work, exist_ok=True)
        rows = {}
        for name, delivered in (("batch message, nobody", False), ("batch message, delivered", True)):
            l2, l3 = (measure(args.binary, work, delivered, level) for level in ("L2", "L3"))
            misses = lambda events, *names: sum(events[n] for n in names)  # noqa: E731
            rows[name] = (l2["Ir"], misses(l2, "D1mr", "D1mw"), misses(l2, "DLmr", "DLmw"), misses(l3, "DLmr", "DLmw"))
    print(f"per message, {USERS:,} users, --recent-buffer {RECENT_BUFFER}, one shard; misses of data reads and writes")
    print(f"{'':<28} {'Ir':>8} {'D1':>8} {'L2':>8} {'L3':>8}")
    for name, (ir, d1, l2, l3) in rows.items():
        print(f"{name:<28} {ir:>8,.0f} {d1:>8.1f} {l2:>8.1f} {l3:>8.2f}")


if __name__ == "__main__":
    main()
