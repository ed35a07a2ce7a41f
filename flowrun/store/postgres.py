"""The PostgreSQL backend (psycopg 3): a writer connection, a read pool, migrations.

Why this shape: the writer (``writer.py``) runs each batch as plain functions of a
connection on its own thread, so its group commit, savepoints and retry through
faults are the same code for both databases. Here that connection is a synchronous
psycopg connection wrapped to look like ``sqlite3``'s (``SyncConnection``): one
thread hop per batch, as with SQLite. Reads need no thread: an async pool
(psycopg_pool) serves them on the event loop, several at once.

The store's SQL is shared with SQLite; ``translate`` rewrites the little PostgreSQL
spells differently, once per statement text (cached).

Several processes may share one database: ``cluster.py`` owns how they divide the
runs. Writes that only one of them may make (an idempotency key) lock in SQL.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import psycopg
import psycopg.errors
import psycopg.pq
from psycopg.rows import RowMaker
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from flowrun.errors import BadRequest, Unavailable
from flowrun.settings import safe_url
from flowrun.store.backend import EVENTS_CHANNEL, Backend
from flowrun.store.schema_pg import PG_MIGRATIONS, PG_SCHEMA_VERSION
from flowrun.store.writer import WriterDialect

logger = logging.getLogger(__name__)

_NOTIFY_MAX = 7900  # PostgreSQL's payload limit is 8000 bytes
# How long a read may take, its wait for a pooled connection included: reads are
# short (indexed, paged), and one past this is a database that does not answer. Kept
# well under the stop timeouts of docs/deploy.md, as a shutdown lets reads finish.
_READ_TIMEOUT_S = 10.0


def notify_events(conn: Any, run_ids: set[Any]) -> None:
    """Tell the other processes which runs have new events (sent when the batch commits)."""
    for payload in notify_payloads(sorted(str(r) for r in run_ids)):
        conn.execute("SELECT pg_notify(?, ?)", (EVENTS_CHANNEL, payload))


def notify_payloads(items: Sequence[str]) -> list[str]:
    """``items`` joined by commas into as few payloads as fit PostgreSQL's limit."""
    payloads: list[str] = []
    current: list[str] = []
    size = 0
    for item in items:
        if current and size + len(item) + 1 > _NOTIFY_MAX:
            payloads.append(",".join(current))
            current, size = [], 0
        current.append(item)
        size += len(item) + 1
    if current:
        payloads.append(",".join(current))
    return payloads


# BEGIN in PostgreSQL takes no lock up front: rows lock as they are written, and the
# one writer per process serialises what SQLite's IMMEDIATE did.
POSTGRES = WriterDialect("BEGIN", (psycopg.Error,),
                         # a connection lost or closed, the server shutting down, out of
                         # disk or memory, a lock or deadlock (what psycopg maps SQLSTATE
                         # classes 08, 40, 53, 55, 57, 58 to), or a server that only reads
                         # (a standby after a failover): not the op's fault, so the batch
                         # is retried (durable writes) or refused with a 503
                         (psycopg.OperationalError, psycopg.InterfaceError,
                          psycopg.errors.ReadOnlySqlTransaction),
                         notify_events)

# The advisory lock migrations run under (one per database): "flowrun" in ASCII, + 1.
_MIGRATE_LOCK = 0x666C6F7772756E + 1

_PLACEHOLDER = re.compile(r"\?")
_REWRITES = (
    # ``IS ?`` (NULL-safe equality in SQLite) is spelt in full.
    (re.compile(r"\bIS \?"), "IS NOT DISTINCT FROM ?"),
    # SQLite's CROSS JOIN ... ON is a planner hint (keep this table outer); PostgreSQL
    # allows no ON with CROSS JOIN and plans the join itself.
    (re.compile(r"\bCROSS JOIN\b"), "JOIN"),
)


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """The store's SQL (qmark style, SQLite spellings) as PostgreSQL takes it."""
    for pattern, replacement in _REWRITES:
        sql = pattern.sub(replacement, sql)
    # psycopg's placeholder is %s, so a literal % is doubled first.
    return _PLACEHOLDER.sub("%s", sql.replace("%", "%%"))


def _holds_nul(parameters: Sequence[Any]) -> bool:
    """Whether a text value holds NUL, which PostgreSQL's text cannot (SQLite's can)."""
    return any(isinstance(value, str) and "\x00" in value for value in parameters)


def _refuse_nul() -> BadRequest:
    return BadRequest("a text value holds a NUL character, which the database "
                      "(PostgreSQL) cannot store")


class Row:
    """A row read by column name or by position, as ``sqlite3.Row`` is."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: dict[str, int], values: Sequence[Any]) -> None:
        self._names = names
        self._values = values

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._names[key] if isinstance(key, str) else key]

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._names)


def _rows(cursor: psycopg.Cursor[Any] | psycopg.AsyncCursor[Any]) -> RowMaker[Row]:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}
    return functools.partial(Row, names)


class SyncConnection:
    """The writer's connection: a psycopg connection shaped like ``sqlite3``'s (qmark
    SQL, ``in_transaction``, a trace callback). It reconnects, at the start of the
    next statement, after the server closed it, so writes resume once the database
    is back (the writer retries durable writes until then)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._trace: Callable[[str], object] | None = None
        self._conn = self._connect()

    def _connect(self) -> psycopg.Connection[Row]:
        # autocommit: the writer sends BEGIN and COMMIT itself, as with SQLite.
        return psycopg.connect(self._url, autocommit=True, row_factory=_rows)

    @property
    def in_transaction(self) -> bool:
        status = self._conn.info.transaction_status
        return status in (psycopg.pq.TransactionStatus.INTRANS,
                          psycopg.pq.TransactionStatus.INERROR)

    def set_trace_callback(self, trace_callback: Callable[[str], object] | None, /) -> None:
        self._trace = trace_callback

    def _ready(self, sql: str) -> psycopg.Connection[Row]:
        if self._conn.closed:
            logger.warning("reconnecting the store's writer to PostgreSQL")
            self._conn = self._connect()
        if self._trace is not None:
            self._trace(sql)
        return self._conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Row]:
        if _holds_nul(parameters):  # the op's own error: a 400 for an accept
            raise _refuse_nul()
        conn = self._ready(sql)
        try:
            return conn.execute(translate(sql), tuple(parameters))
        except psycopg.OperationalError:
            # A connection the server dropped while idle (a restart, a failover) is
            # found out by the first statement of the next batch: when that is the
            # BEGIN, nothing was done yet, so connect again and go on.
            if sql != POSTGRES.begin or not self._conn.broken:
                raise
        return self._ready(sql).execute(translate(sql), tuple(parameters))

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /
                    ) -> psycopg.Cursor[Row]:
        cursor = self._ready(sql).cursor()
        params = list(parameters)
        if any(_holds_nul(row) for row in params):
            raise _refuse_nul()
        if params:
            cursor.executemany(translate(sql), params)
        return cursor

    def close(self) -> None:
        self._conn.close()


async def _migrate(url: str) -> None:
    """Bring the schema up to date; concurrent starts wait on a transaction lock."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version "
                               "(version bigint NOT NULL)")
            cur = await conn.execute("SELECT MAX(version) FROM schema_version")
            row = await cur.fetchone()
            current = int(row[0]) if row and row[0] is not None else 0
            if current > PG_SCHEMA_VERSION:
                raise RuntimeError(f"database schema {current} is newer than this flowrun "
                                   f"({PG_SCHEMA_VERSION})")
            for step in range(current, PG_SCHEMA_VERSION):
                for statement in PG_MIGRATIONS[step]:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_version (version) VALUES (%s)",
                                   (step + 1,))
                logger.info("database migrated to schema %d", step + 1)


async def _fetch(pool: AsyncConnectionPool[Any], sql: str, params: Sequence[Any]
                 ) -> list[Any] | None:
    """A read's rows, or None when its pooled connection turned out to be one the server
    had dropped (the pool discards it when it comes back)."""
    if _holds_nul(params):  # the store's reads look values up: no stored row holds NUL
        return []
    async with pool.connection() as conn:
        try:
            cur = await conn.execute(translate(sql), tuple(params))
            rows: list[Any] = await cur.fetchall()
            return rows
        except psycopg.OperationalError:
            if conn.broken:
                return None
            raise


@asynccontextmanager
async def open_postgres(url: str, *, max_readers: int = 8) -> AsyncIterator[Backend]:
    """Connect (migrating the schema) for the duration of the block."""
    try:
        await _migrate(url)
    except psycopg.OperationalError as exc:
        raise Unavailable(f"cannot open the PostgreSQL database {safe_url(url)}: "
                          f"{str(exc).strip()}") from exc
    pool = AsyncConnectionPool(url, min_size=1, max_size=max_readers, open=False,
                               kwargs={"autocommit": True, "row_factory": _rows},
                               name="flowrun-readers")
    await pool.open(wait=True)
    try:
        async def read(sql: str, params: Sequence[Any]) -> list[Any]:
            try:
                # Shielded, and bounded instead: a query cancelled mid-flight makes
                # psycopg cancel it on the server, and anyio's cancellation (it holds
                # at every await of a cancelled scope) interrupts that too, so psycopg
                # logs a warning and drops the connection (seen at each shutdown).
                with anyio.fail_after(_READ_TIMEOUT_S, shield=True):
                    rows = await _fetch(pool, sql, params)
                    if rows is None:  # a pooled connection the server dropped: once more
                        rows = await _fetch(pool, sql, params)
            except TimeoutError:
                raise Unavailable(f"the database did not answer a read within "
                                  f"{_READ_TIMEOUT_S:g}s") from None
            except (psycopg.OperationalError, PoolTimeout) as exc:
                raise Unavailable(f"the database cannot be read: {exc}") from exc
            if rows is None:
                raise Unavailable("the database cannot be read: connection lost")
            return rows

        write_conn = await anyio.to_thread.run_sync(SyncConnection, url)
        try:
            yield Backend(read, write_conn, POSTGRES)
        finally:
            await anyio.to_thread.run_sync(write_conn.close)
    finally:
        await pool.close()
