"""Runs: accepted, started, finished, reset, listed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection, Sequence
from typing import Any

from flowrun.jsontext import Encoded
from flowrun.records import (
    RUN_TERMINAL,
    CallbackState,
    Event,
    IdempotencyClaim,
    KeyHolder,
    NodeRecord,
    NodeStatus,
    RunRecord,
    RunStatus,
)
from flowrun.store.backend import (
    Query,
)
from flowrun.store.base import (
    EVENT_ROWS,
    LIVE,
    NODE_ROWS,
    NODES_OF_RUN,
    RUN_COLUMNS,
    NodeRow,
    StoreBase,
    dump_json,
    encoded_as,
    event_row,
    node_from_row,
    referring_data,
    run_from_row,
)
from flowrun.store.writer import Connection, WriteResult


def _insert_run(conn: Connection, run: RunRecord) -> None:
    conn.execute(
        "INSERT INTO runs (id, workflow, version, status, inputs, priority, correlation_id, "
        "idempotency_key, \"user\", trace_id, api_key_id, overrides, graph, created_at, "
        "parent_run_id, depth, root_run_id, rerun_of, schedule_id, schedule_slot, "
        "callback_url, source, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
        "?, ?, ?, ?, ?, ?)",
        (run.id, run.workflow, run.version, run.status.value, dump_json(run.inputs),
         run.priority, run.correlation_id, run.idempotency_key, run.user, run.trace_id,
         run.api_key_id, dump_json(run.overrides or None), dump_json(run.graph), run.created_at,
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


def _node_row(node: NodeRecord) -> tuple[Any, ...]:
    """A node's row, serialised now: the record may change before the batch commits, and
    a value that cannot be stored fails here, in its caller, not inside a batch."""
    return NodeRow(node).row


class RunQueries(StoreBase):
    """Runs: accepted, started, finished, reset, listed (the run service's and runner's queries)."""

    async def key_holder(self, claim: IdempotencyClaim) -> KeyHolder | None:
        """The run an idempotency key names now (live, unexpired), read outside a write."""
        return _holder_from_row(await self._fetchone(
            _KEY_HOLDER_SQL, (claim.scope, claim.workflow, claim.key)))

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
                NODE_ROWS.write(conn, [_node_row(n) for n in nodes])
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

        return self._writer.submit(op, durable=True, rows=((EVENT_ROWS, event_row(event)),))

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
        outputs_text, data = dump_json(outputs), None
        if outputs is not None:
            encoded = encoded_as(encoded_outputs, outputs)
            outputs_text = encoded.text
            data = referring_data(event, {"outputs": encoded}, {"finished_at": finished_at})
        run_row = (status.value, outputs_text, dump_json(error), steps, finished_at,
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
                                   rows=((EVENT_ROWS, event_row(event, data)),))

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

    # --- stops kept on the run's row (every mode: see RunService.stop) ----------------

    async def request_stop(self, run_id: str, reason: str) -> RunStatus | None:
        """Keep a stop on the row of a run that has not finished (queued, running,
        paused or waiting), so that whatever queues, parks, wakes or claims it later
        stops it, here or in another process, now or after a restart; a waiting run is
        due to wake at once. The run's status as the stop was kept; None (nothing kept)
        when it had finished, or is gone."""

        def op(conn: Connection) -> RunStatus | None:
            row = conn.execute(
                "UPDATE runs SET stop_reason = ?, wake_at = CASE WHEN status = 'waiting' "
                f"THEN 0 ELSE wake_at END WHERE id = ? AND ({LIVE} OR status = 'waiting') "
                "RETURNING status", (reason, run_id)).fetchone()
            return None if row is None else RunStatus(row[0])

        return await self._writer.write(op, durable=True)

    async def stop_reason(self, run_id: str) -> str | None:
        """The stop kept on a run's row ('' for one without a reason), or None."""
        row = await self._fetchone("SELECT stop_reason FROM runs WHERE id = ?", (run_id,))
        return None if row is None else row["stop_reason"]

    async def requested_stops(self) -> dict[str, str]:
        """Every unfinished run someone asked to stop: run id -> reason ('' for none).
        What a restart must stop rather than resume."""
        rows = await self._fetchall("SELECT id, stop_reason FROM runs WHERE "
                                    f"stop_reason IS NOT NULL AND {LIVE}")
        return {r["id"]: r["stop_reason"] for r in rows}

    async def get_run(self, run_id: str, *, with_nodes: bool = True) -> RunRecord | None:
        """A run (with its nodes, read in the same snapshot), or None."""
        run_query: Query = (f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        if not with_nodes:
            row = await self._fetchone(*run_query)
            return None if row is None else run_from_row(row)
        runs, nodes = await self._fetch_together([run_query, (NODES_OF_RUN, (run_id,))])
        if not runs:
            return None
        run = run_from_row(runs[0])
        run.nodes = [node_from_row(r) for r in nodes]
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
        rows = await self._fetchall(f"SELECT {RUN_COLUMNS} FROM runs WHERE "
                                    f"{' AND '.join(clauses)} ORDER BY num DESC LIMIT ?", params)
        return [run_from_row(r) for r in rows]

    async def unfinished_runs(self) -> list[RunRecord]:
        """Queued and running runs, oldest first (what a restart must pick up)."""
        rows = await self._fetchall(f"SELECT {RUN_COLUMNS} FROM runs WHERE status IN (?, ?, ?) "
                                    "ORDER BY num", (RunStatus.QUEUED.value,
                                                     RunStatus.RUNNING.value,
                                                     RunStatus.PAUSED.value))
        return [run_from_row(r) for r in rows]
