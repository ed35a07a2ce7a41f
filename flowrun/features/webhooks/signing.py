"""Signed webhook bodies, both ways: ``Flowrun-Signature: t=<unix seconds>,v<n>=<hex>``.

Two schemes, each an HMAC-SHA256 with a shared secret, so a receiver checks who sent
the body and when:

- ``v1`` (inbound webhooks, the scheme Stripe documents): over ``"<t>.<body>"``.
- ``v2`` (completion callbacks): over the timestamp, the URL the body is sent to and
  the body, joined by newlines (``"<t>\\n<url>\\n<body>"``). The destination is signed
  too, so a body one receiver got does not verify at another receiver of the same
  server: a receiver checks it with its own URL. (A callback URL never holds
  whitespace, so the first two newlines split the message unambiguously.)

A header may carry several values of its scheme (one per secret while a secret is
being rotated); one match is enough. Receivers refuse a timestamp older (or newer)
than a tolerance, which bounds how long a captured request can be replayed; whoever
must refuse replays inside that window also remembers the signatures seen.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

HEADER = "Flowrun-Signature"
SCHEME = "v1"  # over "<t>.<body>"
BOUND_SCHEME = "v2"  # over "<t>\n<url>\n<body>"
DEFAULT_TOLERANCE_S = 300.0


class SignatureError(ValueError):
    """The header is missing, malformed, stale, or no signature in it matches."""


def new_secret() -> str:
    """A fresh signing secret (``whsec_`` and 32 random bytes, URL-safe)."""
    return "whsec_" + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes, *, url: str | None = None) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>.<body>"`` (``v1``), or, given the ``url``
    the body is sent to, of ``"<timestamp>\\n<url>\\n<body>"`` (``v2``)."""
    if url is None:
        message = f"{timestamp}.".encode() + body
    else:
        if any(c.isspace() for c in url):
            raise ValueError("a signed URL must not hold whitespace")
        message = f"{timestamp}\n{url}\n".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, *, timestamp: int | None = None,
         url: str | None = None) -> str:
    """The ``Flowrun-Signature`` header value for ``body``, stamped now: ``v1``, or
    ``v2`` bound to ``url`` when one is given."""
    t = int(time.time()) if timestamp is None else timestamp
    scheme = SCHEME if url is None else BOUND_SCHEME
    return f"t={t},{scheme}={signature(secret, t, body, url=url)}"


def parse(header: str, scheme: str = SCHEME) -> tuple[int, list[str]]:
    """The timestamp and the signatures of ``scheme`` in a header; SignatureError if
    it is malformed or has none of that scheme."""
    timestamp: int | None = None
    found: dict[str, list[str]] = {}
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError("the signature's timestamp is not a number") from None
        elif key in (SCHEME, BOUND_SCHEME):
            found.setdefault(key, []).append(value)
    if timestamp is None:
        raise SignatureError("the signature header has no timestamp (t=)")
    if not found.get(scheme):
        hint = ""
        if scheme == SCHEME and BOUND_SCHEME in found:
            hint = f" (its {BOUND_SCHEME}= is a completion callback's, bound to a URL)"
        elif scheme == BOUND_SCHEME and SCHEME in found:
            hint = f" (its {SCHEME}= is bound to no URL, as an older flowrun signed)"
        raise SignatureError(f"the signature header has no {scheme}= signature{hint}")
    return timestamp, found[scheme]


def verify(secret: str, header: str | None, body: bytes, *, url: str | None = None,
           tolerance_s: float = DEFAULT_TOLERANCE_S, now: float | None = None) -> str:
    """Check a signed body; return the matching signature (a replay cache's key).

    ``url``: the receiver's own URL, as the callback was addressed to it; then only a
    ``v2`` signature bound to that URL verifies. Without it, only ``v1``. Raises
    SignatureError when the header is missing or malformed, its timestamp is further
    than ``tolerance_s`` from now, or no signature in it matches.
    """
    if not header:
        raise SignatureError(f"the {HEADER} header is missing")
    timestamp, candidates = parse(header, SCHEME if url is None else BOUND_SCHEME)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError(f"the signature's timestamp is more than {tolerance_s:g}s "
                             "away from now")
    try:
        expected = signature(secret, timestamp, body, url=url)
    except ValueError:
        raise SignatureError("no signature matches the body and URL") from None
    for candidate in candidates:
        # as bytes: compare_digest refuses str with non-ASCII characters (a TypeError)
        if hmac.compare_digest(candidate.encode(), expected.encode()):
            return candidate
    raise SignatureError("no signature matches the body" if url is None else
                         "no signature matches the body and URL")
