"""The SQLite backend: one file, WAL mode, a busy timeout, ``user_version`` migrations.

Reads go through one ``sqlite3`` connection on a thread of its own: a read is one
call there, and several reads that belong together (a run and its nodes) are one
call and one snapshot. The writer gets another, so a whole batch is one call on
its thread. (Migrations use aiosqlite, once, at start.)
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import anyio.to_thread

from flowrun.errors import Unavailable
from flowrun.store.backend import Backend, Query
from flowrun.store.schema import MIGRATIONS, SCHEMA_VERSION
from flowrun.store.thread import ConnectionThread
from flowrun.store.writer import SQLITE

logger = logging.getLogger(__name__)

_SYNCHRONOUS = frozenset({"FULL", "NORMAL", "EXTRA"})


async def _connect(path: Path, busy_timeout_ms: int,
                   synchronous: str = "FULL") -> aiosqlite.Connection:
    if synchronous.upper() not in _SYNCHRONOUS:
        raise ValueError(f"sqlite synchronous must be one of {sorted(_SYNCHRONOUS)}")
    conn = await aiosqlite.connect(str(path), isolation_level=None)
    conn.row_factory = sqlite3.Row
    await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    await conn.execute("PRAGMA foreign_keys = ON")
    await conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    return conn


def _connect_sync(path: Path, busy_timeout_ms: int, synchronous: str) -> sqlite3.Connection:
    """The writer's connection: used from one thread at a time, never concurrently."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    return conn


def _connect_reader(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    """The readers' connection: it cannot write (``query_only``), whatever it is asked."""
    conn = _connect_sync(path, busy_timeout_ms, "FULL")
    conn.execute("PRAGMA query_only = ON")
    return conn


class _Reader:
    """Reads on the reading connection's own thread, one call per read (or per group)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._thread = ConnectionThread("flowrun-reader")

    async def read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        return (await self.read_many([(sql, params)]))[0]

    async def read_many(self, queries: Sequence[Query]) -> list[list[Any]]:
        try:
            return await self._thread.call(lambda: self._fetch(queries))
        except sqlite3.OperationalError as exc:
            raise Unavailable(f"the database cannot be read: {exc}") from exc

    def _fetch(self, queries: Sequence[Query]) -> list[list[Any]]:
        if len(queries) == 1:
            return [self._conn.execute(*queries[0]).fetchall()]
        self._conn.execute("BEGIN")  # one snapshot for the group
        try:
            return [self._conn.execute(sql, params).fetchall() for sql, params in queries]
        finally:
            self._conn.execute("COMMIT")

    async def close(self) -> None:
        try:
            await self._thread.call(self._conn.close)
        finally:
            self._thread.close()


async def _migrate(conn: aiosqlite.Connection) -> None:
    await conn.execute("PRAGMA journal_mode = WAL")
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    current = int(row[0]) if row else 0
    if current > SCHEMA_VERSION:
        raise RuntimeError(f"database schema {current} is newer than this flowrun "
                           f"({SCHEMA_VERSION})")
    for step in range(current, SCHEMA_VERSION):
        await conn.execute("BEGIN IMMEDIATE")
        for statement in MIGRATIONS[step]:
            await conn.execute(statement)
        await conn.execute(f"PRAGMA user_version = {step + 1}")
        await conn.execute("COMMIT")
        logger.info("database migrated to schema %d", step + 1)


def _private_files(path: Path) -> None:
    """Create the database readable by its owner only, and narrow an existing one.

    SQLite gives the -wal and -shm files the database file's mode, so they follow.
    The database holds every run's inputs, key digests and secret values.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            if file.stat().st_mode & 0o077:
                file.chmod(0o600)
        except FileNotFoundError:
            pass


@asynccontextmanager
async def open_sqlite(path: Path, *, busy_timeout_ms: int = 5000,
                      synchronous: str = "FULL") -> AsyncIterator[Backend]:
    """Open (creating and migrating) the database file for the duration of the block."""
    await anyio.to_thread.run_sync(_private_files, path)
    migrate_conn = await _connect(path, busy_timeout_ms, synchronous)
    try:
        await _migrate(migrate_conn)
    finally:
        await migrate_conn.close()
    write_conn = await anyio.to_thread.run_sync(_connect_sync, path, busy_timeout_ms,
                                                synchronous)
    try:
        reader = _Reader(await anyio.to_thread.run_sync(_connect_reader, path, busy_timeout_ms))
        try:
            yield Backend(reader.read, write_conn, SQLITE, path, read_many=reader.read_many)
        finally:
            await reader.close()
    finally:
        await anyio.to_thread.run_sync(write_conn.close)
