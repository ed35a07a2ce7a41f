"""KeyRing: who a key is (cached briefly), and key management by admins only."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowrun.errors import BadRequest, Forbidden, NotFound, Unauthorized
from flowrun.features.keys import KeyRing, create_api_key, hash_key
from flowrun.runs.access import ANONYMOUS, Principal, Scope
from flowrun.store import Store

ADMIN = Principal("admin", Scope.ADMIN)
RUNNER = Principal("runner", Scope.RUN)


async def test_a_key_authenticates_as_its_scope_and_binding(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "keys.db") as store:
        keys = KeyRing(store, enabled=True)
        record, secret = await keys.create(ADMIN, name="ci", workflows=["hello"])
        principal = await keys.authenticate(secret)
        assert principal == Principal(record.id, Scope.RUN, frozenset({"hello"}))
        for bad in (None, "", "fr_not-a-key"):
            with pytest.raises(Unauthorized):
                await keys.authenticate(bad)


async def test_a_known_key_is_cached_and_revoking_forgets_it(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "keys.db") as store:
        keys = KeyRing(store, enabled=True, cache_s=60)
        record, secret = await keys.create(ADMIN)
        await keys.authenticate(secret)
        reads = store.round_trips()["read"]
        await keys.authenticate(secret)
        assert store.round_trips()["read"] == reads  # answered from the cache
        await keys.revoke(ADMIN, record.id)
        with pytest.raises(Unauthorized):  # at once, although the cache had not expired
            await keys.authenticate(secret)
        with pytest.raises(NotFound):
            await keys.revoke(ADMIN, record.id)


async def test_only_admins_manage_keys(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "keys.db") as store:
        keys = KeyRing(store, enabled=True)
        with pytest.raises(Forbidden):
            await keys.create(RUNNER)
        with pytest.raises(Forbidden):
            await keys.list(RUNNER)
        with pytest.raises(Forbidden):
            await keys.revoke(RUNNER, "whatever")
        assert await keys.list(ADMIN) == []


async def test_admin_keys_cannot_be_bound(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "keys.db") as store:
        with pytest.raises(BadRequest):
            await create_api_key(store, name=None, scope=Scope.ADMIN, workflows=["hello"])
        assert await store.find_api_key(hash_key("anything")) is None


async def test_with_auth_off_every_caller_is_the_operator(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "keys.db") as store:
        assert await KeyRing(store, enabled=False).authenticate(None) is ANONYMOUS
