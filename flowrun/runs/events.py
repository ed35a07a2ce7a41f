"""Run events: the story of a run, numbered, persisted, fanned out, and followed.

Every event of a run gets the next sequence number (from 1) and is written to
the store's event log through the group-commit writer. It is handed to live
subscribers only once that write has committed, so a subscriber never sees a
sequence number that a later replay would not return (a crash between the two
cannot leave a live-only event), and the run itself never waits for the disk.

``follow`` gives a client the whole story without gap or duplicate: it
subscribes first, replays the store after the client's last seen number, then
tails the live stream, skipping what replay already sent. A subscriber whose
bounded buffer fills up is cut off by the bus and silently switched back to
replay, so a slow client never slows the run or anyone else.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from flowrun.records import Event, NodeRecord

logger = logging.getLogger(__name__)

# The sequence number of a nudge (``EventBus.nudge``): not an event, a "read the store".
NUDGE_SEQ = -1
REPLAY_PAGE = 500


# --- payloads (Dify's field names; timestamps in unix seconds) -------------------------

def _ts(value: float | None) -> int | None:
    return None if value is None else int(value)


def _tokens(outputs: Any) -> int:
    usage = outputs.get("usage") if isinstance(outputs, dict) else None
    total = usage.get("total_tokens") if isinstance(usage, dict) else None
    return total if isinstance(total, int) else 0


def node_payload(node: NodeRecord, exec_id: str, predecessor: str | None) -> dict[str, Any]:
    return {"id": exec_id, "node_id": node.node_id, "node_type": node.type, "title": node.title,
            "index": node.index, "predecessor_node_id": predecessor, "inputs": node.inputs,
            "created_at": _ts(node.started_at)}


def node_finished_payload(node: NodeRecord, exec_id: str,
                          predecessor: str | None) -> dict[str, Any]:
    return {**node_payload(node, exec_id, predecessor),
            "process_data": node.process,
            "outputs": node.outputs, "status": node.status.value,
            "error": node.error.get("message") if node.error else None,
            "elapsed_time": node.elapsed_s or 0.0,
            "execution_metadata": {"attempts": node.attempts,
                                   "total_tokens": _tokens(node.outputs)},
            "finished_at": _ts(node.finished_at)}


# --- live fan-out ---------------------------------------------------------------------

@dataclass
class _Subscriber:
    send: MemoryObjectSendStream[Event]
    dropped: bool = False


@dataclass
class EventBus:
    """Live fan-out of committed events by run id; publishing never blocks."""

    buffer_size: int = 1024
    _subscribers: dict[str, list[_Subscriber]] = field(
        default_factory=lambda: defaultdict(list))

    @contextmanager
    def subscribe(self, run_id: str,
                  buffer_size: int | None = None) -> Iterator[MemoryObjectReceiveStream[Event]]:
        """A receive stream of the run's events published from now on.

        The stream ends early if the subscriber falls ``buffer_size`` events behind.
        """
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
        for sub in self._subscribers.get(event.run_id, ()):
            if sub.dropped:
                continue
            try:
                sub.send.send_nowait(event)
            except anyio.WouldBlock:
                sub.dropped = True
                sub.send.close()
                logger.info("run %s: a slow subscriber fell behind; it goes back to replay",
                            event.run_id)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                sub.dropped = True

    def nudge(self, run_id: str) -> None:
        """Tell the run's subscribers that the store has events they have not been sent
        (written by another process): they read them from the store."""
        self.publish(Event(run_id, NUDGE_SEQ, "", {}, 0.0))

    def subscribed_runs(self) -> list[str]:
        return list(self._subscribers)

    def subscriber_count(self, run_id: str | None = None) -> int:
        if run_id is not None:
            return len(self._subscribers.get(run_id, ()))
        return sum(len(s) for s in self._subscribers.values())


# --- following a run --------------------------------------------------------------------

ReplayFn = Callable[[str, int, int], Awaitable[list[Event]]]


async def follow(bus: EventBus, replay: ReplayFn, run_id: str, after: int,
                 is_finished: Callable[[], Awaitable[bool]],
                 buffer_size: int | None = None) -> AsyncGenerator[Event, None]:
    """Every event of a run after ``after``, in order, exactly once, ending at the terminal one."""
    last = after
    while True:
        with bus.subscribe(run_id, buffer_size) as live:
            done = False
            while True:
                page = await replay(run_id, last, REPLAY_PAGE)
                for event in page:
                    yield event
                    last = event.seq
                    if event.terminal:
                        return
                if len(page) < REPLAY_PAGE:
                    if done or not await is_finished():
                        break
                    # Finished: read once more in case the terminal event committed
                    # between the replay and the status check; then there is no more.
                    done = True
            if done:
                return
            async for event in live:
                if event.seq == NUDGE_SEQ:
                    break  # written elsewhere: read the store after `last`
                if event.seq <= last:
                    continue
                if event.seq != last + 1:
                    break  # a gap: go back to the store for the missing ones
                yield event
                last = event.seq
                if event.terminal:
                    return
        # The live stream ended (we fell behind), had a gap or was nudged: replay from
        # `last`.
