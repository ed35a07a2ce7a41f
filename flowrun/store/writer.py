"""The single writer: every write goes through one task that commits in groups.

aiosqlite gives one connection one thread and one transaction, so two
coroutines writing on it would share (and commit) each other's work. Instead,
writes are queued as small async operations; the writer task takes whatever is
queued, runs it inside one ``BEGIN IMMEDIATE`` transaction (each operation in
its own savepoint, so one failing operation does not undo the others) and
commits once. A burst of N writes costs one fsync, not N.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import aiosqlite
import anyio
import anyio.abc

from flowrun.errors import Unavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")
WriteOp = Callable[[aiosqlite.Connection], Awaitable[T]]


class WriteResult(Generic[T]):
    """The pending result of a queued write; ``await result.wait()`` after commit."""

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[BaseException | None], None]] = []

    def add_done_callback(self, callback: Callable[[BaseException | None], None]) -> None:
        """Call ``callback(error)`` right after the commit (error is None on success).

        Callbacks of one batch run in queue order, so they see writes in the order
        they were submitted.
        """
        if self._done.is_set():
            callback(self._error)
        else:
            self._callbacks.append(callback)

    def _set(self, value: Any = None, error: BaseException | None = None) -> None:
        self._value, self._error = value, error
        self._done.set()
        for callback in self._callbacks:
            try:
                callback(error)
            except Exception:
                logger.exception("write callback failed")
        self._callbacks.clear()

    async def wait(self) -> T:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[no-any-return]


class Writer:
    """Owns the write connection; started in a task group with ``run``."""

    def __init__(self, conn: aiosqlite.Connection, *, max_batch: int = 512) -> None:
        self._conn = conn
        self._max_batch = max_batch
        self._queue: collections.deque[tuple[WriteOp[Any], WriteResult[Any]]] = (
            collections.deque())
        self._wakeup = anyio.Event()
        self._closed = False

    def submit(self, op: WriteOp[T]) -> WriteResult[T]:
        """Queue a write without waiting; the result resolves once it is committed."""
        if self._closed:
            raise Unavailable("the store is closed")
        result: WriteResult[T] = WriteResult()
        self._queue.append((op, result))
        self._wakeup.set()
        return result

    async def write(self, op: WriteOp[T]) -> T:
        """Queue a write and wait until it is committed."""
        return await self.submit(op).wait()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Commit queued writes until cancelled; on cancel, flush what is queued."""
        try:
            task_status.started()
            while True:
                if not self._queue:
                    self._wakeup = anyio.Event()
                    await self._wakeup.wait()
                # A batch, once taken off the queue, is finished even if cancelled.
                with anyio.CancelScope(shield=True):
                    await self._commit_batch()
        finally:
            self._closed = True
            with anyio.CancelScope(shield=True):
                while self._queue:
                    await self._commit_batch()

    async def _commit_batch(self) -> None:
        batch: list[tuple[WriteOp[Any], WriteResult[Any]]] = []
        while self._queue and len(batch) < self._max_batch:
            batch.append(self._queue.popleft())
        results: list[tuple[WriteResult[Any], Any, BaseException | None]] = []
        try:
            await self._conn.execute("BEGIN IMMEDIATE")
            for i, (op, result) in enumerate(batch):
                await self._conn.execute(f"SAVEPOINT op{i}")
                try:
                    value = await op(self._conn)
                except sqlite3.OperationalError:
                    raise  # a database fault: the whole batch fails
                except Exception as exc:  # noqa: BLE001 - reported to that op's caller
                    await self._conn.execute(f"ROLLBACK TO op{i}")
                    results.append((result, None, exc))
                else:
                    results.append((result, value, None))
                await self._conn.execute(f"RELEASE op{i}")
            await self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            logger.error("store write failed, %d writes rejected: %s", len(batch), exc)
            try:
                if self._conn.in_transaction:
                    await self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                logger.exception("rollback failed")
            error = Unavailable(f"the database cannot accept writes: {exc}")
            for _, result in batch:
                result._set(error=error)
            return
        for result, value, err in results:
            result._set(value, err)
