"""Several processes on one PostgreSQL database: workers, leases, claims, stops."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from flowrun.records import (
    RunRecord,
    RunStatus,
)
from flowrun.store.backend import (
    QUEUE_CHANNEL,
)
from flowrun.store.base import (
    LIVE,
    RUN_COLUMNS,
    StoreBase,
    run_from_row,
)
from flowrun.store.writer import Connection

# The database's clock in unix seconds (processes on several hosts share it; no skew).
_DB_NOW = "extract(epoch from clock_timestamp())::double precision"




class ClusterQueries(StoreBase):
    """Several processes on one PostgreSQL database: workers, leases, claims, stops
    (runs/cluster.py's queries)."""

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
                         run_id: str | None = None, skip_keys: Sequence[str] = ()
                         ) -> list[tuple[RunRecord, str | None]]:
        """Take up to ``limit`` live runs nobody runs (no owner, or one whose lease
        lapsed), priority then age, skipping rows another claim holds; with their stop
        reason (a stop asked for while nobody ran them). ``run_id``: only that one;
        ``skip_keys``: not the runs of these API keys."""
        only = "" if run_id is None else "AND id = ? "
        params: tuple[Any, ...] = (worker_id, lease_s) + (() if run_id is None else (run_id,))
        if skip_keys:
            only += (f"AND (api_key_id IS NULL OR api_key_id NOT IN "
                     f"({', '.join('?' * len(skip_keys))})) ")
            params += tuple(skip_keys)

        def op(conn: Connection) -> list[Any]:
            return conn.execute(
                "UPDATE runs SET owner = ? WHERE id IN (SELECT id FROM runs r WHERE "
                f"{LIVE} AND (owner IS NULL OR NOT EXISTS (SELECT 1 FROM workers w "
                f"WHERE w.id = r.owner AND w.heartbeat_at >= {_DB_NOW} - ?)) {only}"
                "ORDER BY priority DESC, num LIMIT ? FOR UPDATE SKIP LOCKED) "
                f"RETURNING {RUN_COLUMNS}, stop_reason", (*params, limit)).fetchall()

        rows = await self._writer.write(op)
        rows.sort(key=lambda r: (-r["priority"], r["num"]))
        return [(run_from_row(r), r["stop_reason"]) for r in rows]

    def release_run(self, run_id: str, worker_id: str) -> None:
        """Queue (durably, in order behind the run's own writes) giving a live run of
        ``worker_id`` back to the cluster, and waking the others' claims."""

        def op(conn: Connection) -> None:
            if conn.execute(f"UPDATE runs SET owner = NULL WHERE id = ? AND owner = ? AND "
                            f"{LIVE}", (run_id, worker_id)).rowcount:
                conn.execute("SELECT pg_notify(?, '')", (QUEUE_CHANNEL,))

        self._writer.submit(op, durable=True)

    async def stop_requests(self, worker_id: str) -> list[tuple[str, str]]:
        """A worker's live runs someone asked to stop: (run id, reason)."""
        rows = await self._fetchall(f"SELECT id, stop_reason FROM runs WHERE owner = ? AND "
                                    f"stop_reason IS NOT NULL AND {LIVE}", (worker_id,))
        return [(r["id"], r["stop_reason"]) for r in rows]

    async def paused_flags(self, worker_id: str) -> dict[str, bool]:
        """A worker's live runs: whether the store says each is paused."""
        rows = await self._fetchall(f"SELECT id, status FROM runs WHERE owner = ? AND {LIVE}",
                                    (worker_id,))
        return {r["id"]: r["status"] == RunStatus.PAUSED.value for r in rows}

    async def release_runs(self, worker_id: str) -> int:
        """A worker leaving: its live runs are anyone's now, and its row goes."""

        def op(conn: Connection) -> int:
            count = conn.execute(f"UPDATE runs SET owner = NULL WHERE owner = ? AND {LIVE}",
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
