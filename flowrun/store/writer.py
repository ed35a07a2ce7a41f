"""The single writer: every write goes through one task that commits in groups.

One connection is one transaction, so two coroutines writing on it would share
(and commit) each other's work. Instead, writes are queued as small synchronous
operations on a ``sqlite3.Connection``; the writer task takes whatever is
queued and hands the whole batch to its thread in one call: ``BEGIN
IMMEDIATE``, every operation (each in its own savepoint when there are several,
so one failing operation does not undo the others), ``COMMIT``. A burst of N
writes costs one fsync and one thread round trip, not N of each (a round trip
through the event loop's thread hand-off costs more than a statement).

Writes nobody waits for yet (a run's node rows and events while it runs) may
wait up to ``linger_s`` for company, so a short run's progress and its final
status share one commit; a write someone awaits (an accept, a final status), a
live subscriber to the run, or a full batch ends the wait at once.

Writes a run can hold back (its streamed text) first wait for ``room`` while
``max_backlog`` writes or more are queued, so a writer that falls behind slows the
runs that flood it instead of piling their rows up in memory.

When the database itself fails (locked past the busy timeout, read-only, disk
full, I/O error) the whole batch is rolled back. Writes a client is waiting on
(accepting a run) fail at once with ``Unavailable`` (a 503); writes of runs in
progress (``durable=True``: node results, events, final status) go back to the
head of the queue in order and are retried with backoff until the fault
clears, so a run never ends up half-written.

The writer is the same for SQLite and PostgreSQL: an op is a plain function of a
``Connection`` (``sqlite3.Connection``, or ``postgres.SyncConnection`` which looks
the same), and the little that differs (how a write transaction begins, which
errors are faults of the database rather than of one op) is a ``WriterDialect``.
"""

from __future__ import annotations

import collections
import functools
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import anyio
import anyio.abc

from flowrun.errors import Unavailable
from flowrun.store.thread import ConnectionThread

logger = logging.getLogger(__name__)

T = TypeVar("T")
_MAX_BACKOFF_S = 2.0
_MAX_ROWS_PER_STATEMENT = 256
_PG_MAX_PARAMETERS = 65_535  # PostgreSQL's limit of bind parameters per statement


class Cursor(Protocol):
    """What an op reads back from a statement (``sqlite3.Cursor`` has it all)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """The write connection as ops and the writer use it (``sqlite3.Connection``'s
    shape; rows are read by column name or by position)."""

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor: ...

    def set_trace_callback(self, trace_callback: Callable[[str], object] | None, /
                           ) -> None: ...


C = TypeVar("C", bound=Connection)


@dataclass(frozen=True)
class WriterDialect:
    """What the writer must know of its database: the statement that starts a write
    transaction, the errors of the database (``error``), and among them the faults
    that fail a whole batch (``fault``: locked, full, gone) rather than one op."""

    begin: str
    error: tuple[type[Exception], ...]
    fault: tuple[type[Exception], ...]
    # Called in the transaction just before COMMIT with the keys (first column) of the
    # rows written to tables marked ``notify``: PostgreSQL tells other processes which
    # runs have new events (delivered on commit). None: nobody else to tell.
    notify: Callable[[Any, set[Any]], None] | None = None


# SQLite: take the write lock at BEGIN (a deferred transaction could fail to upgrade).
SQLITE = WriterDialect("BEGIN IMMEDIATE", (sqlite3.Error,), (sqlite3.OperationalError,))


def _variable_limit(conn: Connection) -> int:
    """Bind parameters one statement may hold: read from SQLite (32,766 in 3.32 and
    later, 999 before), PostgreSQL's fixed limit otherwise."""
    if isinstance(conn, sqlite3.Connection):
        return conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return _PG_MAX_PARAMETERS


class RowTable:
    """A table whose queued rows a batch merges into multi-row INSERTs.

    A run's progress is many small rows (events, node states). One statement per
    row costs a trip through SQLite and back into Python, and with it a hand-back
    of the GIL that the event loop then waits for; one statement per table per
    batch does not. Rows whose first ``key`` columns match are one record: in one
    batch, the later replaces the earlier (a node's finished state supersedes its
    started state, so the started one is never written).
    """

    def __init__(self, head: str, width: int, *, tail: str = "", key: int = 0,
                 notify: bool = False) -> None:
        self.head = head  # "INSERT INTO t (a, b) VALUES "
        self.notify = notify  # its rows' first values go to ``WriterDialect.notify``
        self.tail = tail  # e.g. an ON CONFLICT clause
        self.width = width
        self.key = key
        self._row = "(" + ", ".join("?" * width) + ")"
        self._sql: dict[int, str] = {}

    def sql(self, count: int) -> str:
        """The INSERT of ``count`` rows (counts are powers of two: few texts to cache)."""
        text = self._sql.get(count)
        if text is None:
            text = self._sql[count] = self.head + ", ".join([self._row] * count) + self.tail
        return text

    def write(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        """Insert ``rows`` in as few statements as the variable limit allows."""
        most = min(_MAX_ROWS_PER_STATEMENT, max(1, _variable_limit(conn) // self.width))
        start = 0
        while start < len(rows):
            count = min(most, 1 << ((len(rows) - start).bit_length() - 1))
            chunk = rows[start:start + count]
            conn.execute(self.sql(count), [value for row in chunk for value in row])
            start += count


Rows = tuple[tuple[RowTable, tuple[Any, ...]], ...]


class WriteResult(Generic[T]):
    """The pending result of a queued write; ``await result.wait()`` after commit."""

    __slots__ = ("_finished", "_done", "_value", "_error", "_callbacks", "_hurry")

    def __init__(self, hurry: Callable[[], None] | None = None) -> None:
        self._hurry = hurry  # tells the writer someone waits for this write
        # Most writes (a run's node rows and events) are never awaited: the event is
        # made only for a waiter.
        self._finished = False
        self._done: anyio.Event | None = None
        self._value: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[BaseException | None], None]] = []

    def add_done_callback(self, callback: Callable[[BaseException | None], None]) -> None:
        """Call ``callback(error)`` right after the commit (error is None on success).

        Callbacks of one batch run in queue order, so they see writes in the order
        they were submitted.
        """
        if self._finished:
            callback(self._error)
        else:
            self._callbacks.append(callback)

    def _set(self, value: Any = None, error: BaseException | None = None) -> None:
        self._value, self._error = value, error
        self._finished = True
        if self._done is not None:
            self._done.set()
        for callback in self._callbacks:
            try:
                callback(error)
            except Exception:
                logger.exception("write callback failed")
        self._callbacks.clear()

    async def wait(self) -> T:
        if not self._finished:
            if self._done is None:
                self._done = anyio.Event()
            if self._hurry is not None:
                self._hurry()
            await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[no-any-return]


@dataclass
class _Pending:
    op: Callable[[Any], Any] | None
    result: WriteResult[Any]
    durable: bool
    rows: Rows = ()  # written after the ops of the batch, merged per table
    attempts: int = field(default=0)
    era: int = 0  # the writer's era when it was queued (see ``Writer.drop_queued_writes``)

    @property
    def fallible(self) -> bool:
        """Whether the op may fail on its own (a conflict, a full queue) and so needs a
        savepoint to be undone alone. Durable ops are plain inserts and updates of
        values serialised before they were queued: only a database fault fails them."""
        return not self.durable


Result = tuple[Any, BaseException | None]  # an op's value, or the error it raised


@dataclass
class _Outcome:
    """What one transaction of a batch came to (a database fault raises instead).

    ``results``: committed, one per op (an op's own error among them); ``fenced``: the
    lease check failed, nothing committed; ``unmerge``: a merged row was refused on its
    own, so the batch must be applied op by op to find whose; ``broken``: an op without
    a savepoint failed on its own (its index and error), and the batch was rolled back.
    """

    results: list[Result] = field(default_factory=list)
    fenced: bool = False
    unmerge: bool = False
    broken: tuple[int, Exception] | None = None


FENCED = ("this process lost its lease on the database's runs (it stalled, or lost the "
          "database): its writes of before are dropped; retry")


class Writer(Generic[C]):
    """Owns the write connection; started in a task group with ``run``."""

    def __init__(self, conn: C, *, max_batch: int = 512, linger_s: float = 0.003,
                 dialect: WriterDialect = SQLITE, max_backlog: int = 10_000) -> None:
        self._conn = conn
        self._dialect = dialect
        self._linger_s = linger_s
        self._urgent = False  # a queued write is awaited: commit without lingering
        self._hurried = anyio.Event()
        self._thread = ConnectionThread("flowrun-writer")  # the connection's one user
        self.round_trips = 0  # calls into the connection's thread, for tests and the bench
        self.statements = 0  # SQL statements those calls ran (savepoints included)
        conn.set_trace_callback(self._count)
        self._max_batch = max_batch
        self._queue: collections.deque[_Pending] = collections.deque()
        self._max_backlog = max_backlog
        self._room: anyio.Event | None = None  # set once the backlog is below max_backlog
        self._wakeup = anyio.Event()
        self._closed = False
        self._failing_since: int = 0  # consecutive failed batches
        # Several processes on one database (cluster.py): a check, in each batch's
        # transaction, that this process still holds its lease (False: it does not),
        # and the era: writes queued before the last ``drop_queued_writes`` are dropped.
        self.lease_check: Callable[[C], bool] | None = None
        self.on_fenced: Callable[[], None] | None = None
        self._era = 0

    def _count(self, statement: str) -> None:
        self.statements += 1

    @property
    def healthy(self) -> bool:
        """False while the database is refusing writes."""
        return self._failing_since == 0

    def submit(self, op: Callable[[C], T] | None, *, durable: bool = False,
               rows: Rows = ()) -> WriteResult[T]:
        """Queue a write without waiting; the result resolves once it is committed.

        ``op`` runs in the batch's transaction, in queue order; ``rows`` (plain inserts
        of values serialised already, durable writes only) are inserted at the end of
        the same transaction, merged with the batch's other rows of their table.
        ``durable`` writes are retried through database faults instead of failing.
        """
        if self._closed:
            raise Unavailable("the store is closed")
        if rows and not durable:
            raise ValueError("only durable writes carry rows")
        result: WriteResult[T] = WriteResult(self.commit_soon)
        self._queue.append(_Pending(op, result, durable, rows, era=self._era))
        self._wakeup.set()
        if not durable:  # a client is waiting on it
            self.commit_soon()
        return result

    async def room(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` while ``max_backlog`` writes or more are queued; False
        if they still are (a failing database keeps its writes queued)."""
        with anyio.move_on_after(timeout_s):
            while len(self._queue) >= self._max_backlog and not self._closed:
                if self._room is None:
                    self._room = anyio.Event()
                await self._room.wait()
            return True
        return False

    def _made_room(self) -> None:
        if self._room is not None and (len(self._queue) < self._max_backlog or self._closed):
            self._room.set()
            self._room = None

    def drop_queued_writes(self) -> None:
        """Drop every write queued so far, also those being retried (they fail with
        Unavailable): this process gave its runs up, and what it was writing for them
        must not land after another process took them over."""
        self._era += 1
        self._wakeup.set()

    def commit_soon(self) -> None:
        """Commit what is queued without lingering (someone waits for it)."""
        self._urgent = True
        self._hurried.set()

    async def write(self, op: Callable[[C], T], *, durable: bool = False) -> T:
        """Queue a write and wait until it is committed."""
        return await self.submit(op, durable=durable).wait()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Commit queued writes until cancelled; on cancel, flush what is queued."""
        try:
            task_status.started()
            while True:
                if not self._queue:
                    self._wakeup = anyio.Event()
                    await self._wakeup.wait()
                if self._failing_since:
                    await anyio.sleep(min(0.05 * 2 ** self._failing_since, _MAX_BACKOFF_S))
                elif not self._urgent and len(self._queue) < self._max_batch:
                    self._hurried = anyio.Event()
                    with anyio.move_on_after(self._linger_s):
                        await self._hurried.wait()
                # A batch, once taken off the queue, is finished even if cancelled.
                with anyio.CancelScope(shield=True):
                    await self._commit_batch()
                self._made_room()  # (once committed: the batch's rows are let go only now)
        finally:
            self._closed = True
            self._made_room()
            with anyio.CancelScope(shield=True):
                # One last try for what is queued; durable writes that still fail are
                # lost to this process, and their runs resume from the store next start.
                try:
                    if self._queue:
                        await self._commit_batch(final=True)
                finally:
                    self._thread.close()

    async def _commit_batch(self, *, final: bool = False) -> None:
        batch: list[_Pending] = []
        while self._queue and len(batch) < self._max_batch:
            pending = self._queue.popleft()
            if pending.era != self._era:  # from before this process gave its runs up
                pending.result._set(error=Unavailable(FENCED, headers={"Retry-After": "1"}))
                continue
            batch.append(pending)
        if not batch:
            return
        if not self._queue:
            self._urgent = False  # (with writes left over, a backlog: no lingering)
        self.round_trips += 1
        try:
            outcome = await self._thread.call(functools.partial(self._apply, batch))
            if outcome.unmerge:
                self.round_trips += 1  # again, op by op, to find the row that fails
                outcome = await self._thread.call(
                    functools.partial(self._apply, batch, merge=False))
        except self._dialect.error as exc:
            await self._fail_batch(batch, exc, final=final)
            return
        if outcome.fenced:
            self._refuse_fenced(batch)
        elif outcome.broken is not None:
            self._requeue_without(batch, *outcome.broken)
        else:
            self._deliver(batch, outcome.results)

    def _refuse_fenced(self, batch: list[_Pending]) -> None:
        logger.critical("store: a batch of %d writes refused: %s", len(batch), FENCED)
        for pending in batch:
            pending.result._set(error=Unavailable(FENCED, headers={"Retry-After": "1"}))
        if self.on_fenced is not None:
            self.on_fenced()

    def _requeue_without(self, batch: list[_Pending], index: int, error: Exception) -> None:
        """A bug, not a fault: that op fails alone; the batch was rolled back, so the
        others go back to the head of the queue, in order, and commit next time."""
        logger.error("store write failed: %r", error)
        batch[index].result._set(error=error)
        for pending in reversed(batch[:index] + batch[index + 1:]):
            self._queue.appendleft(pending)
        self._wakeup.set()

    def _deliver(self, batch: list[_Pending], results: list[Result]) -> None:
        if self._failing_since:
            logger.warning("store writes recovered after %d failed attempts",
                           self._failing_since)
            self._failing_since = 0
        for pending, (value, err) in zip(batch, results, strict=False):
            pending.result._set(value, err)

    def _apply(self, batch: list[_Pending], *, merge: bool = True) -> _Outcome:
        """Run one batch as one transaction, on the connection's thread.

        A database fault raises (after a rollback): the whole batch fails. An op's own
        error is that op's result; with several ops it is undone alone (a savepoint).
        Rows are merged per table and inserted last (``merge``), or, to find which one
        a constraint refuses, with their op.
        """
        conn = self._conn
        try:
            conn.execute(self._dialect.begin)
            if self.lease_check is not None and not self.lease_check(conn):
                conn.execute("ROLLBACK")
                return _Outcome(fenced=True)
            notified: set[Any] = set()
            outcome = self._run_ops(batch, merge, notified)
            if outcome.broken is None and conn.in_transaction:
                # (not when a lone op failed and was rolled back)
                if merge and not self._write_merged(batch, notified):
                    return _Outcome(unmerge=True)
                if notified and self._dialect.notify is not None:
                    self._dialect.notify(conn, notified)
                conn.execute("COMMIT")
            return outcome
        except self._dialect.error:
            self._roll_back()
            raise

    def _run_ops(self, batch: list[_Pending], merge: bool, notified: set[Any]) -> _Outcome:
        """Each op of the batch in its turn, each with a savepoint where it may fail on
        its own among others; a lone op that fails rolls the transaction back."""
        conn, several = self._conn, len(batch) > 1
        outcome = _Outcome()
        for i, pending in enumerate(batch):
            if pending.op is None and merge:  # rows only: written with the merged rows
                outcome.results.append((None, None))
                continue
            isolate = several and pending.fallible
            if isolate:
                conn.execute(f"SAVEPOINT op{i}")
            try:
                value = pending.op(conn) if pending.op is not None else None
                if not merge:
                    self._write_rows(pending.rows, notified)
            except self._dialect.fault:
                raise  # a database fault: the whole batch fails
            except Exception as exc:  # reported to that op's caller
                if several and not isolate:  # nothing to undo it alone with
                    conn.execute("ROLLBACK")
                    return _Outcome(broken=(i, exc))
                conn.execute(f"ROLLBACK TO op{i}" if isolate else "ROLLBACK")
                outcome.results.append((None, exc))
                if not isolate:
                    return outcome  # a lone op: nothing more in this transaction
            else:
                outcome.results.append((value, None))
            if isolate:
                conn.execute(f"RELEASE op{i}")
        return outcome

    def _write_merged(self, batch: list[_Pending], notified: set[Any]) -> bool:
        """Insert the batch's rows, the last state of each record only, per table; False
        (rolled back) when a row is refused on its own (a constraint, a value)."""
        merged: dict[RowTable, dict[Any, tuple[Any, ...]]] = {}
        for pending in batch:
            for table, row in pending.rows:
                rows = merged.setdefault(table, {})
                key = row[:table.key] if table.key else len(rows)
                rows.pop(key, None)  # a later state of the same record replaces it
                rows[key] = row
        try:
            for table, rows in merged.items():
                self._write_rows(tuple((table, row) for row in rows.values()), notified)
        except self._dialect.fault:
            raise
        except Exception:
            self._conn.execute("ROLLBACK")
            return False
        return True

    def _write_rows(self, rows: Rows, notified: set[Any]) -> None:
        """Insert ``rows`` (one table at a time, in as few statements as it takes)."""
        by_table: dict[RowTable, list[tuple[Any, ...]]] = {}
        for table, row in rows:
            by_table.setdefault(table, []).append(row)
        for table, table_rows in by_table.items():
            table.write(self._conn, table_rows)
            if table.notify:
                notified.update(row[0] for row in table_rows)

    def _roll_back(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except self._dialect.error:
            logger.exception("rollback failed")

    async def _fail_batch(self, batch: list[_Pending], exc: Exception, *,
                          final: bool) -> None:
        self._failing_since += 1
        retry = [p for p in batch if p.durable and not final]
        refused = [p for p in batch if not p.durable or final]
        if self._failing_since == 1 or self._failing_since % 20 == 0:
            logger.error("store write failed (%s): %d writes refused, %d queued for retry",
                         exc, len(refused), len(retry))
        error = Unavailable(f"the database cannot accept writes: {exc}",
                            headers={"Retry-After": "1"})
        for pending in refused:
            pending.result._set(error=error)
        for pending in reversed(retry):
            pending.attempts += 1
            self._queue.appendleft(pending)
