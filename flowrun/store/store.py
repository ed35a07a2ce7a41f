"""The Store: every query flowrun makes, written once for SQLite and PostgreSQL.

``Store.open`` is an async context manager that opens the database the target
names (a SQLite file, or a ``postgresql://`` URL: see ``backend.py``), and runs
the group-commit writer in its own task group for as long as the store is open.

The SQL here is the common ground of both dialects: ``?`` placeholders,
``ON CONFLICT`` upserts, ``"user"`` quoted (a keyword in PostgreSQL), ``rowid``
(a column of that name in PostgreSQL's tables that need one). What PostgreSQL
spells differently is rewritten in one place, ``postgres.translate``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from flowrun.jsontext import Encoded, dumps, encode
from flowrun.records import (
    RUN_TERMINAL,
    ApiKeyRecord,
    CallbackAttempt,
    CallbackRecord,
    CallbackState,
    DueCallback,
    Event,
    HookRecord,
    IdempotencyClaim,
    KeyHolder,
    NodeRecord,
    NodeStatus,
    RunRecord,
    RunStatus,
    ScheduleRecord,
    SecretRecord,
)
from flowrun.settings import parse_database
from flowrun.store.backend import (
    CONTROL_CHANNEL,
    QUEUE_CHANNEL,
    Backend,
    ManyReader,
    Query,
    Reader,
)
from flowrun.store.writer import Connection, RowTable, Writer, WriteResult

logger = logging.getLogger(__name__)

# The database's clock in unix seconds (processes on several hosts share it; no skew).
_DB_NOW = "extract(epoch from clock_timestamp())::double precision"
# A run that is not finished and not parked: what a process executes (or will). Written
# out, not bound, to match the partial index ``runs_claimable``.
_LIVE = "status IN ('queued', 'running', 'paused')"

_RUN_COLUMNS = ("num, id, workflow, version, status, inputs, outputs, error, priority, "
                'correlation_id, idempotency_key, "user", trace_id, api_key_id, overrides, '
                "graph, steps, created_at, started_at, finished_at, parent_run_id, depth, "
                "root_run_id, rerun_of, schedule_id, schedule_slot, callback_url, source, owner")

_NODES_OF_RUN = "SELECT * FROM node_executions WHERE run_id = ? ORDER BY idx = 0, idx"


def _dumps(value: Any) -> str | None:
    return None if value is None else dumps(value)


def _loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def _run_from_row(row: Any) -> RunRecord:
    return RunRecord(
        id=row["id"], workflow=row["workflow"], version=row["version"],
        status=RunStatus(row["status"]), inputs=_loads(row["inputs"]) or {},
        created_at=row["created_at"], priority=row["priority"],
        correlation_id=row["correlation_id"], idempotency_key=row["idempotency_key"],
        user=row["user"], trace_id=row["trace_id"], api_key_id=row["api_key_id"],
        overrides=_loads(row["overrides"]) or {}, graph=_loads(row["graph"]),
        outputs=_loads(row["outputs"]), error=_loads(row["error"]),
        started_at=row["started_at"], finished_at=row["finished_at"], steps=row["steps"],
        num=row["num"], parent_run_id=row["parent_run_id"], depth=row["depth"],
        root_run_id=row["root_run_id"], rerun_of=row["rerun_of"],
        schedule_id=row["schedule_id"], schedule_slot=row["schedule_slot"],
        callback_url=row["callback_url"],
        source=row["source"], owner=row["owner"],
    )


def _node_from_row(row: Any) -> NodeRecord:
    return NodeRecord(
        run_id=row["run_id"], node_id=row["node_id"], type=row["type"], title=row["title"],
        index=row["idx"], status=NodeStatus(row["status"]), inputs=_loads(row["inputs"]) or {},
        outputs=_loads(row["outputs"]) or {}, error=_loads(row["error"]),
        attempts=row["attempts"], branch=row["branch"], started_at=row["started_at"],
        finished_at=row["finished_at"], **_process_fields(_loads(row["logs"])),
    )


def _process_fields(process: Any) -> dict[str, Any]:
    """Split the stored process column back into log lines and other process data."""
    if isinstance(process, list):  # early rows stored the log lines alone
        return {"logs": process, "process_data": {}}
    process = dict(process or {})
    return {"logs": list(process.pop("logs", [])), "process_data": process}


def _insert_run(conn: Connection, run: RunRecord) -> None:
    conn.execute(
        "INSERT INTO runs (id, workflow, version, status, inputs, priority, correlation_id, "
        "idempotency_key, \"user\", trace_id, api_key_id, overrides, graph, created_at, "
        "parent_run_id, depth, root_run_id, rerun_of, schedule_id, schedule_slot, "
        "callback_url, source, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
        "?, ?, ?, ?, ?, ?)",
        (run.id, run.workflow, run.version, run.status.value, _dumps(run.inputs),
         run.priority, run.correlation_id, run.idempotency_key, run.user, run.trace_id,
         run.api_key_id, _dumps(run.overrides or None), _dumps(run.graph), run.created_at,
         run.parent_run_id, run.depth, run.root_run_id, run.rerun_of, run.schedule_id,
         run.schedule_slot, run.callback_url, run.source, run.owner))
    if run.callback_url is not None:  # its delivery state, committed with the run
        conn.execute("INSERT INTO callbacks (run_id, delivery_id, state, updated_at, "
                     "api_key_id) VALUES (?, ?, ?, ?, ?)",
                     (run.id, "dlv_" + uuid.uuid4().hex, CallbackState.PENDING.value,
                      run.created_at, run.api_key_id or ""))


_KEY_HOLDER_SQL = (
    "SELECT k.fingerprint, k.run_id, k.expires_at, r.status FROM idempotency_keys k "
    "LEFT JOIN runs r ON r.id = k.run_id "
    "WHERE k.api_key_id = ? AND k.workflow = ? AND k.key = ?")


def _key_holder(conn: Connection, claim: IdempotencyClaim) -> KeyHolder | None:
    """The run a live (unexpired) key names, or None."""
    row = conn.execute(_KEY_HOLDER_SQL, (claim.scope, claim.workflow, claim.key)).fetchone()
    return _holder_from_row(row)


def _holder_from_row(row: Any) -> KeyHolder | None:
    if row is None or row["status"] is None:
        return None
    if row["expires_at"] is not None and row["expires_at"] < time.time():
        return None
    return KeyHolder(str(row["run_id"]), RunStatus(row["status"]), str(row["fingerprint"]))


# Runs that ended before a time, found by runs_by_end (status, finished_at).
_TERMINAL = tuple(sorted(s.value for s in RUN_TERMINAL))
ENDED_BEFORE = (f"SELECT id FROM runs WHERE status IN ({', '.join('?' * len(_TERMINAL))}) "
                "AND finished_at < ? LIMIT ?")

# What a deleted run takes with it.
_RUN_TABLES = (("node_executions", "run_id"), ("events", "run_id"),
               ("idempotency_keys", "run_id"), ("callbacks", "run_id"),
               ("callback_attempts", "run_id"), ("signals", "run_id"),
               ("signal_tokens", "run_id"), ("runs", "id"))

# A run's progress: rows merged per batch by the writer (see RowTable).
_NODE_ROWS = RowTable(
    "INSERT INTO node_executions (run_id, node_id, type, title, idx, status, inputs, "
    "outputs, error, attempts, branch, logs, started_at, finished_at) VALUES ", 14,
    tail=" ON CONFLICT (run_id, node_id) DO UPDATE SET type = excluded.type, "
    "title = excluded.title, idx = excluded.idx, status = excluded.status, "
    "inputs = excluded.inputs, outputs = excluded.outputs, error = excluded.error, "
    "attempts = excluded.attempts, branch = excluded.branch, logs = excluded.logs, "
    "started_at = excluded.started_at, finished_at = excluded.finished_at",
    key=2)  # (run_id, node_id): a node's later state in a batch replaces its earlier one
_EVENT_ROWS = RowTable("INSERT INTO events (run_id, seq, name, data, created_at) VALUES ", 5,
                       notify=True)


def _node_row(node: NodeRecord) -> tuple[Any, ...]:
    """A node's row, serialised now: the record may change before the batch commits, and
    a value that cannot be stored fails here, in its caller, not inside a batch."""
    return _NodeRow(node).row


def _event_row(event: Event, data: str | None = None) -> tuple[Any, ...]:
    return (event.run_id, event.seq, event.name, _dumps(event.data) if data is None else data,
            event.created_at)


def _encoded(cached: Encoded | None, value: Any) -> Encoded:
    """The text the executor made of ``value`` (and measured), or a new one."""
    return cached if cached is not None and cached.value is value else encode(value)


class _NodeRow:
    """A node's row, with its inputs and outputs kept encoded: an event written with the
    row may refer to them instead of holding them again."""

    def __init__(self, node: NodeRecord) -> None:
        self.inputs = _encoded(node.encoded_inputs, node.inputs)
        self.outputs = _encoded(node.encoded_outputs, node.outputs)
        self.row = (node.run_id, node.node_id, node.type, node.title, node.index,
                    node.status.value, self.inputs.text, self.outputs.text,
                    _dumps(node.error), node.attempts, node.branch, _dumps(node.process),
                    node.started_at, node.finished_at)


# A node's inputs or outputs past this many bytes are stored once, in the node's row:
# the event written with that row (node_started, node_finished, ...) holds a reference
# instead, and a replay joins the value back in from the row (``Store.events``). Live
# subscribers get the event as it was made. Smaller values stay in the event, so most
# replays need no second read. The run's outputs go the same way (the runs row).
INLINE_BYTES = 4096
# The reference's key in a stored event's data: the fields left out, and which
# execution of the node (its started_at) or which end of the run (finished_at) has them.
_STORED_WITH = "stored_with"


def _referring_data(event: Event, fields: dict[str, Encoded], mark: dict[str, Any]
                    ) -> str | None:
    """The event's data as stored, large ``fields`` left for the row that holds them
    (only those that are that very value in the event), or None to store it whole."""
    left = [name for name, enc in fields.items()
            if enc.size > INLINE_BYTES and event.data.get(name) is enc.value]
    if not left:
        return None
    return dumps({**event.data, **dict.fromkeys(left), _STORED_WITH: {"fields": left, **mark}})


class Store:
    """Durable state of workflows, runs, nodes, events and keys."""

    def __init__(self, read: Reader, writer: Writer[Connection], *,
                 path: Path | None = None, url: str | None = None,
                 read_many: ManyReader | None = None) -> None:
        self.path = path  # the SQLite file (None on PostgreSQL)
        self.url = url  # the PostgreSQL URL (None on SQLite)
        self.postgres = url is not None
        # This process's worker id when several share the database (cluster.py): runs it
        # queues again (a wake, a re-run) are its own. None with one process.
        self.owner: str | None = None
        self._read = read
        self._read_many = read_many
        self._writer = writer
        self._reads = 0

    def commit_soon(self) -> None:
        """Commit queued writes now: someone follows them live."""
        self._writer.commit_soon()

    async def room_for_writes(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until the write queue is short enough for a write that
        can be held back (streamed text); False if it is still too long."""
        return await self._writer.room(timeout_s)

    def round_trips(self) -> dict[str, int]:
        """Calls into the database threads so far (each read, each write batch) and the
        statements the write batches ran.

        The cost that bounds throughput here is these hand-offs, not SQL; tests hold
        them to a budget per run.
        """
        return {"read": self._reads, "write": self._writer.round_trips,
                "statement": self._writer.statements}

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

    # --- plumbing -------------------------------------------------------------------

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        self._reads += 1
        return await self._read(sql, params)

    async def _fetch_together(self, queries: Sequence[Query]) -> list[list[Any]]:
        """Several reads in one round trip and one snapshot where the backend can."""
        if self._read_many is None:
            return [await self._fetchall(sql, params) for sql, params in queries]
        self._reads += 1
        return await self._read_many(queries)

    async def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    async def key_holder(self, claim: IdempotencyClaim) -> KeyHolder | None:
        """The run an idempotency key names now (live, unexpired), read outside a write."""
        return _holder_from_row(await self._fetchone(
            _KEY_HOLDER_SQL, (claim.scope, claim.workflow, claim.key)))

    @property
    def writable(self) -> bool:
        """False while the database refuses writes (locked, read-only, full)."""
        return self._writer.healthy

    def write_sql(self, sql: str, params: Sequence[Any] = (), *,
                  durable: bool = False) -> WriteResult[None]:
        """Queue one statement for the next group commit without waiting."""

        def op(conn: Connection) -> None:
            conn.execute(sql, params)

        return self._writer.submit(op, durable=durable)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement and wait for its commit."""
        await self.write_sql(sql, params).wait()

    # --- workflows ------------------------------------------------------------------

    async def put_workflow(self, name: str, definition: dict[str, Any]) -> tuple[int, bool]:
        """Store a definition as the next version, unless it equals the latest: (version, new)."""
        text = json.dumps(definition, sort_keys=True, separators=(",", ":"))
        shared = self.postgres

        def op(conn: Connection) -> tuple[int, bool]:
            if shared:  # processes registering one workflow at once: one after the other
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 1))", (name,))
                conn.execute("SELECT pg_notify(?, ?)", (CONTROL_CHANNEL, f"workflow {name}"))
            row = conn.execute("SELECT version, definition FROM workflows WHERE name = ? "
                               "AND deleted_at IS NULL ORDER BY version DESC LIMIT 1",
                               (name,)).fetchone()
            if row is not None and row["definition"] == text:
                return int(row["version"]), False
            highest = conn.execute("SELECT MAX(version) FROM workflows WHERE name = ?",
                                   (name,)).fetchone()[0]
            version = int(highest) + 1 if highest is not None else 1  # never reused
            conn.execute("INSERT INTO workflows (name, version, definition, created_at) "
                               "VALUES (?, ?, ?, ?)", (name, version, text, time.time()))
            return version, True

        return await self._writer.write(op)

    async def get_workflow(self, name: str, version: int | None = None, *,
                           deleted: bool = False) -> tuple[int, dict[str, Any]] | None:
        """(version, definition) of a workflow, the latest when no version is given.

        A deleted version is found only with ``deleted`` (the runs made from it).
        """
        live = "" if deleted else " AND deleted_at IS NULL"
        if version is None:
            row = await self._fetchone("SELECT version, definition FROM workflows WHERE name = ?"
                                       f"{live} ORDER BY version DESC LIMIT 1", (name,))
        else:
            row = await self._fetchone("SELECT version, definition FROM workflows "
                                       f"WHERE name = ? AND version = ?{live}", (name, version))
        return None if row is None else (int(row["version"]), json.loads(row["definition"]))

    async def workflow_number(self, name: str) -> int | None:
        """A stable numeric id of a workflow (the row of its first version)."""
        row = await self._fetchone("SELECT MIN(rowid) AS n FROM workflows WHERE name = ?",
                                   (name,))
        return int(row["n"]) if row is not None and row["n"] is not None else None

    async def workflow_by_number(self, number: int) -> str | None:
        row = await self._fetchone("SELECT name FROM workflows WHERE rowid = ?", (number,))
        if row is None or await self.workflow_number(row["name"]) != number or \
                not await self.workflow_exists(row["name"]):
            return None
        return str(row["name"])

    async def run_id_by_number(self, num: int) -> str | None:
        """The id of the run stored as row ``num`` (the jobs API's numeric job id)."""
        row = await self._fetchone("SELECT id FROM runs WHERE num = ?", (num,))
        return None if row is None else str(row["id"])

    async def workflow_exists(self, name: str) -> bool:
        return await self._fetchone("SELECT 1 FROM workflows WHERE name = ? "
                                    "AND deleted_at IS NULL LIMIT 1", (name,)) is not None

    async def unregistered_workflows(self, names: Collection[str]) -> tuple[list[str], bool]:
        """Which of ``names`` name no live workflow (in their order), and whether any
        workflow is registered at all."""
        wanted = list(dict.fromkeys(names))
        found: set[str] = set()
        if wanted:
            rows = await self._fetchall(
                f"SELECT DISTINCT name FROM workflows WHERE deleted_at IS NULL AND name IN "
                f"({', '.join('?' * len(wanted))})", tuple(wanted))
            found = {r["name"] for r in rows}
        any_row = found or await self._fetchone(
            "SELECT 1 FROM workflows WHERE deleted_at IS NULL LIMIT 1") is not None
        return [n for n in wanted if n not in found], bool(any_row)

    async def workflow_versions(self, name: str) -> list[tuple[int, float]]:
        """(version, created_at) of a workflow's live versions, oldest first."""
        rows = await self._fetchall("SELECT version, created_at FROM workflows WHERE name = ? "
                                    "AND deleted_at IS NULL ORDER BY version", (name,))
        return [(int(r["version"]), float(r["created_at"])) for r in rows]

    async def delete_workflow(self, name: str, version: int | None) -> tuple[int, int]:
        """Delete one version of a workflow, or all, unless runs of it are still live:
        (versions deleted, live runs that kept it)."""
        live = tuple(s.value for s in RunStatus if s not in RUN_TERMINAL)
        which, params = ("", (name,)) if version is None else (" AND version = ?",
                                                                (name, version))
        shared = self.postgres

        def op(conn: Connection) -> tuple[int, int]:
            active = conn.execute(
                f"SELECT COUNT(*) FROM runs WHERE workflow = ?{which} AND status IN "
                f"({', '.join('?' * len(live))})", (*params, *live)).fetchone()[0]
            if active:
                return 0, int(active)
            deleted = conn.execute(f"UPDATE workflows SET deleted_at = ? WHERE name = ?{which} "
                                   "AND deleted_at IS NULL", (time.time(), *params)).rowcount
            if deleted and shared:
                conn.execute("SELECT pg_notify(?, ?)", (CONTROL_CHANNEL, f"workflow {name}"))
            return int(deleted), 0

        return await self._writer.write(op)

    async def list_workflows(self) -> list[tuple[str, int, dict[str, Any]]]:
        """(name, latest version, definition) of every workflow, by name."""
        rows = await self._fetchall(
            "SELECT w.name, w.version, w.definition FROM workflows w JOIN "
            "(SELECT name, MAX(version) AS v FROM workflows WHERE deleted_at IS NULL "
            "GROUP BY name) m "
            "ON w.name = m.name AND w.version = m.v ORDER BY w.name")
        return [(r["name"], int(r["version"]), json.loads(r["definition"])) for r in rows]

    # --- runs -----------------------------------------------------------------------

    def insert_run(self, run: RunRecord) -> WriteResult[None]:
        """Queue the insert of a new run (no idempotency key)."""

        def op(conn: Connection) -> None:
            _insert_run(conn, run)

        return self._writer.submit(op)

    async def accept_run(self, run: RunRecord, claim: IdempotencyClaim | None,
                         admit: Callable[[KeyHolder | None], str | None], *,
                         nodes: Sequence[NodeRecord] = ()) -> tuple[str, bool]:
        """Insert a run and its idempotency key in one transaction: (run id, created).
        ``nodes``: node results the run starts with (it does not run those nodes).

        ``admit`` is the caller's rule, called inside the transaction with the run the
        key names now (None without a key or holder): it returns the id of a run to
        answer with instead (nothing is inserted), None to insert, or raises to refuse.
        Concurrent duplicates are serialised by the writer, so they see each other.
        """

        lock_keys = self.postgres

        def op(conn: Connection) -> tuple[str, bool]:
            if claim is not None and lock_keys:
                # Several processes may accept the same key at once, each in its own
                # transaction: a lock per key (until commit) makes the later one see the
                # run the first created. (One process's writer already serialises them.)
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))",
                             (f"{claim.scope}\x1f{claim.workflow}\x1f{claim.key}",))
            existing = admit(_key_holder(conn, claim) if claim is not None else None)
            if existing is not None:
                return existing, False
            _insert_run(conn, run)
            if nodes:
                _NODE_ROWS.write(conn, [_node_row(n) for n in nodes])
            if claim is not None:
                conn.execute(
                    "INSERT INTO idempotency_keys (api_key_id, workflow, key, fingerprint, "
                    "run_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, NULL) "
                    "ON CONFLICT (api_key_id, workflow, key) DO UPDATE SET "
                    "fingerprint = excluded.fingerprint, run_id = excluded.run_id, "
                    "created_at = excluded.created_at, expires_at = NULL",
                    (claim.scope, claim.workflow, claim.key, claim.fingerprint, run.id,
                     time.time()))
            return run.id, True

        return await self._writer.write(op)

    def mark_running(self, run_id: str, started_at: float, event: Event, *,
                     status: RunStatus = RunStatus.RUNNING) -> WriteResult[None]:
        """Record the start (or resume) of a run together with its first event."""
        def op(conn: Connection) -> None:
            conn.execute("UPDATE runs SET status = ?, started_at = COALESCE(started_at, ?) "
                         "WHERE id = ?", (status.value, started_at, run_id))

        return self._writer.submit(op, durable=True, rows=((_EVENT_ROWS, _event_row(event)),))

    def finish_run(self, run_id: str, status: RunStatus, *, outputs: Any, error: Any,
                   steps: int, finished_at: float, event: Event,
                   key_ttl_s: float, has_key: bool = True,
                   had_waits: bool = False,
                   encoded_outputs: Encoded | None = None) -> WriteResult[None]:
        """Record a terminal status with its terminal event in one transaction.

        ``has_key``: the run was accepted with an idempotency key, whose expiry starts
        now (keys are found by their own columns, not by run: without a key, no scan).
        ``had_waits``: the run may have wait nodes still waiting, which end as stopped.
        ``encoded_outputs``: the outputs as the caller encoded (and measured) them.
        Large outputs are stored once, in the runs row (see ``INLINE_BYTES``).
        """
        outputs_text, data = _dumps(outputs), None
        if outputs is not None:
            encoded = _encoded(encoded_outputs, outputs)
            outputs_text = encoded.text
            data = _referring_data(event, {"outputs": encoded}, {"finished_at": finished_at})
        run_row = (status.value, outputs_text, _dumps(error), steps, finished_at,
                   finished_at, run_id)
        def op(conn: Connection) -> None:
            conn.execute(
                "UPDATE runs SET status = ?, outputs = ?, error = ?, steps = ?, "
                "finished_at = ?, started_at = COALESCE(started_at, ?) WHERE id = ?", run_row)
            if has_key:
                conn.execute("UPDATE idempotency_keys SET expires_at = ? WHERE run_id = ?",
                             (finished_at + key_ttl_s, run_id))
            if had_waits:
                conn.execute("UPDATE node_executions SET status = ?, finished_at = ? "
                             "WHERE run_id = ? AND status = ?",
                             (NodeStatus.STOPPED.value, finished_at, run_id,
                              NodeStatus.WAITING.value))

        return self._writer.submit(op, durable=True,
                                   rows=((_EVENT_ROWS, _event_row(event, data)),))

    # --- waiting runs and their signals ----------------------------------------------

    def park_run(self, run_id: str, *, wake_at: float | None, event: Event,
                 tokens: Sequence[tuple[str, str, str]]) -> WriteResult[None]:
        """Record a run as waiting (with when to wake it and its signal URL tokens:
        (hash, node id, signal) each) together with its ``workflow_waiting`` event."""
        now = time.time()

        def op(conn: Connection) -> None:
            conn.execute("UPDATE runs SET status = ?, wake_at = ? WHERE id = ?",
                         (RunStatus.WAITING.value, wake_at, run_id))
            conn.executemany(
                "INSERT INTO signal_tokens (token_hash, run_id, node_id, signal, "
                "created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(token, run_id, node_id, signal, now) for token, node_id, signal in tokens])

        return self._writer.submit(op, durable=True, rows=((_EVENT_ROWS, _event_row(event)),))

    async def wake_run(self, run_id: str) -> bool:
        """Queue a waiting run again; False when it was not waiting (someone else woke it)."""

        def op(conn: Connection) -> bool:
            cur = conn.execute("UPDATE runs SET status = ?, wake_at = NULL, owner = ? "
                               "WHERE id = ? AND status = ?",
                               (RunStatus.QUEUED.value, self.owner, run_id,
                                RunStatus.WAITING.value))
            return cur.rowcount == 1

        return await self._writer.write(op, durable=True)

    async def due_waiting_runs(self, now: float, limit: int = 100) -> list[str]:
        """Waiting runs whose wake time has come, earliest first."""
        rows = await self._fetchall("SELECT id FROM runs WHERE status = 'waiting' AND "
                                    "wake_at <= ? ORDER BY wake_at LIMIT ?", (now, limit))
        return [row[0] for row in rows]

    async def signalled_waiting_runs(self) -> list[str]:
        """Waiting runs that hold signals (one may be what they wait for)."""
        rows = await self._fetchall("SELECT DISTINCT r.id FROM runs r JOIN signals s ON "
                                    "s.run_id = r.id WHERE r.status = 'waiting'")
        return [row[0] for row in rows]

    async def next_wake_at(self) -> float | None:
        row = await self._fetchone("SELECT MIN(wake_at) FROM runs WHERE status = 'waiting'")
        return None if row is None or row[0] is None else float(row[0])

    async def add_signal(self, run_id: str, name: str, data: dict[str, Any], *,
                         via: str) -> bool:
        """Keep a signal for a run; False when one of that name came already."""

        def op(conn: Connection) -> bool:
            cur = conn.execute("INSERT INTO signals (run_id, name, data, via, "
                               "received_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                               (run_id, name, _dumps(data), via, time.time()))
            return cur.rowcount == 1

        return await self._writer.write(op, durable=True)

    async def signals(self, run_id: str) -> dict[str, Any]:
        """The signals a run has received: name -> data."""
        rows = await self._fetchall("SELECT name, data FROM signals WHERE run_id = ?",
                                    (run_id,))
        return {row["name"]: json.loads(row["data"]) for row in rows}

    async def signal_token(self, token_hash: str) -> tuple[str, str, str] | None:
        """(run id, node id, signal) a signal URL's token stands for."""
        row = await self._fetchone("SELECT run_id, node_id, signal FROM signal_tokens "
                                   "WHERE token_hash = ?", (token_hash,))
        return None if row is None else (row[0], row[1], row[2])

    async def set_status(self, run_id: str, status: RunStatus, *,
                         only_from: tuple[RunStatus, ...]) -> bool:
        """Change a live run's status (pause/resume); False if it was not in ``only_from``."""

        def op(conn: Connection) -> bool:
            marks = ", ".join("?" * len(only_from))
            cur = conn.execute(f"UPDATE runs SET status = ? WHERE id = ? AND status IN "
                                     f"({marks})", (status.value, run_id,
                                                    *(s.value for s in only_from)))
            return cur.rowcount == 1

        return await self._writer.write(op, durable=True)

    async def reset_run(self, run_id: str, *, keep_succeeded: bool,
                        rerun: Collection[str] = ()) -> bool:
        """Queue a finished run again: restart (no node kept) or retry (succeeded nodes
        kept, except those in ``rerun``), as its own root. False, and nothing changed,
        when the run is not finished (another request queued it again first)."""
        terminal = tuple(s.value for s in RUN_TERMINAL)

        def op(conn: Connection) -> bool:
            queued = conn.execute(
                # (a child re-run by itself becomes its own root: see awaited_by_parent)
                "UPDATE runs SET status = ?, outputs = NULL, error = NULL, finished_at = NULL, "
                f"started_at = NULL, steps = 0, owner = ?, stop_reason = NULL, "
                f"root_run_id = NULL WHERE id = ? "
                f"AND status IN ({', '.join('?' * len(terminal))})",
                (RunStatus.QUEUED.value, self.owner, run_id, *terminal)).rowcount
            if not queued:
                return False
            if keep_succeeded:
                again = list(rerun)
                # (no empty IN (): SQLite takes it, PostgreSQL does not)
                also = f" OR node_id IN ({', '.join('?' * len(again))})" if again else ""
                conn.execute(
                    f"DELETE FROM node_executions WHERE run_id = ? AND (status != ?{also})",
                    (run_id, NodeStatus.SUCCEEDED.value, *again))
            else:
                conn.execute("DELETE FROM node_executions WHERE run_id = ?", (run_id,))
            conn.execute("UPDATE idempotency_keys SET expires_at = NULL WHERE run_id = ?",
                         (run_id,))
            return True

        return await self._writer.write(op)

    async def get_run(self, run_id: str, *, with_nodes: bool = True) -> RunRecord | None:
        """A run (with its nodes, read in the same snapshot), or None."""
        run_query: Query = (f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        if not with_nodes:
            row = await self._fetchone(*run_query)
            return None if row is None else _run_from_row(row)
        runs, nodes = await self._fetch_together([run_query, (_NODES_OF_RUN, (run_id,))])
        if not runs:
            return None
        run = _run_from_row(runs[0])
        run.nodes = [_node_from_row(r) for r in nodes]
        return run

    async def list_runs(self, workflow: str | None, *, api_key_id: str | None,
                        any_key: bool = False, status: str | None = None,
                        correlation_id: str | None = None, limit: int = 20,
                        before_num: int | None = None) -> list[RunRecord]:
        """Runs of a workflow (of all, with None) made by one key (or by any, with
        ``any_key``), newest first."""
        clauses = ["1 = 1"] if workflow is None else ["workflow = ?"]
        params: list[Any] = [] if workflow is None else [workflow]
        if not any_key:
            clauses.append("api_key_id IS ?")
            params.append(api_key_id)
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if correlation_id is not None:
            clauses.append("correlation_id = ?")
            params.append(correlation_id)
        if before_num is not None:
            clauses.append("num < ?")
            params.append(before_num)
        params.append(limit)
        rows = await self._fetchall(f"SELECT {_RUN_COLUMNS} FROM runs WHERE "
                                    f"{' AND '.join(clauses)} ORDER BY num DESC LIMIT ?", params)
        return [_run_from_row(r) for r in rows]

    async def unfinished_runs(self) -> list[RunRecord]:
        """Queued and running runs, oldest first (what a restart must pick up)."""
        rows = await self._fetchall(f"SELECT {_RUN_COLUMNS} FROM runs WHERE status IN (?, ?, ?) "
                                    "ORDER BY num", (RunStatus.QUEUED.value,
                                                     RunStatus.RUNNING.value,
                                                     RunStatus.PAUSED.value))
        return [_run_from_row(r) for r in rows]

    # --- several processes on one database (PostgreSQL only; cluster.py) -------------

    def guard_lease(self, lease_s: float, on_lost: Callable[[], None]) -> None:
        """Check in every write transaction that this process (``owner``) still holds its
        lease: once it has lapsed, other processes may have taken its runs over, so
        nothing more of its may commit (``on_lost`` is called; see ``drop_queued_writes``)."""

        def holds(conn: Connection) -> bool:
            owner = self.owner
            return owner is None or conn.execute(
                f"SELECT 1 FROM workers WHERE id = ? AND heartbeat_at < {_DB_NOW} - ?",
                (owner, lease_s)).fetchone() is None

        self._writer.lease_check = holds
        self._writer.on_fenced = on_lost

    def drop_queued_writes(self) -> None:
        """Drop the writes queued so far (this process gave its runs up)."""
        self._writer.drop_queued_writes()

    async def register_worker(self, worker_id: str, host: str, pid: int) -> None:
        def op(conn: Connection) -> None:
            conn.execute(f"INSERT INTO workers (id, host, pid, started_at, heartbeat_at) "
                         f"VALUES (?, ?, ?, {_DB_NOW}, {_DB_NOW})", (worker_id, host, pid))

        await self._writer.write(op)

    async def heartbeat(self, worker_id: str, lease_s: float) -> bool:
        """Renew a worker's lease; False when it had lapsed already (its runs may be
        claimed by now: the worker must give them up)."""

        def op(conn: Connection) -> bool:
            return conn.execute(f"UPDATE workers SET heartbeat_at = {_DB_NOW} WHERE id = ? "
                                f"AND heartbeat_at >= {_DB_NOW} - ?",
                                (worker_id, lease_s)).rowcount == 1

        return await self._writer.write(op)

    async def claim_runs(self, worker_id: str, limit: int, lease_s: float, *,
                         run_id: str | None = None) -> list[tuple[RunRecord, str | None]]:
        """Take up to ``limit`` live runs nobody runs (no owner, or one whose lease
        lapsed), priority then age, skipping rows another claim holds; with their stop
        reason (a stop asked for while nobody ran them). ``run_id``: only that one."""
        only = "" if run_id is None else "AND id = ? "
        params: tuple[Any, ...] = (worker_id, lease_s) + (() if run_id is None else (run_id,))

        def op(conn: Connection) -> list[Any]:
            return conn.execute(
                "UPDATE runs SET owner = ? WHERE id IN (SELECT id FROM runs r WHERE "
                f"{_LIVE} AND (owner IS NULL OR NOT EXISTS (SELECT 1 FROM workers w "
                f"WHERE w.id = r.owner AND w.heartbeat_at >= {_DB_NOW} - ?)) {only}"
                "ORDER BY priority DESC, num LIMIT ? FOR UPDATE SKIP LOCKED) "
                f"RETURNING {_RUN_COLUMNS}, stop_reason", (*params, limit)).fetchall()

        rows = await self._writer.write(op)
        rows.sort(key=lambda r: (-r["priority"], r["num"]))
        return [(_run_from_row(r), r["stop_reason"]) for r in rows]

    def release_run(self, run_id: str, worker_id: str) -> None:
        """Queue (durably, in order behind the run's own writes) giving a live run of
        ``worker_id`` back to the cluster, and waking the others' claims."""

        def op(conn: Connection) -> None:
            if conn.execute(f"UPDATE runs SET owner = NULL WHERE id = ? AND owner = ? AND "
                            f"{_LIVE}", (run_id, worker_id)).rowcount:
                conn.execute("SELECT pg_notify(?, '')", (QUEUE_CHANNEL,))

        self._writer.submit(op, durable=True)

    async def request_stop(self, run_id: str, reason: str) -> None:
        """Keep a stop on a live run's row (the process that runs it, or claims it
        later, stops it)."""
        await self._writer.write(lambda conn: conn.execute(
            f"UPDATE runs SET stop_reason = ? WHERE id = ? AND {_LIVE}", (reason, run_id)))

    async def stop_reason(self, run_id: str) -> str | None:
        row = await self._fetchone("SELECT stop_reason FROM runs WHERE id = ?", (run_id,))
        return None if row is None else row["stop_reason"]

    async def stop_requests(self, worker_id: str) -> list[tuple[str, str]]:
        """A worker's live runs someone asked to stop: (run id, reason)."""
        rows = await self._fetchall(f"SELECT id, stop_reason FROM runs WHERE owner = ? AND "
                                    f"stop_reason IS NOT NULL AND {_LIVE}", (worker_id,))
        return [(r["id"], r["stop_reason"]) for r in rows]

    async def paused_flags(self, worker_id: str) -> dict[str, bool]:
        """A worker's live runs: whether the store says each is paused."""
        rows = await self._fetchall(f"SELECT id, status FROM runs WHERE owner = ? AND {_LIVE}",
                                    (worker_id,))
        return {r["id"]: r["status"] == RunStatus.PAUSED.value for r in rows}

    async def run_owner(self, run_id: str, lease_s: float) -> tuple[str | None, bool]:
        """Who runs a run, and whether its lease is current."""
        row = await self._fetchone(
            f"SELECT r.owner, w.heartbeat_at >= {_DB_NOW} - ? AS alive FROM runs r "
            "LEFT JOIN workers w ON w.id = r.owner WHERE r.id = ?", (lease_s, run_id))
        if row is None:
            return None, False
        return row["owner"], bool(row["alive"])

    async def release_runs(self, worker_id: str) -> int:
        """A worker leaving: its live runs are anyone's now, and its row goes."""

        def op(conn: Connection) -> int:
            count = conn.execute(f"UPDATE runs SET owner = NULL WHERE owner = ? AND {_LIVE}",
                                 (worker_id,)).rowcount
            conn.execute("DELETE FROM workers WHERE id = ?", (worker_id,))
            return count

        return await self._writer.write(op)

    async def notify(self, channel: str, payload: str) -> None:
        """Tell the other processes (LISTEN/NOTIFY), once what is queued has committed."""
        await self._writer.write(lambda conn: conn.execute("SELECT pg_notify(?, ?)",
                                                           (channel, payload)))

    async def count_queued(self) -> int:
        """The cluster's queue: runs queued for any process. (A run a process accepted
        for one of its free slots has an owner, and starts there at once.)"""
        row = await self._fetchone("SELECT COUNT(*) AS n FROM runs "
                                   "WHERE status = 'queued' AND owner IS NULL")
        return int(row["n"]) if row is not None else 0

    async def workers(self, lease_s: float) -> list[dict[str, Any]]:
        """The processes that share the database, with whether their lease is current."""
        rows = await self._fetchall(
            f"SELECT id, host, pid, started_at, heartbeat_at, heartbeat_at >= {_DB_NOW} - ? "
            "AS alive FROM workers ORDER BY started_at", (lease_s,))
        return [{"id": r["id"], "host": r["host"], "pid": r["pid"],
                 "started_at": r["started_at"], "heartbeat_at": r["heartbeat_at"],
                 "alive": bool(r["alive"])} for r in rows]

    async def forget_workers(self, idle_s: float) -> int:
        """Drop the rows of workers silent for ``idle_s`` (housekeeping)."""
        return await self._writer.write(lambda conn: conn.execute(
            f"DELETE FROM workers WHERE heartbeat_at < {_DB_NOW} - ?", (idle_s,)).rowcount)

    # --- nodes and events -----------------------------------------------------------

    def record(self, *, node: NodeRecord | None = None,
               event: Event | None = None) -> WriteResult[None]:
        """Durably save a node execution and/or an event, together.

        An event written with its node's row refers to the row for large inputs and
        outputs rather than holding them again (see ``INLINE_BYTES``).
        """
        rows: list[tuple[RowTable, tuple[Any, ...]]] = []
        data: str | None = None
        if node is not None:
            node_row = _NodeRow(node)
            rows.append((_NODE_ROWS, node_row.row))
            if event is not None and node.started_at is not None:
                data = _referring_data(event, {"inputs": node_row.inputs,
                                               "outputs": node_row.outputs},
                                       {"started_at": node.started_at})
        if event is not None:
            rows.append((_EVENT_ROWS, _event_row(event, data)))
        return self._writer.submit(None, durable=True, rows=tuple(rows))

    async def node_records(self, run_id: str) -> list[NodeRecord]:
        rows = await self._fetchall(_NODES_OF_RUN, (run_id,))
        return [_node_from_row(r) for r in rows]

    async def events(self, run_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        """A page of a run's event log after sequence number ``after``, each event as it
        was sent live (values stored once, in their row, joined back in)."""
        rows = await self._fetchall("SELECT seq, name, data, created_at FROM events "
                                    "WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                                    (run_id, after, limit))
        events = [Event(run_id, r["seq"], r["name"], json.loads(r["data"]), r["created_at"])
                  for r in rows]
        referring = [e for e in events if _STORED_WITH in e.data]
        if referring:
            await self._join_stored(run_id, referring)
        return events

    async def _join_stored(self, run_id: str, events: list[Event]) -> None:
        """Put back the values these events left in their node's row (or the run's),
        in one more read. A row that no longer holds that execution (the node ran again
        in a retry or after a restart) leaves the value null, flagged ``<field>_truncated``
        as Dify flags values it cuts short."""
        refs = [(event, event.data.pop(_STORED_WITH)) for event in events]
        node_ids = sorted({str(e.data.get("node_id")) for e, ref in refs if "started_at" in ref})
        the_run = any("started_at" not in ref for _, ref in refs)  # a workflow_finished
        queries: list[Query] = []
        if node_ids:
            queries.append((f"SELECT node_id, started_at, inputs, outputs FROM node_executions "
                            f"WHERE run_id = ? AND node_id IN ({', '.join('?' * len(node_ids))})",
                            (run_id, *node_ids)))
        if the_run:
            queries.append(("SELECT outputs, finished_at FROM runs WHERE id = ?", (run_id,)))
        found = iter(await self._fetch_together(queries))
        by_node = {r["node_id"]: r for r in next(found)} if node_ids else {}
        runs = next(found) if the_run else []
        for event, ref in refs:
            if "started_at" in ref:  # a node's execution
                row, mark = by_node.get(event.data.get("node_id")), "started_at"
            else:  # the run's end
                row, mark = (runs[0] if runs else None), "finished_at"
            for name in ref["fields"]:
                if row is not None and row[mark] == ref[mark]:
                    event.data[name] = _loads(row[name])
                else:
                    event.data[f"{name}_truncated"] = True

    async def last_event_seq(self, run_id: str) -> int:
        row = await self._fetchone("SELECT MAX(seq) AS s FROM events WHERE run_id = ?",
                                   (run_id,))
        return int(row["s"]) if row is not None and row["s"] is not None else 0

    async def run_progress(self, run_id: str) -> tuple[int, int]:
        """(the run's last event number, the bytes of inputs and outputs its succeeded
        nodes hold) in one read: where a resumed or retried run's numbering and
        storage count go on from (it keeps those nodes)."""
        size = "octet_length({})" if self.postgres else "LENGTH(CAST({} AS BLOB))"
        held = " + ".join(f"COALESCE({size.format(c)}, 0)" for c in ("inputs", "outputs"))
        row = await self._fetchone(
            f"SELECT (SELECT MAX(seq) FROM events WHERE run_id = ?) AS seq, "
            f"(SELECT SUM({held}) FROM node_executions WHERE run_id = ? AND status = ?) "
            f"AS held", (run_id, run_id, NodeStatus.SUCCEEDED.value))
        if row is None:
            return 0, 0
        return int(row["seq"] or 0), int(row["held"] or 0)

    # --- housekeeping ---------------------------------------------------------------

    async def delete_expired_keys(self, now: float, batch: int = 1000) -> int:
        """Forget idempotency keys whose run ended more than the TTL ago."""

        def op(conn: Connection) -> int:
            cur = conn.execute(
                "DELETE FROM idempotency_keys WHERE rowid IN (SELECT rowid FROM "
                "idempotency_keys WHERE expires_at IS NOT NULL AND expires_at < ? LIMIT ?)",
                (now, batch))
            return cur.rowcount

        return await self._writer.write(op)

    async def delete_run(self, run_id: str) -> RunStatus | None:
        """Delete a finished run with its nodes, events and idempotency keys: the run's
        status (a live run is left as it is), or None when there is no such run."""

        def op(conn: Connection) -> RunStatus | None:
            row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                return None
            status = RunStatus(row["status"])
            if status in RUN_TERMINAL:
                for table, column in _RUN_TABLES:
                    conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (run_id,))
            return status

        return await self._writer.write(op)

    async def delete_finished_runs(self, before: float, batch: int = 200) -> int:
        """Delete up to ``batch`` runs that ended before ``before``, with nodes, events, keys
        (one transaction a batch, so the writer serves others in between)."""

        def op(conn: Connection) -> int:
            ids = [row[0] for row in conn.execute(ENDED_BEFORE,
                                                  (*_TERMINAL, before, batch)).fetchall()]
            if not ids:
                return 0
            marks = ", ".join("?" * len(ids))
            for table, column in _RUN_TABLES:
                conn.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", ids)
            return len(ids)

        return await self._writer.write(op)

    # --- schedules ------------------------------------------------------------------

    async def sync_definition_schedules(self, workflow: str,
                                        entries: Sequence[dict[str, Any]], *,
                                        keep_api: bool = True) -> None:
        """Make the workflow's definition schedules those of ``entries`` (its block): add
        new ones, replace changed ones (keeping ``last_slot``), leave unchanged ones as
        they are (paused or resumed since), delete the rest. API schedules stay, unless
        not ``keep_api``."""
        now = time.time()

        def op(conn: Connection) -> None:
            stored = {r["id"]: r for r in conn.execute(
                "SELECT id, source, spec FROM schedules WHERE workflow = ?", (workflow,))}
            wanted = {e["id"] for e in entries}
            for schedule_id, row in stored.items():
                if (row["source"] == "definition" or not keep_api) and \
                        schedule_id not in wanted:
                    conn.execute("DELETE FROM schedules WHERE workflow = ? AND id = ?",
                                 (workflow, schedule_id))
            for e in entries:
                row = stored.get(e["id"])
                spec = _dumps(e)
                if row is not None and row["source"] == "definition" and row["spec"] == spec:
                    continue
                conn.execute(
                    "INSERT INTO schedules (workflow, id, cron, timezone, inputs, catch_up, "
                    "paused, source, spec, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, 'definition', ?, ?) "
                    "ON CONFLICT (workflow, id) DO UPDATE SET cron = excluded.cron, "
                    "timezone = excluded.timezone, inputs = excluded.inputs, "
                    "catch_up = excluded.catch_up, paused = excluded.paused, "
                    "source = excluded.source, spec = excluded.spec",
                    (workflow, e["id"], e["cron"], e["timezone"], _dumps(e["inputs"]),
                     e["catch_up"], int(e["paused"]), spec, now))

        await self._writer.write(op)

    async def add_schedule(self, schedule: ScheduleRecord) -> bool:
        """Insert a schedule; False (nothing written) when its id is taken."""

        def op(conn: Connection) -> bool:
            cur = conn.execute(
                "INSERT INTO schedules (workflow, id, cron, timezone, inputs, "
                "catch_up, paused, source, spec, last_slot, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (schedule.workflow, schedule.id, schedule.cron, schedule.timezone,
                 _dumps(schedule.inputs), schedule.catch_up, int(schedule.paused),
                 schedule.source, _dumps(schedule.spec), schedule.last_slot,
                 schedule.created_at))
            return bool(cur.rowcount)

        return await self._writer.write(op)

    async def list_schedules(self, workflow: str | None = None) -> list[ScheduleRecord]:
        """Schedules of one workflow, or of all, by workflow and id."""
        where, params = ("WHERE workflow = ?", (workflow,)) if workflow else ("", ())
        rows = await self._fetchall(f"SELECT * FROM schedules {where} ORDER BY workflow, id",
                                    params)
        return [_schedule_from_row(r) for r in rows]

    async def get_schedule(self, workflow: str, schedule_id: str) -> ScheduleRecord | None:
        row = await self._fetchone("SELECT * FROM schedules WHERE workflow = ? AND id = ?",
                                   (workflow, schedule_id))
        return None if row is None else _schedule_from_row(row)

    async def set_schedule_paused(self, workflow: str, schedule_id: str, paused: bool,
                                  last_slot: float | None = None) -> bool:
        """Pause or resume (resuming from ``last_slot``: slots before it are not owed);
        False when there is no such schedule."""

        def op(conn: Connection) -> bool:
            cur = conn.execute(
                "UPDATE schedules SET paused = ?, last_slot = COALESCE(?, last_slot) "
                "WHERE workflow = ? AND id = ?", (int(paused), last_slot, workflow,
                                                  schedule_id))
            return bool(cur.rowcount)

        return await self._writer.write(op)

    async def set_schedule_slot(self, workflow: str, schedule_id: str, slot: float) -> None:
        """Record the last slot fired (never moving it back)."""
        await self.execute("UPDATE schedules SET last_slot = ? WHERE workflow = ? AND id = ? "
                           "AND (last_slot IS NULL OR last_slot < ?)",
                           (slot, workflow, schedule_id, slot))

    async def delete_schedule(self, workflow: str, schedule_id: str) -> bool:
        def op(conn: Connection) -> bool:
            cur = conn.execute("DELETE FROM schedules WHERE workflow = ? AND id = ?",
                               (workflow, schedule_id))
            return bool(cur.rowcount)

        return await self._writer.write(op)

    # --- completion callbacks -------------------------------------------------------

    async def callback_keys(self) -> list[str]:
        """The keys ('' for runs without one) that have pending callbacks, in order.

        A loose walk of the partial index of pending callbacks: one step per key, to
        the next key along, so however many callbacks a key has it costs one step."""
        pending = f"state = '{CallbackState.PENDING.value}'"  # (literal: the partial index)
        rows = await self._fetchall(
            "WITH RECURSIVE k (id) AS ("
            f"SELECT MIN(api_key_id) FROM callbacks WHERE {pending} "
            f"UNION ALL SELECT (SELECT MIN(c.api_key_id) FROM callbacks c WHERE c.{pending} "
            "AND c.api_key_id > k.id) FROM k WHERE k.id IS NOT NULL"
            ") SELECT id FROM k WHERE id IS NOT NULL")
        return [str(row[0]) for row in rows]

    async def due_callbacks(self, now: float, wanted: Mapping[str, int],
                            skip: Collection[str] = ()) -> dict[str, list[DueCallback]]:
        """Pending callbacks of ended runs whose next attempt is due: up to
        ``wanted[key]`` of each key, soonest first (``skip``: those in flight). One
        look-up per key along the partial index of its pending rows, all in one round
        trip; it never reads past one key's callbacks to find another's."""
        terminal = tuple(s.value for s in RUN_TERMINAL)
        sql = (
            "SELECT c.run_id, c.delivery_id, c.attempts, c.api_key_id, c.next_attempt_at, "
            "r.callback_url, r.finished_at "
            # CROSS JOIN keeps callbacks the outer loop: SQLite would otherwise walk every
            # ended run by status (PostgreSQL reads it as a plain JOIN). The state is
            # written out: a bound value would not match the partial index. NULLS FIRST
            # (a run that just ended) is SQLite's order anyway, and PostgreSQL's index's.
            "FROM callbacks c CROSS JOIN runs r ON r.id = c.run_id "
            f"WHERE c.state = '{CallbackState.PENDING.value}' AND c.api_key_id = ? "
            "AND (c.next_attempt_at IS NULL OR c.next_attempt_at <= ?) "
            f"AND r.status IN ({', '.join('?' * len(terminal))}) "
            "AND r.callback_url IS NOT NULL ORDER BY c.next_attempt_at NULLS FIRST LIMIT ?")
        keys = [key for key, count in wanted.items() if count > 0]
        if not keys:
            return {}
        found = await self._fetch_together(
            [(sql, (key, now, *terminal, wanted[key] + len(skip))) for key in keys])
        return {key: [DueCallback(r["run_id"], r["callback_url"], r["delivery_id"],
                                  int(r["attempts"]), float(r["finished_at"] or now),
                                  str(r["api_key_id"]), r["next_attempt_at"])
                      for r in rows if r["run_id"] not in skip][:wanted[key]]
                for key, rows in zip(keys, found, strict=True)}

    async def claim_callback(self, run_id: str, attempts: int, now: float,
                             hold_until: float) -> bool:
        """Take a due callback's next attempt (processes sharing the database each see it
        due): its next attempt moves to ``hold_until``, so the others pass it by, and
        comes due again then if this one dies before recording its attempt."""
        def op(conn: Connection) -> bool:
            return conn.execute(
                "UPDATE callbacks SET next_attempt_at = ? WHERE run_id = ? AND state = ? AND "
                "attempts = ? AND (next_attempt_at IS NULL OR next_attempt_at <= ?)",
                (hold_until, run_id, CallbackState.PENDING.value, attempts, now)
            ).rowcount == 1

        return await self._writer.write(op)

    async def record_callback_attempt(self, run_id: str, attempt: CallbackAttempt,
                                      state: CallbackState,
                                      next_attempt_at: float | None) -> None:
        """Save an attempt with the state it leaves the callback in, together."""

        def op(conn: Connection) -> None:
            conn.execute(
                "INSERT INTO callback_attempts (run_id, attempt, at, status_code, error, "
                "duration_ms) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, attempt) DO "
                "UPDATE SET at = excluded.at, status_code = excluded.status_code, "
                "error = excluded.error, duration_ms = excluded.duration_ms",
                (run_id, attempt.attempt, attempt.at, attempt.status_code, attempt.error,
                 attempt.duration_ms))
            conn.execute(
                "UPDATE callbacks SET state = ?, "
                "attempts = CASE WHEN attempts > ? THEN attempts ELSE ? END, "
                "next_attempt_at = ?, updated_at = ? WHERE run_id = ?",
                (state.value, attempt.attempt, attempt.attempt, next_attempt_at, attempt.at,
                 run_id))

        await self._writer.write(op)

    async def get_callback(self, run_id: str) -> CallbackRecord | None:
        """A run's callback with every attempt, oldest first; None without one."""
        row = await self._fetchone(
            "SELECT c.delivery_id, c.state, c.next_attempt_at, r.callback_url FROM callbacks c "
            "JOIN runs r ON r.id = c.run_id WHERE c.run_id = ?", (run_id,))
        if row is None or row["callback_url"] is None:
            return None
        attempts = await self._fetchall(
            "SELECT attempt, at, status_code, error, duration_ms FROM callback_attempts "
            "WHERE run_id = ? ORDER BY attempt", (run_id,))
        return CallbackRecord(
            run_id=run_id, url=row["callback_url"], delivery_id=row["delivery_id"],
            state=CallbackState(row["state"]), next_attempt_at=row["next_attempt_at"],
            attempts=[CallbackAttempt(a["attempt"], a["at"], a["status_code"], a["error"],
                                      a["duration_ms"]) for a in attempts])

    async def server_secret(self, name: str, fresh: str) -> tuple[str, str | None,
                                                                  float | None]:
        """(value, previous, previous_until) of a secret the server holds, stored as
        ``fresh`` if it has none yet (first need; concurrent callers get the same one)."""

        def op(conn: Connection) -> tuple[str, str | None, float | None]:
            conn.execute("INSERT INTO server_secrets (name, value, updated_at) "
                         "VALUES (?, ?, ?) ON CONFLICT DO NOTHING", (name, fresh, time.time()))
            row = conn.execute("SELECT value, previous, previous_until FROM server_secrets "
                               "WHERE name = ?", (name,)).fetchone()
            return str(row["value"]), row["previous"], row["previous_until"]

        return await self._writer.write(op)

    async def rotate_server_secret(self, name: str, fresh: str,
                                   previous_until: float) -> None:
        """Replace a server secret with ``fresh``, keeping the one it replaces (if any)
        as ``previous`` until ``previous_until``."""

        def op(conn: Connection) -> None:
            now = time.time()
            cur = conn.execute(
                "UPDATE server_secrets SET previous = value, previous_until = ?, value = ?, "
                "updated_at = ? WHERE name = ?", (previous_until, fresh, now, name))
            if not cur.rowcount:
                conn.execute("INSERT INTO server_secrets (name, value, updated_at) "
                             "VALUES (?, ?, ?)", (name, fresh, now))

        await self._writer.write(op)

    # --- hooks ----------------------------------------------------------------------

    async def put_hook(self, workflow: str, secret: str, inputs: Any
                       ) -> tuple[HookRecord, bool]:
        """Create a workflow's hook with ``secret``, or set the ``inputs`` mapping of the
        one it has (keeping its secret): (the hook, created)."""
        now = time.time()

        def op(conn: Connection) -> bool:
            cur = conn.execute("INSERT INTO hooks (workflow, secret, inputs, "
                               "created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                               (workflow, secret, _dumps(inputs), now))
            if cur.rowcount:
                return True
            conn.execute("UPDATE hooks SET inputs = ? WHERE workflow = ?",
                         (_dumps(inputs), workflow))
            return False

        created = await self._writer.write(op)
        found = await self.get_hook(workflow)
        assert found is not None  # just written
        return found, created

    async def get_hook(self, workflow: str) -> HookRecord | None:
        row = await self._fetchone("SELECT * FROM hooks WHERE workflow = ?", (workflow,))
        return None if row is None else _hook_from_row(row)

    async def rotate_hook_secret(self, workflow: str, secret: str) -> bool:
        """Replace a hook's secret (the old one stops working); False without a hook."""

        def op(conn: Connection) -> bool:
            cur = conn.execute("UPDATE hooks SET secret = ?, rotated_at = ? WHERE workflow = ?",
                               (secret, time.time(), workflow))
            return bool(cur.rowcount)

        return await self._writer.write(op)

    async def delete_hook(self, workflow: str) -> bool:
        """Delete a workflow's hook and the deliveries it remembers."""

        def op(conn: Connection) -> bool:
            conn.execute("DELETE FROM hook_deliveries WHERE workflow = ?", (workflow,))
            return bool(conn.execute("DELETE FROM hooks WHERE workflow = ?",
                                     (workflow,)).rowcount)

        return await self._writer.write(op)

    async def hook_delivery(self, workflow: str, signature: str) -> str | None:
        """The run a delivery with this signature started, if one was accepted."""
        row = await self._fetchone("SELECT run_id FROM hook_deliveries WHERE workflow = ? "
                                   "AND signature = ?", (workflow, signature))
        return None if row is None else str(row["run_id"])

    async def add_hook_delivery(self, workflow: str, signature: str, signed_at: float,
                                run_id: str) -> None:
        """Remember an accepted delivery (and show it as the hook's last)."""
        now = time.time()

        def op(conn: Connection) -> None:
            conn.execute("INSERT INTO hook_deliveries (workflow, signature, signed_at, "
                         "run_id, received_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                         (workflow, signature, signed_at, run_id, now))
            conn.execute("UPDATE hooks SET last_delivery_at = ?, last_run_id = ? "
                         "WHERE workflow = ?", (now, run_id, workflow))

        await self._writer.write(op)

    async def delete_old_hook_deliveries(self, signed_before: float, batch: int = 1000) -> int:
        """Forget deliveries signed before ``signed_before`` (too old to be replayed)."""

        def op(conn: Connection) -> int:
            return conn.execute(
                "DELETE FROM hook_deliveries WHERE rowid IN (SELECT rowid FROM "
                "hook_deliveries WHERE signed_at < ? LIMIT ?)", (signed_before, batch)).rowcount

        return await self._writer.write(op)

    # --- API keys -------------------------------------------------------------------

    async def add_api_key(self, key_id: str, prefix: str, key_hash: str, *,
                          name: str | None, scope: str = "run",
                          workflows: Sequence[str] | None = None,
                          only_first: bool = False) -> ApiKeyRecord | None:
        """Store a key. ``only_first``: only if the database has no key yet (None
        otherwise): processes starting together on a new database make one."""
        now = time.time()
        bound = sorted(set(workflows)) if workflows else None
        shared = self.postgres

        def op(conn: Connection) -> bool:
            if only_first:
                if shared:
                    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 2))",
                                 ("api_keys",))
                if conn.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0]:
                    return False
            conn.execute("INSERT INTO api_keys (id, prefix, hash, name, scope, workflows, "
                         "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (key_id, prefix, key_hash, name, scope, _dumps(bound), now))
            return True

        if not await self._writer.write(op):
            return None
        return ApiKeyRecord(key_id, prefix, name, scope, bound, now)

    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        """The live (not revoked) key with this digest."""
        row = await self._fetchone("SELECT * FROM api_keys WHERE hash = ? AND revoked_at IS NULL",
                                   (key_hash,))
        return None if row is None else _key_from_row(row)

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        row = await self._fetchone("SELECT * FROM api_keys WHERE id = ?", (key_id,))
        return None if row is None else _key_from_row(row)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        return [_key_from_row(r) for r in
                await self._fetchall("SELECT * FROM api_keys ORDER BY created_at")]

    async def revoke_api_key(self, key_id_or_prefix: str) -> int:
        """Revoke keys by id or prefix; the number revoked. On PostgreSQL the serving
        processes are told (they forget the keys they had found valid)."""
        shared = self.postgres

        def op(conn: Connection) -> int:
            cur = conn.execute("UPDATE api_keys SET revoked_at = ? WHERE "
                               "(id = ? OR prefix = ?) AND revoked_at IS NULL",
                               (time.time(), key_id_or_prefix, key_id_or_prefix))
            if cur.rowcount and shared:
                conn.execute("SELECT pg_notify(?, ?)", (CONTROL_CHANNEL, "keys"))
            return cur.rowcount

        return await self._writer.write(op)

    async def count_api_keys(self) -> int:
        row = await self._fetchone("SELECT COUNT(*) AS n FROM api_keys WHERE revoked_at IS NULL")
        return int(row["n"]) if row else 0

    # --- secrets --------------------------------------------------------------------

    async def put_secret(self, name: str, value: str, allowed_urls: Sequence[str]) -> bool:
        """Create or replace a secret; True when it is new."""

        def op(conn: Connection) -> bool:
            now = time.time()
            cur = conn.execute(
                "UPDATE secrets SET value = ?, allowed_urls = ?, updated_at = ? WHERE name = ?",
                (value, _dumps(list(allowed_urls)), now, name))
            if cur.rowcount:
                return False
            conn.execute("INSERT INTO secrets (name, value, allowed_urls, created_at, "
                               "updated_at) VALUES (?, ?, ?, ?, ?)",
                               (name, value, _dumps(list(allowed_urls)), now, now))
            return True

        return await self._writer.write(op)

    async def get_secret(self, name: str) -> SecretRecord | None:
        row = await self._fetchone("SELECT * FROM secrets WHERE name = ?", (name,))
        return None if row is None else _secret_from_row(row)

    async def list_secrets(self) -> list[SecretRecord]:
        return [_secret_from_row(r) for r in
                await self._fetchall("SELECT * FROM secrets ORDER BY name")]

    async def delete_secret(self, name: str) -> bool:
        def op(conn: Connection) -> bool:
            cur = conn.execute("DELETE FROM secrets WHERE name = ?", (name,))
            return bool(cur.rowcount)

        return await self._writer.write(op)


def _schedule_from_row(row: Any) -> ScheduleRecord:
    return ScheduleRecord(
        workflow=row["workflow"], id=row["id"], cron=row["cron"], timezone=row["timezone"],
        inputs=_loads(row["inputs"]) or {}, catch_up=row["catch_up"],
        paused=bool(row["paused"]), source=row["source"], created_at=row["created_at"],
        last_slot=row["last_slot"], spec=_loads(row["spec"]))


def _hook_from_row(row: Any) -> HookRecord:
    return HookRecord(workflow=row["workflow"], secret=row["secret"],
                      inputs=_loads(row["inputs"]), created_at=row["created_at"],
                      rotated_at=row["rotated_at"], last_delivery_at=row["last_delivery_at"],
                      last_run_id=row["last_run_id"])


def _key_from_row(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(row["id"], row["prefix"], row["name"], row["scope"],
                        _loads(row["workflows"]), row["created_at"], row["revoked_at"])


def _secret_from_row(row: Any) -> SecretRecord:
    return SecretRecord(row["name"], row["value"], _loads(row["allowed_urls"]),
                        row["created_at"], row["updated_at"])
