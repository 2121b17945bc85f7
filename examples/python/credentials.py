#!/usr/bin/env python3
"""Minting subscriber credentials for ssekify with the Python standard library only.

    SSEKIFY_JWT_SECRET=... SSEKIFY_SIGN_SECRET=... python3 credentials.py alice lobby,news

Run it to print a JWT (--auth jwt) and a signed URL (--auth signed) with the
curl commands that use them, or import the functions in your backend:
    from credentials import jwt, signed_url
    url = signed_url("https://push.example/sse", user=session_user, rooms=["lobby"])
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.parse


def _b64url(data):
    # Unpadded base64url, as JWTs and ssekify want.
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _hs256(secret, text):
    return _b64url(hmac.new(secret.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).digest())


def _need(secret, name):
    # The server refuses secrets under 32 bytes; so do we, before minting anything.
    if not secret or len(secret.encode("utf-8")) < 32:
        raise ValueError(f"{name} must be set, at least 32 bytes")
    return secret


def jwt(user, rooms=(), ttl=300, secret=None, tenant=None):
    """An HS256 JWT for --auth jwt: sub = the user, rooms = the rooms it may join
    (["*"] for any), valid for ttl seconds. Send it as `Authorization: Bearer`
    or as `?token=`; the subscriber picks its rooms with `?rooms=`. With a
    tenant it opens only that tenant's `/t/{tenant}/sse`, without one only `/sse`."""
    secret = _need(secret or os.environ.get("SSEKIFY_JWT_SECRET"), "SSEKIFY_JWT_SECRET")
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode("utf-8"))
    body = {"sub": user, "rooms": list(rooms), "exp": int(time.time()) + ttl}
    if tenant:
        body["tenant"] = tenant
    claims = _b64url(json.dumps(body).encode("utf-8"))
    return f"{header}.{claims}.{_hs256(secret, f'{header}.{claims}')}"


def signed_url(base, user="", rooms=(), ttl=300, secret=None, tenant=None):
    """A presigned URL for --auth signed, the same as `ssekify sign`: the user
    (empty: anonymous) and exactly these rooms, usable for ttl seconds. With a
    tenant the tenant is signed too (a fifth line) and base must be that
    tenant's path, `.../t/{tenant}/sse`."""
    secret = _need(secret or os.environ.get("SSEKIFY_SIGN_SECRET"), "SSEKIFY_SIGN_SECRET")
    exp = str(int(time.time()) + ttl)
    room_list = ",".join(rooms)
    canonical = f"ssekify-sign-v1\n{user}\n{room_list}\n{exp}" + (f"\n{tenant}" if tenant else "")
    sig = _hs256(secret, canonical)
    return base + "?" + urllib.parse.urlencode({"user": user, "rooms": room_list, "exp": exp, "sig": sig})


def _demo():
    user = sys.argv[1] if len(sys.argv) > 1 else "alice"
    rooms = (sys.argv[2] if len(sys.argv) > 2 else "lobby").split(",")
    rooms = [r for r in rooms if r]
    base = f"http://{os.environ.get('SSEKIFY_PUBLIC', '127.0.0.1:8080')}/sse"
    if os.environ.get("SSEKIFY_JWT_SECRET"):
        print("# --auth jwt")
        print(f"curl -N -H 'Authorization: Bearer {jwt(user, rooms)}' '{base}?rooms={','.join(rooms)}'")
    if os.environ.get("SSEKIFY_SIGN_SECRET"):
        print("# --auth signed")
        print(f"curl -N '{signed_url(base, user, rooms)}'")
    if not os.environ.get("SSEKIFY_JWT_SECRET") and not os.environ.get("SSEKIFY_SIGN_SECRET"):
        raise SystemExit("set SSEKIFY_JWT_SECRET and/or SSEKIFY_SIGN_SECRET (the secrets the server was started with)")


if __name__ == "__main__":
    _demo()
