"""Secrets for workflows, with the URLs each may be sent to."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from flowrun.records import (
    SecretRecord,
)
from flowrun.store.base import (
    StoreBase,
    dump_json,
    load_json,
)
from flowrun.store.writer import Connection


def _secret_from_row(row: Any) -> SecretRecord:
    return SecretRecord(row["name"], row["value"], load_json(row["allowed_urls"]),
                        row["created_at"], row["updated_at"])


class SecretQueries(StoreBase):
    """Secrets for workflows, with the URLs each may be sent to (the vault's queries)."""

    async def put_secret(self, name: str, value: str, allowed_urls: Sequence[str]) -> bool:
        """Create or replace a secret; True when it is new."""

        def op(conn: Connection) -> bool:
            now = time.time()
            cur = conn.execute(
                "UPDATE secrets SET value = ?, allowed_urls = ?, updated_at = ? WHERE name = ?",
                (value, dump_json(list(allowed_urls)), now, name))
            if cur.rowcount:
                return False
            conn.execute("INSERT INTO secrets (name, value, allowed_urls, created_at, "
                               "updated_at) VALUES (?, ?, ?, ?, ?)",
                               (name, value, dump_json(list(allowed_urls)), now, now))
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
