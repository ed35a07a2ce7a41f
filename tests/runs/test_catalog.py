"""WorkflowCatalog: registering versions, finding them by name or number, and who may."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowrun.engine.nodes import registry
from flowrun.errors import DefinitionError, Forbidden, VersionNotFound, WorkflowNotFound
from flowrun.runs.access import Principal, Scope
from flowrun.runs.catalog import WorkflowCatalog
from flowrun.store import Store

ADMIN = Principal("admin", Scope.ADMIN)
BOUND = Principal("k", Scope.RUN, frozenset({"hello"}))


def hello(template: str = "hi") -> dict[str, object]:
    return {"name": "hello", "nodes": [{"id": "t", "type": "template", "template": template}]}


async def test_a_changed_definition_is_a_new_version(db_target: Path | str) -> None:
    async with Store.open(db_target) as store:
        catalog = WorkflowCatalog(store, registry)
        assert await catalog.register(ADMIN, hello()) == (1, True)
        assert await catalog.register(ADMIN, hello()) == (1, False)  # unchanged: same version
        assert await catalog.register(ADMIN, hello("ho"), name="hello") == (2, True)
        version, latest = await catalog.get("hello")
        assert version == 2 and latest.nodes[0].params["template"] == "ho"
        assert (await catalog.get("hello", 1))[1].nodes[0].params["template"] == "hi"
        with pytest.raises(VersionNotFound):
            await catalog.get("hello", 3)
        with pytest.raises(WorkflowNotFound):
            await catalog.get("nope")


async def test_registering_checks_the_caller_and_the_name(db_target: Path | str) -> None:
    async with Store.open(db_target) as store:
        catalog = WorkflowCatalog(store, registry)
        with pytest.raises(Forbidden):
            await catalog.register(BOUND, hello())
        with pytest.raises(DefinitionError):
            await catalog.register(ADMIN, hello(), name="other")  # the URL names another
        with pytest.raises(WorkflowNotFound):
            await catalog.get("hello")  # nothing was stored


async def test_resolve_takes_a_name_or_a_number(db_target: Path | str) -> None:
    async with Store.open(db_target) as store:
        catalog = WorkflowCatalog(store, registry)
        await catalog.register(ADMIN, hello())
        await catalog.register(ADMIN, {**hello(), "name": "other"})
        number = await catalog.number("other")
        assert number is not None
        assert await catalog.resolve(ADMIN, str(number)) == "other"
        assert await catalog.resolve(ADMIN, "hello") == "hello"
        with pytest.raises(WorkflowNotFound):
            await catalog.resolve(ADMIN, "999")
        with pytest.raises(Forbidden):  # a bound key reaches only its own workflows
            await catalog.resolve(BOUND, str(number))
        assert [name for name, _, _ in await catalog.list(BOUND)] == ["hello"]
