"""What node types may use from the instance they run in, passed in ``NodeContext.services``.

The engine defines the shapes; the app (or an embedding caller) provides them.
Child runs and workflow lookups are protocols so the engine never imports the
service layer. Node modules import this one, so it imports no node module
itself: the built-in registry, the default of ``NodeServices.registry``, is
looked up when a ``NodeServices`` is made.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from flowrun.engine.sandbox.runner import CodeLimits, CodeRunner
from flowrun.engine.secrets import SecretSource
from flowrun.engine.storage import StorageLimits

if TYPE_CHECKING:
    from flowrun.engine.nodes.registry import Registry
    from flowrun.language.definitions import WorkflowDefinition


class ChildRuns(Protocol):
    """Starts and follows child runs of a running parent (the ``workflow`` node)."""

    async def start(self, parent_run_id: str, key: str, workflow: str, version: int | None,
                    inputs: dict[str, Any]) -> str: ...

    async def wait(self, run_id: str) -> tuple[str, dict[str, Any] | None,
                                               dict[str, Any] | None]: ...

    async def stop(self, run_id: str) -> None: ...


class WorkflowLoader(Protocol):
    """Finds a registered workflow definition (the ``map`` node's ``workflow``)."""

    async def load(self, name: str, version: int | None, *,
                   run_id: str | None = None) -> tuple[int, WorkflowDefinition]: ...


@dataclass(frozen=True)
class HttpPolicy:
    """Where the http (and llm) nodes may connect, and how much they may read."""

    allow_private_hosts: bool = False
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_response_bytes: int = 10 * 1024 * 1024
    timeout_s: float = 30.0
    max_redirects: int = 5


@dataclass(frozen=True)
class LlmDefaults:
    base_url: str = "https://api.openai.com/v1"
    api_key: str | None = None
    model: str = "gpt-4o-mini"
    timeout_s: float = 120.0  # each connect, read or write
    max_response_bytes: int = 10 * 1024 * 1024
    deadline_s: float = 600.0  # the whole call, however the server paces its reply


def _builtin_registry() -> Registry:
    from flowrun.engine.nodes import registry

    return registry


@dataclass
class NodeServices:
    code: CodeRunner = field(default_factory=lambda: CodeRunner(0, CodeLimits()))
    http: HttpPolicy = field(default_factory=HttpPolicy)
    llm: LlmDefaults = field(default_factory=LlmDefaults)
    registry: Registry = field(default_factory=_builtin_registry)
    child_runs: ChildRuns | None = None
    workflows: WorkflowLoader | None = None
    # How node traffic resolves names (None: the system resolver); tests inject answers.
    resolve: Any = None
    # Items one map node may run at once, whatever its concurrency param asks.
    max_map_concurrency: int = 32
    # Where [[secret:NAME]] references get their values (None: no secrets here).
    secrets: SecretSource | None = None
    # What one node and one run may store (bytes of JSON).
    storage: StorageLimits = field(default_factory=StorageLimits)
