"""The PostgreSQL backend (psycopg 3): a writer connection, a read pool, migrations.

Why this shape: the writer (``writer.py``) runs each batch as plain functions of a
connection on its own thread, so its group commit, savepoints and retry through
faults are the same code for both databases. Here that connection is a synchronous
psycopg connection wrapped to look like ``sqlite3``'s (``SyncConnection``): one
thread hop per batch, as with SQLite. Reads need no thread: an async pool
(psycopg_pool) serves them on the event loop, several at once.

The store's SQL is shared with SQLite; ``translate`` rewrites the little PostgreSQL
spells differently, once per statement text (cached).

``exclusive``: one process serves a database's runs for now (dispatch across
processes is a later step), so the server holds a session advisory lock for as long
as the store is open and refuses to start when another process holds it. A server
restart ends the lock's session: it is checked every few seconds and taken again (and
if another process took it meanwhile, that is logged as critical). The admin commands
(``flowrun keys``, ``flowrun secrets``) open the store without it.
"""

from __future__ import annotations

import functools
import logging
import re
import time
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

from flowrun.errors import BadRequest, StoreBusy, Unavailable
from flowrun.settings import safe_url
from flowrun.store.backend import Backend
from flowrun.store.schema_pg import PG_MIGRATIONS, PG_SCHEMA_VERSION
from flowrun.store.writer import WriterDialect

logger = logging.getLogger(__name__)

# BEGIN in PostgreSQL takes no lock up front: rows lock as they are written, and the
# one writer per process serialises what SQLite's IMMEDIATE did.
POSTGRES = WriterDialect("BEGIN", (psycopg.Error,),
                         # a connection lost or closed, the server shutting down, out of
                         # disk or memory, a lock or deadlock (what psycopg maps SQLSTATE
                         # classes 08, 40, 53, 55, 57, 58 to), or a server that only reads
                         # (a standby after a failover): not the op's fault, so the batch
                         # is retried (durable writes) or refused with a 503
                         (psycopg.OperationalError, psycopg.InterfaceError,
                          psycopg.errors.ReadOnlySqlTransaction))

# The advisory lock a serving process holds (one per database): "flowrun" in ASCII.
_SERVE_LOCK = 0x666C6F7772756E

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
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SERVE_LOCK + 1,))
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


async def _take_lock(url: str, wait_s: float) -> psycopg.AsyncConnection[Any]:
    """A session holding the database's serving lock, or StoreBusy.

    It waits up to ``wait_s`` for the lock: a process killed a moment ago holds it until
    the server notices its connection is gone (a restart right after a crash)."""
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (_SERVE_LOCK,))
            row = await cur.fetchone()
            if (row and row[0]) or time.monotonic() >= deadline:
                break
            await anyio.sleep(0.1)
        if not (row and row[0]):
            raise StoreBusy("another flowrun process already serves this PostgreSQL "
                            "database; several processes on one database are not "
                            "supported yet (stop the other one, or give this one its "
                            "own database)")
    except BaseException:
        await conn.close()
        raise
    return conn


async def _keep_lock(url: str, holder: list[psycopg.AsyncConnection[Any]],
                     check_s: float) -> None:
    """Check the lock's session now and then, and take the lock again when it ended (a
    server restart ends every session, and the lock with it); say loudly if another
    process took it meanwhile."""
    while True:
        await anyio.sleep(check_s)
        try:
            await holder[0].execute("SELECT 1")
            continue
        except psycopg.Error:
            pass
        try:
            conn = await _take_lock(url, 0)
        except StoreBusy:
            logger.critical("another flowrun process took this PostgreSQL database's serving "
                            "lock while this one's connection was down: two processes may "
                            "now run the same runs; stop one of them")
            continue
        except psycopg.Error as exc:
            logger.error("the serving lock's connection to PostgreSQL dropped, and it "
                         "cannot be taken again yet: %s", exc)
            continue
        await holder[0].close()
        holder[0] = conn
        logger.warning("the serving lock's connection to PostgreSQL dropped; lock taken again")


@asynccontextmanager
async def _serving_lock(url: str, wait_s: float, check_s: float) -> AsyncIterator[None]:
    """Hold the database's serving lock for the block (StoreBusy if another has it)."""
    holder = [await _take_lock(url, wait_s)]  # the lock lives as long as this session
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_keep_lock, url, holder, check_s)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
    finally:
        await holder[0].close()


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
async def open_postgres(url: str, *, exclusive: bool = False, max_readers: int = 8,
                        lock_wait_s: float = 3.0, lock_check_s: float = 5.0
                        ) -> AsyncIterator[Backend]:
    """Connect (migrating the schema) for the duration of the block."""
    try:
        await _migrate(url)
    except psycopg.OperationalError as exc:
        raise Unavailable(f"cannot open the PostgreSQL database {safe_url(url)}: "
                          f"{str(exc).strip()}") from exc
    async with _serving_lock(url, lock_wait_s, lock_check_s) if exclusive else _nothing():
        pool = AsyncConnectionPool(url, min_size=1, max_size=max_readers, open=False,
                                   kwargs={"autocommit": True, "row_factory": _rows},
                                   name="flowrun-readers")
        await pool.open(wait=True)
        try:
            async def read(sql: str, params: Sequence[Any]) -> list[Any]:
                try:
                    rows = await _fetch(pool, sql, params)
                    if rows is None:  # a pooled connection the server dropped: once more
                        rows = await _fetch(pool, sql, params)
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


@asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield
