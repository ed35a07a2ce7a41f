"""Run events: the record of what happened in a run, and live fan-out to subscribers.

Events are numbered per run from 1 and written to the store's event log; the
bus hands each published event to every live subscriber's own bounded stream.
A subscriber whose buffer is full is dropped (its stream closes) rather than
ever slowing the run or the other subscribers; it can resume from the store.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

logger = logging.getLogger(__name__)

EVENT_NAMES = frozenset({"workflow_started", "workflow_resumed", "node_started", "text_chunk",
                         "node_retry", "node_finished", "workflow_finished", "error"})
TERMINAL_EVENT = "workflow_finished"


@dataclass(frozen=True)
class Event:
    """One event of a run: its sequence number, Dify-style name and payload."""

    run_id: str
    seq: int
    name: str
    data: dict[str, Any]
    created_at: float

    def to_json(self) -> dict[str, Any]:
        return {"event": self.name, "run_id": self.run_id, "seq": self.seq,
                "created_at": self.created_at, "data": self.data}


@dataclass
class _Subscriber:
    send: MemoryObjectSendStream[Event]
    dropped: bool = False


@dataclass
class EventBus:
    """Live fan-out of events by run id; publishing never blocks."""

    buffer_size: int = 1024
    _subscribers: dict[str, list[_Subscriber]] = field(
        default_factory=lambda: defaultdict(list))

    @contextmanager
    def subscribe(self, run_id: str,
                  buffer_size: int | None = None) -> Iterator[MemoryObjectReceiveStream[Event]]:
        """A receive stream of the run's events published from now on."""
        size = self.buffer_size if buffer_size is None else buffer_size
        send, receive = anyio.create_memory_object_stream[Event](max_buffer_size=size or math.inf)
        sub = _Subscriber(send)
        self._subscribers[run_id].append(sub)
        try:
            yield receive
        finally:
            subs = self._subscribers.get(run_id)
            if subs is not None:
                if sub in subs:
                    subs.remove(sub)
                if not subs:
                    del self._subscribers[run_id]
            send.close()
            receive.close()

    def publish(self, event: Event) -> None:
        """Hand an event to every subscriber of its run; a full subscriber is cut off."""
        for sub in list(self._subscribers.get(event.run_id, ())):
            if sub.dropped:
                continue
            try:
                sub.send.send_nowait(event)
            except anyio.WouldBlock:
                sub.dropped = True
                sub.send.close()
                logger.warning("run %s: dropped a slow event subscriber", event.run_id)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                sub.dropped = True

    def subscriber_count(self, run_id: str | None = None) -> int:
        if run_id is not None:
            return len(self._subscribers.get(run_id, ()))
        return sum(len(s) for s in self._subscribers.values())
