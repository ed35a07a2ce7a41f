"""Runs parked at a wait node, their signals and signal tokens."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from flowrun.records import (
    Event,
    RunStatus,
)
from flowrun.store.base import (
    EVENT_ROWS,
    StoreBase,
    dump_json,
    event_row,
)
from flowrun.store.writer import Connection, WriteResult


class WaitQueries(StoreBase):
    """Runs parked at a wait node, their signals and signal tokens (the wait book's queries)."""

    def park_run(self, run_id: str, *, wake_at: float | None, event: Event,
                 tokens: Sequence[tuple[str, str, str]]) -> WriteResult[None]:
        """Record a run as waiting (with when to wake it and its signal URL tokens:
        (hash, node id, signal) each) together with its ``workflow_waiting`` event; a
        run with a stop kept on its row is due to wake at once."""
        now = time.time()

        def op(conn: Connection) -> None:
            # A run someone asked to stop meanwhile is due at once: whatever wakes it
            # (the runner's look after its park, or the wait loop) queues it to stop.
            conn.execute("UPDATE runs SET status = ?, wake_at = CASE WHEN stop_reason IS "
                         "NULL THEN ? ELSE 0 END WHERE id = ?",
                         (RunStatus.WAITING.value, wake_at, run_id))
            conn.executemany(
                "INSERT INTO signal_tokens (token_hash, run_id, node_id, signal, "
                "created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(token, run_id, node_id, signal, now) for token, node_id, signal in tokens])

        return self._writer.submit(op, durable=True, rows=((EVENT_ROWS, event_row(event)),))

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
                               (run_id, name, dump_json(data), via, time.time()))
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
