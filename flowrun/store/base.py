"""What every owner's queries stand on: the reader, the writer, and the round trips counted."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowrun.jsontext import Encoded, dumps, encode
from flowrun.records import (
    Event,
    NodeRecord,
    NodeStatus,
    RunRecord,
    RunStatus,
)
from flowrun.store.backend import (
    ManyReader,
    Query,
    Reader,
)
from flowrun.store.writer import Connection, RowTable, Writer, WriteResult

# A run that is not finished and not parked: what a process executes (or will). Written
# out, not bound, to match the partial index ``runs_claimable``.
LIVE = "status IN ('queued', 'running', 'paused')"

RUN_COLUMNS = ("num, id, workflow, version, status, inputs, outputs, error, priority, "
                'correlation_id, idempotency_key, "user", trace_id, api_key_id, overrides, '
                "graph, steps, created_at, started_at, finished_at, parent_run_id, depth, "
                "root_run_id, rerun_of, schedule_id, schedule_slot, callback_url, source, owner")


NODES_OF_RUN = "SELECT * FROM node_executions WHERE run_id = ? ORDER BY idx = 0, idx"


def dump_json(value: Any) -> str | None:
    return None if value is None else dumps(value)


def load_json(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def run_from_row(row: Any) -> RunRecord:
    return RunRecord(
        id=row["id"], workflow=row["workflow"], version=row["version"],
        status=RunStatus(row["status"]), inputs=load_json(row["inputs"]) or {},
        created_at=row["created_at"], priority=row["priority"],
        correlation_id=row["correlation_id"], idempotency_key=row["idempotency_key"],
        user=row["user"], trace_id=row["trace_id"], api_key_id=row["api_key_id"],
        overrides=load_json(row["overrides"]) or {}, graph=load_json(row["graph"]),
        outputs=load_json(row["outputs"]), error=load_json(row["error"]),
        started_at=row["started_at"], finished_at=row["finished_at"], steps=row["steps"],
        num=row["num"], parent_run_id=row["parent_run_id"], depth=row["depth"],
        root_run_id=row["root_run_id"], rerun_of=row["rerun_of"],
        schedule_id=row["schedule_id"], schedule_slot=row["schedule_slot"],
        callback_url=row["callback_url"],
        source=row["source"], owner=row["owner"],
    )


def node_from_row(row: Any) -> NodeRecord:
    return NodeRecord(
        run_id=row["run_id"], node_id=row["node_id"], type=row["type"], title=row["title"],
        index=row["idx"], status=NodeStatus(row["status"]), inputs=load_json(row["inputs"]) or {},
        outputs=load_json(row["outputs"]) or {}, error=load_json(row["error"]),
        attempts=row["attempts"], branch=row["branch"], started_at=row["started_at"],
        finished_at=row["finished_at"], **process_fields(load_json(row["logs"])),
    )


def process_fields(process: Any) -> dict[str, Any]:
    """Split the stored process column back into log lines and other process data."""
    if isinstance(process, list):  # early rows stored the log lines alone
        return {"logs": process, "process_data": {}}
    process = dict(process or {})
    return {"logs": list(process.pop("logs", [])), "process_data": process}


# A run's progress: rows merged per batch by the writer (see RowTable).
NODE_ROWS = RowTable(
    "INSERT INTO node_executions (run_id, node_id, type, title, idx, status, inputs, "
    "outputs, error, attempts, branch, logs, started_at, finished_at) VALUES ", 14,
    tail=" ON CONFLICT (run_id, node_id) DO UPDATE SET type = excluded.type, "
    "title = excluded.title, idx = excluded.idx, status = excluded.status, "
    "inputs = excluded.inputs, outputs = excluded.outputs, error = excluded.error, "
    "attempts = excluded.attempts, branch = excluded.branch, logs = excluded.logs, "
    "started_at = excluded.started_at, finished_at = excluded.finished_at",
    key=2)  # (run_id, node_id): a node's later state in a batch replaces its earlier one


EVENT_ROWS = RowTable("INSERT INTO events (run_id, seq, name, data, created_at) VALUES ", 5,
                       notify=True)


def event_row(event: Event, data: str | None = None) -> tuple[Any, ...]:
    return (event.run_id, event.seq, event.name, dump_json(event.data) if data is None else data,
            event.created_at)


def encoded_as(cached: Encoded | None, value: Any) -> Encoded:
    """The text the executor made of ``value`` (and measured), or a new one."""
    return cached if cached is not None and cached.value is value else encode(value)


class NodeRow:
    """A node's row, with its inputs and outputs kept encoded: an event written with the
    row may refer to them instead of holding them again."""

    def __init__(self, node: NodeRecord) -> None:
        self.inputs = encoded_as(node.encoded_inputs, node.inputs)
        self.outputs = encoded_as(node.encoded_outputs, node.outputs)
        self.row = (node.run_id, node.node_id, node.type, node.title, node.index,
                    node.status.value, self.inputs.text, self.outputs.text,
                    dump_json(node.error), node.attempts, node.branch, dump_json(node.process),
                    node.started_at, node.finished_at)


# A node's inputs or outputs past this many bytes are stored once, in the node's row:
# the event written with that row (node_started, node_finished, ...) holds a reference
# instead, and a replay joins the value back in from the row (``Store.events``). Live
# subscribers get the event as it was made. Smaller values stay in the event, so most
# replays need no second read. The run's outputs go the same way (the runs row).
INLINE_BYTES = 4096


# The reference's key in a stored event's data: the fields left out, and which
# execution of the node (its started_at) or which end of the run (finished_at) has them.
STORED_WITH = "stored_with"


def referring_data(event: Event, fields: dict[str, Encoded], mark: dict[str, Any]
                    ) -> str | None:
    """The event's data as stored, large ``fields`` left for the row that holds them
    (only those that are that very value in the event), or None to store it whole."""
    left = [name for name, enc in fields.items()
            if enc.size > INLINE_BYTES and event.data.get(name) is enc.value]
    if not left:
        return None
    return dumps({**event.data, **dict.fromkeys(left), STORED_WITH: {"fields": left, **mark}})


class StoreBase:
    """The database's reader and writer, shared by every owner's queries."""

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
