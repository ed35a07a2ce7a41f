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
"""

from __future__ import annotations

from dataclasses import dataclass

from flowrun.errors import OutputTooLarge

MiB = 1024 * 1024


@dataclass(frozen=True)
class StorageLimits:
    """The limits (``Settings.max_node_output_bytes``, ``max_run_output_bytes``)."""

    max_node_bytes: int = 1 * MiB
    max_run_bytes: int = 16 * MiB


class RunStorage:
    """The bytes one run holds in the store, against its limits; one per run, shared
    by the graphs run inside its nodes (map items)."""

    def __init__(self, limits: StorageLimits | None = None, used: int = 0) -> None:
        self.limits = limits or StorageLimits()
        self.used = used

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
