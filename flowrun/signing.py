"""Signed webhook bodies, both ways: ``Flowrun-Signature: t=<unix seconds>,v1=<hex>``.

The scheme Stripe documents for its webhooks: the signature is HMAC-SHA256 over
``"<t>.<body>"`` with a shared secret, so a receiver checks both who sent the body
and when. A header may carry several ``v1`` values (one per secret while a secret
is being rotated); one match is enough. Receivers refuse a timestamp older (or
newer) than a tolerance, which bounds how long a captured request can be replayed;
whoever must refuse replays inside that window also remembers the signatures seen.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

HEADER = "Flowrun-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300.0


class SignatureError(ValueError):
    """The header is missing, malformed, stale, or no signature in it matches."""


def new_secret() -> str:
    """A fresh signing secret (``whsec_`` and 32 random bytes, URL-safe)."""
    return "whsec_" + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>.<body>"``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return mac.hexdigest()


def sign(secret: str, body: bytes, *, timestamp: int | None = None) -> str:
    """The ``Flowrun-Signature`` header value for ``body``, stamped now."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},{SCHEME}={signature(secret, t, body)}"


def parse(header: str) -> tuple[int, list[str]]:
    """The timestamp and the ``v1`` signatures of a header; SignatureError if malformed."""
    timestamp: int | None = None
    found: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError("the signature's timestamp is not a number") from None
        elif key == SCHEME:
            found.append(value)
    if timestamp is None:
        raise SignatureError("the signature header has no timestamp (t=)")
    if not found:
        raise SignatureError(f"the signature header has no {SCHEME}= signature")
    return timestamp, found


def verify(secret: str, header: str | None, body: bytes, *,
           tolerance_s: float = DEFAULT_TOLERANCE_S, now: float | None = None) -> str:
    """Check a signed body; return the matching signature (a replay cache's key).

    Raises SignatureError when the header is missing or malformed, its timestamp is
    further than ``tolerance_s`` from now, or no signature in it matches.
    """
    if not header:
        raise SignatureError(f"the {HEADER} header is missing")
    timestamp, candidates = parse(header)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError(f"the signature's timestamp is more than {tolerance_s:g}s "
                             "away from now")
    expected = signature(secret, timestamp, body)
    for candidate in candidates:
        # as bytes: compare_digest refuses str with non-ASCII characters (a TypeError)
        if hmac.compare_digest(candidate.encode(), expected.encode()):
            return candidate
    raise SignatureError("no signature matches the body")
