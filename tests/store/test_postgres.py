"""The PostgreSQL backend: migrations, SQL translation, the serving lock, reconnects."""

from __future__ import annotations

import psycopg
import pytest

from flowrun.errors import StoreBusy
from flowrun.store import Store
from flowrun.store.postgres import translate
from flowrun.store.schema_pg import PG_SCHEMA_VERSION


def test_translate_rewrites_only_what_postgres_spells_differently() -> None:
    assert translate("SELECT a FROM t WHERE b = ? AND c IS ? LIMIT ?") == \
        "SELECT a FROM t WHERE b = %s AND c IS NOT DISTINCT FROM %s LIMIT %s"
    assert translate("FROM c CROSS JOIN r ON r.id = c.id WHERE x LIKE 'a%'") == \
        "FROM c JOIN r ON r.id = c.id WHERE x LIKE 'a%%'"


async def test_migrates_once_and_reopens(postgres_url: str) -> None:
    async with Store.open(postgres_url) as store:
        assert await store.count_api_keys() == 0
    async with Store.open(postgres_url) as store:  # a second open migrates nothing
        assert await store.list_workflows() == []
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SELECT MAX(version), COUNT(*) FROM schema_version").fetchone()
    assert row == (PG_SCHEMA_VERSION, PG_SCHEMA_VERSION)


async def test_a_second_serving_process_is_refused(postgres_url: str) -> None:
    async with Store.open(postgres_url, exclusive=True):
        with pytest.raises(StoreBusy, match="another flowrun process"):
            async with Store.open(postgres_url, exclusive=True):
                pass
        async with Store.open(postgres_url) as admin:  # flowrun keys: no lock needed
            assert await admin.count_api_keys() == 0
    async with Store.open(postgres_url, exclusive=True):  # released with the first
        pass
