"""The Store: every query flowrun makes, written once for SQLite and PostgreSQL.

Each owner's queries live in a module of their own (``runs.py`` for the run service,
``cluster.py`` for the processes sharing a database, ``callbacks.py`` for the callback
book, ...), classes over ``base.StoreBase`` that ``Store`` puts together: one object for
callers, one file to read per owner.

``Store.open`` is an async context manager that opens the database the target
names (a SQLite file, or a ``postgresql://`` URL: see ``backend.py``), and runs
the group-commit writer in its own task group for as long as the store is open.

The SQL here is the common ground of both dialects: ``?`` placeholders,
``ON CONFLICT`` upserts, ``"user"`` quoted (a keyword in PostgreSQL), ``rowid``
(a column of that name in PostgreSQL's tables that need one). What PostgreSQL
spells differently is rewritten in one place, ``postgres.translate``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import anyio

from flowrun.settings import parse_database
from flowrun.store.backend import Backend
from flowrun.store.callbacks import CallbackQueries
from flowrun.store.cluster import ClusterQueries
from flowrun.store.housekeeping import HousekeepingQueries
from flowrun.store.keys import KeyQueries
from flowrun.store.progress import ProgressQueries
from flowrun.store.runs import RunQueries
from flowrun.store.schedules import ScheduleQueries
from flowrun.store.vault import SecretQueries
from flowrun.store.waits import WaitQueries
from flowrun.store.webhooks import WebhookQueries
from flowrun.store.workflows import WorkflowQueries
from flowrun.store.writer import Connection, Writer


class Store(WorkflowQueries, RunQueries, WaitQueries, ProgressQueries, ClusterQueries,
            HousekeepingQueries, ScheduleQueries, CallbackQueries, WebhookQueries,
            KeyQueries, SecretQueries):
    """Durable state of workflows, runs, nodes, events, keys and secrets: the owners'
    queries together, opened here."""

    @classmethod
    @asynccontextmanager
    async def open(cls, target: Path | str, *, max_batch: int = 512,
                   busy_timeout_ms: int = 5000, synchronous: str = "FULL",
                   linger_s: float = 0.003, max_backlog: int = 10_000
                   ) -> AsyncIterator[Store]:
        """Open (creating and migrating) the database for the duration of the block.

        ``target``: a SQLite file, ``sqlite:///path``, or a ``postgresql://`` URL
        (``settings.parse_database``). ``busy_timeout_ms`` and ``synchronous`` are
        SQLite's. ``max_backlog``: queued writes past which ``room_for_writes`` waits.
        """
        database = parse_database(target)
        backend: AbstractAsyncContextManager[Backend]
        if isinstance(database, Path):
            from flowrun.store.sqlite import open_sqlite
            backend = open_sqlite(database, busy_timeout_ms=busy_timeout_ms,
                                  synchronous=synchronous)
        else:
            from flowrun.store.postgres import open_postgres
            backend = open_postgres(database)
        async with backend as opened:
            # The writer's connection is synchronous: it runs a whole batch in one call on
            # its own thread (see writer.py), not one thread hop per statement.
            writer = Writer[Connection](opened.write_conn, max_batch=max_batch,
                                        linger_s=linger_s, dialect=opened.dialect,
                                        max_backlog=max_backlog)
            async with anyio.create_task_group() as tg:
                await tg.start(writer.run)
                try:
                    yield cls(opened.read, writer, path=opened.path,
                              url=None if isinstance(database, Path) else database,
                              read_many=opened.read_many)
                finally:
                    tg.cancel_scope.cancel()
