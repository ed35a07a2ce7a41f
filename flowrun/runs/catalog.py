"""WorkflowCatalog: the registered workflow definitions, by name and version.

A stored version never changes, so parsed definitions are kept in memory. This
process is assumed to be the only one registering workflows in its database:
the latest version of each is then known here without a read (every register
below updates it).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

from flowrun import ids
from flowrun.engine.nodes import Registry
from flowrun.errors import Conflict, DefinitionError, VersionNotFound, WorkflowNotFound
from flowrun.language import definitions
from flowrun.language.definitions import WorkflowDefinition
from flowrun.runs.access import Principal, require_admin, require_workflow
from flowrun.store import Store

logger = logging.getLogger(__name__)

_MAX_CACHED = 4096


class WorkflowCatalog:
    """Register, find and list workflow definitions."""

    def __init__(self, store: Store, registry: Registry) -> None:
        self.store = store
        self.registry = registry
        self._versions: dict[tuple[str, int], WorkflowDefinition] = {}
        self._latest: dict[str, int] = {}

    def forget(self, name: str | None) -> None:
        """Another process changed a workflow (None: any may have): its latest version is
        read from the store again."""
        if name is None:
            self._latest.clear()
        else:
            self._latest.pop(name, None)

    async def register(self, principal: Principal, data: Mapping[str, Any],
                       name: str | None = None) -> tuple[int, bool]:
        """Validate and store a definition (admin only); (version, whether it is new)."""
        require_admin(principal, "registering workflows")
        if name is not None:
            if not isinstance(data, Mapping):
                raise DefinitionError("a workflow definition must be a JSON object")
            data = {**data}
            data.setdefault("name", name)
            if data["name"] != name:
                raise DefinitionError(f"name {data['name']!r} does not match the URL ({name!r})",
                                      errors=[{"field": "name", "message": "does not match"}])
        definition = definitions.parse_definition(data, source=name or "definition",
                                                  registry=self.registry)
        version, created = await self.store.put_workflow(definition.name, definition.to_json())
        self._remember(definition.name, version, None)
        await self._sync_schedules(definition)
        if created:
            logger.info("workflow %s: registered version %d", definition.name, version)
        return version, created

    async def load_folder(self, path: Path) -> list[tuple[str, int]]:
        """Register every workflow file under ``path`` (a new version only when changed)."""
        loaded = []
        found = await anyio.to_thread.run_sync(
            functools.partial(definitions.load_path, path, registry=self.registry))
        for definition in found:
            version, _ = await self.store.put_workflow(definition.name, definition.to_json())
            self._remember(definition.name, version, None)
            await self._sync_schedules(definition)
            loaded.append((definition.name, version))
        return loaded

    async def _sync_schedules(self, definition: WorkflowDefinition) -> None:
        """The registered version's ``schedules:`` block becomes the workflow's definition
        schedules (API-made ones stay)."""
        await self.store.sync_definition_schedules(
            definition.name, [s.model_dump(mode="json") for s in definition.schedules or ()])

    async def get(self, name: str, version: int | None = None
                  ) -> tuple[int, WorkflowDefinition]:
        """A definition by name, at ``version`` or the latest; WorkflowNotFound or
        VersionNotFound when there is none."""
        if version is not None and not 1 <= version <= 2**31:
            raise VersionNotFound(f"workflow {name!r} has no version {version}",
                                  errors=[{"field": "version", "message": "unknown version"}])
        wanted = self._latest.get(name) if version is None else version
        if wanted is not None and (name, wanted) in self._versions:
            return wanted, self._versions[(name, wanted)]
        found = await self.store.get_workflow(name, version)
        if found is None:
            if version is not None and await self.store.workflow_exists(name):
                raise VersionNotFound(f"workflow {name!r} has no version {version}",
                                      errors=[{"field": "version", "message": "unknown version"}])
            raise WorkflowNotFound(f"workflow {name!r} is not registered")
        definition = WorkflowDefinition.model_validate(found[1])
        self._remember(name, found[0], definition, latest=version is None)
        return found[0], definition

    def _remember(self, name: str, version: int, definition: WorkflowDefinition | None, *,
                  latest: bool = True) -> None:
        """Note a stored version (and its parsed definition, when known)."""
        if latest and version > self._latest.get(name, 0):
            self._latest[name] = version
        if definition is not None:
            if len(self._versions) >= _MAX_CACHED:
                self._versions.clear()
            self._versions[(name, version)] = definition

    async def read(self, principal: Principal, name: str,
                   version: int | None = None) -> tuple[int, WorkflowDefinition]:
        """A definition as a caller may see it (bound keys: their workflows only)."""
        require_workflow(principal, name)
        return await self.get(name, version)

    async def resolve(self, principal: Principal, ref: str) -> str:
        """A registered workflow's name, from its name or its number (the id the jobs and
        Langflow APIs show); WorkflowNotFound when neither names one."""
        number = ids.number_of(ref)
        name = await self.store.workflow_by_number(number) if number is not None else None
        name = name or ref
        require_workflow(principal, name)
        await self.get(name)
        return name

    async def number(self, name: str) -> int | None:
        """A workflow's number (its id in the jobs API), None when it is not registered."""
        return await self.store.workflow_number(name)

    async def versions(self, principal: Principal, name: str) -> list[tuple[int, float]]:
        """(version, created_at) of each live version, oldest first."""
        require_workflow(principal, name)
        found = await self.store.workflow_versions(name)
        if not found:
            raise WorkflowNotFound(f"workflow {name!r} is not registered")
        return found

    async def delete(self, principal: Principal, name: str, version: int | None = None
                     ) -> int:
        """Delete a version, or every version (admin only); Conflict while runs of it are
        queued, running or paused. Its finished runs stay, and can still be retried."""
        require_admin(principal, "deleting workflows")
        await self.get(name, version)  # WorkflowNotFound / VersionNotFound
        deleted, live = await self.store.delete_workflow(name, version)
        if live:
            what = f"version {version} of {name!r}" if version is not None else repr(name)
            raise Conflict(f"{live} runs of workflow {what} are still live; stop them or "
                           f"wait for them to finish",
                           errors=[{"field": "name", "message": "has live runs"}])
        if version is None:  # the workflow is gone, and so are its schedules and hook
            await self.store.sync_definition_schedules(name, [], keep_api=False)
            await self.store.delete_hook(name)
        self._latest.pop(name, None)  # recomputed from the store on the next read
        for key in [k for k in self._versions if k[0] == name]:
            del self._versions[key]
        logger.info("workflow %s: deleted %s", name,
                    f"version {version}" if version is not None else "every version")
        return deleted

    async def list(self, principal: Principal) -> list[tuple[str, int, WorkflowDefinition]]:
        """The workflows a caller may use, each at its latest version."""
        return [(name, version, WorkflowDefinition.model_validate(data))
                for name, version, data in await self.store.list_workflows()
                if principal.may_use(name)]
