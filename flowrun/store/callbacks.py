"""Completion callbacks, their attempts, and the server's signing secrets."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping

from flowrun.records import (
    RUN_TERMINAL,
    CallbackAttempt,
    CallbackRecord,
    CallbackState,
    DueCallback,
)
from flowrun.store.base import (
    StoreBase,
)
from flowrun.store.writer import Connection


class CallbackQueries(StoreBase):
    """Completion callbacks, their attempts, and the server's signing secrets
    (the callback book's queries)."""

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
