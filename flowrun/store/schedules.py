"""Cron schedules and their next slots."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from flowrun.records import (
    ScheduleRecord,
)
from flowrun.store.base import (
    StoreBase,
    dump_json,
    load_json,
)
from flowrun.store.writer import Connection


def _schedule_from_row(row: Any) -> ScheduleRecord:
    return ScheduleRecord(
        workflow=row["workflow"], id=row["id"], cron=row["cron"], timezone=row["timezone"],
        inputs=load_json(row["inputs"]) or {}, catch_up=row["catch_up"],
        paused=bool(row["paused"]), source=row["source"], created_at=row["created_at"],
        last_slot=row["last_slot"], spec=load_json(row["spec"]))


class ScheduleQueries(StoreBase):
    """Cron schedules and their next slots (the schedule book's queries)."""

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
                spec = dump_json(e)
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
                    (workflow, e["id"], e["cron"], e["timezone"], dump_json(e["inputs"]),
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
                 dump_json(schedule.inputs), schedule.catch_up, int(schedule.paused),
                 schedule.source, dump_json(schedule.spec), schedule.last_slot,
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
