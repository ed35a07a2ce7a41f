"""A connection's own thread: calls go in through a queue and their results come back
through ``call_soon_threadsafe``, one wake-up each way.

anyio's worker threads cost ~170 µs a round trip here (a limiter, a cancel scope, a
context copy on the loop's side) and aiosqlite's ~114 µs, where this costs ~95 µs;
a run's commits and a run-sync's reads wait on these round trips one after the
other. A connection used only from its own thread is never used by two at once.
On a loop other than asyncio's it falls back to anyio's threads, one call at a time.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread

T = TypeVar("T")


class ConnectionThread:
    """One daemon thread that runs the calls given to it, one at a time, in order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.AbstractEventLoop,
                                            asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._one_at_a_time = threading.Lock()  # (anyio's threads, off asyncio)

    async def call(self, func: Callable[[], T]) -> T:
        """``func()`` on the thread. Cancelling the caller does not stop ``func``: it
        finishes (a batch or a read is never cut in half) and its result is dropped."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio): anyio's threads
            return await anyio.to_thread.run_sync(self._alone, func)
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((func, loop, future))
        return await future

    def _alone(self, func: Callable[[], T]) -> T:
        with self._one_at_a_time:
            return func()

    def close(self) -> None:
        """End the thread once it has finished what it was given."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            func, loop, future = job
            try:
                value, error = func(), None
            except BaseException as exc:  # handed to the awaiting task
                value, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, future, value, error)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # (its awaiting task was cancelled)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
