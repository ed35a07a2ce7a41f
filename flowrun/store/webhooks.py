"""Inbound webhooks: their secrets and the deliveries already seen."""

from __future__ import annotations

import time
from typing import Any

from flowrun.records import (
    HookRecord,
)
from flowrun.store.base import (
    StoreBase,
    dump_json,
    load_json,
)
from flowrun.store.writer import Connection


def _hook_from_row(row: Any) -> HookRecord:
    return HookRecord(workflow=row["workflow"], secret=row["secret"],
                      inputs=load_json(row["inputs"]), created_at=row["created_at"],
                      rotated_at=row["rotated_at"], last_delivery_at=row["last_delivery_at"],
                      last_run_id=row["last_run_id"])


class WebhookQueries(StoreBase):
    """Inbound webhooks: their secrets and the deliveries already seen
    (the webhook book's queries)."""

    async def put_hook(self, workflow: str, secret: str, inputs: Any
                       ) -> tuple[HookRecord, bool]:
        """Create a workflow's hook with ``secret``, or set the ``inputs`` mapping of the
        one it has (keeping its secret): (the hook, created)."""
        now = time.time()

        def op(conn: Connection) -> bool:
            cur = conn.execute("INSERT INTO hooks (workflow, secret, inputs, "
                               "created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                               (workflow, secret, dump_json(inputs), now))
            if cur.rowcount:
                return True
            conn.execute("UPDATE hooks SET inputs = ? WHERE workflow = ?",
                         (dump_json(inputs), workflow))
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
