#!/usr/bin/env python3
"""Publishing to ssekify with the Python standard library only (urllib).

    SSEKIFY_API=127.0.0.1:8081 SSEKIFY_API_KEY=... python3 publish.py
    SSEKIFY_TENANT=acme SSEKIFY_API_KEY=<acme's apiKey> python3 publish.py   # one tenant's routes

Run it to publish one of each kind, or import the functions:
    from publish import to_user
    to_user("alice", {"unread": 3}, event="notify")
"""

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request

_raw = os.environ.get("SSEKIFY_API", "127.0.0.1:8081")
API = (_raw if _raw.startswith("http") else "http://" + _raw).rstrip("/")
KEY = os.environ.get("SSEKIFY_API_KEY")  # only needed with --api-key (or a tenant's apiKey)
# With a tenant, every route is under /v1/t/{tenant}/: its users, rooms and
# broadcast, where a tenant's own apiKey is accepted.
TENANT = os.environ.get("SSEKIFY_TENANT")
BASE = f"{API}/v1/t/{urllib.parse.quote(TENANT, safe='')}" if TENANT else f"{API}/v1"


class PublishError(Exception):
    """The server refused the request (status, error code, message)."""

    def __init__(self, status, error, message):
        super().__init__(f"{status} {error}: {message}")
        self.status, self.error, self.message = status, error, message


def _post(path, body, content_type):
    """POST to the api; returns the parsed JSON answer or raises PublishError."""
    headers = {"Content-Type": content_type}
    if KEY:
        headers["Authorization"] = f"Bearer {KEY}"
    request = urllib.request.Request(BASE + path, data=body, headers=headers, method="POST")
    for attempt in range(1, 5):
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.load(response)  # {id, delivered, instances} or {results: [...]}
        except urllib.error.HTTPError as err:  # 4xx/5xx with a JSON {error, message} body
            try:
                detail = json.load(err)
            except ValueError:
                detail = {}
            raise PublishError(err.code, detail.get("error", ""), detail.get("message", err.reason)) from None
        except urllib.error.URLError as err:
            # Retry only a refused connection (instance restarting): nothing was
            # delivered then, so a retry cannot duplicate. A timeout is ambiguous
            # (the message may have gone out) and is raised instead.
            if isinstance(err.reason, ConnectionRefusedError) and attempt < 4:
                time.sleep(0.25 * 2**attempt)
                continue
            raise


def _encode(data):
    """Strings go as text/plain (sent verbatim), anything else as JSON."""
    if isinstance(data, str):
        return data.encode("utf-8"), "text/plain; charset=utf-8"
    return json.dumps(data, separators=(",", ":")).encode("utf-8"), "application/json"


def _query(event=None, id=None):
    # event: a named event (addEventListener(name) in the browser).
    # id: your own id; otherwise the server assigns a time-ordered one.
    params = {k: v for k, v in (("event", event), ("id", id)) if v}
    return "?" + urllib.parse.urlencode(params) if params else ""


def _seg(name):
    # User ids and room names may hold any UTF-8 except ',' and '/'.
    return urllib.parse.quote(name, safe="")


def to_user(user, data, event=None, id=None):
    return _post(f"/users/{_seg(user)}/events{_query(event, id)}", *_encode(data))


def to_room(room, data, event=None, id=None):
    return _post(f"/rooms/{_seg(room)}/events{_query(event, id)}", *_encode(data))


def broadcast(data, event=None, id=None):
    return _post(f"/broadcast{_query(event, id)}", *_encode(data))


def batch(messages):
    """messages: [{user|room|all: True, event?, id?, data}]; validated whole, delivered in order."""
    return _post("/publish", json.dumps({"messages": messages}).encode("utf-8"), "application/json")


def batch_ndjson(messages):
    """Same as batch, as NDJSON: one object per line, handy for streaming producers."""
    body = "".join(json.dumps(m) + "\n" for m in messages).encode("utf-8")
    return _post("/publish", body, "application/x-ndjson")


def _show(label, answer):
    print(label, json.dumps(answer))


def _demo():
    print("api:", BASE)
    _show("user     ", to_user("alice", {"title": "Order shipped", "orderId": 42}, event="notify"))
    _show("user text", to_user("alice", "hello alice\nsecond line", event="chat"))
    _show("room     ", to_room("lobby", {"user": "bob", "state": "online"}, event="presence"))
    _show("broadcast", broadcast({"maintenance": "in 10 minutes"}))
    _show("batch    ", batch([
        {"user": "alice", "event": "notify", "data": {"unread": 3}},
        {"room": "news", "event": "headline", "data": "ssekify released"},
        {"all": True, "data": {"ping": True}},
    ]))
    _show("ndjson   ", batch_ndjson([
        {"user": "alice", "event": "notify", "data": {"unread": 4}},
        {"room": "lobby", "data": "plain text to the lobby"},
        {"all": True, "event": "tick", "data": 1},
    ]))


if __name__ == "__main__":
    try:
        _demo()
    except (PublishError, urllib.error.URLError) as err:
        raise SystemExit(f"publish failed: {err}")
