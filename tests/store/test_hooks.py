"""Store: hooks (create, change, rotate, delete) and the deliveries they remember."""

from __future__ import annotations

import time
from pathlib import Path

from flowrun.records import RunRecord, RunStatus
from flowrun.store import Store


async def test_a_hook_is_created_once_then_its_mapping_changes(db_target: Path | str) -> None:
    async with Store.open(db_target) as store:
        assert await store.get_hook("wf") is None
        hook, created = await store.put_hook("wf", "whsec_a", None)
        assert created and hook.secret == "whsec_a" and hook.inputs is None
        hook, created = await store.put_hook("wf", "whsec_b", {"x": "{{ body.x }}"})
        assert not created
        assert hook.secret == "whsec_a"  # changing the mapping keeps the secret
        assert hook.inputs == {"x": "{{ body.x }}"}
        assert "secret" not in hook.to_json() and "whsec_a" not in str(hook.to_json())
        assert await store.rotate_hook_secret("wf", "whsec_c")
        rotated = await store.get_hook("wf")
        assert rotated is not None and rotated.secret == "whsec_c"
        assert rotated.rotated_at is not None
        assert not await store.rotate_hook_secret("other", "whsec_d")


async def test_deliveries_are_remembered_until_stale_and_go_with_the_hook(
        db_target: Path | str) -> None:
    now = time.time()
    async with Store.open(db_target) as store:
        await store.put_hook("wf", "whsec_a", None)
        await store.add_hook_delivery("wf", "old", now - 600, "run-old")
        await store.add_hook_delivery("wf", "new", now, "run-new")
        assert await store.hook_delivery("wf", "old") == "run-old"
        assert await store.hook_delivery("other", "new") is None
        hook = await store.get_hook("wf")
        assert hook is not None and hook.last_run_id == "run-new"
        assert hook.to_json()["last_delivery"]["run_id"] == "run-new"
        assert await store.delete_old_hook_deliveries(now - 300) == 1
        assert await store.hook_delivery("wf", "old") is None
        assert await store.hook_delivery("wf", "new") == "run-new"
        assert await store.delete_hook("wf")
        assert await store.hook_delivery("wf", "new") is None
        assert not await store.delete_hook("wf")


async def test_a_run_keeps_its_source(db_target: Path | str) -> None:
    async with Store.open(db_target) as store:
        run = RunRecord(id="r1", workflow="wf", version=1, status=RunStatus.QUEUED,
                        inputs={}, created_at=time.time(), source="hook")
        await store.insert_run(run).wait()
        found = await store.get_run("r1")
        assert found is not None and found.source == "hook"
        assert found.to_json()["source"] == "hook"
        assert "source" not in RunRecord(id="r2", workflow="wf", version=1,
                                         status=RunStatus.QUEUED, inputs={},
                                         created_at=0).to_json()
