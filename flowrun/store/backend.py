"""What a database gives the Store: a way to read, and a connection for the writer.

The Store (``store.py``) holds every query, written once; ``sqlite.py`` and
``postgres.py`` each open a ``Backend`` (connect, migrate) and close it after.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowrun.store.writer import Connection, WriterDialect

# The channels processes sharing a PostgreSQL database tell each other through
# (LISTEN/NOTIFY; cluster.py listens).
EVENTS_CHANNEL = "flowrun_events"  # payload: ids of runs with new events, comma-separated
QUEUE_CHANNEL = "flowrun_queue"  # a run nobody owns was queued: claim it
# "stop|pause|resume <run id>", "workflow <name>" (changed), "keys" (one was revoked)
CONTROL_CHANNEL = "flowrun_control"

# One query, its rows (read by column name or by position); raises Unavailable when
# the database cannot be read.
Reader = Callable[[str, Sequence[Any]], Awaitable[list[Any]]]
Query = tuple[str, Sequence[Any]]
# Several queries in one round trip, and one snapshot, where the database allows it.
ManyReader = Callable[[Sequence[Query]], Awaitable[list[list[Any]]]]


@dataclass(frozen=True)
class Backend:
    """An open database: its reader, the writer's connection and dialect."""

    read: Reader
    write_conn: Connection
    dialect: WriterDialect
    path: Path | None = None  # the SQLite file; None for a server database
    read_many: ManyReader | None = None  # None: one query after the other
