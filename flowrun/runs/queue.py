"""The run queue: higher priority first, then fair between API keys within a priority.

Each priority holds one first-in first-out lane per API key. A pick takes the
highest priority with a key under its cap of running runs, and within it the key
with the fewest runs holding a place now (ties: the run that came first). So one
key's backlog, at any priority, never stands in front of another key's run: at its
cap it is skipped, not waited for, and below it a key that has fewer runs going
starts first. Runs with no key (a child its parent waits for, a schedule's run,
auth off) are one lane with no cap.

Entries are removed lazily: a run stopped while queued stays until a pick meets it
(``live`` tells), as in a heap.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")
Key = str | None
_Entry = tuple[int, T]  # (arrival order, item): a lane is a heap of these


def pick(heads: Mapping[Key, int], held: Mapping[Key, int], cap: int) -> tuple[Key] | None:
    """Which key's lane goes next, as a 1-tuple; None when every key is at its cap.

    Among the keys under ``cap`` (None has no cap), the one with the fewest held
    places, then the earliest head. ``heads``: key -> arrival order of its first
    queued run; ``held``: key -> runs holding a place (running or paused)."""
    best: tuple[Key] | None = None
    best_rank: tuple[int, int] | None = None
    for key, order in heads.items():
        count = held.get(key, 0)
        if key is not None and count >= cap:
            continue
        rank = (count, order)
        if best_rank is None or rank < best_rank:
            best, best_rank = (key,), rank
    return best


class RunQueue(Generic[T]):
    """Queued items by priority, then by key (see the module docstring)."""

    def __init__(self) -> None:
        self._lanes: dict[int, dict[Key, list[_Entry[T]]]] = {}
        self._size = 0

    def __len__(self) -> int:
        """Entries held, including stale ones not yet met by a pick."""
        return self._size

    def push(self, priority: int, key: Key, order: int, item: T) -> None:
        heapq.heappush(self._lanes.setdefault(priority, {}).setdefault(key, []),
                       (order, item))
        self._size += 1

    def pop(self, held: Mapping[Key, int], cap: int,
            live: Callable[[T], bool]) -> tuple[int, T] | None:
        """The next (order, item) to start, or None when nothing queued may start now."""
        for priority in sorted(self._lanes, reverse=True):
            lanes = self._lanes[priority]
            heads = self._heads(lanes, live)
            if not heads:
                del self._lanes[priority]
                continue
            chosen = pick(heads, held, cap)
            if chosen is None:
                continue
            lane = lanes[chosen[0]]
            entry = heapq.heappop(lane)
            self._size -= 1
            if not lane:
                del lanes[chosen[0]]
            return entry
        return None

    def _heads(self, lanes: dict[Key, list[_Entry[T]]], live: Callable[[T], bool]
               ) -> dict[Key, int]:
        """Each key's first live entry's order, dropping stale heads (and empty lanes)."""
        heads: dict[Key, int] = {}
        for key in list(lanes):
            lane = lanes[key]
            while lane and not live(lane[0][1]):
                heapq.heappop(lane)
                self._size -= 1
            if lane:
                heads[key] = lane[0][0]
            else:
                del lanes[key]
        return heads
