"""API keys, stored as hashes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from flowrun.records import (
    ApiKeyRecord,
)
from flowrun.store.backend import (
    CONTROL_CHANNEL,
)
from flowrun.store.base import (
    StoreBase,
    dump_json,
    load_json,
)
from flowrun.store.writer import Connection


def _key_from_row(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(row["id"], row["prefix"], row["name"], row["scope"],
                        load_json(row["workflows"]), row["created_at"], row["revoked_at"])


class KeyQueries(StoreBase):
    """API keys, stored as hashes (the key ring's queries)."""

    async def add_api_key(self, key_id: str, prefix: str, key_hash: str, *,
                          name: str | None, scope: str = "run",
                          workflows: Sequence[str] | None = None,
                          only_first: bool = False) -> ApiKeyRecord | None:
        """Store a key. ``only_first``: only if the database has no key yet (None
        otherwise): processes starting together on a new database make one."""
        now = time.time()
        bound = sorted(set(workflows)) if workflows else None
        shared = self.postgres

        def op(conn: Connection) -> bool:
            if only_first:
                if shared:
                    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 2))",
                                 ("api_keys",))
                if conn.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0]:
                    return False
            conn.execute("INSERT INTO api_keys (id, prefix, hash, name, scope, workflows, "
                         "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (key_id, prefix, key_hash, name, scope, dump_json(bound), now))
            return True

        if not await self._writer.write(op):
            return None
        return ApiKeyRecord(key_id, prefix, name, scope, bound, now)

    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        """The live (not revoked) key with this digest."""
        row = await self._fetchone("SELECT * FROM api_keys WHERE hash = ? AND revoked_at IS NULL",
                                   (key_hash,))
        return None if row is None else _key_from_row(row)

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        row = await self._fetchone("SELECT * FROM api_keys WHERE id = ?", (key_id,))
        return None if row is None else _key_from_row(row)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        return [_key_from_row(r) for r in
                await self._fetchall("SELECT * FROM api_keys ORDER BY created_at")]

    async def revoke_api_key(self, key_id_or_prefix: str) -> int:
        """Revoke keys by id or prefix; the number revoked. On PostgreSQL the serving
        processes are told (they forget the keys they had found valid)."""
        shared = self.postgres

        def op(conn: Connection) -> int:
            cur = conn.execute("UPDATE api_keys SET revoked_at = ? WHERE "
                               "(id = ? OR prefix = ?) AND revoked_at IS NULL",
                               (time.time(), key_id_or_prefix, key_id_or_prefix))
            if cur.rowcount and shared:
                conn.execute("SELECT pg_notify(?, ?)", (CONTROL_CHANNEL, "keys"))
            return cur.rowcount

        return await self._writer.write(op)

    async def count_api_keys(self) -> int:
        row = await self._fetchone("SELECT COUNT(*) AS n FROM api_keys WHERE revoked_at IS NULL")
        return int(row["n"]) if row else 0
