"""Token buckets that cap how fast each API key may start runs.

One bucket per key: it holds up to ``burst`` tokens and refills at ``rate`` tokens
a second; starting a run takes one. The buckets live in memory only (a restart
refills them, which errs on the side of the caller) and at most ``max_keys`` are
remembered: past that the least recently used key is forgotten, and comes back
with a full bucket, so a flood of distinct keys costs bounded memory.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float  # clock reading when ``tokens`` was last brought up to date


class RateLimiter:
    """Per-key token buckets; ``take`` answers how long to wait (0.0: go ahead)."""

    def __init__(self, rate: float, burst: int, *, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, key: str) -> float:
        """Take one token from ``key``'s bucket and return 0.0, or, when it is empty,
        take nothing and return the seconds until a token is there."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            elapsed = max(now - bucket.at, 0.0)  # a clock that steps back refills nothing
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
            bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)
