"""Deleting what has expired: idempotency keys, finished runs past retention.."""

from __future__ import annotations

from flowrun.records import (
    RUN_TERMINAL,
    RunStatus,
)
from flowrun.store.base import (
    StoreBase,
)
from flowrun.store.writer import Connection

# Runs that ended before a time, found by runs_by_end (status, finished_at).
_TERMINAL = tuple(sorted(s.value for s in RUN_TERMINAL))


ENDED_BEFORE = (f"SELECT id FROM runs WHERE status IN ({', '.join('?' * len(_TERMINAL))}) "
                "AND finished_at < ? LIMIT ?")


# What a deleted run takes with it.
_RUN_TABLES = (("node_executions", "run_id"), ("events", "run_id"),
               ("idempotency_keys", "run_id"), ("callbacks", "run_id"),
               ("callback_attempts", "run_id"), ("signals", "run_id"),
               ("signal_tokens", "run_id"), ("runs", "id"))


class HousekeepingQueries(StoreBase):
    """Deleting what has expired: idempotency keys, finished runs past retention."""

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
