"""Lifecycle: the instance's drain, from the first shutdown signal to the end of grace.

A drain refuses new runs (503), starts no queued ones, and gives running runs
the grace period; when it is over, every run-sync wait answers at once (the
runs themselves resume on the next start).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import anyio

from flowrun.errors import Unavailable
from flowrun.runs.dispatch import Dispatcher

logger = logging.getLogger(__name__)


class Lifecycle:
    """Whether the instance accepts work, and the waits a drain must end."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.draining = anyio.Event()
        self.grace_over = anyio.Event()
        self.drain_started: float | None = None
        self._waits: set[anyio.CancelScope] = set()  # run-sync waits, ended by end_waits

    @property
    def shutting_down(self) -> bool:
        return self.drain_started is not None

    def refuse_new_work(self) -> None:
        """Unavailable (503, Retry-After) once the drain has started."""
        if self.drain_started is not None:
            raise Unavailable("flowrun is shutting down; retry shortly",
                              headers={"Retry-After": "5"})

    def begin_drain(self) -> None:
        """Stop accepting runs (503) and starting queued ones; running runs go on."""
        if self.drain_started is None:
            self.drain_started = time.monotonic()
            self.dispatcher.pause_dispatch()
            self.draining.set()
            logger.info("draining: no new runs are accepted")

    def end_waits(self) -> None:
        """The drain's grace is over: every run-sync wait answers now."""
        self.grace_over.set()
        for scope in self._waits:
            scope.cancel()

    @contextmanager
    def wait_scope(self, within_s: float) -> Iterator[anyio.CancelScope]:
        """A cancel scope for a caller's wait: ends after ``within_s`` or when the grace
        is over, whichever is first."""
        with anyio.move_on_after(within_s) as scope:
            if self.grace_over.is_set():
                scope.cancel()
            self._waits.add(scope)
            try:
                yield scope
            finally:
                self._waits.discard(scope)

    async def wait_for_runs(self, grace_s: float) -> bool:
        """During a drain, wait up to ``grace_s`` (from the drain's start) for running runs."""
        started = self.drain_started or time.monotonic()
        with anyio.move_on_after(max(0.0, started + grace_s - time.monotonic())):
            await self.dispatcher.idle()
            return True
        return False

    async def end_waits_after_grace(self, grace_s: float) -> None:
        """Once a drain starts, end run-sync waits when the grace period is over."""
        await self.draining.wait()
        await anyio.sleep(grace_s)
        self.end_waits()
