#!/usr/bin/env python3
"""The noisy tenant of loadtest/scenarios/tenants.sh: floods one tenant's
subscribe route and publish routes for a while, past its maxConnections and
its publishRate, and reports what the server answered.

  tenant-flood.py --public 127.0.0.1:8080 --api 127.0.0.1:8081 --tenant noisy \
      --connect-rate 500 --publish-rate 5000 --publishers 4 --duration 20 --json out.json

- Connections: --connect-rate attempts per second on /t/{tenant}/sse, each a
  new socket; an accepted one (200) is held and read (its frames discarded),
  a refused one (429 tenant_quota) is closed and the next attempt follows.
- Publishes: --publishers keep-alive connections POST 100-byte broadcasts to
  /v1/t/{tenant}/broadcast, --publish-rate in all; 429 answers are counted.
Standard library only.
"""

import argparse
import http.client
import json
import selectors
import socket
import threading
import time


def pace(rate, started, done):
    """Sleeps until attempt number `done` is due at `rate` per second."""
    due = started + done / rate
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def connect_storm(host, port, tenant, rate, duration, counts, lock):
    held = selectors.DefaultSelector()
    reader_stop = threading.Event()

    def drain():
        while not reader_stop.is_set():
            for key, _ in held.select(timeout=0.1):
                try:
                    if not key.fileobj.recv(65536):
                        held.unregister(key.fileobj)
                        key.fileobj.close()
                        with lock:
                            counts["streams_closed_by_server"] += 1
                except OSError:
                    held.unregister(key.fileobj)
                    key.fileobj.close()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    started = time.monotonic()
    attempt = 0
    while time.monotonic() - started < duration:
        pace(rate, started, attempt)
        attempt += 1
        sock = socket.create_connection((host, port), timeout=5)
        request = (
            f"GET /t/{tenant}/sse?userId=n{attempt} HTTP/1.1\r\nHost: {host}\r\n"
            "Accept: text/event-stream\r\n\r\n"
        )
        try:
            sock.sendall(request.encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
            status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
        except OSError:
            status = 0
        with lock:
            counts[f"connect_{status}"] = counts.get(f"connect_{status}", 0) + 1
        if status == 200:
            sock.setblocking(False)
            held.register(sock, selectors.EVENT_READ)
        else:
            sock.close()
    reader_stop.set()
    reader.join()
    with lock:
        counts["streams_held_at_end"] = len(held.get_map())
    for key in list(held.get_map().values()):
        key.fileobj.close()


def publisher(host, port, tenant, rate, duration, counts, lock):
    conn = http.client.HTTPConnection(host, port, timeout=10)
    body = b"x" * 100
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < duration:
        pace(rate, started, sent)
        sent += 1
        try:
            conn.request("POST", f"/v1/t/{tenant}/broadcast", body, {"Content-Type": "text/plain"})
            response = conn.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=10)
            status = 0
        with lock:
            counts[f"publish_{status}"] = counts.get(f"publish_{status}", 0) + 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--public", required=True)
    parser.add_argument("--api", required=True)
    parser.add_argument("--tenant", default="noisy")
    parser.add_argument("--connect-rate", type=float, default=500)
    parser.add_argument("--publish-rate", type=float, default=5000)
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()
    public_host, public_port = args.public.rsplit(":", 1)
    api_host, api_port = args.api.rsplit(":", 1)
    counts = {"streams_closed_by_server": 0}
    lock = threading.Lock()
    threads = [
        threading.Thread(
            target=connect_storm,
            args=(public_host, int(public_port), args.tenant, args.connect_rate, args.duration, counts, lock),
        )
    ]
    for _ in range(args.publishers):
        threads.append(
            threading.Thread(
                target=publisher,
                args=(api_host, int(api_port), args.tenant, args.publish_rate / args.publishers, args.duration, counts, lock),
            )
        )
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts["duration_s"] = args.duration
    text = json.dumps(dict(sorted(counts.items())))
    print(text)
    if args.json:
        with open(args.json, "w") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
