"""How much one run may store, and how much it holds so far.

The disk is shared by every key, so what a run stores is bounded twice: what
each node stores (its outputs, the inputs its expressions made, the text it
streams) by ``max_node_bytes``, and all its nodes' values and its own outputs
together by ``max_run_bytes``. Sizes are bytes of the JSON text the store writes
(each value once: its events refer to the node's row, see ``Store.record``).

The executor admits a value just before it is recorded, with no await between
the check and the write, so two branches finishing at once cannot both pass a
check that the first one's write would have failed. A resumed run starts from
what the nodes it keeps hold.

Streamed text is also bounded in events (``max_text_chunks``: each is a row and a
message to every follower, whatever its size). Past that, or once the recorder says
the store is too far behind (``stop_streaming``), the run streams no more text: it
goes into the nodes' outputs only, and what is not streamed is not counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flowrun.errors import OutputTooLarge

MiB = 1024 * 1024
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StorageLimits:
    """The limits (``Settings.max_node_output_bytes``, ``max_run_output_bytes``)."""

    max_node_bytes: int = 1 * MiB
    max_run_bytes: int = 16 * MiB
    max_text_chunks: int = 10_000  # ``Settings.max_text_chunks_per_run``


class RunStorage:
    """The bytes one run holds in the store, against its limits; one per run, shared
    by the graphs run inside its nodes (map items)."""

    def __init__(self, limits: StorageLimits | None = None, used: int = 0,
                 run_id: str = "") -> None:
        self.limits = limits or StorageLimits()
        self.run_id = run_id  # (for the log line)
        self.used = used
        self.text_chunks = 0  # text_chunk events streamed
        self.streaming_stopped: str | None = None  # why the run streams no more text

    def room(self) -> int:
        """The most a node may still store: a walk over a value may stop past it."""
        return max(0, min(self.limits.max_node_bytes, self.limits.max_run_bytes - self.used))

    def admit(self, node_id: str, what: str, size: int, *, at_least: bool = False) -> None:
        """Count ``size`` bytes of ``what`` a node stores, or OutputTooLarge (nothing
        counted) past either limit. ``at_least``: ``size`` is where a walk stopped."""
        self.admit_text(node_id, what, size, size, at_least=at_least)

    def admit_text(self, node_id: str, what: str, size: int, total: int, *,
                   at_least: bool = False) -> None:
        """``admit`` for a part of ``what`` (streamed text: ``total`` so far, this part
        included), held to the node limit as a whole."""
        made = f"{'more than ' if at_least else ''}{total:,} bytes of {what}"
        limit = self.limits.max_node_bytes
        if total > limit:
            raise OutputTooLarge(
                f"node {node_id!r} made {made} (as JSON); a node may store at most "
                f"{limit:,} bytes (FLOWRUN_MAX_NODE_OUTPUT_BYTES)")
        self._fits(f"node {node_id!r}", size, made)
        self.used += size

    def admit_chunk(self, node_id: str, size: int, total: int) -> bool:
        """``admit_text`` for one text_chunk event; False (nothing counted) once the run
        streams no more text."""
        if self.streaming_stopped is not None:
            return False
        if self.text_chunks >= self.limits.max_text_chunks:
            self.stop_streaming(f"its {self.limits.max_text_chunks:,} text_chunk events "
                                f"(FLOWRUN_MAX_TEXT_CHUNKS_PER_RUN)")
            return False
        self.admit_text(node_id, "streamed text", size, total)
        self.text_chunks += 1
        return True

    def stop_streaming(self, why: str) -> bool:
        """The run streams no more text, because of ``why`` (logged once); True the first
        time."""
        if self.streaming_stopped is not None:
            return False
        self.streaming_stopped = why
        logger.warning("run %s streams no more text, past %s; the rest of it is in its "
                       "nodes' outputs only", self.run_id, why)
        return True

    def admit_run_outputs(self, size: int) -> None:
        """Count the run's own outputs (``size`` bytes), or OutputTooLarge."""
        self._fits("the run", size, f"{size:,} bytes of outputs")
        self.used += size

    def _fits(self, who: str, size: int, made: str) -> None:
        limit = self.limits.max_run_bytes
        if self.used + size > limit:
            raise OutputTooLarge(
                f"{who} made {made} (as JSON), which takes its run past the {limit:,} "
                f"bytes a run may store (FLOWRUN_MAX_RUN_OUTPUT_BYTES); the run holds "
                f"{self.used:,} already")
