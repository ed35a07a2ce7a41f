"""Completion callbacks, the rules: which URLs, what is sent, when to try again.

A run accepted with a ``callback_url`` (from the request, else from its workflow's
definition) is POSTed to that URL once it ends: the run's JSON, as ``GET /runs/{id}``
shows it, signed with ``signing``'s ``v2``, which binds the URL too (a body sent to
one receiver does not verify at another). A 2xx answer delivers it. Anything
else (another status, a timeout, a refused connection, an address the SSRF guard blocks)
is a failed attempt, tried again after ``backoff`` until ``max_age_s`` after the run
ended; then the callback is ``failed``. ``after_attempt`` decides which.

Delivery is at least once: a receiver dedupes on ``Flowrun-Delivery`` (the same on
every attempt of one run's callback). This module is pure; the loop that sends is
``features/callbacks/book.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from flowrun.features.webhooks import signing
from flowrun.records import CallbackState, DueCallback

DELIVERY_HEADER = "Flowrun-Delivery"
ATTEMPT_HEADER = "Flowrun-Attempt"


@dataclass(frozen=True)
class RetryPolicy:
    """How failed attempts are spaced: ``base_s`` doubling up to ``cap_s``, for up to
    ``max_age_s`` after the run ended."""

    base_s: float = 10.0
    cap_s: float = 3600.0
    max_age_s: float = 86_400.0


def backoff(attempt: int, policy: RetryPolicy, jitter: float) -> float:
    """The wait after failed attempt ``attempt`` (1-based): ``base_s * 2**(attempt-1)``
    capped at ``cap_s``, scaled by ``0.5 + jitter/2`` for a ``jitter`` in [0, 1).
    ("Equal jitter": receivers that fail together are not retried together, and no
    wait is under half its step.)"""
    step = min(policy.cap_s, policy.base_s * 2.0 ** min(max(attempt - 1, 0), 60))
    return step * (0.5 + min(max(jitter, 0.0), 1.0) / 2)


@dataclass(frozen=True)
class Decision:
    """A callback's state after an attempt, and when to try next (pending only)."""

    state: CallbackState
    next_attempt_at: float | None


def after_attempt(attempt: int, delivered: bool, *, now: float, finished_at: float,
                  policy: RetryPolicy, jitter: float, retry: bool = True) -> Decision:
    """What follows attempt ``attempt``: delivered, tried again after ``backoff`` (the
    last try falls exactly at the deadline, ``max_age_s`` after the run ended), or
    failed once an attempt at or past the deadline fails too, or one that ``retry``
    says no later attempt could mend (a URL no request can be built for)."""
    if delivered:
        return Decision(CallbackState.DELIVERED, None)
    deadline = finished_at + policy.max_age_s
    if now >= deadline or not retry:
        return Decision(CallbackState.FAILED, None)
    return Decision(CallbackState.PENDING,
                    min(now + backoff(attempt, policy, jitter), deadline))


def fair_pick(due: Mapping[str, Sequence[DueCallback]], busy: Mapping[str, int], *,
              per_key: int, room: int) -> list[DueCallback]:
    """Up to ``room`` of the ``due`` callbacks (each key's soonest first), shared out
    between keys: each goes to the key with the fewest attempts in flight (``busy``,
    and those picked before it), the one due longest among equals, and no key gets
    more than ``per_key`` in flight. However many a key has due, every other key's
    next one goes before its next: a key whose receivers never answer holds another
    back only while every slot is taken, until one of its attempts frees a slot."""
    ranked = sorted((busy.get(key, 0) + place, item.due_at, item.run_id, item)
                    for key, items in due.items() for place, item in enumerate(items)
                    if busy.get(key, 0) + place < per_key)
    return [entry[-1] for entry in ranked[:max(room, 0)]]


def delivered(status_code: int | None) -> bool:
    """Whether an answer delivers the callback: any 2xx (redirects are not followed)."""
    return status_code is not None and 200 <= status_code < 300


def signature_header(secrets: Sequence[str], body: bytes, timestamp: int, url: str) -> str:
    """``Flowrun-Signature`` for ``body`` sent to ``url``: one ``v2`` (bound to the URL)
    per secret, the current one first, then one a rotation replaced and still honours,
    so a receiver that knows either verifies it, and only with its own URL."""
    header = signing.sign(secrets[0], body, timestamp=timestamp, url=url)
    for older in secrets[1:]:
        again = signing.signature(older, timestamp, body, url=url)
        header += f",{signing.BOUND_SCHEME}={again}"
    return header


def request_headers(secrets: Sequence[str], body: bytes, *, url: str, delivery_id: str,
                    attempt: int, timestamp: int) -> dict[str, str]:
    """Every header of one attempt."""
    return {"Content-Type": "application/json",
            signing.HEADER: signature_header(secrets, body, timestamp, url),
            DELIVERY_HEADER: delivery_id, ATTEMPT_HEADER: str(attempt),
            "User-Agent": "flowrun-callbacks"}
