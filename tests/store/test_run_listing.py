"""Listing runs stays a search, never a scan of every run: the web UI's runs page and
``GET /runs`` read a page of 20 out of however many runs the database holds."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from flowrun.records import RunRecord, RunStatus
from flowrun.store import Store

FILTERS = {
    "one key, every workflow": "api_key_id IS 'k1'",
    "one key, one workflow": "workflow = 'wf1' AND api_key_id IS 'k1'",
    "one key, a status": "api_key_id IS 'k1' AND status = 'failed'",
    "any key, a status": "status = 'failed'",
    "any key, a correlation id": "correlation_id = 'c1'",
    "any key, one workflow": "workflow = 'wf1'",
}


@pytest.mark.parametrize("where", FILTERS.values(), ids=list(FILTERS))
async def test_each_runs_filter_is_served_by_an_index(tmp_path: Path, where: str) -> None:
    async with Store.open(tmp_path / "l.db") as store:
        for i in range(200):
            store.insert_run(RunRecord(
                id=f"r{i}", workflow=f"wf{i % 3}", version=1, created_at=time.time(),
                status=RunStatus.FAILED if i % 2 else RunStatus.SUCCEEDED, inputs={},
                api_key_id=f"k{i % 4}", correlation_id=f"c{i % 7}"))
        await store.execute("ANALYZE")
        listed = await store.list_runs("wf1", api_key_id="k1", limit=20)
        assert listed and all(r.workflow == "wf1" and r.api_key_id == "k1" for r in listed)
    with sqlite3.connect(tmp_path / "l.db") as conn:
        plan = " ".join(str(row[3]) for row in conn.execute(
            f"EXPLAIN QUERY PLAN SELECT * FROM runs WHERE {where} ORDER BY num DESC LIMIT 20"))
    assert "USING INDEX" in plan and "SCAN runs" not in plan, plan
    assert "TEMP B-TREE" not in plan, plan  # the page comes in index order, unsorted
