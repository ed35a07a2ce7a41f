"""Registered workflows and their versions."""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from typing import Any

from flowrun.records import (
    RUN_TERMINAL,
    RunStatus,
)
from flowrun.store.backend import (
    CONTROL_CHANNEL,
)
from flowrun.store.base import (
    StoreBase,
)
from flowrun.store.writer import Connection


class WorkflowQueries(StoreBase):
    """Registered workflows and their versions (the catalog's queries)."""

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
