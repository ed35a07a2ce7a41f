"""Gathering a node's streamed text into fewer ``text_chunk`` events.

An LLM sends its reply in deltas of a few characters, and each event is a stored
row: one event per delta made a 10 MB reply 220,000 rows. ``TextBatcher`` joins
the deltas that arrive within ``interval_s`` of the last event, or until
``max_chars`` have gathered, into one event. The events' texts, joined, are the
deltas joined, in order; only how the text is cut differs.

The first delta after a quiet spell goes out at once (no added latency for the
first token), and text never waits longer than ``interval_s``: a task flushes it
even when the upstream goes quiet.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType

import anyio
import anyio.abc

INTERVAL_S = 0.05  # the most a delta waits for company
MAX_CHARS = 4096  # an event's text is cut once this much has gathered


class TextBatcher:
    """Streams text through ``emit`` in batches; use as ``async with`` around reading.

    Leaving the block sends what is left (unless it is left by cancellation).
    """

    def __init__(self, emit: Callable[[str], Awaitable[None]], *,
                 interval_s: float = INTERVAL_S, max_chars: int = MAX_CHARS) -> None:
        self._emit = emit
        self._interval_s = interval_s
        self._max_chars = max_chars
        self._parts: list[str] = []
        self._size = 0
        self._last = -float("inf")  # when the last event went out (anyio's clock)
        self._pending = anyio.Event()  # set while text waits for the flusher
        self._lock = anyio.Lock()  # one emit at a time, so events keep the text's order
        self._tasks: anyio.abc.TaskGroup | None = None

    async def add(self, text: str) -> None:
        """Queue ``text``; sends it now when the batch is full or the stream was quiet."""
        if not text:
            return
        self._parts.append(text)
        self._size += len(text)
        if self._size >= self._max_chars or \
                anyio.current_time() - self._last >= self._interval_s:
            await self.flush()
        else:
            self._pending.set()

    async def flush(self) -> None:
        """Send the text gathered so far as one event (nothing when there is none)."""
        async with self._lock:
            if not self._parts:
                return
            count = len(self._parts)
            text = "".join(self._parts[:count])
            self._last = anyio.current_time()
            await self._emit(text)
            # (taken off only once sent: what a cancelled emit did not send is still here,
            # and what came meanwhile stays for the next event)
            del self._parts[:count]
            self._size -= len(text)

    async def _flusher(self) -> None:
        while True:
            await self._pending.wait()
            self._pending = anyio.Event()
            delay = self._last + self._interval_s - anyio.current_time()
            if delay > 0:
                await anyio.sleep(delay)
            await self.flush()

    async def __aenter__(self) -> TextBatcher:
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        self._tasks.start_soon(self._flusher)
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        assert self._tasks is not None
        self._tasks.cancel_scope.cancel()
        try:  # (the block's own exception is not the flusher's: it goes on unwrapped)
            await self._tasks.__aexit__(None, None, None)
        finally:
            if not isinstance(error, anyio.get_cancelled_exc_class()):
                await self.flush()  # (also after a failure: what came was streamed)
        return None
